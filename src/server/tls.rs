//! HTTPS on the serving port: the certificate pair, and its rotation.
//!
//! Certificates are renewed while servers run (cert-manager, certbot, a
//! Kubernetes secret), so the pair is read again on SIGHUP and whenever
//! either file changes, and new connections use the new pair; connections
//! already open carry on with the one they shook hands with. A pair that
//! cannot be used (half written, a key that does not match) keeps the old
//! one: a failed renewal must not take the port down.
//!
//! rustls with aws-lc-rs (already built for the object-store client), no
//! OpenSSL; TLS 1.2 and 1.3; ALPN `http/1.1`, the only protocol served.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::error::{Error, Result};
use crate::metrics as m;
use crate::server::{every_tick_and_hangup, Wake};

/// How often the files are checked for a change.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The PEM files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// The pair in use, and what the files looked like when it was read.
pub struct Tls {
    files: TlsFiles,
    config: ArcSwap<ServerConfig>,
    seen: Mutex<[Option<Stamp>; 2]>,
}

/// What tells that a file changed: its identity, size and modification
/// time (a renewal that replaces a symlink, as Kubernetes does, changes
/// the inode the path leads to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: meta.ino(),
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

impl Tls {
    /// Reads the pair; an error names the file that cannot be used.
    pub fn load(files: TlsFiles) -> Result<Tls> {
        let seen = [stamp(&files.cert), stamp(&files.key)];
        let config = server_config(&files)?;
        metrics::counter!(m::TLS_RELOADS, "result" => "ok").absolute(0);
        metrics::counter!(m::TLS_RELOADS, "result" => "error").absolute(0);
        metrics::counter!(m::TLS_HANDSHAKE_ERRORS).absolute(0);
        Ok(Tls {
            files,
            config: ArcSwap::from_pointee(config),
            seen: Mutex::new(seen),
        })
    }

    /// What a new connection shakes hands with.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// Reads the pair again and, if it can be used, makes new connections
    /// use it; otherwise the pair in use stays, and the error is returned.
    pub fn reload(&self) -> Result<()> {
        *self.seen.lock().expect("never poisoned") =
            [stamp(&self.files.cert), stamp(&self.files.key)];
        let result = server_config(&self.files);
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(m::TLS_RELOADS, "result" => label).increment(1);
        match result {
            Ok(config) => {
                self.config.store(Arc::new(config));
                tracing::info!(
                    "TLS: new connections use {} and {}",
                    self.files.cert.display(),
                    self.files.key.display()
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!("TLS: keeping the certificate in use: {e}");
                Err(e)
            }
        }
    }

    /// Reloads if either file changed since it was last read.
    pub fn reload_if_changed(&self) {
        let now = [stamp(&self.files.cert), stamp(&self.files.key)];
        if now != *self.seen.lock().expect("never poisoned") {
            let _ = self.reload();
        }
    }
}

/// Shakes hands on `stream` within `timeout` (the header timeout: a client
/// that stalls or speaks plain HTTP is dropped like a slow request head),
/// counting failures; `None` if the handshake did not succeed.
pub async fn accept(
    tls: &Tls,
    stream: tokio::net::TcpStream,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let error = match tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(e)) => format!("TLS handshake failed: {e}"),
        Err(_) => "TLS handshake not finished within the header timeout".to_string(),
    };
    metrics::counter!(m::TLS_HANDSHAKE_ERRORS).increment(1);
    tracing::debug!("{error}");
    None
}

/// Reloads `tls` on SIGHUP and when its files change (checked every
/// `interval`), until `shutdown` completes.
pub async fn watch(
    tls: Arc<Tls>,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let reload = |wake| {
        match wake {
            Wake::Hangup => {
                tracing::info!("TLS: SIGHUP: reading the certificate again");
                let _ = tls.reload();
            }
            Wake::Tick => tls.reload_if_changed(),
        }
        std::future::ready(())
    };
    every_tick_and_hangup("TLS", interval, shutdown, reload).await
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig> {
    let bad = |path: &Path, reason: String| Error::Tls {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(&files.cert, pem_error(e, "certificate")))?;
    if certs.is_empty() {
        return Err(bad(&files.cert, "no PEM certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad(&files.key, pem_error(e, "private key")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| bad(&files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            bad(
                &files.key,
                format!(
                    "cannot be used with the certificate in {}: {e}",
                    files.cert.display()
                ),
            )
        })?;
    // HTTP/2 first, as clients that speak both prefer it.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn pem_error(e: rustls::pki_types::pem::Error, what: &str) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(e) => e.to_string(),
        E::NoItemsFound => format!("no PEM {what} in it"),
        other => format!("not a PEM {what}: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> TlsFiles {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.cert.pem()).unwrap();
        std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn a_pair_loads_and_unusable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = pair(dir.path(), "a");
        let tls = Tls::load(good.clone()).unwrap();
        assert_eq!(
            tls.config.load().alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );

        let missing = TlsFiles {
            cert: dir.path().join("nope.crt"),
            ..good.clone()
        };
        let e = Tls::load(missing).err().unwrap().to_string();
        assert!(e.contains("nope.crt") && e.contains("No such file"), "{e}");

        let garbage = dir.path().join("garbage.key");
        std::fs::write(&garbage, "not a key\n").unwrap();
        let e = Tls::load(TlsFiles {
            key: garbage,
            ..good.clone()
        })
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("garbage.key") && e.contains("no PEM private key"),
            "{e}"
        );

        // A key from another pair does not match the certificate.
        let other = pair(dir.path(), "b");
        let e = Tls::load(TlsFiles {
            key: other.key.clone(),
            ..good.clone()
        })
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("b.key") && e.contains("a.crt"), "{e}");
    }

    #[test]
    fn a_broken_renewal_keeps_the_pair_in_use_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = pair(dir.path(), "a");
        let tls = Tls::load(files.clone()).unwrap();
        let first = tls.config.load_full();

        tls.reload_if_changed();
        assert!(
            Arc::ptr_eq(&first, &tls.config.load_full()),
            "unchanged files are not read again"
        );

        std::fs::write(&files.key, "half written").unwrap();
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&first, &tls.config.load_full()));

        let renewed = pair(dir.path(), "renewed");
        std::fs::rename(&renewed.cert, &files.cert).unwrap();
        std::fs::rename(&renewed.key, &files.key).unwrap();
        tls.reload_if_changed();
        assert!(!Arc::ptr_eq(&first, &tls.config.load_full()));
    }
}
