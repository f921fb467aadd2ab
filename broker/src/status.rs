//! What an operator asks first: queue depths, the oldest unacknowledged
//! message, the log's size and tree head, the store's size. Gathered from
//! the store, for a running broker (admin endpoint) or a stopped one
//! (`broker status` on its data directory).

use std::collections::BTreeMap;

use referral_proto::ids::AgencyId;
use referral_proto::pb;
use referral_proto::receipt::SignedTreeHead;
use referral_proto::time::Timestamp;
use serde::{Deserialize, Serialize};

use crate::store::tables::Tables;
use crate::store::{Store, StoreError, keys};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueStatus {
    /// Messages waiting for an acknowledgement.
    pub pending: u64,
    /// The newest queue sequence given out.
    pub last_sequence: u64,
    /// Age of the oldest waiting message, seconds.
    pub oldest_unacked_seconds: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Whether a broker answered (through its admin endpoint); false when
    /// the status was read from a stopped broker's data directory.
    #[serde(default)]
    pub running: bool,
    /// Live Subscribe streams per agency of the directory (a running broker
    /// only): 0 means nobody on call is listening for that agency.
    #[serde(default)]
    pub live_subscribers: BTreeMap<String, u64>,
    pub queues: BTreeMap<String, QueueStatus>,
    pub audit_log_entries: u64,
    pub tree_head: Option<TreeHeadStatus>,
    pub store_bytes: u64,
    pub directory_version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TreeHeadStatus {
    pub tree_size: u64,
    pub root: String,
    pub timestamp: String,
}

fn agencies_with(store: &dyn Store, prefix: &[u8]) -> Result<Vec<(AgencyId, u64)>, StoreError> {
    Tables(store).counters_by_agency(prefix)
}

/// The oldest waiting message of `agency`: its accept time.
pub fn oldest_pending(store: &dyn Store, agency: &AgencyId) -> Result<Option<Timestamp>, StoreError> {
    let tables = Tables(store);
    let first = tables.queue(agency, 0, u64::MAX, 1)?;
    let Some((_, id)) = first.first() else { return Ok(None) };
    Ok(tables.message(id)?.map(|rec| Timestamp(rec.accepted_at_ms)))
}

pub fn gather(store: &dyn Store, now: Timestamp) -> Result<Status, StoreError> {
    let mut queues = BTreeMap::new();
    let pending: BTreeMap<AgencyId, u64> = agencies_with(store, keys::meta::PENDING_PREFIX)?.into_iter().collect();
    for (agency, last_sequence) in agencies_with(store, keys::meta::SEQ_PREFIX)? {
        let oldest = oldest_pending(store, &agency)?.map(|t| (now.0 - t.0) / 1000);
        queues.insert(
            agency.to_string(),
            QueueStatus {
                pending: pending.get(&agency).copied().unwrap_or(0),
                last_sequence,
                oldest_unacked_seconds: oldest,
            },
        );
    }
    let tree_head = match Tables(store).meta(keys::meta::TREE_HEAD)? {
        None => None,
        Some(b) => {
            let p: pb::SignedTreeHead =
                prost::Message::decode(b.as_slice()).map_err(|_| StoreError::Corrupt("tree head".into()))?;
            SignedTreeHead::from_pb(&p).map(|h| TreeHeadStatus {
                tree_size: h.head.tree_size,
                root: h.head.root_hash.to_hex(),
                timestamp: h.head.timestamp.to_string(),
            })
        }
    };
    Ok(Status {
        running: false,
        live_subscribers: BTreeMap::new(),
        queues,
        audit_log_entries: crate::hub::read_u64(store, keys::meta::AUDIT_SIZE)?,
        tree_head,
        store_bytes: store.size_on_disk()?,
        directory_version: crate::hub::read_u64(store, keys::meta::DIRECTORY_VERSION)?,
    })
}

/// A few lines for people.
pub fn render(s: &Status) -> String {
    let mut out = if s.running {
        "broker: running (answered on its admin endpoint)\n".to_owned()
    } else {
        "broker: not running, or its admin endpoint is off (read from its data directory)\n".to_owned()
    };
    for (agency, n) in &s.live_subscribers {
        if *n == 0 {
            out.push_str(&format!("no live subscriber for agency {agency}: nobody on call is listening\n"));
        }
    }
    out.push_str(&format!("audit log: {} entries", s.audit_log_entries));
    if let Some(h) = &s.tree_head {
        out.push_str(&format!("; last signed tree head: {} entries at {}, root {}", h.tree_size, h.timestamp, h.root));
    }
    out.push_str(&format!(
        "\nstore: {:.1} MiB on disk; directory version {}\n",
        s.store_bytes as f64 / 1048576.0,
        s.directory_version
    ));
    if s.queues.is_empty() {
        out.push_str("no queues yet\n");
    }
    for (agency, q) in &s.queues {
        let oldest = q.oldest_unacked_seconds.map_or("-".to_owned(), |s| format!("{s} s"));
        out.push_str(&format!(
            "queue {agency:<28} pending {:>8}  last sequence {:>8}  oldest unacknowledged {oldest}\n",
            q.pending, q.last_sequence
        ));
    }
    out
}
