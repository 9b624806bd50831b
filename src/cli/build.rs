//! `promo build`: a feed into a new generation in the data directory, then
//! to the store if one is given.

use std::path::PathBuf;

use clap::Args;

use promo::builder::feed::Input;
use promo::builder::pipeline::{self, BuildOptions, BuildSummary};
use promo::builder::textfile;
use promo::store::publish;
use promo::store::remote::Remote;

use super::output::Output;
use super::{DataDir, Exit, Guards};

#[derive(Args)]
pub struct Build {
    /// The CSV: a file, `-` for standard input, or an object's URL
    /// (s3://bucket/feeds/today.csv, gs://, az://, file:///, http(s)://).
    /// Plain, gzip or zstd, told apart by content.
    csv: String,
    #[command(flatten)]
    dir: DataDir,
    #[command(flatten)]
    guards: Guards,
    /// Where sorted runs spill (default: the data directory).
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
    /// Publish even if a guard would refuse the generation
    /// (--max-shrink, --max-churn, --max-price-jumps).
    #[arg(long)]
    force: bool,
    /// Then upload the generation to this object store and make it the
    /// store's newest (s3://bucket/prefix, gs://, az://, file:///dir);
    /// the store keeps the newest --keep generations.
    #[arg(long, value_name = "URL", env = "PROMO_PUBLISH")]
    publish: Option<String>,
    /// Write the build's outcome here in the Prometheus text format, for
    /// node_exporter's textfile collector (a PATH ending in .prom in its
    /// directory): when it ended, whether it published, and the last
    /// successful build's rows, invalid rows, duplicates, seconds and
    /// generation. Replaced atomically after every attempt.
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
}

impl Build {
    /// Builds, then writes `--metrics-file` whatever happened.
    pub fn run(mut self, out: Output) -> anyhow::Result<Exit> {
        let metrics_file = self.metrics_file.take();
        if let Some(path) = &metrics_file {
            textfile::check(path)?;
        }
        let shard = self.guards.shard.unwrap_or_default();
        let built = self.build(out);
        let Some(path) = metrics_file else {
            return built.map(|_| Exit::Success);
        };
        let attempt = match &built {
            Ok(summary) => textfile::Attempt::Published(summary),
            Err(e) => match e.downcast_ref::<promo::Error>() {
                Some(e) if e.is_refusal() => textfile::Attempt::Refused,
                _ => textfile::Attempt::Failed,
            },
        };
        let written = textfile::write(&path, shard, std::time::SystemTime::now(), attempt);
        match (built, written) {
            (Err(e), Err(w)) => {
                tracing::error!("writing --metrics-file: {w}");
                Err(e)
            }
            (Err(e), _) => Err(e),
            (Ok(s), Err(w)) => Err(anyhow::anyhow!(
                "{w}\ngeneration {} was published, but --metrics-file was not written",
                s.generation.sequence
            )),
            (Ok(_), Ok(())) => Ok(Exit::Success),
        }
    }

    fn build(self, out: Output) -> anyhow::Result<BuildSummary> {
        let publish = self.publish.map(|url| self.guards.store(url));
        // A bad URL fails before the feed is read.
        if let Some(url) = &publish {
            Remote::open(url)?;
        }
        let keep = self.guards.keep as usize;
        let opts = BuildOptions {
            tmp_dir: self.tmp_dir,
            progress: super::progress(),
            force: self.force,
            // What the fleet serves, even after a rollback of the store.
            against_store: publish.clone(),
            ..self.guards.options(self.dir.data_dir)
        };
        let summary = pipeline::build(&Input::from_arg(&self.csv), &opts)?;
        out.summary(&summary);
        if let Some(url) = publish {
            let p = publish::publish(&url, &summary.generation.path, keep, opts.max_delta);
            let p = p.map_err(|e| {
                anyhow::anyhow!(
                    "{e}\npublishing to the store failed; generation {} stays published in {}",
                    summary.generation.sequence,
                    opts.data_dir.display()
                )
            })?;
            let delta = match &p.delta {
                Some(d) => format!(
                    ", a delta from its generation {} of {} bytes among them",
                    d.base_sequence, d.bytes
                ),
                None => String::new(),
            };
            out.say(&format!(
                "published generation {} to {url} as its generation {} ({} bytes{delta} in {:.2} s)",
                summary.generation.sequence, p.sequence, p.bytes, p.seconds
            ));
        }
        Ok(summary)
    }
}
