//! Live fan-out: wakes subscribers and receipt watchers when something for
//! their agency has been made durable.
//!
//! The hub carries no payloads and holds no queue: per agency, a watch of the
//! newest durable queue sequence and receipt cursor (readers fetch what they
//! lack from the store), and a bounded broadcast of small events (settled,
//! escalated). A slow reader therefore costs nothing but its own stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use referral_proto::Digest;
use referral_proto::ids::AgencyId;
use referral_proto::pb;
use tokio::sync::{broadcast, watch};

use crate::store::keys::meta;
use crate::store::{Store, StoreError};

/// Capacity of each agency's event broadcast; a subscriber further behind
/// than this is disconnected and catches up on reconnect.
pub const EVENT_CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub enum HubEvent {
    /// A message of this agency was acknowledged.
    Settled { message_id: [u8; 16], sequence: u64, ack: pb::SignedAck },
    /// An ack deadline was missed; `contact` is the principal to alert
    /// specially (or none), and every subscriber of the agency is told.
    Escalation { contact: Option<String>, alert: pb::Escalation },
}

#[derive(Debug)]
pub struct AgencyHub {
    /// The newest durable queue sequence for this agency as recipient.
    pub queue_seq: watch::Sender<u64>,
    /// The newest durable receipt cursor for this agency as sender.
    pub receipt_cursor: watch::Sender<u64>,
    pub events: broadcast::Sender<Arc<HubEvent>>,
}

#[derive(Debug)]
pub struct Hub {
    store: Arc<dyn Store>,
    agencies: Mutex<HashMap<AgencyId, Arc<AgencyHub>>>,
    /// (size, root) of the durable audit log.
    pub tree: watch::Sender<(u64, Digest)>,
}

pub(crate) fn read_u64(store: &dyn Store, key: &[u8]) -> Result<u64, StoreError> {
    crate::store::tables::Tables(store).counter(key)
}

impl Hub {
    pub fn new(store: Arc<dyn Store>, tree: (u64, Digest)) -> Self {
        Self { store, agencies: Mutex::new(HashMap::new()), tree: watch::Sender::new(tree) }
    }

    /// The hub of `agency`, created from the store's counters on first use.
    pub fn agency(&self, agency: &AgencyId) -> Result<Arc<AgencyHub>, StoreError> {
        let mut map = self.agencies.lock().expect("hub lock");
        if let Some(h) = map.get(agency) {
            return Ok(h.clone());
        }
        let h = Arc::new(AgencyHub {
            queue_seq: watch::Sender::new(read_u64(&*self.store, &meta::last_seq(agency))?),
            receipt_cursor: watch::Sender::new(read_u64(&*self.store, &meta::last_cursor(agency))?),
            events: broadcast::Sender::new(EVENT_CAPACITY),
        });
        map.insert(agency.clone(), h.clone());
        Ok(h)
    }

    /// Called by the committer after a commit is durable.
    pub fn message_durable(&self, recipient: &AgencyId, seq: u64) {
        if let Ok(h) = self.agency(recipient) {
            h.queue_seq.send_modify(|v| *v = (*v).max(seq));
        }
    }

    pub fn receipt_durable(&self, sender: &AgencyId, cursor: u64) {
        if let Ok(h) = self.agency(sender) {
            h.receipt_cursor.send_modify(|v| *v = (*v).max(cursor));
        }
    }

    pub fn publish(&self, agency: &AgencyId, event: HubEvent) {
        if let Ok(h) = self.agency(agency) {
            // No receivers is fine: nobody is listening right now.
            let _ = h.events.send(Arc::new(event));
        }
    }

    /// The audit log reached `size` with `root` (never moves it back: a
    /// node may hear of another's append before its own older one).
    pub fn tree_durable(&self, size: u64, root: Digest) {
        self.tree.send_if_modified(|t| {
            let grew = size > t.0;
            if grew {
                *t = (size, root);
            }
            grew
        });
    }

    /// Re-reads every known agency's counters and the log's size and root
    /// from the store (after changes of other nodes may have been missed).
    pub fn reread(&self) -> Result<(), StoreError> {
        // The log size first: records are read only below it.
        let log = crate::audit::AuditLog::restore(&*self.store)?;
        self.tree_durable(log.size(), log.root());
        let known: Vec<(AgencyId, Arc<AgencyHub>)> =
            self.agencies.lock().expect("hub lock").iter().map(|(a, h)| (a.clone(), h.clone())).collect();
        for (agency, h) in known {
            let seq = read_u64(&*self.store, &meta::last_seq(&agency))?;
            h.queue_seq.send_modify(|v| *v = (*v).max(seq));
            let cursor = read_u64(&*self.store, &meta::last_cursor(&agency))?;
            h.receipt_cursor.send_modify(|v| *v = (*v).max(cursor));
        }
        Ok(())
    }

    /// Open Subscribe streams of `agency` (each watches its queue).
    pub fn live_subscribers(&self, agency: &AgencyId) -> u64 {
        let map = self.agencies.lock().expect("hub lock");
        map.get(agency).map_or(0, |h| h.queue_seq.receiver_count() as u64)
    }

    /// Number of agencies with live state, for metrics.
    pub fn agency_count(&self) -> usize {
        self.agencies.lock().expect("hub lock").len()
    }
}
