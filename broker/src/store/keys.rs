//! Key layouts of the tables. Integers are big-endian so that keys sort in
//! numeric order; agency ids are length-prefixed so that one agency's keys
//! never run into another's.

use referral_proto::ids::{AgencyId, MessageId};

fn agency_prefix(agency: &AgencyId) -> Vec<u8> {
    let b = agency.as_str().as_bytes();
    let mut k = Vec::with_capacity(1 + b.len() + 8);
    k.push(b.len() as u8);
    k.extend_from_slice(b);
    k
}

pub fn message(id: &MessageId) -> Vec<u8> {
    id.as_bytes().to_vec()
}

/// Queue key: recipient, sequence.
pub fn queue(recipient: &AgencyId, seq: u64) -> Vec<u8> {
    let mut k = agency_prefix(recipient);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn queue_seq(key: &[u8]) -> Option<u64> {
    let len = *key.first()? as usize;
    Some(u64::from_be_bytes(key.get(1 + len..1 + len + 8)?.try_into().ok()?))
}

/// What a deadline does when it passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadlineKind {
    /// The ack deadline: escalate.
    Escalate = 1,
    /// The unacknowledged retention: expire and purge.
    Expire = 2,
    /// The retention after ack: purge the ciphertext.
    Purge = 3,
    /// An overlap session (its id in the message id's place) not finished
    /// in time: delete its sealed chunks and log that it expired.
    OverlapExpire = 4,
}

impl DeadlineKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Escalate),
            2 => Some(Self::Expire),
            3 => Some(Self::Purge),
            4 => Some(Self::OverlapExpire),
            _ => None,
        }
    }
}

fn sortable_ms(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// Deadline key: due time, kind, message id.
pub fn deadline(due_ms: i64, kind: DeadlineKind, id: &MessageId) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.extend_from_slice(&sortable_ms(due_ms));
    k.push(kind as u8);
    k.extend_from_slice(id.as_bytes());
    k
}

/// The first key after every deadline due at or before `ms`.
pub fn deadline_upper(ms: i64) -> Vec<u8> {
    sortable_ms(ms.saturating_add(1)).to_vec()
}

pub fn parse_deadline(key: &[u8]) -> Option<(i64, DeadlineKind, MessageId)> {
    if key.len() != 25 {
        return None;
    }
    let ms = (u64::from_be_bytes(key[..8].try_into().ok()?) ^ (1 << 63)) as i64;
    Some((ms, DeadlineKind::from_u8(key[8])?, MessageId::from_bytes(&key[9..]).ok()?))
}

/// Receipt key: message id, receipt number.
pub fn receipt(id: &MessageId, n: u8) -> Vec<u8> {
    let mut k = id.as_bytes().to_vec();
    k.push(n);
    k
}

/// Receipt feed key: sender, cursor.
pub fn receipt_feed(sender: &AgencyId, cursor: u64) -> Vec<u8> {
    let mut k = agency_prefix(sender);
    k.extend_from_slice(&cursor.to_be_bytes());
    k
}

pub fn receipt_feed_prefix(sender: &AgencyId) -> Vec<u8> {
    agency_prefix(sender)
}

pub fn audit(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

pub fn merkle(level: u32, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(level as u8);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

pub fn delivery(id: &MessageId, principal: &str) -> Vec<u8> {
    let mut k = id.as_bytes().to_vec();
    k.extend_from_slice(principal.as_bytes());
    k
}

/// Keys of the overlaps table, each starting with a byte that says what it holds.
pub mod overlap {
    use referral_proto::ids::{AgencyId, MessageId};

    /// Session id -> `OverlapRecord`.
    pub fn session(id: &MessageId) -> Vec<u8> {
        [b"s".as_slice(), id.as_bytes()].concat()
    }

    /// Session id, sending side (0 initiator, 1 responder), kind, index -> encoded chunk.
    pub fn chunk(id: &MessageId, side: u8, kind: u8, index: u32) -> Vec<u8> {
        [b"c".as_slice(), id.as_bytes(), &[side, kind], &index.to_be_bytes()].concat()
    }

    /// Every chunk key of a session.
    pub fn chunks_prefix(id: &MessageId) -> Vec<u8> {
        [b"c".as_slice(), id.as_bytes()].concat()
    }

    /// Agency, session id -> nothing: the sessions an agency takes part in,
    /// oldest first (session ids are UUIDv7).
    pub fn by_agency(agency: &AgencyId, id: &MessageId) -> Vec<u8> {
        [by_agency_prefix(agency).as_slice(), id.as_bytes()].concat()
    }

    pub fn by_agency_prefix(agency: &AgencyId) -> Vec<u8> {
        let b = agency.as_str().as_bytes();
        [b"a".as_slice(), &[b.len() as u8], b].concat()
    }

    /// UTC day, the pair (in sorted order) -> sessions proposed that day.
    pub fn pair_day(day: i64, a: &AgencyId, b: &AgencyId) -> Vec<u8> {
        let (x, y) = if a <= b { (a, b) } else { (b, a) };
        let mut k = vec![b'd'];
        k.extend_from_slice(&day.to_be_bytes());
        for agency in [x, y] {
            k.push(agency.as_str().len() as u8);
            k.extend_from_slice(agency.as_str().as_bytes());
        }
        k
    }
}

/// Meta keys.
pub mod meta {
    use referral_proto::ids::AgencyId;

    pub const FORMAT: &[u8] = b"store-format";
    pub const AUDIT_SIZE: &[u8] = b"audit-size";
    pub const TREE_HEAD: &[u8] = b"tree-head";
    /// Written by the health check to prove the store takes writes.
    pub const HEALTH_PROBE: &[u8] = b"health-probe";
    /// The newest directory version this broker has served (rollback guard).
    pub const DIRECTORY_VERSION: &[u8] = b"directory-version";

    pub const SEQ_PREFIX: &[u8] = b"seq:";
    pub const CURSOR_PREFIX: &[u8] = b"cursor:";
    pub const PENDING_PREFIX: &[u8] = b"pending:";

    /// The last sequence number given to a message for `recipient`.
    pub fn last_seq(recipient: &AgencyId) -> Vec<u8> {
        [SEQ_PREFIX, recipient.as_str().as_bytes()].concat()
    }

    /// The last receipt cursor of `sender`.
    pub fn last_cursor(sender: &AgencyId) -> Vec<u8> {
        [CURSOR_PREFIX, sender.as_str().as_bytes()].concat()
    }

    /// How many messages for `recipient` wait for an acknowledgement.
    pub fn pending(recipient: &AgencyId) -> Vec<u8> {
        [PENDING_PREFIX, recipient.as_str().as_bytes()].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_keys_sort_by_time_and_parse_back() {
        let id = MessageId::generate(1_000);
        let a = deadline(-5, DeadlineKind::Purge, &id);
        let b = deadline(3, DeadlineKind::Escalate, &id);
        let c = deadline(1_000_000, DeadlineKind::Expire, &id);
        assert!(a < b && b < c);
        assert!(b < deadline_upper(3) && deadline_upper(3) < deadline(4, DeadlineKind::Escalate, &id));
        assert_eq!(parse_deadline(&c), Some((1_000_000, DeadlineKind::Expire, id)));
    }

    #[test]
    fn queue_keys_of_different_agencies_never_interleave() {
        let a = AgencyId::new("abc").unwrap();
        let ab = AgencyId::new("abcd").unwrap();
        let k1 = queue(&a, u64::MAX);
        let k2 = queue(&ab, 0);
        assert!(!k2.starts_with(&queue(&a, 0)[..4]) || k1 < k2);
        assert_eq!(queue_seq(&queue(&a, 42)), Some(42));
    }
}
