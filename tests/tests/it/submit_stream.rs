//! `SubmitStream`: many submits on one stream, answered in order, each once
//! durable; refusals inside the results with unary Submit's codes and
//! reasons; duplicates answered with the original receipt; the credit
//! window enforced; authorized like Submit; the CLI's bulk `send` on it.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use broker::service::referral::SUBMIT_WINDOW;
use broker::store::sled_store::SledStore;
use broker::store::{Batch, Entries, Op, Store, StoreError, Table};
use integration_tests::*;
use referral_proto::ids::MessageId;
use referral_proto::notice::example_notice;
use referral_proto::pb;
use referral_proto::pb::submit_result::Outcome;
use referral_proto::pb::submit_stream_response::Event;
use referral_proto::receipt::ReceiptStatus;
use tokio::sync::mpsc;
use tonic::Code;

use crate::support::{client, example_envelope, submit_raw, summarised, waiting};

const LIMIT: Duration = Duration::from_secs(20);

/// Opens a SubmitStream as `c`; returns the sending half, the responses,
/// and the announced window.
async fn open(
    c: &agency_client::Client,
) -> Result<(mpsc::Sender<pb::SubmitStreamRequest>, tonic::Streaming<pb::SubmitStreamResponse>, u32), tonic::Status> {
    let (tx, rx) = mpsc::channel(4 * SUBMIT_WINDOW as usize);
    let requests = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut responses = c.broker().submit_stream(requests).await?.into_inner();
    let first = responses.message().await?.expect("a first response");
    let Some(Event::Window(w)) = first.event else { panic!("the first response announces the window: {first:?}") };
    Ok((tx, responses, w.max_unanswered))
}

async fn send(tx: &mpsc::Sender<pb::SubmitStreamRequest>, envelope: Option<pb::Envelope>) {
    tx.send(pb::SubmitStreamRequest { envelope }).await.expect("the stream is open");
}

async fn next_result(responses: &mut tonic::Streaming<pb::SubmitStreamResponse>) -> pb::SubmitResult {
    let r = tokio::time::timeout(LIMIT, responses.message()).await.expect("a result in time").expect("no error");
    match r.and_then(|r| r.event) {
        Some(Event::Result(r)) => r,
        other => panic!("expected a result, got {other:?}"),
    }
}

fn refused(r: &pb::SubmitResult) -> (Code, &str) {
    match &r.outcome {
        Some(Outcome::Refused(f)) => (Code::from(f.code), f.reason.as_str()),
        other => panic!("result {} should be a refusal, got {other:?}", r.index),
    }
}

fn accepted(r: &pb::SubmitResult) -> &pb::SubmitResponse {
    match &r.outcome {
        Some(Outcome::Accepted(a)) => a,
        other => panic!("result {} should be accepted, got {other:?}", r.index),
    }
}

#[tokio::test]
async fn results_come_in_order_with_the_reasons_of_unary_submit() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let good_a = example_envelope(&h, POLICE_SYSTEM, SOCIAL).await;
    let good_b = example_envelope(&h, POLICE_SYSTEM, SOCIAL).await;
    let mut bad_signature = example_envelope(&h, POLICE_SYSTEM, SOCIAL).await;
    bad_signature.signature[10] ^= 1;
    let mut no_header = example_envelope(&h, POLICE_SYSTEM, SOCIAL).await;
    no_header.header = None;
    // Sealed and signed by social services, sent by the police.
    let not_mine = example_envelope(&h, SOCIAL_SYSTEM, POLICE).await;
    let stream: Vec<Option<pb::Envelope>> = vec![
        Some(good_a.clone()),
        Some(bad_signature.clone()),
        Some(no_header.clone()),
        None,
        Some(not_mine.clone()),
        Some(good_b.clone()),
        // The same bytes again, while the first may still be in flight.
        Some(good_a.clone()),
    ];
    let (tx, mut responses, window) = open(&police).await.unwrap();
    assert_eq!(window, SUBMIT_WINDOW);
    for e in stream.iter().cloned() {
        send(&tx, e).await;
    }
    drop(tx);
    let mut results = Vec::new();
    for _ in 0..stream.len() {
        results.push(next_result(&mut responses).await);
    }
    assert!(responses.message().await.unwrap().is_none(), "the stream ends after the last result");
    let indices: Vec<u64> = results.iter().map(|r| r.index).collect();
    assert_eq!(indices, (0..stream.len() as u64).collect::<Vec<_>>(), "in the order sent");

    let first = accepted(&results[0]);
    assert!(!first.duplicate);
    assert_eq!(refused(&results[1]), (Code::InvalidArgument, "bad_signature"));
    assert_eq!(refused(&results[2]), (Code::InvalidArgument, "malformed_envelope"));
    assert_eq!(refused(&results[3]), (Code::InvalidArgument, "missing_field"));
    assert_eq!(refused(&results[4]), (Code::PermissionDenied, "sender_mismatch"));
    assert!(!accepted(&results[5]).duplicate);
    let again = accepted(&results[6]);
    assert!(again.duplicate, "a repeated message id is a duplicate");
    assert_eq!(again.receipt, first.receipt, "and gets the original receipt");

    // Each result was sent after its commit: the receipts are durable now.
    let id = |e: &pb::Envelope| MessageId::from_bytes(&e.header.as_ref().unwrap().message_id).unwrap();
    for e in [&good_a, &good_b] {
        let receipts = police.receipts(&[id(e)]).await.unwrap().remove(0).1;
        assert_eq!(receipts.len(), 1);
        assert_eq!(receipts[0].statement.status, ReceiptStatus::Accepted);
    }
    // Unary Submit answers the same envelopes with the same codes and reasons...
    assert_refused(submit_raw(&police, bad_signature).await, Code::InvalidArgument, "bad_signature");
    assert_refused(submit_raw(&police, no_header).await, Code::InvalidArgument, "malformed_envelope");
    assert_refused(
        police.broker().submit(pb::SubmitRequest { envelope: None }).await.map(|r| r.into_inner()),
        Code::InvalidArgument,
        "missing_field",
    );
    assert_refused(submit_raw(&police, not_mine).await, Code::PermissionDenied, "sender_mismatch");
    // ...and the refusals were recorded the same way: twice each.
    let counted: Vec<(String, u64)> = summarised(&h).await.into_iter().collect();
    let expected = [("bad_signature", 2), ("malformed_envelope", 2), ("missing_field", 2), ("sender_mismatch", 2)];
    assert_eq!(counted, expected.map(|(r, n)| (r.to_owned(), n)));
}

/// Holds every batch that issues receipts until opened.
#[derive(Debug, Default)]
struct Gate {
    open: Mutex<bool>,
    wake: Condvar,
}

#[derive(Debug)]
struct HeldStore {
    inner: SledStore,
    gate: Arc<Gate>,
}

impl Store for HeldStore {
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.ops.iter().any(|op| matches!(op, Op::Put(Table::Receipts, ..))) {
            let mut open = self.gate.open.lock().unwrap();
            while !*open {
                open = self.gate.wake.wait(open).unwrap();
            }
        }
        self.inner.commit(batch)
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

#[tokio::test]
async fn more_than_the_window_unanswered_ends_the_stream() {
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    let h = Harness::start_with(Options {
        wrap_store: Some(Box::new(move |inner| Arc::new(HeldStore { inner, gate: g }) as Arc<dyn Store>)),
        ..Options::default()
    })
    .await;
    let police = h.client(POLICE_SYSTEM).await;
    let mut envelopes = Vec::new();
    for _ in 0..=SUBMIT_WINDOW {
        envelopes.push(example_envelope(&h, POLICE_SYSTEM, SOCIAL).await);
    }
    // No commit can finish, so nothing sent can be answered: the window's
    // worth is accepted for processing, the one after it breaks the rule.
    let (tx, mut responses, window) = open(&police).await.unwrap();
    for e in envelopes.iter().cloned() {
        send(&tx, Some(e)).await;
    }
    let ended = tokio::time::timeout(LIMIT, responses.message()).await.expect("an answer in time");
    let status = assert_refused(ended, Code::ResourceExhausted, "submit_window_exceeded");
    assert!(status.message().contains(&format!("more than {window} envelopes")), "{status:?}");
    // The window's envelopes were taken in: once commits go on, they are
    // accepted (a resend under the same ids gets their receipts); the one
    // past the window never reached the broker's checks.
    let hub = h.state().hub.agency(&referral_proto::ids::AgencyId::new(SOCIAL).unwrap()).unwrap();
    let mut queued_up_to = hub.queue_seq.subscribe();
    {
        *gate.open.lock().unwrap() = true;
        gate.wake.notify_all();
    }
    let window_size = u64::from(SUBMIT_WINDOW);
    tokio::time::timeout(LIMIT, queued_up_to.wait_for(|&seq| seq >= window_size))
        .await
        .expect("the window's envelopes are committed")
        .unwrap();
    h.state().committer.barrier().await;
    let social = h.client(SOCIAL_ONCALL).await;
    let queued = waiting(&social).await;
    assert_eq!(queued.len(), SUBMIT_WINDOW as usize);
    let last = MessageId::from_bytes(&envelopes[SUBMIT_WINDOW as usize].header.as_ref().unwrap().message_id).unwrap();
    assert!(!queued.contains(&last));
    let resent = submit_raw(&police, envelopes[0].clone()).await.unwrap();
    assert!(resent.duplicate);
}

#[tokio::test]
async fn roles_that_may_not_submit_may_not_open_a_stream() {
    let h = Harness::start().await;
    for who in [SOCIAL_ONCALL, AUDITOR] {
        let c = h.client(who).await;
        let r = open(&c).await.map(|_| ());
        let s = assert_refused(r, Code::PermissionDenied, "role_not_allowed");
        assert!(s.message().contains("may not call SubmitStream"), "{s:?}");
    }
}

#[tokio::test]
async fn the_client_library_sends_in_bulk_and_checks_every_receipt() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let social = referral_proto::ids::AgencyId::new(SOCIAL).unwrap();
    let unknown = referral_proto::ids::AgencyId::new("okand-kommun").unwrap();
    let batch = vec![(social.clone(), example_notice()), (unknown, example_notice()), (social, example_notice())];
    let results = police.send_many(&batch).await.unwrap();
    assert_eq!(results.len(), 3);
    let sent: Vec<_> = [&results[0], &results[2]].map(|r| r.as_ref().expect("sent").clone()).into();
    assert!(matches!(results[1], Err(agency_client::ClientError::UnknownAgency { .. })), "{:?}", results[1]);
    assert_ne!(sent[0].message_id, sent[1].message_id);
    for s in &sent {
        assert_eq!(s.receipt.statement.status, ReceiptStatus::Accepted);
        assert!(!s.duplicate);
    }
    // Submitted concurrently, so queued in the order their commits took them.
    let mut queued = waiting(&h.client(SOCIAL_ONCALL).await).await;
    let mut ids: Vec<MessageId> = sent.iter().map(|s| s.message_id).collect();
    queued.sort_by_key(|id| id.to_string());
    ids.sort_by_key(|id| id.to_string());
    assert_eq!(queued, ids);
    // Answered referrals leave the outbox.
    let outbox = h.profile(POLICE_SYSTEM).join("state").join("outbox");
    assert_eq!(std::fs::read_dir(&outbox).map(|d| d.count()).unwrap_or(0), 0);
}

#[tokio::test]
async fn the_cli_sends_a_folder_and_a_json_lines_file() {
    let h = Harness::start().await;
    let folder = h.dir().join("bulk");
    std::fs::create_dir_all(&folder).unwrap();
    let notice = serde_json::to_string_pretty(&example_notice()).unwrap();
    std::fs::write(folder.join("b.json"), &notice).unwrap();
    std::fs::write(folder.join("a.json"), &notice).unwrap();
    std::fs::write(folder.join("notes.txt"), "not a referral").unwrap();
    let (code, out, err) =
        client(&h, POLICE_SYSTEM, &["--json", "send", "--to", SOCIAL, "--bulk", folder.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0]["source"].as_str().unwrap().ends_with("a.json"), "in name order: {out}");
    assert!(lines[1]["source"].as_str().unwrap().ends_with("b.json"), "{out}");
    for l in &lines {
        assert_eq!(l["receipt"]["status"], "ACCEPTED", "{l}");
        assert_eq!(l["duplicate"], false, "{l}");
    }

    let jsonl = h.dir().join("referrals.jsonl");
    let one_line = serde_json::to_string(&example_notice()).unwrap();
    std::fs::write(&jsonl, format!("{one_line}\n\n{one_line}\n{one_line}\n")).unwrap();
    let (code, out, err) =
        client(&h, POLICE_SYSTEM, &["send", "--to", SOCIAL, "--bulk", jsonl.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "one line per referral: {out}");
    for (line, n) in lines.iter().zip([1, 3, 4]) {
        assert!(line.starts_with(&format!("{}:{n}: sent ", jsonl.display())), "{line}");
        assert!(line.contains("ACCEPTED"), "{line}");
    }
    assert_eq!(waiting(&h.client(SOCIAL_ONCALL).await).await.len(), 5);

    // A bad line refuses the whole file before anything is sent.
    std::fs::write(&jsonl, format!("{one_line}\n{{\"subject\": 1}}\n")).unwrap();
    let (code, _, err) = client(&h, POLICE_SYSTEM, &["send", "--to", SOCIAL, "--bulk", jsonl.to_str().unwrap()]).await;
    assert_eq!(code, 65, "invalid input (OPERATIONS.md, exit codes): {err}");
    assert!(err.contains("referrals.jsonl:2 is not a valid referral notice"), "{err}");
    assert_eq!(waiting(&h.client(SOCIAL_ONCALL).await).await.len(), 5);
}
