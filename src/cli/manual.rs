//! `promo completions` and `promo man`: the command line describing itself,
//! made from the same clap types that parse it, so that neither can drift
//! from the options they describe. A package or an image runs them once at
//! install time (deploy/Dockerfile, deploy/systemd/README.md).

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, CommandFactory};
use clap_complete::aot::Shell;
use clap_mangen::roff::{bold, roman, Roff};

use super::{Cli, Exit, EXIT_CODES};

#[derive(Args)]
pub struct Completions {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    shell: Shell,
}

impl Completions {
    pub fn run(self) -> anyhow::Result<Exit> {
        let mut cmd = Cli::command();
        let mut out = std::io::stdout().lock();
        clap_complete::aot::generate(self.shell, &mut cmd, "promo", &mut out);
        out.flush()?;
        Ok(Exit::Success)
    }
}

#[derive(Args)]
pub struct Man {
    /// Write promo.1 and a page for each command (promo-build.1, ...) into
    /// this directory instead of printing promo.1.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

impl Man {
    pub fn run(self) -> anyhow::Result<Exit> {
        // Built, clap names each command's page (`promo-build`) and
        // synopsis (`promo build`), and gives it the global flags.
        let mut cmd = Cli::command().disable_help_subcommand(true);
        cmd.build();
        let Some(dir) = self.out_dir else {
            let mut out = std::io::stdout().lock();
            out.write_all(&page(&cmd)?)?;
            out.flush()?;
            return Ok(Exit::Success);
        };
        std::fs::create_dir_all(&dir)?;
        let write = |cmd: &clap::Command| -> anyhow::Result<()> {
            let path = dir.join(format!("{}.1", cmd.get_display_name().unwrap_or("promo")));
            let bytes = page(cmd)?;
            std::fs::write(&path, bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        };
        for sub in cmd.get_subcommands() {
            write(&sub.clone().version(promo::metrics::VERSION_LINE))?;
        }
        write(&cmd)?;
        Ok(Exit::Success)
    }
}

/// The manual page of `cmd`, built (roff): clap_mangen's sections, with the
/// exit status table before the version.
fn page(cmd: &clap::Command) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut out)?;
    }
    exit_status().to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// The EXIT STATUS section: [`EXIT_CODES`], the one table of them.
fn exit_status() -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    for (exit, meaning) in EXIT_CODES {
        roff.control("TP", []);
        roff.text([bold((exit as u8).to_string())]);
        // The table is the docs' Markdown: no backquotes in a manual page.
        roff.text([roman(meaning.replace('`', ""))]);
    }
    roff
}
