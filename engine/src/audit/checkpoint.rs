//! Checkpoints in the formats transparency-log tooling already checks:
//! C2SP [signed notes](https://c2sp.org/signed-note) whose text is a C2SP
//! [tlog checkpoint](https://c2sp.org/tlog-checkpoint).
//!
//! Each writer's records form one log (leaf `i` is the record with `seq = i + 1`,
//! hashed as in the segment trees). When a writer seals a segment it signs a
//! checkpoint of that log at the segment's last record:
//!
//! ```text
//! policybind.io/audit/sidecar/team-a/pod-1
//! 1700
//! <base64 of the RFC 6962 root over records 1..=1700>
//!
//! — policybind.io/audit/sidecar/team-a/pod-1 <base64(key id || Ed25519 signature)>
//! ```
//!
//! The origin (and key name) is [`CHECKPOINT_ORIGIN_PREFIX`] followed by the writer
//! identity; the key id is the C2SP one, `SHA-256(name || 0x0A || 0x01 || public
//! key)[:4]`. An auditor keeps the checkpoints of one review; at the next review a
//! consistency proof (or a recomputation from the records) shows the trail still
//! extends every one of them, so deleting a writer's newest segments cannot pass
//! unnoticed. Go's `golang.org/x/mod/sumdb/note` and the `transparency-dev`
//! tools read these notes as they are.
use std::fmt::Write as _;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

use super::hash::Hash256;
use super::keys::{AuditSigningKey, AuditVerifyingKey};

/// Origin of every PolicyBind checkpoint, followed by the writer identity.
pub const CHECKPOINT_ORIGIN_PREFIX: &str = "policybind.io/audit/";
/// C2SP signature type byte of Ed25519 note signatures.
const ED25519_SIGNATURE_TYPE: u8 = 0x01;
/// What starts a signature line: an em dash and a space.
const SIGNATURE_LINE_PREFIX: &str = "\u{2014} ";
/// Notes larger than this are refused unread (a checkpoint is a few hundred bytes).
const MAX_NOTE_BYTES: usize = 64 * 1024;
/// At most this many signatures per note (C2SP asks verifiers to accept 16).
const MAX_SIGNATURES: usize = 32;

/// Why a note or checkpoint cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid signed note: {0}")]
pub struct NoteError(String);

fn invalid(message: impl Into<String>) -> NoteError {
    NoteError(message.into())
}

/// The tree head of one writer's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// `policybind.io/audit/<writer>`.
    pub origin: String,
    /// Number of records in the log.
    pub size: u64,
    /// RFC 6962 root over their hashes.
    pub root: Hash256,
}

impl Checkpoint {
    /// The checkpoint of `writer`'s log at `size` records.
    pub fn for_writer(writer: &str, size: u64, root: Hash256) -> Self {
        Checkpoint {
            origin: origin_of(writer),
            size,
            root,
        }
    }

    /// The writer whose log this is, if the origin is a PolicyBind one.
    pub fn writer(&self) -> Option<&str> {
        self.origin.strip_prefix(CHECKPOINT_ORIGIN_PREFIX)
    }

    /// The note text: origin, size and base64 root, one per line.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root.as_bytes())
        )
    }

    /// Read a checkpoint from note text. Extension lines are ignored, as the
    /// specification asks; PolicyBind writes none.
    pub fn from_text(text: &str) -> Result<Self, NoteError> {
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| invalid("checkpoint text does not end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or("");
        let size = lines.next().unwrap_or("");
        let root = lines.next().unwrap_or("");
        if origin.is_empty() {
            return Err(invalid("checkpoint has no origin line"));
        }
        let size_ok = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (size == "0" || !size.starts_with('0'));
        let size: u64 =
            size.parse().ok().filter(|_| size_ok).ok_or_else(|| {
                invalid(format!("checkpoint size {size:?} is not a decimal number"))
            })?;
        let root = BASE64
            .decode(root)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| invalid("checkpoint root is not base64 of 32 bytes"))?;
        if lines.any(str::is_empty) {
            return Err(invalid("checkpoint has an empty extension line"));
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root: Hash256::from_bytes(root),
        })
    }

    /// The signed note, with one signature by `key` under the origin as key name.
    pub fn sign(&self, key: &AuditSigningKey) -> SignedNote {
        let text = self.text();
        let signature = key.sign(text.as_bytes());
        SignedNote {
            signatures: vec![NoteSignature {
                name: self.origin.clone(),
                key_id: note_key_id(&self.origin, &key.verifying_key()),
                signature: signature.to_vec(),
            }],
            text,
        }
    }
}

/// `policybind.io/audit/<writer>`.
pub fn origin_of(writer: &str) -> String {
    format!("{CHECKPOINT_ORIGIN_PREFIX}{writer}")
}

/// One signature line of a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// C2SP key id.
    pub key_id: u32,
    /// The signature bytes after the key id.
    pub signature: Vec<u8>,
}

/// A C2SP signed note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedNote {
    /// The text, including its final newline.
    pub text: String,
    /// Its signatures, in order.
    pub signatures: Vec<NoteSignature>,
}

impl SignedNote {
    /// Parse one note.
    pub fn parse(note: &str) -> Result<Self, NoteError> {
        let mut notes = parse_notes(note)?;
        match (notes.pop(), notes.is_empty()) {
            (Some(note), true) => Ok(note),
            _ => Err(invalid("expected exactly one note")),
        }
    }

    /// The note as text: the text, a blank line, one line per signature.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 128);
        out.push_str(&self.text);
        out.push('\n');
        for signature in &self.signatures {
            let mut bytes = signature.key_id.to_be_bytes().to_vec();
            bytes.extend_from_slice(&signature.signature);
            let _ = writeln!(
                out,
                "{SIGNATURE_LINE_PREFIX}{} {}",
                signature.name,
                BASE64.encode(bytes)
            );
        }
        out
    }

    /// Check the signature `key` made under `name`: `None` when the note holds no
    /// signature with that name and key id (C2SP: such signatures are ignored),
    /// else whether it verifies.
    pub fn verify(&self, name: &str, key: &AuditVerifyingKey) -> Option<bool> {
        let key_id = note_key_id(name, key);
        let signature = self
            .signatures
            .iter()
            .find(|s| s.name == name && s.key_id == key_id)?;
        let Ok(bytes) = <[u8; 64]>::try_from(signature.signature.as_slice()) else {
            return Some(false);
        };
        Some(key.verify(self.text.as_bytes(), &bytes))
    }

    /// The checkpoint the text holds.
    pub fn checkpoint(&self) -> Result<Checkpoint, NoteError> {
        Checkpoint::from_text(&self.text)
    }
}

/// The C2SP key id of an Ed25519 key under `name`:
/// `SHA-256(name || 0x0A || 0x01 || public key)[:4]`, big-endian.
pub fn note_key_id(name: &str, key: &AuditVerifyingKey) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', ED25519_SIGNATURE_TYPE]);
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The verifier key string the Go `note` package and witnesses take:
/// `<name>+<key id, 8 hex>+<base64(0x01 || public key)>`.
pub fn verifier_key(name: &str, key: &AuditVerifyingKey) -> String {
    let mut bytes = vec![ED25519_SIGNATURE_TYPE];
    bytes.extend_from_slice(key.as_bytes());
    format!(
        "{name}+{:08x}+{}",
        note_key_id(name, key),
        BASE64.encode(bytes)
    )
}

/// Parse one or more notes written one after another (optionally separated by
/// blank lines), as `policybind audit checkpoint` writes them.
pub fn parse_notes(input: &str) -> Result<Vec<SignedNote>, NoteError> {
    if input.len() > MAX_NOTE_BYTES * MAX_SIGNATURES {
        return Err(invalid("input is too large to hold checkpoints"));
    }
    if let Some(c) = input.chars().find(|&c| c.is_control() && c != '\n') {
        return Err(invalid(format!(
            "control character U+{:04X} in a note",
            c as u32
        )));
    }
    let mut notes = Vec::new();
    let mut lines = input.split_inclusive('\n').peekable();
    loop {
        while lines.peek().is_some_and(|line| *line == "\n") {
            lines.next();
        }
        if lines.peek().is_none() {
            break;
        }
        let mut text = String::new();
        loop {
            match lines.next() {
                None => return Err(invalid("note text is not followed by signatures")),
                Some("\n") => break,
                Some(line) if !line.ends_with('\n') => {
                    return Err(invalid("note does not end with a newline"));
                }
                Some(line) => text.push_str(line),
            }
        }
        let mut signatures = Vec::new();
        while let Some(line) = lines.next_if(|line| line.starts_with(SIGNATURE_LINE_PREFIX)) {
            signatures.push(parse_signature_line(line)?);
        }
        if signatures.is_empty() {
            return Err(invalid("note has no signature lines"));
        }
        if signatures.len() > MAX_SIGNATURES || text.len() > MAX_NOTE_BYTES {
            return Err(invalid("note is too large"));
        }
        notes.push(SignedNote { text, signatures });
    }
    Ok(notes)
}

fn parse_signature_line(line: &str) -> Result<NoteSignature, NoteError> {
    let line = line
        .strip_suffix('\n')
        .ok_or_else(|| invalid("signature line does not end with a newline"))?;
    let rest = &line[SIGNATURE_LINE_PREFIX.len()..];
    let (name, encoded) = rest
        .split_once(' ')
        .ok_or_else(|| invalid("signature line has no key name"))?;
    if name.is_empty() || name.contains(char::is_whitespace) || name.contains('+') {
        return Err(invalid(format!("invalid key name {name:?}")));
    }
    let bytes = BASE64
        .decode(encoded)
        .map_err(|_| invalid("signature is not base64"))?;
    if bytes.len() < 5 {
        return Err(invalid("signature is too short"));
    }
    Ok(NoteSignature {
        name: name.to_string(),
        key_id: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        signature: bytes[4..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AuditSigningKey {
        AuditSigningKey::from_seed(&[7; 32])
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint::for_writer("sidecar/team-a/pod-1", 1700, Hash256::from_bytes([9; 32]))
    }

    #[test]
    fn a_signed_checkpoint_has_the_c2sp_layout_and_verifies() {
        let note = checkpoint().sign(&key());
        let text = note.encode();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "policybind.io/audit/sidecar/team-a/pod-1");
        assert_eq!(lines[1], "1700");
        assert_eq!(lines[2], BASE64.encode([9u8; 32]));
        assert_eq!(lines[3], "");
        assert!(lines[4].starts_with("\u{2014} policybind.io/audit/sidecar/team-a/pod-1 "));
        assert_eq!(lines.len(), 5);

        let parsed = SignedNote::parse(&text).unwrap();
        assert_eq!(parsed, note);
        assert_eq!(parsed.checkpoint().unwrap(), checkpoint());
        let origin = &checkpoint().origin;
        assert_eq!(parsed.verify(origin, &key().verifying_key()), Some(true));
        let other = AuditSigningKey::from_seed(&[8; 32]).verifying_key();
        assert_eq!(parsed.verify(origin, &other), None);
    }

    #[test]
    fn a_changed_text_or_signature_does_not_verify() {
        let note = checkpoint().sign(&key());
        let origin = checkpoint().origin;
        let mut changed = note.clone();
        changed.text = changed.text.replace("1700", "1701");
        assert_eq!(changed.verify(&origin, &key().verifying_key()), Some(false));
        let mut changed = note;
        changed.signatures[0].signature[0] ^= 1;
        assert_eq!(changed.verify(&origin, &key().verifying_key()), Some(false));
    }

    /// The Ed25519 example of the Go `note` package documentation, which uses the
    /// same key id and signature layout.
    #[test]
    fn key_id_and_verifier_key_match_the_go_note_package() {
        // PeterNeumann's key from golang.org/x/mod/sumdb/note's docs:
        // PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW
        let public = BASE64
            .decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
            .unwrap();
        let key = AuditVerifyingKey::from_key_material(&public[1..]).unwrap();
        assert_eq!(note_key_id("PeterNeumann", &key), 0xc74f20a3);
        assert_eq!(
            verifier_key("PeterNeumann", &key),
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        );
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let parsed = SignedNote::parse(note).unwrap();
        assert_eq!(parsed.verify("PeterNeumann", &key), Some(true));
        // Ed25519 is deterministic: the documented private key signs the same bytes.
        // PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz
        let private = BASE64
            .decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")
            .unwrap();
        let signer = AuditSigningKey::from_seed(&private[1..].try_into().unwrap());
        assert_eq!(signer.verifying_key(), key);
        assert_eq!(
            signer.sign(parsed.text.as_bytes()).to_vec(),
            parsed.signatures[0].signature
        );
    }

    #[test]
    fn several_notes_parse_one_after_another() {
        let a = checkpoint().sign(&key()).encode();
        let b = Checkpoint::for_writer("webhook/w-1", 0, Hash256::ZERO)
            .sign(&key())
            .encode();
        let notes = parse_notes(&format!("{a}\n{b}")).unwrap();
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[1].checkpoint().unwrap().writer(), Some("webhook/w-1"));
    }

    #[test]
    fn malformed_notes_and_checkpoints_are_refused() {
        for bad in [
            "",
            "no signatures\n\n",
            "text\n\n\u{2014} name !!!\n",
            "text\n\n\u{2014} na+me AAAAAAA=\n",
            "text\u{1}\n\n\u{2014} name AAAAAAA=\n",
        ] {
            assert!(SignedNote::parse(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "origin\n01\nAAAA\n",
            "origin\n1\nnot-base64\n",
            "\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
            "origin\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ] {
            assert!(Checkpoint::from_text(bad).is_err(), "{bad:?}");
        }
    }
}
