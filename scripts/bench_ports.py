"""The HTTPS and upload part of `make bench`.

Measured side by side, in alternating rounds:

- HTTPS: requests/s and p99 of `wrk -t2 -c64` against one `promo serve`
  with `--tls-cert` (a self-signed ECDSA P-256 certificate made by openssl)
  and one without, on the same generation;
- upload: the 10M-row CSV sent with `curl -T` (raw, streamed from the file)
  and with `curl -F file=@` (multipart) to the admin port of a running
  `promo serve`, from curl's start to its exit (the answer comes once the
  generation is live), against `promo build` of the same file into an empty
  data directory; each run starts with the page cache dropped and the CSV
  read back (so it runs last: it leaves the cache cold).
"""

import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path

from bench_common import free_port, log

ROOT = Path(__file__).resolve().parent.parent
PROMO = ROOT / "target/release/promo"




def _curl(args, timeout=600, quiet=False):
    return subprocess.run(["curl", "--silent", "--show-error", *args], check=True, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if quiet else None,
                          text=True).stdout


def _serve(data, extra, scheme="http"):
    """A `promo serve` on `data` with `extra` flags: (process, url)."""
    port = free_port()
    proc = subprocess.Popen([PROMO, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
                             *map(str, extra)], stderr=subprocess.DEVNULL)
    url = f"{scheme}://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            _curl(["--insecure", "--max-time", "2", url + "/healthz"], quiet=True)
            return proc, url
        except subprocess.CalledProcessError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} never answered")


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def bench_tls(work, data, ids, duration, wrk, results, rounds=2):
    """wrk against promo over HTTPS and over plain HTTP, alternately."""
    tls = work / "tls"
    tls.mkdir(exist_ok=True)
    cert, key = tls / "cert.pem", tls / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    plain, plain_url = _serve(data, [])
    https, https_url = _serve(data, ["--tls-cert", cert, "--tls-key", key], "https")
    runs = {"http": [], "https": []}
    for url in (plain_url, https_url):
        wrk(url, ids, 3)  # warm up
    for r in range(rounds):
        for name, url in (("http", plain_url), ("https", https_url)):
            log(f"tls: {name}, round {r + 1} of {rounds}")
            runs[name].append(wrk(url, ids, duration))
    _stop(plain)
    _stop(https)
    med = lambda name, k: statistics.median(w[k] for w in runs[name])
    results["tls"] = {"runs": runs, **{f"{n}_{k}": med(n, k) for n in runs for k in ("rps", "p99")}}


def bench_upload(work, csv, results, rounds=5):
    """`promo build` against uploads to a live server, alternately."""
    build_dir, serve_dir = work / "data-upload-build", work / "data-upload-serve"
    size = csv.stat().st_size
    runs = {"build": [], "raw": [], "multipart": []}
    answers = []
    for r in range(rounds):
        for name in runs:
            log(f"upload: {name}, round {r + 1} of {rounds}")
            _fresh_memory(csv)
            if name == "build":
                shutil.rmtree(build_dir, ignore_errors=True)
                started = time.time()
                subprocess.run([PROMO, "build", csv, "--data-dir", build_dir], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                runs[name].append(time.time() - started)
                continue
            shutil.rmtree(serve_dir, ignore_errors=True)
            port = free_port()
            proc, url = _serve(serve_dir, ["--admin-listen", f"127.0.0.1:{port}"])
            body = ["-X", "POST", "-H", "Content-Type: text/csv", "-T", str(csv)] if name == "raw" \
                else ["-F", f"file=@{csv}"]
            started = time.time()
            answer = _curl([*body, f"http://127.0.0.1:{port}/upload"])
            runs[name].append(time.time() - started)
            answer = json.loads(answer)
            live = _curl([url + "/readyz"]).strip()
            if live != f"ready: generation {answer['generation']}":
                raise RuntimeError(f"upload answered {answer} but the server says {live!r}")
            answers.append(answer)
            _stop(proc)
    shutil.rmtree(build_dir, ignore_errors=True)
    shutil.rmtree(serve_dir, ignore_errors=True)
    results["upload"] = {"runs": runs, "bytes": size, "rows": answers[-1]["records"],
                         **{name: statistics.median(v) for name, v in runs.items()}}


def _fresh_memory(csv):
    """The same start for every run: the page cache dropped, then the CSV
    read back into it. Without it, free memory depended on what the bench
    had cached before (20 GB of it), and the upload paid for it more than
    the build: `promo build` drops the CSV from the cache as it reads it,
    freeing memory for its own, while a server cannot drop its client's
    file (which in production is on another machine)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as e:
        raise RuntimeError(f"the upload bench drops the page cache between runs, as root: {e}")
    with open(csv, "rb") as f:
        while f.read(1 << 24):
            pass


def report(results):
    """BENCHMARKS.md lines for results["tls"] and results["upload"]."""
    lines = []
    ms = lambda s: f"{s * 1e3:.2f} ms"
    if "tls" in results:
        t = results["tls"]
        lines += ["", "## HTTPS: the same wrk load over TLS and over plain HTTP", "",
                  "Two servers on one generation, one with `--tls-cert` (ECDSA P-256, TLS 1.3 as wrk "
                  "negotiates it), taking turns; `wrk -t2 -c64` keeps its connections, so this is the "
                  "cost of encrypting requests, not of handshakes. Medians.", "",
                  "| run | requests/s | p50 | p99 |", "|---|---:|---:|---:|"]
        for name in ("http", "https"):
            for w in t["runs"][name]:
                lines.append(f"| {name} | {w['rps']:,.0f} | {ms(w['p50'])} | {ms(w['p99'])} |")
        lines += ["", f"HTTPS serves {t['https_rps'] / t['http_rps']:.2f}x plain HTTP's requests/s; "
                  f"its p99 is {t['https_p99'] / t['http_p99']:.2f}x."]
    if "upload" in results:
        u = results["upload"]
        each = lambda name: ", ".join(f"{x:.2f}" for x in u["runs"][name])
        lines += ["", "## Upload: the CSV over the admin port against `promo build`", "",
                  f"The {u['bytes'] / 1e6:,.0f} MB, {u['rows']:,}-row CSV, from the page cache, into an "
                  "empty data directory each time, taking turns; before each run the page cache is dropped "
                  "and the CSV read back, so every run finds the same free memory. Upload: curl's start to "
                  "its exit; the answer comes once the generation is live on the server, which also runs "
                  "the client here. Medians (each run).", "",
                  "| way | seconds | against `promo build` |", "|---|---:|---:|",
                  f"| `promo build in.csv` | {u['build']:.2f} ({each('build')}) | 1.00x |",
                  f"| `curl -X POST -T in.csv .../upload` (raw) | {u['raw']:.2f} ({each('raw')}) | "
                  f"{u['raw'] / u['build']:.2f}x |",
                  f"| `curl -F file=@in.csv .../upload` (multipart) | {u['multipart']:.2f} "
                  f"({each('multipart')}) | {u['multipart'] / u['build']:.2f}x |"]
    return lines
