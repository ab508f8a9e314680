//! `policybind report`: compliance reports an auditor can take away, signed.
//!
//! The report itself is `policybind_compliance`; this module reads the sources (a
//! cluster, or manifest directories plus an audit trail), writes the files and
//! checks them. Exit codes: 0 written (or verified), 1 `verify` found a report that
//! does not hold, 2 could not run.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, Utc};
use policybind_compliance::catalog::{self, Catalog};
use policybind_compliance::report::{RENDERER_VERSION, Report};
use policybind_compliance::signing::{self, Signature};
use policybind_compliance::{canonical, html, incident_report, oscal};
use policybind_engine::audit::{AuditSigningKey, AuditVerifyingKey};

use crate::commands::compliance_sources::{self, Sources};

/// Exit code: `verify` found a report that does not hold.
const EXIT_BROKEN: u8 = 1;
/// Exit code: could not run.
const EXIT_ERROR: u8 = 2;

/// Compliance reports: per-control status with its evidence, signed.
#[derive(clap::Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    long_about = "Write a signed compliance report for a framework: every control with its status and \
the evidence behind it (objects, audit record ranges, approvers), the audit trail's verification \
result for the period, and model cards from the registry.\n\n\
Writes <out>/<framework>.json (the report), <framework>.json.sig (detached Ed25519 signature over \
its canonical JSON), <framework>.html (self-contained, carries the JSON's SHA-256) and \
<framework>.oscal-ar.json (OSCAL Assessment Results).\n\n\
Sources: a cluster (default; kubeconfig), or manifest files/directories (-f) plus an audit trail \
(--audit-dir, --audit-file).\n\n\
Examples:\n  policybind report --framework eu-ai-act --signing-key report-key.pem --audit-key audit-verify.pem --out reports/\n  \
policybind report --framework nist-ai-rmf -f examples/ --audit-dir audit/ --audit-key audit-verify.pem \\\n      --since 2026-11-01 --until 2026-12-01 --signing-key k.pem --out reports/\n  \
policybind report verify reports/eu-ai-act.json --key report-verify.pem\n  \
policybind report incident repeated-denials-1a2b --namespace team-a --signing-key k.pem --out reports/\n\n\
Exit codes: 0 written or verified, 1 a report does not verify, 2 could not run."
)]
pub struct ReportArgs {
    #[command(subcommand)]
    command: Option<ReportCommand>,
    #[command(flatten)]
    write: Box<WriteArgs>,
}

#[derive(clap::Subcommand, Debug)]
enum ReportCommand {
    /// Check a report's signature, and that its HTML and OSCAL files match it.
    #[command(
        long_about = "Check reports: the detached signature over the canonical JSON \
(with a trusted key), the SHA-256 the HTML carries, and that the HTML and OSCAL files are exactly \
what the JSON renders to. A report whose evidence was edited fails.\n\n\
PATH is a report JSON file or a directory (every *.json with a .sig beside it).\n\n\
Exit codes: 0 every report holds, 1 one does not, 2 could not run."
    )]
    Verify(VerifyArgs),
    /// Write the serious-incident report (EU AI Act Art. 73 structure) of one Incident.
    #[command(
        long_about = "Write the serious-incident report of one Incident: the AI system \
concerned (model card), the harm and its reporting deadline, the timeline, the linked audit \
records as found in the verified trail, root cause, corrective measures, the authority \
notification and what is still open. Writes <out>/incident-<name>.json, .json.sig and .html."
    )]
    Incident(Box<IncidentArgs>),
}

#[derive(clap::Args, Debug)]
struct WriteArgs {
    /// Framework: eu-ai-act, nist-ai-rmf, iso-42001, soc2, or one a --catalog file defines.
    /// Repeatable.
    #[arg(long = "framework", value_name = "ID")]
    frameworks: Vec<String>,
    /// A control catalog file (format policybind-controls/v1) merged over the built-in
    /// catalog of its framework: same id replaces, new id adds, `withdrawn: true` drops.
    /// Repeatable.
    #[arg(long = "catalog", value_name = "FILE")]
    catalogs: Vec<PathBuf>,
    /// Directory to write the report files into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    sources: Sources,
    #[command(flatten)]
    signing: SigningArgs,
}

#[derive(clap::Args, Debug)]
struct SigningArgs {
    /// Ed25519 signing key of the report (PKCS#8 PEM or 32 raw bytes; `policybind audit
    /// keygen` makes one). Its public half verifies the report.
    #[arg(long, value_name = "FILE")]
    signing_key: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// Report JSON files or directories of reports.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Trusted report verification key (PEM public key, 64 hex characters or 32 raw
    /// bytes; a signing key file is accepted and its public half used). Repeatable.
    #[arg(long = "key", required = true, value_name = "FILE")]
    keys: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct IncidentArgs {
    /// Name of the Incident.
    name: String,
    /// Directory to write the report files into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    sources: Sources,
    #[command(flatten)]
    signing: SigningArgs,
}

pub async fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let result = match args.command {
        Some(ReportCommand::Verify(verify_args)) => verify(verify_args),
        Some(ReportCommand::Incident(incident_args)) => incident(*incident_args).await,
        None => write(*args.write).await,
    };
    Ok(match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    })
}

fn generator() -> String {
    format!("policybind {}", env!("CARGO_PKG_VERSION"))
}

fn signing_key(args: &SigningArgs) -> anyhow::Result<AuditSigningKey> {
    let path = args
        .signing_key
        .as_ref()
        .context("a report is always signed: pass --signing-key <Ed25519 key file> (`policybind audit keygen --out DIR` makes one)")?;
    Ok(policybind_audit::keys::signing_key_from_file(path)?)
}

fn user_catalogs(paths: &[PathBuf]) -> anyhow::Result<Vec<Catalog>> {
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(catalog::parse(&path.display().to_string(), &text)?)
        })
        .collect()
}

async fn write(args: WriteArgs) -> anyhow::Result<u8> {
    if args.frameworks.is_empty() {
        bail!(
            "pass --framework (one of {}, or one a --catalog file defines)",
            catalog::built_in_frameworks()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let out = args.out.as_ref().context("pass --out <directory>")?;
    let key = signing_key(&args.signing)?;
    let user = user_catalogs(&args.catalogs)?;
    let catalogs: Vec<Catalog> = args
        .frameworks
        .iter()
        .map(|f| catalog::resolve(f, &user))
        .collect::<Result<_, _>>()?;
    let loaded = compliance_sources::load(&args.sources).await?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for catalog in &catalogs {
        let report = policybind_compliance::report::build(
            catalog,
            &loaded.snapshot,
            loaded.descriptions.clone(),
            &generator(),
        );
        let paths = write_report(out, &report, &key)?;
        let s = &report.summary;
        println!(
            "{}: {} controls: {} satisfied, {} partially evidenced, {} not satisfied, {} not evidenced by PolicyBind, {} not applicable; trail {}",
            catalog.framework,
            s.controls,
            s.satisfied,
            s.partially_evidenced,
            s.not_satisfied,
            s.not_evidenced,
            s.not_applicable,
            if report.trail.verified {
                "verified"
            } else if report.trail.examined {
                "NOT verified"
            } else {
                "not given"
            }
        );
        for path in paths {
            println!("  {}", path.display());
        }
    }
    Ok(0)
}

/// The files of one report, named after `stem`.
struct ReportFiles {
    json: PathBuf,
    sig: PathBuf,
    html: PathBuf,
    oscal: Option<PathBuf>,
}

impl ReportFiles {
    fn new(dir: &Path, stem: &str, with_oscal: bool) -> ReportFiles {
        ReportFiles {
            json: dir.join(format!("{stem}.json")),
            sig: dir.join(format!("{stem}.json.sig")),
            html: dir.join(format!("{stem}.html")),
            oscal: with_oscal.then(|| dir.join(format!("{stem}.oscal-ar.json"))),
        }
    }

    /// The files beside a report JSON file.
    fn beside(json: &Path) -> ReportFiles {
        let dir = json.parent().unwrap_or(Path::new("."));
        let stem = json
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .unwrap_or_default();
        ReportFiles::new(dir, stem, !stem.starts_with("incident-"))
    }
}

fn pretty<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(format!("{}\n", serde_json::to_string_pretty(value)?))
}

fn write_report(
    dir: &Path,
    report: &Report,
    key: &AuditSigningKey,
) -> anyhow::Result<Vec<PathBuf>> {
    let files = ReportFiles::new(dir, &report.catalog.framework, true);
    let canonical = canonical::to_bytes(report)?;
    let signature = signing::sign(&canonical, &file_name(&files.json), key);
    let digest = signature.sha256.clone();
    std::fs::write(&files.json, pretty(report)?)?;
    std::fs::write(&files.sig, pretty(&signature)?)?;
    std::fs::write(&files.html, html::render_report(report, &digest))?;
    let oscal_path = files.oscal.clone().expect("reports have an OSCAL file");
    std::fs::write(
        &oscal_path,
        pretty(&oscal::assessment_results(report, &digest))?,
    )?;
    Ok(vec![files.json, files.sig, files.html, oscal_path])
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

async fn incident(args: IncidentArgs) -> anyhow::Result<u8> {
    let key = signing_key(&args.signing)?;
    let loaded = compliance_sources::load(&args.sources).await?;
    let found: Vec<_> = loaded
        .snapshot
        .incidents
        .iter()
        .filter(|i| i.metadata.name.as_deref() == Some(args.name.as_str()))
        .collect();
    let incident = match found.as_slice() {
        [one] => *one,
        [] => bail!(
            "no Incident named {} in the sources{}",
            args.name,
            args.sources.namespace_hint()
        ),
        _ => bail!(
            "{} Incidents are named {}; pass --namespace to say which",
            found.len(),
            args.name
        ),
    };
    let report = incident_report::build(incident, &loaded.snapshot, &generator());
    let stem = format!("incident-{}", args.name);
    let files = ReportFiles::new(&args.out, &stem, false);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let canonical = canonical::to_bytes(&report)?;
    let signature = signing::sign(&canonical, &file_name(&files.json), &key);
    std::fs::write(&files.json, pretty(&report)?)?;
    std::fs::write(&files.sig, pretty(&signature)?)?;
    std::fs::write(
        &files.html,
        html::render_incident(&report, &signature.sha256),
    )?;
    println!(
        "incident {}/{}: serious {}, notification {}, {} open item(s)",
        report.incident.namespace,
        report.incident.name,
        report.serious,
        report.notification.status,
        report.open_items.len()
    );
    for path in [files.json, files.sig, files.html] {
        println!("  {}", path.display());
    }
    Ok(0)
}

/// Parses `--since`, `--until`, `--now`: RFC 3339 or a date (midnight UTC).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
        .map_err(|_| {
            format!("{text:?}: expected RFC 3339 (2026-11-01T00:00:00Z) or a date (2026-11-01)")
        })
}

fn trusted_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<AuditVerifyingKey>> {
    paths
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

fn report_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if !path.exists() {
            bail!("{}: no such file or directory", path.display());
        }
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .filter(|p| !p.to_string_lossy().ends_with(".oscal-ar.json"))
                .filter(|p| p.with_extension("json.sig").is_file())
                .collect();
            found.sort();
            if found.is_empty() {
                bail!(
                    "{}: no signed report (*.json with a .json.sig beside it)",
                    path.display()
                );
            }
            out.extend(found);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

fn verify(args: VerifyArgs) -> anyhow::Result<u8> {
    let trusted = trusted_keys(&args.keys)?;
    let mut broken = 0;
    for json in report_files(&args.paths)? {
        match verify_one(&json, &trusted) {
            Ok(notes) => {
                println!("OK: {}", json.display());
                for note in notes {
                    println!("  {note}");
                }
            }
            Err(problem) => {
                broken += 1;
                println!("BROKEN: {}: {problem:#}", json.display());
            }
        }
    }
    Ok(if broken == 0 { 0 } else { EXIT_BROKEN })
}

/// One report: the signature over the canonical JSON, then the HTML's digest and
/// bytes, then the OSCAL file. Returns notes on what was checked.
fn verify_one(json: &Path, trusted: &[AuditVerifyingKey]) -> anyhow::Result<Vec<String>> {
    let files = ReportFiles::beside(json);
    let text = std::fs::read(json).with_context(|| format!("reading {}", json.display()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).context("the report is not JSON")?;
    let signature: Signature = serde_json::from_slice(
        &std::fs::read(&files.sig).with_context(|| format!("reading {}", files.sig.display()))?,
    )
    .context("the signature file is not a report signature")?;
    let canonical = canonical::to_bytes(&value)?;
    let digest = signing::verify(&canonical, &signature, trusted)?;
    let mut notes = vec![format!(
        "signature by key {} over SHA-256 {digest}",
        signature.key_id
    )];
    let html = std::fs::read_to_string(&files.html)
        .with_context(|| format!("reading {}", files.html.display()))?;
    let meta = format!("<meta name=\"{}\" content=\"{digest}\">", html::DIGEST_META);
    if !html.contains(&meta) {
        bail!(
            "{} does not carry the report's SHA-256 {digest}",
            files.html.display()
        );
    }
    let renderer = value.get("renderer").and_then(|r| r.as_u64()).unwrap_or(0);
    if renderer != u64::from(RENDERER_VERSION) {
        notes.push(format!("HTML and OSCAL not re-rendered: written by renderer {renderer}, this is renderer {RENDERER_VERSION}; the HTML's digest matches"));
        return Ok(notes);
    }
    let expected_html = if files.oscal.is_some() {
        let report: Report = serde_json::from_value(value.clone())
            .context("the report does not read as a compliance report")?;
        check_oscal(&files, &report, &digest)?;
        notes.push(format!(
            "{} matches the report",
            file_name(files.oscal.as_deref().unwrap_or(json))
        ));
        html::render_report(&report, &digest)
    } else {
        let report: incident_report::IncidentReport = serde_json::from_value(value)
            .context("the report does not read as an incident report")?;
        html::render_incident(&report, &digest)
    };
    if html != expected_html {
        bail!(
            "{} differs from what the signed report renders to (edited after signing)",
            files.html.display()
        );
    }
    notes.push(format!("{} matches the report", file_name(&files.html)));
    Ok(notes)
}

fn check_oscal(files: &ReportFiles, report: &Report, digest: &str) -> anyhow::Result<()> {
    let Some(path) = &files.oscal else {
        return Ok(());
    };
    let have: serde_json::Value = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", path.display()))?;
    if have != oscal::assessment_results(report, digest) {
        bail!(
            "{} differs from what the signed report renders to (edited after signing)",
            path.display()
        );
    }
    Ok(())
}
