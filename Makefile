# The same targets a person runs and CI runs (.ci/run calls `make test`).

DATA_DIR ?= data
LISTEN ?= 0.0.0.0:1321
CARGO ?= cargo
PROMO := target/release/promo

.PHONY: all build run demo test tools lint bench bench-scale gen clean fault fuzz soak soak-fleet fleet image test-containers

all: build

build:
	$(CARGO) build --release --bins

# Builds, makes a demo generation from the fixtures if there is none, and serves it.
run: build
	@ls $(DATA_DIR)/gen-*.promo >/dev/null 2>&1 || $(MAKE) --no-print-directory demo
	$(PROMO) serve --data-dir $(DATA_DIR) --listen $(LISTEN)

demo: build
	$(PROMO) build fixtures/promotions.csv --data-dir $(DATA_DIR)

# The tools the tests call (Debian packages, and PyPI checkers in
# target/tools), made sure of before anything compiles.
TOOLS_BIN := $(CURDIR)/target/tools/bin
tools:
	@bash scripts/tools.sh

# The tools, the lints, the tests, then the fuzz targets (make fuzz) built
# against today's library, in the same target directory so that what they
# share compiles once.
test: tools
	@$(MAKE) --no-print-directory lint
	@rm -f target/tmp/openapi-checked.log
	PATH="$(TOOLS_BIN):$$PATH" $(CARGO) test
	@echo "answers checked against docs/openapi.json: $$(wc -l < target/tmp/openapi-checked.log)"
	$(CARGO) build --manifest-path tests/fuzz/Cargo.toml --bins --target-dir target

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# promo beside nginx, DuckDB and GNU sort; writes BENCHMARKS.md and benchmarks.png.
# Sizes: make bench BENCH_ARGS="--rows 1000000 --big-rows 0 --duration 5"
# One part again, the rest of the last run kept: make bench BENCH_ARGS="--only http2"
bench:
	python3 -m scripts.bench $(BENCH_ARGS)

# Builds of 10^8 and 10^9 rows (about 40 GB of disk for a while), and
# 10^7 and 10^8 against the last format-version-1 release.
bench-scale: build
	python3 -m scripts.bench_scale --v1 $(SCALE_ARGS)

# deploy/compose.yaml's topology as plain processes: an S3 store, a builder,
# two replicas, nginx, node_exporter and Prometheus; prints the URLs.
# A shared-directory store instead: make fleet FLEET_ARGS="--store file"
fleet: build
	python3 -m scripts.fleet $(FLEET_ARGS)

# A generated CSV: make gen ROWS=10000000 OUT=bench-data/10m.csv
ROWS ?= 1000000
OUT ?= bench-data/promotions-$(ROWS).csv
gen: build
	@mkdir -p $(dir $(OUT))
	target/release/gen-promotions --rows $(ROWS) --out $(OUT)

clean:
	$(CARGO) clean
	rm -rf $(DATA_DIR)

# Kill `promo build` with SIGKILL at 30 points and check nothing partial is seen.
fault:
	PROMO_FAULT_RUNS=30 $(CARGO) test --release --test it fault:: -- --nocapture

# Each fuzz target for FUZZ_SECONDS (default 60); installs cargo-fuzz if missing.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

# Ten minutes of load with a new generation every 20 s, then a report.
# Shorter: make soak SOAK_ARGS="--minutes 1"
soak: build
	python3 -m scripts.soak $(SOAK_ARGS)

# The fleet (S3 store, builder, two replicas, nginx) through faults: a
# publish every 20 s (every 4th a corrupt object, every 7th a refused feed),
# a replica SIGKILLed every 60 s, the store away 30 s every 5 minutes.
# An hour: make soak-fleet SOAK_MINUTES=60
SOAK_MINUTES ?= 10
soak-fleet: build
	python3 -m scripts.soak_fleet --minutes $(SOAK_MINUTES) $(SOAK_FLEET_ARGS)

# The container image (promo:latest) from deploy/Dockerfile, with podman;
# base images from the Debian mirror where no registry answers.
image:
	bash scripts/image.sh runtime promo:latest

# tests/container.rs with images built as shipped: promo and s3s-fs
# compiled inside containers (tens of minutes on 2 cores), the 40 MB size
# target checked. make test runs the same tests on images that hold the
# programs it has just built.
test-containers: tools
	PATH="$(TOOLS_BIN):$$PATH" PROMO_IMAGE_FROM_SOURCE=1 $(CARGO) test --test it container:: -- --nocapture
