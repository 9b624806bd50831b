//! `promo serve`: the serving process, from its flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use promo::builder::pipeline::BuildOptions;
use promo::server::{self, admin, http, poll};
use promo::store::remote::Remote;

use super::{parse_listen, parse_seconds, parse_size, DataDir, Exit, FetchRate, Guards};

#[derive(Args)]
pub struct Serve {
    #[command(flatten)]
    dir: DataDir,
    /// Address to listen on: ADDR:PORT, HOST:PORT, or :PORT and PORT
    /// for every address.
    #[arg(long, env = "PROMO_LISTEN", default_value = "0.0.0.0:1321",
          value_parser = parse_listen)]
    listen: SocketAddr,
    /// Most client connections open at once; more wait in the kernel's
    /// accept backlog until one closes.
    #[arg(long, default_value_t = http::Limits::default().max_connections)]
    max_connections: usize,
    /// Serving threads (0: one per core, or eight per core when the
    /// generation at start is larger than memory and io_uring is
    /// unavailable: a lookup whose page is on disk then blocks its
    /// thread's connections until the disk answers).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// A serving thread offers its core to other threads (sched_yield)
    /// after this many answers (0: never): under load it always has a
    /// request to answer, and what shares the cores (a load balancer, the
    /// kernel) would otherwise wait for the scheduler's next tick.
    #[arg(long, value_name = "ANSWERS", default_value_t = http::ANSWERS_PER_YIELD)]
    yield_every: u32,
    /// Seconds a client has to send a request's headers, on a new
    /// connection or for the next request on a kept-alive one; then it
    /// is disconnected.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds,
          default_value_t = http::Limits::default().header_timeout.as_secs_f64())]
    header_timeout: f64,
    /// Fetch new generations from this object store into --data-dir
    /// (s3://bucket/prefix, gs://, az://, file:///dir); keeps the
    /// newest 2 there.
    #[arg(long, value_name = "URL", env = "PROMO_SOURCE")]
    source: Option<String>,
    /// Start even though another promo server listens on --listen's
    /// port, share the port until that one stops, then hold it alone:
    /// for a restart without refused connections (start the new server
    /// with it, wait for its /readyz, stop the old one). Without it, a
    /// second server on a port fails at start.
    #[arg(long)]
    handover: bool,
    /// Seconds between polls of --source.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds,
          default_value_t = poll::DEFAULT_INTERVAL.as_secs_f64())]
    source_interval: f64,
    #[command(flatten)]
    rate: FetchRate,
    /// Serve HTTPS on --listen with this PEM certificate chain (with
    /// --tls-key); read again on SIGHUP and when it changes.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Also listen here for admin requests: POST /upload (a CSV, built
    /// into a new generation), GET /generations, POST /rollback.
    #[arg(long, value_name = "ADDR", env = "PROMO_ADMIN_LISTEN", value_parser = parse_listen)]
    admin_listen: Option<SocketAddr>,
    /// A file holding the token every admin request must send as
    /// `Authorization: Bearer <token>`; required unless --admin-listen
    /// is a loopback address.
    #[arg(long, value_name = "FILE", requires = "admin_listen")]
    admin_token_file: Option<PathBuf>,
    /// Largest upload accepted (bytes, or 10GiB...).
    #[arg(long, value_name = "SIZE", default_value = "100GiB", value_parser = parse_size)]
    max_upload: u64,
    /// Uploads and rollbacks build as `promo build` does, with its guards.
    #[command(flatten)]
    guards: Guards,
    /// Publish each uploaded or rolled-back generation to this object
    /// store too (s3://bucket/prefix, gs://, az://, file:///dir).
    #[arg(
        long,
        value_name = "URL",
        env = "PROMO_PUBLISH",
        requires = "admin_listen"
    )]
    publish: Option<String>,
}

impl Serve {
    pub fn run(self) -> anyhow::Result<Exit> {
        let config = self.config()?;
        server::run(config, server::shutdown_signal())?;
        Ok(Exit::Success)
    }

    /// The server's configuration, checked as far as it can be before
    /// anything starts.
    fn config(self) -> anyhow::Result<server::Config> {
        let data_dir = self.dir.data_dir;
        // A mistyped directory would answer 503 for ever: only a fetch
        // (--source) or an upload (--admin-listen) fills a new one.
        if self.source.is_none() && self.admin_listen.is_none() && !data_dir.is_dir() {
            anyhow::bail!(
                "--data-dir {}: no such directory (build a generation into it first, or \
                 give --source to fetch into it)",
                data_dir.display()
            );
        }
        let guards = self.guards;
        let source = self.source.map(|url| guards.store(url));
        let publish = self.publish.map(|url| guards.store(url));
        // A bad URL stops serve at start, not at its first poll.
        for url in source.iter().chain(&publish) {
            Remote::open(url)?;
        }
        let admin = match self.admin_listen {
            Some(listen) => Some(admin::AdminConfig {
                listen,
                token: self
                    .admin_token_file
                    .as_deref()
                    .map(admin::read_token)
                    .transpose()?,
                build: BuildOptions {
                    against_store: publish.clone(),
                    ..guards.options(data_dir.clone())
                },
                max_upload: self.max_upload,
                publish,
            }),
            None => None,
        };
        Ok(server::Config {
            limits: http::Limits {
                max_connections: self.max_connections,
                header_timeout: Duration::from_secs_f64(self.header_timeout),
            },
            source: source.map(|url| poll::Polling {
                url,
                interval: Duration::from_secs_f64(self.source_interval),
                rate: self.rate.fetch_rate,
            }),
            tls: self
                .tls_cert
                .zip(self.tls_key)
                .map(|(cert, key)| server::tls::TlsFiles { cert, key }),
            admin,
            threads: self.threads,
            answers_per_yield: self.yield_every,
            shard: guards.shard,
            handover: self.handover,
            ..server::Config::new(data_dir, self.listen)
        })
    }
}
