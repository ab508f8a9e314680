//! `policybind eval`: decide one request offline and explain the decision.
//!
//! Exit status: 0 decided (whatever the effect, unless `--fail-on` names it);
//! 1 the effect is one `--fail-on` (or `--fail-on-deny`) names; 2 the inputs
//! could not be read or the policies do not compile.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use policybind_crds::Effect;
use policybind_engine::PolicySet;
use policybind_engine::request::{Decision, Request, RuleTrace};
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Manifest files or directories (policies, models, tokens), as applied to the cluster.
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    files: Vec<PathBuf>,
    /// The request facts as YAML or JSON (fields: model, token, useCase, dataClassification,
    /// namespace, time, estimatedInputTokens, estimatedOutputTokens, prompt, ...).
    #[arg(long, value_name = "FILE")]
    request: PathBuf,
    /// Namespace the request is decided in (overrides the request's `namespace`).
    #[arg(long)]
    namespace: Option<String>,
    /// Explain: the deciding policy and rule, and why each rule did or did not match
    /// (or was excluded). With `--json`: `{"decision": ..., "trace": [...]}`.
    #[arg(long)]
    explain: bool,
    /// Print JSON instead of text: the decision, or with `--explain` one document
    /// holding the decision and the trace.
    #[arg(long)]
    json: bool,
    /// Exit 1 when the decision's effect is one of these (comma-separated: Allow,
    /// Deny, Redact, RequireApproval, Degrade), for CI gates. The output is the same.
    #[arg(long, value_name = "EFFECT", value_delimiter = ',', value_parser = parse_effect)]
    fail_on: Vec<Effect>,
    /// Exit 1 when the request is denied: the same as `--fail-on Deny`.
    #[arg(long)]
    fail_on_deny: bool,
}

fn parse_effect(text: &str) -> Result<Effect, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|_| {
        format!("unknown effect {text:?} (Allow, Deny, Redact, RequireApproval, Degrade)")
    })
}

/// `--json --explain`: one document.
#[derive(Serialize)]
struct Explained<'a> {
    decision: &'a Decision,
    trace: &'a [RuleTrace],
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let manifests = crate::load::manifests(&args.files)?;
    let bundle = manifests.bundle(None);
    let set = PolicySet::compile(&bundle)
        .map_err(|e| anyhow::anyhow!("policies do not compile:\n{e}"))?;
    let text = std::fs::read_to_string(&args.request)
        .with_context(|| format!("reading {}", args.request.display()))?;
    let mut request: Request = serde_yaml::from_str(&text)
        .with_context(|| format!("{}: invalid request", args.request.display()))?;
    if let Some(ns) = &args.namespace {
        request.namespace = Some(ns.clone());
    }
    let (decision, trace) = set.decide_explained(&request);
    match (args.json, args.explain) {
        (true, true) => println!(
            "{}",
            serde_json::to_string_pretty(&Explained {
                decision: &decision,
                trace: &trace,
            })?
        ),
        (true, false) => println!("{}", serde_json::to_string_pretty(&decision)?),
        (false, explain) => {
            print_decision(&decision);
            if explain {
                print_explain(&decision, &trace);
            }
        }
    }
    let fails = args.fail_on.contains(&decision.effect)
        || (args.fail_on_deny && decision.effect == Effect::Deny);
    Ok(if fails {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_decision(d: &Decision) {
    println!("decision:    {}", d.effect);
    println!("codes:       {}", d.codes.join(", "));
    println!("message:     {}", d.message);
    println!("stage:       {:?}", d.stage);
    if let (Some(p), Some(r)) = (&d.policy, &d.rule) {
        println!("decided by:  policy {p}, rule {r}");
    }
    if let Some(r) = &d.obligations.redact {
        let what = if r.entities.is_empty() {
            "every entity found".to_string()
        } else {
            r.entities.join(", ")
        };
        println!("obligation:  redact {what} with {:?}", r.replacement);
    }
    if let Some(m) = &d.obligations.model {
        println!("obligation:  call model {m} instead");
    }
    if let Some(t) = d.obligations.max_tokens {
        println!("obligation:  cap max_tokens at {t}");
    }
    for f in &d.findings {
        println!(
            "finding:     {} at bytes {}..{} ({})",
            f.entity, f.start, f.end, f.detector
        );
    }
    if let Some(w) = &d.would_have {
        println!(
            "audit mode:  policy {} rule {} would have decided {} ({})",
            w.policy,
            w.rule,
            w.effect,
            w.codes.join(", ")
        );
    }
    let f = &d.facts;
    println!(
        "facts:       subject={} team={} model={} provider={} useCase={} data={} namespace={} risk={} tokens={} cost=${:.4}",
        f.subject.as_deref().unwrap_or("-"),
        f.team.as_deref().unwrap_or("-"),
        f.model,
        f.provider.as_deref().unwrap_or("-"),
        f.use_case.as_deref().unwrap_or("-"),
        f.data_classification.map(|c| c.as_str()).unwrap_or("-"),
        f.namespace.as_deref().unwrap_or("-"),
        f.risk_level.map(|r| r.as_str()).unwrap_or("-"),
        f.estimated_tokens,
        f.estimated_cost_usd,
    );
    println!("fingerprint: {}", d.fingerprint);
}

fn print_explain(d: &Decision, trace: &[RuleTrace]) {
    println!();
    if trace.is_empty() {
        println!(
            "rules considered: none (decided at the {:?} stage, before policies)",
            d.stage
        );
        return;
    }
    println!("rules considered, in precedence order:");
    for t in trace {
        let mark = if t.decided {
            "=> DECIDED"
        } else if t.excluded {
            "   excluded (rule skipped)"
        } else if t.matched && t.enforcement == policybind_crds::Enforcement::Audit {
            "   matched (audit only)"
        } else if t.matched {
            "   matched (after the decision)"
        } else {
            "   no match"
        };
        println!(
            "{mark:<32} {}/{} [priority {}, {:?}, {}]: {}",
            t.policy, t.rule, t.priority, t.enforcement, t.action, t.reason
        );
    }
}
