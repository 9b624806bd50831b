//! Metric names, their help text, and the Prometheus exporter.
//!
//! Every metric promo exports is named here, once, so a dashboard author can
//! read the whole list in one place.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Counter, labels `route` and `status`.
pub const HTTP_REQUESTS: &str = "promo_http_requests_total";
/// Histogram, label `route`.
pub const HTTP_DURATION: &str = "promo_http_request_duration_seconds";
/// Gauge: client connections open now.
pub const HTTP_OPEN_CONNECTIONS: &str = "promo_http_open_connections";
/// Counter, label `result` = `hit`, `miss` or `invalid`.
pub const LOOKUPS: &str = "promo_lookups_total";
/// Gauge: the live generation's sequence (0 before one is loaded).
pub const GENERATION_SEQUENCE: &str = "promo_generation_sequence";
/// Gauge: records in the live generation.
pub const GENERATION_ROWS: &str = "promo_generation_rows";
/// Counter (sampled at each scrape): page faults of the process that read
/// from disk, which lookups take once a generation no longer fits in memory.
pub const MAJOR_FAULTS: &str = "process_major_page_faults_total";
/// Counter: lookups whose records were read from disk first, without
/// blocking a serving thread (a generation larger than memory, `io_uring`).
pub const DISK_READS: &str = "promo_lookup_disk_reads_total";
/// Gauges: the live generation's shard K of N (0 of 1 when unsharded).
pub const GENERATION_SHARD_INDEX: &str = "promo_generation_shard";
pub const GENERATION_SHARD_COUNT: &str = "promo_generation_shards";
/// Gauge: when the live generation went live, Unix seconds.
pub const GENERATION_LOADED: &str = "promo_generation_loaded_timestamp_seconds";
/// Counter: generations that went live.
pub const GENERATION_SWAPS: &str = "promo_generation_swaps_total";
/// Counter: generations refused because they did not validate.
pub const GENERATION_LOAD_FAILURES: &str = "promo_generation_load_failures_total";
/// Gauge: seconds since the live generation was created (its header's time).
pub const GENERATION_AGE: &str = "promo_generation_age_seconds";
/// Counter: polls of `--source` that failed (store unreachable or erroring).
pub const SOURCE_ERRORS: &str = "promo_source_errors_total";
/// Gauge: the newest sequence the `--source` store offers (0: none yet).
pub const SOURCE_NEWEST_SEQUENCE: &str = "promo_source_newest_sequence";
/// Counter, label `kind` = `full` or `delta`: bytes downloaded from the
/// `--source` store, of whole generations and of deltas.
pub const FETCH_BYTES: &str = "promo_fetch_bytes_total";
/// Counter, label `reason` (see `store::fetch::Fallback`): fetches that
/// tried deltas, failed, and downloaded the whole generation instead.
pub const DELTA_FALLBACKS: &str = "promo_fetch_delta_fallbacks_total";
/// Counter, label `result` = `ok` or `error`: reads of the TLS pair after
/// the first (SIGHUP, or a file changed).
pub const TLS_RELOADS: &str = "promo_tls_reloads_total";
/// Counter: TLS handshakes that failed or timed out (plain HTTP or garbage
/// sent to the TLS port, a client that stalled).
pub const TLS_HANDSHAKE_ERRORS: &str = "promo_tls_handshake_errors_total";
/// Counter, label `guard` = `shrink`, `churn` or `price_jumps`: admin
/// uploads a guard refused (answered 422, nothing published).
pub const UPLOADS_REFUSED: &str = "promo_upload_refusals_total";
/// Gauge: resident memory of the process (the conventional name).
pub const PROCESS_RESIDENT: &str = "process_resident_memory_bytes";
/// Gauge: open file descriptors of the process (the conventional name).
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// Gauge, always 1, labels `version` ([`VERSION`]) and `commit`
/// ([`COMMIT`]): which build is running, for a dashboard to join on.
pub const BUILD_INFO: &str = "promo_build_info";

/// A metric's name and its help text.
pub type Help = (&'static str, &'static str);

// The build's metrics: gauges labelled `shard`, written by `promo build
// --metrics-file` for node_exporter's textfile collector (see
// builder::textfile), not exported by a server.

pub const BUILD_LAST_ATTEMPT: Help = (
    "promo_build_last_attempt_timestamp_seconds",
    "When the last build attempt ended, Unix seconds.",
);
pub const BUILD_LAST_ATTEMPT_SUCCESS: Help = (
    "promo_build_last_attempt_success",
    "1 if the last build attempt published a generation, 0 if it failed.",
);
pub const BUILD_LAST_ATTEMPT_REFUSED: Help = (
    "promo_build_last_attempt_refused",
    "1 if a guard (--max-shrink, --max-churn, --max-price-jumps) refused the last build \
     attempt's feed, else 0.",
);
/// The figures of the last successful build, in the order they are written.
pub const BUILD_LAST_SUCCESS: [Help; 6] = [
    (
        "promo_build_last_success_timestamp_seconds",
        "When the last successful build ended, Unix seconds.",
    ),
    (
        "promo_build_rows",
        "Data rows read by the last successful build.",
    ),
    (
        "promo_build_invalid_rows",
        "Invalid rows skipped by the last successful build.",
    ),
    (
        "promo_build_duplicate_rows",
        "Rows of the last successful build replaced by a later row with the same id.",
    ),
    (
        "promo_build_duration_seconds",
        "Seconds the last successful build took.",
    ),
    (
        "promo_build_generation",
        "The generation the last successful build published (the data directory's sequence).",
    ),
];
/// Label `kind`, one of [`churn::KINDS`](crate::generation::churn::KINDS).
pub const BUILD_CHURN: Help = (
    "promo_build_churn_ids",
    "Ids the last successful build changed against the generation that was live, by kind \
     (added, removed, price, expiry, unchanged).",
);

/// The package version the binary was built as.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the binary was built from: the build's `PROMO_COMMIT`
/// if it was given one, else what `build.rs` asked git (12 hex digits), else
/// "unknown" (sources copied without `.git`).
pub const COMMIT: &str = env!("PROMO_COMMIT");
/// What `promo --version` prints after the command's name.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PROMO_COMMIT"),
    ")"
);

/// Request duration buckets: a lookup is microseconds, a scrape milliseconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0,
];

/// Installs the global recorder and describes every metric, once a
/// process: later calls (a test that starts several servers) get the same
/// handle.
pub fn install() -> Result<PrometheusHandle, String> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), &DURATION_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    // Export the counters before the first event, so rates start at zero.
    for result in ["hit", "miss", "invalid", "misdirected"] {
        metrics::counter!(LOOKUPS, "result" => result).absolute(0);
    }
    metrics::counter!(GENERATION_SWAPS).absolute(0);
    metrics::counter!(MAJOR_FAULTS).absolute(0);
    metrics::counter!(DISK_READS).absolute(0);
    metrics::counter!(GENERATION_LOAD_FAILURES).absolute(0);
    for guard in crate::error::Guard::ALL {
        metrics::counter!(UPLOADS_REFUSED, "guard" => guard.label()).absolute(0);
    }
    metrics::gauge!(GENERATION_SEQUENCE).set(0.0);
    metrics::gauge!(GENERATION_ROWS).set(0.0);
    metrics::gauge!(HTTP_OPEN_CONNECTIONS).set(0.0);
    metrics::gauge!(GENERATION_LOADED).set(0.0);
    metrics::gauge!(GENERATION_AGE).set(0.0);
    metrics::gauge!(BUILD_INFO, "version" => VERSION, "commit" => COMMIT).set(1.0);
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route and status code."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request, by route."
    );
    describe_counter!(
        LOOKUPS,
        "Promotion lookups: hit (found), miss (not in the live generation), invalid (not a UUID), \
         misdirected (an id of another shard, answered 421)."
    );
    describe_gauge!(
        GENERATION_SEQUENCE,
        "Sequence number of the live generation; 0 before one is loaded."
    );
    describe_gauge!(GENERATION_ROWS, "Records in the live generation.");
    describe_counter!(
        UPLOADS_REFUSED,
        "Admin uploads refused by a guard (shrink, churn, price_jumps): answered 422, nothing \
         published."
    );
    describe_counter!(
        MAJOR_FAULTS,
        "Page faults of the process that read from disk: lookups take them once the live \
         generation no longer fits in memory."
    );
    describe_counter!(
        DISK_READS,
        "Lookups whose records were read from disk before the lookup, without blocking a serving \
         thread: the live generation is larger than memory, and io_uring is used."
    );
    describe_gauge!(
        GENERATION_SHARD_INDEX,
        "The live generation's shard K, of promo_generation_shards (0 of 1: every id)."
    );
    describe_gauge!(
        GENERATION_SHARD_COUNT,
        "The number of range shards N the live generation's data set is split into."
    );
    describe_gauge!(
        HTTP_OPEN_CONNECTIONS,
        "Client connections open now (at most serve --max-connections)."
    );
    describe_gauge!(
        GENERATION_LOADED,
        Unit::Seconds,
        "Unix time at which the live generation went live."
    );
    describe_counter!(
        GENERATION_SWAPS,
        "Generations that went live, the first one included."
    );
    describe_counter!(
        GENERATION_LOAD_FAILURES,
        "Generations refused because they failed validation; the previous one stayed live."
    );
    describe_gauge!(
        GENERATION_AGE,
        Unit::Seconds,
        "Seconds since the live generation was built (its header's creation time)."
    );
    describe_counter!(
        SOURCE_ERRORS,
        "Polls of the --source store that failed; the live generation kept serving."
    );
    describe_gauge!(
        SOURCE_NEWEST_SEQUENCE,
        "Newest generation sequence the --source store offers; 0 before the first poll."
    );
    describe_counter!(
        FETCH_BYTES,
        Unit::Bytes,
        "Bytes downloaded from the --source store, by kind: whole generations (full) or deltas."
    );
    describe_counter!(
        DELTA_FALLBACKS,
        "Fetches whose deltas failed, by reason, that downloaded the whole generation instead."
    );
    describe_counter!(
        TLS_RELOADS,
        "Reads of the --tls-cert and --tls-key pair after the first: ok, or error (the pair in use stayed)."
    );
    describe_counter!(
        TLS_HANDSHAKE_ERRORS,
        "TLS handshakes that failed or did not finish within --header-timeout."
    );
    describe_gauge!(
        PROCESS_RESIDENT,
        Unit::Bytes,
        "Resident memory of the process."
    );
    describe_gauge!(PROCESS_OPEN_FDS, "Open file descriptors of the process.");
    describe_gauge!(
        BUILD_INFO,
        "Always 1: the version and git commit of the running promo, as labels."
    );
}

/// How often histogram samples are folded into their buckets.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Folds recorded histogram samples into buckets every `UPKEEP_INTERVAL`,
/// until `shutdown` completes. The exporter keeps every sample until then:
/// without upkeep, a server nobody scrapes would grow by 8 bytes a request.
pub async fn upkeep(handle: PrometheusHandle, shutdown: impl std::future::Future<Output = ()>) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            () = &mut shutdown => return,
        }
    }
}

/// Renders the metrics, sampling the process figures first.
pub fn render(handle: &PrometheusHandle) -> String {
    if let Some(rss) = resident_bytes() {
        metrics::gauge!(PROCESS_RESIDENT).set(rss as f64);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!(PROCESS_OPEN_FDS).set(fds.count() as f64);
    }
    if let Some(faults) = crate::sys::major_faults() {
        metrics::counter!(MAJOR_FAULTS).absolute(faults);
    }
    handle.render()
}

/// Resident set size from `/proc/self/status` (Linux), in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
