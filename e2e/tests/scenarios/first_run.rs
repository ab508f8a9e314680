//! A new user's first run, as written: the chart's NOTES steps and the
//! README's "In a cluster" commands, taken from the files themselves and run
//! with `sh` (kubectl, `policybind`) from the repository root.
//!
//! The only changes to the text are the ones a reader makes:
//! - NOTES: `<your-namespace>` is this scenario's namespace and
//!   `<team-a-group>` a group of ours. Step 1 (`rollout status`) runs only
//!   in-cluster: out of the cluster there are no Deployments to wait for.
//! - README: `team-a` is a fresh namespace of ours, `policybind-system` the
//!   harness's release namespace, and `policybind check` is told that
//!   namespace and the harness's Lease when they are not the chart's defaults.
//!   The `helm install` line is what the harness already did (out of the
//!   cluster: the chart rendered by Helm, its identities applied and the
//!   processes started with its arguments; in-cluster: `helm install`).
//!
//! Then the token the steps printed is used: a model pod of the quick start is
//! admitted and its sidecar lets alice's request through. Runs on its own
//! (`e2e/run.sh`): `kubectl apply -k examples/` adds cluster-wide policies and
//! namespaces that would change what the other scenarios see.
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use policybind_crds::wire::{annotations, names};
use policybind_e2e::fixtures;
use policybind_e2e::flows::{serve_through_pod, wait_model_approval};
use policybind_e2e::identity::Rendered;
use policybind_e2e::system::chart_values;
use policybind_e2e::{Mode, Scenario, scenario};

/// The group the NOTES' RoleBinding step names.
const GROUP: &str = "e2e-team-a";
/// The quick start's model alice may call.
const QUICKSTART_MODEL: &str = "gpt-4o-mini";

#[test]
#[ignore = "e2e: needs a cluster (e2e/run.sh)"]
fn the_notes_and_readme_cluster_steps_work_as_written() {
    scenario("first-run", |s| async move {
        notes_steps(&s).await?;
        let readme_namespace = format!("{}-readme", s.namespace);
        let result = readme_steps(&s, &readme_namespace).await;
        cleanup_readme(&s, &readme_namespace).await;
        result
    });
}

/// The NOTES' steps in this scenario's namespace, then alice's token at work.
async fn notes_steps(s: &Scenario) -> Result<()> {
    let settings = s.settings;
    // Out of the cluster the harness rendered the chart it installed; in-cluster
    // `helm install` printed the NOTES, so render them the same way here.
    let notes = match s.system.rendered.notes.as_str() {
        "" => {
            Rendered::render(
                settings,
                &settings.release,
                &settings.system_namespace,
                &chart_values(),
            )?
            .notes
        }
        notes => notes.to_string(),
    };
    let steps = notes_commands(&notes)?;
    let mut token = None;
    for (step, command) in steps {
        if step == 1 && matches!(settings.mode, Mode::OutOfCluster) {
            continue;
        }
        let command = command
            .replace("<your-namespace>", &s.namespace)
            .replace("<team-a-group>", GROUP);
        ensure!(
            !command.contains("<your") && !command.contains("-group>"),
            "a placeholder is left in NOTES step {step}: {command}"
        );
        let output = run(s, &command).await?;
        if command.starts_with("kubectl get secret alice-token") {
            token = Some(output);
        }
    }
    let token = token.context("the NOTES print no command that reads alice's token")?;
    ensure!(
        token.starts_with("pb_") && token.len() > 20,
        "the NOTES' secret command printed {:?}, not an issued token",
        token.chars().take(8).collect::<String>()
    );
    let can_i = format!(
        "kubectl auth can-i create accesstokens.policybind.io -n {} --as=e2e-dev --as-group={GROUP}",
        s.namespace
    );
    ensure!(
        run(s, &can_i).await? == "yes",
        "the NOTES' RoleBinding gives {GROUP} no developer rights"
    );
    alice_is_served(s, &token).await
}

/// A quick-start model pod is admitted with the sidecar, which lets alice's
/// request through to the (fake) model server.
async fn alice_is_served(s: &Scenario, token: &str) -> Result<()> {
    wait_model_approval(s, QUICKSTART_MODEL, &["NotRequired", "Approved"]).await?;
    // As the NOTES say: the namespace takes data up to Internal, the quick
    // start's models up to Confidential, so the pod declares what it handles.
    let mut pod = fixtures::model_pod("quickstart-pod", QUICKSTART_MODEL);
    pod["metadata"]["annotations"][annotations::DATA_CLASSIFICATION] = "Internal".into();
    serve_through_pod(s, &pod, token, QUICKSTART_MODEL).await?;
    Ok(())
}

/// The README's cluster commands, with `team-a` as `namespace`.
async fn readme_steps(s: &Scenario, namespace: &str) -> Result<()> {
    let settings = s.settings;
    let readme = std::fs::read_to_string(settings.repo_root.join("README.md"))?;
    let mut commands = readme_commands(&readme)?.into_iter();
    let install = commands
        .next()
        .context("the README's cluster block is empty")?;
    ensure!(
        install.starts_with("helm install policybind charts/policybind -n policybind-system"),
        "the README's cluster block no longer starts with the helm install the harness stands for: {install}"
    );
    let lease = format!("{}-operator", settings.fullname());
    let mut token = None;
    for command in commands {
        let mut command = command
            .replace("team-a", namespace)
            .replace("policybind-system", &settings.system_namespace);
        if command == "policybind check" {
            if settings.system_namespace != "policybind-system" {
                command.push_str(&format!(" -n {}", settings.system_namespace));
            }
            if lease != names::OPERATOR_LEASE {
                command.push_str(&format!(" --lease-name {lease}"));
            }
            check_passes(s, &command).await?;
            continue;
        }
        let output = run(s, &command).await?;
        if command.starts_with("kubectl get secret alice-token") {
            token = Some(output);
        }
    }
    let token = token.context("the README prints no command that reads alice's token")?;
    ensure!(
        token.starts_with("pb_"),
        "the README's secret command printed no issued token"
    );
    Ok(())
}

/// `policybind check` until it passes: the example namespaces' bundles and
/// audit keys appear within seconds of `kubectl apply -k examples/`. On a
/// timeout the error carries the last run's output.
async fn check_passes(s: &Scenario, command: &str) -> Result<()> {
    s.wait_for(
        &format!("`{command}` to pass"),
        Duration::from_secs(60),
        || async { run(s, command).await.map(|_| Some(())) },
    )
    .await
}

/// Remove what the README's commands created; the scenario's own namespace
/// goes with the scenario.
async fn cleanup_readme(s: &Scenario, namespace: &str) {
    if s.settings.keep_namespaces {
        return;
    }
    for command in [
        "kubectl delete -k examples/ --ignore-not-found --wait=false".to_string(),
        format!("kubectl delete namespace {namespace} --ignore-not-found --wait=false"),
    ] {
        if let Err(error) = run(s, &command).await {
            eprintln!("cleanup: {error:#}");
        }
    }
}

/// Run `command` with `sh -c` from the repository root, with the `policybind`
/// under test first on PATH; its stdout, trimmed, or the failure with both
/// streams.
async fn run(s: &Scenario, command: &str) -> Result<String> {
    let output = shell(s, command).await?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() {
        bail!(
            "`{command}` failed (exit {:?}):\n{stdout}\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(stdout)
}

async fn shell(s: &Scenario, command: &str) -> Result<std::process::Output> {
    let bin_dir = s
        .settings
        .binary
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(&s.settings.repo_root)
        .env("PATH", path)
        .output()
        .await
        .with_context(|| format!("run `{command}`"))
}

/// The commands of the README's "In a cluster" block, comments removed.
fn readme_commands(readme: &str) -> Result<Vec<String>> {
    let section = readme
        .split_once("\n## In a cluster\n")
        .context("README.md has no section \"## In a cluster\"")?
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .context("the README's \"In a cluster\" section has no ```sh block")?
        .0;
    Ok(shell_lines(block.lines())
        .into_iter()
        .map(|(_, command)| command)
        .collect())
}

/// The commands of the NOTES, each with the number of the step it is in.
fn notes_commands(notes: &str) -> Result<Vec<(u32, String)>> {
    let commands = shell_lines(notes.lines());
    ensure!(
        commands.iter().any(|(step, _)| *step == 2),
        "no command found in the NOTES' step 2:\n{notes}"
    );
    Ok(commands)
}

/// Commands (lines starting `kubectl`, `policybind`, `helm`; `\` continues a
/// line) with the step (`N. ` at the start of a line) they appear under; text
/// after ` #` is a comment.
fn shell_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(u32, String)> {
    let mut step = 0;
    let mut commands: Vec<(u32, String)> = Vec::new();
    let mut continued = false;
    for line in lines {
        if let Some((number, _)) = line.split_once(". ")
            && let Ok(number) = number.parse::<u32>()
        {
            step = number;
        }
        let text = line.split_once(" #").map_or(line, |(code, _)| code).trim();
        if continued {
            let last = &mut commands.last_mut().expect("a continued command").1;
            last.push(' ');
            last.push_str(text.trim_end_matches('\\').trim());
        } else if ["kubectl ", "policybind ", "helm "]
            .iter()
            .any(|start| text.starts_with(start))
        {
            commands.push((step, text.trim_end_matches('\\').trim().to_string()));
        } else {
            continue;
        }
        continued = text.ends_with('\\');
    }
    commands
}

#[test]
fn commands_are_read_with_steps_continuations_and_comments() {
    let notes = "1. Wait:\n\n     kubectl -n x rollout status deployment/a\n\n\
                 2. Next:\n\n     kubectl label ns <n> a=b   # why\n     kubectl create rolebinding r \\\n       --group=g\n\
                 Policy bundles live in x (ConfigMaps policybind-bundle.<namespace>),\n";
    assert_eq!(
        shell_lines(notes.lines()),
        vec![
            (1, "kubectl -n x rollout status deployment/a".to_string()),
            (2, "kubectl label ns <n> a=b".to_string()),
            (2, "kubectl create rolebinding r --group=g".to_string()),
        ]
    );
}
