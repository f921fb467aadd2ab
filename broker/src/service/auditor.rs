//! `referral.v1.Auditor`: signed tree heads, replay, inclusion and
//! consistency proofs, and the directory. Only the `auditor` role may call
//! it, and it serves metadata and digests only.

use std::sync::Arc;

use referral_proto::ids::MessageId;
use referral_proto::merkle::{consistency_proof, inclusion_proof};
use referral_proto::pb;
use referral_proto::pb::auditor_server::Auditor;
use tonic::{Request, Response, Status};

use super::streams::{BoundedStream, bounded};
use crate::audit::{StoreNodes, read_entries};
use crate::authz::Rpc;
use crate::error::BrokerError;
use crate::state::BrokerState;
use crate::store::tables::Tables;

const REPLAY_PAGE: usize = 512;

#[derive(Debug, Clone)]
pub struct AuditorService {
    state: Arc<BrokerState>,
}

impl AuditorService {
    pub fn new(state: Arc<BrokerState>) -> Self {
        Self { state }
    }

    fn size(&self) -> u64 {
        self.state.hub.tree.borrow().0
    }

    /// The latest periodically issued head while it is current (so every
    /// auditor asking between two appends gets the same signed head), a
    /// freshly signed one when the log has grown since.
    fn signed_head(&self) -> pb::SignedTreeHead {
        let (size, root) = *self.state.hub.tree.borrow();
        match self.state.latest_tree_head.load_full() {
            Some(head) if head.head.tree_size == size && head.head.root_hash == root => head.to_pb(),
            _ => self.state.tree_heads.sign(size, root, self.state.clock.now()).to_pb(),
        }
    }
}

fn out_of_range(msg: String) -> Status {
    BrokerError::OutOfRange(msg).into()
}

#[tonic::async_trait]
impl Auditor for AuditorService {
    async fn get_tree_head(
        &self,
        req: Request<pb::GetTreeHeadRequest>,
    ) -> Result<Response<pb::SignedTreeHead>, Status> {
        self.state.authorize(&req, Rpc::AuditTreeHead)?;
        Ok(Response::new(self.signed_head()))
    }

    type ReplayStream = BoundedStream<pb::LogEntry>;

    async fn replay(&self, req: Request<pb::ReplayRequest>) -> Result<Response<Self::ReplayStream>, Status> {
        let identity = self.state.authorize(&req, Rpc::AuditReplay)?;
        let conn = self.state.connection(&req)?;
        let r = req.into_inner();
        let size = self.size();
        let to = if r.to == 0 { size } else { r.to };
        if r.from > to || to > size {
            return Err(out_of_range(format!(
                "replay range [{}, {to}) is not within the log of {size} entries",
                r.from
            )));
        }
        let permit = self.state.limiter.stream(&identity.principal.uri())?;
        let (out, stream) = bounded(REPLAY_PAGE, self.state.config.delivery.subscriber_stall_timeout);
        let state = self.state.clone();
        self.state.tasks.spawn(async move {
            let _permit = permit;
            let mut next = r.from;
            while next < to {
                // A long replay ends once the auditor's trust does.
                if let Err(why) = conn.check() {
                    out.end(why.into());
                    return;
                }
                let page = match read_entries(&*state.store, next, to, REPLAY_PAGE) {
                    Ok(p) => p,
                    Err(e) => {
                        out.end(BrokerError::from(e).into());
                        return;
                    }
                };
                if page.is_empty() {
                    out.end(BrokerError::StorageCorrupt.into());
                    return;
                }
                for (index, entry) in page {
                    if index != next {
                        tracing::error!(index = next, "an audit entry is missing from the store");
                        out.end(BrokerError::StorageCorrupt.into());
                        return;
                    }
                    if out.send(pb::LogEntry { index, entry }).await.is_err() {
                        return;
                    }
                    next += 1;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn inclusion_proof(
        &self,
        req: Request<pb::InclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProofResponse>, Status> {
        self.state.authorize(&req, Rpc::AuditInclusionProof)?;
        let r = req.into_inner();
        let store = &*self.state.store;
        let index = match r.target {
            Some(pb::inclusion_proof_request::Target::Index(i)) => i,
            Some(pb::inclusion_proof_request::Target::MessageId(raw)) => {
                let id = MessageId::from_bytes(&raw).map_err(|e| BrokerError::InvalidRequest(e.to_string()))?;
                let rec =
                    Tables(store).message(&id).map_err(BrokerError::from)?.ok_or(BrokerError::UnknownMessage(id))?;
                rec.submit_log_index
            }
            None => return Err(BrokerError::Missing("target (index or message_id)").into()),
        };
        let (head, size) = if r.tree_size == 0 {
            let head = self.signed_head();
            let size = head.tree_size;
            (Some(head), size)
        } else {
            (None, r.tree_size)
        };
        if index >= size || size > self.size() {
            return Err(out_of_range(format!(
                "entry {index} is not in a tree of {size} entries (the log has {})",
                self.size()
            )));
        }
        let entry = Tables(store).audit_entry(index).map_err(BrokerError::from)?.ok_or(BrokerError::StorageCorrupt)?;
        let path = inclusion_proof(&StoreNodes(store), index, size).map_err(BrokerError::from)?;
        Ok(Response::new(pb::InclusionProofResponse {
            entry: Some(pb::LogEntry { index, entry }),
            tree_size: size,
            path: path.into_iter().map(|d| d.0.to_vec()).collect(),
            tree_head: head,
        }))
    }

    async fn consistency_proof(
        &self,
        req: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProofResponse>, Status> {
        self.state.authorize(&req, Rpc::AuditConsistencyProof)?;
        let r = req.into_inner();
        let size = self.size();
        if r.first > r.second || r.second > size {
            return Err(out_of_range(format!(
                "consistency from {} to {} is not within the log of {size} entries",
                r.first, r.second
            )));
        }
        let path = consistency_proof(&StoreNodes(&*self.state.store), r.first, r.second).map_err(BrokerError::from)?;
        Ok(Response::new(pb::ConsistencyProofResponse { path: path.into_iter().map(|d| d.0.to_vec()).collect() }))
    }

    async fn get_directory(
        &self,
        req: Request<pb::GetDirectoryRequest>,
    ) -> Result<Response<pb::SignedDirectory>, Status> {
        self.state.authorize(&req, Rpc::AuditDirectory)?;
        Ok(Response::new(self.state.directory.current().signed.to_pb()))
    }
}
