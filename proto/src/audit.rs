//! Audit log entries: the exact bytes the Merkle tree commits to, decoded for
//! people and tools. Entries hold metadata and digests only.

use crate::pb;

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
}

impl EventKind {
    pub fn of(event: &pb::audit_entry::Event) -> Self {
        use pb::audit_entry::Event as E;
        match event {
            E::Submitted(_) => EventKind::Submitted,
            E::Rejected(_) => EventKind::Rejected,
            E::Delivered(_) => EventKind::Delivered,
            E::Acknowledged(_) => EventKind::Acknowledged,
            E::Escalated(_) => EventKind::Escalated,
            E::Expired(_) => EventKind::Expired,
            E::Purged(_) => EventKind::Purged,
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
        }
    }
}

/// The format of `referral.v1.AuditEntry` this crate writes.
pub const AUDIT_ENTRY_FORMAT_VERSION: u32 = 1;

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
        return Err(EntryError::IndexMismatch {
            stated: e.index,
            actual: index,
        });
    }
    Ok(e)
}
