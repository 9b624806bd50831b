//! Polling an object store for newer generations, for `serve --source`.
//!
//! Each poll asks [`fetch`] for the store's newest valid generation newer
//! than the live one and makes what it brings live; a store that cannot be
//! read never stops serving.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::metrics as m;
use crate::server::live::Live;
use crate::store::fetch;
use crate::store::remote::Remote;

/// Where `serve --source` fetches from, and how.
#[derive(Debug, Clone)]
pub struct Polling {
    pub url: String,
    /// Between polls of the store (jittered by up to a tenth either way).
    pub interval: Duration,
    /// Most bytes a second a download takes; `None` is unlimited.
    pub rate: Option<u64>,
}

/// `--source-interval`'s default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Polls the store every `source.interval` (jittered), fetching newer
/// generations and making them live, until `shutdown` completes. The first
/// poll is at once, so a server started empty becomes ready as soon as it
/// can. A store that cannot be read (counted in `promo_source_errors_total`)
/// or a data directory that cannot take a download is logged once when it
/// starts failing and once when fetching works again; the live generation
/// is served throughout.
pub async fn poll(source: Polling, live: Arc<Live>, shutdown: impl Future<Output = ()>) {
    let fetcher = match Remote::open(&source.url) {
        Ok(remote) => fetch::Fetcher::new(remote, live.dir(), source.rate, false),
        Err(e) => {
            // Checked at start-up already; here for a library caller.
            tracing::error!("{e}: not fetching");
            return;
        }
    };
    // Exported from the start, so that rates and alerts start at zero.
    metrics::counter!(m::SOURCE_ERRORS).absolute(0);
    for kind in fetch::KINDS {
        metrics::counter!(m::FETCH_BYTES, "kind" => kind).absolute(0);
    }
    for fallback in fetch::Fallback::ALL {
        metrics::counter!(m::DELTA_FALLBACKS, "reason" => fallback.label()).absolute(0);
    }
    metrics::gauge!(m::SOURCE_NEWEST_SEQUENCE).set(0.0);
    tokio::pin!(shutdown);
    // What is failing, if anything: the store, or this side (the data
    // directory, the disk). Logged when it changes, not at every poll.
    let mut failing: Option<&str> = None;
    loop {
        let local = live.current().as_ref().map_or(0, |t| t.sequence());
        // A shutdown does not wait for a download: dropping it removes
        // its temporary file.
        let fetched = tokio::select! {
            fetched = fetcher.fetch_newer(local) => fetched,
            () = &mut shutdown => return,
        };
        match fetched {
            Ok(outcome) => {
                if failing.take().is_some() {
                    tracing::info!("{}: fetching works again", source.url);
                }
                if let fetch::Fetched::Generation { table, .. } = outcome {
                    live.install(*table);
                    let dir = live.dir().to_path_buf();
                    let _ = tokio::task::spawn_blocking(move || fetch::retain(&dir)).await;
                }
            }
            // Another fetch or a build holds the directory: nobody's
            // fault; the next poll tries again.
            Err(e @ Error::Locked { .. }) => tracing::debug!("{e}"),
            Err(e) => {
                let what = match e {
                    Error::Remote { .. } | Error::Url { .. } | Error::NothingInStore { .. } => {
                        metrics::counter!(m::SOURCE_ERRORS).increment(1);
                        "the store cannot be read"
                    }
                    _ => "cannot fetch into the data directory",
                };
                if failing != Some(what) {
                    tracing::warn!(
                        "{e}: {what}; serving the live generation and retrying every {:?}",
                        source.interval
                    );
                }
                failing = Some(what);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(jitter(source.interval)) => {}
            () = &mut shutdown => return,
        }
    }
}

/// `d` scaled by a factor between 0.9 and 1.1.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d.mul_f64(0.9 + 0.2 * (nanos % 1000) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_tenth() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(9) && d <= Duration::from_secs(11));
        }
    }
}
