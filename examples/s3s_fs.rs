//! s3s-fs's server, from the library promo's tests already compile.
//!
//! deploy/compose.yaml's store is s3s-fs (the S3 server of promo's tests).
//! Its Dockerfile target installs the s3s-fs binary, a release compile of
//! a few minutes; `make test` brings the compose stack up with this
//! program instead, built beside the tests from the same s3s-fs crate, so
//! the container test needs no compile of its own. It takes the flags of
//! the s3s-fs binary that compose passes: `--host`, `--port`,
//! `--access-key`, `--secret-key` and the root directory, each directory
//! under which is a bucket.

use std::path::PathBuf;

use clap::Parser;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

#[derive(Parser)]
struct Opt {
    #[arg(long, default_value = "localhost")]
    host: String,
    #[arg(long, default_value_t = 8014)]
    port: u16,
    #[arg(long, requires = "secret_key")]
    access_key: Option<String>,
    #[arg(long, requires = "access_key")]
    secret_key: Option<String>,
    root: PathBuf,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let opt = Opt::parse();
    let fs = s3s_fs::FileSystem::new(&opt.root)
        .map_err(|e| std::io::Error::other(format!("{}: {e:?}", opt.root.display())))?;
    let mut service = S3ServiceBuilder::new(fs);
    if let (Some(access), Some(secret)) = (opt.access_key, opt.secret_key) {
        service.set_auth(SimpleAuth::from_single(access, secret));
    }
    let service = service.build();
    let listener = tokio::net::TcpListener::bind((opt.host.as_str(), opt.port)).await?;
    eprintln!(
        "s3s-fs: serving {} on http://{}",
        opt.root.display(),
        listener.local_addr()?
    );
    // As a container's first process it has no default action for
    // SIGTERM: it ends on it, so `compose down` takes no grace period.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = term.recv() => return Ok(()),
        };
        let socket = match accepted {
            Ok((socket, _)) => socket,
            Err(e) => {
                eprintln!("s3s-fs: accept: {e}");
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(socket);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}
