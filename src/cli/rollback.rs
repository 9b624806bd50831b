//! `promo rollback`: an older generation live again, in the data
//! directory or in a store.

use clap::Args;

use promo::builder::pipeline;
use promo::store::publish;

use super::output::Output;
use super::{DataDir, Exit};

#[derive(Args)]
pub struct Rollback {
    #[command(flatten)]
    dir: DataDir,
    /// Roll back this object store instead of the data directory: its
    /// generation before the newest (or --to N) is published again, and
    /// every replica swaps to it.
    #[arg(long, value_name = "URL", env = "PROMO_PUBLISH")]
    publish: Option<String>,
    /// Make generation N live again, any that is kept (see `promo
    /// inspect`, or `promo inspect --source URL` with --publish),
    /// instead of the one before the live one.
    #[arg(long, value_name = "N")]
    to: Option<u64>,
}

impl Rollback {
    pub fn run(self, out: Output) -> anyhow::Result<Exit> {
        match self.publish {
            Some(url) => {
                let (from, to) = publish::rollback(&url, self.to)?;
                out.say(&format!(
                    "{url}: generation {from} is the newest again, as generation {}",
                    to.sequence
                ));
            }
            None => {
                let (from, to) = pipeline::rollback(&self.dir.data_dir, self.to)?;
                out.say(&format!(
                    "generation {from} is live again as generation {} ({})",
                    to.sequence,
                    to.path.display()
                ));
            }
        }
        Ok(Exit::Success)
    }
}
