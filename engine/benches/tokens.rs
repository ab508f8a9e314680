//! Cost of token estimates. The sidecar estimates every request's prompt
//! before it reserves budget, so counting must be cheap: the encoders are
//! built once per process, and this measures the count itself for a 2 KiB
//! English prompt (and a 16 KiB one), exact (`o200k_base`, `cl100k_base`)
//! and heuristic (Claude), plus the one-time cost of building an encoder.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use policybind_engine::tokens;

#[path = "support/prose.rs"]
mod support;
use support::prose;

fn estimate(c: &mut Criterion) {
    let mut group = c.benchmark_group("tokens/estimate");
    for (label, len) in [("2KiB", 2 << 10), ("16KiB", 16 << 10)] {
        let text = prose(len);
        group.throughput(Throughput::Bytes(text.len() as u64));
        for model in ["gpt-4o", "gpt-4", "claude-sonnet-4"] {
            // Build the encoder outside the measurement, as a running
            // sidecar has.
            tokens::estimate(model, "warm up");
            group.bench_with_input(BenchmarkId::new(model, label), &text, |b, text| {
                b.iter(|| tokens::estimate(black_box(model), black_box(text)))
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("tokens/build-encoder");
    group.sample_size(10);
    group.bench_function("o200k_base", |b| {
        b.iter(|| tiktoken_rs::o200k_base().expect("bundled encoding"))
    });
    group.bench_function("cl100k_base", |b| {
        b.iter(|| tiktoken_rs::cl100k_base().expect("bundled encoding"))
    });
    group.finish();
}

criterion_group!(benches, estimate);
criterion_main!(benches);
