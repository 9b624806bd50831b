//! HTTPS on the serving port, end to end: curl and a rustls client against
//! certificates made here, rotation under a client loop, and clients that
//! do not speak TLS.

use crate::common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio_rustls::rustls::{self, pki_types};

const ID: &str = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118";

/// A certificate authority made for one test.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: pki_types::CertificateDer<'static>,
    pem: String,
}

/// A server certificate for localhost and its key, as PEM files.
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes a leaf for localhost and 127.0.0.1 to `dir/name.{crt,key}`,
    /// each through a rename, as a renewal tool replaces files.
    fn leaf(&self, dir: &Path, name: &str) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let leaf = Leaf {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            der: cert.der().to_vec(),
        };
        replace(&leaf.cert, &cert.pem());
        replace(&leaf.key, &key.serialize_pem());
        leaf
    }

    fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).unwrap();
        path.to_path_buf()
    }
}

fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A rustls client that trusts `cas` and offers only `versions`.
fn client(
    cas: &[&Ca],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca.der.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn all_versions(cas: &[&Ca]) -> Arc<rustls::ClientConfig> {
    client(cas, rustls::ALL_VERSIONS)
}

/// A TLS connection that can send several requests.
struct TlsClient {
    stream: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl TlsClient {
    fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> std::io::Result<TlsClient> {
        let name = pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        // Finish the handshake now, so that its errors are this call's.
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsClient {
            stream: BufReader::new(stream),
        })
    }

    fn get(&mut self, path: &str) -> Response {
        let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        self.stream.get_mut().write_all(head.as_bytes()).unwrap();
        read_response(&mut self.stream, false)
    }

    fn conn(&self) -> &rustls::ClientConnection {
        &self.stream.get_ref().conn
    }

    fn peer_leaf(&self) -> Vec<u8> {
        self.conn().peer_certificates().unwrap()[0].to_vec()
    }
}

/// One GET on a new TLS connection; the response and the certificate the
/// server showed.
fn tls_get(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    path: &str,
) -> std::io::Result<(Response, Vec<u8>)> {
    let mut c = TlsClient::connect(addr, config)?;
    let r = c.get(path);
    Ok((r, c.peer_leaf()))
}

fn tls_metric(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, name: &str) -> f64 {
    let text = tls_get(addr, config, "/metrics").unwrap().0.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

fn data(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    build_ok(&data, &fixture("promotions.csv"), &[]);
    data
}

fn https_server(data: &Path, leaf: &Leaf, extra: &[&str]) -> Server {
    let mut args = vec![
        "--tls-cert",
        leaf.cert.to_str().unwrap(),
        "--tls-key",
        leaf.key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start_with(data, &args)
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl must be installed (make test installs it: scripts/tools.sh)")
}

#[test]
fn curl_and_rustls_get_answers_over_tls_1_2_and_1_3() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let ca = Ca::new("promo test CA");
    let ca_file = ca.write(&dir.path().join("ca.pem"));
    let leaf = ca.leaf(dir.path(), "server");
    let server = https_server(&data, &leaf, &[]);
    let port = server.addr.port();
    let expected = promo_get(&data, ID).unwrap();

    let url = format!("https://localhost:{port}/promotions/{ID}");
    // HTTP/1.1 over TLS 1.2 and 1.3, and HTTP/2 chosen by ALPN (curl
    // offers h2 first): the same answer.
    for (flags, version) in [
        (&["--tlsv1.2", "--tls-max", "1.2", "--http1.1"][..], "1.1"),
        (&["--tlsv1.3", "--http1.1"], "1.1"),
        (&["--http2"], "2"),
    ] {
        let mut args = vec!["--cacert", ca_file.to_str().unwrap()];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--write-out", "\n%{http_code} %{http_version}", &url]);
        let out = curl(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{flags:?}: {out:?}");
        assert_eq!(text, format!("{expected}\n200 {version}"), "{flags:?}");
    }
    // curl checks the certificate: without the CA it refuses.
    assert!(!curl(&[&url]).status.success());

    for (versions, version) in [
        (
            &[&rustls::version::TLS12][..],
            rustls::ProtocolVersion::TLSv1_2,
        ),
        (&[&rustls::version::TLS13], rustls::ProtocolVersion::TLSv1_3),
    ] {
        let config = client(&[&ca], versions);
        let mut c = TlsClient::connect(server.addr, &config).unwrap();
        assert_eq!(c.conn().protocol_version(), Some(version));
        assert_eq!(c.conn().alpn_protocol(), Some(&b"http/1.1"[..]));
        // Several requests on one connection.
        for _ in 0..3 {
            let r = c.get(&format!("/promotions/{ID}"));
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), expected);
        }
        assert_eq!(c.get("/promotions/nope").status, 404);
        assert_eq!(c.peer_leaf(), leaf.der);
    }
}

/// The key forms a certificate tool writes: PKCS#8, SEC1 (EC) and PKCS#1
/// (RSA), the last two made by openssl.
#[test]
fn pkcs8_sec1_and_pkcs1_keys_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl must be installed (make test installs it: scripts/tools.sh)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ca = Ca::new("promo test CA");
    let ca_file = ca.write(&dir.path().join("ca.pem"));
    let ec = ca.leaf(dir.path(), "ec");
    let sec1 = dir.path().join("ec-sec1.key");
    openssl(&[
        "pkey",
        "-in",
        ec.key.to_str().unwrap(),
        "-traditional",
        "-out",
        sec1.to_str().unwrap(),
    ]);
    let rsa_cert = dir.path().join("rsa.crt");
    let rsa_key8 = dir.path().join("rsa8.key");
    let rsa_key1 = dir.path().join("rsa1.key");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost",
        "-keyout",
        rsa_key8.to_str().unwrap(),
        "-out",
        rsa_cert.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        rsa_key8.to_str().unwrap(),
        "-traditional",
        "-out",
        rsa_key1.to_str().unwrap(),
    ]);
    let cases = [
        (&ec.cert, &ec.key, "BEGIN PRIVATE KEY", &ca_file),
        (&ec.cert, &sec1, "BEGIN EC PRIVATE KEY", &ca_file),
        (&rsa_cert, &rsa_key1, "BEGIN RSA PRIVATE KEY", &rsa_cert),
    ];
    for (cert, key, form, trust) in cases {
        assert!(std::fs::read_to_string(key).unwrap().contains(form));
        let leaf = Leaf {
            cert: cert.clone(),
            key: key.clone(),
            der: Vec::new(),
        };
        let server = https_server(&data, &leaf, &[]);
        let url = format!("https://localhost:{}/readyz", server.addr.port());
        let out = curl(&["--cacert", trust.to_str().unwrap(), &url]);
        assert!(out.status.success(), "{form}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("ready"),
            "{form}: {out:?}"
        );
    }
}

#[test]
fn unusable_tls_files_stop_serve_at_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let ca = Ca::new("promo test CA");
    let leaf = ca.leaf(dir.path(), "server");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN NOTHING-----\n").unwrap();
    let other = ca.leaf(dir.path(), "other");
    let missing = dir.path().join("missing.crt");
    let cases: [(&[&Path], &str); 5] = [
        (&[&missing, &leaf.key], "missing.crt"),
        (&[&leaf.cert, &garbage], "garbage.pem"),
        (&[&garbage, &leaf.key], "garbage.pem"),
        // A key that is not the certificate's.
        (&[&leaf.cert, &other.key], "other.key"),
        // Only one of the two flags.
        (&[&leaf.cert], "--tls-key"),
    ];
    for (files, named) in cases {
        let mut cmd = promo();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .arg("--tls-cert")
            .arg(files[0]);
        if let Some(key) = files.get(1) {
            cmd.arg("--tls-key").arg(key);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{named}: {stderr}");
        assert!(stderr.contains(named), "{named}: {stderr}");
        assert!(!stderr.contains("listening on"), "{stderr}");
    }
}

#[test]
fn certificates_rotate_under_a_client_loop_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let first = old_ca.leaf(dir.path(), "server");
    let server = https_server(&data, &first, &[]);
    let config = all_versions(&[&old_ca, &new_ca]);
    let addr = server.addr;

    // A connection opened before any rotation.
    let mut kept = TlsClient::connect(addr, &config).unwrap();
    assert_eq!(kept.get(&format!("/promotions/{ID}")).status, 200);

    // A new connection per request, recording the certificate each saw.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let (s, seen2, c) = (stop.clone(), seen.clone(), config.clone());
    let client = std::thread::spawn(move || {
        let mut failures = Vec::new();
        let mut answered = 0u64;
        while !s.load(Ordering::Relaxed) {
            match tls_get(addr, &c, &format!("/promotions/{ID}")) {
                Ok((r, leaf)) if r.status == 200 => {
                    answered += 1;
                    let mut seen = seen2.lock().unwrap();
                    if seen.last() != Some(&leaf) {
                        seen.push(leaf);
                    }
                }
                Ok((r, _)) => failures.push(format!("status {}", r.status)),
                Err(e) => failures.push(e.to_string()),
            }
        }
        (answered, failures)
    });
    let wait_for_leaf = |leaf: &[u8]| {
        let start = Instant::now();
        while seen.lock().unwrap().last().map(Vec::as_slice) != Some(leaf) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the new certificate was not served"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for_leaf(&first.der);
    let hup = || {
        let pid = server.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };

    // 1. A renewal from another CA, announced with SIGHUP.
    let second = new_ca.leaf(dir.path(), "server");
    hup();
    wait_for_leaf(&second.der);
    assert_eq!(
        tls_metric(addr, &config, "promo_tls_reloads_total{result=\"ok\"}"),
        1.0
    );

    // 2. A broken key: the pair in use stays, and the error is counted.
    replace(&second.key, "-----BEGIN PRIVATE KEY-----\nbroken\n");
    hup();
    let start = Instant::now();
    while tls_metric(addr, &config, "promo_tls_reloads_total{result=\"error\"}") < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(tls_get(addr, &config, "/healthz").unwrap().1, second.der);
    assert!(server.log().contains("keeping the certificate in use"));

    // 3. A renewal with no signal: found by the files' change.
    let third = old_ca.leaf(dir.path(), "server");
    wait_for_leaf(&third.der);

    stop.store(true, Ordering::Relaxed);
    let (answered, failures) = client.join().unwrap();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![first.der.clone(), second.der.clone(), third.der.clone()]
    );
    assert!(answered > 3);
    // The connection opened first carries on with the pair it began with.
    let r = kept.get(&format!("/promotions/{ID}"));
    assert_eq!(r.status, 200);
    assert_eq!(kept.peer_leaf(), first.der);
    assert_eq!(
        tls_metric(addr, &config, "promo_tls_reloads_total{result=\"ok\"}"),
        2.0
    );
}

/// True once the server has closed `s`: the read ends (EOF or a reset)
/// instead of timing out.
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) => !buf.starts_with(b"HTTP/"),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn plain_http_garbage_and_stalled_handshakes_are_dropped_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let ca = Ca::new("promo test CA");
    let leaf = ca.leaf(dir.path(), "server");
    // One connection at a time, so that the cap's counting shows.
    let server = https_server(
        &data,
        &leaf,
        &["--header-timeout", "1", "--max-connections", "1"],
    );
    let config = all_versions(&[&ca]);
    let connect = || {
        let s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    };

    let mut plain = connect();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(closed(&mut plain), "plain HTTP was answered");

    let mut garbage = connect();
    garbage.write_all(&[0x42; 300]).unwrap();
    assert!(closed(&mut garbage));

    // A stalled handshake holds the only connection permit: the next
    // client is accepted once the stalled one has been dropped, and not
    // before.
    let mut stalled = connect();
    std::thread::sleep(Duration::from_millis(100));
    let (r, _) = tls_get(server.addr, &config, "/healthz").unwrap();
    assert_eq!(r.status, 200);
    stalled.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    assert!(
        matches!(stalled.read(&mut buf), Ok(0)),
        "the stalled connection was still open when the next was served"
    );
    assert!(tls_metric(server.addr, &config, "promo_tls_handshake_errors_total") >= 3.0);
    assert!(server.log().contains("HTTPS"));
}

/// With a certificate, the admin port is HTTPS too: its token never
/// crosses a network in clear.
#[test]
fn the_admin_port_speaks_https_with_the_same_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let ca = Ca::new("promo test CA");
    let ca_file = ca.write(&dir.path().join("ca.pem"));
    let leaf = ca.leaf(dir.path(), "server");
    let token = dir.path().join("token");
    std::fs::write(&token, "tls-admin-token\n").unwrap();
    let tls = [
        "--tls-cert",
        leaf.cert.to_str().unwrap(),
        "--tls-key",
        leaf.key.to_str().unwrap(),
    ];
    let (server, admin) = Server::start_with_admin(&data, &token, &tls);
    assert!(server.log().contains("(HTTPS, bearer token required)"));
    let port = admin.port();
    let upload = format!("https://localhost:{port}/upload");
    let file = format!("file=@{}", fixture("promotions.csv").display());
    let out = curl(&[
        "--cacert",
        ca_file.to_str().unwrap(),
        "-H",
        "Authorization: Bearer tls-admin-token",
        "-F",
        &file,
        &upload,
    ]);
    assert!(out.status.success(), "{out:?}");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["generation"], 2, "{answer}");
    // Plain HTTP to the admin port gets no answer.
    let plain = curl(&[&format!("http://localhost:{port}/generations")]);
    assert!(!plain.status.success(), "{plain:?}");
    let (r, _) = tls_get(server.addr, &all_versions(&[&ca]), "/readyz").unwrap();
    assert_eq!(r.text().trim(), "ready: generation 2");
}
