//! Typed access to the tables: the one place that encodes and decodes each
//! kind of record and builds each kind of key.
//!
//! [`Tables`] reads what the store holds; [`Writes`] builds a batch of
//! typed writes; [`Durable`] reads only what a durable commit made visible.
//! The store shows a batch's writes before its flush and fsync, and a failed
//! commit takes them back, so everything that answers a client reads
//! through [`Durable`]: the audit log size the committer announced after
//! its last durable commit is the watermark, and every record the broker
//! shows cites its audit entry (a message its `Submitted` entry, a receipt
//! its `log_index`). Only the committer, which decides against its own
//! writes, reads through [`Tables`].

use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::pb;

use super::keys::{self, DeadlineKind, meta};
use super::records::{self, FeedEntry, MessageRecord, OverlapRecord};
use super::{Batch, Store, StoreError, Table};

/// A stored deadline: when, what, for which message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline {
    pub due_ms: i64,
    pub kind: DeadlineKind,
    pub message_id: MessageId,
}

impl Deadline {
    fn key(&self) -> Vec<u8> {
        keys::deadline(self.due_ms, self.kind, &self.message_id)
    }
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn decode_receipt(id: &MessageId, n: u8, bytes: &[u8]) -> Result<pb::Receipt, StoreError> {
    prost::Message::decode(bytes).map_err(|_| corrupt(format!("receipt {id}/{n}")))
}

fn decode_u64(key: &[u8], v: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(
        v.try_into().map_err(|_| corrupt(format!("meta {:?} is not a u64", String::from_utf8_lossy(key))))?,
    ))
}

/// Typed reads of everything the store holds, durable or not.
#[derive(Debug, Clone, Copy)]
pub struct Tables<'a>(pub &'a dyn Store);

impl<'a> Tables<'a> {
    pub fn message(&self, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        self.0.get(Table::Messages, &keys::message(id))?.map(|b| records::decode("message", &b)).transpose()
    }

    /// The envelope as it was submitted (protobuf bytes); None once purged.
    pub fn envelope(&self, id: &MessageId) -> Result<Option<pb::Envelope>, StoreError> {
        self.0
            .get(Table::Envelopes, &keys::message(id))?
            .map(|b| prost::Message::decode(b.as_slice()).map_err(|_| corrupt(format!("envelope {id}"))))
            .transpose()
    }

    /// Receipt number `n` of message `id`, as stored (unsigned).
    pub fn receipt(&self, id: &MessageId, n: u8) -> Result<Option<pb::Receipt>, StoreError> {
        self.0.get(Table::Receipts, &keys::receipt(id, n))?.map(|b| decode_receipt(id, n, &b)).transpose()
    }

    /// Every receipt of a message, in the order issued.
    pub fn receipts(&self, id: &MessageId, rec: &MessageRecord) -> Result<Vec<pb::Receipt>, StoreError> {
        (0..rec.receipt_count)
            .map(|n| self.receipt(id, n)?.ok_or_else(|| corrupt(format!("receipt {id}/{n} is missing"))))
            .collect()
    }

    /// Whether `principal` has been sent message `id`.
    pub fn delivered_to(&self, id: &MessageId, principal: &str) -> Result<bool, StoreError> {
        Ok(self.0.get(Table::Deliveries, &keys::delivery(id, principal))?.is_some())
    }

    /// A meta counter (0 when never set).
    pub fn counter(&self, key: &[u8]) -> Result<u64, StoreError> {
        self.0.get(Table::Meta, key)?.map(|v| decode_u64(key, &v)).transpose().map(Option::unwrap_or_default)
    }

    /// A raw meta value.
    pub fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(Table::Meta, key)
    }

    /// Every meta counter whose key starts with `prefix`, by the agency
    /// named in the rest of the key.
    pub fn counters_by_agency(&self, prefix: &[u8]) -> Result<Vec<(AgencyId, u64)>, StoreError> {
        let mut out = Vec::new();
        for (k, v) in self.0.prefix(Table::Meta, prefix, usize::MAX)? {
            let Ok(agency) = AgencyId::new(String::from_utf8_lossy(&k[prefix.len()..]).into_owned()) else { continue };
            out.push((agency, decode_u64(&k, &v)?));
        }
        Ok(out)
    }

    /// Up to `limit` deadlines due at or before `now_ms`, earliest first.
    /// An unreadable key is returned as `Err(key)` so that the caller can
    /// remove it instead of retrying it forever.
    pub fn due_deadlines(&self, now_ms: i64, limit: usize) -> Result<Vec<Result<Deadline, Vec<u8>>>, StoreError> {
        let rows = self.0.range(Table::Deadlines, &[], &keys::deadline_upper(now_ms), limit)?;
        Ok(rows
            .into_iter()
            .map(|(k, _)| match keys::parse_deadline(&k) {
                Some((due_ms, kind, message_id)) => Ok(Deadline { due_ms, kind, message_id }),
                None => Err(k),
            })
            .collect())
    }

    /// The earliest stored deadline, if any.
    pub fn next_deadline(&self) -> Result<Option<i64>, StoreError> {
        let first = self.0.range(Table::Deadlines, &[], &[0xff; 26], 1)?;
        Ok(first.first().and_then(|(k, _)| keys::parse_deadline(k)).map(|(due, _, _)| due))
    }

    /// Up to `limit` queue entries of `recipient` with `from <= seq < to`.
    pub fn queue(
        &self,
        recipient: &AgencyId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, MessageId)>, StoreError> {
        let rows = self.0.range(Table::Queue, &keys::queue(recipient, from), &keys::queue(recipient, to), limit)?;
        rows.into_iter()
            .map(|(k, v)| {
                let seq = keys::queue_seq(&k).ok_or_else(|| corrupt("queue key"))?;
                let id = MessageId::from_bytes(&v).map_err(|_| corrupt("queue entry"))?;
                Ok((seq, id))
            })
            .collect()
    }

    /// Up to `limit` receipt feed entries of `sender` with `from <= cursor < to`.
    pub fn feed(
        &self,
        sender: &AgencyId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, FeedEntry)>, StoreError> {
        let rows = self.0.range(
            Table::ReceiptFeed,
            &keys::receipt_feed(sender, from),
            &keys::receipt_feed(sender, to),
            limit,
        )?;
        rows.into_iter()
            .map(|(k, v)| {
                let cursor = keys::queue_seq(&k).ok_or_else(|| corrupt("receipt feed key"))?;
                Ok((cursor, records::decode("feed", &v)?))
            })
            .collect()
    }

    /// Audit entries `from <= index < to` (at most `limit`), as stored.
    pub fn audit_entries(&self, from: u64, to: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let rows = self.0.range(Table::Audit, &keys::audit(from), &keys::audit(to), limit)?;
        rows.into_iter()
            .map(|(k, v)| Ok((u64::from_be_bytes(k.as_slice().try_into().map_err(|_| corrupt("audit key"))?), v)))
            .collect()
    }

    pub fn audit_entry(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(Table::Audit, &keys::audit(index))
    }

    pub fn merkle_node(&self, level: u32, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(Table::MerkleNodes, &keys::merkle(level, index))
    }

    pub fn overlap(&self, id: &MessageId) -> Result<Option<OverlapRecord>, StoreError> {
        self.0.get(Table::Overlaps, &keys::overlap::session(id))?.map(|b| records::decode("overlap", &b)).transpose()
    }

    /// A relayed chunk as received (protobuf bytes); None once deleted.
    pub fn overlap_chunk(
        &self,
        id: &MessageId,
        side: u8,
        kind: u8,
        index: u32,
    ) -> Result<Option<pb::OverlapChunk>, StoreError> {
        self.0
            .get(Table::Overlaps, &keys::overlap::chunk(id, side, kind, index))?
            .map(|b| prost::Message::decode(b.as_slice()).map_err(|_| corrupt(format!("overlap chunk of {id}"))))
            .transpose()
    }

    /// Sessions proposed for the pair on `day` (UTC days since the epoch).
    pub fn overlap_pair_day(&self, day: i64, a: &AgencyId, b: &AgencyId) -> Result<u64, StoreError> {
        let key = keys::overlap::pair_day(day, a, b);
        self.0.get(Table::Overlaps, &key)?.map(|v| decode_u64(&key, &v)).transpose().map(Option::unwrap_or_default)
    }

    /// The ids of the last `limit` sessions `agency` takes part in, oldest first.
    pub fn overlaps_of(&self, agency: &AgencyId, limit: usize) -> Result<Vec<MessageId>, StoreError> {
        let prefix = keys::overlap::by_agency_prefix(agency);
        let rows = self.0.prefix(Table::Overlaps, &prefix, usize::MAX)?;
        let skip = rows.len().saturating_sub(limit);
        rows.into_iter()
            .skip(skip)
            .map(|(k, _)| MessageId::from_bytes(&k[prefix.len()..]).map_err(|_| corrupt("overlap agency index")))
            .collect()
    }
}

/// Typed writes, gathered into one [`Batch`] for [`Store::commit`].
#[derive(Debug, Default)]
pub struct Writes {
    batch: Batch,
}

impl Writes {
    pub fn into_batch(self) -> Batch {
        self.batch
    }

    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    pub fn message(&mut self, id: &MessageId, rec: &MessageRecord) {
        self.batch.put(Table::Messages, keys::message(id), records::encode(rec));
    }

    /// The envelope's protobuf bytes, exactly as they will be served.
    pub fn envelope(&mut self, id: &MessageId, encoded: Vec<u8>) {
        self.batch.put(Table::Envelopes, keys::message(id), encoded);
    }

    pub fn purge_envelope(&mut self, id: &MessageId) {
        self.batch.delete(Table::Envelopes, keys::message(id));
    }

    pub fn enqueue(&mut self, recipient: &AgencyId, seq: u64, id: &MessageId) {
        self.batch.put(Table::Queue, keys::queue(recipient, seq), id.as_bytes().to_vec());
    }

    pub fn dequeue(&mut self, recipient: &AgencyId, seq: u64) {
        self.batch.delete(Table::Queue, keys::queue(recipient, seq));
    }

    pub fn set_deadline(&mut self, d: Deadline) {
        self.batch.put(Table::Deadlines, d.key(), vec![]);
    }

    pub fn clear_deadline(&mut self, d: Deadline) {
        self.batch.delete(Table::Deadlines, d.key());
    }

    /// Removes a deadline key that does not parse.
    pub fn clear_deadline_key(&mut self, key: Vec<u8>) {
        self.batch.delete(Table::Deadlines, key);
    }

    /// Stores receipt `n` of message `id` (unsigned).
    pub fn receipt(&mut self, id: &MessageId, n: u8, receipt: &pb::Receipt) {
        self.batch.put(Table::Receipts, keys::receipt(id, n), prost::Message::encode_to_vec(receipt));
    }

    pub fn feed(&mut self, sender: &AgencyId, cursor: u64, entry: &FeedEntry) {
        self.batch.put(Table::ReceiptFeed, keys::receipt_feed(sender, cursor), records::encode(entry));
    }

    pub fn delivery(&mut self, id: &MessageId, principal: &str) {
        self.batch.put(Table::Deliveries, keys::delivery(id, principal), vec![]);
    }

    pub fn counter(&mut self, key: Vec<u8>, value: u64) {
        self.batch.put(Table::Meta, key, value.to_be_bytes().to_vec());
    }

    pub fn meta(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.batch.put(Table::Meta, key, value);
    }

    pub fn audit_entry(&mut self, index: u64, bytes: Vec<u8>) {
        self.batch.put(Table::Audit, keys::audit(index), bytes);
    }

    pub fn merkle_node(&mut self, level: u32, index: u64, hash: [u8; 32]) {
        self.batch.put(Table::MerkleNodes, keys::merkle(level, index), hash.to_vec());
    }

    pub fn overlap(&mut self, id: &MessageId, rec: &OverlapRecord) {
        self.batch.put(Table::Overlaps, keys::overlap::session(id), records::encode(rec));
    }

    pub fn overlap_chunk(&mut self, id: &MessageId, side: u8, kind: u8, index: u32, encoded: Vec<u8>) {
        self.batch.put(Table::Overlaps, keys::overlap::chunk(id, side, kind, index), encoded);
    }

    pub fn delete_overlap_chunk(&mut self, id: &MessageId, side: u8, kind: u8, index: u32) {
        self.batch.delete(Table::Overlaps, keys::overlap::chunk(id, side, kind, index));
    }

    pub fn overlap_of(&mut self, agency: &AgencyId, id: &MessageId) {
        self.batch.put(Table::Overlaps, keys::overlap::by_agency(agency, id), vec![]);
    }

    pub fn overlap_pair_day(&mut self, day: i64, a: &AgencyId, b: &AgencyId, count: u64) {
        self.batch.put(Table::Overlaps, keys::overlap::pair_day(day, a, b), count.to_be_bytes().to_vec());
    }

    pub fn audit_size(&mut self, size: u64) {
        self.counter(meta::AUDIT_SIZE.to_vec(), size);
    }
}

/// Reads only what durable commits made visible: records are shown when
/// the audit entry they cite lies below `log_size`, the size of the log
/// the committer announced after its last durable commit (read once, before
/// the records, so that nothing written later can pass).
#[derive(Debug, Clone, Copy)]
pub struct Durable<'a> {
    tables: Tables<'a>,
    log_size: u64,
}

impl<'a> Durable<'a> {
    pub fn new(store: &'a dyn Store, log_size: u64) -> Self {
        Self { tables: Tables(store), log_size }
    }

    /// A message's record and its durable receipts (in the order issued);
    /// None when the message is unknown or not yet durable. Receipts of a
    /// message are issued in log order, so the first one that is not durable
    /// ends the prefix; without a durable ACCEPTED receipt the message itself
    /// is not durable.
    pub fn message(&self, id: &MessageId) -> Result<Option<(MessageRecord, Vec<pb::Receipt>)>, StoreError> {
        let Some(rec) = self.tables.message(id)? else { return Ok(None) };
        let durable = durable_prefix(self.tables.receipts(id, &rec)?, self.log_size);
        if durable.is_empty() {
            return Ok(None);
        }
        Ok(Some((rec, durable)))
    }
}

impl<'a> Durable<'a> {
    /// An overlap session with only its durable parts (statements and
    /// chunks whose audit entry lies below the log size); None when unknown
    /// or its proposal is not yet durable. The state is recomputed from the
    /// durable parts.
    pub fn overlap(&self, id: &MessageId) -> Result<Option<OverlapRecord>, StoreError> {
        use super::records::OverlapState;
        let Some(mut rec) = self.tables.overlap(id)? else { return Ok(None) };
        let n = self.log_size;
        if rec.proposal.1 >= n {
            return Ok(None);
        }
        let keep = |p: &mut Option<(Vec<u8>, u64)>| {
            if p.as_ref().is_some_and(|(_, i)| *i >= n) {
                *p = None;
            }
        };
        keep(&mut rec.acceptance);
        keep(&mut rec.initiator_finish);
        keep(&mut rec.responder_finish);
        rec.chunks.retain(|c| c.log_index < n);
        rec.state = match (rec.state, &rec.acceptance, &rec.initiator_finish, &rec.responder_finish) {
            (OverlapState::Expired { log_index, .. }, ..) if log_index < n => rec.state,
            (_, None, _, _) => OverlapState::Proposed,
            (_, Some(_), Some(_), Some(_)) => OverlapState::Finished,
            _ => OverlapState::Accepted,
        };
        Ok(Some(rec))
    }

    /// Tables without the durability filter, for records read after [`Durable::overlap`] vouched for them.
    pub fn tables(&self) -> Tables<'a> {
        self.tables
    }
}

/// The receipts whose audit entry lies below `log_size`, up to the first
/// that does not.
pub fn durable_prefix(receipts: impl IntoIterator<Item = pb::Receipt>, log_size: u64) -> Vec<pb::Receipt> {
    receipts.into_iter().take_while(|r| r.statement.as_ref().is_some_and(|s| s.log_index < log_size)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(log_index: u64) -> pb::Receipt {
        pb::Receipt { statement: Some(pb::ReceiptStatement { log_index, ..Default::default() }), ..Default::default() }
    }

    #[test]
    fn only_receipts_below_the_durable_log_size_are_shown() {
        let stored = || vec![receipt(3), receipt(7), receipt(9)];
        let indexes =
            |v: Vec<pb::Receipt>| v.iter().map(|r| r.statement.as_ref().unwrap().log_index).collect::<Vec<_>>();
        assert_eq!(indexes(durable_prefix(stored(), 3)), Vec::<u64>::new());
        assert_eq!(indexes(durable_prefix(stored(), 4)), vec![3]);
        assert_eq!(indexes(durable_prefix(stored(), 9)), vec![3, 7]);
        assert_eq!(indexes(durable_prefix(stored(), 10)), vec![3, 7, 9]);
        // A receipt without a statement is never shown, nor anything after it.
        let broken = vec![receipt(1), pb::Receipt::default(), receipt(2)];
        assert_eq!(indexes(durable_prefix(broken, 100)), vec![1]);
    }
}
