//! `policybind audit export` and `policybind audit tail`: records out of the
//! trail, for auditors (with evidence) and for people watching.
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, Utc};
use policybind_engine::audit::{
    AuditRecord, ExportBundle, NamedSegment, VerifyOptions, verify_segments,
};

use super::{EXIT_BROKEN, EXIT_OK, KeyArgs, SourceArgs, sources};

pub(super) const EXPORT_ABOUT: &str = "Export records for auditors, with the chain evidence needed to re-verify the slice.\n\n\
The trail is verified first; a broken trail is not exported (exit 1). Only records of sealed \
segments are exported (with --allow-open-tail the open segments' records are left out, not \
failed on). JSON output is an export bundle: the selected records plus, for every segment they \
come from, the signed header and the list of all record hashes; `policybind audit verify --file \
<bundle>` proves every exported record exactly as signed. CSV is one row per record; pass \
--evidence to also write the JSON bundle for re-verification.\n\n\
Examples:\n  policybind audit export --namespace team-a --keyring keys.json --since 2026-11-01 --until 2026-12-01 > nov.json\n  \
policybind audit export --dir ./audit --keyring keys.json --since 24h --format csv --subject team-a --evidence proof.json";

pub(super) const TAIL_ABOUT: &str = "Follow new records as they are written, one human-readable line each.\n\n\
Polls the sources every --interval and prints records not seen before, including those of \
still-open segments. Starts with the last --lines records. Stop with Ctrl-C, or pass \
--no-follow to print once and exit. Tail does not verify; use `audit verify` for proof.";

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ExportFormat {
    /// An export bundle with records and evidence (re-verifiable).
    Json,
    /// One row per record (pass --evidence for the proof).
    Csv,
}

#[derive(clap::Args, Debug)]
pub(super) struct ExportArgs {
    #[command(flatten)]
    sources: SourceArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// Leave out the records of open segments instead of refusing to export.
    #[arg(long)]
    allow_open_tail: bool,
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
pub(super) struct TailArgs {
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

pub(super) fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
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

pub(super) async fn export(args: ExportArgs) -> anyhow::Result<u8> {
    if args.evidence.is_some() && args.format != ExportFormat::Csv {
        bail!("--evidence goes with --format csv; the JSON export carries its evidence");
    }
    let options = VerifyOptions {
        keyring: sources::keyring(&args.keys, &args.sources).await?,
        allow_open_tail: args.allow_open_tail,
        ..VerifyOptions::default()
    };
    let loaded = sources::load(&args.sources).await?;
    if !loaded.bundles.is_empty() || !loaded.proofs.is_empty() {
        bail!("export reads segments, not export bundles or proofs");
    }
    let stored = loaded.parse();
    let named: Vec<NamedSegment> = stored.iter().filter_map(|s| s.named()).collect();
    let report = verify_segments(&named, &options);
    if let Some(problem) = report.first_problem() {
        eprintln!("refusing to export a broken trail: {problem}");
        return Ok(EXIT_BROKEN);
    }
    // Only what is proven: sealed segments of the verified chains.
    let chains: BTreeSet<&str> = report
        .writers
        .iter()
        .flat_map(|w| w.chain.iter().map(String::as_str))
        .collect();
    let segments: Vec<NamedSegment> = named
        .iter()
        .filter(|s| s.segment.is_sealed() && chains.contains(s.name.as_str()))
        .cloned()
        .collect();

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

pub(super) async fn tail(args: TailArgs) -> anyhow::Result<u8> {
    // Highest sequence printed per writer.
    let mut printed: BTreeMap<String, u64> = BTreeMap::new();
    let mut first = true;
    loop {
        let loaded = sources::load(&args.sources).await?;
        let mut fresh: Vec<AuditRecord> = Vec::new();
        let mut seen = BTreeSet::new();
        for stored in loaded.parse() {
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

#[cfg(test)]
mod tests {
    use super::*;

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
