"""The feed-safety part of `make bench`: what comparing with the live
generation costs, and feeds read from a store or compressed.

Each figure is a pair run side by side, taking turns, `rounds` times, with
the medians compared:

- churn: `promo build` of the feed into a data directory that holds the
  previous generation (it is verified, then compared with the new one)
  against the same build into an empty one (nothing to compare with); the
  comparison's own seconds come from the build's debug log;
- URL: `promo build s3://...` of the feed from the S3 server of the fleet
  bench (s3s-fs, uploaded with a PUT, as a partner's upload would be)
  against `promo build` of the same file on local disk;
- zstd: `promo build feed.csv.zst` (zstd -3, as the `zstd` command writes
  it) against the plain file.

Beside them, in the same rounds, the floors the two ratios stand on: curl
downloading the object from the same server, and `zstd -d` alone.

`python3 -m scripts.bench_feeds --rows 1000000` runs it alone.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from .bench_common import generate, log, warm
from .bench_fleet import ACCESS_KEY, BUCKET, SECRET_KEY, S3Server
from .paths import BENCH_DATA, PROMO, ROOT
from .processes import stop_all


def _build(args, data, env=None, fresh=True):
    """One `promo build`: (wall seconds, the comparison's seconds or None)."""
    if fresh:
        shutil.rmtree(data, ignore_errors=True)
    env = {**(env or os.environ), "RUST_LOG": "promo=debug"}
    started = time.time()
    p = subprocess.run([PROMO, "build", *map(str, args), "--data-dir", str(data), "--keep", "2",
                        "--log-format", "json"],
                       env=env, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.time() - started
    written = compared = None
    for line in p.stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        message = event.get("message", "")
        if message == "sorted and written":
            written = event["seconds"]
        elif message.startswith("compared with generation"):
            compared = event["seconds"]
    churn = compared - written if written is not None and compared is not None else None
    return wall, churn


def _upload(s3, path, key):
    """PUTs `path` as `key` in the bench bucket (s3s-fs keeps its ETag)."""
    subprocess.run(["curl", "-sSf", "-T", str(path), "--aws-sigv4", "aws:amz:us-east-1:s3",
                    "--user", f"{ACCESS_KEY}:{SECRET_KEY}",
                    "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                    f"http://127.0.0.1:{s3.port}/{BUCKET}/{key}"], check=True)


def bench_feeds(work, csv, results, rounds=3):
    running = []
    try:
        _bench_feeds(work, csv, results, rounds, running)
    finally:
        stop_all(running)


def _bench_feeds(work, csv, results, rounds, running):
    data = work / "data-feeds"
    previous = work / "data-feeds-previous"
    zst = work / (csv.name + ".zst")
    if not zst.exists():
        log(f"compressing {csv.name} with zstd -3")
        subprocess.run(["zstd", "-q", "-3", "-T2", "-f", "-o", str(zst), str(csv)], check=True)
    s3 = S3Server(work, running)
    log("uploading the feed to the S3 server")
    _upload(s3, csv, "feeds/feed.csv")
    url = f"s3://{BUCKET}/feeds/feed.csv"

    # The data directory with a previous generation: the same feed, built once.
    shutil.rmtree(previous, ignore_errors=True)
    _build([csv], previous)
    prev_gen = sorted(previous.glob("gen-*.promo"))[-1]

    runs = {k: [] for k in ("first", "compared", "local", "url", "curl", "plain", "zstd", "unzstd")}
    churn_seconds = []
    for r in range(rounds):
        log(f"feeds: round {r + 1} of {rounds}")
        # churn: a first build against one that compares with the previous.
        warm(csv)
        runs["first"].append(_build([csv], data)[0])
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir()
        shutil.copy(prev_gen, data / prev_gen.name)
        warm(csv)
        wall, churn = _build([csv], data, fresh=False)
        runs["compared"].append(wall)
        churn_seconds.append(churn)
        # URL against local file.
        warm(csv)
        runs["local"].append(_build([csv], data)[0])
        runs["url"].append(_build([url], data, env=s3.env)[0])
        started = time.time()
        subprocess.run(["curl", "-sSf", "-o", "/dev/null", "--aws-sigv4", "aws:amz:us-east-1:s3",
                        "--user", f"{ACCESS_KEY}:{SECRET_KEY}", "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                        f"http://127.0.0.1:{s3.port}/{BUCKET}/feeds/feed.csv"], check=True)
        runs["curl"].append(time.time() - started)
        # zstd against plain.
        warm(csv)
        runs["plain"].append(_build([csv], data)[0])
        warm(zst)
        runs["zstd"].append(_build([zst], data)[0])
        started = time.time()
        subprocess.run(["sh", "-c", f"zstd -d -c '{zst}' > /dev/null"], check=True)
        runs["unzstd"].append(time.time() - started)
    med = {k: statistics.median(v) for k, v in runs.items()}
    results["feeds"] = {
        "rounds": rounds,
        "runs": runs,
        "medians": med,
        "churn_seconds": churn_seconds,
        "churn_ratio": med["compared"] / med["first"],
        "url_ratio": med["url"] / med["local"],
        "zstd_ratio": med["zstd"] / med["plain"],
        "csv_mb": csv.stat().st_size / 1e6,
        "zst_mb": zst.stat().st_size / 1e6,
    }
    f = results["feeds"]
    log(f"feeds: compared {med['compared']:.2f} s vs first {med['first']:.2f} s ({f['churn_ratio']:.2f}x, "
        f"comparison {statistics.median(churn_seconds):.2f} s); url {med['url']:.2f} s vs local "
        f"{med['local']:.2f} s ({f['url_ratio']:.2f}x); zstd {med['zstd']:.2f} s vs plain "
        f"{med['plain']:.2f} s ({f['zstd_ratio']:.2f}x)")
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(previous, ignore_errors=True)


def report(results):
    """BENCHMARKS.md's section for these figures."""
    f = results.get("feeds")
    if not f:
        return []
    m = f["medians"]
    lines = [
        "", "## Feed safety and feeds by URL", "",
        f"Pairs taking turns, {f['rounds']} rounds, medians (`scripts/bench_feeds.py`), on the "
        f"{f['csv_mb']:.0f} MB feed ({f['zst_mb']:.0f} MB as zstd -3).", "",
        "| build | median s | against | ratio |", "|---|---:|---|---:|",
        f"| into a directory with the previous generation (verified, then compared) | {m['compared']:.2f} "
        f"| a first build, nothing to compare: {m['first']:.2f} s | **{f['churn_ratio']:.2f}x** |",
        f"| `promo build s3://...` (s3s-fs on this machine) | {m['url']:.2f} | the same file on local disk: "
        f"{m['local']:.2f} s | **{f['url_ratio']:.2f}x** |",
        f"| `promo build feed.csv.zst` | {m['zstd']:.2f} | the plain file: {m['plain']:.2f} s "
        f"| **{f['zstd_ratio']:.2f}x** |",
        "",
        f"In the same rounds: curl downloads the object from the same server in {m['curl']:.2f} s "
        f"(one stream), and `zstd -d` alone decompresses the feed to /dev/null in {m['unzstd']:.2f} s. "
        "Every run, in order: " + "; ".join(f"{k} " + ", ".join(f"{x:.2f}" for x in v)
                                            for k, v in f["runs"].items()) + ".",
        "",
        f"The comparison itself (the merge of the two generations, from the build's debug log) took "
        f"{statistics.median([c for c in f['churn_seconds'] if c is not None]):.2f} s a build (median).",
    ]
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=BENCH_DATA)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
    csv, _ = generate(args.work, args.rows)
    results = {}
    bench_feeds(args.work, csv, results, args.rounds)
    results["feeds"]["rows"] = args.rows
    (args.work / "feeds.json").write_text(json.dumps(results, indent=2))
    print("\n".join(report(results)))


if __name__ == "__main__":
    main()
