"""The delta part of `make bench`: a feed's change fetched as a delta,
against the same change fetched as the whole generation, in one run.

An S3 server (s3s-fs, as the fleet bench), a builder, two `promo serve
--source` replicas and nginx with deploy/nginx/promo.conf in front, all on
this machine. Feeds come from `gen-promotions --churn P` piped into `promo
build -`: the seed-1 feed with a share P of its rows changed (another price,
another expiry, left out, or a new id after it, a quarter each). Each
measured publish goes from the unchanged feed to a changed one, so that it
changes exactly P; the publish before it (back to the unchanged feed) is
not measured. "Full" publishes with `--max-delta off`, so the replicas
download the whole generation, as before deltas. Measured:

- the 1% change at --big-rows (10^8): bytes each replica downloads, and the
  time from `build --publish` exiting to both replicas answering from the
  new generation, with `--fetch-rate 100MiB` (a store across a network)
  and without a cap, full and delta in alternating rounds; and, capped, the
  delta with each replica's live generation read into memory first, as a
  serving replica's lookups keep it (these replicas serve nothing, and a
  rebuilt file is written past the page cache, so their base is on disk);
- the same feed published again, at both sizes: the delta's bytes and the
  time to live on both replicas;
- `build --publish` of --rows (10^7) rows, with and without its delta, in
  alternating rounds;
- p99 through nginx while both replicas apply a 1% delta, against steady;
- the curve at --rows: the delta's bytes and time to live at 0%, 0.1%,
  1%, 10% and 50% churn, beside the full path's.

`python3 -m scripts.bench_delta` runs it alone and prints its results.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from .bench_beyond import resident
from .bench_common import log, wrk
from .bench_fleet import Nginx, S3Server, _wait_both
from .paths import BENCH_DATA, GEN, PROMO, ROOT
from .processes import Serve, stop_all, wait_port

RATE = "100MiB"
CURVE = [0.0, 0.001, 0.01, 0.1, 0.5]
# Every publish: the guards would refuse a 50% churn of random prices, and
# two generations are all this needs.
BUILD = ["--keep", "2", "--max-churn", "off", "--max-price-jumps", "off", "--max-shrink", "off"]


class Replica(Serve):
    """`promo serve --source` into an emptied data directory of its own."""

    def __init__(self, work, i, s3, running, *extra):
        self.dir = work / f"delta-replica-{i}"
        shutil.rmtree(self.dir, ignore_errors=True)
        super().__init__(self.dir, "--source", s3.url, "--source-interval", "0.2", *extra,
                         ready=None, env=s3.env, running=running)
        wait_port(self.port)

    def fetched(self):
        """Bytes downloaded so far, by kind: {"full": n, "delta": n}."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for kind in ("full", "delta"):
            line = next(l for l in text.splitlines()
                        if l.startswith(f'promo_fetch_bytes_total{{kind="{kind}"}}'))
            out[kind] = float(line.split()[-1])
        return out


class FileStore:
    """A shared-directory store (file://), for the 10^8-row part: s3s-fs
    does not complete a 3.2 GB multipart upload within the store client's
    request timeout (it copies and hashes every part), where a real S3
    does in seconds. The replicas' `--fetch-rate` stands for the network."""

    def __init__(self, work):
        self.root = (work / "delta-store").resolve()
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.url = f"file://{self.root}"
        self.env = dict(os.environ)

    def newest(self):
        manifests = sorted((self.root / "manifests").glob("*.json"))
        return json.loads(manifests[-1].read_text())

    def stop(self):
        pass


class Fleet:
    """The store, the builder's data directory and two replicas, each
    replica started with `extra` arguments."""

    def __init__(self, work, rows, running, *extra, store=None):
        self.work, self.rows, self.running = work, rows, running
        self.s3 = store or S3Server(work, running)
        self.log = (work / "delta-build.log").open("a")
        self.builder = work / "delta-builder"
        shutil.rmtree(self.builder, ignore_errors=True)
        self.publish(0.0, 0)
        self.replicas = [Replica(work, i, self.s3, running, *extra) for i in range(2)]
        _wait_both(self.replicas, self.newest)

    def publish(self, churn, seed, delta=True):
        """`gen-promotions --churn churn | promo build - --publish`: the
        build's seconds; `newest` is the store's sequence after it, and
        `exited` when it exited."""
        gen = subprocess.Popen([GEN, "--rows", str(self.rows), "--seed", "1", "--churn", str(churn),
                                "--churn-seed", str(seed)], stdout=subprocess.PIPE)
        cmd = [PROMO, "build", "-", "--data-dir", self.builder, "--publish", self.s3.url, *BUILD]
        if not delta:
            cmd += ["--max-delta", "off"]
        started = time.time()
        p = subprocess.run([str(c) for c in cmd], stdin=gen.stdout, env=self.s3.env, check=True,
                           stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.exited = time.time()
        gen.stdout.close()
        assert gen.wait() == 0
        self.newest = int(p.stdout.split("as its generation ")[1].split()[0])
        return self.exited - started

    def change(self, churn, seed, delta=True, warm=False):
        """Back to the unchanged feed (not measured), then the feed with
        `churn` changed: its build's seconds, the seconds from its exit to
        both replicas live on it, and the bytes each replica downloaded.
        `warm` reads each replica's live generation before the publish, as
        a serving replica's lookups keep it in memory (a rebuilt file is
        written past the page cache, and these replicas serve nothing)."""
        self.publish(0.0, 0)
        _wait_both(self.replicas, self.newest)
        return self.measure(churn, seed, delta, warm)

    def measure(self, churn, seed, delta=True, warm=False):
        before = [r.fetched() for r in self.replicas]
        live_files = [max(r.dir.glob("gen-*.promo")) for r in self.replicas]
        if warm:
            for f in live_files:
                with f.open("rb") as g:
                    while g.read(16 << 20):
                        pass
        build = self.publish(churn, seed, delta)
        # How much of each base was in memory as the replicas began.
        cached = [resident(f) / f.stat().st_size for f in live_files]
        live = _wait_both(self.replicas, self.newest) - self.exited
        after = [r.fetched() for r in self.replicas]
        moved = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before)]
        manifest = self.s3.newest()
        return {"build": build, "live": live, "bytes": moved, "object": manifest["bytes"],
                "delta": (manifest.get("delta") or {}).get("bytes"), "base_cached": cached}

    def stop(self):
        for r in self.replicas:
            r.stop()
        self.s3.stop()
        shutil.rmtree(self.s3.root, ignore_errors=True)


def per_replica(m):
    """Bytes one replica downloaded (the mean of the two)."""
    return statistics.mean(b["full"] + b["delta"] for b in m["bytes"])


def alternate(fleet, rounds, churn=0.01):
    """Full and delta publishes of `churn`, in alternating rounds."""
    out = {"full": [], "delta": []}
    for r in range(rounds):
        for mode in ("full", "delta"):
            log(f"delta: {churn:.1%} {mode}, round {r + 1} of {rounds}")
            out[mode].append(fleet.change(churn, 100 + r, delta=mode == "delta"))
    return out


def unchanged(fleet):
    """The feed published again, twice: the delta's bytes and time to live."""
    fleet.publish(0.0, 0)
    _wait_both(fleet.replicas, fleet.newest)
    return [fleet.measure(0.0, 0) for _ in range(2)]


def bench_delta(work, results, rows=10_000_000, big_rows=100_000_000, rounds=3, skip_small=False):
    """Fills results["delta"]. Whatever happens, every process it started
    is stopped and its directories are removed."""
    running = []
    out = {"rows": rows, "big_rows": big_rows, "rounds": rounds, "rate": RATE}
    partial = work / "delta-partial.json"
    try:
        if skip_small and partial.exists():
            out.update(json.loads(partial.read_text()))
        else:
            _bench_small(work, rows, rounds, out, running)
            partial.write_text(json.dumps(out, indent=2))
        stop_all(running)
        running.clear()
        if big_rows:
            _bench_big(work, big_rows, out, running)
    finally:
        stop_all(running)
        for d in work.glob("delta-*"):
            if d.is_dir():  # the store, the builder, the replicas
                shutil.rmtree(d, ignore_errors=True)
    results["delta"] = out


def _bench_small(work, rows, rounds, out, running):
    log(f"delta: {rows:,} rows, two replicas without a cap")
    fleet = Fleet(work, rows, running)
    nginx = Nginx(work, [r.port for r in fleet.replicas], running)
    ids = work / "delta-ids.txt"
    subprocess.run([GEN, "--rows", str(rows), "--seed", "1", "--out", "/dev/null", "--ids-out", ids,
                    "--ids-sample", "100000"], check=True)
    wrk(nginx.url, ids, 3)  # warm up
    out["small"] = alternate(fleet, rounds)
    out["small_unchanged"] = unchanged(fleet)

    # p99 through nginx: steady, and while both replicas apply a 1% delta.
    window = max(4, int(max(m["live"] for m in out["small"]["delta"])) + 3)
    out["window"] = window
    out["steady"], out["applying"] = [], []
    for r in range(rounds):
        log(f"delta: p99 steady and while applying, round {r + 1} of {rounds}")
        out["steady"].append(wrk(nginx.url, ids, window))
        fleet.publish(0.0, 0)
        _wait_both(fleet.replicas, fleet.newest)

        def publish_during():
            time.sleep(0.5)
            fleet.measure(0.01, 200 + r)
        t = threading.Thread(target=publish_during)
        t.start()
        out["applying"].append(wrk(nginx.url, ids, window))
        t.join()

    # The curve: each churn, delta then full.
    out["curve"] = []
    for i, churn in enumerate(CURVE):
        log(f"delta: the curve at {churn:.1%}")
        point = {"churn": churn}
        for mode in ("delta", "full"):
            point[mode] = fleet.change(churn, 300 + i, delta=mode == "delta")
        out["curve"].append(point)
    nginx.stop()
    fleet.stop()


def _bench_big(work, rows, out, running):
    free = shutil.disk_usage(work).free
    need = rows * 32 * 9  # two generations a replica, the builder's, the store's, a rebuild
    if free < need:
        log(f"delta: skipping {rows:,} rows: {free / 1e9:.0f} GB free, {need / 1e9:.0f} GB needed")
        out["big_skipped"] = f"{free / 1e9:.0f} GB free, {need / 1e9:.0f} GB needed"
        return
    log(f"delta: {rows:,} rows, a shared-directory store, two replicas with --fetch-rate {RATE}")
    fleet = Fleet(work, rows, running, "--fetch-rate", RATE, store=FileStore(work))
    out["big_capped"] = alternate(fleet, 2)
    log("delta: 1% delta, the replicas' live generation in memory, 2 rounds")
    out["big_warm"] = [fleet.change(0.01, 110 + r, warm=True) for r in range(2)]
    out["big_unchanged"] = unchanged(fleet)
    fleet.stop()
    stop_all(running)
    running.clear()
    log(f"delta: {rows:,} rows, a shared-directory store, two replicas without a cap")
    fleet = Fleet(work, rows, running, store=FileStore(work))
    out["big_uncapped"] = alternate(fleet, 1)
    fleet.stop()


def report(results):
    """BENCHMARKS.md lines for results["delta"]."""
    d = results["delta"]
    med = statistics.median
    mb = lambda n: f"{n / 1e6:,.1f} MB"
    s = lambda x: f"{x:.2f} s"

    def pair(runs):
        full, delta = runs["full"], runs["delta"]
        return (med(per_replica(m) for m in full), med(per_replica(m) for m in delta),
                med(m["live"] for m in full), med(m["live"] for m in delta))

    lines = ["", "## Deltas: what a feed changed, against the whole generation", "",
             "The fleet bench's S3 server, builder, two `promo serve --source` replicas (polling "
             "every 0.2 s) and nginx, on this one machine. Each measured publish changes a share "
             "of the promotions of the seed-1 feed (`gen-promotions --churn`: prices, expiries, "
             "removed and added ids in equal parts); \"full\" is the same publish with "
             "`--max-delta off`, which the replicas download whole, as before deltas. Time to "
             "live: from `build --publish` exiting to both replicas answering from the new "
             "generation. Medians of alternating rounds.", "",
             "| figure | delta | full | ratio | target |", "|---|---:|---:|---:|---:|"]
    rows_of = lambda n: f"10^{len(str(n)) - 1}" if str(n).strip("0") == "1" else f"{n:,}"
    for key, label, target_bytes, target_time in (
            ("big_capped", f"{rows_of(d['big_rows'])} rows (a shared-directory store), 1% changed, "
             f"`--fetch-rate {d['rate']}`",
             "<= 2%", "<= 0.25x"),
            ("big_uncapped", f"{rows_of(d['big_rows'])} rows (a shared-directory store), 1% changed, "
             "no cap", "<= 2%", "<= 1x"),
            ("small", f"{rows_of(d['rows'])} rows, 1% changed, no cap", "<= 2%", "<= 1x")):
        if key not in d:
            continue
        bf, bd, tf, td = pair(d[key])
        lines.append(f"| {label}: bytes each replica downloads | {mb(bd)} | {mb(bf)} | "
                     f"{bd / bf:.2%} | {target_bytes} |")
        lines.append(f"| {label}: time to live | {s(td)} | {s(tf)} | {td / tf:.2f}x | {target_time} |")
        if key == "big_capped" and "big_warm" in d:
            lines.append(warm_row(d))
    for key, n in (("big_unchanged", d["big_rows"]), ("small_unchanged", d["rows"])):
        if key not in d:
            continue
        runs = d[key]
        lines.append(f"| {rows_of(n)} rows, the same feed again: the delta / time to live | "
                     f"{runs[-1]['delta'] or 0:,} bytes / {s(med(m['live'] for m in runs))} | "
                     f"{mb(runs[-1]['object'])} object | | < 1 MB / <= 2 s |")
    small = d["small"]
    bf, bd = (med(m["build"] for m in small["full"]), med(m["build"] for m in small["delta"]))
    lines.append(f"| `build --publish` of {rows_of(d['rows'])} rows, with its delta / without | "
                 f"{s(bd)} | {s(bf)} | {bd / bf:.2f}x | <= 1.05x |")
    p99 = lambda runs: med(w["p99"] for w in runs)
    lines.append(f"| p99 through nginx while both replicas apply a 1% delta / steady "
                 f"({d['window']} s of `wrk -t2 -c64`) | {p99(d['applying']) * 1e3:.2f} ms | "
                 f"{p99(d['steady']) * 1e3:.2f} ms | {p99(d['applying']) / p99(d['steady']):.2f}x "
                 f"| <= 1.5x |")
    if "big_skipped" in d:
        lines += ["", f"The {rows_of(d['big_rows'])}-row part was skipped: {d['big_skipped']}."]
    lines += ["", f"The curve at {rows_of(d['rows'])} rows (one publish each):", "",
              "| churn | delta | of the generation | time to live | full: time to live |",
              "|---:|---:|---:|---:|---:|"]
    for p in d["curve"]:
        delta, full = p["delta"], p["full"]
        size = delta["delta"]
        share = f"{size / delta['object']:.2%}" if size else "no delta"
        lines.append(f"| {p['churn']:.1%} | {size or 0:,} bytes | {share} | {s(delta['live'])} | "
                     f"{s(full['live'])} |")
    lines += ["", "Each round's time to live, delta against full: " + "; ".join(
        f"{k}: " + ", ".join(f"{a['live']:.2f}/{b['live']:.2f}" for a, b in zip(d[k]["delta"], d[k]["full"]))
        for k in ("big_capped", "big_uncapped", "small") if k in d) + "."]
    if "big_warm" in d:
        lines[-1] = lines[-1][:-1] + "; with the live generation in memory: " + ", ".join(
            f"{m['live']:.2f}" for m in d["big_warm"]) + "."
    return lines


def warm_row(d):
    """The capped 1% with the replicas' live generation in memory, beside
    the capped full rounds (the full path reads no base)."""
    med = statistics.median
    tf = med(m["live"] for m in d["big_capped"]["full"])
    td = med(m["live"] for m in d["big_warm"])
    cold = max(c for m in d["big_capped"]["delta"] for c in m["base_cached"])
    warm = min(c for m in d["big_warm"] for c in m["base_cached"])
    return (f"| the same, with the replicas' live generation in memory (at least {warm:.0%} of it "
            f"as the publish ended, against at most {cold:.0%} above): time to live | {td:.2f} s | "
            f"{tf:.2f} s | {td / tf:.2f}x | <= 0.25x |")


def chart(results, ax):
    """The curve on `ax`: time to live against churn, delta and full."""
    d = results["delta"]
    xs = [p["churn"] * 100 for p in d["curve"]]
    ax.plot(xs, [p["delta"]["live"] for p in d["curve"]], "o-", label="delta")
    ax.plot(xs, [p["full"]["live"] for p in d["curve"]], "s--", label="full")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("churn, % of rows")
    ax.set_ylabel("publish to live on both replicas, s")
    ax.set_title(f"Deltas at {d['rows']:,} rows")
    ax.legend()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--big-rows", type=int, default=100_000_000, help="0 skips the big part")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=BENCH_DATA)
    ap.add_argument("--skip-small", action="store_true",
                    help="take the --rows part from the last run's bench-data/delta-partial.json")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    bench_delta(args.work, results, args.rows, args.big_rows, args.rounds, args.skip_small)
    (args.work / "delta.json").write_text(json.dumps(results, indent=2))
    print("\n".join(report(results)))


if __name__ == "__main__":
    main()
