//! Reports over the example organisation: control status rules, determinism, a
//! self-contained page, hostile input, secrets, a broken trail, namespace scope, and
//! the serious-incident report.
mod support;

use chrono::Duration;
use policybind_compliance::catalog::{self, Catalog};
use policybind_compliance::evidence::{EvidenceKind, FindingStatus, Scope, Snapshot, Trail};
use policybind_compliance::report::{self, ControlStatus, Report};
use policybind_compliance::{canonical, html, incident_report, signing};
use policybind_crds::Incident;
use policybind_crds::incident::{AuthorityNotification, HarmCategory, IncidentHarm};
use policybind_engine::audit::VerifyOptions;
use policybind_engine::manifest::Object;
use support::*;

fn build(catalog: &Catalog, snapshot: &Snapshot) -> Report {
    report::build(catalog, snapshot, vec!["test".into()], "policybind test")
}

fn custom(controls: &str) -> Catalog {
    catalog::parse("test.yaml", &format!("format: policybind-controls/v1\nframework: test\ntitle: Test\nversion: \"1\"\ncontrols:\n{controls}")).unwrap()
}

fn status_of(report: &Report, id: &str) -> ControlStatus {
    report.controls.iter().find(|c| c.id == id).unwrap().status
}

#[test]
fn control_status_follows_coverage_and_findings() {
    let catalog = custom(
        r#"
  - {id: full, title: T, description: D, coverage: Full, evidence: [audit-trail]}
  - {id: partial, title: T, description: D, coverage: Partial, evidence: [audit-trail], outsidePolicyBind: the rest}
  - {id: none, title: T, description: D, coverage: None, outsidePolicyBind: everything}
  - {id: gap, title: T, description: D, coverage: Full, evidence: [audit-trail, intended-purpose]}
"#,
    );
    let with_trail = example_snapshot(Scope::default());
    let report = build(&catalog, &with_trail);
    assert_eq!(status_of(&report, "full"), ControlStatus::Satisfied);
    assert_eq!(
        status_of(&report, "partial"),
        ControlStatus::PartiallyEvidenced
    );
    assert_eq!(status_of(&report, "none"), ControlStatus::NotEvidenced);
    assert_eq!(
        report
            .not_evidenced()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        ["none"]
    );

    let mut without_trail = with_trail.clone();
    without_trail.trail = None;
    without_trail.models[0]
        .spec
        .governance
        .as_mut()
        .unwrap()
        .intended_purpose = None;
    let report = build(&catalog, &without_trail);
    assert_eq!(status_of(&report, "full"), ControlStatus::NotSatisfied);
    let gap = report.controls.iter().find(|c| c.id == "gap").unwrap();
    assert_eq!(gap.status, ControlStatus::NotSatisfied);
    assert!(
        gap.reasons
            .iter()
            .any(|r| r == "audit-trail: no audit trail was given to the report"),
        "{:?}",
        gap.reasons
    );
    assert!(
        gap.reasons.iter().any(|r| r
            == "intended-purpose: ai-platform/gpt-4o: spec.governance.intendedPurpose is not set"),
        "{:?}",
        gap.reasons
    );
}

#[test]
fn a_control_whose_evidence_has_nothing_in_scope_is_not_applicable() {
    let catalog = custom(
        "  - {id: sir, title: T, description: D, coverage: Full, evidence: [serious-incident-reporting]}\n",
    );
    let mut snapshot = example_snapshot(Scope::default());
    snapshot.incidents.clear();
    assert_eq!(
        status_of(&build(&catalog, &snapshot), "sir"),
        ControlStatus::NotApplicable
    );
}

#[test]
fn the_same_inputs_give_the_same_bytes() {
    let catalog = catalog::built_in("nist-ai-rmf").unwrap();
    let a = build(&catalog, &example_snapshot(Scope::default()));
    let b = build(&catalog, &example_snapshot(Scope::default()));
    let (ca, cb) = (
        canonical::to_bytes(&a).unwrap(),
        canonical::to_bytes(&b).unwrap(),
    );
    assert_eq!(ca, cb);
    let digest = signing::digest(&ca);
    assert_eq!(
        html::render_report(&a, &digest),
        html::render_report(&b, &digest)
    );
    // And the JSON read back renders the same page: what `report verify` relies on.
    let back: Report = serde_json::from_slice(&serde_json::to_vec_pretty(&a).unwrap()).unwrap();
    assert_eq!(canonical::to_bytes(&back).unwrap(), ca);
}

#[test]
fn the_page_is_self_contained() {
    let report = build(
        &catalog::built_in("eu-ai-act").unwrap(),
        &example_snapshot(Scope::default()),
    );
    let page = html::render_report(&report, "abc");
    for forbidden in [
        "<script",
        "<link",
        "src=",
        "url(",
        "@import",
        "href=\"http",
        "<iframe",
    ] {
        assert!(!page.contains(forbidden), "the page contains {forbidden}");
    }
    assert!(page.contains("<meta name=\"policybind-report-sha256\" content=\"abc\">"));
    assert!(page.contains("@media print"));
    // Every in-page link has its target.
    for link in page.split("href=\"#").skip(1) {
        let target = &link[..link.find('"').unwrap()];
        assert!(
            page.contains(&format!("id=\"{target}\"")),
            "no target for #{target}"
        );
    }
}

#[test]
fn text_from_manifests_is_escaped_in_the_page() {
    // Anyone who may write a ModelDeployment chooses its texts; they must not become markup.
    let mut snapshot = example_snapshot(Scope::default());
    let hostile = "<script>alert('x')</script><img src=x onerror=alert(1)>";
    snapshot.models[0].spec.owner = hostile.into();
    snapshot.models[0]
        .spec
        .governance
        .as_mut()
        .unwrap()
        .intended_purpose = Some(format!("\"><a href=\"https://evil.example\">{hostile}"));
    let report = build(&catalog::built_in("eu-ai-act").unwrap(), &snapshot);
    let page = html::render_report(&report, "abc");
    assert!(!page.contains("<script>alert"), "unescaped script");
    assert!(!page.contains("<img src=x"), "unescaped image");
    assert!(
        !page.contains("<a href=\"https://evil.example\""),
        "unescaped link"
    );
    assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
}

#[test]
fn token_values_never_reach_a_report() {
    // Secrets holding token values are read by the manifest tools (standalone mode);
    // a report must carry nothing of them.
    let secret_value = "pb-live-4f9c1e7a-do-not-leak";
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: campaign-writer-token, namespace: marketing}}\nstringData: {{token: {secret_value}}}\n"
    );
    let mut objects = example_objects();
    objects.extend(
        policybind_engine::manifest::parse_documents("secret.yaml", &secret)
            .unwrap()
            .into_iter()
            .map(|(_, o)| o),
    );
    assert!(objects.iter().any(|o| matches!(o, Object::Secret(_))));
    let mut snapshot =
        Snapshot::from_objects(objects, Scope::default(), at("2026-12-01T00:00:00Z"));
    snapshot.trail = example_snapshot(Scope::default()).trail;
    for framework in catalog::built_in_frameworks() {
        let report = build(&catalog::built_in(framework).unwrap(), &snapshot);
        let json = serde_json::to_string(&report).unwrap();
        assert!(
            !json.contains(secret_value) && !json.contains("4f9c1e7a"),
            "{framework}"
        );
        assert!(
            !html::render_report(&report, "x").contains("4f9c1e7a"),
            "{framework}"
        );
    }
}

#[test]
fn a_modified_record_fails_the_trail_and_its_writer_gives_no_evidence() {
    let mut segments = example_segments();
    let marketing = segments
        .iter_mut()
        .find(|s| s.segment.header.writer.contains("marketing") && s.segment.header.first_seq == 1)
        .unwrap();
    marketing.segment.records[1].effect = Some(policybind_crds::Effect::Allow);
    let options = VerifyOptions {
        keyring: Some(
            policybind_engine::audit::Keyring::single(example_audit_key(), vec!["**".into()])
                .unwrap(),
        ),
        ..Default::default()
    };
    let mut snapshot = example_snapshot(Scope::default());
    snapshot.trail = Some(Trail::from_segments("tampered".into(), &segments, &options));
    let report = build(&catalog::built_in("eu-ai-act").unwrap(), &snapshot);
    let trail = report.finding(EvidenceKind::AuditTrail).unwrap();
    assert_eq!(trail.status, FindingStatus::Failed);
    assert!(
        trail
            .issues
            .iter()
            .any(|i| i.starts_with("MODIFIED: writer \"sidecar/marketing/campaign-app-7d9f4\"")),
        "{:?}",
        trail.issues
    );
    assert!(!report.trail.verified);
    let decisions = report.finding(EvidenceKind::DecisionRecords).unwrap();
    assert!(
        decisions
            .records
            .iter()
            .all(|r| !r.writer.contains("marketing")),
        "records of the broken writer are not evidence"
    );
    assert_eq!(status_of(&report, "art-12"), ControlStatus::NotSatisfied);
}

#[test]
fn an_unsigned_trail_is_not_proven() {
    let options = VerifyOptions::default();
    let mut snapshot = example_snapshot(Scope::default());
    snapshot.trail = Some(Trail::from_segments(
        "unsigned".into(),
        &example_segments(),
        &options,
    ));
    let report = build(&catalog::built_in("eu-ai-act").unwrap(), &snapshot);
    assert!(!report.trail.verified);
    let trail = report.finding(EvidenceKind::AuditTrail).unwrap();
    assert_eq!(trail.status, FindingStatus::Gap);
    assert!(
        trail
            .issues
            .iter()
            .any(|i| i.contains("signatures were not checked"))
    );
}

#[test]
fn a_namespace_report_holds_that_namespace_and_what_is_shared_with_it() {
    let snapshot = example_snapshot(Scope {
        namespace: Some("support".into()),
        ..Scope::default()
    });
    let report = build(&catalog::built_in("soc2").unwrap(), &snapshot);
    let cards: Vec<String> = report
        .model_cards
        .iter()
        .map(|c| format!("{}/{}", c.namespace, c.name))
        .collect();
    assert!(cards.contains(&"support/support-agent".to_string()));
    assert!(
        cards.contains(&"ai-platform/gpt-4o".to_string()),
        "shared cluster-wide"
    );
    assert!(
        !cards.contains(&"finance/credit-scoring".to_string()),
        "{cards:?}"
    );
    assert!(
        snapshot
            .records()
            .all(|r| r.namespace.as_deref() == Some("support"))
    );
    assert_eq!(
        report.trail.records_in_scope,
        snapshot.records().count() as u64
    );
    assert!(report.trail.records_in_scope < report.trail.records_verified);
}

#[test]
fn a_period_selects_records_by_time() {
    let snapshot = example_snapshot(Scope {
        since: Some(at("2026-11-16T00:00:00Z")),
        until: Some(at("2026-11-17T00:00:00Z")),
        ..Scope::default()
    });
    let times: Vec<String> = snapshot.records().map(|r| r.time.to_string()).collect();
    assert!(
        !times.is_empty() && times.iter().all(|t| t.starts_with("2026-11-16")),
        "{times:?}"
    );
}

fn serious(harm: HarmCategory, widespread: bool) -> IncidentHarm {
    IncidentHarm {
        category: harm,
        description: "harm".into(),
        aware_at: at("2026-11-12T09:30:00Z"),
        widespread,
    }
}

#[test]
fn reporting_deadlines_follow_the_kind_of_harm() {
    let due = |h: IncidentHarm| incident_report::reporting_deadline(&h);
    assert_eq!(
        due(serious(HarmCategory::FundamentalRightsInfringement, false)).due,
        at("2026-11-27T09:30:00Z")
    );
    assert_eq!(due(serious(HarmCategory::Death, false)).days, 10);
    assert_eq!(
        due(serious(
            HarmCategory::CriticalInfrastructureDisruption,
            false
        ))
        .days,
        2
    );
    assert_eq!(
        due(serious(HarmCategory::PropertyOrEnvironmentHarm, true)).days,
        2
    );
}

fn example_incident(snapshot: &Snapshot) -> Incident {
    snapshot
        .incidents
        .iter()
        .find(|i| i.metadata.name.as_deref() == Some("support-agent-data-exposure"))
        .unwrap()
        .clone()
}

#[test]
fn the_incident_report_proves_its_records_and_completes_its_sections() {
    let snapshot = example_snapshot(Scope::default());
    let report = incident_report::build(&example_incident(&snapshot), &snapshot, "policybind test");
    assert!(report.serious);
    assert_eq!(report.notification.status, "Notified");
    assert_eq!(report.records.len(), 3);
    assert!(
        report
            .records
            .iter()
            .all(|r| r.found && r.codes.contains(&"PII_DETECTED".to_string())),
        "{:?}",
        report.records
    );
    assert_eq!(report.system.as_ref().unwrap().name, "support-agent");
    assert!(report.open_items.is_empty(), "{:?}", report.open_items);
    let sources: Vec<&str> = report.timeline.iter().map(|t| t.source.as_str()).collect();
    assert!(
        sources.contains(&"audit sidecar/support/support-agent-5c2b8:4"),
        "{sources:?}"
    );
    assert!(
        report.timeline.windows(2).all(|w| w[0].at <= w[1].at),
        "in time order"
    );
    let page = html::render_incident(&report, "d1");
    for section in [
        "1. The incident",
        "2. Seriousness and reporting deadline",
        "3. The AI system concerned",
        "4. Timeline",
        "5. Evidence from the audit trail",
        "6. Cause and causal link",
        "7. Corrective measures",
        "8. Notification of the authority",
        "9. Open items",
    ] {
        assert!(page.contains(section), "{section}");
    }
}

#[test]
fn a_missed_deadline_is_overdue_and_fails_the_reporting_evidence() {
    let mut snapshot = example_snapshot(Scope::default());
    let index = snapshot
        .incidents
        .iter()
        .position(|i| i.metadata.name.as_deref() == Some("support-agent-data-exposure"))
        .unwrap();
    snapshot.incidents[index].spec.authority_notification = None;
    snapshot.incidents[index]
        .spec
        .audit_records
        .push("sidecar/support/support-agent-5c2b8:99".into());
    let report = incident_report::build(&snapshot.incidents[index], &snapshot, "policybind test");
    assert_eq!(report.notification.status, "Overdue");
    assert!(
        report
            .open_items
            .iter()
            .any(|i| i.contains("deadline has passed"))
    );
    assert!(report.open_items.iter().any(|i| {
        i.contains("sidecar/support/support-agent-5c2b8:99 is not in the verified trail")
    }));
    let finding =
        policybind_compliance::evidence::check(EvidenceKind::SeriousIncidentReporting, &snapshot);
    assert_eq!(finding.status, FindingStatus::Failed);

    let late = at("2026-11-12T09:30:00Z") + Duration::days(20);
    snapshot.incidents[index].spec.authority_notification = Some(AuthorityNotification {
        authority: "MSA".into(),
        notified_at: late,
        reference: None,
    });
    let report = incident_report::build(&snapshot.incidents[index], &snapshot, "policybind test");
    assert_eq!(report.notification.status, "NotifiedLate");
    let finding =
        policybind_compliance::evidence::check(EvidenceKind::SeriousIncidentReporting, &snapshot);
    assert!(
        finding
            .issues
            .iter()
            .any(|i| i.contains("after the deadline")),
        "{:?}",
        finding.issues
    );
}

#[test]
fn every_badge_on_a_page_has_a_colour() {
    // A badge without a style rule is white text on white: invisible on screen.
    let snapshot = example_snapshot(Scope::default());
    let mut pages = vec![html::render_incident(
        &incident_report::build(&example_incident(&snapshot), &snapshot, "t"),
        "d",
    )];
    for framework in catalog::built_in_frameworks() {
        pages.push(html::render_report(
            &build(&catalog::built_in(framework).unwrap(), &snapshot),
            "d",
        ));
    }
    for page in pages {
        let style = &page[page.find("<style>").unwrap()..page.find("</style>").unwrap()];
        for badge in page.split("class=\"badge ").skip(1) {
            let class = &badge[..badge.find('"').unwrap()];
            assert!(
                style.contains(&format!(".{class} ")) || style.contains(&format!(".{class},")),
                "badge class {class} has no style"
            );
        }
    }
}
