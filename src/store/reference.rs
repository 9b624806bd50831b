//! What a command's argument names as a generation: a file, a sequence in
//! the data directory, or a sequence in a store (`s3://bucket/prefix#7`).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::generation::local;
use crate::generation::table::Table;
use crate::store::fetch;

/// A generation, named by a command's argument (`promo diff OLD NEW`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenerationRef {
    /// A generation file by its path.
    File(PathBuf),
    /// Generation N of the data directory: digits that are not a file's name.
    Local(u64),
    /// Generation N of the store at `url`: `URL#N`.
    Store { url: String, sequence: u64 },
}

impl FromStr for GenerationRef {
    type Err = Error;

    fn from_str(arg: &str) -> Result<GenerationRef> {
        if let Some((url, sequence)) = arg.rsplit_once('#').filter(|(url, _)| url.contains("://")) {
            let sequence = sequence.parse().map_err(|_| {
                Error::Usage(format!(
                    "{arg:?}: expected a sequence after '#', as in s3://bucket/prefix#7"
                ))
            })?;
            let url = url.to_string();
            return Ok(GenerationRef::Store { url, sequence });
        }
        let digits = !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit());
        match arg.parse() {
            Ok(sequence) if digits && !Path::new(arg).exists() => {
                Ok(GenerationRef::Local(sequence))
            }
            _ => Ok(GenerationRef::File(arg.into())),
        }
    }
}

impl GenerationRef {
    /// The generation, verified. One in a store is downloaded into
    /// `scratch` first (with a progress bar if `progress`); a sequence is
    /// looked up in `data_dir`.
    pub fn open(&self, data_dir: &Path, scratch: &Path, progress: bool) -> Result<Table> {
        match self {
            GenerationRef::Store { url, sequence } => {
                fetch::fetch_sequence(url, *sequence, scratch, progress)
            }
            GenerationRef::Local(sequence) => {
                let entry = local::list(data_dir)?
                    .into_iter()
                    .find(|e| e.sequence == *sequence)
                    .ok_or_else(|| {
                        Error::Usage(format!("{}: no generation {sequence}", data_dir.display()))
                    })?;
                Table::open_verified(&entry.path, *sequence)
            }
            GenerationRef::File(path) => {
                let name = path.file_name().and_then(|n| n.to_str());
                let sequence = name.and_then(local::parse_name).unwrap_or(0);
                Table::open_verified(path, sequence)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_argument_names_a_file_a_sequence_or_a_store_sequence() {
        let parse = |s: &str| s.parse::<GenerationRef>();
        assert_eq!(parse("7").unwrap(), GenerationRef::Local(7));
        assert_eq!(
            parse("s3://b/promo#12").unwrap(),
            GenerationRef::Store {
                url: "s3://b/promo".into(),
                sequence: 12
            }
        );
        assert_eq!(
            parse("data/gen-3.promo").unwrap(),
            GenerationRef::File("data/gen-3.promo".into())
        );
        // A file named with digits that exists is the file.
        let dir = tempfile::tempdir().unwrap();
        let digits = dir.path().join("42");
        std::fs::write(&digits, b"").unwrap();
        let arg = digits.to_str().unwrap();
        assert_eq!(parse(arg).unwrap(), GenerationRef::File(digits.clone()));
        let e = parse("s3://b/promo#x").unwrap_err().to_string();
        assert!(e.contains("expected a sequence after '#'"), "{e}");
        // A '#' in a file's name is part of it.
        assert_eq!(parse("a#1").unwrap(), GenerationRef::File("a#1".into()));
    }
}
