//! Deterministic English-like prose for the benches: sentences with the odd
//! number, date or version in them and roughly one piece of PII or one secret
//! per kilobyte, so every run measures the same bytes.
#![allow(dead_code)]

pub const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "it",
    "you",
    "that",
    "he",
    "was",
    "for",
    "on",
    "are",
    "with",
    "as",
    "his",
    "they",
    "be",
    "at",
    "one",
    "have",
    "this",
    "from",
    "or",
    "had",
    "by",
    "word",
    "but",
    "what",
    "some",
    "we",
    "can",
    "out",
    "other",
    "were",
    "all",
    "there",
    "when",
    "up",
    "use",
    "your",
    "how",
    "said",
    "an",
    "each",
    "she",
    "which",
    "do",
    "their",
    "time",
    "if",
    "will",
    "way",
    "about",
    "many",
    "then",
    "them",
    "write",
    "would",
    "like",
    "so",
    "these",
    "her",
    "long",
    "make",
    "thing",
    "see",
    "him",
    "two",
    "has",
    "look",
    "more",
    "day",
    "could",
    "go",
    "come",
    "did",
    "number",
    "sound",
    "no",
    "most",
    "people",
    "my",
    "over",
    "know",
    "water",
    "than",
    "call",
    "first",
    "who",
    "may",
    "down",
    "side",
    "been",
    "now",
    "find",
    "customer",
    "account",
    "please",
    "summarize",
    "report",
    "quarterly",
    "revenue",
    "model",
    "deployment",
    "team",
    "policy",
    "request",
    "review",
    "draft",
    "email",
    "meeting",
    "schedule",
    "budget",
    "analysis",
    "feedback",
    "product",
    "launch",
    "decade",
    "facade",
    "accessed",
    "beef",
    "cafe",
    "deaf",
    "faced",
    "added",
    "bead",
    "database",
    "feature",
    "Kubernetes",
    "cluster",
    "latency",
    "throughput",
    "contract",
    "invoice",
    "payment",
    "follow-up",
    "state-of-the-art",
    "well-known",
    "e-mail",
    "API",
    "AI",
    "Amsterdam",
    "Note:",
    "re:",
    "i.e.",
    "e.g.",
    "user_id",
    "Jones",
    "April",
    "snake_case",
];

pub const PII: &[&str] = &[
    "jane.doe@example.com",
    "+44 20 7946 0958",
    "(415) 555-2671",
    "078-05-1120",
    "4111 1111 1111 1111",
    "GB82 WEST 1234 5698 7654 32",
    "192.168.10.24",
    "2001:db8::8a2e:370:7334",
    "AKIAIOSFODNN7EXAMPLE",
    "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",
    // Shapes that look like PII but are not: they exercise validation.
    "4111 1111 1111 1112",
    "256.1.1.1",
];

/// A small deterministic generator (SplitMix64); the bench must not depend
/// on a random-number crate or on the run.
pub struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

pub fn prose(len: usize) -> String {
    let mut rng = SplitMix(0x5EED);
    let mut text = String::with_capacity(len + 64);
    let mut next_pii = 600 + rng.below(800);
    while text.len() < len {
        let words = 8 + rng.below(14);
        for i in 0..words {
            let word = WORDS[rng.below(WORDS.len())];
            if i == 0 {
                let mut chars = word.chars();
                if let Some(first) = chars.next() {
                    text.extend(first.to_uppercase());
                    text.push_str(chars.as_str());
                }
            } else {
                text.push(' ');
                // About one word in forty is a number: a year, a percentage,
                // a version or a time of day.
                match rng.below(200) {
                    0..=1 => text.push_str(&format!("{}", 1990 + rng.below(40))),
                    2 => text.push_str(&format!("{}%", rng.below(100))),
                    3 => text.push_str(&format!(
                        "v{}.{}.{}",
                        rng.below(4),
                        rng.below(20),
                        rng.below(10)
                    )),
                    4 => text.push_str(&format!("{}:{:02}", 1 + rng.below(12), rng.below(60))),
                    _ => text.push_str(word),
                }
            }
            if text.len() >= next_pii {
                text.push(' ');
                text.push_str(PII[rng.below(PII.len())]);
                next_pii = text.len() + 600 + rng.below(800);
            }
        }
        text.push_str(if rng.below(5) == 0 { "?\n" } else { ". " });
    }
    // Cut on a char boundary; the text is ASCII, so any byte is one.
    text.truncate(len);
    text
}
