//! The `promo` command: parses its arguments and hands them to [`cli`],
//! which runs the command on the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// jemalloc, set to give memory back: see `promo::server::memory`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The settings jemalloc reads at start (it looks this symbol up).
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; promo::server::memory::MALLOC_CONF.len()] =
    promo::server::memory::MALLOC_CONF;

fn main() -> ExitCode {
    cli::main(cli::Cli::parse())
}
