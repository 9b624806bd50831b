//! `promo fetch`: the store's newest valid generation, once.

use clap::Args;

use promo::store::fetch::{self, Fetched, How};

use super::output::Output;
use super::{DataDir, Exit, FetchRate};

#[derive(Args)]
pub struct Fetch {
    /// The store (s3://bucket/prefix, gs://, az://, file:///dir).
    url: String,
    #[command(flatten)]
    dir: DataDir,
    #[command(flatten)]
    rate: FetchRate,
}

impl Fetch {
    pub fn run(self, out: Output) -> anyhow::Result<Exit> {
        let fetched = fetch::fetch_once(
            &self.url,
            &self.dir.data_dir,
            self.rate.fetch_rate,
            super::progress(),
        )?;
        out.say(&match fetched {
            Fetched::Generation {
                entry,
                bytes,
                how,
                seconds,
                ..
            } => format!(
                "fetched generation {} ({bytes} bytes{} in {seconds:.2} s) to {}",
                entry.sequence,
                match how {
                    How::Whole => String::new(),
                    How::Deltas(1) => ": a delta, applied to the generation before".into(),
                    How::Deltas(n) => {
                        format!(": {n} deltas, applied in turn to the generation before")
                    }
                    How::Held(s) => format!(": the data directory holds it, as generation {s}"),
                },
                entry.path.display()
            ),
            Fetched::UpToDate { store: Some(s) } => format!(
                "up to date: the store holds no valid generation newer than the data \
                 directory's (the store's newest is {s})"
            ),
            Fetched::UpToDate { store: None } => {
                "up to date: the store holds no generation yet".to_string()
            }
        });
        Ok(Exit::Success)
    }
}
