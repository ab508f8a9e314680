//! Token estimates: how many tokens a text costs a model, before the call.
//!
//! Budgets and token rate limits are reserved before a call is made, so the
//! enforcement point needs the prompt's size in the model's own tokens. Where
//! the model family's tokenizer is public it is used, exactly:
//!
//! | models | encoding |
//! |---|---|
//! | `gpt-4o*`, `chatgpt-4o*`, `gpt-4.1*`, `gpt-4.5*`, `gpt-5*`, `o1*`, `o3*`, `o4*`, `gpt-oss*`, `codex-mini*` | `o200k_base` |
//! | `gpt-4`, `gpt-4-*` (turbo, 32k), `gpt-3.5*`, `gpt-35-turbo*`, `text-embedding-3-*`, `text-embedding-ada-002` | `cl100k_base` |
//!
//! (`tiktoken-rs`'s model table, which follows OpenAI's; a provider prefix
//! such as `openai/` or `azure/` and a fine-tune's `ft:` prefix are looked
//! through. Older GPT-3 models map to `cl100k_base` too: a slight overcount.)
//!
//! Every other family gets a documented heuristic, [`Method::Heuristic`]:
//! one token per [`CHARS_PER_TOKEN`] ASCII characters (3.5 for Anthropic's
//! Claude models, 4 otherwise) plus one per non-ASCII character. Anthropic
//! publishes no tokenizer for its current models (only a token-counting API
//! call, which an enforcement point cannot make per request), so Claude
//! estimates are approximate; the settled usage the provider reports after
//! the call corrects the budget. Self-hosted models (Llama, Mistral, ...)
//! use SentencePiece or tiktoken-like vocabularies that the heuristic
//! approximates.
//!
//! The encoders are built once per process, on first use or by [`prepare`]
//! (0.1-0.6 s and tens of MiB for `o200k_base`); counting is then a BPE pass
//! over the text, tens of microseconds per KiB (see `engine/benches/tokens.rs`),
//! against a few microseconds for the heuristic.

use tiktoken_rs::CoreBPE;
use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

/// Characters per token of the heuristic, for families without a public
/// tokenizer: `(model name prefix, ASCII characters per token)`; the last
/// entry is the default.
pub const CHARS_PER_TOKEN: &[(&str, f64)] = &[("claude", 3.5), ("", 4.0)];

/// A BPE encoding a model family publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    O200kBase,
    Cl100kBase,
}

/// How a model's tokens are estimated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// The family's own encoding, exact for the text counted.
    Exact(Encoding),
    /// No public tokenizer: ASCII characters per token.
    Heuristic { chars_per_token: f64 },
}

impl Encoding {
    fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }
}

/// How tokens of `model` (as named in a request or a ModelDeployment) are
/// estimated.
pub fn method(model: &str) -> Method {
    let name = model.trim().to_ascii_lowercase();
    // `openai/gpt-4o`, `azure/gpt-35-turbo`: the part after the provider.
    let name = name.rsplit('/').next().unwrap_or(&name);
    let encoding = get_tokenizer(name).map(|tokenizer| match tokenizer {
        Tokenizer::O200kBase | Tokenizer::O200kHarmony => Encoding::O200kBase,
        _ => Encoding::Cl100kBase,
    });
    match encoding {
        Some(encoding) => Method::Exact(encoding),
        None => heuristic_of(name),
    }
}

/// The heuristic for `model` even where its family's encoding is public: for
/// enforcement points that keep no encoder in memory (an `o200k_base`
/// encoder is about 46 MiB, `cl100k_base` about 24 MiB more).
pub fn heuristic(model: &str) -> Method {
    let name = model.trim().to_ascii_lowercase();
    heuristic_of(name.rsplit('/').next().unwrap_or(&name))
}

fn heuristic_of(name: &str) -> Method {
    let chars_per_token = CHARS_PER_TOKEN
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map_or(4.0, |&(_, ratio)| ratio);
    Method::Heuristic { chars_per_token }
}

/// Estimated tokens of `text` for `model`: exact where the family's encoding
/// is public, the heuristic otherwise (see the module docs). Special-token
/// strings in the text (`<|endoftext|>`) count as ordinary text, as a
/// provider counts user content.
pub fn estimate(model: &str, text: &str) -> u64 {
    count(method(model), text)
}

/// Builds the encoder `model` needs now rather than on its first estimate,
/// so that no request pays for it (0.1-0.6 s for `o200k_base`): an
/// enforcement point calls it for its models when it starts. Nothing to do
/// for families estimated by the heuristic.
pub fn prepare(model: &str) {
    if let Method::Exact(encoding) = method(model) {
        encoding.bpe();
    }
}

/// Tokens of `text` under `method`.
pub fn count(method: Method, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match method {
        Method::Exact(encoding) => encoding.bpe().encode_ordinary(text).len() as u64,
        Method::Heuristic { chars_per_token } => {
            let ascii = text.bytes().filter(u8::is_ascii).count();
            let other = text.chars().filter(|c| !c.is_ascii()).count();
            (ascii as f64 / chars_per_token).ceil() as u64 + other as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_families_get_their_own_encoding() {
        for model in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4o-2024-08-06",
            "chatgpt-4o-latest",
            "gpt-4.1",
            "gpt-4.1-nano",
            "o1",
            "o3-mini",
            "o4-mini",
            "gpt-5",
            "openai/gpt-4o",
            "ft:gpt-4o-mini:acme::abc123",
        ] {
            assert_eq!(method(model), Method::Exact(Encoding::O200kBase), "{model}");
        }
        for model in [
            "gpt-4",
            "gpt-4-turbo",
            "gpt-4-32k",
            "gpt-3.5-turbo",
            "gpt-35-turbo",
            "azure/gpt-35-turbo",
            "text-embedding-3-small",
        ] {
            assert_eq!(
                method(model),
                Method::Exact(Encoding::Cl100kBase),
                "{model}"
            );
        }
    }

    #[test]
    fn the_heuristic_is_available_for_every_family() {
        assert_eq!(
            heuristic("openai/gpt-4o"),
            Method::Heuristic {
                chars_per_token: 4.0
            }
        );
        assert_eq!(
            heuristic("anthropic/claude-sonnet-4"),
            Method::Heuristic {
                chars_per_token: 3.5
            }
        );
        // 40 ASCII characters: 10 tokens at 4 per token, whatever the encoding says.
        assert_eq!(count(heuristic("gpt-4o"), &"abcd".repeat(10)), 10);
    }

    #[test]
    fn families_without_a_public_tokenizer_get_the_heuristic() {
        assert_eq!(
            method("claude-sonnet-4"),
            Method::Heuristic {
                chars_per_token: 3.5
            }
        );
        assert_eq!(
            method("anthropic/claude-3-5-haiku"),
            Method::Heuristic {
                chars_per_token: 3.5
            }
        );
        assert_eq!(
            method("llama-3.1-70b-instruct"),
            Method::Heuristic {
                chars_per_token: 4.0
            }
        );
    }

    #[test]
    fn counts_are_the_encodings_own() {
        // Reference counts from OpenAI's tiktoken for these encodings.
        assert_eq!(estimate("gpt-4o", "hello world"), 2);
        assert_eq!(estimate("gpt-4", "hello world"), 2);
        assert_eq!(estimate("gpt-4o", ""), 0);
        assert_eq!(
            estimate("gpt-4", "tiktoken is great!"),
            6,
            "cl100k_base splits it into tik|token| is| great|!"
        );
        // Special-token text is ordinary text here: several tokens, not one.
        assert!(estimate("gpt-4o", "<|endoftext|>") > 1);
    }

    #[test]
    fn the_heuristic_counts_ascii_by_ratio_and_other_characters_one_each() {
        assert_eq!(estimate("claude-sonnet-4", "abcdefg"), 2);
        assert_eq!(estimate("llama", "abcdefgh"), 2);
        assert_eq!(estimate("llama", "abcdefghi"), 3);
        assert_eq!(estimate("llama", "日本語"), 3);
        assert_eq!(estimate("mistral-large", ""), 0);
    }
}
