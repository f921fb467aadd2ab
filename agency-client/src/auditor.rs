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
use referral_proto::ids::MessageId;
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
    /// Print log entries (metadata and digests only).
    Replay {
        /// The index of the first entry to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop before this index (default: the end).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Print the submission entry of a message with an inclusion proof that checks offline.
    Prove {
        /// The message id.
        id: String,
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
    pub verified_at: String,
}

impl AuditState {
    fn root(&self) -> Result<Digest, String> {
        hex::decode(&self.root)
            .ok()
            .and_then(|b| Digest::from_slice(&b))
            .ok_or_else(|| "the state file's root is not a SHA-256 digest".into())
    }

    fn blocks(&self) -> Vec<Digest> {
        self.blocks.iter().filter_map(|h| hex::decode(h).ok().and_then(|b| Digest::from_slice(&b))).collect()
    }
}

fn read_state(path: &Path) -> anyhow::Result<Option<AuditState>> {
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
        let started = Instant::now();
        let dir = self.refresh_directory().await?;
        let head = self.tree_head().await?;
        let size = head.head.tree_size;
        let previous = read_state(state_path)
            .map_err(|e| ClientError::State { path: state_path.to_owned(), message: format!("{e:#}") })?;
        let mut consistency = None;
        let mut checker = LogChecker::new(&dir, previous.as_ref().map(|p| p.tree_size).filter(|&s| s <= size));
        if let Some(p) = &previous {
            match p.root() {
                Err(m) => checker.fail(None, m),
                Ok(_) if p.tree_size > size => checker.fail(
                    None,
                    format!(
                        "the log shrank: {} entries were verified on {}, the broker now signs {size}",
                        p.tree_size, p.verified_at
                    ),
                ),
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
                        checker.fail(
                            None,
                            format!("the broker cannot prove that its log of {size} entries extends the {} entries verified on {}: it was rewritten or forked", p.tree_size, p.verified_at),
                        );
                    }
                }
            }
        }
        let mut stream = self.auditor_rpc().replay(pb::ReplayRequest { from: 0, to: size }).await?.into_inner();
        let mut next = 0u64;
        let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(VERIFY_BATCH);
        while let Some(entry) = stream.message().await? {
            next = entry.index + 1;
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
            extra.push(format!(
                "the first {} entries are no longer those verified on {}{where_}",
                p.tree_size, p.verified_at
            ));
        }
        for m in extra {
            report.failure_count += 1;
            report.failures.push(referral_proto::audit::Failure { index: None, message: m });
        }
        let ok = report.failure_count == 0;
        if ok {
            let state = AuditState {
                format: 1,
                tree_size: size,
                root: head.head.root_hash.to_hex(),
                timestamp_ms: head.head.timestamp.0,
                signature: hex::encode(head.signature),
                blocks: report.blocks.iter().map(Digest::to_hex).collect(),
                verified_at: certs::now().to_string(),
            };
            write_state(state_path, &state)
                .map_err(|e| ClientError::State { path: state_path.to_owned(), message: format!("{e:#}") })?;
        }
        Ok(Verification {
            report,
            previous_size: previous.map(|p| p.tree_size),
            consistency_proof: consistency.map(|(hashes, ms)| ProofCost {
                hashes,
                bytes: hashes * 32,
                milliseconds: ms,
            }),
            seconds: started.elapsed().as_secs_f64(),
            ok,
        })
    }

    /// The inclusion proof of the entry recording `message_id`'s submission,
    /// checked here against a signed tree head.
    pub async fn prove(&self, message_id: MessageId) -> Result<Proven, ClientError> {
        let dir = self.directory().await?;
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
        Ok(Proven { index: entry.index, entry_bytes: entry.entry, entry: decoded, path, head, milliseconds })
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
        _ => String::new(),
    };
    format!("#{:<8} {} {:<12} {detail}", e.index, s("logged_at"), s("event"))
}

fn print_report(v: &Verification, json: bool) -> anyhow::Result<()> {
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
    }
    Ok(())
}

/// Runs an audit command; returns false when verification found failures.
pub async fn run(client: &Client, cmd: AuditCommand, json: bool) -> anyhow::Result<bool> {
    match cmd {
        AuditCommand::Verify { state } => {
            let state = state.unwrap_or_else(|| client.profile().state_dir().join("audit-state.json"));
            let bar = (!json && std::io::stderr().is_terminal()).then(|| {
                let b = indicatif::ProgressBar::new(0);
                b.set_style(
                    indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} entries, {per_sec}, ETA {eta}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b
            });
            let v = client
                .verify_log(&state, |done, total| {
                    if let Some(b) = &bar {
                        b.set_length(total);
                        b.set_position(done);
                    }
                })
                .await?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            print_report(&v, json)?;
            Ok(v.ok)
        }
        AuditCommand::Replay { from, to } => {
            let head = client.tree_head().await?;
            let to = to.unwrap_or(head.head.tree_size);
            let mut stream = client.auditor_rpc().replay(pb::ReplayRequest { from, to }).await?.into_inner();
            while let Some(e) = stream.message().await? {
                match decode_entry(&e.entry, e.index) {
                    Ok(entry) if json => out!("{}", crate::display::json_line(&entry_json(&entry))),
                    Ok(entry) => out!("{}", crate::display::safe(&entry_line(&entry))),
                    Err(err) => out!("#{} unreadable: {err}", e.index),
                }
            }
            Ok(true)
        }
        AuditCommand::Prove { id } => {
            let id: MessageId = id.parse()?;
            let p = client.prove(id).await?;
            let out = json!({
                "entry": entry_json(&p.entry),
                "entry_bytes": hex::encode(&p.entry_bytes),
                "leaf_index": p.index,
                "tree_size": p.head.head.tree_size,
                "root": p.head.head.root_hash.to_hex(),
                "tree_head_timestamp": p.head.head.timestamp.to_string(),
                "tree_head_signature": hex::encode(p.head.signature),
                "audit_path": p.path.iter().map(Digest::to_hex).collect::<Vec<_>>(),
            });
            if json {
                out!("{out}");
            } else {
                out!("{}", crate::display::safe(&entry_line(&p.entry)));
                out!(
                    "included at index {} of {} entries; root {} signed by the broker at {}",
                    p.index,
                    p.head.head.tree_size,
                    p.head.head.root_hash,
                    p.head.head.timestamp
                );
                out!(
                    "proof of {} hashes ({} bytes) fetched and verified (RFC 9162) in {:.1} ms; to check it offline, keep this:",
                    p.path.len(),
                    p.path.len() * 32,
                    p.milliseconds
                );
                out!("{}", serde_json::to_string_pretty(&out)?);
            }
            Ok(true)
        }
    }
}
