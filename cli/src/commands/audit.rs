//! `policybind audit ...`: the tools auditors and CI run over the audit trail.
//!
//! The trail is read from any mix of sources: directory stores (standalone mode,
//! or a retention sink's directory), individual exported files (a segment JSON
//! document, JSON lines of segments from the stdout sink, or an export bundle),
//! and namespaces of a cluster (the ConfigMaps labelled
//! `policybind.io/audit-segment`). Verification itself is
//! `policybind_engine::audit`; reading and writing is `policybind_audit`.
//!
//! Exit codes of `verify` (and of `export`, which verifies first): 0 the trail is
//! complete and unmodified, 1 it is not (the first problem is printed), 2 the
//! check could not run (bad arguments, unreadable source, cluster unreachable).
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, Utc};
use policybind_audit::{
    ConfigMapStore, DirectoryStore, SegmentStore, StoredSegment, verify_stored,
};
use policybind_engine::audit::{
    Anchor, AuditRecord, AuditSigningKey, AuditVerifyingKey, EXPORT_FORMAT, ExportBundle, Hash256,
    NamedSegment, VerifyOptions, VerifyReport, verify_export,
};

/// Exit code: verified, nothing wrong.
const EXIT_OK: u8 = 0;
/// Exit code: the trail is broken (tampered, incomplete, badly signed).
const EXIT_BROKEN: u8 = 1;
/// Exit code: the check could not be carried out.
const EXIT_ERROR: u8 = 2;

/// Check, export and follow the tamper-evident audit trail.
#[derive(clap::Args, Debug)]
#[command(
    long_about = "Check, export and follow the tamper-evident audit trail.\n\n\
Every writer (sidecar, webhook, operator, standalone server) keeps its own SHA-256 hash \
chain of records, batched into segments whose headers are signed with Ed25519. These tools \
read segments from directories, files or a cluster's ConfigMaps.\n\n\
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
    #[command(
        long_about = "Prove a trail complete and unmodified, or name the first broken record or segment.\n\n\
Checks every record hash, the chain across segments, sequence gaps and the signature of every \
sealed segment header. Diagnoses: modified, missing, reordered, truncated, bad-signature, \
untrusted-key, unsealed, malformed.\n\n\
Exit codes: 0 OK, 1 broken, 2 could not run.\n\n\
Examples:\n  policybind audit verify --dir /var/lib/policybind/audit --key audit-verify.pem\n  \
policybind audit verify --namespace team-a --key audit-verify.pem --format json\n  \
policybind audit verify --file export.json --key audit-verify.pem"
    )]
    Verify(VerifyArgs),
    /// Export records for auditors (JSON or CSV) with the chain evidence to
    /// re-verify the slice.
    #[command(
        long_about = "Export records for auditors, with the chain evidence needed to re-verify the slice.\n\n\
The trail is verified first; a broken trail is not exported (exit 1). JSON output is an \
export bundle: the selected records plus, for every segment they come from, the signed header \
and the list of all record hashes; `policybind audit verify --file <bundle>` proves every \
exported record exactly as signed. CSV is one row per record; pass --evidence to also write \
the JSON bundle for re-verification.\n\n\
Examples:\n  policybind audit export --namespace team-a --key k.pem --since 2026-11-01 --until 2026-12-01 > nov.json\n  \
policybind audit export --dir ./audit --key k.pem --since 24h --format csv --subject team-a --evidence proof.json"
    )]
    Export(ExportArgs),
    /// Follow new records as they are written, one human-readable line each.
    #[command(
        long_about = "Follow new records as they are written, one human-readable line each.\n\n\
Polls the sources every --interval and prints records not seen before, including those of \
still-open segments. Starts with the last --lines records. Stop with Ctrl-C, or pass \
--no-follow to print once and exit. Tail does not verify; use `audit verify` for proof."
    )]
    Tail(TailArgs),
    /// Generate an Ed25519 signing key (PKCS#8 PEM) and its publishable
    /// verification key.
    #[command(
        long_about = "Generate an Ed25519 signing key and its verification key.\n\n\
Writes <out>/audit-signing-key.pem (PKCS#8 private key, mode 0600; put it in the Secret the \
writers read, data key `signing-key`) and <out>/audit-verify-key.pem (public key; give it to \
auditors and CI for `audit verify --key`)."
    )]
    Keygen(KeygenArgs),
    /// Print the verification key (PEM) of a signing key file.
    PublicKey(PublicKeyArgs),
}

/// Where segments are read from. At least one source is required.
#[derive(clap::Args, Debug, Clone)]
struct SourceArgs {
    /// Directory of segment files (a directory store or a retention sink).
    /// Repeatable.
    #[arg(long = "dir", value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// A file: one segment JSON document, JSON lines of segments (stdout sink), or
    /// an export bundle (verify only). Repeatable.
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

/// Which keys to trust.
#[derive(clap::Args, Debug, Clone)]
struct KeyArgs {
    /// Trusted verification key: PEM public key, 64 hex characters, or 32 raw bytes
    /// (a signing key file is accepted too and its public half used). Repeatable.
    #[arg(long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,
    /// Do not check signatures (only hashes and chains). Without trusted keys
    /// nothing proves who wrote the trail; use only for diagnosis.
    #[arg(long, conflicts_with = "keys")]
    no_signatures: bool,
}

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
    /// record SEQ with hash HASH (catches deletion of the newest segments).
    /// Repeatable.
    #[arg(long = "anchor", value_name = "WRITER=SEQ:HASH", value_parser = parse_anchor)]
    anchors: Vec<Anchor>,
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

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ExportFormat {
    /// An export bundle with records and evidence (re-verifiable).
    Json,
    /// One row per record (pass --evidence for the proof).
    Csv,
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    #[command(flatten)]
    sources: SourceArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// Records at or after this time: RFC 3339 (`2026-11-01T00:00:00Z`), a date
    /// (`2026-11-01`, midnight UTC) or an age (`24h`, `7d`).
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Records before this time (same forms as --since).
    #[arg(long, value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    /// Only records of this subject.
    #[arg(long)]
    subject: Option<String>,
    /// Only records for this model.
    #[arg(long)]
    model: Option<String>,
    /// Only records of this writer.
    #[arg(long)]
    writer: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    format: ExportFormat,
    /// Write here instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// With --format csv: also write the JSON export bundle (the proof) here.
    #[arg(long, value_name = "FILE")]
    evidence: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct TailArgs {
    #[command(flatten)]
    sources: SourceArgs,
    /// Only records of this writer.
    #[arg(long)]
    writer: Option<String>,
    /// Records to show before following.
    #[arg(long, default_value_t = 10)]
    lines: usize,
    /// How often to look for new records (`1s`, `500ms`).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Print the last --lines records and exit.
    #[arg(long)]
    no_follow: bool,
}

#[derive(clap::Args, Debug)]
struct KeygenArgs {
    /// Directory to write the two key files into.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Overwrite existing key files.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
struct PublicKeyArgs {
    /// Signing key file (PKCS#8 PEM or 32 raw bytes).
    #[arg(value_name = "SIGNING_KEY")]
    signing_key: PathBuf,
}

/// Run `policybind audit ...`. Operational failures are printed here and become
/// exit code 2, so that 1 always means "the trail is broken".
pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let result = match args.command {
        AuditCommand::Verify(args) => verify(args).await,
        AuditCommand::Export(args) => export(args).await,
        AuditCommand::Tail(args) => tail(args).await,
        AuditCommand::Keygen(args) => keygen(args),
        AuditCommand::PublicKey(args) => public_key(args),
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

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc());
    }
    let age = humantime::parse_duration(text)
        .map_err(|_| format!("{text:?}: expected RFC 3339, YYYY-MM-DD or an age like 24h"))?;
    let age = chrono::Duration::from_std(age).map_err(|e| e.to_string())?;
    Ok(Utc::now() - age)
}

/// Everything read from the sources: segments (parsed or not) and export bundles.
struct Loaded {
    segments: Vec<StoredSegment>,
    bundles: Vec<(String, ExportBundle)>,
}

async fn load(sources: &SourceArgs) -> anyhow::Result<Loaded> {
    if sources.dirs.is_empty() && sources.files.is_empty() && sources.namespaces.is_empty() {
        bail!("no source given: pass --dir, --file or --namespace");
    }
    let mut loaded = Loaded {
        segments: Vec::new(),
        bundles: Vec::new(),
    };
    for dir in &sources.dirs {
        if !dir.is_dir() {
            bail!("{} is not a directory", dir.display());
        }
        let store = DirectoryStore::open(dir)?;
        loaded.segments.extend(store.list().await?);
    }
    for file in &sources.files {
        load_file(file, &mut loaded)?;
    }
    if !sources.namespaces.is_empty() {
        let client = kube_client(sources).await?;
        for namespace in &sources.namespaces {
            let store = ConfigMapStore::new(client.clone(), namespace);
            let segments = store
                .list()
                .await
                .with_context(|| format!("listing audit segments in namespace {namespace}"))?;
            loaded.segments.extend(segments.into_iter().map(|mut s| {
                s.name = format!("{namespace}/{}", s.name);
                s
            }));
        }
    }
    Ok(loaded)
}

fn load_file(path: &Path, loaded: &mut Loaded) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    // An export bundle or a single segment is one JSON document.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        if value.get("format").and_then(|f| f.as_str()) == Some(EXPORT_FORMAT) {
            let bundle: ExportBundle = serde_json::from_value(value)
                .with_context(|| format!("{name} is not a valid export bundle"))?;
            loaded.bundles.push((name, bundle));
        } else {
            loaded.segments.push(StoredSegment::parse(name, &bytes));
        }
        return Ok(());
    }
    // Otherwise JSON lines, one segment per line (the stdout sink's format). A
    // line that does not parse is reported as a malformed segment, not skipped.
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = 0;
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        loaded.segments.push(StoredSegment::parse(
            format!("{name}:{}", number + 1),
            line.as_bytes(),
        ));
    }
    if lines == 0 {
        bail!("{name} holds no segments");
    }
    Ok(())
}

async fn kube_client(sources: &SourceArgs) -> anyhow::Result<kube::Client> {
    let options = kube::config::KubeConfigOptions {
        context: sources.context.clone(),
        ..Default::default()
    };
    let config = match &sources.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None => match kube::Config::from_kubeconfig(&options).await {
            Ok(config) => config,
            Err(_) => kube::Config::incluster().context("no kubeconfig and not in a cluster")?,
        },
    };
    Ok(kube::Client::try_from(config)?)
}

fn trusted_keys(keys: &KeyArgs) -> anyhow::Result<Vec<AuditVerifyingKey>> {
    if keys.keys.is_empty() && !keys.no_signatures {
        bail!(
            "no trusted key: pass --key <verification key file> (or --no-signatures to check hashes and chains only)"
        );
    }
    keys.keys
        .iter()
        .map(|path| {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
            AuditVerifyingKey::from_key_material(&bytes)
                .or_else(|e| {
                    AuditSigningKey::from_key_material(&bytes)
                        .map(|k| k.verifying_key())
                        .map_err(|_| e)
                })
                .with_context(|| format!("key {}", path.display()))
        })
        .collect()
}

fn merge(into: &mut VerifyReport, other: VerifyReport) {
    into.writers.extend(other.writers);
    into.problems.extend(other.problems);
}

async fn verify(args: VerifyArgs) -> anyhow::Result<u8> {
    let options = VerifyOptions {
        trusted_keys: trusted_keys(&args.keys)?,
        require_genesis: args.require_genesis,
        anchors: args.anchors,
    };
    let loaded = load(&args.sources).await?;
    let has_segments = !loaded.segments.is_empty();
    let mut report = if has_segments || loaded.bundles.is_empty() {
        verify_stored(loaded.segments, &options)
    } else {
        VerifyReport {
            signatures_checked: !options.trusted_keys.is_empty(),
            ..VerifyReport::default()
        }
    };
    for (name, bundle) in &loaded.bundles {
        let mut bundle_report = verify_export(bundle, &options);
        for problem in &mut bundle_report.problems {
            problem.segment = Some(format!(
                "{name}: {}",
                problem.segment.as_deref().unwrap_or("-")
            ));
        }
        merge(&mut report, bundle_report);
    }
    if report.writers.is_empty() && report.problems.is_empty() {
        // Nothing to prove: most likely a wrong directory or namespace.
        eprintln!("warning: no audit segments found in the given sources");
    }
    print_report(&report, args.format)?;
    Ok(if report.is_ok() { EXIT_OK } else { EXIT_BROKEN })
}

fn print_report(report: &VerifyReport, format: ReportFormat) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if format == ReportFormat::Json {
        let value = serde_json::json!({
            "result": if report.is_ok() { "ok" } else { "broken" },
            "records": report.total_records(),
            "segments": report.total_segments(),
            "report": report,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    let sealed: usize = report.writers.iter().map(|w| w.sealed_segments).sum();
    match report.first_problem() {
        None => writeln!(
            out,
            "OK: {} record(s) in {} segment(s) ({} sealed) from {} writer(s); signatures {}",
            report.total_records(),
            report.total_segments(),
            sealed,
            report.writers.len(),
            if report.signatures_checked {
                "checked"
            } else {
                "NOT checked (--no-signatures)"
            },
        )?,
        Some(problem) => writeln!(out, "BROKEN: {problem}")?,
    }
    for problem in report.problems.iter().skip(1) {
        writeln!(out, "  also: {problem}")?;
    }
    for writer in &report.writers {
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
        if writer.unsealed_records > 0 {
            write!(
                out,
                ", {} record(s) in the open segment",
                writer.unsealed_records
            )?;
        }
        writeln!(out)?;
    }
    Ok(())
}

async fn export(args: ExportArgs) -> anyhow::Result<u8> {
    if args.evidence.is_some() && args.format != ExportFormat::Csv {
        bail!("--evidence goes with --format csv; the JSON export carries its evidence");
    }
    let options = VerifyOptions {
        trusted_keys: trusted_keys(&args.keys)?,
        require_genesis: false,
        anchors: Vec::new(),
    };
    let loaded = load(&args.sources).await?;
    if !loaded.bundles.is_empty() {
        bail!("export reads segments, not export bundles");
    }
    let segments: Vec<NamedSegment> = loaded.segments.iter().filter_map(|s| s.named()).collect();
    let report = verify_stored(loaded.segments, &options);
    if let Some(problem) = report.first_problem() {
        eprintln!("refusing to export a broken trail: {problem}");
        return Ok(EXIT_BROKEN);
    }

    let mut filter = BTreeMap::new();
    let mut note = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            filter.insert(key.to_string(), value);
        }
    };
    note("since", args.since.map(|t| t.to_rfc3339()));
    note("until", args.until.map(|t| t.to_rfc3339()));
    note("subject", args.subject.clone());
    note("model", args.model.clone());
    note("writer", args.writer.clone());
    let keep = |record: &AuditRecord| {
        args.since.is_none_or(|since| record.time.get() >= since)
            && args.until.is_none_or(|until| record.time.get() < until)
            && args
                .subject
                .as_ref()
                .is_none_or(|s| record.subject.as_ref() == Some(s))
            && args
                .model
                .as_ref()
                .is_none_or(|m| record.model.as_ref() == Some(m))
            && args.writer.as_ref().is_none_or(|w| &record.writer == w)
    };
    let bundle = ExportBundle::build(&segments, keep, Some(Utc::now().to_rfc3339()), filter);

    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    match args.format {
        ExportFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &bundle)?;
            writeln!(out)?;
        }
        ExportFormat::Csv => {
            write_csv(&mut out, &bundle.records)?;
            if let Some(path) = &args.evidence {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                serde_json::to_writer_pretty(std::io::BufWriter::new(file), &bundle)?;
            }
        }
    }
    out.flush()?;
    eprintln!(
        "exported {} record(s) from {} segment(s)",
        bundle.records.len(),
        bundle.evidence.len()
    );
    Ok(EXIT_OK)
}

/// CSV columns, in order.
const CSV_COLUMNS: [&str; 22] = [
    "seq",
    "time",
    "writer",
    "kind",
    "request_id",
    "subject",
    "token_id",
    "model",
    "namespace",
    "effect",
    "policy",
    "rule",
    "codes",
    "fingerprint",
    "prompt_hash",
    "redacted_prompt",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "detail",
    "prev_hash",
    "hash",
];

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

fn write_csv(out: &mut dyn Write, records: &[AuditRecord]) -> anyhow::Result<()> {
    writeln!(out, "{}", CSV_COLUMNS.join(","))?;
    for r in records {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let usage = r.usage.unwrap_or_default();
        let fields = [
            r.seq.to_string(),
            r.time.to_string(),
            r.writer.clone(),
            r.kind.to_string(),
            opt(&r.request_id),
            opt(&r.subject),
            opt(&r.token_id),
            opt(&r.model),
            opt(&r.namespace),
            r.effect.map(|e| e.as_str().to_string()).unwrap_or_default(),
            opt(&r.policy),
            opt(&r.rule),
            r.codes.join(";"),
            opt(&r.fingerprint),
            opt(&r.prompt_hash),
            opt(&r.redacted_prompt),
            r.usage
                .map(|_| usage.input_tokens.to_string())
                .unwrap_or_default(),
            r.usage
                .map(|_| usage.output_tokens.to_string())
                .unwrap_or_default(),
            r.usage
                .map(|_| usage.cost_usd.to_string())
                .unwrap_or_default(),
            if r.detail.is_empty() {
                String::new()
            } else {
                serde_json::to_string(&r.detail)?
            },
            r.prev_hash.to_hex(),
            r.hash.to_hex(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        writeln!(out, "{}", line.join(","))?;
    }
    Ok(())
}

/// One line per record: time, writer, seq, kind, effect, who, what, why.
fn describe(record: &AuditRecord) -> String {
    let mut line = format!(
        "{} {} #{} {}",
        record.time, record.writer, record.seq, record.kind
    );
    if let Some(effect) = record.effect {
        line.push_str(&format!(" {effect}"));
    }
    let mut field = |label: &str, value: &Option<String>| {
        if let Some(value) = value {
            line.push_str(&format!(" {label}={value}"));
        }
    };
    field("subject", &record.subject);
    field("model", &record.model);
    field("token", &record.token_id);
    field("request", &record.request_id);
    if let (Some(policy), Some(rule)) = (&record.policy, &record.rule) {
        line.push_str(&format!(" rule={policy}/{rule}"));
    }
    if !record.codes.is_empty() {
        line.push_str(&format!(" codes={}", record.codes.join(",")));
    }
    if let Some(usage) = record.usage {
        line.push_str(&format!(
            " tokens={}+{} cost=${}",
            usage.input_tokens, usage.output_tokens, usage.cost_usd
        ));
    }
    for (key, value) in &record.detail {
        line.push_str(&format!(" {key}={value}"));
    }
    line
}

async fn tail(args: TailArgs) -> anyhow::Result<u8> {
    // Highest sequence printed per writer.
    let mut printed: BTreeMap<String, u64> = BTreeMap::new();
    let mut first = true;
    loop {
        let loaded = load(&args.sources).await?;
        let mut fresh: Vec<AuditRecord> = Vec::new();
        let mut seen = BTreeSet::new();
        for stored in loaded.segments {
            let Ok(segment) = stored.content else {
                continue;
            };
            for record in segment.records {
                if args.writer.as_ref().is_some_and(|w| &record.writer != w) {
                    continue;
                }
                let after = printed.get(&record.writer).copied().unwrap_or(0);
                // A sealed and an open copy of one segment can both be listed
                // briefly; print each record once.
                if record.seq > after && seen.insert((record.writer.clone(), record.seq)) {
                    fresh.push(record);
                }
            }
        }
        fresh.sort_by(|a, b| (a.time, &a.writer, a.seq).cmp(&(b.time, &b.writer, b.seq)));
        if first {
            let skip = fresh.len().saturating_sub(args.lines);
            for record in &fresh[..skip] {
                let entry = printed.entry(record.writer.clone()).or_default();
                *entry = (*entry).max(record.seq);
            }
            fresh.drain(..skip);
            first = false;
        }
        let mut out = std::io::stdout().lock();
        for record in &fresh {
            writeln!(out, "{}", describe(record))?;
            let entry = printed.entry(record.writer.clone()).or_default();
            *entry = (*entry).max(record.seq);
        }
        out.flush()?;
        drop(out);
        if args.no_follow {
            return Ok(EXIT_OK);
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(EXIT_OK),
        }
    }
}

fn keygen(args: KeygenArgs) -> anyhow::Result<u8> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let key = AuditSigningKey::from_seed(&seed);
    let private_path = args.out.join("audit-signing-key.pem");
    let public_path = args.out.join("audit-verify-key.pem");
    for path in [&private_path, &public_path] {
        if path.exists() && !args.force {
            bail!("{} exists (pass --force to overwrite)", path.display());
        }
    }
    std::fs::create_dir_all(&args.out)?;
    write_private(&private_path, key.to_pkcs8_pem()?.as_bytes())?;
    std::fs::write(&public_path, key.verifying_key().to_public_key_pem()?)?;
    println!(
        "key id {}\nsigning key:      {} (keep secret; Secret data key `signing-key`)\nverification key: {} (publish)",
        key.key_id(),
        private_path.display(),
        public_path.display()
    );
    Ok(EXIT_OK)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("creating {}", path.display()))
}

fn public_key(args: PublicKeyArgs) -> anyhow::Result<u8> {
    let key = policybind_audit::keys::signing_key_from_file(&args.signing_key)?;
    print!("{}", key.verifying_key().to_public_key_pem()?);
    eprintln!("key id {}", key.key_id());
    Ok(EXIT_OK)
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

    #[test]
    fn times_parse_as_rfc3339_date_or_age() {
        assert_eq!(
            parse_time("2026-11-01").unwrap(),
            parse_time("2026-11-01T00:00:00Z").unwrap()
        );
        let day_ago = parse_time("24h").unwrap();
        assert!(
            (Utc::now() - day_ago).num_hours() == 24 || (Utc::now() - day_ago).num_hours() == 23
        );
        assert!(parse_time("yesterday-ish").is_err());
    }

    #[test]
    fn csv_fields_with_separators_are_quoted() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
