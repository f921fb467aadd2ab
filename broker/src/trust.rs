//! Continuous trust: every connection's standing, judged when it is made,
//! again after every reload of the CRL and the directory, and at the
//! instant its certificate expires.
//!
//! A principal that is no longer trusted (its certificate revoked or
//! expired, its agency gone from the directory) loses every connection at
//! once: each of its open streams ends with the reason (the request gate in
//! [`crate::service::gate`] writes it as the stream's status), every call
//! still arriving is refused with it, nothing more is delivered to it (the
//! subscriber loop checks before each delivery, and the committer refuses
//! to record a delivery for an ended connection), and after a short grace,
//! so that those statuses reach the client, the connection itself is closed
//! (see `PeerStream` in [`crate::tls`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use referral_proto::directory::Directory;
use referral_proto::ids::Role;
use referral_proto::time::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::error::BrokerError;
use crate::identity::Identity;

/// How long an ended connection stays open so that the statuses of its
/// streams and calls reach the client, before it is closed.
pub const CLOSE_GRACE: Duration = Duration::from_millis(250);

/// One connection's standing.
#[derive(Debug)]
pub struct Connection {
    pub identity: Identity,
    /// Cancelled when the connection is no longer trusted.
    ended: CancellationToken,
    /// Why; set once, before `ended` is cancelled.
    why: OnceLock<BrokerError>,
    /// Cancelled when the connection is gone (ends its expiry timer).
    gone: CancellationToken,
}

impl Connection {
    pub fn new(identity: Identity) -> Arc<Self> {
        Arc::new(Self {
            identity,
            ended: CancellationToken::new(),
            why: OnceLock::new(),
            gone: CancellationToken::new(),
        })
    }

    /// Ends the connection's trust for `why` (the first reason stays).
    pub fn end(&self, why: BrokerError) {
        if self.why.set(why).is_ok() {
            tracing::info!(principal = %self.identity.principal, reason = self.reason().reason(), "connection no longer trusted");
        }
        self.ended.cancel();
    }

    /// Ok while the connection is trusted; else why not. Cheap: one atomic load.
    pub fn check(&self) -> Result<(), BrokerError> {
        if self.ended.is_cancelled() { Err(self.reason()) } else { Ok(()) }
    }

    /// Resolves with the reason once the connection is no longer trusted.
    pub async fn ended(&self) -> BrokerError {
        self.ended.cancelled().await;
        self.reason()
    }

    /// A token cancelled when the connection is no longer trusted.
    pub fn ended_token(&self) -> CancellationToken {
        self.ended.clone()
    }

    fn reason(&self) -> BrokerError {
        // `why` is always set before `ended` is cancelled.
        self.why.get().cloned().unwrap_or(BrokerError::Revoked)
    }
}

/// Whether `identity`'s certificate is still good: not revoked (`revoked`
/// tells by serial) nor expired at `now` (wall-clock time, as the TLS
/// handshake judged it).
pub fn judge_certificate(
    identity: &Identity,
    revoked: impl Fn(&[u8]) -> bool,
    now: Timestamp,
) -> Result<(), BrokerError> {
    if revoked(&identity.serial) {
        return Err(BrokerError::Revoked);
    }
    if now.0 > identity.not_after.0 {
        return Err(BrokerError::CertificateExpired);
    }
    Ok(())
}

/// Whether `identity`'s agency is in `directory` (auditors belong to no
/// agency's directory entry).
pub fn judge_directory(identity: &Identity, directory: &Directory) -> Result<(), BrokerError> {
    let p = &identity.principal;
    if p.role != Role::Auditor && directory.agency(&p.agency).is_none() {
        return Err(BrokerError::AgencyNotInDirectory { agency: p.agency.clone(), action: "use the broker" });
    }
    Ok(())
}

/// Both judgements.
pub fn judge(
    identity: &Identity,
    revoked: impl Fn(&[u8]) -> bool,
    directory: &Directory,
    now: Timestamp,
) -> Result<(), BrokerError> {
    judge_certificate(identity, revoked, now)?;
    judge_directory(identity, directory)
}

/// Every live connection with a valid identity.
#[derive(Debug, Default)]
pub struct Registry {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Connection>>>,
}

/// Keeps a connection registered while alive; dropped with the connection.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
    conn: Arc<Connection>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.live.lock().expect("trust registry lock").remove(&self.id);
        self.conn.gone.cancel();
    }
}

impl Registry {
    /// Registers `conn` and arms its expiry timer: at the certificate's
    /// `not_after` (wall-clock time) the connection ends as expired.
    pub fn register(self: &Arc<Self>, conn: Arc<Connection>) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.live.lock().expect("trust registry lock").insert(id, conn.clone());
        let timer = conn.clone();
        tokio::spawn(async move {
            // Valid through not_after inclusive (as webpki judges it).
            let left = timer.identity.not_after.0 + 1 - certs::now().0;
            let wait = Duration::from_millis(u64::try_from(left).unwrap_or(0));
            tokio::select! {
                _ = tokio::time::sleep(wait) => timer.end(BrokerError::CertificateExpired),
                _ = timer.gone.cancelled() => {}
                _ = timer.ended.cancelled() => {}
            }
        });
        Registration { registry: self.clone(), id, conn }
    }

    /// Judges every live connection again (after a reload); ends those no
    /// longer trusted. Returns how many it ended.
    pub fn review(&self, judge: impl Fn(&Identity) -> Result<(), BrokerError>) -> usize {
        let live: Vec<Arc<Connection>> = self.live.lock().expect("trust registry lock").values().cloned().collect();
        let mut ended = 0;
        for c in live {
            if c.check().is_err() {
                continue;
            }
            if let Err(why) = judge(&c.identity) {
                c.end(why);
                ended += 1;
            }
        }
        ended
    }

    /// Live connections, for tests and metrics.
    pub fn len(&self) -> usize {
        self.live.lock().expect("trust registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live connections of the principal with this URI.
    pub fn count_of(&self, principal_uri: &str) -> usize {
        self.live
            .lock()
            .expect("trust registry lock")
            .values()
            .filter(|c| c.identity.principal.uri() == principal_uri)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use referral_proto::ids::{AgencyId, Principal, TrustDomain};

    fn identity(not_after: i64) -> Identity {
        let td = TrustDomain::new("igor.example.se").unwrap();
        Identity {
            principal: Principal::new(td, AgencyId::new("polisen-huddinge").unwrap(), Role::System, "a").unwrap(),
            serial: vec![1, 2, 3],
            not_after: Timestamp(not_after),
        }
    }

    #[tokio::test]
    async fn the_first_reason_wins_and_check_reports_it() {
        let c = Connection::new(identity(i64::MAX));
        assert!(c.check().is_ok());
        c.end(BrokerError::Revoked);
        c.end(BrokerError::CertificateExpired);
        assert!(matches!(c.check(), Err(BrokerError::Revoked)));
        assert!(matches!(c.ended().await, BrokerError::Revoked));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_ends_when_its_certificate_expires() {
        let registry = Arc::new(Registry::default());
        let c = Connection::new(identity(certs::now().0 + 5_000));
        let reg = registry.register(c.clone());
        assert_eq!(registry.len(), 1);
        assert!(matches!(c.ended().await, BrokerError::CertificateExpired));
        drop(reg);
        assert!(registry.is_empty());
    }

    #[tokio::test]
    async fn review_ends_only_the_connections_judged_untrusted() {
        let registry = Arc::new(Registry::default());
        let a = Connection::new(identity(i64::MAX));
        let mut other = identity(i64::MAX);
        other.serial = vec![9];
        let b = Connection::new(other);
        let _ra = registry.register(a.clone());
        let _rb = registry.register(b.clone());
        let ended = registry.review(|i| if i.serial == [9] { Err(BrokerError::Revoked) } else { Ok(()) });
        assert_eq!(ended, 1);
        assert!(a.check().is_ok());
        assert!(matches!(b.check(), Err(BrokerError::Revoked)));
    }
}
