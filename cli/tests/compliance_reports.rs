//! Compliance reports as an auditor gets them: the real binary over the example
//! organisation (examples/) and its example audit trail (examples/compliance/audit/),
//! compared with the golden reports in compliance/tests/golden/, then verified and
//! tampered with.
//!
//! The example trail is generated here, deterministically: every request record is
//! what the engine decides for the example policies at a fixed time, chained and
//! sealed with the same code the writers use; the webhook's and operator's records
//! carry the details those writers record. Regenerate the trail and the golden
//! reports after a deliberate change with
//! `POLICYBIND_REGENERATE_GOLDEN=1 cargo test -p policybind --test compliance_reports`.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, Duration, Utc};
use policybind_audit::naming::segment_name;
use policybind_audit::store::encode_segment;
use policybind_crds::Effect;
use policybind_engine::PolicySet;
use policybind_engine::audit::{
    AuditEvent, AuditRecord, AuditSigningKey, Chain, RecordKind, RecordTime, Segment,
};
use policybind_engine::manifest::{Manifests, manifest_files, parse_documents};
use policybind_engine::request::Request;
use serde_json::json;

/// Seed of the example trail's signing key. The key is published with the
/// examples (examples/compliance/): it signs nothing but this example.
const EXAMPLE_AUDIT_SEED: [u8; 32] = [0x5a; 32];
/// Seed of the golden reports' signing key (public half in examples/compliance/).
const EXAMPLE_REPORT_SEED: [u8; 32] = [0x7e; 32];
/// The golden reports' "now".
const NOW: &str = "2026-12-01T00:00:00Z";
const FRAMEWORKS: [&str; 4] = ["eu-ai-act", "nist-ai-rmf", "iso-42001", "soc2"];
const INCIDENT: &str = "support-agent-data-exposure";

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn regenerate() -> bool {
    std::env::var_os("POLICYBIND_REGENERATE_GOLDEN").is_some_and(|v| v == "1")
}

/// Runs the binary from the repository root, so paths in reports are relative and the
/// golden files do not depend on where the repository is checked out.
fn policybind(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_policybind"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("the binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn example_manifests() -> Manifests {
    let mut manifests = Manifests::default();
    for file in manifest_files(&repo().join("examples"), None)
        .unwrap()
        .files
    {
        let text = std::fs::read_to_string(&file).unwrap();
        manifests.extend(parse_documents(&file.display().to_string(), &text).unwrap());
    }
    manifests
}

/// The event a sidecar records for a decision (fields as `sidecar::proxy` records them).
fn decision_event(set: &PolicySet, request: serde_json::Value) -> AuditEvent {
    let request: Request = serde_json::from_value(request).unwrap();
    let decision = set.decide(&request);
    let facts = &decision.facts;
    let mut event = AuditEvent::decision(decision.effect)
        .time(request.time)
        .request_id(request.request_id.clone().unwrap_or_default())
        .model(facts.model.clone())
        .namespace(facts.namespace.clone().unwrap_or_default())
        .fingerprint(decision.fingerprint.clone())
        .detail("endpoint", "/v1/chat/completions")
        .detail("stage", format!("{:?}", decision.stage).to_lowercase());
    if let Some(subject) = &facts.subject {
        event = event.subject(subject.clone());
    }
    if let Some(token) = &facts.token {
        event = event.token_id(token.clone());
    }
    if let (Some(policy), Some(rule)) = (&decision.policy, &decision.rule) {
        event = event.policy_rule(policy.clone(), rule.clone());
    }
    for code in &decision.codes {
        event = event.code(code.clone());
    }
    if let Some(prompt) = &request.prompt {
        event = event.prompt(prompt);
    }
    event
}

fn request(
    id: &str,
    token: &str,
    model: &str,
    namespace: &str,
    time: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut value = json!({
        "requestId": id, "token": token, "model": model, "namespace": namespace, "time": time,
        "estimatedInputTokens": 400, "estimatedOutputTokens": 400,
    });
    for (key, v) in extra.as_object().unwrap() {
        value[key] = v.clone();
    }
    value
}

fn marketing_events(set: &PolicySet) -> Vec<AuditEvent> {
    let token = "marketing/campaign-writer";
    [
        request("mkt-0001", token, "gpt-4o-mini", "marketing", "2026-11-16T09:02:11Z", json!({"prompt": "Three subject lines for the winter newsletter."})),
        request("mkt-0002", token, "gpt-4o", "marketing", "2026-11-16T09:40:37Z", json!({"dataClassification": "Confidential", "prompt": "Segment these customers by churn risk."})),
        request("mkt-0003", token, "gpt-4o", "marketing", "2026-11-16T09:41:05Z", json!({"dataClassification": "Confidential", "prompt": "Segment these customers by churn risk, again."})),
        request("mkt-0004", token, "gpt-4o", "marketing", "2026-11-17T14:12:00Z", json!({"prompt": "Reply to jana.novak@example.org, +49 30 1234567, about her refund."})),
        request("mkt-0005", token, "gpt-4o", "marketing", "2026-11-18T11:30:00Z", json!({"useCase": "legal-advice", "prompt": "May we say 'best price guaranteed'?"})),
        request("mkt-0006", token, "gpt-4o", "marketing", "2026-11-18T15:02:00Z", json!({"useCase": "legal-advice", "approved": true, "prompt": "May we say 'best price guaranteed'?"})),
        request("mkt-0007", "marketing/intern-2026-summer", "gpt-4o-mini", "marketing", "2026-11-19T08:15:00Z", json!({"prompt": "Hello"})),
        request("mkt-0008", token, "gpt-4o", "marketing", "2026-11-20T10:00:00Z", json!({"estimatedInputTokens": 60000, "estimatedOutputTokens": 40000, "prompt": "Summarise the attached brand book."})),
    ]
    .into_iter()
    .map(|r| decision_event(set, r))
    .collect()
}

fn support_events(set: &PolicySet) -> Vec<AuditEvent> {
    let token = "support/support-agent-runtime";
    let chat = |id: &str, time: &str, prompt: &str| {
        request(
            id,
            token,
            "support-agent-v2",
            "support",
            time,
            json!({"prompt": prompt}),
        )
    };
    [
        chat(
            "sup-0001",
            "2026-11-11T08:00:04Z",
            "Where is my order 4471?",
        ),
        chat(
            "sup-0002",
            "2026-11-11T08:03:51Z",
            "I want to return the blue jacket.",
        ),
        chat(
            "sup-0003",
            "2026-11-11T19:20:10Z",
            "Can I change my delivery address?",
        ),
        chat(
            "sup-0004",
            "2026-11-12T07:12:44Z",
            "My order 5512 shows the address of Ana Ruiz, ana.ruiz@example.net, not mine.",
        ),
        chat(
            "sup-0005",
            "2026-11-12T07:40:02Z",
            "Why do I see an order for +34 91 555 0134 in my account?",
        ),
        chat(
            "sup-0006",
            "2026-11-12T08:55:31Z",
            "Your bot told me someone else's address: peter.k@example.com.",
        ),
        chat(
            "sup-0007",
            "2026-11-21T10:00:00Z",
            "Refund order 6620 please.",
        ),
    ]
    .into_iter()
    .map(|r| decision_event(set, r))
    .collect()
}

/// What the webhook records (admission of objects, the approver's decision).
fn webhook_events() -> Vec<AuditEvent> {
    let admission = |time: &str,
                     effect: Effect,
                     kind: &str,
                     namespace: Option<&str>,
                     name: &str,
                     user: &str,
                     code: &str| {
        let mut event = AuditEvent::new(if kind == "ApprovalRequest" {
            RecordKind::Approval
        } else {
            RecordKind::Admission
        })
        .time(at(time))
        .request_id(format!("uid-{name}"))
        .effect(effect)
        .subject(user)
        .code(code)
        .detail("webhook", "validate-resources")
        .detail("operation", "CREATE")
        .detail("kind", kind)
        .detail("name", name);
        if let Some(namespace) = namespace {
            event = event.namespace(namespace);
        }
        event
    };
    vec![
        admission(
            "2026-11-02T08:00:00Z",
            Effect::Allow,
            "ClusterAIPolicy",
            None,
            "data-boundary",
            "platform-admin@example.com",
            "POLICY_VALID",
        ),
        admission(
            "2026-11-02T08:00:02Z",
            Effect::Allow,
            "EvidenceGate",
            None,
            "high-risk-release",
            "ai-risk-board@example.com",
            "RESOURCE_VALID",
        ),
        admission(
            "2026-11-03T09:00:00Z",
            Effect::Allow,
            "ModelDeployment",
            Some("finance"),
            "credit-scoring",
            "risk-models@example.com",
            "RESOURCE_VALID",
        ),
        admission(
            "2026-11-09T16:20:00Z",
            Effect::Allow,
            "ApprovalRequest",
            Some("support"),
            "support-agent-go-live",
            "ai-risk-board@example.com",
            "APPROVAL_ALLOWED",
        )
        .detail("approver", "ai-risk-board@example.com")
        .detail("user", "ai-risk-board@example.com")
        .detail("decision", "Approved")
        .detail("requester", "support-eng-lead@example.com"),
        admission(
            "2026-11-13T10:00:00Z",
            Effect::Allow,
            "AIPolicy",
            Some("marketing"),
            "marketing",
            "marketing-lead@example.com",
            "POLICY_VALID",
        ),
        admission(
            "2026-11-25T12:00:00Z",
            Effect::Deny,
            "Pod",
            Some("finance"),
            "credit-scoring-7f9c",
            "ci@example.com",
            "MODEL_NOT_APPROVED",
        )
        .model("credit-scoring-llm")
        .detail(
            "message",
            "model credit-scoring is not approved (approval Pending)",
        ),
    ]
}

/// What the operator records (approval applied, policies compiled, incidents raised).
fn operator_events() -> Vec<AuditEvent> {
    vec![
        AuditEvent::lifecycle("policy-compiled")
            .time(at("2026-11-02T08:00:05Z"))
            .detail("policy", "data-boundary")
            .detail("fingerprint", "sha256:5d1c0b7e"),
        AuditEvent::new(RecordKind::Approval)
            .time(at("2026-11-09T16:20:04Z"))
            .namespace("support")
            .detail("approvalRequest", "support-agent-go-live")
            .detail("phase", "Approved")
            .detail("requester", "support-eng-lead@example.com")
            .detail("approver", "ai-risk-board@example.com")
            .detail("modelDeployment", "support-agent"),
        AuditEvent::lifecycle("model-approved-true")
            .time(at("2026-11-09T16:20:05Z"))
            .namespace("support")
            .model("support-agent-v2")
            .detail("modelDeployment", "support-agent")
            .detail("reason", "ApprovalGranted"),
        AuditEvent::lifecycle("policy-compiled")
            .time(at("2026-11-13T10:00:03Z"))
            .namespace("marketing")
            .detail("policy", "marketing/marketing")
            .detail("fingerprint", "sha256:9a4e21c3"),
        AuditEvent::lifecycle("incident-raised")
            .time(at("2026-11-16T09:41:06Z"))
            .namespace("marketing")
            .subject("marketing")
            .detail("incident", "marketing-repeated-denials")
            .detail("pattern", "RepeatedDenials")
            .detail("occurrences", "2"),
    ]
}

/// Chains the events of one writer and seals them into segments of at most 4 records,
/// each sealed one second after its last record.
fn seal(writer: &str, events: Vec<AuditEvent>, key: &AuditSigningKey) -> Vec<Segment> {
    let mut chain = Chain::new(writer);
    let records: Vec<AuditRecord> = events
        .into_iter()
        .map(|e| chain.append(e, RecordTime::new(at(NOW))))
        .collect();
    let mut prev = policybind_engine::audit::Hash256::ZERO;
    records
        .chunks(4)
        .map(|chunk| {
            let mut segment = Segment::open(prev, chunk.to_vec());
            let last = chunk.last().unwrap().time.get();
            segment.seal(RecordTime::new(last + Duration::seconds(1)), key);
            prev = segment.header.last_hash;
            segment
        })
        .collect()
}

fn example_trail() -> Vec<Segment> {
    let manifests = example_manifests();
    let set = PolicySet::compile(&manifests.bundle(None)).expect("the examples compile");
    let key = AuditSigningKey::from_seed(&EXAMPLE_AUDIT_SEED);
    let mut segments = seal(
        "sidecar/marketing/campaign-app-7d9f4",
        marketing_events(&set),
        &key,
    );
    segments.extend(seal(
        "sidecar/support/support-agent-5c2b8",
        support_events(&set),
        &key,
    ));
    segments.extend(seal(
        "webhook/policybind-webhook-6b7c9",
        webhook_events(),
        &key,
    ));
    segments.extend(seal(
        "operator/policybind-operator-5f8d7",
        operator_events(),
        &key,
    ));
    segments
}

/// Files of the example trail and keys: (path under the repository, content).
fn example_files() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from("examples/compliance");
    let mut files: Vec<(PathBuf, Vec<u8>)> = example_trail()
        .iter()
        .map(|s| {
            let name = format!(
                "{}.json",
                segment_name(&s.header.writer, s.header.first_seq)
            );
            (dir.join("audit").join(name), encode_segment(s))
        })
        .collect();
    let audit = AuditSigningKey::from_seed(&EXAMPLE_AUDIT_SEED).verifying_key();
    let report = AuditSigningKey::from_seed(&EXAMPLE_REPORT_SEED).verifying_key();
    files.push((
        dir.join("audit-verify-key.pem"),
        audit.to_public_key_pem().unwrap().into_bytes(),
    ));
    files.push((
        dir.join("report-verify-key.pem"),
        report.to_public_key_pem().unwrap().into_bytes(),
    ));
    files
}

fn compare_or_write(expected_files: &[(PathBuf, Vec<u8>)], what: &str) {
    let mut stale = Vec::new();
    for (path, content) in expected_files {
        let full = repo().join(path);
        if regenerate() {
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, content).unwrap();
        } else if std::fs::read(&full).ok().as_deref() != Some(content.as_slice()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "{what} differ from what the code produces: {stale:?}\nIf the change is deliberate, regenerate: POLICYBIND_REGENERATE_GOLDEN=1 cargo test -p policybind --test compliance_reports"
    );
}

#[test]
fn the_example_audit_trail_is_what_its_generator_writes() {
    let files = example_files();
    compare_or_write(&files, "examples/compliance/ files");
    let on_disk = std::fs::read_dir(repo().join("examples/compliance/audit"))
        .unwrap()
        .count();
    let generated = files
        .iter()
        .filter(|(p, _)| p.starts_with("examples/compliance/audit"))
        .count();
    assert_eq!(
        on_disk, generated,
        "examples/compliance/audit/ holds files the generator does not write"
    );
}

fn signing_key_file(dir: &Path) -> PathBuf {
    let path = dir.join("report-signing-key.pem");
    let key = AuditSigningKey::from_seed(&EXAMPLE_REPORT_SEED);
    std::fs::write(&path, key.to_pkcs8_pem().unwrap()).unwrap();
    path
}

/// Writes every golden report into `out` with the real binary.
fn write_reports(out: &Path) {
    let key = signing_key_file(out);
    let common = |args: &mut Vec<String>| {
        args.extend(
            [
                "-f",
                "examples",
                "--audit-dir",
                "examples/compliance/audit",
                "--audit-key",
                "examples/compliance/audit-verify-key.pem",
                "--now",
                NOW,
                "--signing-key",
                key.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ]
            .map(String::from),
        );
    };
    let mut args: Vec<String> = vec!["report".into()];
    for framework in FRAMEWORKS {
        args.extend(["--framework".to_string(), framework.to_string()]);
    }
    common(&mut args);
    let report = policybind(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(report.status.success(), "{}", text(&report));
    let mut args: Vec<String> = vec![
        "report".into(),
        "incident".into(),
        INCIDENT.into(),
        "--namespace".into(),
        "support".into(),
    ];
    common(&mut args);
    let incident = policybind(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(incident.status.success(), "{}", text(&incident));
    std::fs::remove_file(key).unwrap();
}

fn golden_dir() -> PathBuf {
    repo().join("compliance/tests/golden")
}

#[test]
fn golden_reports_of_the_example_organisation_are_current() {
    let out = tempfile::tempdir().unwrap();
    write_reports(out.path());
    let mut produced: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                PathBuf::from("compliance/tests/golden").join(p.file_name().unwrap()),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    produced.sort();
    assert_eq!(
        produced.len(),
        FRAMEWORKS.len() * 4 + 3,
        "one JSON, signature, HTML and OSCAL file per framework, plus the incident report"
    );
    compare_or_write(&produced, "golden reports");
    let on_disk = std::fs::read_dir(golden_dir()).unwrap().count();
    assert_eq!(
        on_disk,
        produced.len(),
        "compliance/tests/golden/ holds files no report writes"
    );
}

fn verify(paths: &[&Path]) -> Output {
    let key = repo().join("examples/compliance/report-verify-key.pem");
    let mut args = vec!["report", "verify", "--key", key.to_str().unwrap()];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    policybind(&args)
}

#[test]
fn golden_reports_verify() {
    if regenerate() {
        return; // the golden files are being rewritten by another test right now
    }
    let out = verify(&[&golden_dir()]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for framework in FRAMEWORKS {
        assert!(
            stdout.contains(&format!(
                "OK: {}",
                golden_dir().join(format!("{framework}.json")).display()
            )),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains(&format!("incident-{INCIDENT}.html matches the report")),
        "{stdout}"
    );
}

/// Copies the golden EU AI Act report into a temporary directory. While the golden
/// files are regenerated, the tests start from a freshly written report instead.
fn golden_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if regenerate() {
        write_reports(dir.path());
        return dir;
    }
    for suffix in ["json", "json.sig", "html", "oscal-ar.json"] {
        let name = format!("eu-ai-act.{suffix}");
        std::fs::copy(golden_dir().join(&name), dir.path().join(&name)).unwrap();
    }
    dir
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.contains(from),
        "{} does not contain {from:?}",
        path.display()
    );
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn a_report_whose_evidence_was_edited_fails_verify() {
    let dir = golden_copy();
    let json = dir.path().join("eu-ai-act.json");
    // Put another name on the approval, as someone tidying a report might.
    edit(
        &json,
        "\"approver\": \"ai-risk-board@example.com\"",
        "\"approver\": \"cto@example.com\"",
    );
    let out = verify(&[&json]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("the report was changed after signing"),
        "{}",
        text(&out)
    );
}

#[test]
fn reformatting_the_json_keeps_the_signature_valid() {
    let dir = golden_copy();
    let json = dir.path().join("eu-ai-act.json");
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    std::fs::write(&json, serde_json::to_vec(&value).unwrap()).unwrap();
    let out = verify(&[&json]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn an_edited_html_or_oscal_file_fails_verify() {
    let dir = golden_copy();
    edit(
        &dir.path().join("eu-ai-act.html"),
        "not satisfied</span>",
        "satisfied</span>",
    );
    let out = verify(&[&dir.path().join("eu-ai-act.json")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("eu-ai-act.html differs"),
        "{}",
        text(&out)
    );

    let dir = golden_copy();
    edit(
        &dir.path().join("eu-ai-act.oscal-ar.json"),
        "\"not-satisfied\"",
        "\"satisfied\"",
    );
    let out = verify(&[&dir.path().join("eu-ai-act.json")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("eu-ai-act.oscal-ar.json differs"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_report_signed_by_another_key_fails_verify() {
    let dir = golden_copy();
    let other = dir.path().join("other.pem");
    std::fs::write(
        &other,
        AuditSigningKey::from_seed(&[1; 32])
            .verifying_key()
            .to_public_key_pem()
            .unwrap(),
    )
    .unwrap();
    let out = policybind(&[
        "report",
        "verify",
        "--key",
        other.to_str().unwrap(),
        dir.path().join("eu-ai-act.json").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not among the trusted keys"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_trail_segment_edited_after_sealing_makes_the_trail_finding_fail() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    std::fs::create_dir(&audit).unwrap();
    for entry in std::fs::read_dir(repo().join("examples/compliance/audit")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, audit.join(path.file_name().unwrap())).unwrap();
    }
    let segment = std::fs::read_dir(&audit)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("marketing"))
        .unwrap();
    edit(&segment, "\"effect\":\"Deny\"", "\"effect\":\"Allow\"");
    let key = signing_key_file(dir.path());
    let examples = repo().join("examples");
    let out_dir = dir.path().join("out");
    let out = policybind(&[
        "report",
        "--framework",
        "eu-ai-act",
        "-f",
        examples.to_str().unwrap(),
        "--audit-dir",
        audit.to_str().unwrap(),
        "--audit-key",
        examples
            .join("compliance/audit-verify-key.pem")
            .to_str()
            .unwrap(),
        "--now",
        NOW,
        "--signing-key",
        key.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("trail NOT verified"),
        "{}",
        text(&out)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("eu-ai-act.json")).unwrap()).unwrap();
    let problems = report["trail"]["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().contains("MODIFIED")),
        "{problems:?}"
    );
    let trail = report["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "audit-trail")
        .unwrap();
    assert_eq!(trail["status"], "Failed");
}

#[test]
fn a_report_without_a_signing_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = policybind(&[
        "report",
        "--framework",
        "soc2",
        "-f",
        repo().join("examples").to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--signing-key"),
        "{}",
        text(&out)
    );
}

#[test]
fn token_from_text_writes_a_manifest_and_refuses_with_a_question() {
    let examples = repo().join("examples");
    let out = policybind(&[
        "token",
        "create",
        "--from-text",
        "the marketing team may use gpt-4o-mini for content generation, $100 a month, until March 31",
        "--registry",
        examples.to_str().unwrap(),
        "--now",
        "2026-11-30",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let manifest: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(manifest["kind"], "AccessToken");
    assert_eq!(manifest["spec"]["team"], "marketing");
    assert_eq!(manifest["spec"]["expiresAt"], "2027-04-01T00:00:00Z");
    assert_eq!(manifest["spec"]["budgets"][0]["maxCostUsd"], 100.0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.allowedModels") && stderr.contains("\"gpt-4o-mini\""),
        "{stderr}"
    );
    // The manifest reads back as an AccessToken, as `policybind test` and kubectl read it.
    parse_documents("stdout", &String::from_utf8_lossy(&out.stdout)).unwrap();

    let refused = policybind(&[
        "token",
        "create",
        "--from-text",
        "the marketing team may use gpt-5 for content generation",
        "--registry",
        examples.to_str().unwrap(),
        "--now",
        "2026-11-30",
    ]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("\"gpt-5\" is not in the model registry"),
        "{}",
        text(&refused)
    );
}
