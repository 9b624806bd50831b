//! An S3-compatible server for tests: s3s-fs over a temporary directory.

use std::path::PathBuf;
use std::thread::JoinHandle;

use super::free_port;

const ACCESS_KEY: &str = "promo-test-access";
const SECRET_KEY: &str = "promo-test-secret";
const BUCKET: &str = "promo";

/// An S3-compatible server (s3s-fs over a temporary directory) on
/// 127.0.0.1, with signature checks on. It can be stopped and started
/// again on the same port, as a store that goes away and comes back.
pub struct S3 {
    root: tempfile::TempDir,
    port: u16,
    running: Option<(tokio::sync::watch::Sender<bool>, JoinHandle<()>)>,
}

impl S3 {
    pub fn start() -> S3 {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let mut s3 = S3 {
            root,
            port: free_port(),
            running: None,
        };
        s3.resume();
        s3
    }

    pub fn resume(&mut self) {
        use s3s::auth::SimpleAuth;
        use s3s::service::S3ServiceBuilder;
        assert!(self.running.is_none());
        let fs = s3s_fs::FileSystem::new(self.root.path()).unwrap();
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = b.build();
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            let service = service.clone();
                            tokio::spawn(async move {
                                let io = hyper_util::rt::TokioIo::new(socket);
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(io, service)
                                    .await;
                            });
                        }
                        _ = stopped.wait_for(|s| *s) => break,
                    }
                }
            });
            // Dropping the runtime drops every connection: the store is gone.
            runtime.shutdown_background();
        });
        self.running = Some((stop, thread));
    }

    pub fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            let _ = stop.send(true);
            thread.join().unwrap();
        }
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The server's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// The environment a promo process reaches this server with.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_via(self.addr())
    }

    /// The environment a promo process reaches this server with through
    /// `addr` (a proxy in front of it).
    pub fn env_via(&self, addr: std::net::SocketAddr) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", format!("http://{addr}")),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Where the objects under `prefix` are on disk.
    pub fn dir(&self, prefix: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(prefix)
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}

impl S3 {
    /// The options a library caller passes to `Remote::open_with`.
    pub fn options(&self) -> Vec<(String, String)> {
        self.env()
            .into_iter()
            .map(|(k, v)| {
                let k = match k.as_str() {
                    "AWS_ENDPOINT_URL" => "aws_endpoint".to_string(),
                    other => other.to_lowercase(),
                };
                (k, v)
            })
            .collect()
    }
}
