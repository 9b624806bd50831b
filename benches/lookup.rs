//! Lookup speed on a real generation file: hits and misses, with the file
//! in the page cache (random keys across the table), and cache-resident.
//!
//! `PROMO_BENCH_RECORDS` sets the generation size (default 10^7).

use std::fs::File;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use promo::generation::format::Writer;
use promo::generation::record::Price;
use promo::generation::table::Table;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn key(state: &mut u64) -> u128 {
    (u128::from(splitmix(state)) << 64) | u128::from(splitmix(state))
}

/// The table to look up in: `PROMO_BENCH_GENERATION` names an existing
/// generation file; otherwise one of `PROMO_BENCH_RECORDS` random keys
/// (default 10^7) is written to a temporary directory.
fn table(dir: &std::path::Path) -> Table {
    if let Ok(path) = std::env::var("PROMO_BENCH_GENERATION") {
        return Table::open_verified(std::path::Path::new(&path), 1).unwrap();
    }
    let n: u64 = std::env::var("PROMO_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let path = dir.join("bench.promo");
    let mut s = 1;
    let mut keys: Vec<u128> = (0..n).map(|_| key(&mut s)).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut w = Writer::new(File::create(&path).unwrap(), &path, keys.len() as u64).unwrap();
    let price = Price::new(60_683_466, 6).unwrap();
    for &k in &keys {
        w.push_row(k, price, b"2018-08-04 05:32:31 +0200 CEST")
            .unwrap();
    }
    w.finish().unwrap();
    Table::open_verified(&path, 1).unwrap()
}

fn lookups(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let table = table(dir.path());
    let n = table.len();
    let mut s = 7;
    // Probe in a random order so the CPU cannot predict the next record.
    let probe: Vec<u128> = (0..1 << 16)
        .map(|_| table.record(splitmix(&mut s) % n).key())
        .collect();
    let absent: Vec<u128> = (0..1 << 16).map(|_| key(&mut s)).collect();
    probe.iter().for_each(|k| assert!(table.get(*k).is_some()));
    let pages = |keys: &[u128]| {
        let counts: Vec<usize> = keys.iter().map(|&k| table.pages_touched(k)).collect();
        let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
        (mean, *counts.iter().max().unwrap())
    };
    let (hit_mean, hit_max) = pages(&probe);
    let (miss_mean, miss_max) = pages(&absent);
    println!(
        "lookup/{n}: 4 KiB pages touched per lookup: hit mean {hit_mean:.3} max {hit_max}, \
         miss mean {miss_mean:.3} max {miss_max} (fanout bits {})",
        table.header().fanout_bits
    );

    let mut g = c.benchmark_group(format!("lookup/{n}"));
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("hit", |b| {
        b.iter(|| {
            i = (i + 1) & 0xffff;
            black_box(table.get(black_box(probe[i])))
        })
    });
    // The same 1,024 keys over and over: their records stay in the CPU's
    // caches, so this measures the search itself rather than memory latency.
    g.bench_function("hit-cached", |b| {
        b.iter(|| {
            i = (i + 1) & 0x3ff;
            black_box(table.get(black_box(probe[i])))
        })
    });
    // The floor: one read of a random record, no search at all. On a
    // virtual machine this is a TLB miss plus a DRAM access.
    let indices: Vec<u64> = (0..1 << 16).map(|_| splitmix(&mut s) % n).collect();
    g.bench_function("one-random-record-read", |b| {
        b.iter(|| {
            i = (i + 1) & 0xffff;
            black_box(table.record(black_box(indices[i])).key())
        })
    });
    // The latency floor: each read's index comes from the key the last one
    // read, so reads cannot overlap. One lookup cannot beat one of these.
    // (A step count is mixed in, or the walk would soon run in a short
    // cycle of records that stay cached.)
    let (mut at, mut step) = (0u64, 0u64);
    g.bench_function("dependent-random-record-read", |b| {
        b.iter(|| {
            step += 1;
            let mut s = table.record(black_box(at)).key() as u64 ^ step;
            at = splitmix(&mut s) % n;
            at
        })
    });
    g.bench_function("miss", |b| {
        b.iter(|| {
            i = (i + 1) & 0xffff;
            black_box(table.get(black_box(absent[i])))
        })
    });
    g.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
