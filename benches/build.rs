//! Build speed: CSV to a published generation, through the library.
//!
//! `PROMO_BENCH_BUILD_ROWS` sets the CSV size (default 10^6), generated
//! with the project's generator.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use promo::builder::feed::Input;
use promo::builder::pipeline::{build, BuildOptions};

fn builds(c: &mut Criterion) {
    let rows: u64 = std::env::var("PROMO_BENCH_BUILD_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("in.csv");
    common::generate(rows, &csv);
    let bytes = std::fs::metadata(&csv).unwrap().len();
    let input = Input::File(csv);

    let mut g = c.benchmark_group("build");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function(format!("{rows} rows, in memory"), |b| {
        let opts = BuildOptions::new(dir.path().join("mem"));
        b.iter(|| build(&input, &opts).unwrap())
    });
    g.bench_function(format!("{rows} rows, spilling 16 MiB runs"), |b| {
        let mut opts = BuildOptions::new(dir.path().join("spill"));
        opts.memory_limit = 16 << 20;
        b.iter(|| build(&input, &opts).unwrap())
    });
    g.finish();
}

criterion_group!(benches, builds);
criterion_main!(benches);
