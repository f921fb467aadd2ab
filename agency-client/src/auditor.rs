//! The auditor's side: replay the broker's log and verify it, print it, and
//! prove single entries. Everything is checked here against the signed
//! directory and the broker's signed tree heads; nothing is taken on the
//! broker's word, and no content is ever involved.
//!
//! `verify` keeps the tree head it trusted (and the roots of each block of
//! 256 entries) in a state file; the next run demands a consistency proof
//! from that head to the new one and recomputes the old root itself, so a
//! log that was rewritten, truncated or forked since is caught, and the
//! first changed block is named.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::Subcommand;
use referral_proto::Digest;
use referral_proto::audit::{BLOCK_ENTRIES, EventKind, LogChecker, LogReport, decode_entry, first_differing_block};
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::merkle::{leaf_hash, verify_consistency, verify_inclusion};
use referral_proto::pb;
use referral_proto::receipt::SignedTreeHead;
use referral_proto::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cli::out;
use crate::{Client, ClientError};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Replay the whole log, recompute its root, check every signature and
    /// sequence, and prove it only grew since the last verified run.
    Verify {
        /// Where to keep the last verified tree head (default: the profile's state folder).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// After the broker was restored from a backup: show what the broker can
    /// no longer prove of the log verified before, and on confirmation trust
    /// its current log from now on (the decision is recorded beside the state).
    AcceptRestore {
        /// The state file `verify` keeps (default: the profile's state folder).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Accept without asking (for scripts); the loss is still shown and recorded.
        #[arg(long)]
        yes: bool,
    },
    /// Print log entries (metadata and digests only). With a filter, the
    /// whole log is verified first and only then are the matching entries printed.
    Replay {
        /// First index to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop before this index (default: the end).
        #[arg(long)]
        to: Option<u64>,
        /// Only the entries about this message id.
        #[arg(long = "message", value_name = "ID")]
        message: Option<MessageId>,
        /// Only the entries about referrals from or to this agency, and refusals of its principals.
        #[arg(long, value_name = "AGENCY")]
        agency: Option<AgencyId>,
        /// Only entries the broker logged at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
        #[arg(long, value_name = "TIME", value_parser = Timestamp::parse_rfc3339)]
        since: Option<Timestamp>,
        /// Only entries the broker logged before this time (RFC 3339).
        #[arg(long, value_name = "TIME", value_parser = Timestamp::parse_rfc3339)]
        until: Option<Timestamp>,
    },
    /// Print the submission entry of a message with an inclusion proof that checks offline.
    Prove {
        /// The message id.
        id: String,
        /// Save the proof to this file, for `audit check-proof`.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Check a proof saved by `audit prove --out`, offline, with the profile's
    /// federation key only. Exit code 0: it holds; 2: it does not.
    CheckProof {
        /// The saved proof.
        file: PathBuf,
    },
    /// Verify the log, then summarise it per agency and month: referrals sent
    /// and received, delivered, acknowledged, escalated, expired, and the
    /// median and 90th percentile time to acknowledge. No personal data.
    Report {
        /// CSV instead of a table (`--json` for JSON).
        #[arg(long)]
        csv: bool,
        /// The state file `verify` keeps, whose head the log must extend (default: the profile's state folder).
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

/// Entries verified together (their signatures in parallel).
const VERIFY_BATCH: usize = 4096;

/// What `verify` remembers between runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditState {
    pub format: u32,
    pub tree_size: u64,
    pub root: String,
    pub timestamp_ms: i64,
    pub signature: String,
    /// Roots of each complete block of 256 entries, in order.
    pub blocks: Vec<String>,
    /// Leaf hashes of the entries after the last complete block, so that
    /// `accept-restore` can say exactly which of them a restored log still
    /// holds (absent in states written before it existed).
    #[serde(default)]
    pub tail: Vec<String>,
    pub verified_at: String,
}

impl AuditState {
    fn root(&self) -> Result<Digest, String> {
        hex::decode(&self.root)
            .ok()
            .and_then(|b| Digest::from_slice(&b))
            .ok_or_else(|| "the state file's root is not a SHA-256 digest".into())
    }

    pub(crate) fn blocks(&self) -> Vec<Digest> {
        self.blocks.iter().filter_map(|h| hex::decode(h).ok().and_then(|b| Digest::from_slice(&b))).collect()
    }

    pub(crate) fn tail(&self) -> Vec<Digest> {
        self.tail.iter().filter_map(|h| hex::decode(h).ok().and_then(|b| Digest::from_slice(&b))).collect()
    }
}

pub(crate) fn read_state(path: &Path) -> anyhow::Result<Option<AuditState>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(
            serde_json::from_str(&t).with_context(|| format!("{} is not an audit state file", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_state(path: &Path, state: &AuditState) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        certs::durable_file::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    certs::durable_file::write(path, serde_json::to_string_pretty(state)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// How big a proof was and how long asking for it took.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProofCost {
    pub hashes: usize,
    pub bytes: usize,
    pub milliseconds: f64,
}

/// The outcome of a verification run.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub report: LogReport,
    pub previous_size: Option<u64>,
    /// The consistency proof from the previous head: size and round-trip time.
    pub consistency_proof: Option<ProofCost>,
    pub seconds: f64,
    pub ok: bool,
    /// The head trusted before can no longer be proven (the log shrank or
    /// was rewritten): what a restore from a backup looks like.
    pub restore_suspected: bool,
}

/// What a run over the log does with the head trusted before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The log must extend the trusted head; when everything checks out,
    /// the new head is trusted from now on (`audit verify`).
    Verify,
    /// The same checks, and the trusted head stays as it is (`replay`,
    /// `report`: they read, they do not decide).
    Read,
    /// The log itself must check out; what it cannot prove of the trusted
    /// head is the loss to show, not a failure (`accept-restore`).
    AcceptRestore,
}

/// A run over the whole log, before anything is decided.
#[derive(Debug)]
pub(crate) struct LogRun {
    pub verification: Verification,
    pub head: SignedTreeHead,
    pub previous: Option<AuditState>,
    /// Why the trusted head can no longer be proven (empty when it can).
    pub history: Vec<String>,
    /// Leaf hashes of consecutive entries from `leaves_from` to the end.
    pub leaves_from: u64,
    pub leaves: Vec<Digest>,
}

impl LogRun {
    /// The leaf hash of entry `index` of the broker's log, when kept.
    pub fn leaf(&self, index: u64) -> Option<&Digest> {
        index.checked_sub(self.leaves_from).and_then(|i| self.leaves.get(usize::try_from(i).ok()?))
    }

    /// Trusts this run's head from now on: writes the state file.
    pub fn record_state(&self, state_path: &Path) -> Result<(), ClientError> {
        let size = self.head.head.tree_size;
        let tail_start = size - size % BLOCK_ENTRIES;
        let state = AuditState {
            format: 1,
            tree_size: size,
            root: self.head.head.root_hash.to_hex(),
            timestamp_ms: self.head.head.timestamp.0,
            signature: hex::encode(self.head.signature),
            blocks: self.verification.report.blocks.iter().map(Digest::to_hex).collect(),
            tail: (tail_start..size).filter_map(|i| self.leaf(i)).map(Digest::to_hex).collect(),
            verified_at: certs::now().to_string(),
        };
        write_state(state_path, &state)
            .map_err(|e| ClientError::State { path: state_path.to_owned(), message: format!("{e:#}") })
    }
}

impl Client {
    /// The broker's signed tree head, checked against the directory's log key.
    pub async fn tree_head(&self) -> Result<SignedTreeHead, ClientError> {
        let dir = self.directory().await?;
        let p = self.auditor_rpc().get_tree_head(pb::GetTreeHeadRequest {}).await?.into_inner();
        let head = SignedTreeHead::from_pb(&p).ok_or(ClientError::Incomplete("tree head"))?;
        head.verify(&dir.broker_log_key).map_err(|_| {
            ClientError::Invalid("the tree head's signature does not verify with the broker log key".into())
        })?;
        Ok(head)
    }

    /// Replays and verifies the whole log; see the module documentation.
    /// `progress` is called with the number of entries checked so far.
    pub async fn verify_log(
        &self,
        state_path: &Path,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Verification, ClientError> {
        Ok(self.check_log(state_path, Mode::Verify, &mut progress, &mut |_, _| {}).await?.verification)
    }

    /// The one replay every auditor verb runs: the whole log up to the
    /// broker's signed head, every entry checked (`on_entry` sees each one,
    /// in order, as the broker sent it), the root recomputed, and the head
    /// trusted before proven to be extended by it. What is done with the
    /// outcome depends on `mode`.
    pub(crate) async fn check_log(
        &self,
        state_path: &Path,
        mode: Mode,
        progress: &mut dyn FnMut(u64, u64),
        on_entry: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<LogRun, ClientError> {
        let started = Instant::now();
        let dir = self.refresh_directory().await?;
        let head = self.tree_head().await?;
        let size = head.head.tree_size;
        let previous = read_state(state_path)
            .map_err(|e| ClientError::State { path: state_path.to_owned(), message: format!("{e:#}") })?;
        let mut consistency = None;
        // Why the trusted head can no longer be proven: failures of the log
        // for `verify`, the loss to show for `accept-restore`.
        let mut history = Vec::new();
        let mut checker = LogChecker::new(&dir, previous.as_ref().map(|p| p.tree_size).filter(|&s| s <= size));
        if let Some(p) = &previous {
            match p.root() {
                Err(m) => checker.fail(None, m),
                Ok(_) if p.tree_size > size => history.push(format!(
                    "the log shrank: {} entries were verified on {}, the broker now signs {size}",
                    p.tree_size, p.verified_at
                )),
                Ok(old_root) => {
                    let asked = Instant::now();
                    let proof = self
                        .auditor_rpc()
                        .consistency_proof(pb::ConsistencyProofRequest { first: p.tree_size, second: size })
                        .await?
                        .into_inner();
                    let path: Option<Vec<Digest>> = proof.path.iter().map(|b| Digest::from_slice(b)).collect();
                    consistency = Some((proof.path.len(), asked.elapsed().as_secs_f64() * 1000.0));
                    let ok = path.is_some_and(|path| {
                        verify_consistency(p.tree_size, size, &old_root, &head.head.root_hash, &path).is_ok()
                    });
                    if !ok {
                        history.push(
                            format!("the broker cannot prove that its log of {size} entries extends the {} entries verified on {}: it was rewritten or forked", p.tree_size, p.verified_at),
                        );
                    }
                }
            }
        }
        if mode != Mode::AcceptRestore {
            for m in &history {
                checker.fail(None, m.clone());
            }
        }
        // Leaf hashes are kept from the start of the new log's last partial
        // block (the next state keeps them) or of the trusted log's, when
        // earlier (accept-restore compares them leaf by leaf).
        let tail_start = size - size % BLOCK_ENTRIES;
        let keep_from = previous.as_ref().map_or(tail_start, |p| tail_start.min(p.blocks.len() as u64 * BLOCK_ENTRIES));
        let mut leaves = Vec::new();
        let mut stream = self.auditor_rpc().replay(pb::ReplayRequest { from: 0, to: size }).await?.into_inner();
        let mut next = 0u64;
        let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(VERIFY_BATCH);
        while let Some(entry) = stream.message().await? {
            next = entry.index + 1;
            if entry.index >= keep_from && entry.index == keep_from + leaves.len() as u64 {
                leaves.push(leaf_hash(&entry.entry));
            }
            on_entry(entry.index, &entry.entry);
            batch.push((entry.index, entry.entry));
            if batch.len() == VERIFY_BATCH {
                // Signatures and hashes are checked on every core.
                checker.push_batch(&batch);
                batch.clear();
                progress(next, size);
            }
        }
        checker.push_batch(&batch);
        progress(next, size);
        if next != size {
            checker.fail(Some(next), format!("the replay ended after {next} of {size} entries"));
        }
        let mut report = checker.finish();
        let mut extra = Vec::new();
        if report.root != head.head.root_hash {
            extra.push(format!(
                "the entries' Merkle root {} is not the root {} the broker signed for {size} entries",
                report.root, head.head.root_hash
            ));
        }
        if let Some(p) = &previous
            && let (Ok(old), Some(now)) = (p.root(), report.checkpoint_root)
            && old != now
        {
            let old_blocks = p.blocks();
            // Every complete block the state kept is compared; when they all
            // match, the change is in the entries after the last of them.
            let (a, b) = first_differing_block(&old_blocks, &report.blocks)
                .unwrap_or((old_blocks.len() as u64 * BLOCK_ENTRIES, p.tree_size.saturating_sub(1)));
            let where_ = format!("; the first changed block is entries {a}..={b}");
            history.push(format!(
                "the first {} entries are no longer those verified on {}{where_}",
                p.tree_size, p.verified_at
            ));
            if mode != Mode::AcceptRestore {
                extra.push(history.last().cloned().unwrap_or_default());
            }
        }
        for m in extra {
            report.failure_count += 1;
            report.failures.push(referral_proto::audit::Failure { index: None, message: m });
        }
        let ok = report.failure_count == 0;
        let run = LogRun {
            verification: Verification {
                previous_size: previous.as_ref().map(|p| p.tree_size),
                consistency_proof: consistency.map(|(hashes, ms)| ProofCost {
                    hashes,
                    bytes: hashes * 32,
                    milliseconds: ms,
                }),
                seconds: started.elapsed().as_secs_f64(),
                restore_suspected: !history.is_empty(),
                report,
                ok,
            },
            head,
            previous,
            history,
            leaves_from: keep_from,
            leaves,
        };
        if ok && mode == Mode::Verify {
            run.record_state(state_path)?;
        }
        Ok(run)
    }

    /// The inclusion proof of the entry recording `message_id`'s submission,
    /// checked here against a signed tree head.
    pub async fn prove(&self, message_id: MessageId) -> Result<Proven, ClientError> {
        // The directory is kept with the proof: its log key is what makes
        // the tree head, and so the proof, checkable offline.
        let signed = self.auditor_rpc().get_directory(pb::GetDirectoryRequest {}).await?.into_inner();
        let dir = self.accept_directory(signed.clone())?;
        let asked = Instant::now();
        let req = pb::InclusionProofRequest {
            target: Some(pb::inclusion_proof_request::Target::MessageId(message_id.as_bytes().to_vec())),
            tree_size: 0,
        };
        let r = self.auditor_rpc().inclusion_proof(req).await?.into_inner();
        let head =
            r.tree_head.as_ref().and_then(SignedTreeHead::from_pb).ok_or(ClientError::Incomplete("tree head"))?;
        head.verify(&dir.broker_log_key)
            .map_err(|_| ClientError::Invalid("the tree head's signature does not verify".into()))?;
        let entry = r.entry.ok_or(ClientError::Incomplete("entry"))?;
        let path: Vec<Digest> = r
            .path
            .iter()
            .map(|b| Digest::from_slice(b))
            .collect::<Option<_>>()
            .ok_or(ClientError::Incomplete("proof path"))?;
        verify_inclusion(&leaf_hash(&entry.entry), entry.index, head.head.tree_size, &path, &head.head.root_hash)
            .map_err(|e| ClientError::Invalid(format!("the inclusion proof does not verify: {e}")))?;
        let decoded = decode_entry(&entry.entry, entry.index).map_err(|e| ClientError::Invalid(e.to_string()))?;
        // A valid proof of some other entry proves nothing about this message.
        let proven = match &decoded.event {
            Some(pb::audit_entry::Event::Submitted(s)) => {
                s.header.as_ref().and_then(|h| MessageId::from_bytes(&h.message_id).ok())
            }
            _ => None,
        };
        if proven != Some(message_id) {
            let what = match proven {
                Some(other) => format!("the submission of {other}"),
                None => format!("{} entry", decoded.event.as_ref().map_or("an empty", |e| EventKind::of(e).as_str())),
            };
            return Err(ClientError::ProofForAnotherEntry { message_id, index: entry.index, entry: what });
        }
        let milliseconds = asked.elapsed().as_secs_f64() * 1000.0;
        Ok(Proven {
            index: entry.index,
            entry_bytes: entry.entry,
            entry: decoded,
            path,
            head,
            directory: signed,
            milliseconds,
        })
    }
}

/// A verified inclusion proof.
#[derive(Debug, Clone)]
pub struct Proven {
    pub index: u64,
    pub entry_bytes: Vec<u8>,
    pub entry: pb::AuditEntry,
    pub path: Vec<Digest>,
    pub head: SignedTreeHead,
    /// The signed directory whose broker log key signed `head`.
    pub directory: pb::SignedDirectory,
    /// Round trip of the request, including checking the proof.
    pub milliseconds: f64,
}

fn id_text(raw: &[u8]) -> String {
    MessageId::from_bytes(raw).map(|m| m.to_string()).unwrap_or_else(|_| hex::encode(raw))
}

/// An entry as JSON: metadata and digests (bytes as hex).
pub fn entry_json(e: &pb::AuditEntry) -> serde_json::Value {
    let at = Timestamp(e.logged_at_ms).to_string();
    let body = match &e.event {
        Some(pb::audit_entry::Event::Submitted(s)) => {
            let h = s.header.clone().unwrap_or_default();
            json!({"event": "submitted", "message_id": id_text(&h.message_id), "sender": h.sender, "recipient": h.recipient,
                   "urgency": h.urgency, "created_at": Timestamp(h.created_at_ms).to_string(),
                   "sender_key_id": hex::encode(&h.sender_key_id), "recipient_key_id": hex::encode(&h.recipient_key_id),
                   "payload_digest": hex::encode(&s.payload_digest), "envelope_digest": hex::encode(&s.envelope_digest),
                   "signature": hex::encode(&s.signature), "recipient_sequence": s.recipient_sequence,
                   "payload_length": s.payload_length, "submitted_by": s.submitted_by})
        }
        Some(pb::audit_entry::Event::Rejected(r)) => {
            json!({"event": "rejected", "principal": r.principal, "reason": r.reason,
            "message_id": (!r.message_id.is_empty()).then(|| id_text(&r.message_id)), "envelope_digest": hex::encode(&r.envelope_digest)})
        }
        Some(pb::audit_entry::Event::Delivered(d)) => {
            json!({"event": "delivered", "message_id": id_text(&d.message_id),
            "recipient": d.recipient, "recipient_sequence": d.recipient_sequence, "principal": d.principal})
        }
        Some(pb::audit_entry::Event::Acknowledged(a)) => {
            let s = a.ack.clone().unwrap_or_default().statement.unwrap_or_default();
            json!({"event": "acknowledged", "message_id": id_text(&s.message_id), "recipient": a.recipient,
                   "recipient_sequence": a.recipient_sequence, "principal": a.principal, "acknowledged_by": s.acknowledged_by,
                   "acknowledged_at": Timestamp(s.acknowledged_at_ms).to_string(), "envelope_digest": hex::encode(&s.envelope_digest),
                   "signer_key_id": hex::encode(&s.signer_key_id)})
        }
        Some(pb::audit_entry::Event::Escalated(x)) => {
            json!({"event": "escalated", "message_id": id_text(&x.message_id),
            "recipient": x.recipient, "recipient_sequence": x.recipient_sequence, "deadline": Timestamp(x.deadline_ms).to_string(), "contact": x.contact})
        }
        Some(pb::audit_entry::Event::Expired(x)) => {
            json!({"event": "expired", "message_id": id_text(&x.message_id),
            "recipient": x.recipient, "recipient_sequence": x.recipient_sequence})
        }
        Some(pb::audit_entry::Event::Purged(p)) => {
            json!({"event": "purged", "message_id": id_text(&p.message_id), "envelope_digest": hex::encode(&p.envelope_digest)})
        }
        Some(pb::audit_entry::Event::RejectionSummary(r)) => {
            json!({"event": "rejection_summary", "principal": r.principal, "reason": r.reason, "count": r.count,
                   "from": Timestamp(r.from_ms).to_string(), "to": Timestamp(r.to_ms).to_string()})
        }
        Some(pb::audit_entry::Event::OverlapProposed(pb::OverlapProposed { proposal: st, principal }))
        | Some(pb::audit_entry::Event::OverlapAccepted(pb::OverlapAccepted { acceptance: st, principal }))
        | Some(pb::audit_entry::Event::OverlapFinished(pb::OverlapFinished { finish: st, principal })) => {
            let signed = st.clone().unwrap_or_default();
            let s = signed.statement.clone().unwrap_or_default();
            let event = match e.event {
                Some(pb::audit_entry::Event::OverlapProposed(_)) => "overlap_proposed",
                Some(pb::audit_entry::Event::OverlapAccepted(_)) => "overlap_accepted",
                _ => "overlap_finished",
            };
            let basis = referral_proto::overlap::Step::from_code(s.step)
                .filter(|st| *st != referral_proto::overlap::Step::Finish)
                .and_then(|_| {
                    referral_proto::overlap::SignedStatement::try_from(signed.clone()).ok()?.statement.legal_basis
                })
                .map(referral_proto::overlap::basis_name);
            json!({"event": event, "session_id": id_text(&s.session_id), "initiator": s.initiator, "responder": s.responder,
                   "signer": s.signer, "signer_key_id": hex::encode(&s.signer_key_id),
                   "signed_at": Timestamp(s.signed_at_ms).to_string(), "set_size": s.set_size,
                   "legal_basis": basis, "legal_citation": s.legal_citation,
                   "transcript_hash": hex::encode(&s.transcript_hash), "signature": hex::encode(&signed.signature),
                   "principal": principal})
        }
        Some(pb::audit_entry::Event::OverlapExpired(x)) => {
            json!({"event": "overlap_expired", "session_id": id_text(&x.session_id),
                   "due": Timestamp(x.due_ms).to_string(), "chunks_deleted": x.chunks_deleted})
        }
        Some(pb::audit_entry::Event::OverlapRelayed(r)) => {
            let h = r.header.clone().unwrap_or_default();
            let kind = referral_proto::overlap::Kind::from_code(h.kind).map(|k| k.as_str());
            json!({"event": "overlap_relayed", "session_id": id_text(&h.session_id), "sender": h.sender, "recipient": h.recipient,
                   "kind": kind, "index": h.index, "count": h.count, "created_at": Timestamp(h.created_at_ms).to_string(),
                   "payload_digest": hex::encode(&r.payload_digest), "payload_length": r.payload_length,
                   "signature": hex::encode(&r.signature), "principal": r.principal})
        }
        None => json!({"event": null}),
    };
    let mut v = json!({"index": e.index, "logged_at": at});
    if let (Some(obj), serde_json::Value::Object(b)) = (v.as_object_mut(), body) {
        obj.extend(b);
    }
    v
}

fn entry_line(e: &pb::AuditEntry) -> String {
    let j = entry_json(e);
    let s = |k: &str| j[k].as_str().unwrap_or("").to_owned();
    let detail = match j["event"].as_str().unwrap_or("") {
        "submitted" => format!(
            "{} {} -> {} (queue position {}) by {}",
            s("message_id"),
            s("sender"),
            s("recipient"),
            j["recipient_sequence"],
            s("submitted_by")
        ),
        "rejected" => format!("{} from {}", s("reason"), s("principal")),
        "rejection_summary" => format!("{} x {} from {} since {}", j["count"], s("reason"), s("principal"), s("from")),
        "delivered" => format!("{} to {}", s("message_id"), s("principal")),
        "acknowledged" => format!("{} by {} ({})", s("message_id"), s("acknowledged_by"), s("principal")),
        "escalated" => format!("{} deadline {} contact {}", s("message_id"), s("deadline"), s("contact")),
        "expired" | "purged" => s("message_id"),
        "overlap_proposed" | "overlap_accepted" => format!(
            "session {} {} -> {}: {} signs {} elements on {} ({})",
            s("session_id"),
            s("initiator"),
            s("responder"),
            s("signer"),
            j["set_size"],
            s("legal_basis"),
            s("legal_citation")
        ),
        "overlap_relayed" => format!(
            "session {} {} {} -> {} chunk {}/{} ({} sealed bytes)",
            s("session_id"),
            s("kind"),
            s("sender"),
            s("recipient"),
            j["index"],
            j["count"],
            j["payload_length"]
        ),
        "overlap_finished" => {
            format!("session {} {} transcript {}", s("session_id"), s("signer"), s("transcript_hash"))
        }
        "overlap_expired" => {
            format!("session {} due {}, {} sealed chunks deleted", s("session_id"), s("due"), j["chunks_deleted"])
        }
        _ => String::new(),
    };
    format!("#{:<8} {} {:<12} {detail}", e.index, s("logged_at"), s("event"))
}

pub(crate) fn print_report(v: &Verification, json: bool) -> anyhow::Result<()> {
    let r = &v.report;
    if json {
        out!("{}", serde_json::to_string(v).unwrap_or_default());
        return Ok(());
    }
    out!(
        "audit log of {} entries, root {} ({:.1} s, {:.0} entries/s)",
        r.tree_size,
        r.root,
        v.seconds,
        r.tree_size as f64 / v.seconds.max(1e-9)
    );
    for kind in EventKind::ALL {
        out!("  {:<13} {}", kind.as_str(), r.counts.get(&kind).copied().unwrap_or(0));
    }
    for (s, t, n) in &r.pairs {
        out!("  {s} -> {t}: {n} referrals");
    }
    for (reason, n) in &r.rejections {
        out!("  rejected for {reason}: {n}");
    }
    for o in &r.overlaps {
        let finished = match (&o.initiator_transcript, &o.responder_transcript) {
            (Some(a), Some(b)) if a == b => format!("finished, transcript {a}"),
            (Some(_), Some(_)) => "finished with DIFFERENT transcripts".to_owned(),
            _ if o.expired_at.is_some() => format!("expired at {}, unfinished", o.expired_at.unwrap_or_default()),
            (None, None) if o.accepted_at.is_none() => "never accepted".to_owned(),
            _ => "incomplete".to_owned(),
        };
        out!(
            "  overlap {} {} ({} elements, {}) <-> {} ({} elements, {}): {} chunks, {} sealed bytes; {finished}",
            o.session,
            o.initiator,
            o.initiator_size,
            crate::display::safe(&o.initiator_legal_basis),
            o.responder,
            o.responder_size,
            crate::display::safe(&o.responder_legal_basis),
            o.chunks,
            o.sealed_bytes
        );
    }
    if let (Some(p), Some(c)) = (v.previous_size, v.consistency_proof) {
        out!(
            "  consistency proof from the {p} entries verified before: {} hashes ({} bytes), {:.1} ms",
            c.hashes,
            c.bytes,
            c.milliseconds
        );
    }
    if v.ok {
        out!(
            "OK: every signature, sequence and reference checks out, and the root matches the broker's signed tree head"
        );
    } else {
        out!("FAILED: {} problem(s)", r.failure_count);
        for f in &r.failures {
            out!("  - {}", crate::display::safe(&f.to_string()));
        }
        if v.restore_suspected {
            out!(
                "if the broker was restored from a backup: `agency-client audit accept-restore` shows what was lost and records the decision to trust its log from now on"
            );
        }
    }
    Ok(())
}

/// A progress bar on standard error when that is a terminal and the output
/// is for people; nothing on a pipe.
pub(crate) fn progress_bar(json: bool) -> Option<indicatif::ProgressBar> {
    (!json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} entries, {per_sec}, ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    })
}

pub(crate) fn show_progress(bar: Option<&indicatif::ProgressBar>, done: u64, total: u64) {
    if let Some(b) = bar {
        b.set_length(total);
        b.set_position(done);
    }
}

/// Which entries `audit replay` prints.
#[derive(Debug, Default)]
struct Filter {
    from: u64,
    to: Option<u64>,
    message: Option<MessageId>,
    agency: Option<AgencyId>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    /// Sender and recipient of each referral seen so far, so that every
    /// entry about a referral matches both its agencies.
    parties: std::collections::HashMap<MessageId, (String, String)>,
}

impl Filter {
    /// Whether anything beyond an index range is asked for.
    fn narrows(&self) -> bool {
        self.message.is_some() || self.agency.is_some() || self.since.is_some() || self.until.is_some()
    }

    /// Whether `e` is to be printed; must see every entry, in order.
    fn matches(&mut self, e: &pb::AuditEntry) -> bool {
        use pb::audit_entry::Event;
        let id = |raw: &[u8]| MessageId::from_bytes(raw).ok();
        let (message, principal) = match &e.event {
            Some(Event::Submitted(s)) => {
                let h = s.header.clone().unwrap_or_default();
                let m = id(&h.message_id);
                if let Some(m) = m {
                    self.parties.entry(m).or_insert((h.sender, h.recipient));
                }
                (m, Some(s.submitted_by.as_str()))
            }
            Some(Event::Rejected(r)) => (id(&r.message_id), Some(r.principal.as_str())),
            Some(Event::RejectionSummary(r)) => (None, Some(r.principal.as_str())),
            Some(Event::Delivered(d)) => (id(&d.message_id), Some(d.principal.as_str())),
            Some(Event::Acknowledged(a)) => (
                a.ack.as_ref().and_then(|a| a.statement.as_ref()).and_then(|s| id(&s.message_id)),
                Some(a.principal.as_str()),
            ),
            Some(Event::Escalated(x)) => (id(&x.message_id), None),
            Some(Event::Expired(x)) => (id(&x.message_id), None),
            Some(Event::Purged(p)) => (id(&p.message_id), None),
            Some(Event::OverlapProposed(pb::OverlapProposed { proposal: st, principal }))
            | Some(Event::OverlapAccepted(pb::OverlapAccepted { acceptance: st, principal }))
            | Some(Event::OverlapFinished(pb::OverlapFinished { finish: st, principal })) => {
                let s = st.as_ref().and_then(|s| s.statement.as_ref());
                let m = s.and_then(|s| id(&s.session_id));
                if let (Some(m), Some(s)) = (m, s) {
                    self.parties.entry(m).or_insert((s.initiator.clone(), s.responder.clone()));
                }
                (m, Some(principal.as_str()))
            }
            Some(Event::OverlapRelayed(r)) => {
                (r.header.as_ref().and_then(|h| id(&h.session_id)), Some(r.principal.as_str()))
            }
            Some(Event::OverlapExpired(x)) => (id(&x.session_id), None),
            None => (None, None),
        };
        let at = Timestamp(e.logged_at_ms);
        e.index >= self.from
            && self.to.is_none_or(|to| e.index < to)
            && self.since.is_none_or(|t| at >= t)
            && self.until.is_none_or(|t| at < t)
            && self.message.is_none_or(|m| message == Some(m))
            && self.agency.as_ref().is_none_or(|a| {
                let party =
                    message.and_then(|m| self.parties.get(&m)).is_some_and(|(s, r)| s == a.as_str() || r == a.as_str());
                let own = principal
                    .and_then(|p| referral_proto::ids::Principal::parse_uri(p).ok())
                    .is_some_and(|p| &p.agency == a);
                party || own
            })
    }
}

fn print_entry(entry: &pb::AuditEntry, json: bool) -> anyhow::Result<()> {
    if json {
        out!("{}", crate::display::json_line(&entry_json(entry)));
    } else {
        out!("{}", crate::display::safe(&entry_line(entry)));
    }
    Ok(())
}

/// `audit check-proof FILE`: offline, with the profile's federation key.
/// Returns false when the proof does not hold.
pub fn check_proof(profile: &Path, file: &Path, json: bool) -> anyhow::Result<bool> {
    let profile = certs::profile::Profile::load(profile, certs::now())?;
    match crate::proof::check_file(file, &profile.federation_key)? {
        Ok(c) => {
            if json {
                out!("{}", json!({"ok": true, "proof": c}));
            } else {
                out!(
                    "OK: {} holds: entry {} is the submission of message {}, included in the log of {} entries with root {} that the broker signed at {} (log key from directory version {}, signed by the federation)",
                    file.display(),
                    c.leaf_index,
                    c.message_id,
                    c.tree_size,
                    c.root,
                    c.signed_at,
                    c.directory_version
                );
            }
            Ok(true)
        }
        Err(e) => {
            if json {
                out!("{}", json!({"ok": false, "error": e.to_string()}));
            } else {
                out!("FAILED: {}: {e}", file.display());
            }
            Ok(false)
        }
    }
}

/// Runs an audit command; returns false when verification found failures.
pub async fn run(client: &Client, cmd: AuditCommand, json: bool) -> anyhow::Result<bool> {
    let default_state = || client.profile().state_dir().join("audit-state.json");
    match cmd {
        AuditCommand::Verify { state } => {
            let state = state.unwrap_or_else(default_state);
            let bar = progress_bar(json);
            let v = client.verify_log(&state, |done, total| show_progress(bar.as_ref(), done, total)).await?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            print_report(&v, json)?;
            Ok(v.ok)
        }
        AuditCommand::AcceptRestore { state, yes } => {
            crate::restore::run(client, &state.unwrap_or_else(default_state), yes, json).await
        }
        AuditCommand::Replay { from, to, message, agency, since, until } => {
            let mut filter = Filter { from, to, message, agency, since, until, ..Filter::default() };
            if !filter.narrows() {
                // As the broker sends it, entry by entry: `audit verify`
                // checks the log; a filter checks it first.
                let head = client.tree_head().await?;
                let to = to.unwrap_or(head.head.tree_size);
                let mut stream = client.auditor_rpc().replay(pb::ReplayRequest { from, to }).await?.into_inner();
                while let Some(e) = stream.message().await? {
                    match decode_entry(&e.entry, e.index) {
                        Ok(entry) => print_entry(&entry, json)?,
                        Err(err) => out!("#{} unreadable: {err}", e.index),
                    }
                }
                return Ok(true);
            }
            let bar = progress_bar(json);
            let mut matched = Vec::new();
            let run = client
                .check_log(
                    &default_state(),
                    Mode::Read,
                    &mut |done, total| show_progress(bar.as_ref(), done, total),
                    &mut |index, bytes| {
                        if let Ok(entry) = decode_entry(bytes, index)
                            && filter.matches(&entry)
                        {
                            matched.push(entry);
                        }
                    },
                )
                .await?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            if !run.verification.ok {
                // Nothing from a log that does not verify.
                print_report(&run.verification, json)?;
                return Ok(false);
            }
            for entry in &matched {
                print_entry(entry, json)?;
            }
            Ok(true)
        }
        AuditCommand::Prove { id, out } => {
            let id: MessageId = id.parse()?;
            let p = client.prove(id).await?;
            let saved = crate::proof::SavedProof::new(id, &p);
            let text = serde_json::to_string_pretty(&saved)?;
            if let Some(path) = &out {
                certs::durable_file::write(path, format!("{text}\n"))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if json {
                out!("{}", serde_json::to_string(&saved)?);
                return Ok(true);
            }
            out!("{}", crate::display::safe(&entry_line(&p.entry)));
            out!(
                "included at index {} of {} entries; root {} signed by the broker at {}",
                p.index,
                p.head.head.tree_size,
                p.head.head.root_hash,
                p.head.head.timestamp
            );
            out!(
                "proof of {} hashes ({} bytes) fetched and verified (RFC 9162) in {:.1} ms",
                p.path.len(),
                p.path.len() * 32,
                p.milliseconds
            );
            match &out {
                Some(path) => out!(
                    "saved to {}; check it offline with: agency-client --profile {} audit check-proof {}",
                    path.display(),
                    client.profile().dir.display(),
                    path.display()
                ),
                None => {
                    out!("to check it offline, keep this (or save it with --out FILE):");
                    out!("{text}");
                }
            }
            Ok(true)
        }
        AuditCommand::CheckProof { file } => check_proof(&client.profile().dir, &file, json),
        AuditCommand::Report { csv, state } => {
            let bar = progress_bar(json || csv);
            let mut builder = crate::report::ReportBuilder::default();
            let run = client
                .check_log(
                    &state.unwrap_or_else(default_state),
                    Mode::Read,
                    &mut |done, total| show_progress(bar.as_ref(), done, total),
                    &mut |index, bytes| {
                        if let Ok(entry) = decode_entry(bytes, index) {
                            builder.push(&entry);
                        }
                    },
                )
                .await?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            if !run.verification.ok {
                print_report(&run.verification, json)?;
                return Ok(false);
            }
            let rows = builder.finish();
            let head = &run.head.head;
            if json {
                out!(
                    "{}",
                    json!({"tree_size": head.tree_size, "root": head.root_hash.to_hex(), "signed_at": head.timestamp.to_string(), "rows": rows,
                           "overlaps": run.verification.report.overlaps})
                );
            } else if csv {
                for line in crate::report::csv(&rows) {
                    out!("{line}");
                }
                // The overlap sessions are a second table: after a blank
                // line, with its own header (only when the log holds any).
                let overlaps = &run.verification.report.overlaps;
                if !overlaps.is_empty() {
                    out!("");
                    for line in crate::report::overlaps_csv(overlaps) {
                        out!("{line}");
                    }
                }
            } else {
                out!(
                    "referrals in the verified log of {} entries (root {}, signed at {}), by agency and month of acceptance (UTC);",
                    head.tree_size,
                    head.root_hash,
                    head.timestamp
                );
                out!(
                    "time to acknowledge runs from acceptance to the logged acknowledgement (median and 90th percentile)"
                );
                for line in crate::report::text(&rows) {
                    out!("{line}");
                }
                let overlaps = &run.verification.report.overlaps;
                if !overlaps.is_empty() {
                    out!("blind overlap sessions (padded set sizes and each side's stated legal basis):");
                }
                for o in overlaps {
                    out!(
                        "  {} {} {} ({}, {}) <-> {} ({}, {}): {}",
                        o.proposed_at,
                        o.session,
                        o.initiator,
                        o.initiator_size,
                        crate::display::safe(&o.initiator_legal_basis),
                        o.responder,
                        o.responder_size,
                        crate::display::safe(&o.responder_legal_basis),
                        o.status()
                    );
                }
            }
            Ok(true)
        }
    }
}
