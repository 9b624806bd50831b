//! Debian's nginx for tests, run with one of the files in `deploy/nginx/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// nginx in a directory of its own, listening on a free port of 127.0.0.1.
pub struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// The text of `deploy/nginx/<name>`.
    pub fn deploy_file(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/nginx")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Starts nginx with `conf` (the text of an http-block include, as an
    /// operator includes a file of `deploy/nginx/`) inside a minimal main
    /// configuration; its `listen` lines are moved to a free port. The
    /// configuration must pass `nginx -t`.
    pub fn start(conf: &str) -> Nginx {
        let nginx = which("nginx");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut out = String::new();
        for line in conf.lines() {
            if line.trim_start().starts_with("listen ") {
                out.push_str(&format!("    listen 127.0.0.1:{port};\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        std::fs::write(dir.path().join("promo.conf"), out).unwrap();
        let d = dir.path().display();
        let main = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             include {d}/promo.conf;\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
        let check = Command::new(&nginx)
            .args(["-t", "-p"])
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "nginx -t refused the configuration: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nginx is not listening after 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: the master then stops its workers, which a
    /// killed master would leave running, holding the port.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The path of a tool the test needs; a missing tool fails the test.
pub fn which(tool: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} is not installed: make test installs it (scripts/tools.sh)");
}
