"""The idle-connection part of `make bench`: what a kept-alive connection
costs a server in memory, and whether that memory comes back.

promo and nginx (returning promo's body for every lookup) take turns, in
alternating rounds. Each round opens N connections that send nothing
(a connection's floor: its socket and task), closes them; then opens N that
each send one lookup, read the answer and stay open, as a keep-alive client
does; waits for the server to go quiet; closes them and times the return of
the server's anonymous memory to within 8 MiB of where it was. Anonymous
resident memory (RssAnon, summed over nginx's master and workers) is read
from /proc: what the connections cost, not the generation's page cache.
"""

import resource
import socket
import statistics
import subprocess
import time
from pathlib import Path

from .bench_common import log, start_nginx
from .procfs import rss_anon_with_children as _anon
from .processes import Serve, stop_nginx
# promo hands a connection back from hyper after 1 to 2 s of quiet
# (server::connection::QUIET_AFTER), and trims once a second; the memory is
# read after that.
SETTLE = 4.0
BACK_WITHIN = 8 << 20


def _connect(port, n, request):
    """`n` connections to 127.0.0.1:port, each having sent `request` and,
    if it sent one, read a 200."""
    conns = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port))
        if request:
            c.sendall(request)
            answer = c.recv(65536)
            if not answer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"not a 200: {answer[:200]!r}")
        conns.append(c)
    return conns


def _measure(pid, port, n, request):
    """Bytes a connection costs silent and idle after a request, and the
    seconds until memory is back within 8 MiB once they close."""
    before = _anon(pid)
    conns = _connect(port, n, b"")
    time.sleep(1)
    silent = (_anon(pid) - before) / n
    for c in conns:
        c.close()
    time.sleep(SETTLE)

    before = _anon(pid)
    conns = _connect(port, n, request)
    time.sleep(SETTLE)
    during = _anon(pid)
    idle = (during - before) / n
    for c in conns:
        c.close()
    closed = time.time()
    back = None
    while time.time() - closed < 15:
        now = _anon(pid)
        if now < before + BACK_WITHIN:
            back = time.time() - closed
            break
        time.sleep(0.1)
    left = _anon(pid) - before
    return {"silent": silent, "idle": idle, "during": during - before, "back_s": back, "left": left}


def bench_idle_connections(work, data, ids, results, n=10_000, rounds=3):
    """promo serve on `data` and nginx, each holding `n` kept-alive
    connections, alternately; each looks up the first id of the file `ids`."""
    lookup = Path(ids).read_text().split("\n", 1)[0].strip()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < n + 256:
        raise RuntimeError(f"the open-files limit ({hard}) is below {n} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    promo = nginx = None
    try:
        promo = Serve(data, "--max-connections", n + 1000, ready="/healthz", limit=60, interval=0.1)
        port = promo.port
        body = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/promotions/{lookup}"], check=True,
                              capture_output=True).stdout
        nginx, nginx_url = start_nginx(work, body, connections=n + 1000)
        servers = {"promo": (promo.proc.pid, port), "nginx": (nginx.pid, int(nginx_url.rsplit(":", 1)[1]))}
        request = f"GET /promotions/{lookup} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        runs = {name: [] for name in servers}
        for r in range(rounds):
            for name, (pid, p) in servers.items():
                log(f"idle connections: {name}, {n:,} connections, round {r + 1} of {rounds}")
                runs[name].append(_measure(pid, p, n, request))
    finally:
        # Whatever failed, nothing is left running.
        if promo:
            promo.stop()
        if nginx:
            stop_nginx(nginx)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    med = {name: {k: statistics.median(x[k] for x in rs) for k in ("silent", "idle", "left")}
           for name, rs in runs.items()}
    results["idle_connections"] = {"connections": n, "runs": runs, "median": med}


def report(results):
    """BENCHMARKS.md lines for results["idle_connections"]."""
    if "idle_connections" not in results:
        return []
    ic = results["idle_connections"]
    kb = lambda b: f"{b / 1000:,.1f} KB"
    back = lambda s: f"{s:.1f} s" if s is not None else "not in 15 s"
    lines = ["", f"## Idle connections: {ic['connections']:,} kept alive", "",
             f"{ic['connections']:,} connections that each sent one lookup, read its answer and stay open "
             "(a keep-alive client between requests), against as many that sent nothing; then all closed. "
             "Anonymous resident memory of the server's processes (nginx: master and workers) before and "
             f"{SETTLE:.0f} s after; \"back\" is how long after the close it was again within 8 MiB of "
             "before, \"left\" what stayed after that. promo and nginx take turns.", "",
             "| server, round | a silent connection | a connection idle after a request | back within 8 MiB | left |",
             "|---|---:|---:|---:|---:|"]
    for name, rs in ic["runs"].items():
        for i, x in enumerate(rs):
            lines.append(f"| {name}, {i + 1} | {kb(x['silent'])} | {kb(x['idle'])} | {back(x['back_s'])} | "
                         f"{x['left'] / 2**20:.1f} MiB |")
    m = ic["median"]
    lines += ["", f"Medians: promo **{kb(m['promo']['idle'])}** per idle connection ({kb(m['promo']['silent'])} "
              f"silent), nginx {kb(m['nginx']['idle'])} ({kb(m['nginx']['silent'])} silent)."]
    return lines
