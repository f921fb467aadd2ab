//! The records the store holds, each encoded with a leading format-version
//! byte so that a future broker can read (or refuse) old data knowingly.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Version byte of every record this broker writes.
pub const RECORD_VERSION: u8 = 1;

/// The store format marker kept under `meta/store-format`.
pub const STORE_FORMAT: &[u8] = b"referral-broker-store v1";

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    out.extend(postcard::to_allocvec(record).expect("records always serialize"));
    out
}

pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| StoreError::Corrupt(format!("{what} record: {e}")))
        }
        Some((v, _)) => Err(StoreError::Corrupt(format!(
            "{what} record has format version {v}, this broker reads {RECORD_VERSION}"
        ))),
        None => Err(StoreError::Corrupt(format!("{what} record is empty"))),
    }
}

/// Where a message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageState {
    /// Waiting for an acknowledgement.
    Pending,
    Acknowledged {
        at_ms: i64,
    },
    /// Never acknowledged within the retention period.
    Expired {
        at_ms: i64,
    },
}

/// Everything the broker knows about a message except its ciphertext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub sender: String,
    pub recipient: String,
    pub urgency: u8,
    pub created_at_ms: i64,
    pub accepted_at_ms: i64,
    pub envelope_digest: [u8; 32],
    pub payload_len: u32,
    pub sequence: u64,
    pub submit_log_index: u64,
    pub ack_deadline_ms: i64,
    pub expires_at_ms: i64,
    pub state: MessageState,
    pub escalated: bool,
    pub delivered: bool,
    pub purge_at_ms: Option<i64>,
    pub purged: bool,
    /// Receipts issued so far (receipt numbers are 0..receipt_count).
    pub receipt_count: u8,
}

/// A receipt feed entry: which receipt of which message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    pub message_id: [u8; 16],
    pub receipt: u8,
}

/// Where an overlap session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OverlapState {
    Proposed,
    Accepted,
    /// Both sides reported their transcript hash; the chunks are deleted.
    Finished,
    /// Not finished by `[overlap] session_timeout` after the proposal: the
    /// chunks are deleted and nothing more is taken. (A variant, not a
    /// field, so that records written before it still decode.)
    Expired {
        log_index: u64,
        at_ms: i64,
    },
}

/// A chunk the broker relayed: which, whose, and the audit entry that records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedChunk {
    /// 0 initiator, 1 responder.
    pub side: u8,
    pub kind: u8,
    pub index: u32,
    pub count: u32,
    pub digest: [u8; 32],
    pub log_index: u64,
}

/// Everything the broker knows about an overlap session: metadata, the
/// signed statements (as received, encoded), and which chunks it relayed.
/// Each part cites its audit entry, so readers show only durable parts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlapRecord {
    pub initiator: String,
    pub responder: String,
    pub state: OverlapState,
    pub initiator_size: u32,
    pub responder_size: u32,
    pub proposed_at_ms: i64,
    pub accepted_at_ms: i64,
    /// (encoded `SignedOverlapStatement`, audit index) of each statement.
    pub proposal: (Vec<u8>, u64),
    pub acceptance: Option<(Vec<u8>, u64)>,
    pub initiator_finish: Option<(Vec<u8>, u64)>,
    pub responder_finish: Option<(Vec<u8>, u64)>,
    pub chunks: Vec<RelayedChunk>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_their_version_and_refuse_others() {
        let r = FeedEntry { message_id: [7; 16], receipt: 2 };
        let mut bytes = encode(&r);
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(decode::<FeedEntry>("feed", &bytes).unwrap(), r);
        bytes[0] = 9;
        let err = decode::<FeedEntry>("feed", &bytes).unwrap_err().to_string();
        assert!(err.contains("format version 9"), "{err}");
        assert!(decode::<FeedEntry>("feed", &[]).is_err());
    }
}
