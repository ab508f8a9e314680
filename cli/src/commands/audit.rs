//! `policybind audit ...`: the tools auditors and CI run over the audit trail.
//!
//! The trail is read from any mix of sources: directory stores (standalone mode,
//! or a retention sink's directory), individual files (a segment JSON document,
//! JSON lines of segments from the stdout sink, an export bundle, a proof), and
//! namespaces of a cluster (the ConfigMaps labelled `policybind.io/audit-segment`).
//! Trust comes from a keyring (which writers each key may sign for). Verification
//! itself is `policybind_engine::audit`; reading and writing is `policybind_audit`.
//!
//! Exit codes of `verify` (and of `export`, `prove` and `checkpoint`, which verify
//! first): 0 the trail is complete and unmodified, 1 it is not (the first problem
//! is printed), 2 the check could not run (bad arguments, unreadable source,
//! cluster unreachable).
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use policybind_engine::audit::{Anchor, Hash256, VerifyOptions, VerifyReport, verify_export};

mod export;
mod keyring;
mod proofs;
mod sources;

/// Exit code: verified, nothing wrong.
const EXIT_OK: u8 = 0;
/// Exit code: the trail is broken (tampered, incomplete, badly signed, unproven).
const EXIT_BROKEN: u8 = 1;
/// Exit code: the check could not be carried out.
const EXIT_ERROR: u8 = 2;

/// Check, export, prove and follow the tamper-evident audit trail.
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Check, export, prove and follow the tamper-evident audit trail.\n\n\
Every writer (sidecar, webhook, operator, standalone server) keeps its own SHA-256 hash \
chain of records, batched into segments whose headers are signed with Ed25519 by a key the \
keyring binds to that writer. Sealed segments also carry a C2SP checkpoint of the writer's \
log. These tools read segments from directories, files or a cluster's ConfigMaps.\n\n\
Exit codes: 0 verified, 1 the trail is broken, 2 the check could not run."
)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(clap::Subcommand, Debug)]
enum AuditCommand {
    /// Prove a trail complete and unmodified, or name the first broken record or
    /// segment.
    #[command(long_about = VERIFY_ABOUT)]
    Verify(VerifyArgs),
    /// Export records for auditors (JSON or CSV) with the chain evidence to
    /// re-verify the slice.
    #[command(long_about = export::EXPORT_ABOUT)]
    Export(export::ExportArgs),
    /// Write an RFC 6962 proof: a record is in a sealed segment and in its
    /// writer's log, or later checkpoints extend earlier ones.
    #[command(long_about = proofs::PROVE_ABOUT)]
    Prove(proofs::ProveArgs),
    /// Print each writer's newest signed checkpoint (C2SP signed note) once the
    /// trail verifies; keep them for the next review.
    #[command(long_about = proofs::CHECKPOINT_ABOUT)]
    Checkpoint(proofs::CheckpointArgs),
    /// Follow new records as they are written, one human-readable line each.
    #[command(long_about = export::TAIL_ABOUT)]
    Tail(export::TailArgs),
    /// Build and inspect keyrings: which writers each verification key may sign
    /// for.
    #[command(subcommand)]
    Keyring(keyring::KeyringCommand),
    /// Generate an Ed25519 signing key (PKCS#8 PEM) and its publishable
    /// verification key.
    #[command(long_about = keyring::KEYGEN_ABOUT)]
    Keygen(keyring::KeygenArgs),
    /// Print the verification key (PEM) of a signing key file.
    PublicKey(keyring::PublicKeyArgs),
}

const VERIFY_ABOUT: &str = "Prove a trail complete and unmodified, or name the first broken record or segment.\n\n\
Checks every record hash, the chain across segments, sequence gaps, the writer tree and \
checkpoint of every sealed segment, and that every segment is signed by a key the keyring binds \
to its writer. A segment signed otherwise (planted, forged, another writer's key) is set aside \
and reported; the writer's real chain is verified without it. Records of a writer's open (not \
yet sealed) segment are unproven: verification fails on them unless --allow-open-tail, which \
lists them.\n\n\
Diagnoses: modified, missing, reordered, truncated, bad-signature, untrusted-key, unsealed, \
unproven, malformed.\n\n\
Exit codes: 0 OK, 1 broken, 2 could not run.\n\n\
Examples:\n  policybind audit verify --dir /var/lib/policybind/audit --keyring keys.json\n  \
policybind audit verify --namespace team-a --cluster-keyring --allow-open-tail\n  \
policybind audit keyring fetch --out keys.json   # pin the published keyring\n  \
policybind audit verify --namespace team-a --keyring keys.json --allow-open-tail --format json\n  \
policybind audit verify --dir ./audit --keyring keys.json --checkpoint last-review.checkpoint\n  \
policybind audit verify --dir ./audit --key audit-verify-key.pem --key-writers 'standalone/*'\n  \
policybind audit verify --file proof.json --keyring keys.json";

/// Where segments are read from. At least one source is required.
#[derive(clap::Args, Debug, Clone)]
struct SourceArgs {
    /// Directory of segment files (a directory store or a retention sink).
    /// Repeatable.
    #[arg(long = "dir", value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// A file: one segment JSON document, JSON lines of segments (stdout sink), an
    /// export bundle or a proof (verify only). Repeatable.
    #[arg(long = "file", value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Read the ConfigMap segments of this namespace. Repeatable.
    #[arg(long = "namespace", short = 'n', value_name = "NAMESPACE")]
    namespaces: Vec<String>,
    /// Kubeconfig for --namespace (default: $KUBECONFIG, ~/.kube/config, or
    /// in-cluster).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
}

/// Which keys to trust, and for which writers.
#[derive(clap::Args, Debug, Clone)]
struct KeyArgs {
    /// Keyring (JSON or YAML, format policybind.io/audit-keyring/v1): each key
    /// with the writers it may sign for and when. The operator publishes it in
    /// the ConfigMap policybind-audit-keys (data key keys.json) in its namespace.
    /// Repeatable.
    #[arg(long = "keyring", value_name = "FILE")]
    keyrings: Vec<PathBuf>,
    /// A single trusted verification key: PEM public key, 64 hex characters or 32
    /// raw bytes (a signing key file is accepted too). Needs --key-writers.
    /// Repeatable.
    #[arg(long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,
    /// Writers the --key keys may sign for, as globs over writer identities
    /// (`*` stays within one `/` part; `**` matches every writer). Repeatable.
    #[arg(long = "key-writers", value_name = "PATTERN", requires = "keys")]
    key_writers: Vec<String>,
    /// Trust the keyring the operator publishes in the cluster: ConfigMap
    /// policybind-audit-keys (data key keys.json) in NAMESPACE, PolicyBind's
    /// namespace (default policybind-system). This trusts whoever can write
    /// ConfigMaps there; for a review independent of the cluster, pin a copy
    /// (`policybind audit keyring fetch --out keys.json`, compared with the
    /// last reviewed one) and pass it with --keyring. Uses --kubeconfig and
    /// --context.
    #[arg(
        long,
        value_name = "NAMESPACE",
        num_args = 0..=1,
        default_missing_value = DEFAULT_POLICYBIND_NAMESPACE,
        require_equals = true
    )]
    cluster_keyring: Option<String>,
    /// Do not check signatures (only hashes and chains). Without trusted keys
    /// nothing proves who wrote the trail; use only for diagnosis.
    #[arg(long, conflicts_with_all = ["keys", "keyrings", "cluster_keyring"])]
    no_signatures: bool,
}

/// PolicyBind's namespace when none is given (the chart's usual release
/// namespace).
const DEFAULT_POLICYBIND_NAMESPACE: &str = "policybind-system";

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    sources: SourceArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// Require every writer's chain to start at seq 1. By default a chain may start
    /// later (retention moved older segments to a sink) and is reported as anchored
    /// at its first kept segment's predecessor hash.
    #[arg(long)]
    require_genesis: bool,
    /// A head recorded earlier, `WRITER=SEQ:HASH`: the trail must still contain
    /// record SEQ with hash HASH. Repeatable. Checkpoints (--checkpoint) do the
    /// same with signed, standard artifacts.
    #[arg(long = "anchor", value_name = "WRITER=SEQ:HASH", value_parser = parse_anchor)]
    anchors: Vec<Anchor>,
    /// Checkpoints kept from an earlier review (`policybind audit checkpoint`):
    /// each must be signed by a key bound to its writer, and the trail must
    /// extend it (catches deletion of a writer's newest segments). Repeatable.
    #[arg(long = "checkpoint", value_name = "FILE")]
    checkpoints: Vec<PathBuf>,
    /// Accept the records of writers' open (not yet sealed) segments as unproven
    /// instead of failing; they are listed, writer and sequence range.
    #[arg(long)]
    allow_open_tail: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: ReportFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ReportFormat {
    /// Human-readable summary.
    Text,
    /// The full report as JSON.
    Json,
}

/// Run `policybind audit ...`. Operational failures are printed here and become
/// exit code 2, so that 1 always means "the trail is broken".
pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let result = match args.command {
        AuditCommand::Verify(args) => verify(args).await,
        AuditCommand::Export(args) => export::export(args).await,
        AuditCommand::Prove(args) => proofs::prove(args).await,
        AuditCommand::Checkpoint(args) => proofs::checkpoint(args).await,
        AuditCommand::Tail(args) => export::tail(args).await,
        AuditCommand::Keyring(command) => keyring::run(command).await,
        AuditCommand::Keygen(args) => keyring::keygen(args),
        AuditCommand::PublicKey(args) => keyring::public_key(args),
    };
    Ok(match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    })
}

fn parse_anchor(text: &str) -> Result<Anchor, String> {
    let usage = || format!("{text:?}: expected WRITER=SEQ:HASH");
    let (writer, rest) = text.rsplit_once('=').ok_or_else(usage)?;
    let (seq, hash) = rest.split_once(':').ok_or_else(usage)?;
    Ok(Anchor {
        writer: writer.to_string(),
        seq: seq.parse().map_err(|_| usage())?,
        hash: hash.parse::<Hash256>().map_err(|e| e.to_string())?,
    })
}

fn merge(into: &mut VerifyReport, other: VerifyReport) {
    into.writers.extend(other.writers);
    into.problems.extend(other.problems);
}

async fn verify(args: VerifyArgs) -> anyhow::Result<u8> {
    let options = VerifyOptions {
        keyring: sources::keyring(&args.keys, &args.sources).await?,
        require_genesis: args.require_genesis,
        anchors: args.anchors,
        allow_open_tail: args.allow_open_tail,
        checkpoints: sources::checkpoints(&args.checkpoints)?,
    };
    let mut loaded = sources::load(&args.sources).await?;
    let bundles = std::mem::take(&mut loaded.bundles);
    let proofs = std::mem::take(&mut loaded.proofs);
    let segments_only = bundles.is_empty() && proofs.is_empty();
    let mut report = if !loaded.documents.is_empty() || segments_only {
        loaded.verify(&options)
    } else {
        VerifyReport {
            signatures_checked: options.keyring.is_some(),
            ..VerifyReport::default()
        }
    };
    for (name, bundle) in &bundles {
        let mut bundle_report = verify_export(bundle, &options);
        for problem in &mut bundle_report.problems {
            problem.segment = Some(format!(
                "{name}: {}",
                problem.segment.as_deref().unwrap_or("-")
            ));
        }
        merge(&mut report, bundle_report);
    }
    let proven = proofs::verify_proofs(&proofs, options.keyring.as_ref(), &mut report);
    if report.writers.is_empty() && report.problems.is_empty() && proven.is_empty() {
        // Nothing to prove: most likely a wrong directory or namespace.
        eprintln!("warning: no audit segments found in the given sources");
    }
    print_report(&report, &proven, args.format)?;
    Ok(if report.is_ok() { EXIT_OK } else { EXIT_BROKEN })
}

fn print_report(
    report: &VerifyReport,
    proven: &[String],
    format: ReportFormat,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if format == ReportFormat::Json {
        let value = serde_json::json!({
            "result": if report.is_ok() { "ok" } else { "broken" },
            "records": report.total_records(),
            "unprovenRecords": report.unproven_records(),
            "segments": report.total_segments(),
            "proofs": proven,
            "report": report,
        });
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&value).context("report as JSON")?
        )?;
        return Ok(());
    }
    let sealed: usize = report.writers.iter().map(|w| w.sealed_segments).sum();
    match report.first_problem() {
        None => {
            write!(
                out,
                "OK: {} record(s) in {} segment(s) ({} sealed) from {} writer(s); signatures {}",
                report.total_records(),
                report.total_segments(),
                sealed,
                report.writers.len(),
                if report.signatures_checked {
                    "checked against the keyring"
                } else {
                    "NOT checked (--no-signatures)"
                },
            )?;
            let unproven = report.unproven_records();
            if unproven > 0 {
                write!(
                    out,
                    "; {unproven} record(s) UNPROVEN (open segments, listed below)"
                )?;
            }
            writeln!(out)?;
        }
        Some(problem) => writeln!(out, "BROKEN: {problem}")?,
    }
    for problem in report.problems.iter().skip(1) {
        writeln!(out, "  also: {problem}")?;
    }
    for line in proven {
        writeln!(out, "  proof: {line}")?;
    }
    for writer in &report.writers {
        write_writer(&mut out, writer)?;
    }
    Ok(())
}

fn write_writer(
    out: &mut impl Write,
    writer: &policybind_engine::audit::WriterSummary,
) -> std::io::Result<()> {
    write!(
        out,
        "  {}: seq {}..={}, {} record(s), {} segment(s), head {}",
        writer.writer,
        writer.first_seq,
        writer.last_seq,
        writer.records,
        writer.segments,
        writer.head.short()
    )?;
    if let Some(anchor) = writer.anchored_at {
        write!(
            out,
            ", starts after pruned records (anchored at {})",
            anchor.short()
        )?;
    }
    if let Some(tail) = &writer.unproven {
        write!(
            out,
            ", UNPROVEN seq {}..={} in open segment {} ({})",
            tail.first_seq,
            tail.last_seq,
            tail.segment,
            match &tail.flush_signed_by {
                Some(key) => format!("last flush signed by key {key}, not sealed"),
                None => "unsigned".to_string(),
            }
        )?;
    }
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_parses_writer_with_slashes_seq_and_hash() {
        let hash = "ab".repeat(32);
        let anchor = parse_anchor(&format!("sidecar/team-a/pod-1=42:{hash}")).unwrap();
        assert_eq!(anchor.writer, "sidecar/team-a/pod-1");
        assert_eq!(anchor.seq, 42);
        assert_eq!(anchor.hash.to_hex(), hash);
        assert!(parse_anchor("no-seq").is_err());
    }
}
