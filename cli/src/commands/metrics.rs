//! `policybind metrics list` (hidden): every Prometheus sample name the roles of
//! this binary export, read from their own registries (operator, webhook,
//! sidecar and `serve`), so that dashboards and alerts can be checked against
//! what is really exported rather than against a hand-kept list (see the test
//! below, which reads every Grafana panel of the chart).

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct MetricsArgs {
    #[command(subcommand)]
    command: MetricsCommand,
}

#[derive(clap::Subcommand, Debug)]
enum MetricsCommand {
    /// Print every exported sample name with its type and the role exporting it,
    /// one per line: `policybind_sidecar_decisions_total counter sidecar`.
    List,
}

/// One sample name as Prometheus stores it (`_total`, `_bucket`, ... included).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExportedSample {
    pub name: String,
    /// The metric family's type: counter, gauge, histogram, info, ...
    pub kind: String,
    /// operator, webhook or sidecar (`serve` exports the sidecar's).
    pub role: &'static str,
}

pub fn run(args: MetricsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        MetricsCommand::List => {
            for sample in exported() {
                println!("{} {} {}", sample.name, sample.kind, sample.role);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every sample name of every role, sorted.
pub fn exported() -> Vec<ExportedSample> {
    let mut samples: Vec<ExportedSample> = [
        ("operator", operator_exposition()),
        ("webhook", webhook_exposition()),
        ("sidecar", sidecar_exposition()),
    ]
    .iter()
    .flat_map(|(role, text)| samples_of(role, text))
    .collect();
    samples.sort();
    samples.dedup();
    samples
}

// A family with no sample yet is left out of an exposition entirely, so each
// role's metrics are built afresh and every family is given one placeholder
// sample before encoding. A family registered but not touched here is caught by
// `every_registered_family_is_listed` below.
const PLACEHOLDER: &str = "-";

fn operator_exposition() -> String {
    use policybind_operator::metrics::*;
    let m = Metrics::default();
    let controller = ControllerLabels {
        controller: PLACEHOLDER,
    };
    let namespace = NamespaceLabels {
        namespace: PLACEHOLDER.into(),
    };
    m.reconciles.get_or_create(&controller).inc();
    m.durations.get_or_create(&controller).observe(0.0);
    m.errors
        .get_or_create(&ErrorLabels {
            controller: PLACEHOLDER,
            error: PLACEHOLDER,
        })
        .inc();
    m.objects
        .get_or_create(&PhaseLabels {
            kind: PLACEHOLDER,
            phase: PLACEHOLDER.into(),
        })
        .set(0);
    m.bundle_writes.get_or_create(&namespace).inc();
    m.ledger_writes.get_or_create(&namespace).inc();
    m.bundle_bytes.get_or_create(&namespace).set(0);
    m.audit_segments_removed.get_or_create(&namespace).inc();
    m.report_writes
        .get_or_create(&ReportLabels {
            kind: PLACEHOLDER,
            report: PLACEHOLDER,
            namespace: PLACEHOLDER.into(),
        })
        .inc();
    m.report_api_available
        .get_or_create(&ReportApiLabels { kind: PLACEHOLDER })
        .set(0);
    let token = TokenBudgetLabels {
        namespace: PLACEHOLDER.into(),
        token: PLACEHOLDER.into(),
        period: PLACEHOLDER,
    };
    m.token_spend_usd.get_or_create(&token).set(0.0);
    m.token_spend_tokens.get_or_create(&token).set(0);
    m.encode()
}

fn webhook_exposition() -> String {
    use policybind_webhook::metrics::*;
    let m = Metrics::new();
    m.reviews
        .get_or_create(&ReviewLabels {
            webhook: PLACEHOLDER,
            kind: PLACEHOLDER.into(),
            operation: PLACEHOLDER.into(),
            allowed: PLACEHOLDER,
        })
        .inc();
    m.duration
        .get_or_create(&WebhookLabel {
            webhook: PLACEHOLDER,
        })
        .observe(0.0);
    m.injections
        .get_or_create(&InjectionLabels {
            result: PLACEHOLDER,
        })
        .inc();
    m.audit_records
        .get_or_create(&AuditLabels {
            result: PLACEHOLDER,
            reason: PLACEHOLDER,
        })
        .inc();
    m.encode()
}

fn sidecar_exposition() -> String {
    use policybind_sidecar::metrics::*;
    let m = Metrics::new();
    let now = chrono::Utc::now();
    m.decision(PLACEHOLDER, PLACEHOLDER, None);
    m.upstream(PLACEHOLDER, PLACEHOLDER, 0.0);
    m.bundle_loaded(PLACEHOLDER, now);
    let budget = BudgetLabels {
        token: PLACEHOLDER.into(),
        period: PLACEHOLDER.into(),
    };
    m.budget_spent_usd.get_or_create(&budget).set(0.0);
    m.budget_spent_tokens.get_or_create(&budget).set(0);
    m.rate_limited
        .get_or_create(&TokenLabels {
            token: PLACEHOLDER.into(),
        })
        .inc();
    m.settlements
        .get_or_create(&SettlementLabels {
            source: PLACEHOLDER.into(),
        })
        .inc();
    m.reloads
        .get_or_create(&ReloadLabels {
            result: PLACEHOLDER.into(),
        })
        .inc();
    m.bundle_rejected
        .get_or_create(&RejectedLabels {
            reason: PLACEHOLDER.into(),
        })
        .inc();
    m.unauthenticated
        .get_or_create(&CodeLabels {
            code: PLACEHOLDER.into(),
        })
        .inc();
    m.output
        .get_or_create(&OutputLabels {
            action: PLACEHOLDER.into(),
        })
        .inc();
    m.encode(now)
}

/// Sample names from an exposition's `# TYPE` lines: the names Prometheus stores
/// for each family type, whether or not the family has a sample yet.
fn samples_of(role: &'static str, exposition: &str) -> Vec<ExportedSample> {
    let mut out = vec![];
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let Some((family, kind)) = rest.split_once(' ') else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        for suffix in suffixes {
            out.push(ExportedSample {
                name: format!("{family}{suffix}"),
                kind: kind.to_string(),
                role,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    use promql_parser::parser::{self, Expr};

    #[test]
    fn exported_names_follow_the_exposition_types() {
        let names: BTreeSet<String> = exported().into_iter().map(|s| s.name).collect();
        for name in [
            "policybind_sidecar_decisions_total",
            "policybind_sidecar_decide_duration_seconds_bucket",
            "policybind_sidecar_audit_backlog_records",
            "policybind_sidecar_bundle_info",
            "policybind_operator_leader",
            "policybind_webhook_admission_reviews_total",
        ] {
            assert!(names.contains(name), "{name} missing from {names:?}");
        }
        assert!(
            !names.contains("policybind_sidecar_decisions"),
            "counters end in _total"
        );
    }

    /// Guards the placeholder samples above: every family a role's `metrics.rs`
    /// registers shows up in its exposition (a `register("name", ...)` call each).
    #[test]
    fn every_registered_family_is_listed() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let registration = regex::Regex::new(r#"\.register\(\s*"([a-z_]+)""#).unwrap();
        for (role, file, text) in [
            ("operator", "operator/src/metrics.rs", operator_exposition()),
            ("webhook", "webhook/src/metrics.rs", webhook_exposition()),
            ("sidecar", "sidecar/src/metrics.rs", sidecar_exposition()),
        ] {
            let source = std::fs::read_to_string(root.join(file)).unwrap();
            let registered: BTreeSet<&str> = registration
                .captures_iter(&source)
                .map(|c| c.get(1).unwrap().as_str())
                .collect();
            assert!(!registered.is_empty(), "no registration found in {file}");
            let families: BTreeSet<String> = samples_of(role, &text)
                .into_iter()
                .map(|s| s.name)
                .collect();
            for name in registered {
                let family = format!("policybind_{role}_{name}");
                assert!(
                    ["", "_total", "_bucket", "_info"]
                        .iter()
                        .any(|suffix| families.contains(&format!("{family}{suffix}"))),
                    "{file} registers {name:?}, but `policybind metrics list` misses it: \
                     give it a placeholder sample in cli/src/commands/metrics.rs"
                );
            }
        }
    }

    /// Metric names a PromQL expression selects.
    fn selected_metrics(expr: &Expr, out: &mut Vec<String>) {
        match expr {
            Expr::VectorSelector(v) => out.extend(v.name.clone().or_else(|| {
                v.matchers
                    .matchers
                    .iter()
                    .find(|m| m.name == "__name__")
                    .map(|m| m.value.clone())
            })),
            Expr::MatrixSelector(m) => selected_metrics(&Expr::VectorSelector(m.vs.clone()), out),
            Expr::Aggregate(a) => {
                selected_metrics(&a.expr, out);
                if let Some(param) = &a.param {
                    selected_metrics(param, out);
                }
            }
            Expr::Unary(u) => selected_metrics(&u.expr, out),
            Expr::Binary(b) => {
                selected_metrics(&b.lhs, out);
                selected_metrics(&b.rhs, out);
            }
            Expr::Paren(p) => selected_metrics(&p.expr, out),
            Expr::Subquery(s) => selected_metrics(&s.expr, out),
            Expr::Call(c) => c.args.args.iter().for_each(|a| selected_metrics(a, out)),
            Expr::Extension(_) | Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
        }
    }

    /// Grafana's interval variables are not PromQL; anything the parser accepts
    /// in a range position stands in for them.
    fn without_grafana_variables(expr: &str) -> String {
        ["$__rate_interval", "$__interval", "$__range"]
            .iter()
            .fold(expr.to_string(), |e, v| e.replace(v, "5m"))
    }

    fn panels(value: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
        for panel in value["panels"].as_array().into_iter().flatten() {
            out.push(panel.clone());
            panels(panel, out);
        }
    }

    #[test]
    fn every_grafana_panel_queries_only_metrics_the_binaries_export() {
        let exported: BTreeSet<String> = exported().into_iter().map(|s| s.name).collect();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/policybind/dashboards");
        let mut checked = 0;
        let mut problems = vec![];
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let dashboard: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let mut all = vec![];
            panels(&dashboard, &mut all);
            for panel in all
                .iter()
                .filter(|p| p["type"] != "row" && p["type"] != "text")
            {
                let title = panel["title"].as_str().unwrap_or("(untitled)");
                let targets = panel["targets"].as_array().cloned().unwrap_or_default();
                if targets.is_empty() {
                    problems.push(format!("{}: panel {title:?} has no query", path.display()));
                }
                for target in targets {
                    let expr = target["expr"].as_str().unwrap_or_default();
                    let ast = match parser::parse(&without_grafana_variables(expr)) {
                        Ok(ast) => ast,
                        Err(e) => {
                            problems.push(format!("panel {title:?}: {expr}: {e}"));
                            continue;
                        }
                    };
                    let mut names = vec![];
                    selected_metrics(&ast, &mut names);
                    if names.is_empty() {
                        problems.push(format!("panel {title:?}: {expr}: selects no metric"));
                    }
                    for name in names {
                        checked += 1;
                        if !exported.contains(&name) {
                            problems.push(format!(
                                "panel {title:?} queries {name}, which no PolicyBind role exports"
                            ));
                        }
                    }
                }
            }
            // Template variables such as label_values(<metric>, namespace).
            for variable in dashboard["templating"]["list"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let query = variable["query"].as_str().unwrap_or_default();
                if let Some(inner) = query
                    .strip_prefix("label_values(")
                    .and_then(|q| q.split(',').next())
                {
                    let metric = inner.split('{').next().unwrap_or(inner).trim();
                    if !exported.contains(metric) {
                        problems.push(format!("variable {query:?}: {metric} is not exported"));
                    }
                }
            }
        }
        assert!(
            checked > 0,
            "no panel query was read from {}",
            dir.display()
        );
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
