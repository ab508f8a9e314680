//! How a [`Bundle`] is stored in ConfigMaps, and the limits a reader holds it to.
//!
//! One bundle per enforced namespace, kept in PolicyBind's own namespace where
//! workloads cannot write (names in [`policybind_crds::wire::bundle_part`]). Small
//! bundles are plain JSON under `data["bundle.json"]` (readable with `kubectl get
//! -o yaml`); bundles above the compression threshold are gzip under
//! `binaryData["bundle.json.gz"]`; a compressed bundle still above the part limit
//! is cut into parts. Every part carries the fingerprint annotation and the part
//! count, so a reader can tell a complete set from a half-written one (mixed
//! fingerprints mean "wait for the next event"; the last good set stays).
//!
//! [`decode`] never trusts what it reads: the part count and the decompressed
//! size are capped ([`DecodeLimits`]). Gzip parts are parsed as they are
//! decompressed, so a gzip bomb is refused after decompressing at most the limit
//! and without ever holding it in memory; an oversized plain part is refused by
//! its length.

use std::io::{Read, Write};

use policybind_crds::wire::MAX_BUNDLE_PARTS;

use crate::bundle::Bundle;

/// Default size of one part: well under the 1 MiB object limit, leaving room for
/// metadata and base64 growth of binaryData (4/3) in the stored object.
pub const DEFAULT_MAX_PART_BYTES: usize = 700 * 1024;
/// Plain JSON up to this size; gzip above.
pub const COMPRESS_ABOVE_BYTES: usize = 256 * 1024;
/// Default cap on a bundle's JSON once decompressed: 64 MiB, about 25 times the
/// JSON of 10,000 tokens and 1,000 policies.
pub const DEFAULT_MAX_JSON_BYTES: usize = 64 * 1024 * 1024;

/// One part of an encoded bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundlePart {
    /// `data["bundle.json"]`.
    Plain(String),
    /// `binaryData["bundle.json.gz"]`: the whole gzip stream, or one slice of it.
    Gzip(Vec<u8>),
}

impl BundlePart {
    /// Bytes stored for this part.
    pub fn len(&self) -> usize {
        match self {
            BundlePart::Plain(json) => json.len(),
            BundlePart::Gzip(bytes) => bytes.len(),
        }
    }

    /// Whether the part stores nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A bundle ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBundle {
    pub fingerprint: String,
    /// In order; part `n` goes to `wire::bundle_part(namespace, n)`.
    pub parts: Vec<BundlePart>,
    /// Size of the bundle's JSON before compression.
    pub json_bytes: usize,
}

impl EncodedBundle {
    /// Whether a reader holding `limits` accepts this bundle. The operator checks
    /// before writing, so it never publishes a bundle every sidecar would refuse.
    pub fn fits(&self, limits: &DecodeLimits) -> Result<(), DecodeError> {
        if self.parts.len() > limits.max_parts {
            return Err(DecodeError::TooManyParts {
                count: self.parts.len(),
                max: limits.max_parts,
            });
        }
        if self.json_bytes > limits.max_json_bytes {
            return Err(DecodeError::TooLarge {
                max: limits.max_json_bytes,
            });
        }
        Ok(())
    }
}

/// What a reader accepts. Defaults: [`MAX_BUNDLE_PARTS`] parts, JSON of at most
/// [`DEFAULT_MAX_JSON_BYTES`] once decompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_parts: usize,
    pub max_json_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_parts: MAX_BUNDLE_PARTS,
            max_json_bytes: DEFAULT_MAX_JSON_BYTES,
        }
    }
}

/// Why stored parts could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("no bundle parts")]
    Empty,
    #[error("the bundle has {count} parts; at most {max} are accepted")]
    TooManyParts { count: usize, max: usize },
    #[error("bundle parts mix plain and gzip content")]
    Mixed,
    #[error("the bundle's JSON is larger than the {max} bytes accepted")]
    TooLarge { max: usize },
    #[error("bundle is not valid gzip: {0}")]
    Gzip(#[source] std::io::Error),
    #[error("bundle JSON is invalid: {0}")]
    Json(#[source] serde_json::Error),
}

impl DecodeError {
    /// Short, stable label for metrics (`reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooManyParts { .. } => "too_many_parts",
            DecodeError::Mixed => "mixed_parts",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Gzip(_) => "gzip",
            DecodeError::Json(_) => "json",
        }
    }
}

/// Encodes a bundle, compressing and splitting as needed.
pub fn encode(bundle: &Bundle, max_part_bytes: usize) -> EncodedBundle {
    let mut bundle = bundle.clone();
    bundle.normalize();
    let fingerprint = bundle.fingerprint();
    let json = serde_json::to_string(&bundle).expect("a bundle always serializes");
    let json_bytes = json.len();
    if json_bytes <= COMPRESS_ABOVE_BYTES.min(max_part_bytes) {
        return EncodedBundle {
            fingerprint,
            parts: vec![BundlePart::Plain(json)],
            json_bytes,
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
    EncodedBundle {
        fingerprint,
        parts,
        json_bytes,
    }
}

/// Reads several byte slices as one stream, so gzip parts are never copied into
/// one buffer first.
struct Concatenated<'a> {
    parts: std::slice::Iter<'a, &'a [u8]>,
    current: &'a [u8],
}

impl Read for Concatenated<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if !self.current.is_empty() {
                return self.current.read(buf);
            }
            match self.parts.next() {
                Some(next) => self.current = next,
                None => return Ok(0),
            }
        }
    }
}

/// Decodes parts (in order) back into a bundle, within `limits`.
pub fn decode(parts: &[BundlePart], limits: &DecodeLimits) -> Result<Bundle, DecodeError> {
    if parts.len() > limits.max_parts {
        return Err(DecodeError::TooManyParts {
            count: parts.len(),
            max: limits.max_parts,
        });
    }
    match parts {
        [] => Err(DecodeError::Empty),
        [BundlePart::Plain(json)] => {
            if json.len() > limits.max_json_bytes {
                return Err(DecodeError::TooLarge {
                    max: limits.max_json_bytes,
                });
            }
            serde_json::from_str(json).map_err(DecodeError::Json)
        }
        _ => {
            let slices = parts
                .iter()
                .map(|part| match part {
                    BundlePart::Gzip(bytes) => Ok(bytes.as_slice()),
                    BundlePart::Plain(_) => Err(DecodeError::Mixed),
                })
                .collect::<Result<Vec<&[u8]>, _>>()?;
            let stream = Concatenated {
                parts: slices.iter(),
                current: &[],
            };
            // Parsed as it is decompressed, so no copy of the JSON is ever held;
            // one byte past the limit tells "exactly at the limit" from "more".
            let mut counted = Counted {
                inner: flate2::read::GzDecoder::new(stream)
                    .take(limits.max_json_bytes.saturating_add(1) as u64),
                read: 0,
            };
            let parsed =
                serde_json::from_reader(std::io::BufReader::with_capacity(64 * 1024, &mut counted));
            if counted.read > limits.max_json_bytes {
                return Err(DecodeError::TooLarge {
                    max: limits.max_json_bytes,
                });
            }
            parsed.map_err(|error| match error.io_error_kind() {
                Some(kind) => DecodeError::Gzip(std::io::Error::new(kind, error)),
                None => DecodeError::Json(error),
            })
        }
    }
}

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    read: usize,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n;
        Ok(n)
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
                labels: Default::default(),
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
                exhausted_cost_only: false,
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
        assert_eq!(decode(&e.parts, &DecodeLimits::default()).unwrap(), {
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
        let back = decode(&e.parts, &DecodeLimits::default()).unwrap();
        assert_eq!(back.fingerprint(), b.fingerprint());
    }

    #[test]
    fn missing_part_is_an_error_not_a_partial_bundle() {
        let b = bundle_with_tokens(5000);
        let e = encode(&b, 64 * 1024);
        let limits = DecodeLimits::default();
        assert!(decode(&e.parts[..e.parts.len() - 1], &limits).is_err());
        assert!(matches!(decode(&[], &limits), Err(DecodeError::Empty)));
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn a_gzip_bomb_is_refused_after_reading_at_most_the_limit() {
        // 32 MiB of spaces compress to about 32 KiB: one small part that would
        // expand 32 times past the limit.
        let bomb = gzip(&vec![b' '; 32 * 1024 * 1024]);
        assert!(bomb.len() < DEFAULT_MAX_PART_BYTES);
        let limits = DecodeLimits {
            max_json_bytes: 1024 * 1024,
            ..DecodeLimits::default()
        };
        let error = decode(&[BundlePart::Gzip(bomb)], &limits).unwrap_err();
        assert!(
            matches!(error, DecodeError::TooLarge { max } if max == 1024 * 1024),
            "{error}"
        );
        assert_eq!(error.reason(), "too_large");
    }

    #[test]
    fn json_exactly_at_the_limit_is_accepted_and_one_byte_more_is_not() {
        let json = serde_json::to_string(&Bundle::default()).unwrap();
        let exact = DecodeLimits {
            max_json_bytes: json.len(),
            ..DecodeLimits::default()
        };
        assert!(decode(&[BundlePart::Gzip(gzip(json.as_bytes()))], &exact).is_ok());
        assert!(decode(&[BundlePart::Plain(json.clone())], &exact).is_ok());
        let short = DecodeLimits {
            max_json_bytes: json.len() - 1,
            ..DecodeLimits::default()
        };
        assert_eq!(
            decode(&[BundlePart::Plain(json.clone())], &short)
                .unwrap_err()
                .reason(),
            "too_large"
        );
        assert_eq!(
            decode(&[BundlePart::Gzip(gzip(json.as_bytes()))], &short)
                .unwrap_err()
                .reason(),
            "too_large"
        );
    }

    #[test]
    fn corrupt_gzip_and_invalid_json_are_told_apart() {
        let limits = DecodeLimits::default();
        let not_gzip = decode(&[BundlePart::Gzip(vec![1, 2, 3])], &limits).unwrap_err();
        assert_eq!(not_gzip.reason(), "gzip");
        let not_json = decode(&[BundlePart::Gzip(gzip(b"{not json"))], &limits).unwrap_err();
        assert_eq!(not_json.reason(), "json");
    }

    #[test]
    fn more_parts_than_allowed_are_refused_before_any_is_read() {
        let parts = vec![BundlePart::Gzip(vec![0xff]); MAX_BUNDLE_PARTS + 1];
        let error = decode(&parts, &DecodeLimits::default()).unwrap_err();
        assert!(matches!(error, DecodeError::TooManyParts { count, max }
            if count == MAX_BUNDLE_PARTS + 1 && max == MAX_BUNDLE_PARTS));
        assert_eq!(
            decode(
                &[BundlePart::Gzip(vec![1]), BundlePart::Plain("{}".into())],
                &DecodeLimits::default()
            )
            .unwrap_err()
            .reason(),
            "mixed_parts"
        );
    }

    #[test]
    fn the_encoder_says_when_a_bundle_would_be_refused() {
        let b = bundle_with_tokens(5000);
        let e = encode(&b, 16 * 1024);
        assert!(e.parts.len() > 4);
        assert!(e.fits(&DecodeLimits::default()).is_ok());
        let few = DecodeLimits {
            max_parts: 4,
            ..DecodeLimits::default()
        };
        assert_eq!(e.fits(&few).unwrap_err().reason(), "too_many_parts");
        let small = DecodeLimits {
            max_json_bytes: e.json_bytes - 1,
            ..DecodeLimits::default()
        };
        assert_eq!(e.fits(&small).unwrap_err().reason(), "too_large");
    }
}
