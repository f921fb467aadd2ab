//! The admin endpoint: plain HTTP on a separate listener (loopback by
//! default; never expose it), for the operator's tools.
//!
//! - `GET /metrics`: Prometheus text format.
//! - `GET /health`: 200 "SERVING" or 503 with the problems.
//! - `GET /status`: queue depths, oldest unacknowledged, log size, tree head (JSON).
//! - `POST /backup` with `{"to": "/path"}`: a consistent, verified copy while serving.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::state::BrokerState;

async fn metrics() -> Response {
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
        Ok(Ok(s)) => Json(s).into_response(),
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

/// Serves the admin endpoint until shutdown.
pub async fn serve(listener: TcpListener, state: Arc<BrokerState>) {
    let shutdown = state.shutdown.clone();
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/backup", post(backup))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!(error = %e, "the admin endpoint failed");
    }
}

/// A minimal HTTP/1.0 request to a local admin endpoint, for the CLI.
pub async fn request(
    addr: std::net::SocketAddr,
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
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_owned()))
}
