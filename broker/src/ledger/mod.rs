//! The message ledger: the whole lifecycle of a message (accepted, sent,
//! escalated, acknowledged or expired, purged) as pure transitions, in the
//! style of an I/O-free protocol core.
//!
//! A [`Step`] is one batch in the making. It reads the current state
//! through typed [`Tables`] (what the store holds before the batch) and
//! its own overlay (what earlier commands of the batch changed), and turns
//! each command into writes, [`Effect`]s and an answer. It owns no store,
//! no clock (the batch's time is given), no channel and no metrics: the
//! committer ([`crate::commit`]) makes the writes durable once for the
//! batch and only then publishes the effects and the answers. So the
//! lifecycle can be tested, and is (see `tests.rs`), command by command
//! against a model, on a store in memory.
//!
//! A failed read poisons the step: [`Step::finish`] then returns the
//! error, nothing of the batch is written, and every command that would
//! have written is answered with that error.

pub mod overlap;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use referral_proto::Digest;
use referral_proto::ack::SignedAck;
use referral_proto::directory::Directory;
use referral_proto::envelope::{Envelope, Urgency};
use referral_proto::ids::{AgencyId, KeyId, MessageId, Principal};
use referral_proto::pb;
use referral_proto::pb::audit_entry::Event;
use referral_proto::receipt::{ReceiptStatement, ReceiptStatus};
use referral_proto::time::Timestamp;

use crate::audit::AuditLog;
use crate::config::AckDeadlines;
use crate::error::BrokerError;
use crate::hub::HubEvent;
use crate::refusals::{Evidence, Refusal};
use crate::store::StoreError;
use crate::store::keys::{DeadlineKind, meta};
use crate::store::records::{FeedEntry, MessageRecord, MessageState};
use crate::store::tables::{Deadline, Tables, Writes};

/// Retention and deadline settings the ledger applies.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ack_deadlines: AckDeadlines,
    pub unacked_retention_ms: i64,
    pub acked_retention_ms: i64,
}

#[derive(Debug, Clone)]
pub struct SubmitOutcome {
    pub receipt: pb::Receipt,
    pub duplicate: bool,
}

#[derive(Debug, Clone)]
pub struct AckOutcome {
    pub receipt: pb::Receipt,
    pub already_acknowledged: bool,
}

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Recorded durably and put into the stream.
    Sent,
    /// The message was settled (acknowledged or expired) first: not sent.
    NotWaiting,
    /// The receiving connection's trust ended: nothing recorded or sent.
    Untrusted,
}

/// What to publish once the batch is durable, in order.
#[derive(Debug, Clone)]
pub enum Effect {
    /// A message waits in `agency`'s queue at this sequence.
    Message(AgencyId, u64),
    /// A receipt for `agency` (as sender) is in its feed at this cursor.
    Receipt(AgencyId, u64),
    /// A live event for `agency`'s subscribers.
    Event(AgencyId, HubEvent),
    /// A lifecycle counter of the metrics ([`crate::metrics`]) goes up by one.
    Count(&'static str),
    /// A refusal to trace and count (its audit entry, if signed, is in the batch).
    Refused(Refusal),
    /// A deadline was stored for this time (the committer wakes for it).
    DeadlineSet(i64),
}

/// The batch a [`Step`] built: what to write, the log after it, what to
/// publish. Adopted only if the writes commit.
#[derive(Debug)]
pub struct Transition {
    pub writes: Writes,
    pub log: AuditLog,
    pub counters: HashMap<Vec<u8>, u64>,
    pub effects: Vec<Effect>,
}

/// One batch in the making: the lifecycle's transitions over a read view.
pub struct Step<'a> {
    tables: Tables<'a>,
    now: Timestamp,
    timing: Timing,
    directory: &'a Directory,
    /// Counters as of the last durable batch (a cache; the store has them too).
    committed: &'a HashMap<Vec<u8>, u64>,
    log: AuditLog,
    logged_before: u64,
    writes: Writes,
    counters: HashMap<Vec<u8>, u64>,
    messages: HashMap<MessageId, MessageRecord>,
    receipts: HashMap<(MessageId, u8), pb::Receipt>,
    deliveries: HashSet<(MessageId, String)>,
    /// Overlap sessions changed by this batch, and its sessions per pair and day.
    overlaps: HashMap<MessageId, crate::store::records::OverlapRecord>,
    overlap_days: HashMap<Vec<u8>, u64>,
    effects: Vec<Effect>,
    poisoned: Option<StoreError>,
}

/// Why a command was not carried out.
enum Failure {
    /// The request is refused (recorded as a refusal).
    Refused(Box<Refusal>),
    /// Only this command fails (a record it needs is damaged).
    Broker(BrokerError),
    /// A read failed: the whole batch fails.
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl std::fmt::Debug for Step<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step").field("now", &self.now).field("writes", &self.writes.len()).finish_non_exhaustive()
    }
}

fn corrupt(id: &MessageId, what: &str) -> StoreError {
    StoreError::Corrupt(format!("message {id}: {what}"))
}

impl<'a> Step<'a> {
    /// Starts a batch at `now` over the state `tables` holds, whose audit
    /// log is `log` and whose cached counters are `committed`.
    pub fn new(
        tables: Tables<'a>,
        log: &AuditLog,
        committed: &'a HashMap<Vec<u8>, u64>,
        directory: &'a Directory,
        timing: Timing,
        now: Timestamp,
    ) -> Self {
        Self {
            tables,
            now,
            timing,
            directory,
            committed,
            log: log.clone(),
            logged_before: log.size(),
            writes: Writes::default(),
            counters: HashMap::new(),
            messages: HashMap::new(),
            receipts: HashMap::new(),
            deliveries: HashSet::new(),
            overlaps: HashMap::new(),
            overlap_days: HashMap::new(),
            effects: Vec::new(),
            poisoned: None,
        }
    }

    /// Writes so far (to tell whether a command wrote anything).
    pub fn writes(&self) -> usize {
        self.writes.len()
    }

    /// The batch: its writes, the log after it and what to publish; or the
    /// read error that poisoned it.
    pub fn finish(mut self) -> Result<Transition, StoreError> {
        if let Some(e) = self.poisoned {
            return Err(e);
        }
        for (id, rec) in &self.messages {
            self.writes.message(id, rec);
        }
        for (key, value) in &self.counters {
            self.writes.counter(key.clone(), *value);
        }
        for (id, rec) in &self.overlaps {
            self.writes.overlap(id, rec);
        }
        if self.log.size() != self.logged_before {
            self.log.record_size(&mut self.writes);
        }
        Ok(Transition { writes: self.writes, log: self.log, counters: self.counters, effects: self.effects })
    }

    /// A command's result for its caller: a refusal is recorded once (its
    /// entry in this batch, its trace and count as an effect), a read error
    /// poisons the batch.
    fn answer<T>(&mut self, r: Result<T, Failure>) -> Result<T, BrokerError> {
        match r {
            Ok(v) => Ok(v),
            Err(Failure::Refused(refusal)) => {
                let refusal = *refusal;
                if let Some(entry) = refusal.entry() {
                    self.log(Event::Rejected(entry));
                }
                let e = refusal.error.clone();
                self.effects.push(Effect::Refused(refusal));
                Err(e)
            }
            Err(Failure::Broker(e)) => Err(e),
            Err(Failure::Store(e)) => {
                let b = BrokerError::from(e.clone());
                self.poisoned.get_or_insert(e);
                Err(b)
            }
        }
    }

    /// Stores an envelope that passed the service's checks (or, with
    /// `refused`, one that failed them: then only a byte-identical repeat of
    /// an accepted envelope is answered, with its original receipt).
    pub fn submit(
        &mut self,
        envelope: &Envelope,
        encoded: Vec<u8>,
        principal: &str,
        refused: Option<Refusal>,
    ) -> Result<SubmitOutcome, BrokerError> {
        let r = self.try_submit(envelope, encoded, principal, refused);
        self.answer(r)
    }

    /// Settles a message with an ack whose signature the service verified.
    pub fn ack(&mut self, ack: SignedAck, principal: &Principal) -> Result<AckOutcome, BrokerError> {
        let r = self.try_ack(ack, principal);
        self.answer(r)
    }

    /// Records that `principal` is sent message `id`, if it still waits in
    /// this writer's view (which includes the batch being built); a
    /// redelivery to the same principal records nothing new.
    pub fn deliver(&mut self, id: MessageId, principal: &str) -> Result<DeliveryOutcome, BrokerError> {
        let r = self.try_deliver(id, principal);
        self.answer(r)
    }

    /// Carries out a deadline that is due (or removes an unreadable one).
    pub fn deadline(&mut self, due: Result<Deadline, Vec<u8>>) -> Result<(), BrokerError> {
        let r = match due {
            Ok(d) => self.try_deadline(d),
            Err(key) => {
                // Never leave an unreadable deadline to be retried forever.
                self.writes.clear_deadline_key(key);
                Ok(())
            }
        };
        self.answer(r)
    }

    /// Logs a refusal the service decided on a signed request.
    pub fn refuse(&mut self, refusal: Refusal) {
        let _ = self.answer::<()>(Err(Failure::Refused(Box::new(refusal))));
    }

    /// Logs the rejection summaries of a closed interval.
    pub fn summarise(&mut self, summaries: Vec<pb::RejectionSummary>) {
        for s in summaries {
            self.log(Event::RejectionSummary(s));
        }
    }

    /// Stores a meta value (tree heads, the directory version, the health probe).
    pub fn meta(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.meta(key, value);
    }

    // --- reads through the overlay ---

    fn message(&self, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        match self.messages.get(id) {
            Some(r) => Ok(Some(r.clone())),
            None => self.tables.message(id),
        }
    }

    fn receipt(&self, id: &MessageId, n: u8) -> Result<Option<pb::Receipt>, StoreError> {
        match self.receipts.get(&(*id, n)) {
            Some(r) => Ok(Some(r.clone())),
            None => self.tables.receipt(id, n),
        }
    }

    /// The receipt of `status`; a damaged record fails only this command.
    fn find_receipt(&self, id: &MessageId, rec: &MessageRecord, status: ReceiptStatus) -> Result<pb::Receipt, Failure> {
        for n in 0..rec.receipt_count {
            if let Some(r) = self.receipt(id, n)?
                && r.statement.as_ref().and_then(|s| ReceiptStatus::from_code(s.status)) == Some(status)
            {
                return Ok(r);
            }
        }
        Err(Failure::Broker(BrokerError::StorageCorrupt))
    }

    fn counter(&self, key: &[u8]) -> Result<u64, StoreError> {
        match self.counters.get(key).or_else(|| self.committed.get(key)) {
            Some(v) => Ok(*v),
            None => self.tables.counter(key),
        }
    }

    /// Adds `delta` to a meta counter; returns the new value.
    fn bump(&mut self, key: Vec<u8>, delta: i64) -> Result<u64, StoreError> {
        let next = self.counter(&key)?.saturating_add_signed(delta);
        self.counters.insert(key, next);
        Ok(next)
    }

    // --- writes ---

    fn log(&mut self, event: Event) -> u64 {
        self.log.append(&mut self.writes, self.now, event)
    }

    fn set_deadline(&mut self, due_ms: i64, kind: DeadlineKind, id: MessageId) {
        self.writes.set_deadline(Deadline { due_ms, kind, message_id: id });
        self.effects.push(Effect::DeadlineSet(due_ms));
    }

    /// Issues a receipt for the sender and puts it in the sender's feed.
    fn add_receipt(
        &mut self,
        id: &MessageId,
        rec: &mut MessageRecord,
        status: ReceiptStatus,
        detail: String,
        ack: Option<SignedAck>,
        log_index: u64,
    ) -> Result<pb::Receipt, StoreError> {
        let sender = AgencyId::new(rec.sender.clone()).map_err(|_| corrupt(id, "sender"))?;
        let statement = ReceiptStatement {
            message_id: *id,
            envelope_digest: Digest(rec.envelope_digest),
            status,
            at: self.now,
            sender: sender.clone(),
            recipient: AgencyId::new(rec.recipient.clone()).map_err(|_| corrupt(id, "recipient"))?,
            recipient_sequence: rec.sequence,
            log_index,
            detail,
        };
        // Stored unsigned; signed on the way out, off the single writer
        // (see referral_proto::receipt::sign_stored).
        let mut receipt = pb::Receipt::from(&statement.sign_placeholder(ack));
        receipt.broker_signature.clear();
        let n = rec.receipt_count;
        rec.receipt_count += 1;
        self.writes.receipt(id, n, &receipt);
        self.receipts.insert((*id, n), receipt.clone());
        let cursor = self.bump(meta::last_cursor(&sender), 1)?;
        self.writes.feed(&sender, cursor, &FeedEntry { message_id: *id.as_bytes(), receipt: n });
        self.effects.push(Effect::Receipt(sender, cursor));
        Ok(receipt)
    }

    /// The signing key `key_id` of `agency` must be valid at this batch's
    /// time, the time its audit entry records. The service checked it (and
    /// the signature) at receive time a moment earlier; this closes the gap
    /// in which the key could have expired, so that the auditor's rule
    /// (key valid at the logged time) holds exactly.
    fn key_valid_now(&self, what: &'static str, agency: &AgencyId, key_id: &KeyId) -> Result<(), BrokerError> {
        let valid = self.directory.agency(agency).and_then(|a| a.key(key_id)).is_some_and(|k| k.valid_at(self.now));
        if valid { Ok(()) } else { Err(BrokerError::KeyNotValid { what, key_id: *key_id, at: self.now }) }
    }

    // --- the transitions ---

    fn try_submit(
        &mut self,
        envelope: &Envelope,
        encoded: Vec<u8>,
        principal: &str,
        refused: Option<Refusal>,
    ) -> Result<SubmitOutcome, Failure> {
        let id = envelope.header.message_id;
        let digest = envelope.digest();
        let existing = self.message(&id)?;
        if let Some(rec) = &existing
            && rec.envelope_digest == digest.0
        {
            let receipt = self.find_receipt(&id, rec, ReceiptStatus::Accepted)?;
            return Ok(SubmitOutcome { receipt, duplicate: true });
        }
        let signed = Evidence::Signed { message_id: id, digest };
        if let Some(r) = refused {
            return Err(Failure::Refused(Box::new(r)));
        }
        if existing.is_some() {
            return Err(Failure::Refused(Box::new(Refusal::new(
                principal,
                BrokerError::DuplicateConflict(id),
                signed,
            ))));
        }
        let h = &envelope.header;
        if let Err(e) = self.key_valid_now("sender", &h.sender, &h.sender_key_id) {
            return Err(Failure::Refused(Box::new(Refusal::new(principal, e, signed))));
        }
        let seq = self.bump(meta::last_seq(&h.recipient), 1)?;
        let log_index = self.log(Event::Submitted(pb::Submitted {
            header: Some(pb::EnvelopeHeader::from(h)),
            payload_digest: envelope.payload_digest().0.to_vec(),
            signature: envelope.signature.to_vec(),
            envelope_digest: digest.0.to_vec(),
            recipient_sequence: seq,
            payload_length: envelope.payload_len() as u32,
            submitted_by: principal.to_owned(),
        }));
        let ack_deadline_ms = self.now.0 + self.timing.ack_deadlines.for_urgency(h.urgency);
        let expires_at_ms = self.now.0 + self.timing.unacked_retention_ms;
        let mut rec = MessageRecord {
            sender: h.sender.to_string(),
            recipient: h.recipient.to_string(),
            urgency: h.urgency.code(),
            created_at_ms: h.created_at.0,
            accepted_at_ms: self.now.0,
            envelope_digest: digest.0,
            payload_len: envelope.payload_len() as u32,
            sequence: seq,
            submit_log_index: log_index,
            ack_deadline_ms,
            expires_at_ms,
            state: MessageState::Pending,
            escalated: false,
            delivered: false,
            purge_at_ms: None,
            purged: false,
            receipt_count: 0,
        };
        self.writes.envelope(&id, encoded);
        self.writes.enqueue(&h.recipient, seq, &id);
        // One stored deadline per message at a time: the escalation now; the
        // expiry is stored when the escalation fires (it always comes later).
        self.set_deadline(ack_deadline_ms, DeadlineKind::Escalate, id);
        let receipt = self.add_receipt(&id, &mut rec, ReceiptStatus::Accepted, String::new(), None, log_index)?;
        self.bump(meta::pending(&h.recipient), 1)?;
        self.effects.push(Effect::Message(h.recipient.clone(), seq));
        self.messages.insert(id, rec);
        Ok(SubmitOutcome { receipt, duplicate: false })
    }

    fn try_ack(&mut self, ack: SignedAck, principal: &Principal) -> Result<AckOutcome, Failure> {
        let s = &ack.statement;
        let id = s.message_id;
        let uri = principal.uri();
        let refuse = |e: BrokerError| {
            let evidence = Evidence::Signed { message_id: id, digest: s.envelope_digest };
            Failure::Refused(Box::new(Refusal::new(uri.clone(), e, evidence)))
        };
        let Some(mut rec) = self.message(&id)? else {
            return Err(refuse(BrokerError::UnknownMessage(id)));
        };
        if rec.recipient != principal.agency.as_str() {
            return Err(refuse(BrokerError::AckForOtherAgency { message_id: id, agency: principal.agency.clone() }));
        }
        if rec.envelope_digest != s.envelope_digest.0 {
            return Err(refuse(BrokerError::AckDigestMismatch {
                message_id: id,
                acked: s.envelope_digest.to_hex(),
                stored: hex::encode(rec.envelope_digest),
            }));
        }
        match rec.state {
            MessageState::Expired { .. } => Err(refuse(BrokerError::AckAfterExpiry(id))),
            MessageState::Acknowledged { .. } => {
                let receipt = self.find_receipt(&id, &rec, ReceiptStatus::Acknowledged)?;
                Ok(AckOutcome { receipt, already_acknowledged: true })
            }
            MessageState::Pending => {
                // Signed after the message was accepted, with a key valid now
                // (the broker's receive time, judged again here at the
                // entry's logged time, which the auditor checks).
                if s.acknowledged_at.0 < rec.accepted_at_ms {
                    return Err(refuse(BrokerError::AckBeforeSubmission {
                        message_id: id,
                        acknowledged_at: s.acknowledged_at,
                        accepted_at: Timestamp(rec.accepted_at_ms),
                    }));
                }
                if let Err(e) = self.key_valid_now("ack", &s.acker_agency, &s.signer_key_id) {
                    return Err(refuse(e));
                }
                let recipient = principal.agency.clone();
                // The sealed note goes only to the sender, in the receipt
                // (purged with the payload); the permanent log and the
                // recipient's own subscribers get the ack with its signed
                // digest but without the note (PROTOCOL.md 7.4).
                let pb_ack = pb::SignedAck::from(&ack.without_note());
                let log_index = self.log(Event::Acknowledged(pb::Acknowledged {
                    ack: Some(pb_ack.clone()),
                    recipient_sequence: rec.sequence,
                    recipient: rec.recipient.clone(),
                    principal: uri.clone(),
                }));
                rec.state = MessageState::Acknowledged { at_ms: self.now.0 };
                self.bump(meta::pending(&recipient), -1)?;
                self.effects.push(Effect::Count(crate::metrics::ACKS));
                let purge_at = self.now.0 + self.timing.acked_retention_ms;
                rec.purge_at_ms = Some(purge_at);
                self.writes.dequeue(&recipient, rec.sequence);
                self.writes.clear_deadline(pending_deadline(&id, &rec));
                self.set_deadline(purge_at, DeadlineKind::Purge, id);
                let receipt =
                    self.add_receipt(&id, &mut rec, ReceiptStatus::Acknowledged, uri.clone(), Some(ack), log_index)?;
                self.effects.push(Effect::Event(
                    recipient,
                    HubEvent::Settled { message_id: *id.as_bytes(), sequence: rec.sequence, ack: pb_ack },
                ));
                self.messages.insert(id, rec);
                Ok(AckOutcome { receipt, already_acknowledged: false })
            }
        }
    }

    fn try_deliver(&mut self, id: MessageId, principal: &str) -> Result<DeliveryOutcome, Failure> {
        let Some(mut rec) = self.message(&id)? else {
            return Ok(DeliveryOutcome::NotWaiting);
        };
        if rec.state != MessageState::Pending {
            return Ok(DeliveryOutcome::NotWaiting);
        }
        let key = (id, principal.to_owned());
        if self.deliveries.contains(&key) || self.tables.delivered_to(&id, principal)? {
            return Ok(DeliveryOutcome::Sent);
        }
        self.deliveries.insert(key);
        self.effects.push(Effect::Count(crate::metrics::DELIVERIES));
        self.writes.delivery(&id, principal);
        let log_index = self.log(Event::Delivered(pb::Delivered {
            message_id: id.as_bytes().to_vec(),
            recipient_sequence: rec.sequence,
            recipient: rec.recipient.clone(),
            principal: principal.to_owned(),
        }));
        // Only the first delivery changes the record (its DELIVERED receipt);
        // a later one to another principal leaves it as stored.
        if !rec.delivered {
            rec.delivered = true;
            self.add_receipt(&id, &mut rec, ReceiptStatus::Delivered, principal.to_owned(), None, log_index)?;
            self.messages.insert(id, rec);
        }
        Ok(DeliveryOutcome::Sent)
    }

    fn try_deadline(&mut self, d: Deadline) -> Result<(), Failure> {
        self.writes.clear_deadline(d);
        if d.kind == DeadlineKind::OverlapExpire {
            return self.overlap_expire(d.message_id, d.due_ms).map_err(Failure::from);
        }
        let id = d.message_id;
        let Some(mut rec) = self.message(&id)? else {
            return Ok(());
        };
        let recipient =
            AgencyId::new(rec.recipient.clone()).map_err(|_| Failure::Broker(BrokerError::StorageCorrupt))?;
        match d.kind {
            DeadlineKind::Escalate if rec.state == MessageState::Pending && !rec.escalated => {
                self.escalate(&id, &mut rec, &recipient, d.due_ms)?;
            }
            DeadlineKind::Expire if rec.state == MessageState::Pending => {
                let log_index = self.log(Event::Expired(pb::Expired {
                    message_id: id.as_bytes().to_vec(),
                    recipient_sequence: rec.sequence,
                    recipient: rec.recipient.clone(),
                }));
                rec.state = MessageState::Expired { at_ms: self.now.0 };
                self.bump(meta::pending(&recipient), -1)?;
                self.effects.push(Effect::Count(crate::metrics::EXPIRIES));
                self.writes.dequeue(&recipient, rec.sequence);
                // Reached only after the escalation fired and stored this expiry.
                self.purge(&id, &mut rec)?;
                self.add_receipt(&id, &mut rec, ReceiptStatus::Expired, String::new(), None, log_index)?;
            }
            DeadlineKind::Purge => self.purge(&id, &mut rec)?,
            // Settled before the deadline came: nothing to do.
            _ => {}
        }
        self.messages.insert(id, rec);
        Ok(())
    }

    fn escalate(
        &mut self,
        id: &MessageId,
        rec: &mut MessageRecord,
        recipient: &AgencyId,
        due_ms: i64,
    ) -> Result<(), StoreError> {
        let contact = self.directory.agency(recipient).and_then(|a| a.escalation.as_ref()).map(|e| e.principal.clone());
        let contact_uri = contact.as_ref().map(Principal::uri).unwrap_or_default();
        let log_index = self.log(Event::Escalated(pb::Escalated {
            message_id: id.as_bytes().to_vec(),
            recipient_sequence: rec.sequence,
            recipient: rec.recipient.clone(),
            deadline_ms: due_ms,
            contact: contact_uri.clone(),
        }));
        rec.escalated = true;
        self.set_deadline(rec.expires_at_ms, DeadlineKind::Expire, *id);
        self.effects.push(Effect::Count(crate::metrics::ESCALATIONS));
        self.add_receipt(id, rec, ReceiptStatus::Escalated, contact_uri.clone(), None, log_index)?;
        let alert = pb::Escalation {
            message_id: id.as_bytes().to_vec(),
            sender: rec.sender.clone(),
            recipient: rec.recipient.clone(),
            urgency: Urgency::ALL.iter().find(|u| u.code() == rec.urgency).map_or(0, |u| u.to_pb() as i32),
            deadline_ms: due_ms,
            sequence: rec.sequence,
        };
        let contact_uri = (!contact_uri.is_empty()).then_some(contact_uri);
        self.effects.push(Effect::Event(
            recipient.clone(),
            HubEvent::Escalation { contact: contact_uri.clone(), alert: alert.clone() },
        ));
        if let Some(c) = contact.filter(|c| &c.agency != recipient) {
            self.effects.push(Effect::Event(c.agency.clone(), HubEvent::Escalation { contact: contact_uri, alert }));
        }
        Ok(())
    }

    fn purge(&mut self, id: &MessageId, rec: &mut MessageRecord) -> Result<(), StoreError> {
        if rec.purged {
            return Ok(());
        }
        rec.purged = true;
        self.effects.push(Effect::Count(crate::metrics::PURGES));
        self.writes.purge_envelope(id);
        self.purge_note(id, rec)?;
        self.log(Event::Purged(pb::Purged {
            message_id: id.as_bytes().to_vec(),
            envelope_digest: rec.envelope_digest.to_vec(),
        }));
        Ok(())
    }
}

impl Step<'_> {
    /// An acknowledgement's sealed note is kept as long as the payload and
    /// no longer: the ACKNOWLEDGED receipt is rewritten without it (the ack
    /// keeps its signed note digest, so it still verifies).
    fn purge_note(&mut self, id: &MessageId, rec: &MessageRecord) -> Result<(), StoreError> {
        if !matches!(rec.state, MessageState::Acknowledged { .. }) {
            return Ok(());
        }
        for n in 0..rec.receipt_count {
            let Some(mut r) = self.receipt(id, n)? else { continue };
            if r.ack.as_mut().and_then(|a| a.note.take()).is_some() {
                self.writes.receipt(id, n, &r);
                self.receipts.insert((*id, n), r);
            }
        }
        Ok(())
    }
}

/// The one deadline a waiting message has stored: its escalation, or its
/// expiry once escalated.
fn pending_deadline(id: &MessageId, rec: &MessageRecord) -> Deadline {
    if rec.escalated {
        Deadline { due_ms: rec.expires_at_ms, kind: DeadlineKind::Expire, message_id: *id }
    } else {
        Deadline { due_ms: rec.ack_deadline_ms, kind: DeadlineKind::Escalate, message_id: *id }
    }
}
