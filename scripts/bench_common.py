"""What the parts of `make bench` share: its log line, running a command,
the generated feeds, wrk, and nginx answering a fixed body (the peer every
serve figure is measured against). bench.py and each bench_*.py import it;
it imports none of them."""

import os
import re
import signal
import statistics
import subprocess
import time

from .paths import FLOOR, GEN, WRK_SCRIPT
from .processes import free_port, nginx, start, stop, wait_ready


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, timeout=3600, **kw):
    return subprocess.run(cmd, check=True, timeout=timeout, **kw)


def generate(work, rows):
    """The feed of `rows` generated rows (seed 1) and 100,000 of its ids,
    made once in `work`: (csv, ids)."""
    csv = work / f"promotions-{rows}.csv"
    ids = work / f"ids-{rows}.txt"
    if not csv.exists() or not ids.exists():
        log(f"generating {rows:,} rows")
        run([GEN, "--rows", str(rows), "--seed", "1", "--out", csv, "--ids-out", ids,
             "--ids-sample", "100000"])
    return csv, ids


def warm(path):
    """`path` read through, into the page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def wrk(url, ids, duration, extra=(), batch=0):
    """wrk with scripts/wrk-lookups.lua: single GETs, or `batch` ids a POST."""
    cmd = ["wrk", "-t2", "-c64", f"-d{duration}s", "--latency", "-s", str(WRK_SCRIPT), *extra, url]
    p = run(cmd, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "IDS": str(ids), "BATCH": str(batch)}, timeout=duration + 120)
    text = p.stdout
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0}

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        return float(m.group(1)) * unit[m.group(2)]

    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "requests": int(re.search(r"(\d+) requests in", text).group(1)),
        "p50": pct(50), "p99": pct(99),
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        "command": " ".join(cmd),
    }


def certificate(work):
    """A new self-signed ECDSA P-256 certificate for localhost, in `work`:
    (cert, key)."""
    tls = work / "tls"
    tls.mkdir(exist_ok=True)
    cert, key = tls / "cert.pem", tls / "key.pem"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def start_nginx(work, body, tls=None, connections=4096, http2=False):
    """nginx returning `body` for every /promotions/ path: (process, url).
    With `tls` (cert, key), over TLS 1.3 only; `connections` per worker.
    With `http2`, HTTP/2 only on plain HTTP (h2c with prior knowledge), h2
    by ALPN beside HTTP/1.1 over TLS; the caller waits for it to answer.
    processes.stop_nginx stops it."""
    port = free_port()
    prefix = work / ("nginx" + ("-tls" if tls else "") + ("-h2" if http2 else ""))
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    listen = f"127.0.0.1:{port}"
    if http2:
        listen += " http2"
    if tls:
        listen += (f" ssl;\n        ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]};\n"
                   "        ssl_protocols TLSv1.3")
    conf.write_text(f"""
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen {listen};
        location /promotions/ {{
            default_type application/json;
            return 200 '{body.decode()}';
        }}
    }}
}}
""")
    proc = nginx(prefix, conf)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    if not http2:
        wait_ready(url + "/promotions/x", 30)
    return proc, url


class Floor:
    """examples/hyper_floor.rs: promo's HTTP stack answering `body` to every
    request, with no routing, lookup or counting."""

    def __init__(self, work, body, threads):
        path = work / "floor-body.json"
        path.write_bytes(body)
        self.proc = start([FLOOR, "127.0.0.1:0", threads, path], stdout=subprocess.PIPE, text=True)
        self.url = "http://" + self.proc.stdout.readline().strip()
        wait_ready(self.url + "/promotions/x", 30)

    def stop(self):
        stop(self.proc, signal.SIGKILL, 30)


def alternate(servers, ids, duration, rounds, what):
    """wrk against each of `servers` ({name: url}) in turn, `rounds` times:
    every run, and each server's medians."""
    for url in servers.values():
        wrk(url, ids, 3)  # warm up
    runs = {name: [] for name in servers}
    for r in range(rounds):
        for name, url in servers.items():
            log(f"{what}: {name}, round {r + 1} of {rounds}")
            runs[name].append(wrk(url, ids, duration))
    med = {name: {k: statistics.median(w[k] for w in rs) for k in ("rps", "p50", "p99")}
           for name, rs in runs.items()}
    for name in med:
        med[name]["command"] = runs[name][0]["command"]
    return runs, med
