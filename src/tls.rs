//! TLS on the server's listeners, with rustls: the certificate and key come from PEM files and
//! are re-read when the files change (a renewed certificate needs no restart); with
//! `client_ca_file`, clients must present a certificate that CA signed (mutual TLS for agents).
//!
//! Every listener (OTLP/gRPC, OTLP/HTTP, the query port) is served by [`serve`]: a TLS
//! handshake per connection, then hyper's HTTP/1.1 or HTTP/2 (by ALPN; gRPC is HTTP/2) over
//! the same axum router as without TLS. A client that speaks plaintext to a TLS port fails the
//! handshake and is disconnected.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::Router;
use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// `tls:` in the server's config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first); with `key_file`, every listener speaks TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates: clients must present a certificate one of them signed.
    pub client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// rustls on `ring`, as the Alertmanager client has it (aws-lc-rs, which has the post-quantum
/// key exchange rustls now prefers, would add a C and assembly build of its own).
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_key(cert_file: &PathBuf, key_file: &PathBuf) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .with_context(|| format!("reading {}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert_file.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert_file.display());
    let key =
        PrivateKeyDer::from_pem_file(key_file).with_context(|| format!("reading the key {}", key_file.display()))?;
    let provider = ring_provider();
    let certified = CertifiedKey::from_der(certs, key, &provider).context("the key does not match the certificate")?;
    Ok(Arc::new(certified))
}

/// The certificate being served, replaced when its files change.
#[derive(Debug)]
struct Reloading {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>, Option<SystemTime>)>,
}

impl Reloading {
    fn reload(&self) {
        let seen = (modified(&self.cert_file), modified(&self.key_file));
        {
            let current = self.current.read();
            if (current.1, current.2) == seen {
                return;
            }
        }
        match load_key(&self.cert_file, &self.key_file) {
            Ok(key) => {
                info!(cert_file = %self.cert_file.display(), "TLS certificate reloaded");
                *self.current.write() = (key, seen.0, seen.1);
            }
            Err(error) => {
                // Half-written files during a renewal land here too; the next look retries.
                warn!(%error, "the TLS certificate does not load; serving the one there was");
            }
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().0.clone())
    }
}

/// The rustls configuration of every listener, and the task that reloads its certificate.
pub fn server_config(config: &TlsConfig) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    if !config.enabled() {
        return Ok(None);
    }
    let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
        anyhow::bail!("tls: cert_file and key_file go together");
    };
    let key = load_key(cert_file, key_file)?;
    let resolver = Arc::new(Reloading {
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
        current: RwLock::new((key, modified(cert_file), modified(key_file))),
    });
    let provider = Arc::new(ring_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &config.client_ca_file {
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in
                CertificateDer::pem_file_iter(ca_file).with_context(|| format!("reading {}", ca_file.display()))?
            {
                roots.add(cert.with_context(|| format!("parsing {}", ca_file.display()))?).context("a client CA")?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(resolver.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            resolver.reload();
        }
    });
    Ok(Some(Arc::new(server)))
}

/// Serves `app` on `listener` over TLS until `stop` turns true, then lets open connections
/// finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut stopping = std::pin::pin!(async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stopping => break,
        };
        let (acceptor, app, builder) = (acceptor.clone(), app.clone(), builder.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let connection = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(30)) => warn!("connections still open 30 s after shutdown began"),
    }
    Ok(())
}
