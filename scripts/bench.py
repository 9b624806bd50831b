"""`make bench`: promo measured beside its peers, in one run, on this machine.

Installs what it needs (Debian's nginx, wrk and time; PyPI's duckdb and
matplotlib; crates.io's s3s-fs server for the fleet), generates its data with
the project's generator, runs the build, serve, lookup, memory, swap and
fleet benchmarks (the fleet's are in bench_fleet.py, HTTPS and uploads in
bench_ports.py, churn and feeds by URL or compressed in bench_feeds.py,
idle connections in bench_connections.py),
and writes BENCHMARKS.md and
benchmarks.png. Absolute figures move from run to run on a shared machine;
the ratios between tools measured back to back are what to read.

    python3 -m scripts.bench [--rows 10000000] [--big-rows 100000000] [--duration 20]

(from the repository's root, as `make bench BENCH_ARGS="..."` runs it).

Everything it makes goes to --work (default bench-data/), which it reuses:
generated CSVs are kept between runs.
"""

import argparse
import datetime
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import (bench_beyond, bench_connections, bench_delta, bench_feeds, bench_fleet, bench_http2,
               bench_ports, bench_scale, procfs)
from .bench_common import Floor, alternate, certificate, generate, log, run, start_nginx, warm, wrk
from .paths import BENCH_DATA, BENCH_VENV, CRITERION, PROMO, ROOT, unrooted
from .processes import Serve, http_get, stop_nginx

BATCH = 1000


def ensure_tools():
    apt = [pkg for tool, pkg in [("wrk", "wrk"), ("nginx", "nginx"), ("/usr/bin/time", "time"),
                                 ("curl", "curl"), ("openssl", "openssl"), ("fio", "fio"),
                                 ("zstd", "zstd")]
           if not shutil.which(tool)]
    if subprocess.run([sys.executable, "-c", "import ensurepip"], capture_output=True).returncode:
        apt.append("python3-venv")  # for the virtual environment below
    if apt:
        log(f"installing {' '.join(apt)} (Debian)")
        run(["apt-get", "update", "-qq"], stdout=subprocess.DEVNULL)
        run(["apt-get", "install", "-y", "-qq", *apt], stdout=subprocess.DEVNULL,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    try:
        importlib.import_module("duckdb")
        importlib.import_module("matplotlib")
    except ImportError:
        # Into the project's own virtual environment, never the system's
        # Python (Debian's refuses pip installs), then run again in it, the
        # same module with the same arguments, from the same directory.
        venv = BENCH_VENV
        python = venv / "bin/python"
        if Path(sys.prefix).resolve() == venv.resolve():
            raise
        if not python.exists():
            log(f"installing duckdb and matplotlib (PyPI) into {venv.relative_to(ROOT)}")
            run([sys.executable, "-m", "venv", str(venv)])
            run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 "duckdb", "matplotlib"])
        os.execv(python, [str(python), "-m", __spec__.name, *sys.argv[1:]])


def timed(cmd, **kw):
    """Runs cmd under /usr/bin/time: (wall seconds, peak RSS bytes, stdout)."""
    out = Path(kw.pop("time_file", BENCH_DATA / "time.txt"))
    out.parent.mkdir(parents=True, exist_ok=True)
    p = run(["/usr/bin/time", "-f", "%e %M", "-o", str(out), *map(str, cmd)],
            stdout=subprocess.PIPE, text=True, **kw)
    wall, rss_kb = out.read_text().split()[-2:]
    return float(wall), int(rss_kb) * 1024, p.stdout


def status_counts(url):
    """promo's own count of /promotions/ answers by status."""
    text = http_get(url + "/metrics")[1].decode()
    counts = {}
    for m in re.finditer(r'^promo_http_requests_total\{route="promotions",status="(\d+)"\} (\d+)',
                         text, re.M):
        counts[m.group(1)] = int(m.group(2))
    return counts


def bench_build(work, rows, results, rounds=3):
    """promo, DuckDB and GNU sort on the same CSV, taking turns `rounds` times:
    each tool's median wall time and its highest peak RSS."""
    csv, _ = generate(work, rows)
    mb = csv.stat().st_size / 1e6
    data = work / "data-build"
    parquet = work / "x.parquet"
    sorted_csv = work / "sorted.csv"
    sql = (f"COPY (SELECT * FROM read_csv('{csv}', header=false, columns={{'id':'UUID',"
           f"'price':'DOUBLE','expiration_date':'VARCHAR'}}) ORDER BY id) TO '{parquet}' (FORMAT parquet)")
    sort_cmd = ["sort", "-t,", "-k1,1", "--parallel=2", "-S", "1G", "-o", sorted_csv, csv]
    tools = {
        "promo": ([PROMO, "build", csv, "--data-dir", data], None, f"promo build {csv.name}"),
        "duckdb": ([sys.executable, "-c", f"import duckdb; c = duckdb.connect(); "
                    f"c.execute('SET threads TO 2'); c.execute({sql!r})"], None,
                   f"duckdb (2 threads): {sql}"),
        "sort": (sort_cmd, {**os.environ, "LC_ALL": "C"},
                 "LC_ALL=C " + " ".join(map(str, sort_cmd[:-3])) + " -o out.csv in.csv"),
    }
    runs = {name: [] for name in tools}
    for r in range(rounds):
        for name, (cmd, env, _) in tools.items():
            log(f"build: {name}, round {r + 1} of {rounds}")
            if name == "promo":
                shutil.rmtree(data, ignore_errors=True)  # a first build, every time
            warm(csv)  # promo drops the feed from the page cache as it reads it
            wall, rss, out = timed(cmd, env=env)
            runs[name].append({"wall": wall, "rss": rss})
            if name == "promo":
                log(f"  {out.strip()}")
    parquet.unlink(missing_ok=True)
    sorted_csv.unlink(missing_ok=True)
    builds = {}
    for name, (_, _, command) in tools.items():
        wall = statistics.median(x["wall"] for x in runs[name])
        builds[name] = {"wall": wall, "rss": max(x["rss"] for x in runs[name]), "command": command,
                        "walls": [x["wall"] for x in runs[name]],
                        "rows_per_s": rows / wall, "mb_per_s": mb / wall}
    results["build"] = {"rows": rows, "csv_mb": mb, "rounds": rounds, "tools": builds}
    return data


def bench_big_build(work, rows, results):
    csv, ids = generate(work, rows)
    data = work / "data-big"
    shutil.rmtree(data, ignore_errors=True)
    warm(csv)
    log(f"build: promo, {rows:,} rows, --memory-limit 1GiB")
    wall, rss, out = timed([PROMO, "build", csv, "--data-dir", data, "--memory-limit", "1GiB",
                            "--tmp-dir", work])
    log(f"  {out.strip()}")
    results["big_build"] = {"rows": rows, "wall": wall, "rss": rss, "rows_per_s": rows / wall,
                            "command": f"promo build {csv.name} --memory-limit 1GiB"}
    csv.unlink()  # the generation is what the next steps need; keep the disk free
    return data, ids


def bench_serve(work, data, ids, duration, results, rounds=3):
    """promo, the hyper floor and nginx, alternately, `rounds` times each:
    the machine's noise then falls on all three."""
    server = Serve(data)
    body = http_get(server.url + "/promotions/" + Path(ids).read_text().split()[0])[1]
    nginx, nginx_url = start_nginx(work, body)
    floor = Floor(work, body, os.cpu_count())
    runs, med = alternate({"promo": server.url, "floor": floor.url, "nginx": nginx_url}, ids, duration,
                          rounds, "serve")
    server.stop()
    floor.stop()
    stop_nginx(nginx)
    results["serve"] = {"runs": runs, "body_bytes": len(body), "rounds": rounds, **med}


def bench_tls(work, data, ids, duration, results, rounds=3):
    """promo over TLS, nginx over TLS with the same certificate and fixed
    body, and promo over plain HTTP, alternately."""
    cert, key = certificate(work)
    plain = Serve(data, ready="/healthz", limit=120)
    https = Serve(data, "--tls-cert", cert, "--tls-key", key, scheme="https", ready="/healthz", limit=120)
    plain_url, https_url = plain.url, https.url
    body = http_get(plain_url + "/promotions/" + Path(ids).read_text().split()[0])[1]
    nginx, nginx_url = start_nginx(work, body, (cert, key))
    runs, med = alternate({"promo_https": https_url, "nginx_https": nginx_url, "promo_http": plain_url},
                          ids, duration, rounds, "tls")
    plain.stop()
    https.stop()
    stop_nginx(nginx)
    results["tls"] = {"runs": runs, "rounds": rounds, **med}


def bench_batch(data, ids, duration, results, rounds=3):
    """Ids answered a second: 1,000-id batches against single-id GETs,
    alternately, on the same server and connections settings."""
    server = Serve(data)
    runs = {"single": [], "batch": []}
    for r in range(rounds):
        for name in ("single", "batch"):
            log(f"batch: {name}, round {r + 1} of {rounds}")
            w = wrk(server.url, ids, duration, batch=0 if name == "single" else BATCH)
            w["ids_per_s"] = w["rps"] * (1 if name == "single" else BATCH)
            runs[name].append(w)
    server.stop()
    med = lambda rs: statistics.median(r["ids_per_s"] for r in rs)
    results["batch"] = {"runs": runs, "single": med(runs["single"]), "batch": med(runs["batch"]),
                        "size": BATCH}


def criterion_estimate(name):
    path = CRITERION / name / "new/estimates.json"
    return json.loads(path.read_text())["median"]["point_estimate"]


def bench_lookup(generation, results):
    log(f"lookup: criterion on {generation.name}")
    p = run(["cargo", "bench", "--bench", "lookup", "--", "--warm-up-time", "2",
             "--measurement-time", "5"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PROMO_BENCH_GENERATION": str(generation)})
    m = re.search(r"lookup/(\d+): 4 KiB pages touched per lookup: hit mean ([\d.]+) max (\d+), "
                  r"miss mean ([\d.]+) max (\d+)", p.stdout)
    n = m.group(1)
    entry = {"records": int(n), "pages_hit_mean": float(m.group(2)), "pages_max": max(int(m.group(3)), int(m.group(5)))}
    for case in ["hit", "miss", "hit-cached", "one-random-record-read", "dependent-random-record-read"]:
        entry[case] = criterion_estimate(f"lookup_{n}/{case}")
    results.setdefault("lookup", []).append(entry)


def bench_build_criterion(results):
    log("build: criterion, 1M rows")
    run(["cargo", "bench", "--bench", "build"], cwd=ROOT, stdout=subprocess.DEVNULL,
        env={**os.environ, "PROMO_BENCH_BUILD_ROWS": "1000000"})
    found = {}
    for est in (CRITERION / "build").glob("*/new/estimates.json"):
        found[est.parent.parent.name] = json.loads(est.read_text())["median"]["point_estimate"] / 1e9
    results["build_criterion"] = found


def bench_memory(data, ids, seconds, results):
    log(f"memory: promo serve on the big generation, {seconds}s of load")
    server = Serve(data)
    load = wrk(server.url, ids, seconds)
    status = procfs.status(server.proc.pid)
    results["memory"] = {"rss_anon": status["RssAnon"], "rss_file": status["RssFile"], "rps": load["rps"],
                         "seconds": seconds}
    server.stop()


def bench_swap(work, generation, ids, duration, results):
    log("swap: a new generation published under load")
    data = work / "data-swap"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    os.link(generation, data / "gen-0000000001.promo")
    server = Serve(data)
    wrk(server.url, ids, 3)
    steady = wrk(server.url, ids, duration)
    before = status_counts(server.url)
    # Publish while wrk runs: copy to a temporary name, then rename.
    def publish():
        time.sleep(duration / 3)
        tmp = data / ".tmp-bench.promo"
        shutil.copyfile(generation, tmp)
        os.rename(tmp, data / "gen-0000000002.promo")
    import threading
    t = threading.Thread(target=publish)
    t.start()
    swap = wrk(server.url, ids, duration)
    t.join()
    after = status_counts(server.url)
    live = http_get(server.url + "/readyz")[1].decode().strip()
    server.stop()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    failed = sum(v for k, v in delta.items() if k not in ("200", "404")) + swap["socket_errors"]
    results["swap"] = {"steady": steady, "swap": swap, "failed": failed, "statuses": delta, "live_after": live}


def fmt_bytes(n):
    return f"{n / 2**20:,.0f} MiB"


# What BENCHMARKS.md keeps from its marker on: figures that decided the
# design, which this bench does not measure; written by hand, carried over.
KEPT_MARKER = "<!-- From here on the text is kept as written"


def kept_section(path):
    """The hand-kept end of the file at `path`, from its marker on, or ""."""
    if not path.exists():
        return ""
    text = path.read_text()
    at = text.find(KEPT_MARKER)
    return "" if at < 0 else "\n" + text[at:]


def write_report(results, path, chart):
    b = results["build"]["tools"]
    ratio = lambda a, c: a / c if c else float("nan")
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (scripts/bench.py) on {results['date']}"
        + "".join(f"; {part} run again on {day}" for part, day in results.get("rerun", {}).items()) + ".",
        f"Machine: {results['machine']['cores']} cores ({results['machine']['cpu']}), "
        f"{results['machine']['memory_gib']} GiB, Linux {results['machine']['kernel']}. "
        "A shared virtual machine: absolute figures move between runs, so each peer "
        "runs right after promo, on the same data, and the ratios are what to read.",
        "",
        f"![promo beside its peers]({chart.name})",
        "",
        f"## Build: {results['build']['rows']:,} generated rows ({results['build']['csv_mb']:,.0f} MB of CSV)",
        "",
        f"The three tools take turns, {results['build'].get('rounds', 1)} rounds; wall is each tool's median "
        "(all runs in brackets), peak RSS its highest.",
        "",
        "| tool | wall | rows/s | MB/s | peak RSS | promo's rows/s against it |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ["promo", "duckdb", "sort"]:
        t = b[name]
        walls = ", ".join(f"{w:.2f}" for w in t.get("walls", [t["wall"]]))
        lines.append(f"| {name} | {t['wall']:.2f} s ({walls}) | {t['rows_per_s']:,.0f} | {t['mb_per_s']:,.0f} | "
                     f"{fmt_bytes(t['rss'])} | {ratio(t['wall'], b['promo']['wall']):.2f}x |")
    lines += ["", "Commands:", ""] + [f"- {n}: `{unrooted(b[n]['command'])}`" for n in ["promo", "duckdb", "sort"]]
    if "big_build" in results:
        bb = results["big_build"]
        ten_x = 10 * b["promo"]["wall"] * bb["rows"] / (10 * results["build"]["rows"])
        lines += ["", f"### {bb['rows']:,} rows, `--memory-limit 1GiB` (spilling)", "",
                  f"`{bb['command']}`: {bb['wall']:.1f} s ({bb['rows_per_s']:,.0f} rows/s), "
                  f"peak RSS {fmt_bytes(bb['rss'])}; {bb['wall'] / ten_x:.2f}x of ten times the "
                  f"{results['build']['rows']:,}-row time."]
    if results.get("build_criterion"):
        lines += ["", "Criterion (`benches/build.rs`, 1M rows): " + ", ".join(
            f"{k}: {v:.3f} s" for k, v in sorted(results["build_criterion"].items())) + "."]
    lines += serve_report(results)
    lines += bench_http2.report(results)
    lines += ["", "## Lookup (criterion, `benches/lookup.rs`)", "",
              "| records | hit | miss | hit, cache-resident | one random record read | one dependent record read | pages touched (mean / max) |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for l in results.get("lookup", []):
        lines.append(f"| {l['records']:,} | {l['hit']:.0f} ns | {l['miss']:.0f} ns | {l['hit-cached']:.0f} ns | "
                     f"{l['one-random-record-read']:.0f} ns | {l['dependent-random-record-read']:.0f} ns | "
                     f"{l['pages_hit_mean']:.2f} / {l['pages_max']} |")
    lines += ["", "Hits and misses probe random keys across the whole table (the file is in the page cache); "
              "\"cache-resident\" repeats 1,024 keys. \"one random record read\" is no search at all, and "
              "independent reads overlap, so it is a throughput floor, not a latency. \"one dependent record read\" "
              "takes each index from the record read before: the memory latency of this machine, the floor "
              "under any lookup that reads the table once."]
    if "memory" in results:
        m = results["memory"]
        lines += ["", "## Serve memory", "",
                  f"`promo serve` on the {results['big_build']['rows']:,}-record generation after {m['seconds']} s "
                  f"of wrk load ({m['rps']:,.0f} requests/s): anonymous RSS {fmt_bytes(m['rss_anon'])}, "
                  f"file-backed RSS {fmt_bytes(m['rss_file'])}."]
    if "swap" in results:
        w = results["swap"]
        lines += ["", "## Swap under load", "",
                  f"wrk as above for {results['duration']} s while a new generation is copied into the data "
                  f"directory and renamed into place a third of the way in. Failed requests (statuses other "
                  f"than 200 and 404, and socket errors): **{w['failed']}** of {w['swap']['requests']:,}. "
                  f"Statuses seen by promo: {w['statuses']}. After: {w['live_after']}.", "",
                  "| run | requests/s | p50 | p99 |", "|---|---:|---:|---:|",
                  f"| steady | {w['steady']['rps']:,.0f} | {w['steady']['p50'] * 1e3:.2f} ms | {w['steady']['p99'] * 1e3:.2f} ms |",
                  f"| with a swap | {w['swap']['rps']:,.0f} | {w['swap']['p50'] * 1e3:.2f} ms | {w['swap']['p99'] * 1e3:.2f} ms |",
                  "", f"p99 with a swap is {ratio(w['swap']['p99'], w['steady']['p99']):.2f}x the steady p99."]
    if "batch" in results:
        bt = results["batch"]
        lines += ["", f"## Batch lookups: `POST /promotions/batch` with {bt['size']:,} ids", "",
                  "Ids answered a second by `wrk -t2 -c64` sending 1,000-id batches "
                  "(`BATCH=1000` with `scripts/wrk-lookups.lua`), against single-id GETs (the same script), "
                  "alternately on one server; both 90% present ids, 10% absent. Medians.", "",
                  "| requests | ids/s | requests/s | p99 |", "|---|---:|---:|---:|"]
        for name in ("single", "batch"):
            for w in bt["runs"][name]:
                lines.append(f"| {name} | {w['ids_per_s']:,.0f} | {w['rps']:,.0f} | {w['p99'] * 1e3:.2f} ms |")
        lines += ["", f"Batches answer {ratio(bt['batch'], bt['single']):.1f}x the ids a second of single GETs."]
    lines += bench_connections.report(results)
    lines += bench_beyond.report(results)
    scale = BENCH_DATA / "scale.json"
    if scale.exists():
        lines += bench_scale.report(json.loads(scale.read_text()))
    lines += bench_ports.report(results)
    lines += bench_feeds.report(results)
    if "fleet" in results:
        lines += bench_fleet.report(results)
    if "delta" in results:
        lines += bench_delta.report(results)
    lines += ["", "Raw results: `bench-data/results.json`.", ""]
    path.write_text("\n".join(lines) + kept_section(path))


def serve_report(results):
    """BENCHMARKS.md lines for results["serve"] and results["tls"]."""
    s, ms = results["serve"], lambda x: f"{x * 1e3:.2f} ms"

    def table(runs, med, names):
        out = ["| server | requests/s | p50 | p99 |", "|---|---:|---:|---:|"]
        for name, label in names.items():
            for i, w in enumerate(runs[name]):
                out.append(f"| {label}, run {i + 1} | {w['rps']:,.0f} | {ms(w['p50'])} | {ms(w['p99'])} |")
            m = med[name]
            out.append(f"| **{label}, median** | **{m['rps']:,.0f}** | {ms(m['p50'])} | {ms(m['p99'])} |")
        return out

    lines = ["", f"## Serve: `wrk -t2 -c64 -d{results['duration']}s --latency`, 90% present ids, 10% absent", "",
             f"Three servers take turns, {s['rounds']} rounds: promo; nginx returning a fixed "
             f"{s['body_bytes']}-byte JSON body for every `/promotions/` path (no lookup, no 404s); and "
             "the *hyper floor* (`examples/hyper_floor.rs`): promo's own HTTP stack (its listeners, one "
             "runtime per core, its hyper settings) answering that fixed body, with no routing, lookup, "
             "counting or timing. The floor is what hyper and tokio serve on this machine; promo's "
             "distance to it is promo's own cost, the floor's distance to nginx is the HTTP stack's.", ""]
    lines += table(s["runs"], s, {"promo": "promo", "floor": "hyper floor", "nginx": "nginx"})
    lines += ["", f"promo serves **{s['promo']['rps'] / s['nginx']['rps']:.2f}x** nginx's median requests/s "
              f"with a p99 **{s['promo']['p99'] / s['nginx']['p99']:.2f}x** nginx's; "
              f"{s['promo']['rps'] / s['floor']['rps']:.2f}x the hyper floor's requests/s (p99 "
              f"{s['promo']['p99'] / s['floor']['p99']:.2f}x). The floor serves "
              f"{s['floor']['rps'] / s['nginx']['rps']:.2f}x nginx's.",
              "", f"Command: `IDS=ids.txt {unrooted(s['promo']['command'])}`"]
    if "tls" in results:
        t = results["tls"]
        lines += ["", "## HTTPS: promo and nginx over TLS 1.3, and promo over plain HTTP", "",
                  "The same load. promo with `--tls-cert` and nginx (`ssl_protocols TLSv1.3`, the fixed "
                  "body) share one self-signed ECDSA P-256 certificate; promo over plain HTTP runs in the "
                  f"same rounds ({t['rounds']}, taking turns). wrk keeps its connections, so this is the "
                  "cost of encrypting requests, not of handshakes.", ""]
        lines += table(t["runs"], t, {"promo_https": "promo, TLS 1.3", "nginx_https": "nginx, TLS 1.3",
                                      "promo_http": "promo, plain HTTP"})
        lines += ["", f"Over TLS promo serves **{t['promo_https']['rps'] / t['nginx_https']['rps']:.2f}x** "
                  f"nginx's median requests/s (p99 {t['promo_https']['p99'] / t['nginx_https']['p99']:.2f}x), "
                  f"and {t['promo_https']['rps'] / t['promo_http']['rps']:.2f}x its own plain HTTP."]
    return lines


def chart(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = 3 if "delta" in results else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    a, b = axes[0], axes[1]
    if "delta" in results:
        bench_delta.chart(results, axes[2])
    tools = results["build"]["tools"]
    names = ["promo", "duckdb", "sort"]
    a.bar(names, [tools[n]["rows_per_s"] / 1e6 for n in names], color=["#2a7", "#999", "#bbb"])
    a.set_title(f"build {results['build']['rows'] / 1e6:.0f}M rows: million rows/s")
    serve = results["serve"]
    bars = {"promo": serve["promo"], "hyper floor": serve["floor"], "nginx": serve["nginx"]}
    if "tls" in results:
        bars.update({"promo TLS": results["tls"]["promo_https"], "nginx TLS": results["tls"]["nginx_https"]})
    b.bar(list(bars), [w["rps"] / 1e3 for w in bars.values()], color=["#2a7", "#bbb", "#999", "#2a7", "#999"])
    b.tick_params(axis="x", labelsize=8)
    b.set_title("serve: thousand requests/s (medians)")
    fig.suptitle(f"promo beside its peers, {results['machine']['cores']} cores, {results['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--big-rows", type=int, default=100_000_000, help="0 skips the spilling build, memory and big lookups")
    ap.add_argument("--duration", type=int, default=20, help="seconds of each wrk run")
    ap.add_argument("--memory-seconds", type=int, default=60)
    ap.add_argument("--no-fleet", action="store_true", help="skip the fleet bench (S3, replicas, nginx)")
    ap.add_argument("--work", type=Path, default=BENCH_DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--only", choices=sorted(PARTS), action="append",
                    help="run this part again, keeping the other figures of the last run's results.json")
    args = ap.parse_args()
    started = time.time()
    ensure_tools()
    log("building promo (release)")
    run(["cargo", "build", "--release", "--bins", "--example", "hyper_floor"], cwd=ROOT)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.only:
        return rerun(args, started)
    results = {"date": datetime.date.today().isoformat(), "machine": procfs.machine(), "duration": args.duration}
    data = bench_build(args.work, args.rows, results)
    generation = sorted(data.glob("gen-*.promo"))[-1]
    csv, ids = generate(args.work, args.rows)
    bench_serve(args.work, data, ids, args.duration, results)
    bench_swap(args.work, generation, ids, args.duration, results)
    bench_batch(data, ids, args.duration, results)
    bench_tls(args.work, data, ids, args.duration, results)
    bench_http2.bench_http2(args.work, data, ids, args.duration, results)
    bench_connections.bench_idle_connections(args.work, data, ids, results)
    bench_feeds.bench_feeds(args.work, csv, results)
    if not args.no_fleet:
        bench_fleet.bench_fleet(args.work, csv, ids, results)
        bench_delta.bench_delta(args.work, results, args.rows, args.big_rows)
    bench_lookup(generation, results)
    bench_build_criterion(results)
    if args.big_rows:
        big, big_ids = bench_big_build(args.work, args.big_rows, results)
        big_gen = sorted(big.glob("gen-*.promo"))[-1]
        bench_lookup(big_gen, results)
        bench_memory(big, big_ids, args.memory_seconds, results)
        bench_beyond.bench_beyond_memory(args.work, big_gen, results, args.duration)
    bench_beyond.bench_verify_keeps_live(args.work, generation, results)
    # Last: it drops the page cache before each of its runs.
    bench_ports.bench_upload(args.work, csv, results)
    results["seconds"] = time.time() - started
    finish(args, results, started)


def finish(args, results, started):
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    png = args.out.with_name("benchmarks.png")
    chart(results, png)
    write_report(results, args.out, png)
    log(f"wrote {args.out} and {png} in {(time.time() - started) / 60:.1f} minutes")


# The parts `--only` runs again: (args, the last run's 10M-row data
# directory, its ids, results) -> None.
PARTS = {
    "http2": lambda args, data, ids, results: bench_http2.bench_http2(args.work, data, ids, args.duration,
                                                                      results),
    "delta": lambda args, data, ids, results: bench_delta.bench_delta(args.work, results, args.rows,
                                                                      args.big_rows),
}


def rerun(args, started):
    """The parts in args.only run again; the report is written after each."""
    results = json.loads((args.work / "results.json").read_text())
    generations = sorted((args.work / "data-build").glob("gen-*.promo"))
    if not generations or results["build"]["rows"] != args.rows:
        raise SystemExit(f"--only needs a whole run of make bench at --rows {args.rows} first")
    _, ids = generate(args.work, args.rows)
    for part in args.only:
        PARTS[part](args, args.work / "data-build", ids, results)
        results.setdefault("rerun", {})[part] = datetime.date.today().isoformat()
        finish(args, results, started)


if __name__ == "__main__":
    main()
