"""Where things are: the repository, the release binaries the scripts run,
the files they read, and bench-data/, where everything they make goes."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RELEASE = ROOT / "target/release"
PROMO = RELEASE / "promo"
GEN = RELEASE / "gen-promotions"
FLOOR = RELEASE / "examples/hyper_floor"
CRITERION = ROOT / "target/criterion"
# make bench's duckdb and matplotlib, where the system's Python has none.
BENCH_VENV = ROOT / "target/tools/bench-venv"

WRK_SCRIPT = ROOT / "scripts/wrk-lookups.lua"
DEMO_FEED = ROOT / "fixtures/promotions.csv"
DEPLOY = ROOT / "deploy"

# Gitignored: generated feeds, data directories, reports and raw results.
BENCH_DATA = ROOT / "bench-data"


def rel(path):
    """`path` relative to the repository when it is inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def unrooted(text):
    """The text with this checkout's absolute paths made relative to it."""
    return str(text).replace(str(ROOT) + "/", "")


def revision():
    """The checkout's commit (what the binaries were built from), `-dirty`
    when the tree had changes."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                             text=True, timeout=30).stdout.strip()
    except OSError:
        out = ""
    return out or "unknown"
