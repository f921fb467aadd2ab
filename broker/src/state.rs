//! What every RPC handler and background task shares.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use referral_proto::directory::Directory;
use referral_proto::ids::TrustDomain;
use referral_proto::keys::SigningKey;
use referral_proto::receipt::SignedTreeHead;
use tokio_util::sync::CancellationToken;

use crate::audit::{ReceiptSigner, TreeHeadSigner};
use crate::authz::{self, Rpc};
use crate::clock::Clock;
use crate::commit::Committer;
use crate::config::Config;
use crate::directory::DirectoryState;
use crate::error::BrokerError;
use crate::hub::Hub;
use crate::identity::{Identity, PeerInfo};
use crate::limits::Limiter;
use crate::store::Store;
use crate::tls::{AcceptStats, TlsState};
use crate::trust::Connection;

#[derive(Debug)]
pub struct BrokerState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub committer: Committer,
    pub hub: Arc<Hub>,
    pub directory: Arc<DirectoryState>,
    pub tls: Arc<TlsState>,
    pub limiter: Limiter,
    pub clock: Arc<dyn Clock>,
    pub log_key: Arc<SigningKey>,
    pub tree_heads: TreeHeadSigner,
    /// Signs receipts as they are sent (once per receipt, not per copy).
    pub receipts: ReceiptSigner,
    /// The newest tree head issued by the periodic signer.
    pub latest_tree_head: ArcSwapOption<SignedTreeHead>,
    pub trust_domain: TrustDomain,
    pub accept_stats: Arc<AcceptStats>,
    pub health: crate::health::Health,
    /// Unsigned refusals counted for the next rejection summaries.
    pub rejections: Arc<crate::refusals::RejectionCounter>,
    /// Every live connection, judged again after each reload.
    pub connections: Arc<crate::trust::Registry>,
    pub shutdown: CancellationToken,
    /// Every task that holds this state (background tasks, streams): shutdown waits for them.
    pub tasks: tokio_util::task::TaskTracker,
}

impl BrokerState {
    /// Open Subscribe streams per agency of the current directory.
    pub fn live_subscribers(&self) -> std::collections::BTreeMap<String, u64> {
        let dir = self.directory.current();
        dir.directory.agencies.keys().map(|a| (a.to_string(), self.hub.live_subscribers(a))).collect()
    }

    /// The caller's identity, from the connection its request came on.
    pub fn identify<T>(&self, req: &tonic::Request<T>) -> Result<Identity, BrokerError> {
        let info = req.extensions().get::<PeerInfo>().ok_or(BrokerError::NoClientCertificate)?;
        let identity = info.identity.clone()?;
        if let Some(c) = &info.connection {
            c.check()?;
        }
        if self.tls.is_revoked(&identity.serial) {
            return Err(BrokerError::Revoked);
        }
        Ok(identity)
    }

    /// The standing of the connection `req` came on.
    pub fn connection<T>(&self, req: &tonic::Request<T>) -> Result<Arc<Connection>, BrokerError> {
        let info = req.extensions().get::<PeerInfo>().ok_or(BrokerError::NoClientCertificate)?;
        info.connection.clone().ok_or(BrokerError::NoClientCertificate)
    }

    /// Whether `identity` is still trusted by the current CRL and directory
    /// at the current (wall-clock) time. Cheap enough to call per delivery.
    pub fn judge(&self, identity: &Identity) -> Result<(), BrokerError> {
        crate::trust::judge(identity, |s| self.tls.is_revoked(s), &self.directory.current().directory, certs::now())
    }

    /// Whether `identity`'s certificate is still good (revocation, expiry).
    pub fn judge_certificate(&self, identity: &Identity) -> Result<(), BrokerError> {
        crate::trust::judge_certificate(identity, |s| self.tls.is_revoked(s), certs::now())
    }

    /// After a reload: ends every connection whose certificate the current
    /// CRL revokes or that has expired, and every connection whose agency
    /// was in `before` (the directory until the reload) but is no longer.
    /// A principal whose agency was never listed keeps its connection: it
    /// may still call `GetDirectory`, and every other call refuses it.
    pub fn review_connections(&self, before: &Directory) -> usize {
        let now = self.directory.current();
        self.connections.review(|i| {
            self.judge_certificate(i)?;
            match crate::trust::judge_directory(i, &now.directory) {
                Err(e) if crate::trust::judge_directory(i, before).is_ok() => Err(e),
                _ => Ok(()),
            }
        })
    }

    /// The caller's identity, if it may call `rpc`.
    pub fn authorize<T>(&self, req: &tonic::Request<T>, rpc: Rpc) -> Result<Identity, BrokerError> {
        let counted = |e: &BrokerError| crate::metrics::rejected(e.reason());
        let identity = self.identify(req).inspect_err(counted)?;
        let current = self.directory.current();
        authz::check(&identity.principal, rpc, &current.directory).inspect_err(counted)?;
        // A stale directory may list keys the federation has since withdrawn:
        // nothing is verified against it (PROTOCOL.md 9.4).
        if matches!(
            rpc,
            Rpc::Submit
                | Rpc::SubmitStream
                | Rpc::Ack
                | Rpc::OverlapPropose
                | Rpc::OverlapAccept
                | Rpc::OverlapSend
                | Rpc::OverlapFinish
        ) && let Err(referral_proto::directory::DirectoryError::Expired { version, valid_until, .. }) =
            current.directory.check_fresh(self.clock.now())
        {
            let e = BrokerError::DirectoryStale { version, valid_until };
            counted(&e);
            return Err(e);
        }
        Ok(identity)
    }
}
