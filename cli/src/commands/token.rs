//! `policybind token create --from-text`: an AccessToken manifest from one plain
//! sentence (`policybind_compliance::token_text`), checked against the model
//! registry. Deterministic: no model, no network beyond reading the registry.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use kube::api::{Api, ListParams};
use policybind_compliance::token_text::{self, Registry};
use policybind_crds::ModelDeployment;
use policybind_engine::manifest::Object;

use super::report::parse_time;

/// Exit code: the sentence was refused with a question.
const EXIT_REFUSED: u8 = 1;
/// Exit code: could not run.
const EXIT_ERROR: u8 = 2;

/// Access tokens.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(clap::Subcommand, Debug)]
enum TokenCommand {
    /// Write an AccessToken manifest from a sentence.
    #[command(
        long_about = "Write an AccessToken manifest from one plain sentence, for example:\n\n  \
policybind token create --from-text \"the marketing team may use gpt-4o-mini for content generation, $100 a month, until March 31\" --registry examples/\n\n\
It reads: who (\"the marketing team\", \"user alice of the support team\", \"service account finance/reconciler of the finance team\"), \
models (registered names, checked against the registry; \"any model\"), use cases (\"for content generation\"), \
the highest data classification (\"confidential data\"; default Internal), budgets (\"$100 a month\", \"2M tokens a day\"), \
rate limits (\"60 requests per minute\", \"100k tokens per minute\") and the end (\"until March 31\", \"until 2027-01-15\", \
\"for 30 days\", \"until the end of the year\"). Dates resolve against --now (default today, UTC); \"until March 31\" is the \
next March 31, inclusive.\n\n\
It prints what it understood, field by field, on stderr and the manifest on stdout (pipe it to `kubectl apply -f -`). \
Anything ambiguous or unknown is refused with a question, and no word is ignored silently.\n\n\
Exit codes: 0 manifest written, 1 refused with a question, 2 could not run."
    )]
    Create(CreateArgs),
}

#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// The sentence.
    #[arg(long, value_name = "SENTENCE")]
    from_text: String,
    /// Model registry: manifest files or directories with ModelDeployments. Without, the
    /// cluster's ModelDeployments are read (kubeconfig).
    #[arg(long = "registry", value_name = "PATH")]
    registry: Vec<PathBuf>,
    /// Namespace of the token. Default: the team's name.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Name of the token. Default: subject and first model.
    #[arg(long)]
    name: Option<String>,
    /// What "today" is for relative dates (RFC 3339 or YYYY-MM-DD). Default: now.
    #[arg(long, value_parser = parse_time)]
    now: Option<DateTime<Utc>>,
    /// Write the manifest here instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Kubeconfig, when the registry is read from a cluster.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context.
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
}

pub async fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let TokenCommand::Create(args) = args.command;
    Ok(match create(args).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    })
}

async fn registry(args: &CreateArgs) -> anyhow::Result<Vec<ModelDeployment>> {
    if !args.registry.is_empty() {
        let manifests = crate::load::manifests(&args.registry)?;
        return Ok(manifests
            .objects
            .into_iter()
            .filter_map(|(_, o)| match o {
                Object::ModelDeployment(m) => Some(m),
                _ => None,
            })
            .collect());
    }
    let client = super::cluster::client(args.kubeconfig.as_deref(), args.context.as_deref())
        .await
        .context("reading the model registry from the cluster (or pass --registry DIR)")?;
    let api: Api<ModelDeployment> = Api::all(client);
    Ok(api
        .list(&ListParams::default())
        .await
        .context("listing ModelDeployments")?
        .items)
}

async fn create(args: CreateArgs) -> anyhow::Result<u8> {
    let models = registry(&args).await?;
    if models.is_empty() {
        bail!("the registry holds no ModelDeployment: no model could be checked");
    }
    let context = token_text::Context {
        now: args.now.unwrap_or_else(Utc::now),
        registry: Registry::from_models(&models),
        namespace: args.namespace.clone(),
        name: args.name.clone(),
    };
    let understood = match token_text::parse(&args.from_text, &context) {
        Ok(understood) => understood,
        Err(question) => {
            eprintln!("refused, {}: {}", question.field, question.question);
            return Ok(EXIT_REFUSED);
        }
    };
    let mut err = std::io::stderr().lock();
    writeln!(err, "understood:")?;
    let width = understood
        .fields
        .iter()
        .map(|f| f.field.len())
        .max()
        .unwrap_or(0);
    for field in &understood.fields {
        writeln!(
            err,
            "  {:width$}  {:<40}  <- {}",
            field.field, field.value, field.from
        )?;
    }
    let mut value = serde_json::to_value(&understood.token)?;
    if let Some(object) = value.as_object_mut() {
        object.remove("status");
    }
    let yaml = serde_yaml::to_string(&value)?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, &yaml).with_context(|| format!("writing {}", path.display()))?;
            writeln!(err, "wrote {}", path.display())?;
        }
        None => print!("{yaml}"),
    }
    Ok(0)
}
