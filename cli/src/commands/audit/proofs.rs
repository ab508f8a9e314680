//! `policybind audit prove` and `policybind audit checkpoint`: the artifacts
//! auditors keep and hand on, in formats transparency-log tools already check
//! (RFC 6962 proofs, C2SP signed-note checkpoints).
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use policybind_engine::audit::merkle::PartialTree;
use policybind_engine::audit::proof::{ConsistencyProof, InclusionProof, ProofDocument};
use policybind_engine::audit::{
    Hash256, Keyring, NamedSegment, Problem, SignedNote, TreeFrontier, VerifyOptions, VerifyReport,
    leaf_hash, verify_segments,
};

use super::{EXIT_BROKEN, EXIT_OK, KeyArgs, SourceArgs, sources};

pub(super) const PROVE_ABOUT: &str = "Write an RFC 6962 proof that auditors check offline with only the keyring.\n\n\
--record WRITER:SEQ: an inclusion proof: the record, its sealed segment's signed header and \
the audit path from the record to the header's Merkle root; for current segments also the \
segment's signed checkpoint and the audit path to the writer's log root.\n\
--consistency-from FILE: for every checkpoint in FILE (kept from an earlier review), a \
consistency proof that the writer's newest signed checkpoint extends it (one JSON line each).\n\n\
The trail is verified first (exit 1 if broken). Check proofs with \
`policybind audit verify --file proof.json --keyring keys.json`.\n\n\
Examples:\n  policybind audit prove --dir ./audit --keyring keys.json --record sidecar/team-a/pod-1:1042 > record.proof.json\n  \
policybind audit prove --namespace team-a --keyring keys.json --consistency-from last.checkpoint > consistency.jsonl";

pub(super) const CHECKPOINT_ABOUT: &str = "Print each writer's newest signed checkpoint, once the trail verifies.\n\n\
A checkpoint is a C2SP signed note (tlog-checkpoint): origin policybind.io/audit/<writer>, the \
number of records in the writer's log, the RFC 6962 root, and the writer's Ed25519 signature. \
Keep the output; at the next review `policybind audit verify --checkpoint FILE` checks that the \
trail still extends every one of them, so deleting a writer's newest segments is caught. Writers \
whose segments predate checkpoints (format 1) have none.\n\n\
Example:\n  policybind audit checkpoint --namespace team-a --keyring keys.json --allow-open-tail > 2026-11-30.checkpoint";

#[derive(clap::Args, Debug)]
pub(super) struct ProveArgs {
    #[command(flatten)]
    sources: SourceArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// The record to prove, as `WRITER:SEQ`.
    #[arg(
        long,
        value_name = "WRITER:SEQ",
        conflicts_with = "consistency_from",
        required_unless_present = "consistency_from"
    )]
    record: Option<String>,
    /// Checkpoints from an earlier review: prove the trail's newest checkpoints
    /// extend them.
    #[arg(long, value_name = "FILE")]
    consistency_from: Option<PathBuf>,
    /// Accept writers' open segments as unproven instead of refusing.
    #[arg(long)]
    allow_open_tail: bool,
    /// Write here instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub(super) struct CheckpointArgs {
    #[command(flatten)]
    sources: SourceArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// Accept writers' open segments as unproven instead of refusing.
    #[arg(long)]
    allow_open_tail: bool,
    /// Write here instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
}

/// The verified trail: segments, report, and each writer's tree.
struct Verified {
    segments: Vec<NamedSegment>,
    report: VerifyReport,
}

impl Verified {
    /// The writer's tree over its verified chain: the frontier before its first
    /// segment and every leaf after (format 2 chains only).
    fn tree(&self, writer: &str) -> Option<(TreeFrontier, Vec<Hash256>)> {
        let summary = self.report.writers.iter().find(|w| w.writer == writer)?;
        let by_name: BTreeMap<&str, &NamedSegment> =
            self.segments.iter().map(|s| (s.name.as_str(), s)).collect();
        let chain: Vec<&NamedSegment> = summary
            .chain
            .iter()
            .filter_map(|n| by_name.get(n.as_str()).copied())
            .collect();
        let before = chain.first()?.segment.frontier_before()?.ok()?;
        let leaves = chain
            .iter()
            .flat_map(|s| s.segment.records.iter().map(|r| leaf_hash(&r.hash)))
            .collect();
        Some((before, leaves))
    }
}

async fn verified(
    sources: &SourceArgs,
    keys: &KeyArgs,
    allow_open_tail: bool,
) -> anyhow::Result<Result<Verified, Problem>> {
    let options = VerifyOptions {
        keyring: sources::keyring(keys, sources).await?,
        allow_open_tail,
        ..VerifyOptions::default()
    };
    let loaded = sources::load(sources).await?;
    let segments: Vec<NamedSegment> = loaded.parse().iter().filter_map(|s| s.named()).collect();
    let report = verify_segments(&segments, &options);
    if let Some(problem) = report.first_problem() {
        return Ok(Err(problem.clone()));
    }
    Ok(Ok(Verified { segments, report }))
}

fn output(path: &Option<PathBuf>) -> anyhow::Result<Box<dyn Write>> {
    Ok(match path {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    })
}

pub(super) async fn prove(args: ProveArgs) -> anyhow::Result<u8> {
    let verified = match verified(&args.sources, &args.keys, args.allow_open_tail).await? {
        Ok(verified) => verified,
        Err(problem) => {
            eprintln!("refusing to prove from a broken trail: {problem}");
            return Ok(EXIT_BROKEN);
        }
    };
    let mut out = output(&args.output)?;
    if let Some(record) = &args.record {
        let proof = inclusion(&verified, record)?;
        serde_json::to_writer_pretty(&mut out, &ProofDocument::Inclusion(Box::new(proof)))?;
        writeln!(out)?;
    } else if let Some(path) = &args.consistency_from {
        for proof in consistency(&verified, path)? {
            serde_json::to_writer(&mut out, &ProofDocument::Consistency(proof))?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(EXIT_OK)
}

fn inclusion(verified: &Verified, record: &str) -> anyhow::Result<InclusionProof> {
    let (writer, seq) = record
        .rsplit_once(':')
        .and_then(|(w, s)| Some((w, s.parse::<u64>().ok()?)))
        .with_context(|| format!("{record:?}: expected WRITER:SEQ"))?;
    let summary = verified
        .report
        .writers
        .iter()
        .find(|w| w.writer == writer)
        .with_context(|| format!("no segment of writer {writer:?} in the sources"))?;
    let segment = verified
        .segments
        .iter()
        .filter(|s| summary.chain.contains(&s.name))
        .find(|s| (s.segment.header.first_seq..=s.segment.header.last_seq).contains(&seq))
        .with_context(|| format!("record {seq} of {writer:?} is not in the verified trail"))?;
    if !segment.segment.is_sealed() {
        bail!("record {seq} of {writer:?} is in an open segment: nothing proves it yet");
    }
    let tree = verified.tree(writer);
    let partial = tree
        .as_ref()
        .map(|(before, leaves)| PartialTree { before, leaves });
    InclusionProof::build(&segment.name, &segment.segment, seq, partial.as_ref())
        .context("the trail does not hold what the proof needs")
}

fn consistency(verified: &Verified, path: &PathBuf) -> anyhow::Result<Vec<ConsistencyProof>> {
    let mut proofs = Vec::new();
    for old in sources::checkpoints(std::slice::from_ref(path))? {
        let writer = old
            .checkpoint()?
            .writer()
            .map(str::to_string)
            .context("a checkpoint in the file is not of a PolicyBind writer")?;
        let summary = verified.report.writers.iter().find(|w| w.writer == writer);
        let Some(new) = summary.and_then(|w| w.checkpoint.as_deref()) else {
            bail!("writer {writer:?} has no signed checkpoint in the sources");
        };
        let new = SignedNote::parse(new)?;
        let (before, leaves) = verified
            .tree(&writer)
            .with_context(|| format!("writer {writer:?} has no writer tree (format 1 segments)"))?;
        let tree = PartialTree {
            before: &before,
            leaves: &leaves,
        };
        proofs.push(ConsistencyProof::build(&old, &new, &tree).with_context(|| {
            format!("cannot prove {writer:?}: the old checkpoint is beyond the trail, or its records were moved out by retention")
        })?);
    }
    Ok(proofs)
}

pub(super) async fn checkpoint(args: CheckpointArgs) -> anyhow::Result<u8> {
    let verified = match verified(&args.sources, &args.keys, args.allow_open_tail).await? {
        Ok(verified) => verified,
        Err(problem) => {
            eprintln!("refusing to checkpoint a broken trail: {problem}");
            return Ok(EXIT_BROKEN);
        }
    };
    let mut out = output(&args.output)?;
    let mut first = true;
    for writer in &verified.report.writers {
        match &writer.checkpoint {
            Some(note) => {
                if !first {
                    writeln!(out)?;
                }
                first = false;
                write!(out, "{note}")?;
            }
            None => eprintln!(
                "note: writer {:?} has no signed checkpoint (no sealed format-2 segment)",
                writer.writer
            ),
        }
    }
    out.flush()?;
    Ok(EXIT_OK)
}

/// Check proof documents; what they prove, and their problems into the report.
pub(super) fn verify_proofs(
    proofs: &[(String, ProofDocument)],
    keyring: Option<&Keyring>,
    report: &mut VerifyReport,
) -> Vec<String> {
    let mut proven = Vec::new();
    for (name, proof) in proofs {
        match proof.verify(keyring) {
            Ok(what) => proven.push(format!("{name}: {what}")),
            Err((kind, message)) => report.problems.push(Problem {
                kind,
                writer: String::new(),
                segment: Some(name.clone()),
                seq: None,
                message,
            }),
        }
    }
    proven
}
