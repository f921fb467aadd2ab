//! The mutual-TLS listener: the broker builds its own rustls `ServerConfig`
//! (TLS 1.3 only, ALPN h2, client certificates required and verified against
//! the federation CA and its CRL, an expired CRL refused), accepts with
//! tokio-rustls under a handshake timeout in a task per connection, and
//! hands the streams to tonic.
//!
//! Certificates, key and CRL reload without a restart: new connections use
//! the new configuration, and every open connection is judged again (see
//! [`crate::trust`]): one whose certificate the new CRL revokes ends within
//! the grace period, as it does when its certificate expires.
//!
//! Each principal may hold at most `max_connections_per_principal`
//! connections at once, so that one certificate cannot take every slot.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use referral_proto::ids::TrustDomain;
use referral_proto::time::Timestamp;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;
use crate::error::BrokerError;
use crate::identity::{Identity, PeerInfo, principal_from_cert};
use crate::trust::{CLOSE_GRACE, Connection, Registration, Registry};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("private key {0}")]
    Secret(certs::secret_file::SecretFileError),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.display().to_string(), message: message.to_string() }
}

/// Everything loaded from the TLS files at one time.
#[derive(Debug)]
pub struct TlsMaterial {
    pub server_config: Arc<rustls::ServerConfig>,
    /// Serials revoked by the loaded CRL.
    pub revoked: HashSet<Vec<u8>>,
    pub server_cert_not_after: Timestamp,
    pub client_ca_not_after: Timestamp,
    pub crl_next_update: Option<Timestamp>,
}

/// The process-wide crypto provider: ring, and only ring.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads and checks the TLS files.
pub fn load(files: &TlsConfig) -> Result<TlsMaterial, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.certificate)
        .map_err(|e| file_err(&files.certificate, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&files.certificate, e))?;
    let leaf = chain.first().ok_or_else(|| file_err(&files.certificate, "holds no certificate"))?;
    let server_cert_not_after = certs::pki::cert_info_der(leaf).map_err(|e| file_err(&files.certificate, e))?.not_after;
    // The TLS key is a secret like every other key the broker reads: refused
    // unless only its owner may read it (the error names the path and the fix).
    let key_text = certs::secret_file::read(&files.key).map_err(TlsError::Secret)?;
    let key = PrivateKeyDer::from_pem_slice(key_text.as_bytes()).map_err(|e| file_err(&files.key, e))?;
    let ca = CertificateDer::from_pem_file(&files.client_ca).map_err(|e| file_err(&files.client_ca, e))?;
    let client_ca_not_after = certs::pki::cert_info_der(&ca).map_err(|e| file_err(&files.client_ca, e))?.not_after;
    let crl = CertificateRevocationListDer::from_pem_file(&files.crl).map_err(|e| file_err(&files.crl, e))?;
    let (revoked, crl_next_update) = crl_contents(&crl).map_err(|m| file_err(&files.crl, m))?;

    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(|e| file_err(&files.client_ca, e))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .with_crls([crl])
        .enforce_revocation_expiration()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("server certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsMaterial {
        server_config: Arc::new(config),
        revoked,
        server_cert_not_after,
        client_ca_not_after,
        crl_next_update,
    })
}

fn crl_contents(crl: &CertificateRevocationListDer<'_>) -> Result<(HashSet<Vec<u8>>, Option<Timestamp>), String> {
    use x509_parser::prelude::FromDer as _;
    let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(crl)
        .map_err(|e| format!("not a CRL: {e}"))?;
    let revoked = parsed.iter_revoked_certificates().map(|r| r.raw_serial().to_vec()).collect();
    let next = parsed.next_update().map(|t| Timestamp(t.timestamp() * 1000));
    Ok((revoked, next))
}

/// The current TLS material, swapped on reload.
#[derive(Debug)]
pub struct TlsState {
    files: TlsConfig,
    current: ArcSwap<TlsMaterial>,
}

impl TlsState {
    pub fn open(files: &TlsConfig) -> Result<Self, TlsError> {
        Ok(Self { files: files.clone(), current: ArcSwap::from_pointee(load(files)?) })
    }

    pub fn current(&self) -> Arc<TlsMaterial> {
        self.current.load_full()
    }

    /// Re-reads the files; on any error keeps serving with what it had.
    pub fn reload(&self) -> Result<(), TlsError> {
        let m = load(&self.files)?;
        self.current.store(Arc::new(m));
        Ok(())
    }

    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.current.load().revoked.contains(serial)
    }
}

/// A TLS connection with the identity its client certificate proved.
///
/// Once the connection's trust has ended and the grace period is over, it
/// reads as closed and refuses writes, so hyper ends the connection.
pub struct PeerStream {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
    /// Resolves when the connection must close (trust ended, grace over).
    closing: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    closed: bool,
    _registration: Option<Registration>,
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
    _open: crate::metrics::Open,
}

impl std::fmt::Debug for PeerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerStream").field("info", &self.info).field("closed", &self.closed).finish_non_exhaustive()
    }
}

impl PeerStream {
    /// True once the connection must close; registers the waker otherwise.
    fn must_close(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed
            && let Some(closing) = self.closing.as_mut()
            && closing.as_mut().poll(cx).is_ready()
        {
            self.closed = true;
        }
        self.closed
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the connection's principal is no longer trusted")
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.must_close(cx) {
            // End of stream: hyper closes the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.must_close(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.must_close(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Whether an identity is still trusted (see [`crate::trust::judge`]).
pub type JudgeFn = dyn Fn(&Identity) -> Result<(), BrokerError> + Send + Sync;

/// Judges an identity against the current CRL and directory.
#[derive(Clone)]
pub struct Judge(pub Arc<JudgeFn>);

impl std::fmt::Debug for Judge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Judge")
    }
}

/// Settings of the accept loop.
#[derive(Debug, Clone)]
pub struct AcceptOptions {
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_principal: usize,
    pub trust_domain: TrustDomain,
    /// Every connection with a valid identity is registered here.
    pub registry: Arc<Registry>,
    /// Judges a new connection's certificate (revocation, expiry), in case
    /// a reload raced its handshake.
    pub judge: Judge,
}

/// Counters the accept loop keeps, for metrics and tests.
#[derive(Debug, Default)]
pub struct AcceptStats {
    pub accepted: std::sync::atomic::AtomicU64,
    pub handshakes_failed: std::sync::atomic::AtomicU64,
    pub handshakes_timed_out: std::sync::atomic::AtomicU64,
    pub refused_over_limit: std::sync::atomic::AtomicU64,
    /// Connections closed after the handshake because their principal
    /// already held its maximum.
    pub refused_per_principal: std::sync::atomic::AtomicU64,
}

/// Connection slots per principal URI.
#[derive(Debug, Default)]
struct PrincipalSlots(std::sync::Mutex<HashMap<String, Arc<Semaphore>>>);

impl PrincipalSlots {
    fn take(&self, principal: &str, limit: usize) -> Option<OwnedSemaphorePermit> {
        let sem = self
            .0
            .lock()
            .expect("connection slots lock")
            .entry(principal.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(limit)))
            .clone();
        sem.try_acquire_owned().ok()
    }
}

/// HTTP/2 `ENHANCE_YOUR_CALM`: the peer opened too much.
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Closes a connection over the per-principal limit in a way the client
/// can read: the HTTP/2 server preface (an empty SETTINGS frame), then
/// GOAWAY with `ENHANCE_YOUR_CALM` and the reason, then TLS close_notify.
/// What the client already sent is read and dropped (briefly), so that the
/// close is not turned into a reset that could discard the GOAWAY.
async fn refuse_connection(stream: &mut TlsStream<TcpStream>, limit: usize) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let reason = format!("too many connections for this principal (limit {limit})");
    let mut frames = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let len = 8 + reason.len();
    frames.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, 0x7, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&0u32.to_be_bytes());
    frames.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    frames.extend_from_slice(reason.as_bytes());
    let _ = stream.write_all(&frames).await;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Accepts TCP connections, runs each TLS handshake in its own task under a
/// timeout, and yields the established streams. Ends on `shutdown`.
pub fn accept_loop(
    listener: TcpListener,
    tls: Arc<TlsState>,
    opts: AcceptOptions,
    stats: Arc<AcceptStats>,
    shutdown: CancellationToken,
) -> mpsc::Receiver<Result<PeerStream, io::Error>> {
    use std::sync::atomic::Ordering::Relaxed;
    let (tx, rx) = mpsc::channel(128);
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let per_principal = Arc::new(PrincipalSlots::default());
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                stats.refused_over_limit.fetch_add(1, Relaxed);
                tracing::warn!("connection limit reached; refusing a connection");
                drop(tcp);
                continue;
            };
            stats.accepted.fetch_add(1, Relaxed);
            // Without TCP_NODELAY a lone client waits ~40 ms per RPC on delayed ACKs.
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current().server_config.clone());
            let tx = tx.clone();
            let opts = opts.clone();
            let stats = stats.clone();
            let per_principal = per_principal.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(opts.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(mut stream)) => {
                        let identity = match stream.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                            Some(leaf) => principal_from_cert(leaf, &opts.trust_domain),
                            None => Err(BrokerError::NoClientCertificate),
                        };
                        let mut principal_permit = None;
                        let mut connection = None;
                        let mut registration = None;
                        let mut closing = None;
                        if let Ok(id) = &identity {
                            let uri = id.principal.uri();
                            let Some(p) = per_principal.take(&uri, opts.max_connections_per_principal) else {
                                stats.refused_per_principal.fetch_add(1, Relaxed);
                                metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => "per_principal_limit")
                                    .increment(1);
                                tracing::warn!(principal = %id.principal, "per-principal connection limit reached; closing a connection");
                                refuse_connection(&mut stream, opts.max_connections_per_principal).await;
                                return;
                            };
                            principal_permit = Some(p);
                            let conn = Connection::new(id.clone());
                            registration = Some(opts.registry.register(conn.clone()));
                            // A reload may have raced this handshake.
                            if let Err(why) = (opts.judge.0)(id) {
                                conn.end(why);
                            }
                            let ended = conn.ended_token();
                            closing = Some(Box::pin(async move {
                                ended.cancelled().await;
                                tokio::time::sleep(CLOSE_GRACE).await;
                            }) as Pin<Box<dyn Future<Output = ()> + Send>>);
                            connection = Some(conn);
                        }
                        let info = PeerInfo { identity, remote: Some(remote), connection };
                        let open = crate::metrics::Open::new(crate::metrics::CONNECTIONS, "tls");
                        let _ = tx
                            .send(Ok(PeerStream {
                                inner: stream,
                                info,
                                closing,
                                closed: false,
                                _registration: registration,
                                _permits: (permit, principal_permit),
                                _open: open,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => {
                        stats.handshakes_failed.fetch_add(1, Relaxed);
                        metrics::counter!(crate::metrics::HANDSHAKE_FAILURES, "cause" => "refused").increment(1);
                        tracing::info!(%remote, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        stats.handshakes_timed_out.fetch_add(1, Relaxed);
                        metrics::counter!(crate::metrics::HANDSHAKE_FAILURES, "cause" => "timeout").increment(1);
                        tracing::info!(%remote, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    rx
}
