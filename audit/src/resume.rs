//! Where a starting writer's chain continues, decided so that it never signs
//! records it did not write.
//!
//! A writer that stopped (cleanly or not) left segments in the store, and so may
//! anyone who can write there. At start the writer looks at its segments from
//! the newest down and adopts the first one it can *prove* is its own: a sealed
//! segment, or an open one whose last flush it signed, that verifies on its own
//! (records, hashes, roots, checkpoint) with its own key or a key the keyring
//! binds to it. An adopted open segment is sealed (the writer signed those very
//! records before its restart) and the writer records `writer-recovered`.
//!
//! Every newer segment it cannot prove (unsigned, signed by another key, edited,
//! unreadable) is **refused**: it is left in place as evidence, its name is
//! never reused, and a `segment-refused` lifecycle record names it, the
//! sequences it claims and why. The writer's chain then continues after the
//! adopted segment: that is the new link, and the refused segment's records are
//! the gap it records. If nothing can be adopted, the chain starts again at 1.
use std::collections::BTreeSet;

use policybind_engine::audit::{
    AuditEvent, Chain, Hash256, Keyring, NamedSegment, Segment, TreeFrontier, VerifyOptions,
    verify_segments,
};

use crate::Error;
use crate::store::SegmentStore;
use crate::writer::AuditConfig;

/// How many of its newest segments a starting writer examines before giving
/// up and starting a new chain; bounds the work segments planted in bulk can
/// cause.
pub const MAX_RESUME_CANDIDATES: usize = 16;

/// A segment the writer would not adopt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub name: String,
    /// The sequences it claims, when it could be parsed.
    pub claims: Option<(u64, u64)>,
    pub reason: String,
}

/// Where the chain continues.
pub(crate) struct Resumed {
    pub chain: Chain,
    pub prev_segment_hash: Hash256,
    /// The writer's tree so far; `None` when it resumes a format-1 chain, whose
    /// tree it does not know (it then keeps writing format 1).
    pub tree: Option<TreeFrontier>,
    /// An open segment of its own to seal and write first.
    pub adopted_open: Option<(String, Segment)>,
    pub refused: Vec<Refused>,
    /// Names the writer must not write to (refused segments stay as evidence).
    pub taken: BTreeSet<String>,
}

impl Resumed {
    /// The lifecycle records that tell the trail what happened at start.
    pub fn lifecycle_events(&self) -> Vec<AuditEvent> {
        let mut events: Vec<AuditEvent> = self
            .refused
            .iter()
            .map(|refused| {
                let mut event = AuditEvent::lifecycle("segment-refused")
                    .detail("segment", refused.name.clone())
                    .detail("reason", refused.reason.clone())
                    .detail("resumed_after_seq", self.chain.last_seq().to_string());
                if let Some((first, last)) = refused.claims {
                    event = event
                        .detail("claimed_first_seq", first.to_string())
                        .detail("claimed_last_seq", last.to_string());
                }
                event
            })
            .collect();
        if let Some((_, open)) = &self.adopted_open {
            events.push(
                AuditEvent::lifecycle("writer-recovered")
                    .detail("previous_shutdown", "unclean")
                    .detail("resumed_after_seq", open.header.last_seq.to_string()),
            );
        }
        events
    }
}

/// Find where `config.writer`'s chain continues in `store`.
pub(crate) async fn resume(
    store: &dyn SegmentStore,
    config: &AuditConfig,
) -> Result<Resumed, Error> {
    let names = store.names(&config.writer).await?;
    let keyring = own_keyring(config);
    let mut refused = Vec::new();
    for name in names.iter().rev().take(MAX_RESUME_CANDIDATES) {
        let Some(raw) = store.get(name).await? else {
            continue; // deleted meanwhile (retention)
        };
        match adoptable(name, raw.json, &config.writer, &keyring) {
            Ok(segment) => return Ok(adopt(name, segment, refused)),
            Err((claims, reason)) => refused.push(Refused {
                name: name.clone(),
                claims,
                reason,
            }),
        }
    }
    if !refused.is_empty() {
        tracing::warn!(
            writer = %config.writer,
            refused = refused.len(),
            "no segment of this writer could be proven its own; starting a new chain at seq 1"
        );
    }
    Ok(Resumed {
        chain: Chain::new(config.writer.clone()),
        prev_segment_hash: Hash256::ZERO,
        tree: Some(TreeFrontier::new()),
        adopted_open: None,
        taken: refused.iter().map(|r| r.name.clone()).collect(),
        refused,
    })
}

/// The writer's own key (bound to it alone: the segment's writer is checked
/// first) and the keyring's keys for it.
fn own_keyring(config: &AuditConfig) -> Keyring {
    let own = Keyring::single(config.signing_key.verifying_key(), vec!["**".into()])
        .expect("`**` is a valid pattern");
    match &config.keyring {
        Some(keyring) => own.merge(keyring.clone()),
        None => own,
    }
}

type NotAdoptable = (Option<(u64, u64)>, String);

/// The segment, if the writer can prove it wrote it.
fn adoptable(
    name: &str,
    json: Result<Vec<u8>, String>,
    writer: &str,
    keyring: &Keyring,
) -> Result<Segment, NotAdoptable> {
    let json = json.map_err(|e| (None, format!("unreadable: {e}")))?;
    let segment: Segment =
        serde_json::from_slice(&json).map_err(|e| (None, format!("unreadable: {e}")))?;
    let claims = Some((segment.header.first_seq, segment.header.last_seq));
    if segment.header.writer != writer {
        return Err((
            claims,
            format!("belongs to writer {:?}", segment.header.writer),
        ));
    }
    let named = [NamedSegment {
        name: name.to_string(),
        segment,
    }];
    let options = VerifyOptions {
        keyring: Some(keyring.clone()),
        allow_open_tail: true,
        ..VerifyOptions::default()
    };
    let report = verify_segments(&named, &options);
    if let Some(problem) = report.first_problem() {
        return Err((claims, format!("{}: {}", problem.kind, problem.message)));
    }
    let unsigned_tail = report
        .writers
        .first()
        .and_then(|w| w.unproven.as_ref())
        .is_some_and(|tail| tail.flush_signed_by.is_none());
    if unsigned_tail {
        return Err((
            claims,
            "open segment is not signed: nothing shows this writer wrote its records".into(),
        ));
    }
    let [named] = named;
    Ok(named.segment)
}

fn adopt(name: &str, segment: Segment, refused: Vec<Refused>) -> Resumed {
    let header = &segment.header;
    let chain = Chain::resume(header.writer.clone(), header.last_seq, header.last_hash);
    let tree = segment
        .frontier_before()
        .and_then(Result::ok)
        .map(|mut tree| {
            for record in &segment.records {
                tree.push_record(&record.hash);
            }
            tree
        });
    let prev_segment_hash = header.last_hash;
    let adopted_open = (!segment.is_sealed()).then(|| (name.to_string(), segment));
    Resumed {
        chain,
        prev_segment_hash,
        tree,
        adopted_open,
        taken: refused.iter().map(|r| r.name.clone()).collect(),
        refused,
    }
}
