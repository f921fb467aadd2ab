//! The admin endpoint: plain HTTP on a separate listener (loopback by
//! default; never expose it), for the operator's tools. Off unless the
//! configuration has an `[admin]` section.
//!
//! Its requests carry no client certificate, so it has an authentication of
//! its own: a bearer token read at start from a 0600 file
//! (`admin.token_file`), compared in constant time. Every route but the
//! liveness probe answers 401 without it.
//!
//! - `GET /health`: 200 "SERVING" or 503 with the problems (open: a probe).
//! - `GET /metrics`: Prometheus text format.
//! - `GET /status`: queue depths, oldest unacknowledged, log size, tree head (JSON).
//! - `POST /backup` with `{"to": "/path"}`: a consistent, verified copy while
//!   serving, into a new folder (see [`crate::backup`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use referral_proto::Digest;
use serde::Deserialize;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::state::BrokerState;

async fn metrics(State(state): State<Arc<BrokerState>>) -> Response {
    for (agency, n) in state.live_subscribers() {
        metrics::gauge!(crate::metrics::LIVE_SUBSCRIBERS, "agency" => agency).set(n as f64);
    }
    ([("content-type", "text/plain; version=0.0.4")], crate::metrics::handle().render()).into_response()
}

async fn health(State(state): State<Arc<BrokerState>>) -> Response {
    if state.health.is_serving() {
        (StatusCode::OK, "SERVING\n".to_owned()).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("NOT_SERVING\n{}\n", state.health.problems().join("\n")))
            .into_response()
    }
}

async fn status(State(state): State<Arc<BrokerState>>) -> Response {
    let store = state.store.clone();
    let now = state.clock.now();
    match tokio::task::spawn_blocking(move || crate::status::gather(&*store, now)).await {
        Ok(Ok(mut s)) => {
            s.running = true;
            s.live_subscribers = state.live_subscribers();
            Json(s).into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct BackupRequest {
    to: PathBuf,
}

async fn backup(State(state): State<Arc<BrokerState>>, Json(req): Json<BackupRequest>) -> Response {
    if !req.to.is_absolute() {
        return (StatusCode::BAD_REQUEST, "the backup target must be an absolute path".to_owned()).into_response();
    }
    tracing::info!(to = %req.to.display(), "backup requested");
    match crate::backup::online(&state, &req.to).await {
        Ok(r) => {
            tracing::info!(records = r.records, entries = r.audit_log_entries, "backup written and verified");
            Json(r).into_response()
        }
        Err(e) => (StatusCode::CONFLICT, e.to_string()).into_response(),
    }
}

/// Shortest token accepted: 128 bits as hex.
pub const MIN_TOKEN_CHARS: usize = 32;

/// The admin endpoint's bearer token.
pub struct AdminToken(Zeroizing<String>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin token file {0}")]
    File(#[from] certs::secret_file::SecretFileError),
    #[error(
        "admin token file {path}: the token must be at least {MIN_TOKEN_CHARS} printable characters (make one with: broker admin-token --out {path})"
    )]
    TooShort { path: String },
}

impl AdminToken {
    /// Reads the token from its file, which only its owner may read.
    pub fn read(path: &Path) -> Result<Self, TokenError> {
        let text = certs::secret_file::read(path)?;
        let token = text.trim();
        if token.chars().count() < MIN_TOKEN_CHARS || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TokenError::TooShort { path: path.display().to_string() });
        }
        Ok(Self(Zeroizing::new(token.to_owned())))
    }

    /// Makes a new random token (256 bits, hex) in a 0600 file; an existing
    /// file is replaced only with `overwrite`.
    pub fn generate(path: &Path, overwrite: bool) -> Result<(), TokenError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut *bytes)
            .expect("the operating system's random generator works");
        let text = Zeroizing::new(format!("{}\n", hex::encode(*bytes)));
        certs::secret_file::write(path, text.as_bytes(), overwrite)?;
        Ok(())
    }

    /// The token as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether an `Authorization` header value presents this token. The
    /// comparison takes the same time wherever the values differ: both are
    /// hashed to equal length first, then compared without an early exit.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(|a| a.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let (a, b) = (Digest::of(presented), Digest::of(self.0.as_bytes()));
        a.0.iter().zip(b.0.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

async fn require_token(State(token): State<Arc<AdminToken>>, req: Request, next: Next) -> Response {
    let presented = req.headers().get(axum::http::header::AUTHORIZATION).map(|v| v.as_bytes());
    if token.accepts(presented) {
        next.run(req).await
    } else {
        tracing::warn!(path = %req.uri().path(), "admin request without the admin token refused");
        (
            StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
            "the admin endpoint needs \"Authorization: Bearer <token>\" with the token of admin.token_file\n",
        )
            .into_response()
    }
}

/// Serves the admin endpoint until shutdown; every route but `/health`
/// requires `token`.
pub async fn serve(listener: TcpListener, state: Arc<BrokerState>, token: AdminToken) {
    let shutdown = state.shutdown.clone();
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/backup", post(backup))
        .route_layer(axum::middleware::from_fn_with_state(Arc::new(token), require_token))
        .route("/health", get(health))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!(error = %e, "the admin endpoint failed");
    }
}

/// A minimal HTTP/1.0 request to a local admin endpoint, for the CLI; with
/// `token`, it carries `Authorization: Bearer <token>`.
pub async fn request(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream =
        tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await.map_err(
            |_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting to the admin endpoint timed out"),
        )??;
    let body = body.unwrap_or("");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = Zeroizing::new(format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_from_a_private_file_and_compared_whole() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        AdminToken::generate(&path, false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let token = AdminToken::read(&path).unwrap();
        assert_eq!(token.as_str().len(), 64);
        assert!(token.accepts(Some(format!("Bearer {}", token.as_str()).as_bytes())));
        assert!(!token.accepts(None));
        assert!(!token.accepts(Some(token.as_str().as_bytes())), "the scheme is required");
        assert!(!token.accepts(Some(format!("Bearer {}x", token.as_str()).as_bytes())));
        assert!(!token.accepts(Some(format!("Bearer {}", &token.as_str()[..63]).as_bytes())));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(AdminToken::read(&path).unwrap_err().to_string().contains("chmod 600"));
        let short = dir.path().join("short.token");
        certs::secret_file::write(&short, b"secret\n", false).unwrap();
        assert!(matches!(AdminToken::read(&short), Err(TokenError::TooShort { .. })));
    }
}
