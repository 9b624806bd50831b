"""The benches and soaks, run from the repository's root as modules:

    python3 -m scripts.bench        make bench: promo beside its peers
    python3 -m scripts.bench_scale  make bench-scale: builds of 10^8 and 10^9 rows
    python3 -m scripts.bench_feeds  the feed part of make bench, alone
    python3 -m scripts.fleet        make fleet: deploy/compose.yaml as processes
    python3 -m scripts.soak         make soak: swaps under load
    python3 -m scripts.soak_fleet   make soak-fleet: the fleet through faults

What they share, lowest first: paths (the repository, its binaries and
bench-data/), procfs (what /proc says of a process and of the machine),
processes (starting a server or another process, waiting until it answers,
stopping it), then bench_common (what the parts of make bench share) and
bench_fleet (the fleet's store, replicas and nginx).
"""
