//! `policybind audit` as CI runs it: exit codes and output of verify, export and
//! tail over a trail written by the real writer.
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use policybind_audit::store::encode_segment;
use policybind_audit::{AuditConfig, AuditWriter, DirectoryStore};
use policybind_crds::Effect;
use policybind_engine::audit::{AuditEvent, AuditSigningKey, Segment};
use serde_json::Value;

fn key() -> AuditSigningKey {
    AuditSigningKey::from_seed(&[21; 32])
}

/// A trail of 40 records in several sealed segments, and the verification key file.
fn trail(dir: &Path) -> std::path::PathBuf {
    let store_dir = dir.join("store");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Arc::new(DirectoryStore::open(&store_dir).unwrap());
        let mut config = AuditConfig::new("standalone/ci-host", key());
        config.max_segment_bytes = 12 * 1024;
        let writer = AuditWriter::start(config, store).await.unwrap();
        for i in 1..=40u64 {
            let subject = if i % 2 == 0 { "team-a" } else { "team-b" };
            writer
                .append(
                    AuditEvent::decision(if i % 4 == 0 {
                        Effect::Deny
                    } else {
                        Effect::Allow
                    })
                    .request_id(format!("req-{i}"))
                    .subject(subject)
                    .model("gpt-4o")
                    .code("TEST"),
                )
                .unwrap();
        }
        writer.shutdown().await.unwrap();
    });
    let key_path = dir.join("verify.pem");
    std::fs::write(
        &key_path,
        key().verifying_key().to_public_key_pem().unwrap(),
    )
    .unwrap();
    store_dir
}

fn policybind(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_policybind"))
        .args(args)
        .output()
        .expect("run policybind")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn verify_exits_zero_on_an_intact_trail_and_one_with_the_diagnosis_when_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let store = trail(dir.path());
    let key = dir.path().join("verify.pem");
    let (store, key) = (store.to_str().unwrap(), key.to_str().unwrap());

    let ok = policybind(&[
        "audit",
        "verify",
        "--dir",
        store,
        "--key",
        key,
        "--key-writers",
        "**",
    ]);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    assert!(
        stdout(&ok).starts_with("OK: 40 record(s)"),
        "{}",
        stdout(&ok)
    );

    let json = policybind(&[
        "audit",
        "verify",
        "--dir",
        store,
        "--key",
        key,
        "--key-writers",
        "**",
        "--format",
        "json",
    ]);
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["result"], "ok");
    assert_eq!(report["records"], 40);

    let target = segment_files(Path::new(store))[1].clone();
    let mut segment: Value = serde_json::from_slice(&std::fs::read(&target).unwrap()).unwrap();
    segment["records"].as_array_mut().unwrap().swap(0, 1);
    std::fs::write(&target, serde_json::to_vec(&segment).unwrap()).unwrap();
    let broken = policybind(&[
        "audit",
        "verify",
        "--dir",
        store,
        "--key",
        key,
        "--key-writers",
        "**",
    ]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        stdout(&broken).starts_with("BROKEN: REORDERED"),
        "{}",
        stdout(&broken)
    );
}

#[test]
fn verify_exits_two_when_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = trail(dir.path());
    let store = store.to_str().unwrap();
    assert_eq!(
        policybind(&["audit", "verify", "--dir", store])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        policybind(&[
            "audit",
            "verify",
            "--dir",
            "/nonexistent",
            "--no-signatures"
        ])
        .status
        .code(),
        Some(2)
    );
    let other = dir.path().join("other.pem");
    std::fs::write(&other, "garbage").unwrap();
    assert_eq!(
        policybind(&[
            "audit",
            "verify",
            "--dir",
            store,
            "--key",
            other.to_str().unwrap(),
            "--key-writers",
            "**"
        ])
        .status
        .code(),
        Some(2)
    );
}

#[test]
fn verify_with_another_key_reports_an_untrusted_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = trail(dir.path());
    let other = dir.path().join("other.pem");
    let other_key = AuditSigningKey::from_seed(&[22; 32]).verifying_key();
    std::fs::write(&other, other_key.to_public_key_pem().unwrap()).unwrap();
    let output = policybind(&[
        "audit",
        "verify",
        "--dir",
        store.to_str().unwrap(),
        "--key",
        other.to_str().unwrap(),
        "--key-writers",
        "**",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).starts_with("BROKEN: UNTRUSTED-KEY"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn exported_slice_verifies_on_its_own_and_a_changed_export_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = trail(dir.path());
    let key = dir.path().join("verify.pem");
    let export = dir.path().join("export.json");
    let (store, key, export_path) = (
        store.to_str().unwrap(),
        key.to_str().unwrap(),
        export.to_str().unwrap(),
    );
    let output = policybind(&[
        "audit",
        "export",
        "--dir",
        store,
        "--key",
        key,
        "--key-writers",
        "**",
        "--subject",
        "team-a",
        "--output",
        export_path,
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bundle: Value = serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
    let records = bundle["records"].as_array().unwrap();
    assert_eq!(records.len(), 20);
    assert!(records.iter().all(|r| r["subject"] == "team-a"));

    let verified = policybind(&[
        "audit",
        "verify",
        "--file",
        export_path,
        "--key",
        key,
        "--key-writers",
        "**",
    ]);
    assert_eq!(verified.status.code(), Some(0), "{}", stdout(&verified));
    assert!(
        stdout(&verified).starts_with("OK: 20 record(s)"),
        "{}",
        stdout(&verified)
    );

    let mut changed = bundle.clone();
    changed["records"][3]["effect"] = Value::String("Allow".into());
    changed["records"][3]["model"] = Value::String("gpt-3.5".into());
    std::fs::write(&export, serde_json::to_vec(&changed).unwrap()).unwrap();
    let broken = policybind(&[
        "audit",
        "verify",
        "--file",
        export_path,
        "--key",
        key,
        "--key-writers",
        "**",
    ]);
    assert_eq!(broken.status.code(), Some(1), "{}", stdout(&broken));
}

#[test]
fn csv_export_has_a_header_and_one_row_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = trail(dir.path());
    let key = dir.path().join("verify.pem");
    let output = policybind(&[
        "audit",
        "export",
        "--dir",
        store.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--key-writers",
        "**",
        "--format",
        "csv",
        "--model",
        "gpt-4o",
        "--since",
        "1h",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("seq,time,writer,kind,"));
    assert_eq!(lines.len(), 41);
}

#[test]
fn json_lines_from_the_stdout_sink_verify() {
    let dir = tempfile::tempdir().unwrap();
    let store = trail(dir.path());
    let mut lines = Vec::new();
    for path in segment_files(&store) {
        let segment: Segment = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        lines.extend(encode_segment(&segment));
        lines.push(b'\n');
    }
    let file = dir.path().join("segments.jsonl");
    std::fs::write(&file, lines).unwrap();
    let key = dir.path().join("verify.pem");
    let output = policybind(&[
        "audit",
        "verify",
        "--file",
        file.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--key-writers",
        "**",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
}

#[test]
fn tail_without_follow_prints_the_last_records_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let store = trail(dir.path());
    let output = policybind(&[
        "audit",
        "tail",
        "--dir",
        store.to_str().unwrap(),
        "--lines",
        "3",
        "--no-follow",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[2].contains("standalone/ci-host #40 Decision Deny"),
        "{text}"
    );
}
