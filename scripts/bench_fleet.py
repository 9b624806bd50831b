"""The fleet part of `make bench`: a real S3 server, two replicas, nginx.

A build publishes a generation to an S3-compatible store (s3s-fs, the same
server the tests use, installed from crates.io into bench-data/tools); two
`promo serve --source` replicas fetch it; nginx with deploy/nginx/promo.conf
is in front. Measured side by side, in alternating rounds:

- fetch: the time from `promo build --publish` exiting to both replicas
  answering from the new generation, against `curl` downloading the same
  object from the same server to a file;
- p99 through nginx while both replicas fetch a generation, against the
  steady p99 over the same length of time;
- failed requests at the client while a replica is killed with SIGKILL
  (statuses other than 200, 404 and 499 in nginx's access log, plus wrk's socket
  errors), and how long the replica, restarted empty, takes to be ready.
"""

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import threading
import time
import urllib.request

from .bench_common import log, wrk
from .paths import DEPLOY, PROMO
from .processes import Serve, free_port, nginx, start, stop, stop_all, stop_nginx, wait_port

ACCESS_KEY, SECRET_KEY, BUCKET, PREFIX = "promo-bench", "promo-bench-secret", "promo", "bench"
POLL = 0.2  # --source-interval of the replicas, seconds


def _generation(port):
    """The generation a replica has live (0: none, or not answering)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return int(r.read().decode().split()[-1])
    except Exception:
        return 0


class S3Server:
    def __init__(self, work, running):
        tools = work / "tools"
        binary = tools / "bin" / "s3s-fs"
        if not binary.exists():
            log("installing s3s-fs 0.14.1 (crates.io): the fleet bench's S3 server")
            subprocess.run(["cargo", "install", "s3s-fs", "--version", "=0.14.1", "--features",
                            "binary", "--locked", "--root", str(tools)], check=True)
        self.root = (work / "fleet-s3").resolve()
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root / BUCKET).mkdir(parents=True)
        self.port = free_port()
        self.binary, self.running = binary, running
        self.start()
        self.url = f"s3://{BUCKET}/{PREFIX}"
        self.env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
                    "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                    "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def start(self):
        """Starts the server on its port, over what its directory holds
        (again, after `stop`: a store that went away and came back)."""
        # The store stands in for a remote service: at nice 19 its CPU does
        # not come out of the replicas' share, as it would not in a fleet.
        self.proc = start(
            ["nice", "-n", "19", self.binary, "--host", "127.0.0.1", "--port", self.port,
             "--access-key", ACCESS_KEY,
             "--secret-key", SECRET_KEY, self.root], self.running,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def newest(self):
        """The newest manifest, read from the server's directory."""
        manifests = sorted((self.root / BUCKET / PREFIX / "manifests").glob("*.json"))
        return json.loads(manifests[-1].read_text())

    def curl(self, obj, out):
        """Seconds for curl to download object `obj` to `out` (signed requests)."""
        started = time.time()
        subprocess.run(["curl", "-sSf", "-o", str(out), "--aws-sigv4", "aws:amz:us-east-1:s3",
                        "--user", f"{ACCESS_KEY}:{SECRET_KEY}",
                        "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                        f"http://127.0.0.1:{self.port}/{BUCKET}/{PREFIX}/{obj}"], check=True)
        return time.time() - started

    def stop(self):
        stop(self.proc, timeout=30)


class Replica(Serve):
    """`promo serve --source` of the store, its own data directory emptied;
    returns once it listens (it is ready once it has fetched a generation)."""

    def __init__(self, work, i, s3, running, port=None):
        self.dir = work / f"fleet-replica-{i}"
        shutil.rmtree(self.dir, ignore_errors=True)
        super().__init__(self.dir, "--source", s3.url, "--source-interval", POLL, port=port,
                         ready=None, env=s3.env, running=running)
        wait_port(self.port)


class Nginx:
    """nginx with deploy/nginx/promo.conf, its upstream and listener set to
    this bench's ports, and an access log of statuses."""

    def __init__(self, work, replica_ports, running):
        self.dir = (work / "fleet-nginx").resolve()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir()
        self.port = free_port()
        conf = (DEPLOY / "nginx/promo.conf").read_text()
        servers = "".join(f"    server 127.0.0.1:{p} max_fails=3 fail_timeout=10s;\n"
                          for p in replica_ports)
        conf = re.sub(r"(    server 127\.0\.0\.1:\d+[^\n]*\n)+", lambda _: servers, conf, count=1)
        conf = re.sub(r"listen \d+;", f"listen 127.0.0.1:{self.port};", conf)
        (self.dir / "promo.conf").write_text(conf)
        d = self.dir
        (d / "nginx.conf").write_text(f"""
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{
    log_format status '$status';
    access_log {d}/access.log status buffer=64k flush=1s;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/promo.conf;
}}
""")
        self.proc = nginx(d, d / "nginx.conf", running)
        wait_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def statuses(self):
        """Counts of each status in the access log so far."""
        counts = {}
        path = self.dir / "access.log"
        if path.exists():
            for line in path.read_text().split():
                counts[line] = counts.get(line, 0) + 1
        return counts

    def stop(self):
        stop_nginx(self.proc)


def _wait_both(replicas, sequence, limit=600):
    deadline = time.time() + limit
    while not all(_generation(r.port) == sequence for r in replicas):
        if time.time() > deadline:
            raise RuntimeError(f"replicas never reached generation {sequence}")
        time.sleep(0.01)
    return time.time()


def _publish(csv, builder, s3):
    """`promo build --publish`: the store's sequence, and when it exited."""
    p = subprocess.run([PROMO, "build", csv, "--data-dir", builder, "--publish", s3.url],
                       env=s3.env, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       text=True)
    exited = time.time()
    return int(re.search(r"as its generation (\d+)", p.stdout).group(1)), exited


def _rollback(s3):
    p = subprocess.run([PROMO, "rollback", "--publish", s3.url], env=s3.env, check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return int(re.search(r"as generation (\d+)", p.stdout).group(1)), time.time()


def bench_fleet(work, csv, ids, results, rounds=5):
    """Fills results["fleet"]. Whatever happens, every process it started
    is stopped."""
    running = []
    try:
        _bench_fleet(work, csv, ids, results, rounds, running)
    finally:
        stop_all(running)


def _bench_fleet(work, csv, ids, results, rounds, running):
    s3 = S3Server(work, running)
    builder = work / "fleet-builder"
    shutil.rmtree(builder, ignore_errors=True)
    log("fleet: the first generation, published and fetched")
    first, _ = _publish(csv, builder, s3)
    replicas = [Replica(work, i, s3, running) for i in range(2)]
    _wait_both(replicas, first)
    nginx = Nginx(work, [r.port for r in replicas], running)
    wrk(nginx.url, ids, 3)  # warm up
    out = {"poll_seconds": POLL, "rounds": rounds, "curl": [], "fetch": [], "steady": [],
           "fetching": [], "fetching_seconds": []}

    # Fetch against curl: alternating, the object the replicas fetched last.
    download = work / "fleet-curl.promo"
    for r in range(rounds):
        newest = s3.newest()
        log(f"fleet: curl and a publish, round {r + 1} of {rounds}")
        out["curl"].append(s3.curl(newest["object"], download))
        assert download.stat().st_size == newest["bytes"]
        download.unlink()
        sequence, exited = _publish(csv, builder, s3)
        out["fetch"].append(_wait_both(replicas, sequence) - exited)
    out["bytes"] = s3.newest()["bytes"]

    # p99 through nginx: steady, then with both replicas fetching a
    # generation (a rollback: the publish itself costs nothing), alternating.
    window = max(3, int(statistics.median(out["fetch"])) + 2)
    out["window_seconds"] = window
    for r in range(rounds):
        log(f"fleet: p99 steady and while fetching, round {r + 1} of {rounds}")
        out["steady"].append(wrk(nginx.url, ids, window))
        seen = {}

        def publish_during():
            time.sleep(0.5)
            sequence, at = _rollback(s3)
            seen["seconds"] = _wait_both(replicas, sequence) - at
        t = threading.Thread(target=publish_during)
        t.start()
        out["fetching"].append(wrk(nginx.url, ids, window))
        t.join()
        out["fetching_seconds"].append(seen["seconds"])

    # A replica killed under load.
    log("fleet: SIGKILL one replica under load")
    time.sleep(1.5)  # nginx flushes its access log every second
    before = nginx.statuses()
    killed = {}

    def kill():
        time.sleep(window / 3)
        replicas[0].proc.send_signal(signal.SIGKILL)
        replicas[0].proc.wait()
        killed["at"] = time.time()
    t = threading.Thread(target=kill)
    t.start()
    under_kill = wrk(nginx.url, ids, window)
    t.join()
    time.sleep(1.5)
    after = nginx.statuses()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    # 499 is nginx's "the client closed the connection first": wrk closing
    # its connections at the end of its run with requests in flight, which
    # no client waited for. A client that saw a failure shows in another
    # status, or in wrk's socket errors (its timeouts included).
    failed = sum(v for k, v in delta.items() if k not in ("200", "404", "499")) + under_kill["socket_errors"]
    out["kill"] = {"wrk": under_kill, "statuses": delta, "failed": failed}
    started = time.time()
    replicas[0] = Replica(work, 0, s3, running, port=replicas[0].port)
    _wait_both(replicas, _generation(replicas[1].port))
    out["kill"]["restart_ready_seconds"] = time.time() - started

    for r in replicas:
        r.stop()
    nginx.stop()
    s3.stop()
    med = statistics.median
    out["curl_median"], out["fetch_median"] = med(out["curl"]), med(out["fetch"])
    out["steady_p99"] = med(w["p99"] for w in out["steady"])
    out["fetching_p99"] = med(w["p99"] for w in out["fetching"])
    results["fleet"] = out


def report(results):
    """BENCHMARKS.md lines for results["fleet"]."""
    f = results["fleet"]
    ms = lambda s: f"{s * 1e3:.2f} ms"
    mb = f["bytes"] / 1e6
    lines = ["", "## Fleet: S3, two replicas, nginx", "",
             f"A generation of {mb:,.0f} MB published to an S3 server (s3s-fs 0.14.1 on 127.0.0.1), "
             f"two `promo serve --source` replicas polling every {f['poll_seconds']} s, nginx with "
             "`deploy/nginx/promo.conf` in front; everything on this one machine, so the replicas' "
             "downloads, verifications and nginx share its two cores (the S3 server, standing in for "
             "a remote store, runs at nice 19). Medians of "
             f"{f['rounds']} alternating rounds.", "",
             "| figure | promo | peer | ratio | target |", "|---|---:|---:|---:|---:|",
             f"| `build --publish` exit to both replicas answering from it, against `curl` downloading "
             f"the object once | {f['fetch_median']:.2f} s | {f['curl_median']:.2f} s | "
             f"{f['fetch_median'] / f['curl_median']:.2f}x | <= 1.5x |",
             f"| p99 through nginx while both replicas fetch, against steady ({f['window_seconds']} s of "
             f"`wrk -t2 -c64` each) | {ms(f['fetching_p99'])} | {ms(f['steady_p99'])} | "
             f"{f['fetching_p99'] / f['steady_p99']:.2f}x | <= 1.5x |",
             f"| failed requests at the client while a replica was killed (SIGKILL) | "
             f"{f['kill']['failed']} of {f['kill']['wrk']['requests']:,} | | | 0 |",
             "", "Each round: fetch {} s against curl {} s; p99 steady {} against fetching {} "
             "(fetch during wrk took {} s).".format(
                 ", ".join(f"{x:.2f}" for x in f["fetch"]), ", ".join(f"{x:.2f}" for x in f["curl"]),
                 ", ".join(ms(w["p99"]) for w in f["steady"]),
                 ", ".join(ms(w["p99"]) for w in f["fetching"]),
                 ", ".join(f"{x:.2f}" for x in f["fetching_seconds"])),
             "", f"Statuses nginx answered while a replica was killed: {f['kill']['statuses']} (a 499 "
             "is a request whose client closed the connection first: wrk stopping with requests in "
             "flight; not counted as failed, as wrk's socket errors and timeouts are); "
             f"the replica, restarted with an empty data directory, was ready on the newest "
             f"generation {f['kill']['restart_ready_seconds']:.2f} s later."]
    return lines
