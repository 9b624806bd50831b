//! Where a command says what it did, and how its answers are laid out.

/// A line on standard output, or with `--log-format json` an info event,
/// so that every line a container writes is one JSON object.
#[derive(Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// What a command did.
    pub fn say(self, line: &str) {
        if self.json {
            tracing::info!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// Why a command failed.
    pub fn error(self, e: &anyhow::Error) {
        if self.json {
            tracing::error!("{e:#}");
        } else {
            eprintln!("promo: error: {e:#}");
        }
    }
}

impl Output {
    /// A build's summary line: on standard output in either format, since
    /// scripts parse it; with JSON logs, also as an event with its fields.
    pub fn summary(self, s: &promo::builder::pipeline::BuildSummary) {
        println!("{s}");
        if self.json {
            s.log();
        }
    }
}

/// What a generation changed, in `inspect`'s tables: for a rollback
/// `rollback to N, undid M, L`, else its churn `+added -removed ~changed
/// (percent)`, or `-` when it is not known.
pub fn changes(
    churn: Option<&promo::generation::churn::Churn>,
    rollback: Option<&promo::generation::rollback::Rollback>,
) -> String {
    if let Some(r) = rollback {
        let undone: Vec<String> = r.undone.iter().map(|u| u.sequence.to_string()).collect();
        return match undone.is_empty() {
            true => format!("rollback to {}", r.of),
            false => format!("rollback to {}, undid {}", r.of, undone.join(", ")),
        };
    }
    match churn {
        Some(c) => format!(
            "+{} -{} ~{} ({:.2}%)",
            c.added,
            c.removed,
            c.changed,
            c.churn_percent()
        ),
        None => "-".to_string(),
    }
}
