#!/usr/bin/env bash
# Runs each fuzz target of tests/fuzz for FUZZ_SECONDS seconds (default 60),
# seeded from fixtures/, then prints one summary line per target:
#   fuzz: <target> executions=N exec/s=N corpus=N findings=N (crash=N leak=N timeout=N oom=N)
# Exits non-zero if any target found anything (a crash, a leak, a timeout or
# running out of memory) or could not run.
#
# Usage: make fuzz [FUZZ_SECONDS=60], or FUZZ_TARGETS="row id" bash scripts/fuzz.sh
#
# cargo-fuzz (libFuzzer with AddressSanitizer) is installed if missing. It
# passes flags that only nightly Rust accepts (-Zsanitizer=address);
# RUSTC_BOOTSTRAP=1 makes the stable toolchain accept them.
#
# Everything made here is kept under tests/fuzz and gitignored there:
#   seeds/<target>      made afresh from fixtures/ on every run
#   corpus/<target>     what libFuzzer found interesting, kept between runs
#   artifacts/<target>  inputs that crashed, leaked or hung (crash-*, ...)
#   logs/<target>.log   libFuzzer's output
# Reproduce a finding: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz -a <target> <artifact>
set -euo pipefail

cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_DIR=tests/fuzz
read -r -a TARGETS <<<"${FUZZ_TARGETS:-row id route header delta}"
export RUSTC_BOOTSTRAP=1
# The same flags for the build and every run, so that run does not rebuild.
FUZZ_FLAGS=(--fuzz-dir "$FUZZ_DIR" --debug-assertions)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

echo "fuzz: building the targets" >&2
cargo fuzz build "${FUZZ_FLAGS[@]}"

# Seeds --------------------------------------------------------------------

seeds=$FUZZ_DIR/seeds
rm -rf "$seeds"
mkdir -p "$seeds"/{row,id,route,header,delta} "$FUZZ_DIR"/logs
for t in "${TARGETS[@]}"; do
    mkdir -p "$FUZZ_DIR/corpus/$t" "$FUZZ_DIR/artifacts/$t"
done

# A u64 as 8 little-endian bytes.
le64() {
    local hex out='' i
    hex=$(printf '%016x' "$1")
    for ((i = 14; i >= 0; i -= 2)); do
        out+="\\x${hex:i:2}"
    done
    printf '%b' "$out"
}

# row: three control bytes, then CSV. "!!!" (odd first byte) cuts the fields
# at commas; a chunk length of 34 ('!' + 1) for the chunked parse.
n=0
for csv in fixtures/*.csv; do
    name=$(basename "$csv" .csv)
    # Whole files only when small: a long seed makes every input slow.
    if (($(wc -c <"$csv") <= 4096)); then
        { printf '!!!'; cat "$csv"; } >"$seeds/row/$name-whole"
    fi
    while IFS= read -r line || [[ -n $line ]]; do
        n=$((n + 1))
        printf '!!!%s\n' "$line" >"$seeds/row/$name-$n"
        # Even first byte: the fields are cut at byte positions instead.
        printf '\x48\x0a\x03%s\r\n' "$line" >"$seeds/row/$name-$n-cut"
    done <"$csv"
done

# id: the ids of the fixtures, and every accepted form of one of them.
head -n 50 fixtures/promotions.csv | cut -d, -f1 | while IFS= read -r id; do
    printf '%s' "$id" >"$seeds/id/$id"
done
id=$(head -n 1 fixtures/promotions.csv | cut -d, -f1)
upper=$(tr '[:lower:]' '[:upper:]' <<<"$id")
simple=$(tr -d '-' <<<"$id")
printf '%s' "$upper" >"$seeds/id/upper"
printf '%s' "$simple" >"$seeds/id/simple"
printf '{%s}' "$id" >"$seeds/id/braced"
printf 'urn:uuid:%s' "$id" >"$seeds/id/urn"
printf ' %s ' "$id" >"$seeds/id/padded"

# route: a control byte (method length; 0x80: no table), the method, the target.
head -n 20 fixtures/promotions.csv | cut -d, -f1 | while IFS= read -r key; do
    printf '\x00/promotions/%s' "$key" >"$seeds/route/get-$key"
done
printf '\x04HEAD/promotions/%s' "$id" >"$seeds/route/head"
printf '\x04POST/promotions/%s' "$id" >"$seeds/route/post"
printf '\x06DELETE/healthz' >"$seeds/route/delete"
printf '\x80/promotions/%s' "$id" >"$seeds/route/no-table"
printf '\x80/readyz' >"$seeds/route/no-table-readyz"
printf '\x00/promotions/%s' "$upper" >"$seeds/route/upper"
printf '\x00/promotions/{%s}' "$id" >"$seeds/route/braced"
printf '\x00/promotions/urn:uuid:%s' "$id" >"$seeds/route/urn"
printf '\x00/promotions/%s' "${id//-/%2D}" >"$seeds/route/percent"
printf '\x00/promotions/%s?x=1' "$id" >"$seeds/route/query"
printf '\x00/promotions/nope' >"$seeds/route/nope"
printf '\x00/promotions/' >"$seeds/route/empty-id"
printf '\x00/promotions' >"$seeds/route/no-slash"
for path in /healthz /readyz /metrics /; do
    printf '\x00%s' "$path" >"$seeds/route/path-${path//\//_}"
done

# delta: edits of the base (mode 1), the same with a byte flipped (mode 2),
# and a few bytes as a delta file (mode 0).
printf '\x01\x00\x05\x09\x01\x07\x01\x02\x03\x00\x03\x21\x33' >"$seeds/delta/edits"
printf '\x01' >"$seeds/delta/unchanged"
printf '\x02\x02\x00\x00\x03\x10\x20\x80\x00\x01' >"$seeds/delta/flipped"
printf '\x00PROMODLT\x01\x00\x00\x00' >"$seeds/delta/short"

# header: the header and the whole of a real small generation, made by
# `promo build` from the first 40 rows of the fixture.
if [[ " ${TARGETS[*]} " == *" header "* ]]; then
    if [[ ! -x target/release/promo ]]; then
        echo "fuzz: building promo for a seed generation" >&2
        cargo build --release --bin promo
    fi
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    head -n 40 fixtures/promotions.csv >"$tmp/small.csv"
    target/release/promo build "$tmp/small.csv" --data-dir "$tmp/data" >/dev/null
    gen=$(ls "$tmp"/data/gen-*.promo)
    size=$(wc -c <"$gen")
    # Mode 0: file length, then the header.
    { printf '\x00'; le64 "$size"; head -c 64 "$gen"; } >"$seeds/header/decode"
    # Mode 1: flags (all fields forced right), file length, then the header.
    { printf '\x01\x3f'; le64 "$size"; head -c 64 "$gen"; } >"$seeds/header/forged-header"
    # Mode 2: the whole file.
    { printf '\x02'; cat "$gen"; } >"$seeds/header/file"
    # Mode 3: 40 records, 0 fanout bits, sorted, valid prices, computed
    # fanout; a creation time; then the generation's records.
    { printf '\x03\x28\x00\x07'; le64 0; tail -c +65 "$gen"; } >"$seeds/header/forged-file"
fi

# Runs --------------------------------------------------------------------

marker=$(mktemp)
trap 'rm -f "$marker"; rm -rf "${tmp:-}"' EXIT
summary=()
failed=0
for t in "${TARGETS[@]}"; do
    log=$FUZZ_DIR/logs/$t.log
    artifacts=$FUZZ_DIR/artifacts/$t
    touch "$marker"
    echo "fuzz: running $t for ${FUZZ_SECONDS}s" >&2
    rc=0
    cargo fuzz run "${FUZZ_FLAGS[@]}" "$t" "$FUZZ_DIR/corpus/$t" "$seeds/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=30 -print_final_stats=1 >"$log" 2>&1 || rc=$?

    # libFuzzer's last status line: "#N ... corp: C/... exec/s: R ...".
    status=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    execs=$(sed -nE 's/^Done ([0-9]+) runs.*/\1/p' "$log" | tail -n 1)
    [[ -n $execs ]] || execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$status")
    rate=$(sed -nE 's/.*exec\/s: ([0-9]+).*/\1/p' <<<"$status")
    corpus=$(sed -nE 's/.*corp: ([0-9]+)\/.*/\1/p' <<<"$status")
    count() { find "$artifacts" -maxdepth 1 -type f -name "$1-*" -newer "$marker" | wc -l; }
    crash=$(count crash) leak=$(count leak) timeout=$(count timeout) oom=$(count oom)
    findings=$((crash + leak + timeout + oom))

    line="fuzz: $t executions=${execs:-0} exec/s=${rate:-0} corpus=${corpus:-0} findings=$findings (crash=$crash leak=$leak timeout=$timeout oom=$oom)"
    if ((rc != 0 || findings > 0)); then
        failed=1
        line+=" FAILED (exit $rc; see $log)"
        echo "fuzz: $t failed; the end of $log:" >&2
        tail -n 40 "$log" >&2
    fi
    summary+=("$line")
done

echo
printf '%s\n' "${summary[@]}"
exit "$failed"
