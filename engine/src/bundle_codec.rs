//! How a [`Bundle`] is stored in ConfigMaps.
//!
//! One ConfigMap, `policybind-bundle`, per enforced namespace. Small bundles are
//! plain JSON under `data["bundle.json"]` (readable with `kubectl get -o yaml`);
//! bundles above the compression threshold are gzip under
//! `binaryData["bundle.json.gz"]`; a compressed bundle still above the part limit
//! is cut into parts, the first in `policybind-bundle` and the rest in
//! `policybind-bundle-1`, `-2`, ... Every part carries the fingerprint annotation
//! and the part count, so a reader can tell a complete set from a half-written one
//! (mixed fingerprints mean "wait for the next event"; the last good set stays).

use std::io::{Read, Write};

use crate::bundle::Bundle;

/// Name of the first (often only) bundle ConfigMap in a namespace.
pub const BUNDLE_CONFIGMAP: &str = "policybind-bundle";
/// Default size of one part: well under the 1 MiB object limit, leaving room for
/// metadata and base64 growth of binaryData (4/3) in the stored object.
pub const DEFAULT_MAX_PART_BYTES: usize = 700 * 1024;
/// Plain JSON up to this size; gzip above.
pub const COMPRESS_ABOVE_BYTES: usize = 256 * 1024;

/// One part of an encoded bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundlePart {
    /// `data["bundle.json"]`.
    Plain(String),
    /// `binaryData["bundle.json.gz"]`: the whole gzip stream, or one slice of it.
    Gzip(Vec<u8>),
}

/// A bundle ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBundle {
    pub fingerprint: String,
    /// In order; part 0 goes to [`BUNDLE_CONFIGMAP`], part n to [`part_name`]`(n)`.
    pub parts: Vec<BundlePart>,
}

/// Name of the ConfigMap holding part `index`.
pub fn part_name(index: usize) -> String {
    if index == 0 {
        BUNDLE_CONFIGMAP.to_string()
    } else {
        format!("{BUNDLE_CONFIGMAP}-{index}")
    }
}

/// Why stored parts could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("no bundle parts")]
    Empty,
    #[error("bundle parts mix plain and gzip content")]
    Mixed,
    #[error("bundle is not valid gzip: {0}")]
    Gzip(#[source] std::io::Error),
    #[error("bundle JSON is invalid: {0}")]
    Json(#[source] serde_json::Error),
}

/// Encodes a bundle, compressing and splitting as needed.
pub fn encode(bundle: &Bundle, max_part_bytes: usize) -> EncodedBundle {
    let mut bundle = bundle.clone();
    bundle.normalize();
    let fingerprint = bundle.fingerprint();
    let json = serde_json::to_string(&bundle).expect("a bundle always serializes");
    if json.len() <= COMPRESS_ABOVE_BYTES.min(max_part_bytes) {
        return EncodedBundle {
            fingerprint,
            parts: vec![BundlePart::Plain(json)],
        };
    }
    // The fast level: about ten times quicker than the default on a 10,000-token
    // bundle for 2% more bytes, and bundles are rebuilt on every relevant change.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(json.as_bytes())
        .expect("writing to a Vec cannot fail");
    let gz = encoder.finish().expect("writing to a Vec cannot fail");
    let parts = gz
        .chunks(max_part_bytes.max(1))
        .map(|c| BundlePart::Gzip(c.to_vec()))
        .collect();
    EncodedBundle { fingerprint, parts }
}

/// Decodes parts (in order) back into a bundle.
pub fn decode(parts: &[BundlePart]) -> Result<Bundle, DecodeError> {
    match parts {
        [] => Err(DecodeError::Empty),
        [BundlePart::Plain(json)] => serde_json::from_str(json).map_err(DecodeError::Json),
        _ => {
            let mut gz = Vec::new();
            for part in parts {
                match part {
                    BundlePart::Gzip(bytes) => gz.extend_from_slice(bytes),
                    BundlePart::Plain(_) => return Err(DecodeError::Mixed),
                }
            }
            let mut json = Vec::new();
            flate2::read::GzDecoder::new(gz.as_slice())
                .read_to_end(&mut json)
                .map_err(DecodeError::Gzip)?;
            serde_json::from_slice(&json).map_err(DecodeError::Json)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{BundleToken, TokenHash};
    use policybind_crds::access_token::{SubjectKind, TokenSubject};
    use policybind_crds::{AccessTokenSpec, DataClassification};

    fn bundle_with_tokens(n: usize) -> Bundle {
        let tokens = (0..n)
            .map(|i| BundleToken {
                namespace: "team-a".into(),
                name: format!("token-{i}"),
                spec: AccessTokenSpec {
                    subject: TokenSubject {
                        kind: SubjectKind::User,
                        name: format!("user-{i}"),
                    },
                    team: "a".into(),
                    allowed_models: vec!["gpt-4o".into()],
                    allowed_use_cases: vec![],
                    default_use_case: None,
                    max_data_classification: DataClassification::Internal,
                    default_data_classification: None,
                    budgets: vec![],
                    rate_limit: None,
                    schedule: None,
                    not_before: None,
                    expires_at: None,
                    revoked: false,
                    secret_name: None,
                    rotation_grace_seconds: None,
                    additional_namespaces: vec![],
                },
                hashes: vec![TokenHash {
                    sha256: crate::hash_token(&format!("secret-{i}")),
                    valid_until: None,
                }],
                exhausted: false,
            })
            .collect();
        Bundle {
            tokens,
            ..Default::default()
        }
    }

    #[test]
    fn small_bundle_is_plain_json() {
        let b = bundle_with_tokens(2);
        let e = encode(&b, DEFAULT_MAX_PART_BYTES);
        assert!(matches!(e.parts.as_slice(), [BundlePart::Plain(_)]));
        assert_eq!(decode(&e.parts).unwrap(), {
            let mut n = b.clone();
            n.normalize();
            n
        });
        assert_eq!(e.fingerprint, b.fingerprint());
    }

    #[test]
    fn large_bundle_is_compressed_and_split_and_round_trips() {
        let b = bundle_with_tokens(5000);
        let e = encode(&b, 64 * 1024);
        assert!(e.parts.len() > 1, "expected several parts");
        assert!(e.parts.iter().all(|p| matches!(p, BundlePart::Gzip(_))));
        let back = decode(&e.parts).unwrap();
        assert_eq!(back.fingerprint(), b.fingerprint());
    }

    #[test]
    fn missing_part_is_an_error_not_a_partial_bundle() {
        let b = bundle_with_tokens(5000);
        let e = encode(&b, 64 * 1024);
        assert!(decode(&e.parts[..e.parts.len() - 1]).is_err());
        assert!(matches!(decode(&[]), Err(DecodeError::Empty)));
    }
}
