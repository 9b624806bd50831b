//! The build's progress bar: the bytes of CSV read so far.

/// A progress bar on standard error, or nothing.
pub(super) struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    pub(super) fn new(enabled: bool, total_bytes: Option<u64>) -> Progress {
        if !enabled {
            return Progress(None);
        }
        let bar = match total_bytes {
            Some(n) => indicatif::ProgressBar::new(n).with_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} reading [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            ),
            None => indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} reading {bytes} {bytes_per_sec}",
                )
                .expect("a valid template"),
            ),
        };
        Progress(Some(bar))
    }

    pub(super) fn set(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.set_position(bytes);
        }
    }

    pub(super) fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
