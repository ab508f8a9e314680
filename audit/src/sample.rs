//! The decision record PolicyBind's audit benchmarks write (`policybind bench
//! audit`, the `overload_rss` example), in one place so their figures stay
//! comparable: a decision as a sidecar records it, with ids and prompt digests
//! that differ per request as they do in traffic (so compression is not
//! flattered), and one in ten a denial.

use policybind_crds::Effect;
use policybind_engine::audit::{AuditEvent, CostUsd, Usage};
use sha2::{Digest, Sha256};

/// The `n`th benchmark decision.
pub fn decision(n: u64) -> AuditEvent {
    let digest = hex::encode(Sha256::digest(n.to_be_bytes()));
    let denied = n.is_multiple_of(10);
    AuditEvent::decision(if denied { Effect::Deny } else { Effect::Allow })
        .request_id(format!(
            "{}-{}-{}-{}-{}",
            &digest[..8],
            &digest[8..12],
            &digest[12..16],
            &digest[16..20],
            &digest[20..32]
        ))
        .subject("team-payments")
        .token_id("team-payments/ci-token")
        .model("gpt-4o-mini")
        .namespace("team-payments")
        .policy_rule("team-payments/default", "allow-approved-models")
        .code(if denied { "PII_DETECTED" } else { "ALLOWED" })
        .fingerprint("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
        .prompt(&digest)
        .usage(Usage {
            input_tokens: 100 + n % 900,
            output_tokens: 96,
            cost_usd: CostUsd::from_nanos(151_400),
        })
        .detail("endpoint", "chat")
        .detail("stage", "policy")
}
