//! What every RPC handler and background task shares.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use referral_proto::ids::TrustDomain;
use referral_proto::keys::SigningKey;
use referral_proto::receipt::SignedTreeHead;
use tokio_util::sync::CancellationToken;

use crate::audit::TreeHeadSigner;
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
    /// The newest tree head issued by the periodic signer.
    pub latest_tree_head: ArcSwapOption<SignedTreeHead>,
    pub trust_domain: TrustDomain,
    pub accept_stats: Arc<AcceptStats>,
    pub health: crate::health::Health,
    /// Unsigned refusals counted for the next rejection summaries.
    pub rejections: crate::refusals::RejectionCounter,
    pub shutdown: CancellationToken,
}

impl BrokerState {
    /// The caller's identity, from the connection its request came on.
    pub fn identify<T>(&self, req: &tonic::Request<T>) -> Result<Identity, BrokerError> {
        let info = req.extensions().get::<PeerInfo>().ok_or(BrokerError::NoClientCertificate)?;
        let identity = info.identity.clone()?;
        if self.tls.is_revoked(&identity.serial) {
            return Err(BrokerError::Revoked);
        }
        Ok(identity)
    }

    /// The caller's identity, if it may call `rpc`.
    pub fn authorize<T>(&self, req: &tonic::Request<T>, rpc: Rpc) -> Result<Identity, BrokerError> {
        let counted = |e: &BrokerError| crate::metrics::rejected(e.reason());
        let identity = self.identify(req).inspect_err(counted)?;
        let current = self.directory.current();
        authz::check(&identity.principal, rpc, &current.directory).inspect_err(counted)?;
        // A stale directory may list keys the federation has since withdrawn:
        // nothing is verified against it (PROTOCOL.md 9.4).
        if matches!(rpc, Rpc::Submit | Rpc::Ack)
            && let Err(referral_proto::directory::DirectoryError::Expired { version, valid_until, .. }) =
                current.directory.check_fresh(self.clock.now())
        {
            let e = BrokerError::DirectoryStale { version, valid_until };
            counted(&e);
            return Err(e);
        }
        Ok(identity)
    }
}
