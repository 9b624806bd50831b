"""deploy/compose.yaml's topology as plain processes on this machine, for
people without Docker and for the monitoring test: `make fleet`.

- a store: an S3 server (s3s-fs, the one the tests use, installed from
  crates.io into bench-data/tools on first use), or with --store file a
  directory (the shared-filesystem store);
- a builder: `promo build --publish` of the demo feed at start, then every
  --interval seconds (the feed given with --feed when that file exists),
  writing --metrics-file for node_exporter;
- two replicas, `promo serve --source`, each with its own data directory;
- nginx with deploy/nginx/promo.conf in front of them;
- node_exporter reading the build's metrics file (textfile collector only);
- Prometheus with deploy/prometheus/prometheus.yml and alerts.yml, its
  targets pointed at these processes.

Run from the repository's root: `python3 -m scripts.fleet [--store file]`.
It prints the URLs, writes them as JSON to --urls-file if given, and runs
until SIGINT or SIGTERM, then stops everything it started. Grafana is not
packaged by Debian: import deploy/grafana/promo.json into your own, with
this Prometheus as its data source.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from . import bench_fleet
from .bench_common import log
from .paths import BENCH_DATA, DEMO_FEED, DEPLOY, PROMO
from .processes import Serve, free_port, start, stop_all, wait_ready


def which(name, *also):
    for candidate in (name, *also):
        path = shutil.which(candidate) or shutil.which(candidate, path="/usr/sbin:/sbin")
        if path:
            return path
    sys.exit(f"fleet: {name} is missing; install Debian's package for it "
             "(make test installs them: scripts/tools.sh)")


class FileStore:
    """The shared-filesystem store: a directory, as file:// URL."""

    def __init__(self, work):
        root = (work / "fleet-store").resolve()
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        self.url = root.as_uri()
        self.env = dict(os.environ)

    def stop(self):
        pass


class Builder(threading.Thread):
    """`promo build --publish` now, then every `interval` seconds."""

    def __init__(self, promo, work, store, feed, interval, textfile):
        super().__init__(daemon=True)
        self.promo, self.store, self.feed, self.interval = promo, store, feed, interval
        self.dir = work / "fleet-builder"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.metrics = textfile / "promo_build.prom"
        self.stopping = threading.Event()
        self.published = threading.Event()

    def build_once(self):
        feed = self.feed if self.feed and self.feed.exists() else DEMO_FEED
        p = subprocess.run([self.promo, "build", feed, "--data-dir", self.dir,
                            "--publish", self.store.url, "--metrics-file", self.metrics],
                           env=self.store.env, capture_output=True, text=True)
        if p.returncode == 0:
            log(f"builder: {p.stdout.strip().splitlines()[-1]}")
            self.published.set()
        elif p.returncode == 3:
            # The guards are promo's defaults, as in deploy/compose.yaml: a
            # --feed that churns more than 50% of the ids, or jumps more
            # than 5% of the prices, against the store's newest is refused.
            log(f"builder: a guard refused the feed (exit 3); the store keeps its newest generation\n{p.stderr}")
        else:
            log(f"builder: the build failed; the store keeps its newest generation\n{p.stderr}")

    def run(self):
        while True:
            self.build_once()
            if self.stopping.wait(self.interval):
                return


def prometheus_config(work, replicas, node_exporter, every):
    """deploy/prometheus/prometheus.yml with this fleet's targets, and the
    shipped alerts.yml beside it."""
    d = (work / "fleet-prometheus").resolve()
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    text = (DEPLOY / "prometheus/prometheus.yml").read_text()
    text = text.replace('["replica-a:1321", "replica-b:1321"]',
                        json.dumps([f"127.0.0.1:{p}" for p in replicas]))
    text = text.replace('["node-exporter:9100"]', json.dumps([f"127.0.0.1:{node_exporter}"]))
    text = re.sub(r"(scrape_interval|evaluation_interval): \S+", rf"\1: {every}", text)
    if "127.0.0.1" not in text:
        raise RuntimeError("deploy/prometheus/prometheus.yml no longer has the targets to replace")
    (d / "prometheus.yml").write_text(text)
    shutil.copyfile(DEPLOY / "prometheus/alerts.yml", d / "alerts.yml")
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=BENCH_DATA,
                    help="where the processes keep their files (default bench-data)")
    ap.add_argument("--store", choices=["s3", "file"], default="s3")
    ap.add_argument("--promo", type=Path, default=PROMO)
    ap.add_argument("--feed", type=Path, help="the feed to build every --interval "
                    "(default: the demo feed)")
    ap.add_argument("--interval", type=float, default=1800, help="seconds between builds")
    ap.add_argument("--scrape-interval", default="15s",
                    help="Prometheus's scrape and rule evaluation interval")
    ap.add_argument("--urls-file", type=Path, help="write the URLs here as JSON once up")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    promo = str(args.promo.resolve())

    running = []
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    builder = None
    try:
        store = (bench_fleet.S3Server(args.work, running) if args.store == "s3"
                 else FileStore(args.work))
        textfile = (args.work / "fleet-textfile").resolve()
        shutil.rmtree(textfile, ignore_errors=True)
        textfile.mkdir()
        builder = Builder(promo, args.work, store, args.feed, args.interval, textfile)
        builder.start()

        replicas = []
        for name in ("a", "b"):
            data = args.work / f"fleet-replica-{name}"
            shutil.rmtree(data, ignore_errors=True)
            replica = Serve(data, "--source", store.url, "--source-interval", "1", promo=promo,
                            ready=None, running=running, env=store.env, stderr=None)
            replicas.append(replica.port)
        for port in replicas:
            wait_ready(f"http://127.0.0.1:{port}/healthz", 120, timeout=2)

        nginx = bench_fleet.Nginx(args.work, replicas, running)

        node_port = free_port()
        start([which("prometheus-node-exporter", "node_exporter"), "--collector.disable-defaults",
               "--collector.textfile", f"--collector.textfile.directory={textfile}",
               f"--web.listen-address=127.0.0.1:{node_port}"], running,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        prom_dir = prometheus_config(args.work, replicas, node_port, args.scrape_interval)
        prom_port = free_port()
        start([which("prometheus"), f"--config.file={prom_dir / 'prometheus.yml'}",
               f"--storage.tsdb.path={prom_dir / 'data'}",
               f"--web.listen-address=127.0.0.1:{prom_port}"], running,
              stdout=subprocess.DEVNULL, stderr=(prom_dir / "prometheus.log").open("w"))
        wait_ready(f"http://127.0.0.1:{prom_port}/-/ready", 120, timeout=2)
        wait_ready(f"http://127.0.0.1:{node_port}/metrics", 120, timeout=2)

        urls = {
            "lookups": nginx.url,
            "replicas": [f"http://127.0.0.1:{p}" for p in replicas],
            "prometheus": f"http://127.0.0.1:{prom_port}",
            "node_exporter": f"http://127.0.0.1:{node_port}",
            "store": store.url,
            "build_metrics": str(builder.metrics),
        }
        print(f"""promo fleet up ({args.store} store: {store.url})
  lookups (nginx):  {nginx.url}/promotions/{{id}}
  replicas:         {'  '.join(urls['replicas'])}
  prometheus:       {urls['prometheus']}/alerts
  build metrics:    {urls['node_exporter']}/metrics
Ctrl-C stops it.""", flush=True)
        if args.urls_file:
            tmp = args.urls_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(urls))
            tmp.rename(args.urls_file)
        while not stop.wait(0.5):
            if any(p.poll() is not None for p in running):
                sys.exit("fleet: a process exited: " + " ".join(
                    str(p.args[0]) for p in running if p.poll() is not None))
    finally:
        if builder:
            builder.stopping.set()
        stop_all(running, timeout=30)
        log("fleet stopped")


if __name__ == "__main__":
    main()
