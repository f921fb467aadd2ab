//! The blind overlap check's sessions as ledger transitions (PROTOCOL.md
//! 13.8): propose, accept, relay a sealed chunk, finish. The service has
//! checked each request's form, route and signature; here, on the single
//! writer, every rule that depends on stored state is decided: the pair's
//! daily limit, the size cap, the session's state, the order of chunks and
//! their sizes (which follow from the sizes both sides signed).

use referral_proto::Digest;
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::overlap::{
    Chunk, Kind, SignedStatement, Step as StatementStep, chunk_count, chunk_len, message_len,
};
use referral_proto::pb;
use referral_proto::pb::audit_entry::Event;

use super::{Failure, Step};
use crate::config::OverlapConfig;
use crate::error::BrokerError;
use crate::refusals::{Evidence, Refusal};
use crate::store::StoreError;
use crate::store::keys::DeadlineKind;
use crate::store::records::{OverlapRecord, OverlapState, RelayedChunk};

/// The answer to a relayed chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayOutcome {
    pub duplicate: bool,
    pub log_index: u64,
}

/// UTC days since the epoch.
fn day(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

fn statement_digest(s: &SignedStatement) -> Digest {
    let mut bytes = s.statement.signing_input();
    bytes.extend_from_slice(&s.signature);
    Digest::of(&bytes)
}

fn encode(s: &SignedStatement) -> Vec<u8> {
    prost::Message::encode_to_vec(&pb::SignedOverlapStatement::from(s))
}

impl Step<'_> {
    fn overlap(&self, id: &MessageId) -> Result<Option<OverlapRecord>, StoreError> {
        match self.overlaps.get(id) {
            Some(r) => Ok(Some(r.clone())),
            None => self.tables.overlap(id),
        }
    }

    fn refused(principal: &str, e: BrokerError, evidence: Evidence) -> Failure {
        Failure::Refused(Box::new(Refusal::new(principal, e, evidence)))
    }

    /// Records a proposal whose form, route and signature the service checked.
    pub fn overlap_propose(
        &mut self,
        s: SignedStatement,
        principal: &str,
        limits: OverlapConfig,
    ) -> Result<OverlapRecord, BrokerError> {
        let r = self.try_propose(s, principal, limits);
        self.answer(r)
    }

    fn try_propose(
        &mut self,
        s: SignedStatement,
        principal: &str,
        limits: OverlapConfig,
    ) -> Result<OverlapRecord, Failure> {
        let t = &s.statement;
        let id = t.session;
        let signed = Evidence::Signed { message_id: id, digest: statement_digest(&s) };
        let encoded = encode(&s);
        if let Some(rec) = self.overlap(&id)? {
            // A retry of the same proposal is answered as the first time.
            if rec.proposal.0 == encoded {
                return Ok(rec);
            }
            return Err(Self::refused(principal, BrokerError::OverlapExists(id), signed));
        }
        if let Err(e) = self.key_valid_now("signer", &t.signer, &t.signer_key_id) {
            return Err(Self::refused(principal, e, signed));
        }
        if t.set_size > limits.max_set_size {
            let e = BrokerError::OverlapSetTooLarge { size: t.set_size, max: limits.max_set_size };
            return Err(Self::refused(principal, e, signed));
        }
        let today = day(self.now.0);
        let key = crate::store::keys::overlap::pair_day(today, &t.initiator, &t.responder);
        let started = match self.overlap_days.get(&key) {
            Some(n) => *n,
            None => self.tables.overlap_pair_day(today, &t.initiator, &t.responder)?,
        };
        if started >= u64::from(limits.sessions_per_pair_per_day) {
            let e = BrokerError::OverlapDailyLimit {
                a: t.initiator.clone(),
                b: t.responder.clone(),
                limit: limits.sessions_per_pair_per_day,
            };
            return Err(Self::refused(principal, e, signed));
        }
        self.overlap_days.insert(key, started + 1);
        self.writes.overlap_pair_day(today, &t.initiator, &t.responder, started + 1);
        let log_index = self.log(Event::OverlapProposed(pb::OverlapProposed {
            proposal: Some(pb::SignedOverlapStatement::from(&s)),
            principal: principal.to_owned(),
        }));
        let rec = OverlapRecord {
            initiator: t.initiator.to_string(),
            responder: t.responder.to_string(),
            state: OverlapState::Proposed,
            initiator_size: t.set_size,
            responder_size: 0,
            proposed_at_ms: self.now.0,
            accepted_at_ms: 0,
            proposal: (encoded, log_index),
            acceptance: None,
            initiator_finish: None,
            responder_finish: None,
            chunks: Vec::new(),
        };
        self.writes.overlap_of(&t.initiator, &id);
        self.writes.overlap_of(&t.responder, &id);
        let timeout_ms = i64::try_from(limits.session_timeout.as_millis()).unwrap_or(i64::MAX);
        self.set_deadline(self.now.0.saturating_add(timeout_ms), DeadlineKind::OverlapExpire, id);
        self.overlaps.insert(id, rec.clone());
        self.effects.push(super::Effect::Count(crate::metrics::OVERLAP_SESSIONS));
        Ok(rec)
    }

    /// Records an acceptance whose form and signature the service checked.
    pub fn overlap_accept(
        &mut self,
        s: SignedStatement,
        principal: &str,
        limits: OverlapConfig,
    ) -> Result<OverlapRecord, BrokerError> {
        let r = self.try_accept(s, principal, limits);
        self.answer(r)
    }

    fn try_accept(
        &mut self,
        s: SignedStatement,
        principal: &str,
        limits: OverlapConfig,
    ) -> Result<OverlapRecord, Failure> {
        let t = &s.statement;
        let id = t.session;
        let signed = Evidence::Signed { message_id: id, digest: statement_digest(&s) };
        let encoded = encode(&s);
        let Some(mut rec) = self.overlap(&id)? else {
            return Err(Self::refused(principal, BrokerError::UnknownOverlap(id), signed));
        };
        if rec.initiator != t.initiator.as_str() || rec.responder != t.responder.as_str() {
            let e = BrokerError::OverlapNotParty { session: id, agency: t.signer.clone() };
            return Err(Self::refused(principal, e, signed));
        }
        if let Some((stored, _)) = &rec.acceptance {
            if *stored == encoded {
                return Ok(rec);
            }
            let e = BrokerError::OverlapOutOfOrder { session: id, what: "the session was already accepted".into() };
            return Err(Self::refused(principal, e, signed));
        }
        if let Some(e) = expired(&id, &rec) {
            return Err(Self::refused(principal, e, signed));
        }
        if let Err(e) = self.key_valid_now("signer", &t.signer, &t.signer_key_id) {
            return Err(Self::refused(principal, e, signed));
        }
        if t.set_size > limits.max_set_size {
            let e = BrokerError::OverlapSetTooLarge { size: t.set_size, max: limits.max_set_size };
            return Err(Self::refused(principal, e, signed));
        }
        let log_index = self.log(Event::OverlapAccepted(pb::OverlapAccepted {
            acceptance: Some(pb::SignedOverlapStatement::from(&s)),
            principal: principal.to_owned(),
        }));
        rec.state = OverlapState::Accepted;
        rec.responder_size = t.set_size;
        rec.accepted_at_ms = self.now.0;
        rec.acceptance = Some((encoded, log_index));
        self.overlaps.insert(id, rec.clone());
        Ok(rec)
    }

    /// Relays a chunk whose form and signature the service checked: stored
    /// until the session finishes, recorded in the log by its digest.
    pub fn overlap_relay(&mut self, chunk: &Chunk, principal: &str) -> Result<RelayOutcome, BrokerError> {
        let r = self.try_relay(chunk, principal);
        self.answer(r)
    }

    fn try_relay(&mut self, chunk: &Chunk, principal: &str) -> Result<RelayOutcome, Failure> {
        let h = &chunk.header;
        let id = h.session;
        let digest = chunk.digest();
        let signed = Evidence::Signed { message_id: id, digest };
        let refuse = |e: BrokerError| Self::refused(principal, e, signed);
        let Some(mut rec) = self.overlap(&id)? else { return Err(refuse(BrokerError::UnknownOverlap(id))) };
        let side: u8 = if rec.initiator == h.sender.as_str() && rec.responder == h.recipient.as_str() {
            0
        } else if rec.responder == h.sender.as_str() && rec.initiator == h.recipient.as_str() {
            1
        } else {
            return Err(refuse(BrokerError::OverlapNotParty { session: id, agency: h.sender.clone() }));
        };
        let kind = h.kind.code();
        if let Some(c) = rec.chunks.iter().find(|c| c.side == side && c.kind == kind && c.index == h.index) {
            if c.digest == digest.0 {
                return Ok(RelayOutcome { duplicate: true, log_index: c.log_index });
            }
            let what = format!("{} chunk {} was already relayed with other content", h.kind.as_str(), h.index);
            return Err(refuse(BrokerError::OverlapOutOfOrder { session: id, what }));
        }
        match rec.state {
            OverlapState::Expired { .. } => return Err(refuse(expired(&id, &rec).expect("expired"))),
            OverlapState::Proposed => return Err(refuse(BrokerError::OverlapNotAccepted(id))),
            OverlapState::Finished => {
                let what = "the session is finished".to_owned();
                return Err(refuse(BrokerError::OverlapOutOfOrder { session: id, what }));
            }
            OverlapState::Accepted => {}
        }
        let (own, peer) =
            if side == 0 { (rec.initiator_size, rec.responder_size) } else { (rec.responder_size, rec.initiator_size) };
        if h.kind == Kind::Answer {
            // An answer re-blinds the peer's whole set: it cannot come first.
            let peer_set = rec.chunks.iter().filter(|c| c.side != side && c.kind == Kind::Set.code()).count() as u32;
            if peer_set < chunk_count(message_len(Kind::Set, peer, own)) {
                let what = "an answer before the peer's whole set was relayed".to_owned();
                return Err(refuse(BrokerError::OverlapOutOfOrder { session: id, what }));
            }
        }
        let len = message_len(h.kind, own, peer);
        let count = chunk_count(len);
        let expected = chunk_len(len, h.index);
        if h.count != count || h.index >= count || chunk.plaintext_len() != expected {
            let what = format!(
                "{} chunk {} of {} carries {} bytes; the signed sizes ({own} and {peer} elements) make it chunk {} of {count} with {expected} bytes",
                h.kind.as_str(),
                h.index,
                h.count,
                chunk.plaintext_len(),
                h.index,
            );
            return Err(refuse(BrokerError::OverlapChunkMismatch { session: id, what }));
        }
        if let Err(e) = self.key_valid_now("sender", &h.sender, &h.sender_key_id) {
            return Err(refuse(e));
        }
        let log_index = self.log(Event::OverlapRelayed(pb::OverlapRelayed {
            header: Some(pb::OverlapChunkHeader::from(h)),
            payload_digest: chunk.payload_digest().0.to_vec(),
            signature: chunk.signature.to_vec(),
            payload_length: chunk.payload_len() as u32,
            principal: principal.to_owned(),
        }));
        let encoded = prost::Message::encode_to_vec(&pb::OverlapChunk::from(chunk));
        self.writes.overlap_chunk(&id, side, kind, h.index, encoded);
        rec.chunks.push(RelayedChunk { side, kind, index: h.index, count, digest: digest.0, log_index });
        self.overlaps.insert(id, rec);
        Ok(RelayOutcome { duplicate: false, log_index })
    }

    /// Records a side's signed transcript hash; once both have reported,
    /// the session is finished and its chunks are deleted.
    pub fn overlap_finish(&mut self, s: SignedStatement, principal: &str) -> Result<OverlapRecord, BrokerError> {
        let r = self.try_finish(s, principal);
        self.answer(r)
    }

    fn try_finish(&mut self, s: SignedStatement, principal: &str) -> Result<OverlapRecord, Failure> {
        let t = &s.statement;
        debug_assert_eq!(t.step, StatementStep::Finish);
        let id = t.session;
        let signed = Evidence::Signed { message_id: id, digest: statement_digest(&s) };
        let encoded = encode(&s);
        let Some(mut rec) = self.overlap(&id)? else {
            return Err(Self::refused(principal, BrokerError::UnknownOverlap(id), signed));
        };
        if rec.initiator != t.initiator.as_str() || rec.responder != t.responder.as_str() {
            let e = BrokerError::OverlapNotParty { session: id, agency: t.signer.clone() };
            return Err(Self::refused(principal, e, signed));
        }
        let initiator_side = t.signer.as_str() == rec.initiator;
        let slot = if initiator_side { &rec.initiator_finish } else { &rec.responder_finish };
        if let Some((stored, _)) = slot {
            if *stored == encoded {
                return Ok(rec);
            }
            let e = BrokerError::OverlapOutOfOrder { session: id, what: "this side has already finished".into() };
            return Err(Self::refused(principal, e, signed));
        }
        if let Some(e) = expired(&id, &rec) {
            return Err(Self::refused(principal, e, signed));
        }
        if rec.state == OverlapState::Proposed {
            return Err(Self::refused(principal, BrokerError::OverlapNotAccepted(id), signed));
        }
        if let Err(e) = self.key_valid_now("signer", &t.signer, &t.signer_key_id) {
            return Err(Self::refused(principal, e, signed));
        }
        let log_index = self.log(Event::OverlapFinished(pb::OverlapFinished {
            finish: Some(pb::SignedOverlapStatement::from(&s)),
            principal: principal.to_owned(),
        }));
        if initiator_side {
            rec.initiator_finish = Some((encoded, log_index));
        } else {
            rec.responder_finish = Some((encoded, log_index));
        }
        if rec.initiator_finish.is_some() && rec.responder_finish.is_some() {
            rec.state = OverlapState::Finished;
            for c in &rec.chunks {
                self.writes.delete_overlap_chunk(&id, c.side, c.kind, c.index);
            }
        }
        self.overlaps.insert(id, rec.clone());
        Ok(rec)
    }
}

impl Step<'_> {
    /// The session timeout passed: unless both sides finished, the session
    /// expires, its sealed chunks are deleted and the log records it.
    pub(super) fn overlap_expire(&mut self, id: MessageId, due_ms: i64) -> Result<(), StoreError> {
        let Some(mut rec) = self.overlap(&id)? else { return Ok(()) };
        if matches!(rec.state, OverlapState::Finished | OverlapState::Expired { .. }) {
            return Ok(());
        }
        let log_index = self.log(Event::OverlapExpired(pb::OverlapExpired {
            session_id: id.as_bytes().to_vec(),
            due_ms,
            chunks_deleted: rec.chunks.len() as u32,
        }));
        for c in &rec.chunks {
            self.writes.delete_overlap_chunk(&id, c.side, c.kind, c.index);
        }
        rec.state = OverlapState::Expired { log_index, at_ms: self.now.0 };
        self.overlaps.insert(id, rec);
        self.effects.push(super::Effect::Count(crate::metrics::OVERLAP_EXPIRED));
        Ok(())
    }
}

/// The refusal for a command on an expired session, if it is.
fn expired(id: &MessageId, rec: &OverlapRecord) -> Option<BrokerError> {
    match rec.state {
        OverlapState::Expired { at_ms, .. } => {
            Some(BrokerError::OverlapExpired { session: *id, at: referral_proto::time::Timestamp(at_ms) })
        }
        _ => None,
    }
}

/// The agency on the other side of `rec` from `agency`, if `agency` takes part.
pub fn peer_of(rec: &OverlapRecord, agency: &AgencyId) -> Option<AgencyId> {
    if rec.initiator == agency.as_str() {
        AgencyId::new(rec.responder.clone()).ok()
    } else if rec.responder == agency.as_str() {
        AgencyId::new(rec.initiator.clone()).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use referral_proto::notice::LegalBasisKind;
    use referral_proto::overlap::Statement;
    use referral_proto::test_vectors;
    use referral_proto::time::Timestamp;

    use super::*;
    use crate::audit::AuditLog;
    use crate::config::AckDeadlines;
    use crate::store::Store;
    use crate::store::memory::MemoryStore;
    use crate::store::tables::Tables;

    const DAY: i64 = 86_400_000;
    const LIMITS: OverlapConfig = OverlapConfig {
        sessions_per_pair_per_day: 2,
        max_set_size: 64,
        session_timeout: std::time::Duration::from_secs(3600),
    };

    fn timing() -> super::super::Timing {
        let d = AckDeadlines { immediate_ms: 1, urgent_ms: 1, routine_ms: 1 };
        super::super::Timing { ack_deadlines: d, unacked_retention_ms: 1, acked_retention_ms: 1 }
    }

    /// Proposals from the sender of the vectors, at `now`, `n` per batch, in
    /// `batches` batches; the reason codes of the answers.
    fn propose(now: Timestamp, per_batch: &[usize]) -> Vec<Result<(), &'static str>> {
        let v = test_vectors::build();
        let store = MemoryStore::default();
        let mut log = AuditLog::default();
        let counters = HashMap::new();
        let mut out = Vec::new();
        let mut seq = 0u8;
        for (b, n) in per_batch.iter().enumerate() {
            let at = Timestamp(now.0 + b as i64 * DAY / 2);
            let mut step = Step::new(Tables(&store), &log, &counters, &v.directory, timing(), at);
            for _ in 0..*n {
                seq += 1;
                let mut id = *v.message_id.as_bytes();
                id[15] = seq;
                let s = Statement {
                    step: StatementStep::Propose,
                    session: MessageId::from_bytes(&id).unwrap(),
                    initiator: v.sender.agency().clone(),
                    responder: v.recipient.agency().clone(),
                    signer: v.sender.agency().clone(),
                    signer_key_id: v.sender.key_id(),
                    signed_at: at,
                    set_size: 8,
                    legal_basis: Some(LegalBasisKind::Osl10_18c),
                    legal_citation: "OSL 10 kap. 18 c §".into(),
                    transcript_hash: None,
                }
                .sign(&v.sender);
                out.push(step.overlap_propose(s, "p", LIMITS).map(drop).map_err(|e| e.reason()));
            }
            let t = step.finish().unwrap();
            store.commit(&t.writes.into_batch()).unwrap();
            log = t.log;
        }
        out
    }

    #[test]
    fn the_daily_limit_counts_within_a_batch_across_batches_and_resets_each_utc_day() {
        // 2026-11-29T00:00:00Z plus a little: batches at +0 h, +12 h, +24 h, +36 h.
        let midnight = Timestamp(test_vectors::CREATED_AT.0 - test_vectors::CREATED_AT.0.rem_euclid(DAY) + 1);
        let r = propose(midnight, &[3, 1, 2, 1]);
        let limit = Err("overlap_daily_limit");
        assert_eq!(r, vec![Ok(()), Ok(()), limit, limit, Ok(()), Ok(()), limit]);
    }

    const HOUR: i64 = 3_600_000;

    /// Runs `f` as one committed batch at `at`.
    fn batch<T>(store: &MemoryStore, log: &mut AuditLog, at: Timestamp, f: impl FnOnce(&mut Step<'_>) -> T) -> T {
        let v = test_vectors::build();
        let counters = HashMap::new();
        let mut step = Step::new(Tables(store), log, &counters, &v.directory, timing(), at);
        let out = f(&mut step);
        let t = step.finish().unwrap();
        store.commit(&t.writes.into_batch()).unwrap();
        *log = t.log;
        out
    }

    fn statement(step: StatementStep, at: Timestamp) -> SignedStatement {
        let v = test_vectors::build();
        let (signer, size, basis) = match step {
            StatementStep::Accept => (&v.recipient, 2, Some(LegalBasisKind::Osl10_18c)),
            StatementStep::Propose => (&v.sender, 2, Some(LegalBasisKind::Osl10_18c)),
            StatementStep::Finish => (&v.sender, 0, None),
        };
        Statement {
            step,
            session: v.message_id,
            initiator: v.sender.agency().clone(),
            responder: v.recipient.agency().clone(),
            signer: signer.agency().clone(),
            signer_key_id: signer.key_id(),
            signed_at: at,
            set_size: size,
            legal_basis: basis,
            legal_citation: if basis.is_some() { "OSL 10 kap. 18 c §".into() } else { String::new() },
            transcript_hash: (step == StatementStep::Finish).then_some(Digest([3; 32])),
        }
        .sign(signer)
    }

    #[test]
    fn the_timeout_expires_an_unfinished_session_once_and_later_steps_are_refused() {
        let store = MemoryStore::default();
        let mut log = AuditLog::default();
        let t0 = test_vectors::CREATED_AT;
        let id = test_vectors::build().message_id;
        batch(&store, &mut log, t0, |s| {
            s.overlap_propose(statement(StatementStep::Propose, t0), "p", LIMITS).unwrap();
            s.overlap_accept(statement(StatementStep::Accept, t0), "s", LIMITS).unwrap();
        });
        // Not due yet: nothing happens.
        let early = Timestamp(t0.0 + HOUR - 1);
        assert!(Tables(&store).due_deadlines(early.0, 10).unwrap().is_empty());
        let due = Timestamp(t0.0 + HOUR);
        let deadlines = Tables(&store).due_deadlines(due.0, 10).unwrap();
        assert_eq!(deadlines.len(), 1);
        let size = log.size();
        batch(&store, &mut log, due, |s| {
            for d in deadlines {
                s.deadline(d).unwrap();
            }
        });
        assert_eq!(log.size(), size + 1, "one OverlapExpired entry");
        let rec = Tables(&store).overlap(&id).unwrap().unwrap();
        assert_eq!(rec.state, OverlapState::Expired { log_index: size, at_ms: due.0 });
        assert!(Tables(&store).due_deadlines(due.0 + HOUR, 10).unwrap().is_empty(), "the deadline is gone");
        // A finish after it: refused with the expiry's time.
        let later = Timestamp(due.0 + 5);
        let e = batch(&store, &mut log, later, |s| {
            s.overlap_finish(statement(StatementStep::Finish, later), "p").unwrap_err()
        });
        assert_eq!(e.reason(), "overlap_expired");
        assert!(e.to_string().contains(&format!("expired at {due}")), "{e}");
    }
}
