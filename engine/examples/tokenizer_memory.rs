//! What an exact token estimate costs a process: the time and resident memory
//! to build each encoder, and the time per estimate of a 1 KiB prompt.
//! `cargo run --release -p policybind-engine --example tokenizer_memory`
//! (Linux: memory from /proc/self/status).
use std::time::Instant;

use policybind_engine::tokens;

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mut before = resident_kib();
    for (encoding, model) in [("o200k_base", "gpt-4o-mini"), ("cl100k_base", "gpt-4")] {
        let started = Instant::now();
        tokens::prepare(model);
        let after = resident_kib();
        println!(
            "{encoding}: built in {:?}, +{} MiB resident",
            started.elapsed(),
            (after.saturating_sub(before)) / 1024
        );
        before = after;
    }
    let prompt = "Summarise the quarterly report in three bullet points, please. ".repeat(16);
    let rounds = 1_000;
    let started = Instant::now();
    let mut total = 0;
    for _ in 0..rounds {
        total += tokens::estimate("gpt-4o-mini", &prompt);
    }
    println!(
        "estimate of a {} byte prompt: {:?} each ({} tokens)",
        prompt.len(),
        started.elapsed() / rounds,
        total / u64::from(rounds)
    );
}
