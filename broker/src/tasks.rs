//! Background tasks: the periodic tree head signer and the reloader of TLS
//! files and the directory (on SIGHUP and when the files change). Deadlines
//! are run by the committer ([`crate::commit`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use referral_proto::receipt::SignedTreeHead;

use crate::state::BrokerState;

/// Signs a tree head whenever the log has grown, at most once an interval,
/// and persists it.
pub async fn tree_heads(state: Arc<BrokerState>) {
    let mut tree = state.hub.tree.subscribe();
    let mut last_size = u64::MAX;
    loop {
        let (size, root) = *tree.borrow_and_update();
        if size != last_size {
            let head: SignedTreeHead = state.tree_heads.sign(size, root, state.clock.now());
            let bytes = prost::Message::encode_to_vec(&head.to_pb());
            // Stored durably before it is served: `broker status` and a
            // restarted broker show the head auditors were given.
            match state.committer.meta_durable(crate::store::keys::meta::TREE_HEAD, bytes).await {
                Ok(()) => {
                    state.latest_tree_head.store(Some(Arc::new(head)));
                    last_size = size;
                }
                Err(e) => tracing::warn!(error = %e, "storing the tree head failed; it is signed again next time"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(state.config.audit.tree_head_interval) => {}
            _ = state.shutdown.cancelled() => return,
        }
        tokio::select! {
            r = tree.changed() => if r.is_err() { return },
            _ = state.shutdown.cancelled() => return,
        }
    }
}

/// Reloads TLS material and the directory now; logs and keeps the old
/// ones on failure.
pub fn reload(state: &BrokerState) -> Result<(), String> {
    let mut problems = Vec::new();
    let before = state.directory.current();
    match state.tls.reload() {
        Ok(()) => tracing::info!("TLS certificates, key and CRL reloaded"),
        Err(e) => problems.push(format!("TLS reload failed, keeping the previous material: {e}")),
    }
    match state.directory.reload(state.clock.now()) {
        Ok(version) => {
            // Remembered so that a restart with an older file is refused too.
            state.committer.meta_nowait(crate::store::keys::meta::DIRECTORY_VERSION, version.to_be_bytes().to_vec());
        }
        Err(e) => problems.push(format!(
            "directory reload failed, keeping version {}: {e}",
            state.directory.current().directory.version
        )),
    }
    // Whatever was reloaded, judge every open connection by it: a revoked
    // certificate or a removed agency loses its connections now, not at
    // its next call.
    let ended = state.review_connections(&before.directory);
    if ended > 0 {
        tracing::info!(connections = ended, "connections ended after the reload");
    }
    for p in &problems {
        tracing::error!("{p}");
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

fn mtimes(state: &BrokerState) -> Vec<Option<SystemTime>> {
    let c = &state.config;
    [&c.tls.certificate, &c.tls.key, &c.tls.client_ca, &c.tls.crl, &c.federation.directory]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Reloads when a watched file changes (polled every reload interval) or,
/// with `sighup`, when the process gets SIGHUP.
pub async fn reloader(state: Arc<BrokerState>, sighup: bool) {
    let mut hup = if sighup {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
                None
            }
        }
    } else {
        None
    };
    let mut seen = mtimes(&state);
    let interval = state.config.tls.reload_interval.max(Duration::from_millis(100));
    loop {
        let signalled = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signalled => {
                tracing::info!("SIGHUP: reloading");
                let _ = reload(&state);
                seen = mtimes(&state);
            }
            _ = tokio::time::sleep(interval) => {
                let now = mtimes(&state);
                if now != seen {
                    tracing::info!("credential or directory files changed: reloading");
                    let _ = reload(&state);
                    seen = now;
                }
            }
            _ = state.shutdown.cancelled() => return,
        }
    }
}
