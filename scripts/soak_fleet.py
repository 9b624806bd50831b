"""`make soak-fleet`: the whole fleet through an hour of faults, in bounded memory.

    python3 -m scripts.soak_fleet [--minutes 10] [--rows 200000] [--keep 3]

The fleet of the fleet tests, as processes on this machine: the S3 server
s3s-fs as the store, a builder (`promo build --publish`, with the feed
guards at their defaults, as the deploy files leave them: --max-churn 50%,
--max-price-jumps 5%, --max-shrink 50%), two replicas
(`promo serve --source`, polling every second) and nginx with
deploy/nginx/promo.conf in front. Client threads loop through nginx on
lookups of ids every feed holds (200), of random ids (404) and on batches
of 100 ids. Meanwhile, on a fixed schedule:

- every 20 s a publish: a good feed (a fifth of its ids new each time);
  every 4th instead a corrupt object (a byte flipped, put in the store
  under the next sequence as a builder would), every 7th a feed that
  replaces every id (200% churn), which the builder's default --max-churn
  must refuse (exit 3, the refusal naming --max-churn);
- every 60 s replica A is killed with SIGKILL and started again at once,
  every other time with an empty data directory; replica B runs the whole
  time, the one whose memory and descriptors say whether anything leaks;
- every 5 minutes (first at 2:30) the store goes away for 30 s (its
  process stopped; it comes back with the same files on the same port).

The network misbehaves too (scripts/faultproxy.py, a fault-injecting TCP
proxy): the builder and the replicas reach the store through one with
50 ms of latency each way and a 10 MiB/s cap the whole time, which every
5 minutes also resets connections at random for a minute (first at 1:00)
and blackholes the store for 30 s (it accepts connections and answers
nothing; first at 4:00); nginx reaches replica A through another, which
every 5 minutes slows that link to 200 ms each way for a minute (first at
3:00). The report gives p99 at the client with the slow link and without,
the replicas' delta and full byte counters and the fallbacks.

Checks (PASS or FAIL lines; exit 1 if one fails): no failed request at the
client (a status other than 200 and 404, a wrong or missing id, a
connection error); no answer from a generation older than the one before
the newest good one, and none from a corrupt one; each publish ended as its
kind and the store's state say it must; the store holds exactly --keep
generations after each good publish; both replicas end on the newest;
replica B's RSS and open descriptors other than sockets (files, the epoll
and event fds), the medians of the last 20% of the run, within 5% of those
of the first 20%. Sockets are reported, not checked: nginx moves its
keep-alive connections to B while A is down and closes them idle a minute
later, so their count follows the faults, not a leak. Replica A's figures
are reported too, from samples taken 20 s or more after each of its
starts. The report goes to stdout and bench-data/SOAK-FLEET.md; the
processes' files are under bench-data/soak-fleet/.
"""

import argparse
import http.client
import json
import math
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from . import bench_fleet, procfs
from .faultproxy import FaultProxy
from .paths import BENCH_DATA, GEN, PROMO, ROOT, revision
from .processes import Serve, free_port, stop, stop_all
# No guard options: the builds run with promo's defaults (--max-churn 50%,
# --max-price-jumps 5%), as every deploy file does. A good feed churns about
# 40% (a fifth of the ids replaced) and keeps every shared price; the
# replacing feed churns 200% and must be refused.
PUBLISH_EVERY, KILL_EVERY = 20, 60
OUTAGE_EVERY, OUTAGE_FIRST, OUTAGE_SECONDS = 300, 150, 30
SAMPLE_EVERY = 5
# The network (see the docstring): seconds into each 5 minutes.
LATENCY, RATE = 0.05, 10 * 2**20
RESETS_AT, RESETS_SECONDS, RESET_AFTER = 60, 60, 2 * 2**20
SLOW_AT, SLOW_SECONDS, SLOW_LATENCY = 180, 60, 0.2
BLACKHOLE_AT, BLACKHOLE_SECONDS = 240, 30
CYCLE = 300
SETTLED_AFTER_START = 20  # seconds before a restarted replica's samples count
CLIENTS, BATCH_IDS = 3, 100
MIB = 2**20


def log(msg):
    print(f"[soak-fleet {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Clock:
    def __init__(self, minutes):
        self.start = time.time()
        self.end = self.start + minutes * 60
        self.stop = threading.Event()

    def now(self):
        return time.time() - self.start

    def wait_until(self, t):
        """False once the run is over or stopped; else sleeps until `t` s into it."""
        if self.start + t >= self.end:
            return False
        return not self.stop.wait(max(0.0, self.start + t - time.time()))


class Feeds:
    """A core every good feed holds (the client's ids), plus a fifth that
    changes with each good feed; and a feed with none of those ids."""

    def __init__(self, work, rows):
        self.dir = work / "feeds"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.core, tail = rows * 4 // 5, rows - rows * 4 // 5
        core = self.dir / f"core-{rows}.csv"
        ids = self.dir / f"ids-{rows}.txt"
        if not core.exists() or not ids.exists():
            run([GEN, "--rows", self.core, "--seed", 1, "--out", core, "--ids-out", ids,
                 "--ids-sample", min(20_000, self.core)])
        self.ids = ids.read_text().split()
        self.good = []
        for seed in (2, 3, 4):
            path = self.dir / f"good-{rows}-{seed}.csv"
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                shutil.copyfile(core, tmp)
                with tmp.open("ab") as f:
                    subprocess.run([GEN, "--rows", str(tail), "--seed", str(seed), "--out", "-"],
                                   stdout=f, check=True)
                tmp.rename(path)
            self.good.append(path)
        self.replaced = self.dir / f"replaced-{rows}.csv"
        if not self.replaced.exists():
            run([GEN, "--rows", rows, "--seed", 99, "--out", self.replaced])


def run(cmd, env=None, check=True):
    p = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}: {p.stderr[-2000:]}")
    return p


class Replica:
    def __init__(self, name, work, store, running):
        self.name, self.store, self.running = name, store, running
        self.dir = work / f"replica-{name}"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.port = free_port()
        self.log = (work / f"replica-{name}.log").open("ab")
        self.starts = []  # (seconds into the run, emptied, seconds until ready)
        self.proc = None

    def start(self, t, empty):
        if empty:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.proc = Serve(self.dir, "--source", self.store.url, "--source-interval", "1",
                          port=self.port, ready=None, running=self.running, env=self.store.env,
                          stdout=self.log, stderr=self.log).proc
        self.starts.append({"t": t, "empty": empty, "ready": None, "pid": self.proc.pid})

    def ready(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            c.request("GET", "/readyz")
            r = c.getresponse()
            body = r.read().decode()
            c.close()
            return int(body.split()[-1]) if r.status == 200 else 0
        except (OSError, ValueError, http.client.HTTPException):
            return 0

    def kill(self):
        stop(self.proc, signal.SIGKILL, None)


class Store:
    """The S3 server, what is in it (read from its directory), and the
    fault proxy every promo process reaches it through."""

    def __init__(self, work, running):
        self.s3 = bench_fleet.S3Server(work, running)
        self.proxy = FaultProxy(self.s3.port)
        self.proxy.set(latency=LATENCY, rate=RATE)
        self.url = self.s3.url
        self.env = {**self.s3.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.proxy.port}"}
        self.dir = self.s3.root / bench_fleet.BUCKET / bench_fleet.PREFIX
        self.up = True
        self.dark = False  # blackholed by the proxy

    def manifests(self):
        return sorted((self.dir / "manifests").glob("*.json"))

    def objects(self):
        return sorted(p for p in (self.dir / "generations").glob("*.promo"))

    def newest_sequence(self):
        m = self.manifests()
        return int(m[-1].stem) if m else 0


class Run:
    def __init__(self, args, work):
        self.args, self.work = args, work
        self.clock = Clock(args.minutes)
        self.lock = threading.Lock()
        self.good = []        # sequences of good generations, in order
        self.corrupt = set()  # sequences of corrupt objects put in the store
        self.publishes = []   # {t, kind, code, sequence, outage, ok, why}
        self.outages = []     # (start, end) seconds into the run
        self.requests = {"lookup": 0, "miss": 0, "batch": 0}
        self.failures = []    # (t, what)
        self.failure_count = 0
        self.stale = []       # (t, generation, floor)
        self.corrupt_answers = 0
        self.samples = []     # {t, replica, pid, rss, anon, fds, since_start}
        self.errors = []      # exceptions in fault threads
        self.network = []     # (fault, start, end) seconds into the run
        self.slow = False     # nginx's link to replica A slowed now
        self.latencies = {False: Histogram(), True: Histogram()}  # by self.slow

    # --- the client -------------------------------------------------------

    def floor(self):
        with self.lock:
            return self.good[-2] if len(self.good) >= 2 else (self.good[-1] if self.good else 0)

    def fail(self, what):
        with self.lock:
            self.failure_count += 1
            if len(self.failures) < 50:
                self.failures.append((round(self.clock.now(), 1), what))

    def check_generation(self, generation, floor):
        if generation in self.corrupt:
            with self.lock:
                self.corrupt_answers += 1
        if generation < floor:
            with self.lock:
                self.stale.append((round(self.clock.now(), 1), generation, floor))

    def client(self, nginx_port, ids, seed):
        rng = random.Random(seed)
        conn = None
        while not self.clock.stop.is_set() and time.time() < self.clock.end:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", nginx_port, timeout=30)
            floor = self.floor()
            roll = rng.random()
            sent, slow = time.monotonic(), self.slow
            try:
                if roll < 0.05:
                    kind = "batch"
                    asked = rng.sample(ids, BATCH_IDS // 2) + [str(uuid.uuid4()) for _ in range(BATCH_IDS // 2)]
                    conn.request("POST", "/promotions/batch", body=json.dumps({"ids": asked}),
                                 headers={"content-type": "application/json"})
                else:
                    kind = "lookup" if roll < 0.85 else "miss"
                    asked = rng.choice(ids) if kind == "lookup" else str(uuid.uuid4())
                    conn.request("GET", f"/promotions/{asked}")
                r = conn.getresponse()
                body = r.read()
            except (OSError, http.client.HTTPException) as e:
                self.fail(f"{kind}: {type(e).__name__}: {e}")
                conn.close()
                conn = None
                continue
            with self.lock:
                self.requests[kind] += 1
                if kind != "batch":
                    self.latencies[slow or self.slow].add(time.monotonic() - sent)
            want = 404 if kind == "miss" else 200
            if r.status != want:
                self.fail(f"{kind}: status {r.status}: {body[:200]!r}")
                continue
            try:
                generation = int(r.headers.get("x-promo-generation", "0"))
                if kind == "batch":
                    answer = json.loads(body)
                    found = {p["id"] for p in answer["promotions"]}
                    if answer["generation"] != generation or found != set(asked[:BATCH_IDS // 2]) \
                            or set(answer["missing"]) != set(asked[BATCH_IDS // 2:]):
                        raise ValueError("the batch's answer is not what the generation holds")
                elif kind == "lookup" and json.loads(body)["id"] != asked:
                    raise ValueError("another id answered")
            except (ValueError, KeyError, TypeError) as e:
                self.fail(f"{kind}: {e}: {body[:200]!r}")
                continue
            self.check_generation(generation, floor)
        if conn:
            conn.close()

    # --- the faults -------------------------------------------------------

    def publisher(self, store, feeds, staged):
        builder = self.work / "builder"
        k = 0
        while self.clock.wait_until((k + 1) * PUBLISH_EVERY):
            k += 1
            t = self.clock.now()
            # A blackhole counts as an outage that may end during the
            # build: its requests time out and go out again.
            away, dark = not store.up, store.dark
            outage = away or dark
            if k % 4 == 0:
                sequence = store.newest_sequence() + 1
                put_corrupt(store, staged, sequence)
                with self.lock:
                    self.corrupt.add(sequence)
                entry = {"kind": "corrupt", "code": None, "sequence": sequence, "ok": True}
                log(f"publish {k}: a corrupt object as generation {sequence}")
            else:
                refused = k % 7 == 0
                feed = feeds.replaced if refused else feeds.good[k % len(feeds.good)]
                p = run([PROMO, "build", feed, "--data-dir", builder, "--publish", store.url,
                         "--keep", self.args.keep], env=store.env, check=False)
                m = re.search(r"as its generation (\d+)", p.stdout)
                sequence = int(m.group(1)) if m and p.returncode == 0 else None
                # Away for the whole build, it must fail; away for part of
                # it (the store went or came back meanwhile), either way.
                whole = away and not store.up and not dark and not store.dark
                outage = outage or not store.up or store.dark
                if refused:
                    ok, why = (p.returncode == 3 and "refused by --max-churn" in p.stderr,
                               "refused by the default --max-churn (exit 3)")
                elif whole:
                    ok, why = p.returncode not in (0, 3), "failed: the store is away"
                elif outage:
                    ok, why = p.returncode != 3, "published, or failed: the store came or went"
                else:
                    ok, why = p.returncode == 0 and sequence is not None, "published"
                entry = {"kind": "refused" if refused else "good", "code": p.returncode,
                         "sequence": sequence, "ok": ok, "expected": why,
                         **figures(p.stdout + p.stderr)}
                if not ok:
                    entry["stderr"] = p.stderr[-1000:]
                if sequence is not None and not refused:
                    with self.lock:
                        self.good.append(sequence)
                    # Retention has just run: what the store holds now.
                    entry["store"] = (len(store.manifests()), len(store.objects()))
                log(f"publish {k}: {entry['kind']} feed, exit {p.returncode}"
                    + (f", generation {sequence}" if sequence else "")
                    + "".join(f", {key}={entry[key]}%" for key in ("churn", "price_jump_share") if key in entry)
                    + ("" if ok else f": expected {why}: {p.stderr.strip()[-300:]}"))
            entry.update(t=round(t, 1), outage=outage)
            self.publishes.append(entry)

    def killer(self, a, b):
        k = 0
        while self.clock.wait_until((k + 1) * KILL_EVERY):
            k += 1
            # Never both down: B must be ready before A goes.
            while not b.ready() and not self.clock.stop.wait(0.5):
                pass
            empty = k % 2 == 1
            a.kill()
            a.start(self.clock.now(), empty)
            log("replica A killed (SIGKILL) and started again"
                + (" with an empty data directory" if empty else ""))
            began = time.time()
            while not a.ready() and time.time() - began < 120 and not self.clock.stop.wait(0.2):
                pass
            a.starts[-1]["ready"] = round(time.time() - began, 2) if a.ready() else None

    def outager(self, store):
        k = 0
        while self.clock.wait_until(OUTAGE_FIRST + k * OUTAGE_EVERY):
            began = self.clock.now()
            store.up = False
            store.s3.stop()
            log("the store is away for 30 s")
            self.clock.stop.wait(OUTAGE_SECONDS)
            store.s3.start()
            store.up = True
            self.outages.append((round(began, 1), round(self.clock.now(), 1)))
            log("the store is back")
            k += 1

    def networker(self, store, slow_link):
        """The network's faults, on their schedule (see the docstring)."""
        events = []
        for cycle in range(int(self.args.minutes * 60 // CYCLE) + 1):
            base = cycle * CYCLE
            events += [(base + RESETS_AT, "resets", RESETS_SECONDS),
                       (base + SLOW_AT, "slow link to A", SLOW_SECONDS),
                       (base + BLACKHOLE_AT, "blackhole", BLACKHOLE_SECONDS)]
        ends = []
        for at, fault, seconds in sorted(events):
            if not self.clock.wait_until(at):
                return
            if fault == "resets":
                store.proxy.set(latency=LATENCY, rate=RATE, reset_after=RESET_AFTER)
            elif fault == "blackhole":
                store.proxy.set(latency=LATENCY, rate=RATE, blackhole=True)
                store.dark = True
            else:
                slow_link.set(latency=SLOW_LATENCY)
                self.slow = True
            log(f"network: {fault} for {seconds} s")
            self.clock.stop.wait(max(0.0, self.clock.start + at + seconds - time.time()))
            if fault == "slow link to A":
                slow_link.set()
                self.slow = False
            else:
                store.proxy.set(latency=LATENCY, rate=RATE)
                store.dark = False
            self.network.append((fault, at, round(self.clock.now(), 1)))
            log(f"network: {fault} over")

    def sampler(self, replicas):
        k = 0
        while self.clock.wait_until((k + 1) * SAMPLE_EVERY):
            k += 1
            t = self.clock.now()
            for r in replicas:
                try:
                    s = procfs.sample(r.proc.pid)
                    sockets = procfs.socket_count(r.proc.pid)
                except (OSError, AttributeError):
                    continue  # between a kill and a start
                self.samples.append({"t": round(t, 1), "replica": r.name, "pid": r.proc.pid,
                                     "rss": s["rss"], "anon": s["anon"], "fds": s["fds"],
                                     "sockets": sockets, "files": s["fds"] - sockets,
                                     "since_start": round(t - r.starts[-1]["t"], 1)})

    def thread(self, target, *args):
        def guarded():
            try:
                target(*args)
            except Exception as e:  # noqa: BLE001: reported, and the run fails
                self.errors.append(f"{target.__name__}: {type(e).__name__}: {e}")
                log(f"{target.__name__} failed: {e}")
                self.clock.stop.set()
        t = threading.Thread(target=guarded, daemon=True)
        t.start()
        return t


class Histogram:
    """Latencies in log-spaced buckets (about 1% wide): an hour of requests
    in constant memory."""

    def __init__(self):
        self.counts = {}
        self.n = 0

    def add(self, seconds):
        b = int(math.log(max(seconds, 1e-6) * 1e6) * 100)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.n += 1

    def quantile(self, q):
        if not self.n:
            return None
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= q * self.n:
                return math.exp((b + 1) / 100) / 1e6
        return None


def fetch_figures(replica):
    """A replica's fetch counters: bytes by kind, fallbacks by reason."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", replica.port, timeout=5)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
    except (OSError, http.client.HTTPException):
        return {}
    out = {}
    for m in re.finditer(r'^promo_fetch_(bytes|delta_fallbacks)_total\{\w+="(\w+)"\} ([\d.e+]+)$',
                         text, re.M):
        out[f"{m.group(1)}:{m.group(2)}"] = float(m.group(3))
    return out


def stage_corrupt(work, store, feed):
    """A generation published under another prefix, a byte of it flipped:
    the object and manifest every corrupt publish copies."""
    staging = work / "staging-builder"
    shutil.rmtree(staging, ignore_errors=True)
    url = store.url.rsplit("/", 1)[0] + "/staging"
    run([PROMO, "build", feed, "--data-dir", staging, "--publish", url], env=store.env)
    staged = store.s3.root / bench_fleet.BUCKET / "staging"
    manifest = json.loads(sorted((staged / "manifests").glob("*.json"))[-1].read_text())
    data = bytearray((staged / manifest["object"]).read_bytes())
    data[len(data) // 2] ^= 0x40
    return manifest, bytes(data)


def put_corrupt(store, staged, sequence):
    manifest, data = staged
    manifest = dict(manifest, sequence=sequence,
                    object=f"generations/{sequence:010}-{random.getrandbits(64):016x}.promo")
    obj = store.dir / manifest["object"]
    tmp = store.dir / "generations" / ".incoming"
    tmp.write_bytes(data)
    tmp.rename(obj)
    tmp.write_text(json.dumps(manifest))
    tmp.rename(store.dir / "manifests" / f"{sequence:010}.json")


def figures(text):
    """The churn and price-jump share a build measured: from its summary
    line when it published, from its refusal when the churn guard refused."""
    out = {}
    for key in ("churn", "price_jump_share"):
        m = re.search(rf"\b{key}=([\d.]+)%", text)
        if m:
            out[key] = float(m.group(1))
    m = re.search(r"refused by --max-churn [\d.]+%: ([\d.]+)%", text)
    if m and "churn" not in out:
        out["churn"] = float(m.group(1))
    return out


def churn_figures(publishes):
    """'; churn ...' for the report: the range the good feeds measured, and the refused ones'."""
    parts = []
    for kind in ("good", "refused"):
        churn = [p["churn"] for p in publishes if p["kind"] == kind and "churn" in p]
        jumps = [p["price_jump_share"] for p in publishes if p["kind"] == kind and "price_jump_share" in p]
        if churn:
            parts.append(f"{kind} feeds churned {min(churn):.2f}% to {max(churn):.2f}%"
                         + (f" (price_jump_share at most {max(jumps):.2f}%)" if jumps else ""))
    return "; " + ", ".join(parts) if parts else ""


def median_of(samples, key, lo, hi):
    values = [s[key] for s in samples if lo <= s["t"] < hi]
    return statistics.median(values) if values else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rows", type=int, default=200_000, help="rows of each feed")
    ap.add_argument("--keep", type=int, default=3, help="the builder's --keep")
    ap.add_argument("--work", type=Path, default=BENCH_DATA / "soak-fleet")
    args = ap.parse_args()
    for binary in (PROMO, GEN):
        if not binary.exists():
            sys.exit(f"soak-fleet: {binary.relative_to(ROOT)} is missing: run make build")
    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
        sys.exit("soak-fleet: nginx is missing (make tools installs it)")
    work = args.work.resolve()
    for d in ("builder", "staging-builder"):
        shutil.rmtree(work / d, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    running = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        return soak(args, work, running)
    except KeyboardInterrupt:
        return 130
    finally:
        stop_all(running, timeout=35)


def soak(args, work, running):
    log(f"feeds of {args.rows:,} rows")
    feeds = Feeds(work, args.rows)
    store = Store(work, running)
    staged = stage_corrupt(work, store, feeds.good[0])
    run([PROMO, "build", feeds.good[0], "--data-dir", work / "builder", "--publish", store.url,
         "--keep", args.keep], env=store.env)
    first = store.newest_sequence()

    a, b = (Replica(n, work, store, running) for n in ("A", "B"))
    for r in (a, b):
        r.start(0.0, True)
    deadline = time.time() + 120
    while not (a.ready() == first and b.ready() == first):
        if time.time() > deadline:
            raise RuntimeError("the replicas never served the first generation")
        time.sleep(0.2)
    slow_link = FaultProxy(a.port)
    nginx = bench_fleet.Nginx(work, [slow_link.port, b.port], running)
    nginx_port = int(nginx.url.rsplit(":", 1)[1])

    r = Run(args, work)
    r.good.append(first)
    log(f"the fleet is up; {args.minutes:g} minutes of faults")
    threads = [r.thread(r.client, nginx_port, feeds.ids, i) for i in range(CLIENTS)]
    threads += [r.thread(r.publisher, store, feeds, staged), r.thread(r.killer, a, b),
                r.thread(r.outager, store), r.thread(r.sampler, (a, b)),
                r.thread(r.networker, store, slow_link)]
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(1)
            if int(r.clock.now()) % 60 == 0:
                log(f"{r.clock.now() / 60:.0f} min: {sum(r.requests.values()):,} requests, "
                    f"{r.failure_count} failed, {len(r.stale)} stale")
                time.sleep(1)
    finally:
        r.clock.stop.set()
        for t in threads:
            t.join(timeout=60)
    if not store.up:
        store.s3.start()
    store.proxy.set(latency=LATENCY, rate=RATE)
    try:
        return report(r, args, store, a, b)
    finally:
        store.proxy.stop()
        slow_link.stop()


def report(r, args, store, a, b):
    # The fleet settles: both replicas on the newest good generation.
    newest = r.good[-1]
    deadline = time.time() + 60
    while not (a.ready() == newest and b.ready() == newest) and time.time() < deadline:
        time.sleep(0.5)
    served = (a.ready(), b.ready())
    duration = r.clock.end - r.clock.start
    lo, hi = 0.2 * duration, 0.8 * duration
    total = sum(r.requests.values())
    checks = []

    def check(name, ok, detail):
        checks.append((name, ok, detail))

    check("no failed request at the client", r.failure_count == 0 and total > 0,
          f"{total:,} requests ({r.requests['lookup']:,} lookups, {r.requests['miss']:,} absent ids, "
          f"{r.requests['batch']:,} batches of {BATCH_IDS}), {r.failure_count} failed"
          + "".join(f"\n    - {t} s: {w}" for t, w in r.failures[:10]))
    check("no answer older than the generation before the newest", not r.stale,
          f"{len(r.stale)} stale answers" + "".join(
              f"\n    - {t} s: generation {g}, floor {f}" for t, g, f in r.stale[:10]))
    check("no answer from a corrupt generation", r.corrupt_answers == 0,
          f"{len(r.corrupt)} corrupt objects put in the store, {r.corrupt_answers} answers from one")
    bad = [p for p in r.publishes if not p["ok"]]
    kinds = {k: sum(1 for p in r.publishes if p["kind"] == k) for k in ("good", "corrupt", "refused")}
    away = sum(1 for p in r.publishes if p["kind"] == "good" and p["outage"])
    failed_away = sum(1 for p in r.publishes if p["kind"] == "good" and p["outage"] and p["code"])
    check("every publish ended as it must", not bad and kinds["refused"] > 0 and kinds["corrupt"] > 0,
          f"{len(r.publishes)} publishes: {kinds['good']} good feeds ({away} while the store was away, "
          f"{failed_away} of which failed: the rest began as it came back), {kinds['corrupt']} corrupt objects, {kinds['refused']} feeds refused by "
          f"the default --max-churn" + churn_figures(r.publishes) + "".join(f"\n    - {p}" for p in bad[:5]))
    held = [p["store"] for p in r.publishes if "store" in p][args.keep:]
    off = [h for h in held if h != (args.keep, args.keep)]
    check(f"the store keeps exactly --keep {args.keep} generations",
          held and not off,
          f"after each of the {len(held)} good publishes past the first {args.keep}, "
          f"{args.keep} manifests and {args.keep} objects"
          + (f"; not so {len(off)} times: {off[:5]}" if off else ""))
    check("both replicas serve the newest good generation", served == (newest, newest),
          f"newest {newest}, A {served[0]}, B {served[1]}")
    restarts = a.starts[1:]
    slow = [s for s in restarts if s["ready"] is None]
    check("replica A ready again after every restart", restarts and not slow,
          f"{len(restarts)} restarts ({sum(s['empty'] for s in restarts)} empty), ready after "
          f"median {statistics.median([s['ready'] for s in restarts if s['ready'] is not None] or [0]):.2f} s, "
          f"max {max([s['ready'] for s in restarts if s['ready'] is not None] or [0]):.2f} s")
    check("the outages happened", len(r.outages) >= 1,
          f"{len(r.outages)} of {OUTAGE_SECONDS} s: " + ", ".join(f"{s:.0f}-{e:.0f} s" for s, e in r.outages))
    rows = []
    for name in ("B", "A"):
        ss = [s for s in r.samples if s["replica"] == name
              and (name == "B" or s["since_start"] >= SETTLED_AFTER_START)]
        for key, unit in (("rss", MIB), ("anon", MIB), ("files", 1), ("sockets", 1)):
            first = median_of(ss, key, 0, lo)
            last = median_of(ss, key, hi, duration + 1)
            ratio = last / first if first and last is not None else None
            rows.append((name, key, first, last, ratio, unit))
            if name == "B" and key in ("rss", "files"):
                check(f"replica B's {key} flat (last 20% within 5% of the first 20%)",
                      ratio is not None and abs(ratio - 1) <= 0.05,
                      f"median {first / unit:.1f} then {last / unit:.1f} ({(ratio - 1) * 100:+.1f}%)"
                      if ratio is not None else "too few samples")
    check("the network's faults happened", {f for f, _, _ in r.network} >= {"resets", "blackhole", "slow link to A"}
          or args.minutes * 60 < CYCLE,
          ", ".join(f"{f} {s:.0f}-{e:.0f} s" for f, s, e in r.network) or "none")
    check("the fault threads ran to the end", not r.errors, "; ".join(r.errors) or "yes")
    fetched = {name: fetch_figures(rep) for name, rep in (("B", b), ("A", a))}
    fallbacks = {k.split(":")[1]: v for k, v in fetched["B"].items() if k.startswith("delta_fallbacks") and v}
    check("replica B fetched deltas", fetched["B"].get("bytes:delta", 0) > 0,
          f"{fetched['B'].get('bytes:delta', 0) / MIB:.1f} MiB of deltas, "
          f"{fetched['B'].get('bytes:full', 0) / MIB:.1f} MiB of whole generations; fallbacks {fallbacks or 'none'}")

    lines = [f"# promo fleet soak: {args.minutes:g} minutes of faults", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(r.clock.start))}, revision "
             f"{revision()}, {procfs.machine()}; {args.rows:,} rows a feed, --keep {args.keep}, "
             f"{CLIENTS} client threads through nginx.", "", "## Checks", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'} {name}: {detail}" for name, ok, detail in checks]
    lines += ["", "## Memory and descriptors (medians; first and last 20% of the run)", "",
              "| replica | figure | first 20% | last 20% | change |", "|---|---|---|---|---|"]
    for name, key, first, last, ratio, unit in rows:
        fmt = (lambda v: f"{v / unit:.1f} MiB") if unit == MIB else (lambda v: f"{v:.0f}")
        lines.append(f"| {name} | {key} | {fmt(first) if first is not None else '-'} | "
                     f"{fmt(last) if last is not None else '-'} | "
                     f"{f'{(ratio - 1) * 100:+.1f}%' if ratio is not None else '-'} |")
    lines += ["", "Replica B runs the whole time; replica A's samples are those taken "
              f"{SETTLED_AFTER_START} s or more after each of its starts."]
    ms = lambda v: f"{v * 1e3:.1f} ms" if v is not None else "-"
    lines += ["", "## The network", "",
              f"Store link: {LATENCY * 1e3:.0f} ms each way, {RATE / MIB:.0f} MiB/s; "
              f"{store.proxy.connections:,} connections, {store.proxy.resets:,} reset midway, "
              f"{store.proxy.delivered / MIB:,.1f} MiB delivered to the builder and the replicas.", "",
              "| requests (single lookups) | count | p50 | p99 | p99.9 |", "|---|---:|---:|---:|---:|"]
    for slow, label in ((False, "nginx's links to both replicas fast"),
                        (True, f"nginx's link to replica A at {SLOW_LATENCY * 1e3:.0f} ms each way")):
        h = r.latencies[slow]
        lines.append(f"| {label} | {h.n:,} | {ms(h.quantile(0.5))} | {ms(h.quantile(0.99))} | "
                     f"{ms(h.quantile(0.999))} |")
    lines += ["", "| replica | delta bytes | full bytes | fallbacks |", "|---|---:|---:|---|"]
    for name, f in fetched.items():
        falls = {k.split(":")[1]: int(v) for k, v in f.items() if k.startswith("delta_fallbacks") and v}
        lines.append(f"| {name} | {f.get('bytes:delta', 0) / MIB:,.1f} MiB | "
                     f"{f.get('bytes:full', 0) / MIB:,.1f} MiB | {falls or 'none'} |")
    lines += ["", "Replica B's counters cover the whole run; replica A's, its last start."]
    text = "\n".join(lines) + "\n"
    print(text)
    BENCH_DATA.mkdir(exist_ok=True)
    (BENCH_DATA / "SOAK-FLEET.md").write_text(text)
    (r.work / "samples.json").write_text(json.dumps({"samples": r.samples, "publishes": r.publishes,
                                                     "starts": a.starts}, indent=1))
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
