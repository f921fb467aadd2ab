//! `referral.v1.Overlap`: the blind overlap check through the broker
//! (PROTOCOL.md 13.8). Thin handlers: identify, authorize, validate the
//! form, the route and the agency's signature, then hand the change to the
//! committer, whose ledger ([`crate::ledger::overlap`]) decides every rule
//! that depends on stored state. Reads go through [`Durable`]: a session,
//! statement or chunk is shown only once its audit entry is durable.
//!
//! The broker never holds anything it could recompute an identifier from:
//! chunks are sealed to the peer agency, and are deleted when both sides
//! have finished.

use std::sync::Arc;

use referral_proto::ids::{AgencyId, MessageId, Principal};
use referral_proto::overlap::{Chunk, Kind, SignedStatement, Step};
use referral_proto::pb;
use referral_proto::pb::overlap_server::Overlap;
use referral_proto::seal::VerifyError;
use referral_proto::time::Timestamp;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::authz::{self, Rpc};
use crate::commit::{OverlapAnswer, OverlapCommand};
use crate::error::BrokerError;
use crate::ledger::overlap::peer_of;
use crate::refusals::{self, Evidence};
use crate::state::BrokerState;
use crate::store::records::{OverlapRecord, OverlapState};
use crate::store::tables::Durable;

/// Most chunks one Receive returns (each at most 64 KiB sealed).
pub const CHUNKS_PER_RECEIVE: usize = 4;
/// Most sessions one Sessions call lists.
pub const MAX_SESSIONS_LISTED: usize = 100;

#[derive(Debug, Clone)]
pub struct OverlapService {
    state: Arc<BrokerState>,
}

fn durable(state: &BrokerState) -> Durable<'_> {
    Durable::new(&*state.store, state.hub.tree.borrow().0)
}

fn decode_statement(bytes: &[u8]) -> Option<pb::SignedOverlapStatement> {
    prost::Message::decode(bytes).ok()
}

/// The broker's view of a session, as the wire shows it.
pub fn session_view(id: &MessageId, rec: &OverlapRecord) -> pb::OverlapSession {
    let st = |p: &Option<(Vec<u8>, u64)>| p.as_ref().and_then(|(b, _)| decode_statement(b));
    pb::OverlapSession {
        session_id: id.as_bytes().to_vec(),
        initiator: rec.initiator.clone(),
        responder: rec.responder.clone(),
        state: match rec.state {
            OverlapState::Proposed => pb::OverlapState::Proposed,
            OverlapState::Accepted => pb::OverlapState::Accepted,
            OverlapState::Finished => pb::OverlapState::Finished,
            OverlapState::Expired { .. } => pb::OverlapState::Expired,
        } as i32,
        proposal: decode_statement(&rec.proposal.0),
        acceptance: st(&rec.acceptance),
        initiator_finish: st(&rec.initiator_finish),
        responder_finish: st(&rec.responder_finish),
        proposed_at_ms: rec.proposed_at_ms,
        accepted_at_ms: rec.accepted_at_ms,
    }
}

fn verify_error(e: VerifyError) -> BrokerError {
    match e {
        VerifyError::UnknownRecipient(r) => BrokerError::UnknownRecipient(r),
        VerifyError::SenderKeyNotValid { key_id, at } => BrokerError::KeyNotValid { what: "signer", key_id, at },
        other => BrokerError::OverlapSignature(other.to_string()),
    }
}

impl OverlapService {
    pub fn new(state: Arc<BrokerState>) -> Self {
        Self { state }
    }

    async fn rejected(&self, principal: &Principal, e: BrokerError) -> Status {
        refusals::refuse(&self.state, principal, e, Evidence::Unsigned).await
    }

    fn within_skew(&self, what: &'static str, signed_at: Timestamp, now: Timestamp) -> Result<(), BrokerError> {
        let c = &self.state.config.delivery;
        let skew = signed_at.0 - now.0;
        if skew > c.max_clock_skew_future_ms || -skew > c.max_clock_skew_past_ms {
            return Err(BrokerError::ClockSkew {
                what,
                skew_s: skew / 1000,
                max_future_s: c.max_clock_skew_future_ms / 1000,
                max_past_s: c.max_clock_skew_past_ms / 1000,
            });
        }
        Ok(())
    }

    /// Checks a statement's form, signer, route, signature and time.
    fn check_statement(
        &self,
        principal: &Principal,
        raw: pb::SignedOverlapStatement,
        step: Step,
    ) -> Result<SignedStatement, BrokerError> {
        let s = SignedStatement::try_from(raw).map_err(|e| BrokerError::MalformedOverlap(e.to_string()))?;
        let t = &s.statement;
        if t.step != step {
            return Err(BrokerError::MalformedOverlap(format!(
                "this call takes a {step:?} statement, not {:?}",
                t.step
            )));
        }
        if t.signer != principal.agency {
            return Err(BrokerError::SenderMismatch {
                principal_agency: principal.agency.clone(),
                sender: t.signer.clone(),
            });
        }
        let dir = self.state.directory.current();
        authz::check_pair(&t.signer, t.peer(), &dir.directory, &self.state.config.policy.allow_same_kind)?;
        let now = self.state.clock.now();
        s.verify(&dir.directory, now).map_err(verify_error)?;
        self.within_skew("overlap statement signed_at", t.signed_at, now)?;
        Ok(s)
    }

    async fn statement_call(
        &self,
        req: Request<pb::SignedOverlapStatement>,
        rpc: Rpc,
        step: Step,
    ) -> Result<Response<pb::OverlapSession>, Status> {
        let identity = self.state.authorize(&req, rpc)?;
        let p = identity.principal;
        let raw = req.into_inner();
        let session = raw.statement.as_ref().and_then(|s| MessageId::from_bytes(&s.session_id).ok());
        let span =
            tracing::info_span!("overlap", rpc = rpc.name(), principal = %p, session = ?session.map(|s| s.to_string()));
        async {
            // Rate and in-flight limits of a submit: each call costs a signature check.
            let _permit = self.state.limiter.submit(&p.uri())?;
            let s = match self.check_statement(&p, raw, step) {
                Ok(s) => s,
                Err(e) => return Err(self.rejected(&p, e).await),
            };
            let id = s.statement.session;
            let limits = self.state.config.overlap;
            let command = match step {
                Step::Propose => OverlapCommand::Propose(s, limits),
                Step::Accept => OverlapCommand::Accept(s, limits),
                Step::Finish => OverlapCommand::Finish(s),
            };
            match self.state.committer.overlap(command, p.uri()).await? {
                OverlapAnswer::Session(rec) => {
                    tracing::info!("overlap statement recorded");
                    Ok(Response::new(session_view(&id, &rec)))
                }
                OverlapAnswer::Relayed(_) => Err(BrokerError::StorageCorrupt.into()),
            }
        }
        .instrument(span)
        .await
    }

    /// The durable session `id`, if the caller's agency takes part; and the peer.
    fn party_session(&self, agency: &AgencyId, id: MessageId) -> Result<(OverlapRecord, AgencyId), BrokerError> {
        let rec = durable(&self.state).overlap(&id)?.ok_or(BrokerError::UnknownOverlap(id))?;
        let peer = peer_of(&rec, agency)
            .ok_or_else(|| BrokerError::OverlapNotParty { session: id, agency: agency.clone() })?;
        Ok((rec, peer))
    }
}

#[tonic::async_trait]
impl Overlap for OverlapService {
    async fn propose(&self, req: Request<pb::SignedOverlapStatement>) -> Result<Response<pb::OverlapSession>, Status> {
        self.statement_call(req, Rpc::OverlapPropose, Step::Propose).await
    }

    async fn accept(&self, req: Request<pb::SignedOverlapStatement>) -> Result<Response<pb::OverlapSession>, Status> {
        self.statement_call(req, Rpc::OverlapAccept, Step::Accept).await
    }

    async fn finish(&self, req: Request<pb::SignedOverlapStatement>) -> Result<Response<pb::OverlapSession>, Status> {
        self.statement_call(req, Rpc::OverlapFinish, Step::Finish).await
    }

    async fn send(&self, req: Request<pb::OverlapChunk>) -> Result<Response<pb::OverlapSendResponse>, Status> {
        let identity = self.state.authorize(&req, Rpc::OverlapSend)?;
        let p = identity.principal;
        let span = tracing::info_span!("overlap_send", principal = %p);
        async {
            let _permit = self.state.limiter.submit(&p.uri())?;
            let checked = (|| {
                let chunk =
                    Chunk::try_from(req.into_inner()).map_err(|e| BrokerError::MalformedOverlap(e.to_string()))?;
                let h = &chunk.header;
                if h.sender != p.agency {
                    return Err(BrokerError::SenderMismatch {
                        principal_agency: p.agency.clone(),
                        sender: h.sender.clone(),
                    });
                }
                let dir = self.state.directory.current();
                authz::check_pair(&h.sender, &h.recipient, &dir.directory, &self.state.config.policy.allow_same_kind)?;
                let now = self.state.clock.now();
                chunk.verify(&dir.directory, now).map_err(verify_error)?;
                self.within_skew("overlap chunk created_at", h.created_at, now)?;
                Ok(chunk)
            })();
            let chunk = match checked {
                Ok(c) => c,
                Err(e) => return Err(self.rejected(&p, e).await),
            };
            match self.state.committer.overlap(OverlapCommand::Relay(Box::new(chunk)), p.uri()).await? {
                OverlapAnswer::Relayed(r) => {
                    Ok(Response::new(pb::OverlapSendResponse { duplicate: r.duplicate, log_index: r.log_index }))
                }
                OverlapAnswer::Session(_) => Err(BrokerError::StorageCorrupt.into()),
            }
        }
        .instrument(span)
        .await
    }

    async fn receive(
        &self,
        req: Request<pb::OverlapReceiveRequest>,
    ) -> Result<Response<pb::OverlapReceiveResponse>, Status> {
        let identity = self.state.authorize(&req, Rpc::OverlapReceive)?;
        let p = identity.principal;
        let r = req.into_inner();
        let id = MessageId::from_bytes(&r.session_id)
            .map_err(|e| BrokerError::MalformedOverlap(format!("session_id: {e}")))?;
        let kind = Kind::from_code(r.kind)
            .ok_or_else(|| BrokerError::MalformedOverlap(format!("kind {} is not set or answer", r.kind)))?;
        let (rec, _) = self.party_session(&p.agency, id)?;
        // The chunks the peer sent: the side that is not the caller's.
        let peer_side: u8 = if rec.initiator == p.agency.as_str() { 1 } else { 0 };
        let mut wanted: Vec<_> = rec
            .chunks
            .iter()
            .filter(|c| c.side == peer_side && c.kind == kind.code() && c.index >= r.from_index)
            .collect();
        wanted.sort_by_key(|c| c.index);
        let tables = durable(&self.state).tables();
        let mut chunks = Vec::new();
        // Contiguous from `from_index`, so a client can read in order.
        for (expected, c) in (r.from_index..).zip(wanted.into_iter().take(CHUNKS_PER_RECEIVE)) {
            if c.index != expected {
                break;
            }
            match tables.overlap_chunk(&id, c.side, c.kind, c.index).map_err(BrokerError::from)? {
                Some(chunk) => chunks.push(chunk),
                None => break,
            }
        }
        Ok(Response::new(pb::OverlapReceiveResponse { session: Some(session_view(&id, &rec)), chunks }))
    }

    async fn sessions(
        &self,
        req: Request<pb::OverlapSessionsRequest>,
    ) -> Result<Response<pb::OverlapSessionsResponse>, Status> {
        let identity = self.state.authorize(&req, Rpc::OverlapSessions)?;
        let agency = identity.principal.agency;
        let d = durable(&self.state);
        let ids = d.tables().overlaps_of(&agency, MAX_SESSIONS_LISTED).map_err(BrokerError::from)?;
        let mut sessions = Vec::new();
        for id in ids.into_iter().rev() {
            if let Some(rec) = d.overlap(&id).map_err(BrokerError::from)? {
                sessions.push(session_view(&id, &rec));
            }
        }
        Ok(Response::new(pb::OverlapSessionsResponse { sessions }))
    }
}
