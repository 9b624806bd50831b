//! Helpers for end-to-end tests: the real binary, real files, real HTTP.
#![allow(dead_code)]

pub mod http_file;
pub mod nginx;
pub mod openapi;
pub mod proxy;
pub mod s3;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// `promo` with the churn and price-jump guards off. Most tests build
/// unrelated random feeds one after another (a churn of 200%, which the
/// defaults refuse) to test swaps, stores and servers, not the guards;
/// the guards' own tests (churn.rs) give their limits as flags, which win
/// over these variables, or start from [`promo_as_installed`].
pub fn promo() -> Command {
    let mut c = promo_as_installed();
    c.env("PROMO_MAX_CHURN", "off")
        .env("PROMO_MAX_PRICE_JUMPS", "off");
    c
}

/// `promo` with its defaults, as a new install runs it.
pub fn promo_as_installed() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_promo"));
    for name in [
        "PROMO_MAX_SHRINK",
        "PROMO_MAX_CHURN",
        "PROMO_MAX_PRICE_JUMPS",
    ] {
        c.env_remove(name);
    }
    c
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Runs `promo build <csv> --data-dir <dir> <extra...>`.
pub fn build(dir: &Path, csv: &Path, extra: &[&str]) -> Output {
    build_env(dir, csv, extra, &[])
}

/// `build`, with `env` added to the environment (a store's credentials).
pub fn build_env(dir: &Path, csv: &Path, extra: &[&str], env: &[(String, String)]) -> Output {
    promo()
        .arg("build")
        .arg(csv)
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("running promo build")
}

/// Like `build`, but the build must succeed; returns what it printed.
pub fn build_ok(dir: &Path, csv: &Path, extra: &[&str]) -> String {
    build_ok_env(dir, csv, extra, &[])
}

/// Like `build_env`, but the build must succeed; returns what it printed.
pub fn build_ok_env(dir: &Path, csv: &Path, extra: &[&str], env: &[(String, String)]) -> String {
    let out = build_env(dir, csv, extra, env);
    assert!(
        out.status.success(),
        "build failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A field of the build's summary line, `name=value`.
/// The sequences of the generations in `dir`, oldest first.
pub fn sequences(dir: &Path) -> Vec<u64> {
    promo::generation::local::list(dir)
        .unwrap()
        .iter()
        .map(|e| e.sequence)
        .collect()
}

/// Runs `promo get <id> --data-dir <dir>`, whatever it answers.
pub fn promo_get_output(dir: &Path, id: &str) -> Output {
    promo()
        .args(["get", id, "--data-dir"])
        .arg(dir)
        .output()
        .unwrap()
}

/// `promo get <id>` against `dir`: the JSON printed, or `None` when not
/// found; panics on any other outcome.
pub fn promo_get(dir: &Path, id: &str) -> Option<String> {
    let out = promo_get_output(dir, id);
    match out.status.code() {
        Some(0) => Some(String::from_utf8(out.stdout).unwrap().trim().to_string()),
        Some(1) => None,
        _ => panic!("promo get: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// Runs `promo rollback` and returns what it printed; panics if it failed.
pub fn rollback_ok(dir: &Path) -> String {
    let out = promo()
        .args(["rollback", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn summary_field(summary: &str, name: &str) -> String {
    summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {name}= in {summary:?}"))
        .to_string()
}

/// What `promo inspect --json` lists of the data directory `dir`.
pub fn inspect_dir(dir: &Path) -> serde_json::Value {
    inspect_json(promo().args(["inspect", "--json", "--data-dir"]).arg(dir))
}

/// What `promo inspect --json` lists of the store at `url`.
pub fn inspect_source(url: &str) -> serde_json::Value {
    inspect_json(promo().args(["inspect", "--json", "--source", url]))
}

fn inspect_json(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().expect("running promo inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON")
}

/// Temporary files (`.tmp-*`) in `dir`: what a build left behind.
pub fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect()
}

/// Runs promo with `args` and `env`: (exit code, stdout, stderr).
pub fn run_env(args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
    let out = promo()
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A deterministic id for row `i` of data set `set`.
pub fn id(set: u64, i: u64) -> String {
    let mut x = set.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut next = || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let v = (u128::from(next()) << 64) | u128::from(next());
    uuid::Uuid::from_u128(v).hyphenated().to_string()
}

/// Writes a CSV of `rows` (id, price, date) to `path`.
pub fn write_csv(path: &Path, rows: &[(String, String, String)]) {
    let mut s = String::new();
    for (id, price, date) in rows {
        s.push_str(&format!("{id},{price},{date}\n"));
    }
    std::fs::write(path, s).unwrap();
}

/// A running `promo serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(dir: &Path) -> Server {
        Server::start_with(dir, &[])
    }

    /// `promo serve` with extra arguments.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Server {
        Server::start_env(dir, "127.0.0.1:0", extra, &[])
    }

    /// `promo serve` on `listen`, with extra arguments and environment.
    pub fn start_env(dir: &Path, listen: &str, extra: &[&str], env: &[(String, String)]) -> Server {
        let mut cmd = promo();
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(dir)
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)));
        Server::spawn(cmd)
    }

    /// `promo serve` with an admin port on loopback that asks for the
    /// token in `token_file`, and `extra` arguments; waits until the admin
    /// port listens. Returns the server and the admin port's address.
    pub fn start_with_admin(dir: &Path, token_file: &Path, extra: &[&str]) -> (Server, SocketAddr) {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let listen = admin.to_string();
        let mut args = vec![
            "--admin-listen",
            &listen,
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let server = Server::start_with(dir, &args);
        server.wait_log("admin port listening on", Duration::from_secs(20));
        (server, admin)
    }

    /// Runs `cmd`, a `promo serve` (perhaps wrapped), and waits until it
    /// says where it listens.
    pub fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting promo serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let addr = addr.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the server did not say where it listens");
        Server { child, addr, log }
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path)
    }

    /// The generation the server has live, from its /readyz answer (0:
    /// none).
    pub fn live_generation(&self) -> u64 {
        let r = self.get("/readyz");
        if r.status != 200 {
            return 0;
        }
        r.text()
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The value of the sample `name` (with its labels, if any) on /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the server's log holds `what`, or panics after `limit`.
    pub fn wait_log(&self, what: &str, limit: Duration) {
        let start = Instant::now();
        while !self.log().contains(what) {
            assert!(
                start.elapsed() < limit,
                "no {what:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until `ready` holds for a response to `path`, or panics after `limit`.
    pub fn wait_for(
        &self,
        path: &str,
        limit: Duration,
        ready: impl Fn(&Response) -> bool,
    ) -> Response {
        let start = Instant::now();
        loop {
            let r = self.get(path);
            if ready(&r) {
                return r;
            }
            assert!(
                start.elapsed() < limit,
                "gave up waiting on {path}: last {r:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL, as a crash or an OOM kill would.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "server did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// A port that was free a moment ago, for a process that must listen on a
/// known port (behind nginx, and again after a restart).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One request on a new connection (`Connection: close`).
pub fn request(addr: SocketAddr, method: &str, path: &str) -> Response {
    let mut c = Client::connect(addr);
    c.request_with(method, path, true)
}

/// A keep-alive HTTP/1.1 client, just enough for these tests. Every
/// answer it reads is checked against docs/openapi.json (see
/// [`openapi`]) unless it talks to something other than promo.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    checked: bool,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connecting");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            checked: true,
        }
    }

    /// A client of something that is not promo (nginx in front of it may
    /// answer its own errors): its answers are not checked.
    pub fn connect_unchecked(addr: SocketAddr) -> Client {
        Client {
            checked: false,
            ..Client::connect(addr)
        }
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request_with("GET", path, false)
    }

    /// Waits (up to the read timeout) for the server to close the
    /// connection; true if it did, without sending anything first.
    pub fn closed_by_server(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0))
    }

    pub fn request_with(&mut self, method: &str, path: &str, close: bool) -> Response {
        let conn = if close { "close" } else { "keep-alive" };
        let head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: {conn}\r\n\r\n");
        self.send(head.as_bytes(), method == "HEAD")
    }

    /// POSTs `body` as JSON to `path` on this connection.
    pub fn post_json(&mut self, path: &str, body: &str) -> Response {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(request.as_bytes(), false)
    }

    /// Sends `bytes` as they are, in one write (several small ones would
    /// wait on Nagle and delayed ACKs), and reads one response.
    pub fn send(&mut self, bytes: &[u8], head_only: bool) -> Response {
        self.writer.write_all(bytes).unwrap();
        let response = read_response(&mut self.reader, head_only);
        if self.checked {
            check_answer(bytes, &response, head_only);
        }
        response
    }
}

/// `program` on the PATH, resolved through its links.
pub fn on_path(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.exists())
        .and_then(|p| p.canonicalize().ok())
        .unwrap_or_else(|| {
            panic!("{program} is not installed: make test installs it (scripts/tools.sh)")
        })
}

/// What curl saw of one answer.
pub struct CurlAnswer {
    pub status: u16,
    pub content_type: Option<String>,
    /// `1.1` or `2`.
    pub http_version: String,
    pub body: String,
}

/// Runs curl with `args` (one URL of promo's among them). The answer is
/// checked against docs/openapi.json.
pub fn curl_answer(args: &[&str]) -> CurlAnswer {
    let out = Command::new("curl")
        .args(["--silent", "--max-time", "60", "--write-out"])
        .arg("\n%{http_code} %{http_version} %{method} %{url_effective} %{content_type}")
        .args(args)
        .output()
        .expect("curl must be installed (make test installs it: scripts/tools.sh)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, written) = text.rsplit_once('\n').unwrap();
    let mut fields = written.splitn(5, ' ');
    let mut field = || fields.next().unwrap_or_default();
    let (status, http_version, method, url) = (field(), field(), field(), field());
    let answer = CurlAnswer {
        status: status.parse().unwrap_or(0),
        content_type: Some(field()).filter(|c| !c.is_empty()).map(str::to_owned),
        http_version: http_version.to_string(),
        body: body.to_string(),
    };
    if answer.status != 0 {
        // The path and query: what follows the scheme and the authority.
        let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
        let target = after_scheme.find('/').map_or("/", |at| &after_scheme[at..]);
        let checked = openapi::Answer {
            status: answer.status,
            content_type: answer.content_type.as_deref(),
            body: answer.body.as_bytes(),
            head: method == "HEAD",
        };
        openapi::check(method, target, &checked);
    }
    answer
}

/// [`curl_answer`]'s status and body.
pub fn curl(args: &[&str]) -> (u16, String) {
    let answer = curl_answer(args);
    (answer.status, answer.body)
}

/// Checks `response`, the answer to the request that begins `request`,
/// against docs/openapi.json; a request whose first line is not an HTTP
/// request line (a test of garbage) is not checked.
pub fn check_answer(request: &[u8], response: &Response, head_only: bool) {
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return;
    };
    if !version.starts_with("HTTP/") || !target.starts_with('/') {
        return;
    }
    let answer = openapi::Answer {
        status: response.status,
        content_type: response.header("content-type"),
        body: &response.body,
        head: head_only,
    };
    openapi::check(method, target, &answer);
}

/// Reads one response with a Content-Length body (what promo sends).
pub fn read_response(reader: &mut impl BufRead, head_only: bool) -> Response {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0; if head_only { 0 } else { len }];
    reader.read_exact(&mut body).unwrap();
    Response {
        status,
        headers,
        body,
    }
}
