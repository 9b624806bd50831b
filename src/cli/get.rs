//! `promo get`: one promotion's JSON, as the server answers it.

use clap::Args;

use promo::server::live::Live;

use super::{DataDir, Exit};

#[derive(Args)]
pub struct Get {
    /// The promotion's id (a UUID).
    id: String,
    #[command(flatten)]
    dir: DataDir,
}

impl Get {
    pub fn run(self) -> anyhow::Result<Exit> {
        let live = Live::new(&self.dir.data_dir);
        live.refresh()?;
        let current = live.current();
        let table = current
            .as_deref()
            .ok_or_else(|| promo::Error::NoGeneration {
                path: self.dir.data_dir.clone(),
            })?;
        let id = &self.id;
        let key = promo::builder::ingest::parse_id(id.trim().as_bytes())
            .ok_or_else(|| anyhow::anyhow!("{id:?} is not a promotion id (a UUID)"))?;
        match table.get(key) {
            Some(record) => {
                let mut out = Vec::new();
                record.write_json(&mut out);
                println!("{}", String::from_utf8_lossy(&out));
                Ok(Exit::Success)
            }
            None => {
                eprintln!(
                    "promo: no promotion {} in generation {}",
                    uuid::Uuid::from_u128(key).hyphenated(),
                    table.sequence()
                );
                Ok(Exit::No)
            }
        }
    }
}
