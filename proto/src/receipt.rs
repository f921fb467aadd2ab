//! What the broker attests with its log key: receipts (a message's status
//! changed) and tree heads (the audit log's size and root at a time).

use crate::Digest;
use crate::ack::{AckError, SignedAck};
use crate::canonical::{Canonical, label};
use crate::ids::{AgencyId, IdError, MessageId};
use crate::keys::{BadSignature, SigningKey, VerifyingKey};
use crate::pb;
use crate::time::Timestamp;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReceiptStatus {
    Accepted,
    Delivered,
    Acknowledged,
    Escalated,
    Expired,
}

impl ReceiptStatus {
    pub const ALL: [ReceiptStatus; 5] = [
        ReceiptStatus::Accepted,
        ReceiptStatus::Delivered,
        ReceiptStatus::Acknowledged,
        ReceiptStatus::Escalated,
        ReceiptStatus::Expired,
    ];

    /// The one-byte code in canonical encodings (the protobuf enum number).
    pub fn code(self) -> u8 {
        match self {
            ReceiptStatus::Accepted => 1,
            ReceiptStatus::Delivered => 2,
            ReceiptStatus::Acknowledged => 3,
            ReceiptStatus::Escalated => 4,
            ReceiptStatus::Expired => 5,
        }
    }

    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| i32::from(s.code()) == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptStatus::Accepted => "ACCEPTED",
            ReceiptStatus::Delivered => "DELIVERED",
            ReceiptStatus::Acknowledged => "ACKNOWLEDGED",
            ReceiptStatus::Escalated => "ESCALATED",
            ReceiptStatus::Expired => "EXPIRED",
        }
    }
}

impl std::fmt::Display for ReceiptStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReceiptStatement {
    pub message_id: MessageId,
    pub envelope_digest: Digest,
    pub status: ReceiptStatus,
    pub at: Timestamp,
    pub sender: AgencyId,
    pub recipient: AgencyId,
    pub recipient_sequence: u64,
    pub log_index: u64,
    /// DELIVERED: the principal delivered to; ACKNOWLEDGED: the principal that
    /// sent the ack; ESCALATED: the contact alerted. Otherwise empty.
    pub detail: String,
}

impl ReceiptStatement {
    /// canonical(`referral.v1/receipt-signature`, message id, envelope digest,
    /// u8 status, i64 at_ms, sender, recipient, u64 recipient sequence,
    /// u64 log index, detail).
    pub fn signing_input(&self) -> Vec<u8> {
        let mut c = Canonical::new(label::RECEIPT_SIGNATURE);
        c.bytes(self.message_id.as_bytes())
            .bytes(self.envelope_digest.as_bytes())
            .u8(self.status.code())
            .i64(self.at.0)
            .text(self.sender.as_str())
            .text(self.recipient.as_str())
            .u64(self.recipient_sequence)
            .u64(self.log_index)
            .text(&self.detail);
        c.finish()
    }

    /// A receipt with an all-zero signature, to be stored and signed later
    /// with [`sign_stored`].
    pub fn sign_placeholder(self, ack: Option<SignedAck>) -> Receipt {
        Receipt { statement: self, signature: [0; 64], ack }
    }

    pub fn sign(self, key: &SigningKey, ack: Option<SignedAck>) -> Receipt {
        let signature = key.sign(&self.signing_input());
        Receipt { statement: self, signature, ack }
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Receipt {
    pub statement: ReceiptStatement,
    pub signature: [u8; 64],
    pub ack: Option<SignedAck>,
}

/// A receipt from the wire could not be read or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("receipt lacks {0}")]
    Missing(&'static str),
    #[error("receipt field: {0}")]
    Id(#[from] IdError),
    #[error("receipt status {0} is unknown")]
    Status(i32),
    #[error("receipt signature does not verify with the broker log key")]
    BadSignature,
    #[error("receipt's ack: {0}")]
    Ack(#[from] AckError),
}

impl Receipt {
    /// Checks the broker's signature. That proves what the broker says, no
    /// more: whether an attached ack proves an ACKNOWLEDGED (its agency, its
    /// message and envelope, its own signature) is PROTOCOL.md 8.4's second
    /// half, checked by the receiver (`agency_client::trust`), which knows
    /// what it asked for.
    pub fn verify(&self, log_key: &VerifyingKey) -> Result<(), ReceiptError> {
        log_key
            .verify(&self.statement.signing_input(), &self.signature)
            .map_err(|BadSignature| ReceiptError::BadSignature)
    }
}

impl From<&Receipt> for pb::Receipt {
    fn from(r: &Receipt) -> Self {
        let s = &r.statement;
        pb::Receipt {
            statement: Some(pb::ReceiptStatement {
                message_id: s.message_id.as_bytes().to_vec(),
                envelope_digest: s.envelope_digest.0.to_vec(),
                status: i32::from(s.status.code()),
                at_ms: s.at.0,
                sender: s.sender.to_string(),
                recipient: s.recipient.to_string(),
                recipient_sequence: s.recipient_sequence,
                log_index: s.log_index,
                detail: s.detail.clone(),
            }),
            broker_signature: r.signature.to_vec(),
            ack: r.ack.as_ref().map(pb::SignedAck::from),
        }
    }
}

impl TryFrom<pb::ReceiptStatement> for ReceiptStatement {
    type Error = ReceiptError;

    fn try_from(s: pb::ReceiptStatement) -> Result<Self, ReceiptError> {
        Ok(ReceiptStatement {
            message_id: MessageId::from_bytes(&s.message_id)?,
            envelope_digest: Digest::from_slice(&s.envelope_digest).ok_or(ReceiptError::Missing("envelope_digest"))?,
            status: ReceiptStatus::from_code(s.status).ok_or(ReceiptError::Status(s.status))?,
            at: Timestamp(s.at_ms),
            sender: AgencyId::new(s.sender)?,
            recipient: AgencyId::new(s.recipient)?,
            recipient_sequence: s.recipient_sequence,
            log_index: s.log_index,
            detail: s.detail,
        })
    }
}

impl TryFrom<pb::Receipt> for Receipt {
    type Error = ReceiptError;

    fn try_from(p: pb::Receipt) -> Result<Self, ReceiptError> {
        Ok(Receipt {
            statement: ReceiptStatement::try_from(p.statement.ok_or(ReceiptError::Missing("statement"))?)?,
            signature: p
                .broker_signature
                .as_slice()
                .try_into()
                .map_err(|_| ReceiptError::Missing("broker_signature"))?,
            ack: p.ack.map(SignedAck::try_from).transpose()?,
        })
    }
}

/// Signs a receipt held in its wire form with an empty signature: the
/// broker stores receipts unsigned and signs them as it sends them
/// (Ed25519 is deterministic, so every copy carries the same signature).
pub fn sign_stored(mut p: pb::Receipt, key: &SigningKey) -> Result<pb::Receipt, ReceiptError> {
    let statement = ReceiptStatement::try_from(p.statement.clone().ok_or(ReceiptError::Missing("statement"))?)?;
    p.broker_signature = key.sign(&statement.signing_input()).to_vec();
    Ok(p)
}

/// The audit log's size and root hash at a time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TreeHead {
    pub tree_size: u64,
    pub root_hash: Digest,
    pub timestamp: Timestamp,
}

impl TreeHead {
    /// canonical(`referral.v1/tree-head-signature`, u64 tree size, root hash, i64 timestamp_ms).
    pub fn signing_input(&self) -> Vec<u8> {
        let mut c = Canonical::new(label::TREE_HEAD_SIGNATURE);
        c.u64(self.tree_size).bytes(self.root_hash.as_bytes()).i64(self.timestamp.0);
        c.finish()
    }

    pub fn sign(self, key: &SigningKey) -> SignedTreeHead {
        SignedTreeHead { head: self, signature: key.sign(&self.signing_input()) }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SignedTreeHead {
    pub head: TreeHead,
    pub signature: [u8; 64],
}

impl SignedTreeHead {
    pub fn verify(&self, log_key: &VerifyingKey) -> Result<(), BadSignature> {
        log_key.verify(&self.head.signing_input(), &self.signature)
    }

    pub fn to_pb(&self) -> pb::SignedTreeHead {
        pb::SignedTreeHead {
            tree_size: self.head.tree_size,
            root_hash: self.head.root_hash.0.to_vec(),
            timestamp_ms: self.head.timestamp.0,
            signature: self.signature.to_vec(),
        }
    }

    pub fn from_pb(p: &pb::SignedTreeHead) -> Option<Self> {
        Some(Self {
            head: TreeHead {
                tree_size: p.tree_size,
                root_hash: Digest::from_slice(&p.root_hash)?,
                timestamp: Timestamp(p.timestamp_ms),
            },
            signature: p.signature.as_slice().try_into().ok()?,
        })
    }
}
