"""`make soak`: promo serve under steady load while generations keep replacing each other.

Ten minutes (by default) of `wrk -t2 -c64 --latency -s scripts/wrk-lookups.lua`
(90% ids that are present, 10% absent) against `promo serve` on 127.0.0.1,
while a new generation is built and published every 20 seconds. wrk runs in
one-minute slices back to back, so each minute has its own p50 and p99. A
sampler reads the server's RSS (anonymous and file-backed), open file
descriptors and mapped generation files from /proc every 5 seconds, and asks
the server which generation is live. Then it writes a Markdown report to
stdout and to bench-data/SOAK.md, and exits non-zero if a check failed.

    python3 -m scripts.soak [--minutes 10] [--every 20] [--rows 1000000]

The feeds: every generation holds the same "core" (the first 80% of the rows,
`gen-promotions --seed 1`), from which wrk's ids are sampled, so lookups of
present ids always hit; the other 20% differ. Three feeds take turns:
  a  core + 20% fresh rows (seed 2)
  b  core + 20% fresh rows (seed 3) + a new price for every id wrk asks for
     (later rows win, so these are counted duplicates)
  c  core + 20% fresh rows (seed 4) with 5% duplicates
So each swap replaces a fifth of the ids and, to or from b, the price of
every id looked up. At the default 1,000,000 rows that churns 50.00% from
a to b (200,000 removed, 200,000 added, 100,000 repriced), 49% from b to
c and 39% from c to a, and b's random prices move 1.3% of the shared ids
by more than 10x; with fewer --rows the 100,000 repriced ids weigh more
(at 200,000 rows, a to b would churn 90% and jump 6.2% of the prices).
Generations are published with `promo build --max-churn off
--max-price-jumps off`: the soak measures swaps, not feed safety, and its
generated feeds sit at or past those guards' defaults (50%, 5%); each
build's churn= and price_jump_share= are logged and reported. Default
--keep 3 (at most three generation files stay in the data directory); no
feed shrinks by anywhere near --max-shrink, which stays on; no --force.

Checks (each a PASS or FAIL line): promo's own request counter shows no
status but 200 and 404 under /promotions/, and 404s are about the 10% wrk
asks for; wrk saw no socket error; every build succeeded and every
generation went live (no load failure); a probe lookup every 5 s got the
price its x-promo-generation header promises; open fds are back to the idle
count after the load; after each swap the old generation is unmapped within
10 s and never more than two are mapped; anonymous, file-backed and total
RSS end within max(8 MiB, 10%) of the first sample after warm-up. Exit
status: 0 all passed, 1 a check failed, 2 an error, 130 interrupted.

It installs wrk (apt-get) if missing. Whatever it started (serve, wrk,
builds) is stopped when it exits, on an error, Ctrl-C, SIGTERM or SIGHUP;
where setpriv (util-linux) exists, children also get SIGTERM if this script
is killed outright.

Everything goes under bench-data/ (gitignored): the feeds, reused between
runs of the same --rows, are in bench-data/soak/; the data directory,
the server's log and the raw results are rewritten on each run.
"""

import argparse
import collections
import datetime
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path

from . import processes
from .paths import BENCH_DATA, GEN, PROMO, ROOT, WRK_SCRIPT, rel, revision, unrooted
from .procfs import machine, mapped_generations, sample as proc_sample  # machine: as make bench reports it
WRK_THREADS, WRK_CONNECTIONS = 2, 64
SAMPLE_SECONDS = 5
# A sample this long after a publish is "settled": the swap is done and the
# requests that held the old generation have finished.
SETTLE_SECONDS = 2.0
MIB = 2**20
# The churn and price-jump guards off for every build: the soak measures
# swaps, and its generated feeds (unrelated tails, random new prices for
# the looked-up ids) churn 39% to 50% a swap at 1M rows and more with fewer
# rows, at or past the defaults (50%, 5%). The shrink guard stays on.
GUARDS_OFF = ["--max-churn", "off", "--max-price-jumps", "off"]


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Child processes: every one is registered, so that any exit stops them all.
# ---------------------------------------------------------------------------

class Children:
    def __init__(self):
        self.lock = threading.Lock()
        self.procs = set()
        # With setpriv (util-linux), a child also gets SIGTERM if this
        # process dies without cleaning up (SIGKILL).
        self.prefix = ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []

    def popen(self, cmd, **kw):
        with self.lock:
            p = subprocess.Popen([*self.prefix, *map(str, cmd)], **kw)
            self.procs.add(p)
        return p

    def forget(self, p):
        with self.lock:
            self.procs.discard(p)

    def run(self, cmd, timeout, **kw):
        """Runs cmd to completion: (returncode, stdout, stderr); killed after timeout."""
        p = self.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            err += f"\n(killed after {timeout} s)"
        finally:
            self.forget(p)
        return p.returncode, out, err

    def stop_all(self):
        """SIGTERM to every child still running, SIGKILL to those still there after 35 s."""
        with self.lock:
            procs = [p for p in self.procs if p.poll() is None]
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 35  # promo serve drains for up to 30 s
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


CHILDREN = Children()


def check(cmd, timeout, **kw):
    code, out, err = CHILDREN.run(cmd, timeout, **kw)
    if code != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {code}: {err.strip()[-2000:]}")
    return out


# ---------------------------------------------------------------------------
# Setup: tools, binaries, feeds
# ---------------------------------------------------------------------------

def ensure_tools():
    if shutil.which("wrk"):
        return
    log("installing wrk (Debian)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    check(["apt-get", "update", "-qq"], 900, env=env)
    check(["apt-get", "install", "-y", "-qq", "wrk"], 900, env=env)


def append_generated(cmd, out_path, timeout=1800):
    """Appends gen-promotions' output for `cmd` to out_path."""
    with open(out_path, "ab") as f:
        p = CHILDREN.popen([GEN, *cmd, "--out", "-"], stdout=f, stderr=subprocess.PIPE, text=True)
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        finally:
            CHILDREN.forget(p)
    if p.returncode != 0:
        raise RuntimeError(f"gen-promotions {' '.join(cmd)} exited {p.returncode}: {err.strip()}")


def make_feeds(work, rows):
    """The three feeds and the ids wrk asks for; reused when already made for `rows`."""
    meta_path = work / f"feeds-{rows}.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if all(Path(ROOT / p).exists() for p in [meta["ids"], *meta["feeds"].values()]):
            return meta
    core = rows * 8 // 10
    tail = rows - core
    if core < 1 or tail < 1:
        raise SystemExit("--rows must be at least 5")
    log(f"generating three feeds of {rows:,} rows ({core:,} shared, {tail:,} differing)")
    ids = work / f"ids-{rows}.txt"
    core_csv = work / f"core-{rows}.csv.tmp"
    check([GEN, "--rows", core, "--seed", 1, "--out", core_csv, "--ids-out", ids,
           "--ids-sample", min(100_000, core)], 1800)
    id_list = ids.read_text().split()
    first_row = core_csv.open().readline().strip().split(",")
    assert first_row[0] == id_list[0], "the first sampled id is the first row's"
    feeds = {}
    reprice = {}
    for name, seed, extra in [("a", 2, []), ("b", 3, []), ("c", 4, ["--duplicates", "0.05"])]:
        path = work / f"feed-{rows}-{name}.csv"
        shutil.copyfile(core_csv, path)
        append_generated(["--rows", str(tail), "--seed", str(seed), *extra], path)
        if name == "b":
            # A new price for every id wrk asks for: later rows win.
            rng = random.Random(rows)
            with path.open("a") as f:
                for i in id_list:
                    price = f"{rng.randint(10_000, 100_000_000) / 1e6:.6f}"
                    reprice.setdefault(i, price)
                    f.write(f"{i},{price},2026-06-30 12:00:00 +0200 CEST\n")
        feeds[name] = rel(path)
    core_csv.unlink()
    probe = id_list[0]
    meta = {"rows": rows, "core": core, "tail": tail, "ids": rel(ids),
            "id_count": len(id_list), "feeds": feeds, "probe": probe,
            "probe_price": {"a": first_row[1], "b": reprice[probe], "c": first_row[1]}}
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


# ---------------------------------------------------------------------------
# Talking to the server
# ---------------------------------------------------------------------------

def http_get(url, timeout=10):
    """(status, headers, body); 4xx and 5xx are answers, not exceptions."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def parse_metrics(text):
    """{(name, ((label, value), ...)): value} from the Prometheus text format."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not m:
            continue
        labels = tuple(sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(ms, name, **labels):
    return ms.get((name, tuple(sorted(labels.items()))), 0.0)


def statuses(ms, route="promotions"):
    return {dict(l)["status"]: int(v) for (n, l), v in ms.items()
            if n == "promo_http_requests_total" and dict(l).get("route") == route}


class Serve(processes.Serve):
    """promo serve, one of CHILDREN, its output in `log_path`."""

    def __init__(self, data_dir, log_path):
        self.log = open(log_path, "wb")
        try:
            super().__init__(data_dir, limit=120, timeout=2, popen=CHILDREN.popen, stdout=self.log,
                             stderr=subprocess.STDOUT)
        except RuntimeError as e:
            raise RuntimeError(f"{e}; see {log_path}") from None

    def metrics(self):
        return parse_metrics(http_get(self.url + "/metrics")[2].decode())

    def stop(self):
        code = super().stop(timeout=40, kill=True)  # promo serve drains for up to 30 s
        CHILDREN.forget(self.proc)
        self.log.close()
        return code


# ---------------------------------------------------------------------------
# Load, publishing, sampling
# ---------------------------------------------------------------------------

UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def wrk(url, ids, seconds):
    cmd = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency",
           "-s", WRK_SCRIPT, url]
    code, text, err = CHILDREN.run(cmd, seconds + 120, env={**os.environ, "IDS": str(ids)})
    if code != 0:
        raise RuntimeError(f"wrk exited {code}: {err.strip()}")

    def dur(value, unit):
        return float(value) * UNIT[unit]

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        return dur(*m.groups())

    lat = re.search(r"^\s+Latency\s+([\d.]+)(us|ms|s|m)\s+([\d.]+)(us|ms|s|m)\s+([\d.]+)(us|ms|s|m)", text, re.M)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "seconds": seconds,
        "requests": int(re.search(r"(\d+) requests in", text).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50": pct(50), "p99": pct(99), "max": dur(lat.group(5), lat.group(6)),
        "socket_errors": dict(zip(["connect", "read", "write", "timeout"],
                                  map(int, errors.groups()) if errors else [0] * 4)),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "text": text,
    }


class Publisher(threading.Thread):
    """Builds the next feed every `every` seconds, from `start` until `stop` is set."""

    def __init__(self, data_dir, feeds, every, start, end, stop, first_sequence, serve_pid):
        super().__init__(daemon=True)
        self.data_dir, self.feeds, self.every, self.start_at, self.stop = data_dir, feeds, every, start, stop
        self.end_at, self.serve_pid = end, serve_pid
        self.sequence = first_sequence
        self.expected = {first_sequence: "a"}  # sequence -> feed, registered before the build
        self.published = []  # dicts: t (seconds since start), sequence, feed, seconds, line
        self.failed = []
        self.skipped = 0
        # True from the start of a build until its swap is watched through: a sample
        # taken meanwhile may see two generations mapped, rightly.
        self.busy = False
        self.error = None

    def run(self):
        try:
            names = ["b", "c", "a"]
            k = 1
            while True:
                at = self.start_at + k * self.every
                if at >= self.end_at - 1 or self.stop.wait(max(0.0, at - time.time())):
                    return
                name = names[(len(self.published) + len(self.failed)) % 3]
                self.expected[self.sequence + 1] = name
                self.busy = True
                began = time.time()
                code, out, err = CHILDREN.run([PROMO, "build", ROOT / self.feeds[name],
                                               "--data-dir", self.data_dir, *GUARDS_OFF], 600)
                entry = {"t": began - self.start_at, "done": time.time() - self.start_at, "feed": name,
                         "seconds": time.time() - began}
                m = re.search(r"generation=(\d+)", out)
                if code == 0 and m:
                    self.sequence = int(m.group(1))
                    entry.update(sequence=self.sequence, line=unrooted(out.strip()))
                    entry.update(self.watch_swap(self.sequence))
                    self.published.append(entry)
                    figures = " ".join(re.findall(r"\b(?:churn|price_jump_share)=\S+", out))
                    log(f"published generation {self.sequence} (feed {name}, {figures}) in {entry['seconds']:.2f} s; "
                        f"{entry['drain']:.2f} s later it was the only generation file mapped "
                        f"(at most {entry['mapped_max']} mapped meanwhile)")
                else:
                    entry.update(code=code, stderr=err.strip()[-2000:])
                    self.failed.append(entry)
                    log(f"build of feed {name} failed ({code}): {err.strip()[-500:]}")
                self.busy = False
                # The next slot after now: a slow build skips slots, it does not bunch them.
                after = max(k + 1, int((time.time() - self.start_at) / self.every) + 1)
                self.skipped += after - (k + 1)
                k = after
        except Exception as e:  # reported by the main thread
            self.error = repr(e)


    def watch_swap(self, sequence, limit=10.0):
        """Polls the server's maps after a publish until the new generation is the only
        one mapped: how long that took and the most files mapped meanwhile."""
        name = generation_name(sequence)
        began = time.time()
        most = 0
        while time.time() - began < limit:
            mapped = mapped_generations(self.serve_pid)
            most = max(most, len(mapped))
            if [n.split()[0] for n in mapped] == [name]:
                return {"drain": time.time() - began, "mapped_max": most, "drained": True}
            time.sleep(0.02)
        return {"drain": time.time() - began, "mapped_max": most, "drained": False}


def generation_name(sequence):
    return f"gen-{sequence:010d}.promo"


class Sampler(threading.Thread):
    def __init__(self, serve, probe, start, stop, publisher):
        super().__init__(daemon=True)
        self.serve, self.probe, self.start_at, self.stop, self.publisher = serve, probe, start, stop, publisher
        self.samples = []
        self.error = None

    def run(self):
        try:
            while not self.stop.is_set():
                self.samples.append(sample(self.serve, self.probe, self.start_at, self.publisher))
                self.stop.wait(SAMPLE_SECONDS)
        except Exception as e:
            self.error = repr(e)


def sample(serve, probe, start, publisher):
    busy = bool(publisher and publisher.busy)
    last = publisher.published[-1]["done"] if publisher and publisher.published else None
    s = {"t": time.time() - start, **proc_sample(serve.proc.pid)}
    status, headers, body = http_get(f"{serve.url}/promotions/{probe}")
    s["probe_status"] = status
    s["probe_generation"] = int(headers.get("x-promo-generation", "0"))
    s["probe_price"] = str(json.loads(body, parse_float=Decimal).get("price")) if status == 200 else None
    ms = serve.metrics()
    s["live"] = int(metric(ms, "promo_generation_sequence"))
    s["since_publish"] = None if last is None else s["t"] - last
    # Settled: no build or swap under way while the sample was taken, and the last one long enough ago.
    s["settled"] = not busy and not (publisher and publisher.busy) and (
        s["since_publish"] is None or s["since_publish"] >= SETTLE_SECONDS)
    return s


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def mib(n):
    return f"{n / MIB:,.1f} MiB"


def ms_(s):
    return f"{s * 1e3:.2f} ms"


def summarize(r):
    """The checks: a list of (ok, text)."""
    checks = []
    st = r["statuses"]
    total = sum(st.values())
    other = {k: v for k, v in st.items() if k not in ("200", "404") and v}
    checks.append((not other, f"promo answered only 200 and 404 under /promotions/ "
                                f"({total:,} answers; others: {other or 'none'})"))
    miss = st.get("404", 0) / total if total else 0
    checks.append((0.09 <= miss <= 0.11, f"404s are {miss:.2%} of answers (10% of wrk's lookups are absent ids; "
                                         f"accepted 9% to 11%)"))
    se = r["wrk_socket_errors"]
    checks.append((sum(se.values()) == 0, "no wrk socket errors (" + ", ".join(f"{k} {v}" for k, v in se.items()) + ")"))
    pub = r["published"]
    # Slots at every, 2*every, ... up to a second before the load ends.
    expected = math.ceil((r["minutes"] * 60 - 1) / r["every"]) - 1
    checks.append((not r["builds_failed"] and pub >= 1 and pub + r["skipped"] == expected,
                   f"{pub} generations published ({expected} slots, {r['skipped']} skipped because a build "
                   f"overran), {r['builds_failed']} builds failed"))
    checks.append((r["swaps"] == pub + 1 and r["load_failures"] == 0,
                   f"promo swapped {r['swaps']} times (the first generation and each published one: {pub + 1}), "
                   f"load failures {r['load_failures']}"))
    checks.append((r["live_end"] == r["last_sequence"],
                   f"live generation at the end is {r['live_end']}, the last published is {r['last_sequence']}"))
    checks.append((r["probe_bad"] == 0,
                   f"{r['probe_count']} probe lookups answered 200 with the price of the feed their "
                   f"x-promo-generation names ({r['probe_bad']} did not)"))
    q0, q1 = r["quiet_before"], r["quiet_after"]
    checks.append((q1["fds"] == q0["fds"], f"open fds with no load: {q0['fds']} before, {q1['fds']} after"))
    fd_bound = q0["fds"] + WRK_CONNECTIONS + 4
    checks.append((r["fds_max"] <= fd_bound, f"open fds under load at most {r['fds_max']} "
                                             f"(bound: {q0['fds']} idle + {WRK_CONNECTIONS} connections + 4)"))
    checks.append((q1["mapped"] == 1, f"generation files mapped at the end: {q1['mapped']} ({', '.join(q1['mapped_names'])})"))
    checks.append((r["unsettled_bad"] == 0,
                   f"every sample taken with no build under way and {SETTLE_SECONDS:.0f} s or more after the last "
                   f"publish maps exactly one generation file ({r['settled']} such samples, "
                   f"{r['unsettled_bad']} did not)"))
    checks.append((not r["swap_undrained"],
                   f"after each of the {r['published']} swaps the new generation was soon the only file mapped "
                   f"(median {r['drain_median']:.2f} s, max {r['drain_max']:.2f} s after the build returned; "
                   f"not within 10 s: {r['swap_undrained'] or 'none'})"))
    most = max(r["mapped_max"], r["swap_mapped_max"])
    checks.append((most <= 2, f"at most {most} generation files mapped at once (bound 2: the old one until its "
                              f"requests finish, and the new one)"))
    a = r["anon"]
    checks.append((a["flat"], f"anonymous RSS flat: {mib(a['end'])} at the end against {mib(a['base'])} "
                              f"after warm-up (margin {mib(a['margin'])})"))
    for key, name in [("file", "file-backed RSS"), ("rss", "RSS")]:
        f = r[f"{key}_settled"]
        checks.append((f["flat"], f"{name} flat, on samples with one generation mapped: {mib(f['end'])} at the end "
                                  f"against {mib(f['base'])} after warm-up (margin {mib(f['margin'])})"))
    checks.append((r["serve_exit"] == 0, f"promo serve exited {r['serve_exit']} on SIGTERM"))
    return checks


def render(r, checks):
    m = r["machine"]
    st = r["statuses"]
    total = sum(st.values())
    other = sum(v for k, v in st.items() if k not in ("200", "404"))
    wrk_total = sum(s["requests"] for s in r["slices"])
    lines = [
        "# Soak", "",
        f"Written by `make soak` (scripts/soak.py) on {r['date']}.",
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}. "
        "Figures move with whatever else the machine runs.",
        f"promo built from `{r['revision']}` (`-dirty`: with uncommitted changes).", "",
        "## Settings", "",
        f"- load: `IDS={r['ids']} wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d60s --latency -s scripts/wrk-lookups.lua` "
        f"against `promo serve --listen 127.0.0.1:PORT`, {r['minutes']:g} minute(s) in {len(r['slices'])} back-to-back slice(s); "
        f"90% of lookups are ids present in every generation ({r['id_count']:,} sampled ids), 10% random absent ids",
        f"- publishing: `promo build FEED --data-dir {r['data_dir']} --max-churn off --max-price-jumps off` every "
        f"{r['every']:g} s, feeds a, b, c in turn "
        f"({r['rows']:,} rows each: {r['core']:,} shared, {r['tail']:,} differing; b also reprices every looked-up id, "
        "c has 5% duplicates); the churn and price-jump guards off (this measures swaps, and the feeds churn "
        f"{churn_range(r)}), default retention (`--keep 3`), `--max-shrink` on, no `--force`",
        f"- sampling: /proc/PID/status, fd and maps of the server every {SAMPLE_SECONDS} s, with one probe lookup "
        "and a /metrics scrape", "",
        "## Requests", "",
        "| | count |", "|---|---:|",
        f"| requests answered (promo's `promo_http_requests_total{{route=\"promotions\"}}`) | {total:,} |",
        f"| 200 | {st.get('200', 0):,} |",
        f"| 404 (absent ids) | {st.get('404', 0):,} ({st.get('404', 0) / max(total, 1):.2%}) |",
        f"| any other status | {other:,} |",
        f"| requests counted by wrk | {wrk_total:,} |",
        f"| wrk's non-2xx/3xx (wrk counts the 404s there) | {sum(s['non2xx'] for s in r['slices']):,} |",
        "| promo's lookups: hit / miss / invalid | " + " / ".join(f"{r['lookups'][k]:,}" for k in ["hit", "miss", "invalid"]) + " |",
        "| wrk socket errors | " + ", ".join(f"{k} {v}" for k, v in r["wrk_socket_errors"].items()) + " |",
        f"| requests/s (wrk, over the run) | {wrk_total / max(sum(s['seconds'] for s in r['slices']), 1):,.0f} |",
        f"| generations published / builds failed / slots skipped (build overran) | "
        f"{r['published']} / {r['builds_failed']} / {r['skipped']} |",
        f"| promo swaps / load failures | {r['swaps']} / {r['load_failures']} |",
        f"| build time (median, max) | {r['build_median']:.2f} s, {r['build_max']:.2f} s |", "",
        "## Latency per minute (wrk)", "",
        "| minute | requests/s | p50 | p99 | max | non-2xx | socket errors | generations published |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, s in enumerate(r["slices"]):
        lines.append(f"| {i + 1} | {s['rps']:,.0f} | {ms_(s['p50'])} | {ms_(s['p99'])} | {ms_(s['max'])} | "
                     f"{s['non2xx']:,} | {sum(s['socket_errors'].values())} | {s['published']} |")
    lines += ["", "## Server process", "",
              f"{len(r['samples'])} samples under load; \"idle\" samples were taken with no load and no build, "
              f"before and after. Warm-up: the first {r['warmup']:g} s; \"after warm-up\" is the first sample after it.", "",
              "| | idle before | first sample | after warm-up | end of load | min | max | idle after |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, name, f in [("rss", "RSS", mib), ("anon", "RssAnon", mib), ("file", "RssFile", mib),
                         ("fds", "open fds", str), ("mapped", "generation files mapped", str)]:
        row = r["table"][key]
        lines.append(f"| {name} | {f(r['quiet_before'][key])} | {f(row['first'])} | {f(row['base'])} | {f(row['end'])} | "
                     f"{f(row['min'])} | {f(row['max'])} | {f(r['quiet_after'][key])} |")
    mc = r["mapped_counts"]
    lines += ["", "Generation files mapped, over all samples: " +
              ", ".join(f"{k}: {v} samples" for k, v in sorted(mc.items())) +
              f" (typical {r['mapped_typical']}, max {r['mapped_max']}). Watched every 20 ms from each publish "
              f"until only the new generation was mapped: at most {r['swap_mapped_max']} files mapped at once, "
              f"back to 1 after {r['drain_median']:.2f} s (median) and {r['drain_max']:.2f} s (max); that time "
              "includes the server's 200 ms directory poll and its verification of the new file. The data directory keeps "
              f"three generations; a file still mapped after retention deleted it shows as \"(deleted)\" "
              f"in /proc/PID/maps and is counted. One generation file is {mib(r['gen_bytes'])}.",
              "", "## Verdict", ""]
    for ok, text in checks:
        lines.append(f"- {'PASS' if ok else 'FAIL'}: {text}")
    verdict = all(ok for ok, _ in checks)
    lines += ["", f"**{'PASS' if verdict else 'FAIL'}**", "",
              f"Raw results: `{r['results_path']}`; the server's log: `{r['serve_log']}`.", ""]
    return "\n".join(lines), verdict


def build_figures(r):
    """(churn %, price_jump_share %) of each published build, from its summary line."""
    out = []
    for b in r.get("builds", []):
        c = re.search(r"\bchurn=([\d.]+)%", b.get("line", ""))
        j = re.search(r"\bprice_jump_share=([\d.]+)%", b.get("line", ""))
        if c and j:
            out.append((float(c.group(1)), float(j.group(1))))
    return out


def churn_range(r):
    """The builds' churn and price-jump share, as the report says them."""
    figures = build_figures(r)
    if not figures:
        return "nothing measured: no build published"
    churn, jumps = [c for c, _ in figures], [j for _, j in figures]
    return (f"{min(churn):.2f}% to {max(churn):.2f}% a swap, price_jump_share {min(jumps):.2f}% to "
            f"{max(jumps):.2f}%, over {len(figures)} builds")


def flat(first, end, margin):
    return {"base": first, "end": end, "margin": margin, "flat": end <= first + margin}


def analyse(r, samples, publisher, slices):
    """Fills r with what the report needs from the samples, slices and builds."""
    warm = [s for s in samples if s["t"] >= r["warmup"]] or samples[-1:]
    settled = [s for s in samples if s["settled"]]
    r["table"] = {}
    for key in ["rss", "anon", "file", "fds", "mapped"]:
        vals = [s[key] for s in samples]
        r["table"][key] = {"first": vals[0], "base": warm[0][key], "end": vals[-1], "min": min(vals), "max": max(vals)}
    anon_base = warm[0]["anon"]
    r["anon"] = flat(anon_base, samples[-1]["anon"], max(8 * MIB, anon_base // 10))
    # RssFile, and so RSS, is one generation file more while a swap has both mapped:
    # compare samples with one generation mapped.
    warm_settled = [s for s in warm if s in settled and s["mapped"] == 1] or warm
    for key in ["file", "rss"]:
        base = warm_settled[0][key]
        r[f"{key}_settled"] = flat(base, warm_settled[-1][key], max(8 * MIB, base // 10))
    r["fds_max"] = max(s["fds"] for s in samples)
    counts = collections.Counter(s["mapped"] for s in samples)
    r["mapped_counts"] = dict(counts)
    r["mapped_typical"] = counts.most_common(1)[0][0]
    r["mapped_max"] = max(counts)
    swaps = publisher.published
    r["swap_mapped_max"] = max((p["mapped_max"] for p in swaps), default=1)
    r["swap_undrained"] = [p["sequence"] for p in swaps if not p["drained"]]
    drains = [p["drain"] for p in swaps] or [0.0]
    r["drain_median"], r["drain_max"] = statistics.median(drains), max(drains)
    r["settled"] = len(settled)
    r["unsettled_bad"] = sum(1 for s in settled if s["mapped"] != 1)
    bad = []
    for s in samples:
        feed = publisher.expected.get(s["probe_generation"])
        want = r["probe_price"].get(feed) if feed else None
        if s["probe_status"] != 200 or want is None or Decimal(s["probe_price"]) != Decimal(want):
            bad.append(s)
    r["probe_count"] = len(samples)
    r["probe_bad"] = len(bad)
    r["probe_bad_samples"] = bad[:10]
    r["published"] = len(publisher.published)
    r["builds_failed"] = len(publisher.failed)
    r["skipped"] = publisher.skipped
    times = [p["seconds"] for p in publisher.published] or [0.0]
    r["build_median"], r["build_max"] = statistics.median(times), max(times)
    r["last_sequence"] = publisher.sequence
    for s in slices:
        s["published"] = sum(1 for p in publisher.published if s["start"] <= p["t"] < s["end"])
    r["slices"] = [{k: v for k, v in s.items() if k != "text"} for s in slices]
    r["wrk_socket_errors"] = {k: sum(s["socket_errors"][k] for s in slices)
                              for k in ["connect", "read", "write", "timeout"]}


# ---------------------------------------------------------------------------

def soak(args, work):
    results = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
               "machine": machine(), "revision": revision(), "minutes": args.minutes, "every": args.every, "rows": args.rows}
    meta = make_feeds(work, args.rows)
    results.update(core=meta["core"], tail=meta["tail"], id_count=meta["id_count"], ids=meta["ids"],
                   probe_price=meta["probe_price"])
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    results["data_dir"] = rel(data)
    log("publishing the first generation (feed a)")
    first = check([PROMO, "build", ROOT / meta["feeds"]["a"], "--data-dir", data, *GUARDS_OFF], 600)
    first_sequence = int(re.search(r"generation=(\d+)", first).group(1))
    results["gen_bytes"] = sorted(data.glob("gen-*.promo"))[-1].stat().st_size
    serve_log = work / "serve.log"
    results["serve_log"] = rel(serve_log)
    serve = Serve(data, serve_log)
    log(f"promo serve on {serve.url}, pid {serve.proc.pid}")
    ids = ROOT / meta["ids"]
    wrk(serve.url, ids, 2)  # warm the page cache and the connections' code paths
    time.sleep(1)
    stop = threading.Event()
    start = time.time()
    total = args.minutes * 60
    publisher = Publisher(data, meta["feeds"], args.every, start, start + total, stop, first_sequence,
                          serve.proc.pid)
    results["quiet_before"] = sample(serve, meta["probe"], start, publisher)
    ms = serve.metrics()  # the warm-up's answers are not the soak's
    before = statuses(ms)
    lookups_before = {r: metric(ms, "promo_lookups_total", result=r) for r in ["hit", "miss", "invalid"]}
    publisher.start()
    sampler = Sampler(serve, meta["probe"], start, stop, publisher)
    sampler.start()
    slices = []
    try:
        done = 0.0
        while done < total - 0.5:
            seconds = max(1, int(min(60, round(total - done))))
            t0 = time.time() - start
            log(f"wrk slice {len(slices) + 1}: {seconds} s")
            s = wrk(serve.url, ids, seconds)
            s.update(start=t0, end=time.time() - start)
            slices.append(s)
            log(f"  {s['rps']:,.0f} requests/s, p50 {ms_(s['p50'])}, p99 {ms_(s['p99'])}, "
                f"non-2xx {s['non2xx']}, socket errors {sum(s['socket_errors'].values())}")
            done += seconds
            if publisher.error or sampler.error:
                raise RuntimeError(f"publisher: {publisher.error}; sampler: {sampler.error}")
    finally:
        stop.set()
        publisher.join(timeout=120)
        sampler.join(timeout=60)
    results["load_seconds"] = time.time() - start
    if publisher.error or sampler.error:
        raise RuntimeError(f"publisher: {publisher.error}; sampler: {sampler.error}")
    time.sleep(SETTLE_SECONDS + 1)  # let the last swap land and its requests drain
    results["quiet_after"] = sample(serve, meta["probe"], start, publisher)
    ms = serve.metrics()
    after = statuses(ms)
    results["statuses"] = {k: v - before.get(k, 0) for k, v in after.items()}
    results["lookups"] = {r: int(metric(ms, "promo_lookups_total", result=r) - lookups_before[r])
                          for r in ["hit", "miss", "invalid"]}
    results["swaps"] = int(metric(ms, "promo_generation_swaps_total"))
    results["load_failures"] = int(metric(ms, "promo_generation_load_failures_total"))
    results["live_end"] = int(metric(ms, "promo_generation_sequence"))
    results["serve_exit"] = serve.stop()
    results["warmup"] = min(30.0, total / 4)
    results["builds"] = publisher.published + publisher.failed
    results["samples"] = sampler.samples
    analyse(results, sampler.samples, publisher, slices)
    return results


def interrupted(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10, help="minutes of load (default 10)")
    ap.add_argument("--every", type=float, default=20, help="seconds between published generations (default 20)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows per feed (default 1,000,000)")
    ap.add_argument("--work", type=Path, default=BENCH_DATA, help="where everything goes (default bench-data/)")
    ap.add_argument("--no-build", action="store_true", help="skip `cargo build --release --bins`")
    args = ap.parse_args()
    if not 0 < args.minutes <= 24 * 60 or args.every < 2:
        ap.error("--minutes must be in (0, 1440] and --every at least 2")
    # SIGTERM and SIGHUP end the run like Ctrl-C (SIGINT): the finally below stops the children.
    signal.signal(signal.SIGTERM, interrupted)
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:  # leave nohup's choice alone
        signal.signal(signal.SIGHUP, interrupted)
    work = args.work.resolve()
    soak_dir = work / "soak"
    soak_dir.mkdir(parents=True, exist_ok=True)
    try:
        ensure_tools()
        if not args.no_build:
            log("building promo (release)")
            check(["cargo", "build", "--release", "--bins"], 3600, cwd=ROOT)
        results = soak(args, soak_dir)
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    except Exception as e:
        log(f"error: {e}; stopping everything")
        return 2
    finally:
        CHILDREN.stop_all()
    results_path = soak_dir / "results.json"
    results["results_path"] = rel(results_path)
    checks = summarize(results)
    report, ok = render(results, checks)
    results_path.write_text(json.dumps(results, indent=2, default=str))
    (work / "SOAK.md").write_text(report)
    print(report)
    log(f"wrote {rel(work / 'SOAK.md')}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
