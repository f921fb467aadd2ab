//! Reads that answer a client see only durable state: a store that shows
//! a batch before its flush (as sled does) is held between the two, and the
//! broker is asked what it knows meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use broker::store::sled_store::SledStore;
use broker::store::{Batch, Entries, Op, Store, StoreError, Table};
use integration_tests::{Harness, Options, POLICE_SYSTEM, SOCIAL, SOCIAL_ONCALL};
use referral_proto::notice::example_notice;
use referral_proto::pb;
use referral_proto::receipt::ReceiptStatus;
use tonic::Code;

use crate::support::{sealed, submit_raw};

const LIMIT: Duration = Duration::from_secs(10);

/// Between applying a batch and flushing it, waits while `hold` is set.
#[derive(Debug, Default)]
struct Gate {
    hold: AtomicBool,
    /// Set by the committer when a held batch is applied (visible, not durable).
    applied: tokio::sync::Notify,
    released: Mutex<bool>,
    wake: Condvar,
}

impl Gate {
    fn close(&self) {
        *self.released.lock().unwrap() = false;
        self.hold.store(true, Ordering::SeqCst);
    }

    fn open(&self) {
        self.hold.store(false, Ordering::SeqCst);
        *self.released.lock().unwrap() = true;
        self.wake.notify_all();
    }
}

#[derive(Debug)]
struct FlushGate {
    inner: SledStore,
    gate: Arc<Gate>,
}

impl Store for FlushGate {
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        // Only batches that issue receipts are held: background writes
        // (health probes, tree heads) pass.
        let issues_receipts = batch.ops.iter().any(|op| matches!(op, Op::Put(Table::Receipts, ..)));
        if !issues_receipts || !self.gate.hold.load(Ordering::SeqCst) {
            return self.inner.commit(batch);
        }
        self.inner.commit_unflushed(batch)?;
        self.gate.applied.notify_one();
        let mut released = self.gate.released.lock().unwrap();
        while !*released {
            released = self.gate.wake.wait(released).unwrap();
        }
        drop(released);
        // The flush and fsync of what was applied.
        self.inner.commit(&Batch::default())
    }
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }
    fn range(&self, table: Table, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        self.inner.range(table, start, end, limit)
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner.size_on_disk()
    }
    fn recover(&self) -> Result<(), StoreError> {
        self.inner.recover()
    }
    fn backup_to(&self, dir: &std::path::Path) -> Result<u64, StoreError> {
        self.inner.backup_to(dir)
    }
}

async fn gated() -> (Harness, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    let h = Harness::start_with(Options {
        wrap_store: Some(Box::new(move |inner| Arc::new(FlushGate { inner, gate: g }) as Arc<dyn Store>)),
        ..Options::default()
    })
    .await;
    (h, gate)
}

async fn statuses(h: &Harness, id: referral_proto::ids::MessageId) -> Result<Vec<ReceiptStatus>, tonic::Status> {
    let police = h.client(POLICE_SYSTEM).await;
    let r = police
        .broker()
        .get_receipts(pb::GetReceiptsRequest { message_ids: vec![id.as_bytes().to_vec()] })
        .await?
        .into_inner();
    Ok(r.messages[0]
        .receipts
        .iter()
        .map(|r| ReceiptStatus::from_code(r.statement.as_ref().unwrap().status).unwrap())
        .collect())
}

#[tokio::test]
async fn get_receipts_never_shows_an_ack_that_is_not_yet_durable() {
    let (h, gate) = gated().await;
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&referral_proto::ids::AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    let oncall = h.client(SOCIAL_ONCALL).await;
    oncall.refresh_directory().await.unwrap();
    gate.close();
    let applied = gate.applied.notified();
    let acking = tokio::spawn(async move { oncall.ack_digest(sent.message_id, sent.envelope_digest, "jour-1").await });
    tokio::time::timeout(LIMIT, applied).await.expect("the ack's batch is applied");
    // The store already shows the ACKNOWLEDGED receipt...
    let raw = h.state().store.get(Table::Messages, &broker::store::keys::message(&sent.message_id)).unwrap().unwrap();
    let rec: broker::store::records::MessageRecord = broker::store::records::decode("message", &raw).unwrap();
    assert_eq!(rec.receipt_count, 2, "the held batch is visible in the store");
    // ...but the broker answers only with what is durable.
    assert_eq!(statuses(&h, sent.message_id).await.unwrap(), vec![ReceiptStatus::Accepted]);
    assert!(!acking.is_finished(), "the ack is not answered before it is durable");
    gate.open();
    tokio::time::timeout(LIMIT, acking).await.unwrap().unwrap().expect("acknowledged once durable");
    assert_eq!(
        statuses(&h, sent.message_id).await.unwrap(),
        vec![ReceiptStatus::Accepted, ReceiptStatus::Acknowledged]
    );
}

#[tokio::test]
async fn get_receipts_does_not_know_a_submit_that_is_not_yet_durable() {
    let (h, gate) = gated().await;
    let envelope = sealed(&h, POLICE_SYSTEM, SOCIAL, &example_notice()).await;
    let id = envelope.header.message_id;
    let police = h.client(POLICE_SYSTEM).await;
    police.refresh_directory().await.unwrap();
    gate.close();
    let applied = gate.applied.notified();
    let submitting = tokio::spawn(async move { submit_raw(&police, pb::Envelope::from(&envelope)).await });
    tokio::time::timeout(LIMIT, applied).await.expect("the submit's batch is applied");
    assert!(h.state().store.get(Table::Messages, &broker::store::keys::message(&id)).unwrap().is_some());
    let status = statuses(&h, id).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), format!("message {id} is not known to the broker"));
    gate.open();
    tokio::time::timeout(LIMIT, submitting).await.unwrap().unwrap().expect("accepted once durable");
    assert_eq!(statuses(&h, id).await.unwrap(), vec![ReceiptStatus::Accepted]);
}

async fn fetch(h: &Harness, id: referral_proto::ids::MessageId) -> Result<pb::fetch_response::Outcome, tonic::Status> {
    let oncall = h.client(SOCIAL_ONCALL).await;
    let r = oncall.broker().fetch(pb::FetchRequest { message_id: id.as_bytes().to_vec() }).await?;
    Ok(r.into_inner().outcome.expect("an outcome"))
}

#[tokio::test]
async fn fetch_does_not_know_a_submit_that_is_not_yet_durable() {
    let (h, gate) = gated().await;
    let envelope = sealed(&h, POLICE_SYSTEM, SOCIAL, &example_notice()).await;
    let id = envelope.header.message_id;
    let police = h.client(POLICE_SYSTEM).await;
    police.refresh_directory().await.unwrap();
    gate.close();
    let applied = gate.applied.notified();
    let submitting = tokio::spawn(async move { submit_raw(&police, pb::Envelope::from(&envelope)).await });
    tokio::time::timeout(LIMIT, applied).await.expect("the submit's batch is applied");
    let status = fetch(&h, id).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), format!("message {id} is not known to the broker"));
    gate.open();
    tokio::time::timeout(LIMIT, submitting).await.unwrap().unwrap().expect("accepted once durable");
    assert!(matches!(fetch(&h, id).await.unwrap(), pb::fetch_response::Outcome::Waiting(_)));
}

/// A fetch while an ack is applied but not durable neither delivers the
/// message (the store already shows it settled) nor reports the ack (it
/// may yet be lost): it waits for that commit and then reports it.
#[tokio::test]
async fn fetch_never_reports_an_ack_that_is_not_yet_durable() {
    let (h, gate) = gated().await;
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&referral_proto::ids::AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    let oncall = h.client(SOCIAL_ONCALL).await;
    oncall.refresh_directory().await.unwrap();
    gate.close();
    let applied = gate.applied.notified();
    let acking = tokio::spawn(async move { oncall.ack_digest(sent.message_id, sent.envelope_digest, "jour-1").await });
    tokio::time::timeout(LIMIT, applied).await.expect("the ack's batch is applied");
    let h = Arc::new(h);
    let fetching = tokio::spawn({
        let h = h.clone();
        async move { fetch(&h, sent.message_id).await }
    });
    // A round trip through the broker while the batch is held.
    assert_eq!(statuses(&h, sent.message_id).await.unwrap(), vec![ReceiptStatus::Accepted]);
    assert!(!fetching.is_finished(), "the fetch is not answered from a batch that is not durable");
    gate.open();
    tokio::time::timeout(LIMIT, acking).await.unwrap().unwrap().expect("acknowledged once durable");
    match tokio::time::timeout(LIMIT, fetching).await.unwrap().unwrap().unwrap() {
        pb::fetch_response::Outcome::Acknowledged(r) => {
            assert_eq!(r.ack.unwrap().statement.unwrap().acknowledged_by, "jour-1");
        }
        other => panic!("expected the durable ack, got {other:?}"),
    }
}
