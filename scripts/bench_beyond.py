"""Serving a generation larger than the memory `promo serve` may use.

`promo serve` runs in a memory cgroup limited well below the file's size
(1 GiB for the 10^8-record file), its page cache included. Against it, in
alternating rounds: wrk with ids drawn uniformly from the whole file, wrk
with the same ids Zipf-distributed (s = 1), each with a one-connection wrk
on /healthz beside it, and fio's 4 KiB random reads at iodepth 32 on the
same file (direct I/O: what the disk gives). Then, with a generation that
fits the cgroup live, verifying another one as large in the same cgroup
must not push the live one out of the page cache.

Needs root (cgroups, dropping the page cache) and fio, which `make bench`
installs with its other tools.
"""

import bisect
import mmap
import os
import random
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from . import procfs
from .bench_common import log, wrk
from .paths import PROMO
from .processes import Serve

CGROUP = "promo-bench"


class Cgroup:
    """A memory cgroup (v2 or v1) limited to `limit` bytes."""

    def __init__(self, limit):
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        base = Path("/sys/fs/cgroup") if v2 else Path("/sys/fs/cgroup/memory")
        self.dir = base / CGROUP
        self.dir.mkdir(exist_ok=True)
        (self.dir / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(limit))
        self.limit = limit

    def wrap(self, cmd):
        """`cmd` run inside the cgroup."""
        procs = self.dir / "cgroup.procs"
        return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *map(str, cmd)]

    def remove(self):
        for _ in range(50):
            try:
                self.dir.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def header(path):
    """(header bytes, record bytes, count) of a generation file."""
    with open(path, "rb") as f:
        h = f.read(128)
    version = int.from_bytes(h[8:12], "little")
    return (64, 64) if version == 1 else (128, 32), int.from_bytes(h[16:24], "little")


def sample_ids(path, n, seed=1):
    """`n` ids of records picked uniformly from the whole file."""
    (head, width), count = header(path)
    rng = random.Random(seed)
    out = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        for i in sorted(rng.randrange(count) for _ in range(n)):
            k = m[head + i * width: head + i * width + 16].hex()
            out.append(f"{k[:8]}-{k[8:12]}-{k[12:16]}-{k[16:20]}-{k[20:]}")
    rng.shuffle(out)
    return out


def zipf(ids, n, s=1.0, seed=2):
    """`n` draws from `ids`, the i-th most popular with weight 1 / i^s."""
    cum, total = [], 0.0
    for i in range(1, len(ids) + 1):
        total += 1.0 / i ** s
        cum.append(total)
    rng = random.Random(seed)
    return [ids[bisect.bisect_left(cum, rng.random() * total)] for _ in range(n)]


def serve(cgroup, data):
    """`promo serve` on `data` inside `cgroup`, once ready (a cold file
    in a small cgroup can take minutes)."""
    return Serve(data, wrap=cgroup.wrap, limit=900, interval=0.5, timeout=5)


def healthz_beside(url, seconds):
    """A one-connection wrk on /healthz for `seconds`, started now."""
    return subprocess.Popen(["wrk", "-t1", "-c1", f"-d{seconds}s", "--latency", url + "/healthz"],
                            stdout=subprocess.PIPE, text=True)


def p99(text):
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]


def fio(path, seconds):
    out = subprocess.run(["fio", "--name=randread", f"--filename={path}", "--rw=randread",
                          "--bs=4k", "--iodepth=32", "--ioengine=libaio", "--direct=1",
                          f"--runtime={seconds}", "--time_based", "--readonly",
                          "--output-format=terse", "--terse-version=3"],
                         check=True, capture_output=True, text=True).stdout
    return float(out.split(";")[7])  # read IOPS


def resident(path):
    """Bytes of `path` in the page cache."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])



def bench_beyond_memory(work, generation, results, seconds=20, rounds=2,
                        limit=1 << 30, id_count=2_000_000):
    size = generation.stat().st_size
    log(f"beyond memory: a {size / 1e9:.1f} GB generation, promo serve limited to "
        f"{limit / 2**30:.1f} GiB; sampling {id_count:,} ids")
    uniform = work / "ids-uniform.txt"
    skewed = work / "ids-zipf.txt"
    ids = sample_ids(generation, id_count)
    uniform.write_text("\n".join(ids) + "\n")
    skewed.write_text("\n".join(zipf(ids, id_count)) + "\n")
    data = work / "data-beyond"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    os.link(generation, data / "gen-0000000001.promo")
    cgroup = Cgroup(limit)
    runs = {"uniform": [], "zipf": [], "fio": []}
    try:
        procfs.drop_caches(3)
        server = serve(cgroup, data)
        url = server.url
        for r in range(rounds):
            for name, path in (("uniform", uniform), ("zipf", skewed)):
                log(f"  round {r + 1}: wrk, {name} ids")
                beside = healthz_beside(url, seconds)
                load = wrk(url, path, seconds)
                health = beside.communicate()[0]
                runs[name].append({**load, "healthz_p99": p99(health)})
                log(f"    {load['rps']:,.0f} requests/s, p99 {load['p99'] * 1e3:.1f} ms, "
                    f"/healthz p99 {runs[name][-1]['healthz_p99'] * 1e3:.1f} ms")
            log(f"  round {r + 1}: fio 4 KiB random reads, iodepth 32")
            runs["fio"].append(fio(generation, seconds))
            log(f"    {runs['fio'][-1]:,.0f} IOPS")
        server.stop()
        results["beyond_memory"] = {
            "file_bytes": size, "limit": limit, "ids": id_count, "seconds": seconds,
            "rounds": rounds, "fio_iops": statistics.median(runs["fio"]),
            **{name: {"rps": statistics.median([x["rps"] for x in runs[name]]),
                      "p99": statistics.median([x["p99"] for x in runs[name]]),
                      "healthz_p99": statistics.median([x["healthz_p99"] for x in runs[name]]),
                      "rounds": runs[name]} for name in ("uniform", "zipf")},
            "fio_rounds": runs["fio"],
        }
        results["beyond_memory"]["ratio"] = (results["beyond_memory"]["uniform"]["rps"]
                                             / results["beyond_memory"]["fio_iops"])
    finally:
        subprocess.run(["pkill", "-f", f"serve --data-dir {data}"], check=False)
        shutil.rmtree(data, ignore_errors=True)
        cgroup.remove()


def bench_verify_keeps_live(work, generation, results, limit=512 << 20, seconds=10):
    """With a copy of `generation` live in a cgroup of `limit` bytes (it fits,
    two do not) and looked up, verifying another copy in the same cgroup (as
    a server verifies a new generation): how much of the live file stays in
    the page cache."""
    data = work / "data-verify"
    other = work / "data-verify-new"
    for d in (data, other):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    live = data / "gen-0000000001.promo"
    shutil.copyfile(generation, live)
    shutil.copyfile(generation, other / "gen-0000000001.promo")
    ids = work / "ids-verify.txt"
    ids.write_text("\n".join(sample_ids(live, 200_000)) + "\n")
    cgroup = Cgroup(limit)
    try:
        procfs.drop_caches(3)
        server = serve(cgroup, data)
        # Lookups all over the live file, as in production.
        wrk(server.url, ids, seconds)
        before = resident(live)
        log(f"verify: live generation {live.stat().st_size / 1e6:.0f} MB, "
            f"{before / 1e6:.0f} MB of it cached; verifying another "
            f"{(other / 'gen-0000000001.promo').stat().st_size / 1e6:.0f} MB in the same "
            f"{limit >> 20} MiB cgroup")
        subprocess.run(cgroup.wrap([PROMO, "inspect", "--data-dir", other]), check=True,
                       stdout=subprocess.DEVNULL)
        after = resident(live)
        log(f"  live generation cached: {before / 1e6:.0f} MB before, {after / 1e6:.0f} MB after")
        results["verify_keeps_live"] = {"limit": limit, "live_bytes": live.stat().st_size,
                                        "cached_before": before, "cached_after": after}
        server.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(other, ignore_errors=True)
        cgroup.remove()


def report(results):
    lines = []
    b = results.get("beyond_memory")
    if b:
        lines += ["", "## Serving a generation larger than memory", "",
                  f"`promo serve` in a memory cgroup of {b['limit'] / 2**30:.1f} GiB (page cache "
                  f"included) on a {b['file_bytes'] / 1e9:.1f} GB generation; wrk as above with "
                  f"{b['ids']:,} ids sampled uniformly from the whole file, then the same ids "
                  "Zipf-distributed (s = 1), each beside a one-connection wrk on /healthz; fio "
                  "4 KiB random reads at iodepth 32 (direct I/O) on the same file. Alternating, "
                  f"{b['rounds']} rounds of {b['seconds']} s; medians.", "",
                  "| load | requests/s | p99 | /healthz p99 | against fio's IOPS |",
                  "|---|---:|---:|---:|---:|"]
        for name in ("uniform", "zipf"):
            w = b[name]
            lines.append(f"| {name} ids | {w['rps']:,.0f} | {w['p99'] * 1e3:.1f} ms | "
                         f"{w['healthz_p99'] * 1e3:.1f} ms | {w['rps'] / b['fio_iops']:.2f}x |")
        lines.append(f"| fio randread, iodepth 32 | {b['fio_iops']:,.0f} IOPS | | | 1.00x |")
    v = results.get("verify_keeps_live")
    if v:
        lines += ["", "## Verifying a new generation beside a live one", "",
                  f"A {v['live_bytes'] / 1e6:.0f} MB generation live and looked up in a "
                  f"{v['limit'] >> 20} MiB cgroup, then another as large verified in the same cgroup "
                  f"(`promo inspect`, the server's own check): {v['cached_before'] / 1e6:.0f} MB of the "
                  f"live file was cached before, {v['cached_after'] / 1e6:.0f} MB after."]
    return lines
