//! Several broker nodes on one store (PostgreSQL): what a committed batch
//! tells the other nodes' hubs, so that a subscriber connected to any node
//! is woken promptly (see [`crate::store::Store::watch_changes`]).
//!
//! A batch's changes are its hub effects: per agency the new queue
//! sequence and receipt cursor, the settled and escalation events, and the
//! audit log's new size and root. They hold ids, sequences and the signed
//! acks and alerts the agencies receive anyway, never a payload; they are
//! stored beside the batch in the database (never in a NOTIFY, which
//! carries only a number). A node that may have missed some re-reads its
//! hub's counters and the log's size from the store; subscribers then
//! catch up by sequence as after any wake-up.

use std::sync::{Arc, Weak};

use referral_proto::Digest;
use referral_proto::ids::AgencyId;
use referral_proto::pb;

use crate::hub::{Hub, HubEvent};
use crate::ledger::Effect;
use crate::store::ChangeSink;

const VERSION: u8 = 1;
const MESSAGE: u8 = 1;
const RECEIPT: u8 = 2;
const SETTLED: u8 = 3;
const ESCALATION: u8 = 4;

/// The changes of a batch after which the log is `tree` (`grew`: the
/// batch appended to it); empty when other nodes need not be told anything.
pub fn encode(effects: &[Effect], tree: (u64, Digest), grew: bool) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend_from_slice(&tree.0.to_be_bytes());
    out.extend_from_slice(&tree.1.0);
    let header = out.len();
    for effect in effects {
        match effect {
            Effect::Message(a, seq) => {
                out.push(MESSAGE);
                put_str(&mut out, a.as_str());
                out.extend_from_slice(&seq.to_be_bytes());
            }
            Effect::Receipt(a, cursor) => {
                out.push(RECEIPT);
                put_str(&mut out, a.as_str());
                out.extend_from_slice(&cursor.to_be_bytes());
            }
            Effect::Event(a, HubEvent::Settled { message_id, sequence, ack }) => {
                out.push(SETTLED);
                put_str(&mut out, a.as_str());
                out.extend_from_slice(message_id);
                out.extend_from_slice(&sequence.to_be_bytes());
                put_bytes(&mut out, &prost::Message::encode_to_vec(ack));
            }
            Effect::Event(a, HubEvent::Escalation { contact, alert }) => {
                out.push(ESCALATION);
                put_str(&mut out, a.as_str());
                put_str(&mut out, contact.as_deref().unwrap_or(""));
                put_bytes(&mut out, &prost::Message::encode_to_vec(alert));
            }
            Effect::Count(_) | Effect::Refused(_) | Effect::DeadlineSet(_) => {}
        }
    }
    // The log's growth alone is worth telling (readers wait for it).
    if out.len() == header && !grew { Vec::new() } else { out }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(n)
    }
    fn agency(&mut self) -> Option<AgencyId> {
        AgencyId::new(std::str::from_utf8(self.bytes()?).ok()?).ok()
    }
}

/// What [`decode`] found.
#[derive(Debug)]
pub struct Changes {
    pub tree: (u64, Digest),
    pub messages: Vec<(AgencyId, u64)>,
    pub receipts: Vec<(AgencyId, u64)>,
    pub events: Vec<(AgencyId, HubEvent)>,
}

/// Reads what [`encode`] wrote; None when it is not that.
pub fn decode(bytes: &[u8]) -> Option<Changes> {
    let mut r = Reader(bytes);
    if r.take(1)? != [VERSION] {
        return None;
    }
    let size = r.u64()?;
    let root = Digest(r.take(32)?.try_into().ok()?);
    let mut c = Changes { tree: (size, root), messages: vec![], receipts: vec![], events: vec![] };
    while let Some(kind) = r.take(1) {
        match kind[0] {
            MESSAGE => c.messages.push((r.agency()?, r.u64()?)),
            RECEIPT => c.receipts.push((r.agency()?, r.u64()?)),
            SETTLED => {
                let a = r.agency()?;
                let message_id: [u8; 16] = r.take(16)?.try_into().ok()?;
                let sequence = r.u64()?;
                let ack: pb::SignedAck = prost::Message::decode(r.bytes()?).ok()?;
                c.events.push((a, HubEvent::Settled { message_id, sequence, ack }));
            }
            ESCALATION => {
                let a = r.agency()?;
                let contact = std::str::from_utf8(r.bytes()?).ok()?;
                let contact = (!contact.is_empty()).then(|| contact.to_owned());
                let alert: pb::Escalation = prost::Message::decode(r.bytes()?).ok()?;
                c.events.push((a, HubEvent::Escalation { contact, alert }));
            }
            _ => return None,
        }
    }
    Some(c)
}

/// Tells `hub` what another node committed (or, given None, re-reads its
/// counters and the log's size); false once the hub is gone.
fn apply(hub: &Weak<Hub>, changes: Option<&[u8]>) -> bool {
    let Some(hub) = hub.upgrade() else { return false };
    match changes.map(decode) {
        Some(Some(c)) => {
            // The log size first: records are read only below it
            // (`store::tables::Durable`), so a woken reader finds them.
            hub.tree_durable(c.tree.0, c.tree.1);
            for (a, seq) in &c.messages {
                hub.message_durable(a, *seq);
            }
            for (a, cursor) in &c.receipts {
                hub.receipt_durable(a, *cursor);
            }
            for (a, event) in c.events {
                hub.publish(&a, event);
            }
            return true;
        }
        Some(None) => tracing::error!("another broker node's changes could not be read; re-reading the counters"),
        None => tracing::warn!("another broker node's changes may have been missed; re-reading the counters"),
    }
    if let Err(e) = hub.reread() {
        tracing::error!(error = %e, "re-reading the counters after missed changes failed");
    }
    true
}

/// The sink that feeds other nodes' changes to `hub`.
pub fn sink(hub: &Arc<Hub>) -> ChangeSink {
    let hub = Arc::downgrade(hub);
    Box::new(move |changes| apply(&hub, changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agency(s: &str) -> AgencyId {
        AgencyId::new(s).unwrap()
    }

    #[test]
    fn changes_round_trip_and_carry_no_payload() {
        let ack = pb::SignedAck { statement: None, signature: vec![7; 64], note: None };
        let alert = pb::Escalation { message_id: vec![1; 16], sequence: 9, ..Default::default() };
        let effects = vec![
            Effect::Message(agency("social-a"), 5),
            Effect::Receipt(agency("police-b"), 8),
            Effect::Count("x"),
            Effect::Event(agency("social-a"), HubEvent::Settled { message_id: [2; 16], sequence: 5, ack }),
            Effect::Event(agency("police-b"), HubEvent::Escalation { contact: None, alert }),
            Effect::DeadlineSet(3),
        ];
        let bytes = encode(&effects, (42, Digest([3; 32])), true);
        let c = decode(&bytes).expect("decodes");
        assert_eq!(c.tree, (42, Digest([3; 32])));
        assert_eq!(c.messages, vec![(agency("social-a"), 5)]);
        assert_eq!(c.receipts, vec![(agency("police-b"), 8)]);
        assert_eq!(c.events.len(), 2);
        assert!(matches!(&c.events[0], (a, HubEvent::Settled { sequence: 5, .. }) if a == &agency("social-a")));
        assert!(matches!(&c.events[1], (_, HubEvent::Escalation { contact: None, alert }) if alert.sequence == 9));
        // Nothing to tell: no bytes; a truncated or foreign record: refused.
        assert!(encode(&[Effect::Count("x")], (42, Digest([3; 32])), false).is_empty());
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(decode(&[9, 0, 0]).is_none());
    }
}
