"""Builds at scale: 10^7 to 10^9 rows piped from gen-promotions into
`promo build - --memory-limit 1GiB`, with wall time, peak RSS and the
peak disk the build used beyond what was there before (sorted runs, the
dates kept as written and the new file), against the final file's size.

With --v1, the 10^7 and 10^8 builds also run with the last release that
wrote format version 1, built from this repository's history into
bench-data/tools, alternating with this build on the same generated rows.

    python3 -m scripts.bench_scale [--rows 100000000,1000000000] [--v1]
    make bench-scale          (the same, 10^8 and 10^9, with --v1)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

from .bench_common import log
from .paths import BENCH_DATA, GEN, PROMO, ROOT


def v1_binary():
    """promo as of the commit before format version 2, built once."""
    tools = BENCH_DATA / "tools"
    binary = tools / "promo-v1"
    if binary.exists():
        return binary
    v2 = subprocess.run(["git", "log", "--format=%H", "-1", "--grep", "^Format version 2"],
                        cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    if not v2:
        sys.exit("cannot find the commit that introduced format version 2")
    tree = tools / "promo-v1-src"
    if not tree.exists():
        tools.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), f"{v2}^"], cwd=ROOT,
                       check=True)
    log("building the format-version-1 promo (once)")
    subprocess.run(["cargo", "build", "--release", "--bin", "promo"], cwd=tree, check=True)
    (tree / "target/release/promo").rename(binary)
    return binary


class DiskPeak:
    """The most bytes used on the filesystem of `path`, sampled every 0.1 s."""

    def __init__(self, path):
        self.path, self.peak, self.stop = path, 0, threading.Event()
        self.base = self.used()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def used(self):
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.used())
            time.sleep(0.1)

    def finish(self):
        self.stop.set()
        self.thread.join()
        return max(self.peak, self.used()) - self.base


def build(promo, rows, data):
    """gen-promotions | promo build -: a result dict."""
    subprocess.run(["rm", "-rf", str(data)], check=True)
    data.mkdir(parents=True)
    time_file = BENCH_DATA / "time-scale.txt"
    disk = DiskPeak(data)
    cmd = (f"set -o pipefail; {GEN} --rows {rows} --seed 1 | "
           f"/usr/bin/time -f '%e %M' -o {time_file} {promo} build - --memory-limit 1GiB "
           f"--data-dir {data}")
    started = time.monotonic()
    out = subprocess.run(["bash", "-c", cmd], check=True, capture_output=True, text=True)
    wall = time.monotonic() - started
    peak_disk = disk.finish()
    build_wall, rss_kb = time_file.read_text().split()[-2:]
    gen = sorted(data.glob("gen-*.promo"))[-1]
    size = gen.stat().st_size
    result = {"rows": rows, "wall": float(build_wall), "pipeline_wall": wall,
              "rss": int(rss_kb) * 1024, "file_bytes": size, "bytes_per_record": size / rows,
              "peak_disk": peak_disk, "peak_disk_ratio": peak_disk / size,
              "summary": out.stdout.strip().splitlines()[-1]}
    log(f"  {promo.name} {rows:,}: {result['wall']:.1f} s, RSS {result['rss'] / 2**30:.2f} GiB, "
        f"file {size / 1e9:.2f} GB ({result['bytes_per_record']:.1f} B/record), "
        f"peak disk {peak_disk / 1e9:.2f} GB ({result['peak_disk_ratio']:.2f}x the file)")
    subprocess.run(["rm", "-rf", str(data)], check=True)
    return result



def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="100000000,1000000000",
                    help="comma-separated row counts, each piped from gen-promotions")
    ap.add_argument("--v1", action="store_true",
                    help="also build 10^7 and 10^8 rows with the format-version-1 promo")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the v1 comparison")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
    results = {"scale": [], "date": time.strftime("%Y-%m-%d"), "rounds": args.rounds}
    if args.v1:
        old = v1_binary()
        for rows in (10_000_000, 100_000_000):
            runs = {"v1": [], "v2": []}
            for _ in range(args.rounds):
                for name, binary in (("v1", old), ("v2", PROMO)):
                    runs[name].append(build(binary, rows, BENCH_DATA / f"data-scale-{name}"))
            results.setdefault("versions", []).append({
                "rows": rows,
                **{name: {"wall": statistics.median([r["wall"] for r in rs]),
                          "rss": statistics.median([r["rss"] for r in rs]),
                          "bytes_per_record": rs[0]["bytes_per_record"],
                          "walls": [r["wall"] for r in rs]} for name, rs in runs.items()}})
    for rows in (int(r) for r in args.rows.split(",")):
        # The machine is noisy: below a billion rows, the median of rounds.
        runs = [build(PROMO, rows, BENCH_DATA / "data-scale")
                for _ in range(1 if rows >= 10**9 else args.rounds)]
        result = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]
        results["scale"].append({**result, "walls": [r["wall"] for r in runs]})
    (BENCH_DATA / "scale.json").write_text(json.dumps(results, indent=2))
    print("\n".join(report(results)))


def report(results):
    """Markdown lines for BENCHMARKS.md: `make bench` adds them when
    bench-data/scale.json exists."""
    lines = ["", f"## Builds at scale (`make bench-scale`, {results.get('date', '')})", "",
             "Rows piped from `gen-promotions --seed 1` into `promo build - --memory-limit 1GiB`; "
             "peak disk is the most the filesystem held beyond what it held before "
             "(sorted runs, dates kept as written and the new file), sampled every 0.1 s. "
             "Below 10^9 rows, the median of the rounds (all in brackets).", "",
             "| rows | build | peak RSS | file | bytes/record | peak disk |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in results["scale"]:
        walls = ", ".join(f"{w:.1f}" for w in r.get("walls", [r["wall"]]))
        lines.append(f"| {r['rows']:,} | {r['wall']:.1f} s ({walls}) | {r['rss'] / 2**30:.2f} GiB | "
                     f"{r['file_bytes'] / 1e9:.2f} GB | {r['bytes_per_record']:.1f} | "
                     f"{r['peak_disk'] / 1e9:.2f} GB, {r['peak_disk_ratio']:.2f}x the file |")
    if len(results["scale"]) > 1:
        a, b = results["scale"][0], results["scale"][-1]
        lines += ["", f"{b['rows']:,} rows took {b['wall'] / a['wall']:.2f}x the {a['rows']:,}-row time."]
    if results.get("versions"):
        lines += ["", "Format version 2 against the last release that wrote version 1, on the same "
                  f"generated rows, alternating, medians of {results.get('rounds', 3)} rounds:", "",
                  "| rows | v2 build | v1 build | v2 peak RSS | v1 peak RSS | v2 B/record | v1 B/record |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for v in results["versions"]:
            a, b = v["v2"], v["v1"]
            lines.append(f"| {v['rows']:,} | {a['wall']:.2f} s | {b['wall']:.2f} s ({a['wall'] / b['wall']:.2f}x) | "
                         f"{a['rss'] / 2**30:.2f} GiB | {b['rss'] / 2**30:.2f} GiB | "
                         f"{a['bytes_per_record']:.1f} | {b['bytes_per_record']:.1f} |")
    return lines


if __name__ == "__main__":
    main()
