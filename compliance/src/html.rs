//! Self-contained HTML for reports: one file, inline CSS, no script, no font, no
//! image, no link outside the page, so it opens offline, archives as it is and
//! prints readably (`@media print` drops colours and starts sections on new pages).
//!
//! The page carries the SHA-256 of the report's canonical JSON in a `meta` element
//! and in its footer. Rendering is a pure function of the report and that digest,
//! so `policybind report verify` renders again and compares byte for byte.
use std::fmt::Write;

use crate::evidence::{Finding, FindingStatus};
use crate::incident_report::IncidentReport;
use crate::model_card::ModelCard;
use crate::report::{ControlStatus, Report};

/// Name of the `meta` element holding the canonical JSON's SHA-256.
pub const DIGEST_META: &str = "policybind-report-sha256";

const STYLE: &str = r#"
:root { --ok: #1b5e20; --partial: #8a6d00; --bad: #b71c1c; --none: #455a64; --line: #d0d7de; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; margin: 0 auto; max-width: 1100px; padding: 24px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; border-bottom: 2px solid var(--line); padding-bottom: 4px; margin-top: 36px; }
h3 { font-size: 16px; margin: 22px 0 6px; } code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 14px; } th, td { border: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 10px 0; } dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; color: #fff; white-space: nowrap; }
.Satisfied, .Passed, .Notified, .Approved { background: var(--ok); } .PartiallyEvidenced, .Gap, .Due, .Pending { background: var(--partial); }
.NotSatisfied, .Failed, .Overdue, .NotifiedLate, .Rejected { background: var(--bad); } .NotEvidenced, .NotApplicable, .NotRequired { background: var(--none); }
article { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; margin: 12px 0; page-break-inside: avoid; }
.issues li { color: var(--bad); } .outside { background: #f6f8fa; border-left: 4px solid var(--none); padding: 6px 10px; }
footer { margin-top: 40px; border-top: 2px solid var(--line); padding-top: 8px; font-size: 13px; color: #57606a; }
@media print { body { max-width: none; padding: 0; font-size: 11pt; } h2 { break-before: page; } tr, article { break-inside: avoid; }
  .badge { color: #000; background: none !important; border: 1px solid #000; } a { color: inherit; text-decoration: none; } }
"#;

/// Escapes text for HTML element content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// An id usable as a fragment: letters, digits, '-', '.', '_' kept; the rest '-'.
fn anchor(prefix: &str, id: &str) -> String {
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{prefix}-{clean}")
}

fn badge(class: &str, text: &str) -> String {
    format!("<span class=\"badge {}\">{}</span>", esc(class), esc(text))
}

fn head(out: &mut String, title: &str, digest: &str, generator: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<meta name=\"{DIGEST_META}\" content=\"{}\">\n<meta name=\"generator\" content=\"{}\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(digest),
        esc(generator),
        esc(title)
    );
}

fn table(out: &mut String, header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    out.push_str("<table><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

fn list(out: &mut String, class: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let _ = write!(out, "<ul class=\"{class}\">");
    for item in items {
        let _ = write!(out, "<li>{}</li>", esc(item));
    }
    out.push_str("</ul>\n");
}

fn footer(out: &mut String, digest: &str, verify_hint: &str) {
    let _ = write!(
        out,
        "<footer><p>SHA-256 of the canonical JSON this page was rendered from: <code>{}</code></p><p>{}</p></footer>\n</body>\n</html>\n",
        esc(digest),
        esc(verify_hint)
    );
}

/// The compliance report page.
pub fn render_report(report: &Report, digest: &str) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let title = format!("{}: PolicyBind compliance report", report.catalog.title);
    head(&mut out, &title, digest, &report.generator);
    header(&mut out, report);
    summary(&mut out, report);
    trail(&mut out, report);
    controls(&mut out, report);
    out.push_str("<h2 id=\"evidence\">Evidence</h2>\n<p>Each control above links here. A finding names the objects, audit record ranges (writer, first and last sequence number) and approvers it rests on.</p>\n");
    for finding in &report.evidence {
        evidence(&mut out, finding);
    }
    out.push_str("<h2 id=\"model-cards\">Model cards</h2>\n<p>Generated from the model registry (ModelDeployment) and its evidence.</p>\n");
    for card in &report.model_cards {
        model_card(&mut out, card);
    }
    not_evidenced(&mut out, report);
    let name = &report.catalog.framework;
    footer(
        &mut out,
        digest,
        &format!(
            "Verify: policybind report verify {name}.json --key <report verification key>. The signature ({name}.json.sig) covers the canonical JSON; this page and {name}.oscal-ar.json are re-rendered from it and compared."
        ),
    );
    out
}

fn header(out: &mut String, report: &Report) {
    let scope = &report.scope;
    let period = match (scope.since, scope.until) {
        (None, None) => "the whole trail".to_string(),
        (since, until) => format!(
            "{} to {}",
            since.map_or("the start".into(), |t| t.to_rfc3339()),
            until.map_or("the end".into(), |t| t.to_rfc3339())
        ),
    };
    let _ = writeln!(
        out,
        "<header><h1>{}</h1><p>PolicyBind compliance report</p><dl class=\"meta\"><dt>Framework</dt><dd><code>{}</code></dd><dt>Catalog version</dt><dd>{}</dd><dt>Generated</dt><dd>{}</dd><dt>Namespace</dt><dd>{}</dd><dt>Audit period</dt><dd>{}</dd><dt>Sources</dt><dd>{}</dd><dt>Generator</dt><dd>{}</dd></dl></header>",
        esc(&report.catalog.title),
        esc(&report.catalog.framework),
        esc(&report.catalog.version),
        esc(&report.generated_at.to_rfc3339()),
        esc(scope.namespace.as_deref().unwrap_or("all namespaces")),
        esc(&period),
        report
            .sources
            .iter()
            .map(|s| esc(s))
            .collect::<Vec<_>>()
            .join("<br>"),
        esc(&report.generator)
    );
}

fn summary(out: &mut String, report: &Report) {
    let s = &report.summary;
    out.push_str("<h2 id=\"summary\">Summary</h2>\n");
    let rows = [
        (ControlStatus::Satisfied, s.satisfied),
        (ControlStatus::PartiallyEvidenced, s.partially_evidenced),
        (ControlStatus::NotSatisfied, s.not_satisfied),
        (ControlStatus::NotEvidenced, s.not_evidenced),
        (ControlStatus::NotApplicable, s.not_applicable),
    ];
    table(
        out,
        &["Status", "Controls", "Meaning"],
        rows.into_iter().map(|(status, n)| {
            let meaning = match status {
                ControlStatus::Satisfied => {
                    "PolicyBind's evidence covers the control and every finding behind it holds."
                }
                ControlStatus::PartiallyEvidenced => {
                    "PolicyBind's part holds; what it cannot show is named under the control."
                }
                ControlStatus::NotSatisfied => {
                    "A finding behind the control shows a gap or a failure; the reasons are listed."
                }
                ControlStatus::NotEvidenced => {
                    "PolicyBind cannot evidence this control; it must be shown by other means."
                }
                ControlStatus::NotApplicable => {
                    "Nothing in scope that the control's evidence concerns."
                }
            };
            vec![
                badge(status.as_str(), status.label()),
                n.to_string(),
                esc(meaning),
            ]
        }),
    );
    let _ = writeln!(out, "<p>{} controls in total.</p>", s.controls);
}

fn trail(out: &mut String, report: &Report) {
    let t = &report.trail;
    out.push_str("<h2 id=\"trail\">Audit trail verification for the period</h2>\n");
    let verdict = if !t.examined {
        badge("Gap", "no trail examined")
    } else if t.verified {
        badge("Satisfied", "complete and unmodified, signatures checked")
    } else if !t.problems.is_empty() {
        badge("Failed", "broken")
    } else {
        badge("Gap", "not proven (signatures not checked or no segment)")
    };
    let _ = writeln!(
        out,
        "<p>{verdict} {} record(s) verified; {} of them in this report's period and namespace. Source: {}.</p>",
        t.records_verified,
        t.records_in_scope,
        esc(t.source.as_deref().unwrap_or("none"))
    );
    list(out, "issues", &t.problems);
    table(
        out,
        &[
            "Writer",
            "Sequence",
            "Records",
            "In scope",
            "Segments",
            "Head hash",
            "Unsealed",
        ],
        t.writers.iter().map(|w| {
            vec![
                format!("<code>{}</code>", esc(&w.writer)),
                format!("{}..={}", w.first_seq, w.last_seq),
                w.records.to_string(),
                w.records_in_scope.to_string(),
                w.segments.to_string(),
                format!("<code>{}</code>", esc(&w.head)),
                w.unsealed_records.to_string(),
            ]
        }),
    );
}

fn controls(out: &mut String, report: &Report) {
    out.push_str("<h2 id=\"controls\">Controls</h2>\n");
    table(
        out,
        &["Control", "Reference", "Title", "Status", "Evidence"],
        report.controls.iter().map(|c| {
            vec![
                format!(
                    "<a href=\"#{}\"><code>{}</code></a>",
                    anchor("control", &c.id),
                    esc(&c.id)
                ),
                esc(&c.references.join(", ")),
                esc(&c.title),
                badge(c.status.as_str(), c.status.label()),
                c.evidence
                    .iter()
                    .map(|k| {
                        format!(
                            "<a href=\"#{}\">{}</a>",
                            anchor("evidence", k.id()),
                            esc(k.id())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        }),
    );
    for c in &report.controls {
        let _ = write!(
            out,
            "<article id=\"{}\"><h3><code>{}</code> {} {}</h3><p><strong>{}</strong></p><p>{}</p>",
            anchor("control", &c.id),
            esc(&c.id),
            esc(&c.title),
            badge(c.status.as_str(), c.status.label()),
            esc(&c.references.join(", ")),
            esc(&c.description)
        );
        if !c.evidence.is_empty() {
            let links: Vec<String> = c
                .evidence
                .iter()
                .map(|k| {
                    let status = report
                        .finding(*k)
                        .map_or("NotApplicable", |f| f.status.as_str());
                    format!(
                        "<a href=\"#{}\">{}</a> {}",
                        anchor("evidence", k.id()),
                        esc(k.id()),
                        badge(status, status)
                    )
                })
                .collect();
            let _ = write!(out, "<p>Evidence: {}</p>", links.join(" &middot; "));
        }
        list(out, "issues", &c.reasons);
        if let Some(outside) = &c.outside_policy_bind {
            let _ = write!(
                out,
                "<p class=\"outside\"><strong>Not evidenced by PolicyBind:</strong> {}</p>",
                esc(outside)
            );
        }
        out.push_str("</article>\n");
    }
}

fn evidence(out: &mut String, f: &Finding) {
    let _ = write!(
        out,
        "<article id=\"{}\"><h3>{} <code>{}</code> {}</h3><p>{}</p>",
        anchor("evidence", f.kind.id()),
        esc(&f.title),
        esc(f.kind.id()),
        badge(f.status.as_str(), f.status.as_str()),
        esc(&f.summary)
    );
    list(out, "issues", &f.issues);
    if !f.objects.is_empty() {
        table(
            out,
            &["Kind", "Object", "What it shows"],
            f.objects.iter().map(|o| {
                let name = match &o.namespace {
                    Some(ns) => format!("{ns}/{}", o.name),
                    None => o.name.clone(),
                };
                vec![
                    esc(&o.kind),
                    format!("<code>{}</code>", esc(&name)),
                    esc(&o.detail),
                ]
            }),
        );
    }
    if !f.records.is_empty() {
        table(
            out,
            &["Audit records", "Writer", "Sequence", "Count"],
            f.records.iter().map(|r| {
                vec![
                    esc(&r.what),
                    format!("<code>{}</code>", esc(&r.writer)),
                    format!("{}..={}", r.first_seq, r.last_seq),
                    r.count.to_string(),
                ]
            }),
        );
    }
    if !f.approvers.is_empty() {
        table(
            out,
            &[
                "Decision on",
                "ApprovalRequest",
                "Decision",
                "Approver",
                "Requester",
                "Audit record",
            ],
            f.approvers.iter().map(|a| {
                vec![
                    esc(&a.target),
                    format!("<code>{}</code>", esc(&a.request)),
                    esc(&a.decision),
                    esc(&a.approver),
                    esc(&a.requester),
                    format!("<code>{}</code>", esc(a.record.as_deref().unwrap_or("-"))),
                ]
            }),
        );
    }
    list(out, "notes", &f.notes);
    if f.status == FindingStatus::NotApplicable && f.objects.is_empty() && f.records.is_empty() {
        out.push_str("<p>Nothing in scope.</p>");
    }
    out.push_str("</article>\n");
}

fn dl(out: &mut String, rows: &[(&str, String)]) {
    out.push_str("<dl class=\"meta\">");
    for (term, value) in rows {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", esc(term), value);
    }
    out.push_str("</dl>\n");
}

fn or_dash(value: Option<&str>) -> String {
    esc(value.unwrap_or("-"))
}

/// One model card (also used in the incident report).
pub fn model_card(out: &mut String, card: &ModelCard) {
    let id = format!("{}/{}", card.namespace, card.name);
    let _ = write!(
        out,
        "<article id=\"{}\"><h3>Model card <code>{}</code>{}</h3>",
        anchor("model", &id),
        esc(&id),
        if card.suspended {
            " ".to_string() + &badge("Failed", "suspended")
        } else {
            String::new()
        }
    );
    let approval = &card.approval;
    dl(
        out,
        &[
            (
                "Model",
                esc(format!(
                    "{} {} {}",
                    card.provider,
                    card.model,
                    card.version.as_deref().unwrap_or("")
                )
                .trim()),
            ),
            (
                "Intended purpose",
                or_dash(card.intended_purpose.as_deref()),
            ),
            (
                "EU AI Act category",
                or_dash(card.eu_ai_act_category.as_deref()),
            ),
            (
                "Parties",
                if card.parties.is_empty() {
                    "-".into()
                } else {
                    card.parties
                        .iter()
                        .map(|p| esc(p))
                        .collect::<Vec<_>>()
                        .join("<br>")
                },
            ),
            (
                "Owner / team",
                esc(&format!("{} / {}", card.owner, card.team)),
            ),
            ("Region", or_dash(card.region.as_deref())),
            (
                "Use cases",
                if card.use_cases.is_empty() {
                    "any".into()
                } else {
                    esc(&card.use_cases.join(", "))
                },
            ),
            (
                "Highest data classification",
                esc(card.max_data_classification.as_str()),
            ),
            (
                "Data sources",
                if card.data_sources.is_empty() {
                    "-".into()
                } else {
                    card.data_sources
                        .iter()
                        .map(|d| esc(d))
                        .collect::<Vec<_>>()
                        .join("<br>")
                },
            ),
            (
                "Risk",
                esc(&format!(
                    "{} (score {}{})",
                    card.risk_level.as_str(),
                    card.risk_score,
                    if card.risk_factors.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", card.risk_factors.join(", "))
                    }
                )),
            ),
            (
                "Approval",
                format!(
                    "{} {}",
                    badge(&approval.state, &approval.state),
                    esc(&match (&approval.approver, &approval.request) {
                        (Some(a), Some(r)) => format!(
                            "by {a} (ApprovalRequest {r}, requested by {})",
                            approval.requester.as_deref().unwrap_or("-")
                        ),
                        _ => String::new(),
                    })
                ),
            ),
            (
                "Review",
                esc(&format!(
                    "every {} days; next due {}",
                    card.review_interval_days,
                    card.next_review_at
                        .map_or("unknown".into(), |t| t.format("%Y-%m-%d").to_string())
                )),
            ),
        ],
    );
    if !card.evaluations.is_empty() {
        table(
            out,
            &["Metric", "Value", "Dataset", "Date", "Source"],
            card.evaluations.iter().map(|e| {
                vec![
                    format!("<code>{}</code>", esc(&e.metric)),
                    esc(&e.value.to_string()),
                    esc(&e.dataset),
                    esc(&e.date.to_string()),
                    esc(&e.source),
                ]
            }),
        );
    }
    if !card.gates.is_empty() {
        table(
            out,
            &["Gate", "Result"],
            card.gates.iter().map(|g| {
                vec![
                    format!(
                        "<code>{}</code> {}",
                        esc(&g.id),
                        badge(
                            if g.passed { "Passed" } else { "Failed" },
                            if g.passed { "passed" } else { "failed" }
                        )
                    ),
                    esc(&g.message),
                ]
            }),
        );
    }
    table(
        out,
        &["Framework", "Compliant", "Reason"],
        card.compliance.iter().map(|c| {
            let status = if c.compliant {
                "Satisfied"
            } else {
                "NotSatisfied"
            };
            vec![
                format!("<code>{}</code>", esc(c.framework.id())),
                badge(status, if c.compliant { "yes" } else { "no" }),
                esc(&if c.message.is_empty() {
                    c.reason.clone()
                } else {
                    format!("{}: {}", c.reason, c.message)
                }),
            ]
        }),
    );
    list(out, "notes", &card.incidents);
    out.push_str("</article>\n");
}

fn not_evidenced(out: &mut String, report: &Report) {
    out.push_str("<h2 id=\"not-evidenced\">Controls PolicyBind does not evidence</h2>\n<p>These controls must be shown entirely by other means. Partially evidenced controls name what is missing under each control above.</p>\n");
    let rows: Vec<Vec<String>> = report
        .not_evidenced()
        .map(|c| {
            vec![
                format!(
                    "<a href=\"#{}\"><code>{}</code></a>",
                    anchor("control", &c.id),
                    esc(&c.id)
                ),
                esc(&c.title),
                esc(c.outside_policy_bind.as_deref().unwrap_or("-")),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("<p>None.</p>\n");
    } else {
        table(out, &["Control", "Title", "What to show instead"], rows);
    }
}

/// The serious-incident report page.
pub fn render_incident(report: &IncidentReport, digest: &str) -> String {
    let mut out = String::with_capacity(32 * 1024);
    let i = &report.incident;
    head(
        &mut out,
        &format!("Incident report {}/{}", i.namespace, i.name),
        digest,
        &report.generator,
    );
    let _ = writeln!(
        out,
        "<header><h1>Serious-incident report: <code>{}/{}</code></h1><p>Structured after the EU AI Act's reporting of serious incidents (Art. 73). Generated {} by {}.</p></header>",
        esc(&i.namespace),
        esc(&i.name),
        esc(&report.generated_at.to_rfc3339()),
        esc(&report.generator)
    );
    out.push_str("<h2 id=\"incident\">1. The incident</h2>\n");
    dl(
        &mut out,
        &[
            ("Summary", esc(&i.summary)),
            ("Pattern", format!("<code>{}</code>", esc(&i.pattern))),
            ("Subject", esc(&i.subject)),
            (
                "Severity / state",
                esc(&format!("{} / {}", i.severity, i.state)),
            ),
            ("Occurrences", i.occurrences.to_string()),
            ("Assignee", or_dash(i.assignee.as_deref())),
        ],
    );
    out.push_str("<h2 id=\"classification\">2. Seriousness and reporting deadline</h2>\n");
    match &report.classification {
        None => out.push_str("<p>No harm recorded (<code>spec.harm</code>): not classified as a serious incident, so no Art. 73 deadline applies. This report documents the incident all the same.</p>\n"),
        Some(c) => dl(&mut out, &[
            ("Harm", esc(&format!("{}{}", c.category, if c.widespread { ", widespread" } else { "" }))),
            ("What harm", esc(&c.description)),
            ("Aware since", esc(&c.aware_at.to_rfc3339())),
            ("Report due", esc(&format!("{} ({} days; {})", c.deadline.due.to_rfc3339(), c.deadline.days, c.deadline.basis))),
        ]),
    }
    out.push_str("<h2 id=\"system\">3. The AI system concerned</h2>\n");
    match &report.system {
        Some(card) => model_card(&mut out, card),
        None => out.push_str("<p class=\"outside\">Not named: the Incident has no <code>spec.model</code>, or the model is not in the registry given.</p>\n"),
    }
    incident_rest(&mut out, report);
    footer(
        &mut out,
        digest,
        &format!(
            "Verify: policybind report verify incident-{}.json --key <report verification key>.",
            i.name
        ),
    );
    out
}

fn incident_rest(out: &mut String, report: &IncidentReport) {
    out.push_str("<h2 id=\"timeline\">4. Timeline</h2>\n");
    table(
        out,
        &["When (UTC)", "What", "Who", "Source"],
        report.timeline.iter().map(|t| {
            vec![
                esc(&t.at.to_rfc3339()),
                esc(&t.event),
                or_dash(t.actor.as_deref()),
                format!("<code>{}</code>", esc(&t.source)),
            ]
        }),
    );
    out.push_str("<h2 id=\"records\">5. Evidence from the audit trail</h2>\n");
    let _ = write!(
        out,
        "<p>Trail: {}. {} record(s) verified.</p>",
        if report.trail.verified {
            badge("Satisfied", "complete and unmodified")
        } else if report.trail.examined {
            badge("Failed", "not proven")
        } else {
            badge("Gap", "not examined")
        },
        report.trail.records_verified
    );
    list(out, "issues", &report.trail.problems);
    table(
        out,
        &[
            "Record",
            "In verified trail",
            "Time",
            "Kind",
            "Effect",
            "Model",
            "Codes",
            "Decided by",
            "Hash",
        ],
        report.records.iter().map(|r| {
            vec![
                format!("<code>{}</code>", esc(&r.id)),
                if r.found {
                    badge("Satisfied", "yes")
                } else {
                    badge("Failed", "no")
                },
                or_dash(r.time.as_deref()),
                or_dash(r.kind.as_deref()),
                or_dash(r.effect.as_deref()),
                or_dash(r.model.as_deref()),
                esc(&r.codes.join(", ")),
                or_dash(r.decided_by.as_deref()),
                format!("<code>{}</code>", or_dash(r.hash.as_deref())),
            ]
        }),
    );
    out.push_str("<h2 id=\"cause\">6. Cause and causal link</h2>\n");
    let _ = writeln!(out, "<p>{}</p>", or_dash(report.root_cause.as_deref()));
    out.push_str("<h2 id=\"remediation\">7. Corrective measures</h2>\n");
    let _ = writeln!(out, "<p>{}</p>", or_dash(report.remediation.as_deref()));
    out.push_str("<h2 id=\"notification\">8. Notification of the authority</h2>\n");
    let n = &report.notification;
    dl(
        out,
        &[
            ("Status", badge(&n.status, &n.status)),
            ("Authority", or_dash(n.authority.as_deref())),
            (
                "Notified",
                esc(&n.notified_at.map_or("-".into(), |t| t.to_rfc3339())),
            ),
            ("Reference", or_dash(n.reference.as_deref())),
        ],
    );
    out.push_str("<h2 id=\"open\">9. Open items</h2>\n");
    if report.open_items.is_empty() {
        out.push_str("<p>None: this is a complete report.</p>\n");
    } else {
        out.push_str("<p>An initial report may be followed by a complete one; these items are still open:</p>\n");
        list(out, "issues", &report.open_items);
    }
}
