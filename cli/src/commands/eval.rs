//! `policybind eval`: decide one request offline and explain the decision.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use policybind_engine::PolicySet;
use policybind_engine::request::{Decision, Request, RuleTrace};

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
    /// Explain: the deciding policy and rule, and why each rule did or did not match.
    #[arg(long)]
    explain: bool,
    /// Print the decision as JSON instead of text.
    #[arg(long, conflicts_with = "explain")]
    json: bool,
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
    if let Some(ns) = args.namespace {
        request.namespace = Some(ns);
    }
    let (decision, trace) = set.decide_explained(&request);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&decision)?);
    } else {
        print_decision(&decision);
        if args.explain {
            print_explain(&decision, &trace);
        }
    }
    Ok(ExitCode::SUCCESS)
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
