"""HTTP/2 and the serving threads' cadence in `make bench`.

Three measurements, each in alternating rounds on the same generation:

- h2load (Debian's nghttp2-client) at `-c 64 -m 10` against promo and
  against nginx serving the fixed body over HTTP/2: plain (h2c with prior
  knowledge) and over TLS (h2 by ALPN).
- HTTP/1.1 under wrk, promo against the binary from before HTTP/2 came in
  (built once from BEFORE_HTTP2 into bench-data/, then kept), so that
  HTTP/2 is seen to cost HTTP/1.1 nothing.
- `--yield-every`: promo at each cadence in CADENCES beside the hyper floor
  and nginx, under the serve bench's wrk load: requests/s against the
  floor's, p99 against nginx's.
"""

import contextlib
import os
import random
import re
import shutil
import statistics
import subprocess
import time
import uuid
from pathlib import Path

from .bench_common import Floor, alternate, certificate, log, run, start_nginx
from .paths import ROOT
from .processes import Serve, http_get, stop_nginx

# The commit before HTTP/2 (29ae33f): the HTTP/1.1 baseline.
BEFORE_HTTP2 = "ca95cd7"
CADENCES = [0, 16, 32, 64, 128]
# promo's targets (issue 37): h2 requests/s at least nginx's; HTTP/1.1 at
# least 0.95x the hyper floor's with a p99 within 1.5x nginx's.
H2_TARGET, FLOOR_TARGET, P99_TARGET = 1.0, 0.95, 1.5


def uris(path, base, ids, seed=1):
    """A file of GET URIs for h2load -i: the ids, every tenth replaced by a
    random absent one (as scripts/wrk-lookups.lua does)."""
    rng = random.Random(seed)
    lines = []
    for i, line in enumerate(Path(ids).read_text().split()):
        key = uuid.UUID(int=rng.getrandbits(128), version=4) if i % 10 == 9 else line
        lines.append(f"{base}/promotions/{key}")
    path.write_text("\n".join(lines) + "\n")
    return path


def h2load(uri_file, duration):
    """h2load over the URIs in `uri_file`, 64 connections of 10 streams,
    after a 3 s warm-up: requests/s and what its summary counts."""
    cmd = ["h2load", "-c", "64", "-m", "10", "-t", "2", "--warm-up-time", "3", "-D", str(duration),
           "-i", str(uri_file)]
    text = run(cmd, stdout=subprocess.PIPE, text=True, timeout=duration + 120).stdout
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored, (\d+) timeout", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", text)
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    return {
        "rps": float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1)),
        # h2load counts a 4xx as failed: the 404s of absent ids are not.
        "done": int(done.group(2)), "errors": int(done.group(5)) + int(done.group(6)) + int(codes.group(4)),
        "2xx": int(codes.group(1)), "4xx": int(codes.group(3)), "5xx": int(codes.group(4)),
        "mean": float(mean.group(1)) * unit[mean.group(2)],
        "command": " ".join(cmd[:-2]) + " -i uris.txt",
    }


def wait_h2(url, limit=120):
    """Returns once `url` answers 200 over HTTP/2 (h2c with prior
    knowledge for http://, ALPN for https://)."""
    flag = "--http2-prior-knowledge" if url.startswith("http:") else "--http2"
    for _ in range(limit * 5):
        out = subprocess.run(["curl", "-sk", flag, "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                              url], capture_output=True, text=True)
        if out.stdout == "200 2":
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} never answered 200 over HTTP/2")


@contextlib.contextmanager
def stopped(server):
    """`server` (a processes.Serve), stopped when the block ends however
    it ends."""
    try:
        yield server
    finally:
        server.stop(kill=True)


def medians(runs, keys):
    return {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}


def bench_h2(work, data, ids, duration, results, rounds=3):
    """h2load against promo and nginx, plain and over TLS, taking turns."""
    cert, key = certificate(work)
    first = Path(ids).read_text().split()[0]
    with contextlib.ExitStack() as running:
        plain = running.enter_context(stopped(Serve(data)))
        https = running.enter_context(stopped(Serve(data, "--tls-cert", cert, "--tls-key", key,
                                                    scheme="https")))
        body = http_get(f"{plain.url}/promotions/{first}")[1]
        nginx_plain, nginx_plain_url = start_nginx(work, body, http2=True)
        running.callback(stop_nginx, nginx_plain)
        nginx_tls, nginx_tls_url = start_nginx(work, body, (cert, key), http2=True)
        running.callback(stop_nginx, nginx_tls)
        servers = {"promo_h2c": plain.url, "nginx_h2c": nginx_plain_url,
                   "promo_h2": https.url, "nginx_h2": nginx_tls_url}
        files = {}
        for name, url in servers.items():
            wait_h2(f"{url}/promotions/{first}")
            files[name] = uris(work / f"uris-{name}.txt", url, ids)
        runs = {name: [] for name in servers}
        for r in range(rounds):
            for name in servers:
                log(f"http2: {name}, round {r + 1} of {rounds}")
                runs[name].append(h2load(files[name], duration))
    results["http2"] = {"runs": runs, "rounds": rounds, "duration": duration,
                        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
                        "h2load": subprocess.run(["h2load", "--version"], capture_output=True,
                                                 text=True).stdout.strip(),
                        **medians(runs, ["rps", "mean"])}


def before_http2(work):
    """promo as of BEFORE_HTTP2, built once (release, the same profile)."""
    work = work.resolve()  # cargo runs in the worktree
    binary = work / f"promo-{BEFORE_HTTP2}"
    if binary.exists():
        return binary
    src, target = work / "before-http2-src", work / "before-http2-target"
    log(f"building promo as of {BEFORE_HTTP2} (once; kept as {binary.name})")
    shutil.rmtree(src, ignore_errors=True)
    run(["git", "worktree", "prune"], cwd=ROOT)
    run(["git", "worktree", "add", "--detach", "--force", str(src), BEFORE_HTTP2], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run(["cargo", "build", "--release", "--bin", "promo"], cwd=src,
        env={**os.environ, "CARGO_TARGET_DIR": str(target)})
    shutil.copy2(target / "release/promo", binary)
    run(["git", "worktree", "remove", "--force", str(src)], cwd=ROOT)
    shutil.rmtree(target, ignore_errors=True)
    return binary


def bench_http1_before(work, data, ids, duration, results, rounds=3):
    """HTTP/1.1 under wrk: promo now against promo before HTTP/2."""
    before = before_http2(work)
    with contextlib.ExitStack() as running:
        servers = {"now": running.enter_context(stopped(Serve(data))).url,
                   "before": running.enter_context(stopped(Serve(data, promo=before))).url}
        runs, med = alternate(servers, ids, duration, rounds, "http1 before/after HTTP/2")
    results["http1_before"] = {"runs": runs, "rounds": rounds, "commit": BEFORE_HTTP2, **med}


def bench_cadence(work, data, ids, duration, results, rounds=3):
    """promo at each --yield-every in CADENCES, the hyper floor and nginx,
    taking turns under the serve bench's wrk load."""
    first = Path(ids).read_text().split()[0]
    with contextlib.ExitStack() as running:
        urls = {f"promo_{c}": running.enter_context(stopped(Serve(data, "--yield-every", c))).url
                for c in CADENCES}
        body = http_get(f"{urls['promo_32']}/promotions/{first}")[1]
        nginx, urls["nginx"] = start_nginx(work, body)
        running.callback(stop_nginx, nginx)
        floor = Floor(work, body, os.cpu_count())
        running.callback(floor.stop)
        urls["floor"] = floor.url
        runs, med = alternate(urls, ids, duration, rounds, "cadence")
    results["cadence"] = {"runs": runs, "rounds": rounds, "cadences": CADENCES, **med}


def bench_http2(work, data, ids, duration, results):
    bench_h2(work, data, ids, duration, results)
    bench_http1_before(work, data, ids, duration, results)
    bench_cadence(work, data, ids, duration, results)


def report(results):
    """BENCHMARKS.md lines for the three measurements."""
    lines = []
    ms = lambda x: f"{x * 1e3:.2f} ms"
    if "http2" in results:
        h = results["http2"]
        lines += ["", "## HTTP/2: h2load, promo and nginx, plain (h2c) and over TLS (h2)", "",
                  f"`{h['runs']['promo_h2c'][0]['command']}`, {h['duration']} s a run after a 3 s warm-up, "
                  f"{h['rounds']} rounds taking turns. promo looks ids up (90% present, 10% absent: 404); "
                  f"nginx ({h['nginx']}, which turns HTTP/2 on with `listen ... http2` rather than "
                  "`http2 on`, added in 1.25.1) returns the fixed body. Over TLS both use the HTTPS "
                  f"bench's certificate and offer h2 by ALPN. {h['h2load']}.", "",
                  "| server | requests/s (each run) | median | mean time a request | 404 (absent ids) | errors and 5xx |",
                  "|---|---|---:|---:|---:|---:|"]
        for name, label in [("promo_h2c", "promo, h2c"), ("nginx_h2c", "nginx, h2c"),
                            ("promo_h2", "promo, h2 over TLS"), ("nginx_h2", "nginx, h2 over TLS")]:
            rs = h["runs"][name]
            each = ", ".join(f"{r['rps']:,.0f}" for r in rs)
            lines.append(f"| {label} | {each} | **{h[name]['rps']:,.0f}** | "
                         f"{ms(h[name]['mean'])} | {sum(r['4xx'] for r in rs):,} | {sum(r['errors'] for r in rs)} |")
        plain = h["promo_h2c"]["rps"] / h["nginx_h2c"]["rps"]
        tls = h["promo_h2"]["rps"] / h["nginx_h2"]["rps"]
        lines += ["", f"promo serves **{plain:.2f}x** nginx's requests/s over h2c and **{tls:.2f}x** over "
                  f"TLS (target: at least {H2_TARGET:.1f}x)."]
    if "http1_before" in results:
        b = results["http1_before"]
        lines += ["", "## HTTP/1.1 before and after HTTP/2", "",
                  f"wrk as in the serve bench, promo now against promo built from {b['commit']} (the "
                  f"commit before HTTP/2), {b['rounds']} rounds taking turns.", "",
                  "| promo | requests/s (each run) | median | p50 | p99 |", "|---|---|---:|---:|---:|"]
        for name in ("now", "before"):
            rs = b["runs"][name]
            each = ", ".join(f"{r['rps']:,.0f}" for r in rs)
            lines.append(f"| {name} | {each} | **{b[name]['rps']:,.0f}** | "
                         f"{ms(b[name]['p50'])} | {ms(b[name]['p99'])} |")
        lines += ["", f"Now: **{b['now']['rps'] / b['before']['rps']:.2f}x** the requests/s of before, "
                  f"p99 {b['now']['p99'] / b['before']['p99']:.2f}x."]
    if "cadence" in results:
        c = results["cadence"]
        floor, nginx = c["floor"], c["nginx"]
        lines += ["", "## How often a serving thread offers its core (`--yield-every`)", "",
                  "wrk as in the serve bench against promo at each cadence (0: never), the hyper floor "
                  f"and nginx, {c['rounds']} rounds taking turns. Targets: requests/s at least "
                  f"{FLOOR_TARGET}x the floor's, p99 within {P99_TARGET}x nginx's.", "",
                  "| server | requests/s (median) | p50 | p99 | requests/s against the floor | p99 against nginx's |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name in [f"promo_{x}" for x in c["cadences"]] + ["floor", "nginx"]:
            m = c[name]
            label = f"promo, `--yield-every {name[6:]}`" if name.startswith("promo") else name
            lines.append(f"| {label} | {m['rps']:,.0f} | {ms(m['p50'])} | {ms(m['p99'])} | "
                         f"{m['rps'] / floor['rps']:.2f}x | {m['p99'] / nginx['p99']:.2f}x |")
        good = [x for x in c["cadences"] if c[f"promo_{x}"]["rps"] >= FLOOR_TARGET * floor["rps"]
                and c[f"promo_{x}"]["p99"] <= P99_TARGET * nginx["p99"]]
        lines += ["", "Cadences meeting both targets in this run: "
                  + (", ".join(map(str, good)) if good else "none") + "."]
    return lines
