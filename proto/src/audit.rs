//! Audit log entries: the exact bytes the Merkle tree commits to, decoded
//! for people and tools, and [`LogChecker`], the auditor's replay check.
//!
//! Entries hold metadata and digests only. The checker is pure: feed it the
//! entries in order and it recomputes the Merkle root, checks every
//! sender's and acker's signature against the directory, checks that each
//! recipient's queue sequence has no holes, and that every event refers to a
//! message that was submitted, with the right digest.

use std::collections::{BTreeMap, HashMap};

use crate::Digest;
use crate::ack::SignedAck;
use crate::directory::Directory;
use crate::envelope::{EnvelopeHeader, envelope_digest, signing_input};
use crate::ids::{AgencyId, MessageId};
use crate::merkle::{Frontier, leaf_hash};
use crate::pb;
use crate::pb::audit_entry::Event;
use crate::time::Timestamp;

/// What an entry records, for counting and display.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Submitted,
    Rejected,
    Delivered,
    Acknowledged,
    Escalated,
    Expired,
    Purged,
    RejectionSummary,
    OverlapProposed,
    OverlapAccepted,
    OverlapRelayed,
    OverlapFinished,
    OverlapExpired,
}

impl EventKind {
    pub const ALL: [EventKind; 13] = [
        EventKind::Submitted,
        EventKind::Rejected,
        EventKind::Delivered,
        EventKind::Acknowledged,
        EventKind::Escalated,
        EventKind::Expired,
        EventKind::Purged,
        EventKind::RejectionSummary,
        EventKind::OverlapProposed,
        EventKind::OverlapAccepted,
        EventKind::OverlapRelayed,
        EventKind::OverlapFinished,
        EventKind::OverlapExpired,
    ];

    pub fn of(event: &Event) -> Self {
        match event {
            Event::Submitted(_) => EventKind::Submitted,
            Event::Rejected(_) => EventKind::Rejected,
            Event::Delivered(_) => EventKind::Delivered,
            Event::Acknowledged(_) => EventKind::Acknowledged,
            Event::Escalated(_) => EventKind::Escalated,
            Event::Expired(_) => EventKind::Expired,
            Event::Purged(_) => EventKind::Purged,
            Event::RejectionSummary(_) => EventKind::RejectionSummary,
            Event::OverlapProposed(_) => EventKind::OverlapProposed,
            Event::OverlapAccepted(_) => EventKind::OverlapAccepted,
            Event::OverlapRelayed(_) => EventKind::OverlapRelayed,
            Event::OverlapFinished(_) => EventKind::OverlapFinished,
            Event::OverlapExpired(_) => EventKind::OverlapExpired,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Submitted => "submitted",
            EventKind::Rejected => "rejected",
            EventKind::Delivered => "delivered",
            EventKind::Acknowledged => "acknowledged",
            EventKind::Escalated => "escalated",
            EventKind::Expired => "expired",
            EventKind::Purged => "purged",
            EventKind::RejectionSummary => "rejection_summary",
            EventKind::OverlapProposed => "overlap_proposed",
            EventKind::OverlapAccepted => "overlap_accepted",
            EventKind::OverlapRelayed => "overlap_relayed",
            EventKind::OverlapFinished => "overlap_finished",
            EventKind::OverlapExpired => "overlap_expired",
        }
    }
}

/// The format of `referral.v1.AuditEntry` this crate writes.
pub const AUDIT_ENTRY_FORMAT_VERSION: u32 = 1;

/// Entries per checkpoint block: the checker records the Merkle root of
/// every complete, aligned block of this many entries, so that a later run
/// can say which block of an earlier verified log changed.
pub const BLOCK_ENTRIES: u64 = 256;
const BLOCK_LEVEL: u32 = 8;

/// Encodes an entry once; these bytes are what the log stores and hashes.
pub fn encode_entry(entry: &pb::AuditEntry) -> Vec<u8> {
    prost::Message::encode_to_vec(entry)
}

/// Why entry bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("entry is not a valid protobuf referral.v1.AuditEntry")]
    Decode,
    #[error("entry format version {0} is not supported")]
    FormatVersion(u32),
    #[error("entry records no event")]
    NoEvent,
    #[error("entry says index {stated} but sits at index {actual}")]
    IndexMismatch { stated: u64, actual: u64 },
}

/// Decodes an entry and checks that it claims the position it sits at.
pub fn decode_entry(bytes: &[u8], index: u64) -> Result<pb::AuditEntry, EntryError> {
    let e: pb::AuditEntry = prost::Message::decode(bytes).map_err(|_| EntryError::Decode)?;
    if e.format_version != AUDIT_ENTRY_FORMAT_VERSION {
        return Err(EntryError::FormatVersion(e.format_version));
    }
    if e.event.is_none() {
        return Err(EntryError::NoEvent);
    }
    if e.index != index {
        return Err(EntryError::IndexMismatch { stated: e.index, actual: index });
    }
    Ok(e)
}

/// One thing wrong with the log, and where.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    /// The entry at fault, when one can be named.
    pub index: Option<u64>,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "entry {i}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, Clone)]
struct MessageInfo {
    digest: Digest,
    recipient: AgencyId,
    /// Broker time of the submission entry: no ack may be signed before it.
    accepted_at: Timestamp,
    acked: bool,
    ended: bool,
}

/// One overlap session as the log shows it: metadata only (PROTOCOL.md 13.8).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OverlapSummary {
    pub session: String,
    pub initiator: String,
    pub responder: String,
    /// Padded set sizes each side signed (0 until the responder accepts).
    pub initiator_size: u32,
    pub responder_size: u32,
    /// The legal basis each side stated, as `kind: citation`.
    pub initiator_legal_basis: String,
    pub responder_legal_basis: String,
    pub proposed_at: Timestamp,
    pub accepted_at: Option<Timestamp>,
    /// Chunks relayed, and their total sealed bytes.
    pub chunks: u64,
    pub sealed_bytes: u64,
    /// Transcript hashes each side reported (hex), when it has.
    pub initiator_transcript: Option<String>,
    pub responder_transcript: Option<String>,
    /// When the broker ended it unfinished (its session timeout).
    pub expired_at: Option<Timestamp>,
}

impl OverlapSummary {
    /// Both sides finished and reported the same transcript.
    pub fn completed(&self) -> bool {
        self.initiator_transcript.is_some() && self.initiator_transcript == self.responder_transcript
    }

    /// "completed", "expired" (the broker ended it unfinished) or "not completed".
    pub fn status(&self) -> &'static str {
        if self.completed() {
            "completed"
        } else if self.expired_at.is_some() {
            "expired"
        } else {
            "not completed"
        }
    }
}

fn basis_text(s: &crate::overlap::Statement) -> String {
    match s.legal_basis {
        Some(k) => format!("{}: {}", crate::overlap::basis_name(k), s.legal_citation),
        None => String::new(),
    }
}

fn statement(p: Option<pb::SignedOverlapStatement>, what: &str) -> Result<crate::overlap::SignedStatement, String> {
    crate::overlap::SignedStatement::try_from(p.ok_or_else(|| format!("{what} without its signed statement"))?)
        .map_err(|e| format!("{what}: {e}"))
}

/// Most failures kept in full; the rest are only counted.
const MAX_FAILURES: usize = 1000;

/// Replays entries in order and checks everything an auditor can check
/// without reading content.
#[derive(Debug)]
pub struct LogChecker<'d> {
    directory: &'d Directory,
    frontier: Frontier,
    messages: HashMap<MessageId, MessageInfo>,
    last_seq: HashMap<AgencyId, u64>,
    counts: BTreeMap<EventKind, u64>,
    pairs: BTreeMap<(AgencyId, AgencyId), u64>,
    rejections: BTreeMap<String, u64>,
    failures: Vec<Failure>,
    failure_count: u64,
    blocks: Vec<Digest>,
    checkpoint: Option<u64>,
    checkpoint_root: Option<Digest>,
    overlaps: BTreeMap<MessageId, OverlapSummary>,
}

/// What a replay found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogReport {
    pub tree_size: u64,
    #[serde(serialize_with = "hex_digest")]
    pub root: Digest,
    pub counts: BTreeMap<EventKind, u64>,
    /// Submissions per (sender, recipient).
    pub pairs: Vec<(String, String, u64)>,
    pub rejections: BTreeMap<String, u64>,
    pub failures: Vec<Failure>,
    pub failure_count: u64,
    /// Every overlap session, in session id (so time) order.
    pub overlaps: Vec<OverlapSummary>,
    /// Roots of each complete block of [`BLOCK_ENTRIES`] entries.
    #[serde(skip)]
    pub blocks: Vec<Digest>,
    /// The root at the checkpoint size, if one was asked for.
    #[serde(skip)]
    pub checkpoint_root: Option<Digest>,
}

fn hex_digest<S: serde::Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.to_hex())
}

impl<'d> LogChecker<'d> {
    /// A checker against `directory`; with `checkpoint`, it also records the
    /// root of the first `checkpoint` entries (a previously verified size).
    pub fn new(directory: &'d Directory, checkpoint: Option<u64>) -> Self {
        let mut c = Self {
            directory,
            frontier: Frontier::default(),
            messages: HashMap::new(),
            last_seq: HashMap::new(),
            counts: BTreeMap::new(),
            pairs: BTreeMap::new(),
            rejections: BTreeMap::new(),
            failures: Vec::new(),
            failure_count: 0,
            blocks: Vec::new(),
            checkpoint,
            checkpoint_root: None,
            overlaps: BTreeMap::new(),
        };
        if checkpoint == Some(0) {
            c.checkpoint_root = Some(crate::merkle::empty_root());
        }
        c
    }

    /// Entries checked so far.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Records a failure not tied to one entry (or tied to `index`).
    pub fn fail(&mut self, index: Option<u64>, message: impl Into<String>) {
        self.failure_count += 1;
        if self.failures.len() < MAX_FAILURES {
            self.failures.push(Failure { index, message: message.into() });
        }
    }

    /// Checks the entry at `index` (which must be the next one).
    pub fn push(&mut self, index: u64, bytes: &[u8]) {
        let decoded = decode_entry(bytes, index);
        let signatures = decoded.as_ref().ok().map(|e| verify_entry_signatures(self.directory, e));
        self.push_checked(index, leaf_hash(bytes), decoded, signatures);
    }

    /// Checks consecutive entries, verifying their signatures and hashing
    /// them on every core (the expensive, independent part), then running
    /// the in-order checks.
    pub fn push_batch(&mut self, entries: &[(u64, Vec<u8>)]) {
        let directory = self.directory;
        let work = |(index, bytes): &(u64, Vec<u8>)| {
            let decoded = decode_entry(bytes, *index);
            let signatures = decoded.as_ref().ok().map(|e| verify_entry_signatures(directory, e));
            (leaf_hash(bytes), decoded, signatures)
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(entries.len().max(1));
        let chunk = entries.len().div_ceil(threads).max(1);
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = entries
                .chunks(chunk)
                .map(|part| scope.spawn(move || part.iter().map(work).collect::<Vec<_>>()))
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("a verification thread panicked")).collect()
        });
        for ((index, _), (leaf, decoded, signatures)) in entries.iter().zip(results) {
            self.push_checked(*index, leaf, decoded, signatures);
        }
    }

    fn push_checked(
        &mut self,
        index: u64,
        leaf: Digest,
        decoded: Result<pb::AuditEntry, EntryError>,
        signatures: Option<Result<(), String>>,
    ) {
        if index != self.frontier.size() {
            self.fail(
                Some(index),
                format!("expected entry {} next; the log skips or repeats entries", self.frontier.size()),
            );
        }
        for node in self.frontier.append(leaf) {
            if node.level == BLOCK_LEVEL {
                self.blocks.push(node.hash);
            }
        }
        if Some(self.frontier.size()) == self.checkpoint {
            self.checkpoint_root = Some(self.frontier.root());
        }
        match decoded {
            Ok(entry) => {
                let event = entry.event.expect("decode_entry refuses entries without an event");
                *self.counts.entry(EventKind::of(&event)).or_default() += 1;
                let checked = match signatures {
                    Some(Err(m)) => Err(m),
                    _ => self.check_event(event, Timestamp(entry.logged_at_ms)),
                };
                if let Err(m) = checked {
                    self.fail(Some(index), m);
                }
            }
            Err(e) => self.fail(Some(index), e.to_string()),
        }
    }

    fn known(&self, raw_id: &[u8], what: &str) -> Result<(MessageId, &MessageInfo), String> {
        let id = MessageId::from_bytes(raw_id).map_err(|e| format!("{what}: {e}"))?;
        let info =
            self.messages.get(&id).ok_or_else(|| format!("{what} of message {id}, which was never submitted"))?;
        Ok((id, info))
    }

    fn check_event(&mut self, event: Event, logged_at: Timestamp) -> Result<(), String> {
        match event {
            Event::Submitted(s) => {
                let header = EnvelopeHeader::try_from(s.header.ok_or("submission without a header")?)
                    .map_err(|e| format!("submission header: {e}"))?;
                let id = header.message_id;
                let payload = Digest::from_slice(&s.payload_digest).ok_or("payload digest is not 32 bytes")?;
                // The signature was checked by verify_signatures.
                let digest = envelope_digest(&header, &payload, &s.signature);
                if s.envelope_digest != digest.0 {
                    return Err(format!("message {id}: the recorded envelope digest is not the envelope's"));
                }
                if self.messages.contains_key(&id) {
                    return Err(format!("message {id} is submitted twice"));
                }
                let last = self.last_seq.entry(header.recipient.clone()).or_default();
                let expected = *last + 1;
                *last = s.recipient_sequence.max(*last);
                if s.recipient_sequence != expected {
                    return Err(format!(
                        "message {id}: queue position {} of {} follows {} (a submission is missing or out of order)",
                        s.recipient_sequence,
                        header.recipient,
                        expected - 1
                    ));
                }
                *self.pairs.entry((header.sender.clone(), header.recipient.clone())).or_default() += 1;
                self.messages.insert(
                    id,
                    MessageInfo {
                        digest,
                        recipient: header.recipient,
                        accepted_at: logged_at,
                        acked: false,
                        ended: false,
                    },
                );
                Ok(())
            }
            Event::Rejected(r) => {
                *self.rejections.entry(r.reason).or_default() += 1;
                Ok(())
            }
            Event::RejectionSummary(r) => {
                if r.count == 0 || r.from_ms > r.to_ms || r.to_ms > logged_at.0 {
                    return Err(format!(
                        "rejection summary of {} {} refusals over [{}, {}) logged at {}",
                        r.count, r.reason, r.from_ms, r.to_ms, logged_at.0
                    ));
                }
                *self.rejections.entry(r.reason).or_default() += r.count;
                Ok(())
            }
            Event::Delivered(d) => {
                let (id, info) = self.known(&d.message_id, "delivery")?;
                if info.recipient.as_str() != d.recipient {
                    return Err(format!(
                        "delivery of message {id} to {}, but it was addressed to {}",
                        d.recipient, info.recipient
                    ));
                }
                Ok(())
            }
            Event::Acknowledged(a) => {
                let ack = SignedAck::try_from(a.ack.ok_or("acknowledgement without its signed ack")?)
                    .map_err(|e| format!("acknowledgement: {e}"))?;
                let id = ack.statement.message_id;
                // The ack's signature was checked by verify_signatures.
                let info = self
                    .messages
                    .get_mut(&id)
                    .ok_or_else(|| format!("acknowledgement of message {id}, which was never submitted"))?;
                if info.digest != ack.statement.envelope_digest {
                    return Err(format!("acknowledgement of message {id} refers to another envelope digest"));
                }
                if ack.statement.acker_agency != info.recipient {
                    return Err(format!(
                        "message {id} was acknowledged by {}, not its recipient {}",
                        ack.statement.acker_agency, info.recipient
                    ));
                }
                if info.acked || info.ended {
                    return Err(format!("message {id} is settled twice"));
                }
                if ack.statement.acknowledged_at < info.accepted_at {
                    return Err(format!(
                        "message {id} was acknowledged at {}, before the broker accepted it at {}",
                        ack.statement.acknowledged_at, info.accepted_at
                    ));
                }
                info.acked = true;
                Ok(())
            }
            Event::Escalated(e) => {
                let (id, info) = self.known(&e.message_id, "escalation")?;
                if info.acked {
                    return Err(format!("message {id} escalated after it was acknowledged"));
                }
                Ok(())
            }
            Event::Expired(e) => {
                let (id, _) = self.known(&e.message_id, "expiry")?;
                let info = self.messages.get_mut(&id).expect("known");
                if info.acked || info.ended {
                    return Err(format!("message {id} expired after it was settled"));
                }
                info.ended = true;
                Ok(())
            }
            Event::Purged(p) => {
                let (id, info) = self.known(&p.message_id, "purge")?;
                if p.envelope_digest != info.digest.0 {
                    return Err(format!("purge of message {id} names another envelope digest"));
                }
                Ok(())
            }
            Event::OverlapProposed(p) => {
                let s = statement(p.proposal, "overlap proposal")?.statement;
                if s.step != crate::overlap::Step::Propose {
                    return Err(format!("overlap session {}: the proposal entry holds another step", s.session));
                }
                if self.overlaps.contains_key(&s.session) {
                    return Err(format!("overlap session {} is proposed twice", s.session));
                }
                self.overlaps.insert(
                    s.session,
                    OverlapSummary {
                        session: s.session.to_string(),
                        initiator: s.initiator.to_string(),
                        responder: s.responder.to_string(),
                        initiator_size: s.set_size,
                        responder_size: 0,
                        initiator_legal_basis: basis_text(&s),
                        responder_legal_basis: String::new(),
                        proposed_at: logged_at,
                        accepted_at: None,
                        chunks: 0,
                        sealed_bytes: 0,
                        initiator_transcript: None,
                        responder_transcript: None,
                        expired_at: None,
                    },
                );
                Ok(())
            }
            Event::OverlapAccepted(a) => {
                let s = statement(a.acceptance, "overlap acceptance")?.statement;
                let o = self
                    .overlaps
                    .get_mut(&s.session)
                    .ok_or_else(|| format!("acceptance of overlap session {}, which was never proposed", s.session))?;
                if s.step != crate::overlap::Step::Accept
                    || o.initiator != s.initiator.as_str()
                    || o.responder != s.responder.as_str()
                {
                    return Err(format!("overlap session {}: the acceptance is not the responder's", s.session));
                }
                if o.accepted_at.is_some() {
                    return Err(format!("overlap session {} is accepted twice", s.session));
                }
                if o.expired_at.is_some() {
                    return Err(format!("overlap session {} is accepted after it expired", s.session));
                }
                o.responder_size = s.set_size;
                o.responder_legal_basis = basis_text(&s);
                o.accepted_at = Some(logged_at);
                Ok(())
            }
            Event::OverlapRelayed(r) => {
                let h = crate::overlap::ChunkHeader::try_from(r.header.ok_or("relayed chunk without a header")?)
                    .map_err(|e| format!("relayed chunk: {e}"))?;
                let o = self
                    .overlaps
                    .get_mut(&h.session)
                    .ok_or_else(|| format!("chunk of overlap session {}, which was never proposed", h.session))?;
                if o.expired_at.is_some() {
                    return Err(format!("overlap session {}: a chunk was relayed after it expired", h.session));
                }
                if o.accepted_at.is_none() {
                    return Err(format!(
                        "overlap session {}: a chunk was relayed before both sides accepted",
                        h.session
                    ));
                }
                let parties = [o.initiator.as_str(), o.responder.as_str()];
                if !parties.contains(&h.sender.as_str()) || !parties.contains(&h.recipient.as_str()) {
                    return Err(format!("overlap session {}: a chunk between agencies outside the session", h.session));
                }
                o.chunks += 1;
                o.sealed_bytes += u64::from(r.payload_length);
                Ok(())
            }
            Event::OverlapFinished(f) => {
                let s = statement(f.finish, "overlap finish")?.statement;
                let o = self
                    .overlaps
                    .get_mut(&s.session)
                    .ok_or_else(|| format!("finish of overlap session {}, which was never proposed", s.session))?;
                if o.accepted_at.is_none() {
                    return Err(format!("overlap session {} finished before it was accepted", s.session));
                }
                if o.expired_at.is_some() {
                    return Err(format!("overlap session {} finished after it expired", s.session));
                }
                let hash = s.transcript_hash.map(|d| d.to_hex());
                let slot = if s.signer.as_str() == o.initiator {
                    &mut o.initiator_transcript
                } else {
                    &mut o.responder_transcript
                };
                if slot.is_some() {
                    return Err(format!("overlap session {}: {} finished twice", s.session, s.signer));
                }
                *slot = hash;
                Ok(())
            }
            Event::OverlapExpired(x) => {
                let id =
                    MessageId::from_bytes(&x.session_id).map_err(|e| format!("overlap expiry: session id: {e}"))?;
                let o = self
                    .overlaps
                    .get_mut(&id)
                    .ok_or_else(|| format!("expiry of overlap session {id}, which was never proposed"))?;
                if o.expired_at.is_some() {
                    return Err(format!("overlap session {id} expired twice"));
                }
                if o.initiator_transcript.is_some() && o.responder_transcript.is_some() {
                    return Err(format!("overlap session {id} expired after both sides finished"));
                }
                if x.due_ms > logged_at.0 || x.due_ms <= o.proposed_at.0 {
                    return Err(format!(
                        "overlap session {id} expired at {logged_at} with a due time of {} ms, \
                         not between its proposal and the entry",
                        x.due_ms
                    ));
                }
                o.expired_at = Some(logged_at);
                Ok(())
            }
        }
    }

    pub fn finish(self) -> LogReport {
        let mut pairs: Vec<(String, String, u64)> =
            self.pairs.into_iter().map(|((s, r), n)| (s.to_string(), r.to_string(), n)).collect();
        pairs.sort();
        LogReport {
            tree_size: self.frontier.size(),
            root: self.frontier.root(),
            counts: self.counts,
            pairs,
            rejections: self.rejections,
            failures: self.failures,
            failure_count: self.failure_count,
            overlaps: self.overlaps.into_values().collect(),
            blocks: self.blocks,
            checkpoint_root: self.checkpoint_root,
        }
    }
}

/// [`verify_signatures`] of an entry's event at the entry's logged time.
pub fn verify_entry_signatures(directory: &Directory, entry: &pb::AuditEntry) -> Result<(), String> {
    match &entry.event {
        Some(event) => verify_signatures(directory, event, Timestamp(entry.logged_at_ms)),
        None => Ok(()),
    }
}

/// The signature checks of one event, which need only the directory and
/// the entry's logged (broker) time: the sender's signature of a submission
/// and the acker's signature of an acknowledgement, each signing key valid
/// at `logged_at`, the time the broker took it (the signer chooses the
/// signed time, so it proves nothing about when the key was used). Pure and
/// independent, so a checker runs them in parallel.
pub fn verify_signatures(directory: &Directory, event: &Event, logged_at: Timestamp) -> Result<(), String> {
    match event {
        Event::Submitted(s) => {
            let header = EnvelopeHeader::try_from(s.header.clone().ok_or("submission without a header")?)
                .map_err(|e| format!("submission header: {e}"))?;
            let id = header.message_id;
            let payload = Digest::from_slice(&s.payload_digest).ok_or("payload digest is not 32 bytes")?;
            let sender = directory
                .agency(&header.sender)
                .ok_or_else(|| format!("message {id}: sender {} is not in the directory", header.sender))?;
            let key = sender
                .key(&header.sender_key_id)
                .ok_or_else(|| format!("message {id}: sender key {} is not in the directory", header.sender_key_id))?;
            if !key.valid_at(logged_at) {
                return Err(format!(
                    "message {id}: sender key {} was not valid when the broker accepted it at {logged_at}",
                    key.key_id
                ));
            }
            key.signing
                .verify(&signing_input(&header, &payload), &s.signature)
                .map_err(|_| format!("message {id}: the sender's signature does not verify"))
        }
        Event::Acknowledged(a) => {
            let ack = SignedAck::try_from(a.ack.clone().ok_or("acknowledgement without its signed ack")?)
                .map_err(|e| format!("acknowledgement: {e}"))?;
            let id = ack.statement.message_id;
            ack.verify_at(directory, logged_at).map(drop).map_err(|e| format!("acknowledgement of message {id}: {e}"))
        }
        Event::OverlapProposed(pb::OverlapProposed { proposal: p, .. })
        | Event::OverlapAccepted(pb::OverlapAccepted { acceptance: p, .. })
        | Event::OverlapFinished(pb::OverlapFinished { finish: p, .. }) => {
            let s = statement(p.clone(), "overlap statement")?;
            s.verify(directory, logged_at).map(drop).map_err(|e| {
                format!("overlap session {}: the {}'s signature: {e}", s.statement.session, s.statement.signer)
            })
        }
        Event::OverlapRelayed(r) => {
            let h = crate::overlap::ChunkHeader::try_from(r.header.clone().ok_or("relayed chunk without a header")?)
                .map_err(|e| format!("relayed chunk: {e}"))?;
            let payload = Digest::from_slice(&r.payload_digest).ok_or("payload digest is not 32 bytes")?;
            let key = directory.agency(&h.sender).and_then(|a| a.key(&h.sender_key_id)).ok_or_else(|| {
                format!("overlap session {}: sender key {} is not in the directory", h.session, h.sender_key_id)
            })?;
            if !key.valid_at(logged_at) {
                return Err(format!(
                    "overlap session {}: sender key {} was not valid at {logged_at}",
                    h.session, key.key_id
                ));
            }
            key.signing
                .verify(&crate::overlap::chunk_signing_input(&h, &payload), &r.signature)
                .map_err(|_| format!("overlap session {}: a chunk's signature does not verify", h.session))
        }
        _ => Ok(()),
    }
}

/// The first block (as an entry range) where two lists of block roots differ.
pub fn first_differing_block(verified: &[Digest], now: &[Digest]) -> Option<(u64, u64)> {
    verified
        .iter()
        .zip(now)
        .position(|(a, b)| a != b)
        .map(|i| (i as u64 * BLOCK_ENTRIES, (i as u64 + 1) * BLOCK_ENTRIES - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_vectors::{ACKED_AT, CREATED_AT, build};

    const NOT_AFTER: i64 = 1_830_297_600_000;

    fn entry(index: u64, logged_at: i64, event: Event) -> Vec<u8> {
        encode_entry(&pb::AuditEntry {
            format_version: AUDIT_ENTRY_FORMAT_VERSION,
            index,
            logged_at_ms: logged_at,
            event: Some(event),
        })
    }

    /// A submission logged at `submitted_at` and its ack logged at `acked_at`.
    fn failures(submitted_at: i64, acked_at: i64) -> Vec<String> {
        let v = build();
        let e = &v.envelope;
        let submitted = Event::Submitted(pb::Submitted {
            header: Some(pb::EnvelopeHeader::from(&e.header)),
            payload_digest: e.payload_digest().0.to_vec(),
            signature: e.signature.to_vec(),
            envelope_digest: e.digest().0.to_vec(),
            recipient_sequence: 1,
            payload_length: e.payload_len() as u32,
            submitted_by: "spiffe://igor.example.se/agency/polisen-huddinge/system/s".into(),
        });
        let acked = Event::Acknowledged(pb::Acknowledged {
            ack: Some(pb::SignedAck::from(&v.ack)),
            recipient_sequence: 1,
            recipient: e.header.recipient.to_string(),
            principal: "spiffe://igor.example.se/agency/huddinge-socialtjanst/oncall/j".into(),
        });
        let mut c = LogChecker::new(&v.directory, None);
        c.push(0, &entry(0, submitted_at, submitted));
        c.push(1, &entry(1, acked_at, acked));
        c.finish().failures.into_iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn keys_are_judged_at_the_logged_time_and_acks_follow_their_submission() {
        assert_eq!(failures(CREATED_AT.0 + 42, ACKED_AT.0 + 5), Vec::<String>::new());
        // The sender's key had expired when the broker logged the submission
        // (though it was valid at the signed created_at).
        let f = failures(NOT_AFTER, NOT_AFTER + 5);
        assert!(f[0].starts_with("entry 0: ") && f[0].contains("was not valid when the broker accepted it"), "{f:?}");
        // The acker's key had expired when the broker logged the ack.
        let f = failures(CREATED_AT.0 + 42, NOT_AFTER + 1);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].starts_with("entry 1: ") && f[0].contains("is not valid at"), "{f:?}");
        // The ack claims a time before the broker accepted the message.
        let f = failures(ACKED_AT.0 + 1000, ACKED_AT.0 + 2000);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].starts_with("entry 1: ") && f[0].contains("before the broker accepted it"), "{f:?}");
    }
}

#[cfg(test)]
mod overlap_tests {
    use super::*;
    use crate::notice::LegalBasisKind;
    use crate::overlap::{Kind, Statement, Step, seal_message};
    use crate::test_vectors::{CREATED_AT, TestRng, build, message_id};

    /// Entry `index`, logged at CREATED_AT + 10 + index ms.
    fn entry(index: u64, event: Event) -> Vec<u8> {
        encode_entry(&pb::AuditEntry {
            format_version: AUDIT_ENTRY_FORMAT_VERSION,
            index,
            logged_at_ms: CREATED_AT.0 + 10 + index as i64,
            event: Some(event),
        })
    }

    /// The broker's expiry of the session, due `due_after` ms after the proposal was logged.
    fn expiry(due_after: i64) -> Event {
        Event::OverlapExpired(pb::OverlapExpired {
            session_id: message_id().as_bytes().to_vec(),
            due_ms: CREATED_AT.0 + 10 + due_after,
            chunks_deleted: 1,
        })
    }

    /// The failures found in [`check`]'s log.
    fn events(mutate: impl FnOnce(&mut Vec<Event>)) -> Vec<String> {
        check(mutate).failures.into_iter().map(|f| f.to_string()).collect()
    }

    /// A proposal, an acceptance and one relayed set chunk, as the broker
    /// logs them, changed by `mutate`, then checked.
    fn check(mutate: impl FnOnce(&mut Vec<Event>)) -> LogReport {
        let v = build();
        let (police, social) = (&v.sender, &v.recipient);
        let statement = |step, signer: &crate::keys::AgencyKeyBundle, size| Statement {
            step,
            session: message_id(),
            initiator: police.agency().clone(),
            responder: social.agency().clone(),
            signer: signer.agency().clone(),
            signer_key_id: signer.key_id(),
            signed_at: CREATED_AT,
            set_size: size,
            legal_basis: Some(LegalBasisKind::Osl10_18c),
            legal_citation: "OSL 10 kap. 18 c §".into(),
            transcript_hash: None,
        };
        let proposal = statement(Step::Propose, police, 1).sign(police);
        let acceptance = statement(Step::Accept, social, 2).sign(social);
        let chunk = seal_message(
            message_id(),
            Kind::Set,
            &[7; 32],
            police,
            v.directory.agency(social.agency()).unwrap(),
            CREATED_AT,
            &mut TestRng::new(1),
        )
        .unwrap()
        .remove(0);
        let mut list = vec![
            Event::OverlapProposed(pb::OverlapProposed { proposal: Some((&proposal).into()), principal: "p".into() }),
            Event::OverlapAccepted(pb::OverlapAccepted {
                acceptance: Some((&acceptance).into()),
                principal: "s".into(),
            }),
            Event::OverlapRelayed(pb::OverlapRelayed {
                header: Some((&chunk.header).into()),
                payload_digest: chunk.payload_digest().0.to_vec(),
                signature: chunk.signature.to_vec(),
                payload_length: chunk.payload_len() as u32,
                principal: "p".into(),
            }),
        ];
        mutate(&mut list);
        let mut c = LogChecker::new(&v.directory, None);
        for (i, e) in list.into_iter().enumerate() {
            c.push(i as u64, &entry(i as u64, e));
        }
        c.finish()
    }

    #[test]
    fn an_expiry_after_the_due_time_ends_the_session_and_nothing_may_follow_it() {
        // Expired at entry 3 (logged 3 ms after the proposal), due 2 ms after it.
        assert_eq!(events(|l| l.push(expiry(2))), Vec::<String>::new());
        let o = check(|l| l.push(expiry(2))).overlaps;
        assert_eq!((o[0].status(), o[0].expired_at), ("expired", Some(Timestamp(CREATED_AT.0 + 13))));
        // A chunk relayed after the expiry.
        let f = events(|l| {
            let chunk = l[2].clone();
            l.push(expiry(2));
            l.push(chunk);
        });
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].starts_with("entry 4: ") && f[0].contains("a chunk was relayed after it expired"), "{f:?}");
        // Expired twice, or before it was due, or of a session never proposed.
        let f = events(|l| {
            l.push(expiry(2));
            l.push(expiry(2));
        });
        assert!(f.len() == 1 && f[0].contains("expired twice"), "{f:?}");
        let f = events(|l| l.push(expiry(5)));
        assert!(f.len() == 1 && f[0].contains("not between its proposal and the entry"), "{f:?}");
        let f = events(|l| {
            l.truncate(0);
            l.push(expiry(-20));
        });
        assert!(f.len() == 1 && f[0].contains("which was never proposed"), "{f:?}");
    }

    #[test]
    fn an_honest_session_checks_out_and_is_summarised() {
        assert_eq!(events(|_| {}), Vec::<String>::new());
    }

    #[test]
    fn a_chunk_relayed_before_acceptance_is_caught() {
        let f = events(|l| {
            l.remove(1);
        });
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("a chunk was relayed before both sides accepted"), "{f:?}");
    }

    #[test]
    fn an_altered_size_legal_basis_or_chunk_is_caught() {
        let f = events(|l| {
            if let Event::OverlapProposed(p) = &mut l[0] {
                p.proposal.as_mut().unwrap().statement.as_mut().unwrap().set_size = 1024;
            }
            if let Event::OverlapAccepted(a) = &mut l[1] {
                a.acceptance.as_mut().unwrap().statement.as_mut().unwrap().legal_citation = "nothing".into();
            }
            if let Event::OverlapRelayed(r) = &mut l[2] {
                r.payload_digest[0] ^= 1;
            }
        });
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(f[0].starts_with("entry 0: ") && f[0].contains("signature"), "{f:?}");
        assert!(f[1].starts_with("entry 1: ") && f[1].contains("signature"), "{f:?}");
        assert!(f[2].starts_with("entry 2: ") && f[2].contains("does not verify"), "{f:?}");
    }
}
