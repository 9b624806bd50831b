//! Row parsing speed: one 4 MiB chunk of generated CSV through
//! `ingest::parse_chunk` on one thread, the work `promo build` splits
//! across its cores.

mod common;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use promo::builder::ingest::parse_chunk;

fn parse(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("in.csv");
    common::generate(60_000, &csv);
    let bytes = std::fs::read(&csv).unwrap();
    let rows = parse_chunk(&bytes, true);
    assert_eq!((rows.records.len(), rows.invalid), (60_000, 0));

    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(60_000));
    g.bench_function("60000 rows", |b| {
        b.iter(|| parse_chunk(black_box(&bytes), true))
    });
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
