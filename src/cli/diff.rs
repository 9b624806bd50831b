//! `promo diff`: the promotions two generations disagree on, streamed.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use clap::Args;

use promo::generation::{churn, local};
use promo::store::reference::GenerationRef;

use super::{DataDir, Exit};

#[derive(Args)]
pub struct Diff {
    /// The old generation: a generation file, a sequence in --data-dir,
    /// or a store URL with a sequence (s3://bucket/prefix#7).
    old: GenerationRef,
    /// The new generation, in any of the same forms.
    new: GenerationRef,
    #[command(flatten)]
    dir: DataDir,
    /// One JSON object a line: each difference, then the summary.
    #[arg(long)]
    json: bool,
    /// Print at most this many differences (the summary counts all).
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

impl Diff {
    /// Streams the differences, then the summary.
    pub fn run(self) -> anyhow::Result<Exit> {
        let data_dir: &Path = &self.dir.data_dir;
        // Generations from a store are downloaded here, and gone when diff ends.
        let scratch = match data_dir.is_dir() {
            true => tempfile::Builder::new()
                .prefix(local::DIFF_PREFIX)
                .tempdir_in(data_dir)?,
            false => tempfile::tempdir()?,
        };
        let progress = super::progress();
        let old = self.old.open(data_dir, scratch.path(), progress)?;
        let new = self.new.open(data_dir, scratch.path(), progress)?;
        let mut printed = 0;
        let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
        let mut failed = Ok(());
        let churn = churn::walk(&old, &new, |change| {
            if self.limit.is_some_and(|n| printed >= n) {
                return ControlFlow::Continue(());
            }
            printed += 1;
            let kind = match (&change.old, &change.new) {
                (None, _) => "added",
                (_, None) => "removed",
                _ => "changed",
            };
            failed = if self.json {
                #[derive(serde::Serialize)]
                struct Line<'a> {
                    #[serde(flatten)]
                    change: &'a churn::Change,
                    kind: &'a str,
                }
                serde_json::to_writer(&mut stdout, &Line { change, kind })
                    .map_err(std::io::Error::from)
                    .and_then(|()| writeln!(stdout))
            } else {
                writeln!(stdout, "{kind:<8} {}", change.describe())
            };
            // Standard output closed (`promo diff ... | head`): stop reading.
            match failed {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            }
        });
        let summary = if self.json {
            serde_json::json!({ "summary": churn }).to_string()
        } else {
            let (from, to) = (old.sequence(), new.sequence());
            format!("generation {from} -> {to}: {}", churn.summary())
        };
        let written = failed
            .and_then(|()| writeln!(stdout, "{summary}"))
            .and_then(|()| stdout.flush());
        match written {
            // Whoever read the output stopped: they had the differences
            // they wanted, and there were some.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Exit::No),
            Err(e) => Err(e.into()),
            Ok(()) if churn.is_same() => Ok(Exit::Success),
            Ok(()) => Ok(Exit::No),
        }
    }
}
