"""The upload part of `make bench`.

Measured side by side, in alternating rounds: the 10M-row CSV sent with `curl -T` (raw, streamed from the file)
  and with `curl -F file=@` (multipart) to the admin port of a running
  `promo serve`, from curl's start to its exit (the answer comes once the
  generation is live), against `promo build` of the same file into an empty
  data directory; each run starts with the page cache dropped and the CSV
  read back (so it runs last: it leaves the cache cold).
"""

import json
import mmap
import os
import shutil
import statistics
import subprocess
import time

from . import procfs
from .bench_common import log
from .paths import PROMO
from .processes import Serve, free_port


def _curl(args, timeout=600):
    return subprocess.run(["curl", "--silent", "--show-error", *args], check=True, timeout=timeout,
                          stdout=subprocess.PIPE, text=True).stdout


def bench_upload(work, csv, results, rounds=5):
    """`promo build` against uploads to a live server, alternately."""
    build_dir, serve_dir = work / "data-upload-build", work / "data-upload-serve"
    size = csv.stat().st_size
    runs = {"build": [], "raw": [], "multipart": []}
    cpu = {name: [] for name in runs}
    answers = []
    for r in range(rounds):
        for name in runs:
            log(f"upload: {name}, round {r + 1} of {rounds}")
            _fresh_memory(csv)
            if name == "build":
                shutil.rmtree(build_dir, ignore_errors=True)
                _backed_memory()
                started, children = time.time(), procfs.children_cpu()
                subprocess.run([PROMO, "build", csv, "--data-dir", build_dir], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                runs[name].append(time.time() - started)
                cpu[name].append(procfs.children_cpu() - children)
                continue
            shutil.rmtree(serve_dir, ignore_errors=True)
            port = free_port()
            server = Serve(serve_dir, "--admin-listen", f"127.0.0.1:{port}", ready="/healthz",
                           limit=120, interval=0.1, timeout=2)
            proc, url = server.proc, server.url
            body = ["-X", "POST", "-H", "Content-Type: text/csv", "-T", str(csv)] if name == "raw" \
                else ["-F", f"file=@{csv}"]
            _backed_memory()
            started, children, own = time.time(), procfs.children_cpu(), procfs.cpu_seconds(proc.pid)
            answer = _curl([*body, f"http://127.0.0.1:{port}/upload"])
            runs[name].append(time.time() - started)
            cpu[name].append(procfs.children_cpu() - children + procfs.cpu_seconds(proc.pid) - own)
            answer = json.loads(answer)
            live = _curl([url + "/readyz"]).strip()
            if live != f"ready: generation {answer['generation']}":
                raise RuntimeError(f"upload answered {answer} but the server says {live!r}")
            answers.append(answer)
            server.stop()
    shutil.rmtree(build_dir, ignore_errors=True)
    shutil.rmtree(serve_dir, ignore_errors=True)
    results["upload"] = {"runs": runs, "bytes": size, "rows": answers[-1]["records"],
                         "cpu": {name: statistics.median(v) for name, v in cpu.items()},
                         "cores": os.cpu_count(),
                         **{name: statistics.median(v) for name, v in runs.items()}}


def _fresh_memory(csv):
    """The same start for every run: the page cache dropped, then the CSV
    read back into it. Without it, free memory depended on what the bench
    had cached before (20 GB of it), and the upload paid for it more than
    the build: `promo build` drops the CSV from the cache as it reads it,
    freeing memory for its own, while a server cannot drop its client's
    file (which in production is on another machine)."""
    try:
        procfs.drop_caches(1)
    except OSError as e:
        raise RuntimeError(f"the upload bench drops the page cache between runs, as root: {e}")
    with open(csv, "rb") as f:
        while f.read(1 << 24):
            pass


def _backed_memory(size=2 << 30):
    """Touches `size` bytes of fresh memory and frees it, right before a
    run. This machine is a virtual machine whose kernel reports free memory
    to the host (virtio-balloon free page reporting), which takes it back:
    the first write to such a page then costs a fault in the host (600 MiB
    took 0.08 to 1.5 s to touch here). `promo build` drops its input from
    the page cache as it reads, and gets those still-backed pages for its
    records; a server cannot drop its client's file, so an upload's build
    got reported ones and spent 0.4 to 1.0 s of system time zeroing them,
    against 0.3 s for `promo build`: a property of the machine, not of
    promo. Touched just before (the kernel reports pages that have been
    free for 2 s), both ways start from backed memory."""
    with mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as m:
        for at in range(0, size, mmap.PAGESIZE):
            m[at] = 1


def report(results):
    """BENCHMARKS.md lines for results["upload"]."""
    lines = []
    if "upload" in results:
        u = results["upload"]
        each = lambda name: ", ".join(f"{x:.2f}" for x in u["runs"][name])
        lines += ["", "## Upload: the CSV over the admin port against `promo build`", "",
                  f"The {u['bytes'] / 1e6:,.0f} MB, {u['rows']:,}-row CSV, from the page cache, into an "
                  "empty data directory each time, taking turns; before each run the page cache is dropped "
                  "and the CSV read back, so every run finds the same free memory. Upload: curl's start to "
                  "its exit; the answer comes once the generation is live on the server, which also runs "
                  "the client here. Right before each run, 2 GiB of memory is written and freed, so that "
                  "both ways draw on memory the virtual machine's host has backed (see `_backed_memory` "
                  "in `scripts/bench_ports.py`). Medians (each run).", "",
                  "| way | seconds | against `promo build` | CPU seconds (median) | CPU / cores |",
                  "|---|---:|---:|---:|---:|"]
        ways = {"build": "`promo build in.csv`", "raw": "`curl -X POST -T in.csv .../upload` (raw)",
                "multipart": "`curl -F file=@in.csv .../upload` (multipart)"}
        for name, way in ways.items():
            c = u["cpu"][name]
            lines.append(f"| {way} | {u[name]:.2f} ({each(name)}) | {u[name] / u['build']:.2f}x | "
                         f"{c:.2f} | {c / u['cores']:.2f} s ({c / u['cores'] / u['build']:.2f}x) |")
        lines += ["", "CPU seconds: `promo build`'s; for an upload, curl's and the server's together "
                  f"(user and system, from the kernel's accounting). Divided by the {u['cores']} cores, "
                  "it is the shortest a run could take on this machine if nothing ever waited: the "
                  "floor of each ratio while the client shares the server's cores."]
    return lines
