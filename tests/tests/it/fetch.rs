//! `Fetch`: one message by id, authorized like `Subscribe`, recorded as a
//! delivery, settled messages reported with who and when, and nothing
//! learnt about other agencies' messages; `agency-client ack` rides on it.

use std::time::Duration;

use agency_client::ClientError;
use agency_client::alerts::{AlertEvent, Fetched};
use integration_tests::*;
use referral_proto::envelope::Urgency;
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::notice::example_notice;
use referral_proto::pb;
use referral_proto::pb::fetch_response::Outcome;
use referral_proto::receipt::ReceiptStatus;
use tonic::Code;

use crate::deadlines::wait_status;
use crate::support::{audit_entries, waiting};

const DAY: Duration = Duration::from_secs(86_400);

fn social() -> AgencyId {
    AgencyId::new(SOCIAL).unwrap()
}

async fn fetch_raw(client: &agency_client::Client, id: MessageId) -> Result<Outcome, tonic::Status> {
    let r = client.broker().fetch(pb::FetchRequest { message_id: id.as_bytes().to_vec() }).await?;
    Ok(r.into_inner().outcome.expect("an outcome"))
}

/// The principals each message's `Delivered` entries name, in log order.
async fn delivered(h: &Harness) -> Vec<(MessageId, String)> {
    audit_entries(h)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            Some(pb::audit_entry::Event::Delivered(d)) => {
                Some((MessageId::from_bytes(&d.message_id).unwrap(), d.principal))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn fetching_a_waiting_message_delivers_it_and_records_the_delivery() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&social(), &example_notice()).await.unwrap();
    let oncall = h.client(SOCIAL_ONCALL).await;
    let me = oncall.principal().uri();

    let Outcome::Waiting(d) = fetch_raw(&oncall, sent.message_id).await.unwrap() else {
        panic!("a waiting message is answered with its delivery");
    };
    assert_eq!(d.envelope_digest, sent.envelope_digest.0.to_vec());
    assert_eq!(d.envelope.unwrap().header.unwrap().message_id, sent.message_id.as_bytes().to_vec());
    assert_eq!(d.sequence, 1);
    assert!(!d.redelivery && !d.escalated);
    // On record before it was answered: the Delivered entry names the
    // principal, and the sender holds a DELIVERED receipt naming it.
    assert_eq!(delivered(&h).await, vec![(sent.message_id, me.clone())]);
    let receipts = police.receipts(&[sent.message_id]).await.unwrap().remove(0).1;
    let statuses: Vec<_> = receipts.iter().map(|r| r.statement.status).collect();
    assert_eq!(statuses, [ReceiptStatus::Accepted, ReceiptStatus::Delivered]);
    assert_eq!(receipts[1].statement.detail, me);

    // Fetched again, it is a redelivery and records nothing new; through
    // the client library it is verified and opened like an alert.
    match oncall.fetch(sent.message_id).await.unwrap() {
        Fetched::Waiting(AlertEvent::Referral(r)) => {
            assert!(r.redelivery);
            assert_eq!(r.envelope_digest, sent.envelope_digest);
            assert_eq!(r.notice, example_notice());
        }
        other => panic!("expected the opened referral, got {other:?}"),
    }
    assert_eq!(delivered(&h).await.len(), 1);
    // The agency's case system may fetch it too: a delivery to another principal.
    let system = h.client(SOCIAL_SYSTEM).await;
    assert!(matches!(fetch_raw(&system, sent.message_id).await.unwrap(), Outcome::Waiting(_)));
    assert_eq!(delivered(&h).await[1], (sent.message_id, system.principal().uri()));
}

/// An unknown id, another agency's message and the sender's own message are
/// refused alike, so a fetch cannot tell which ids exist elsewhere.
#[tokio::test]
async fn unknown_ids_and_other_agencies_messages_are_the_same_not_found() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&social(), &example_notice()).await.unwrap();
    let unknown = MessageId::generate(certs::now().0);
    let not_found = |r: Result<Outcome, tonic::Status>, id: MessageId| {
        let s = assert_refused(r, Code::NotFound, "unknown_message");
        assert_eq!(s.message(), format!("message {id} is not known to the broker"));
    };
    let oncall = h.client(SOCIAL_ONCALL).await;
    not_found(fetch_raw(&oncall, unknown).await, unknown);
    // Addressed to social services: not the police's to fetch, not even the sender's.
    for other in [POLICE_ONCALL, POLICE_SYSTEM] {
        not_found(fetch_raw(&h.client(other).await, sent.message_id).await, sent.message_id);
    }
    assert!(delivered(&h).await.is_empty(), "nothing was delivered");
    // Counted, never logged one by one (nothing in these requests is signed).
    assert_eq!(crate::support::summarised(&h).await.get("unknown_message"), Some(&3));
    // An id that is not a UUIDv7.
    let bad = oncall.broker().fetch(pb::FetchRequest { message_id: vec![1, 2, 3] }).await;
    assert_refused(bad, Code::InvalidArgument, "invalid_request");
    // The library's ack says what the CLI always said for these.
    match oncall.ack(unknown, "jour-1").await {
        Err(e @ ClientError::NotWaiting(_)) => {
            assert_eq!(
                e.to_string(),
                format!("message {unknown} is not waiting for this agency (unknown, or addressed elsewhere)")
            )
        }
        other => panic!("expected NotWaiting, got {other:?}"),
    }
}

#[tokio::test]
async fn roles_that_may_not_subscribe_may_not_fetch() {
    let h = Harness::start().await;
    let sent = h.client(POLICE_SYSTEM).await.send(&social(), &example_notice()).await.unwrap();
    let auditor = h.client(AUDITOR).await;
    let s = assert_refused(fetch_raw(&auditor, sent.message_id).await, Code::PermissionDenied, "role_not_allowed");
    assert_eq!(s.message(), "role auditor may not call Fetch");
    assert!(delivered(&h).await.is_empty());
}

#[tokio::test]
async fn an_acknowledged_message_says_who_acknowledged_it_and_when() {
    let h = Harness::start().await;
    let sent = h.client(POLICE_SYSTEM).await.send(&social(), &example_notice()).await.unwrap();
    let oncall = h.client(SOCIAL_ONCALL).await;
    let first = oncall.ack(sent.message_id, "jour-1").await.unwrap();
    assert!(!first.already_acknowledged);
    let system = h.client(SOCIAL_SYSTEM).await;
    let Outcome::Acknowledged(r) = fetch_raw(&system, sent.message_id).await.unwrap() else {
        panic!("an acknowledged message is answered with its ACKNOWLEDGED receipt");
    };
    let s = r.statement.as_ref().unwrap();
    assert_eq!(ReceiptStatus::from_code(s.status), Some(ReceiptStatus::Acknowledged));
    assert_eq!(s.detail, oncall.principal().uri(), "the principal that acknowledged");
    assert_eq!(s.at_ms, first.receipt.statement.at.0, "when");
    assert_eq!(r.ack.as_ref().unwrap().statement.as_ref().unwrap().acknowledged_by, "jour-1");
    // The library checks the receipt (broker signature, this agency's
    // signed ack); a second ack is answered from it, as the broker would.
    match system.fetch(sent.message_id).await.unwrap() {
        Fetched::Acknowledged(r) => assert_eq!(r.ack.unwrap().statement.acknowledged_by, "jour-1"),
        other => panic!("expected Acknowledged, got {other:?}"),
    }
    let again = system.ack(sent.message_id, "jour-2").await.unwrap();
    assert!(again.already_acknowledged);
    assert_eq!(again.receipt.ack.unwrap().statement.acknowledged_by, "jour-1");
    // Only the first ack's own fetch delivered anything.
    assert_eq!(delivered(&h).await, vec![(sent.message_id, oncall.principal().uri())]);
}

#[tokio::test]
async fn an_expired_message_says_when_it_expired() {
    let h = Harness::start_with(Options { manual_clock: true, ..Options::default() }).await;
    let police = h.client(POLICE_SYSTEM).await;
    let mut n = example_notice();
    n.urgency = Urgency::Routine;
    let sent = police.send(&social(), &n).await.unwrap();
    let mut receipts = police.watch_receipts(0).await.unwrap();
    h.advance(30 * DAY + Duration::from_secs(1));
    let expired = wait_status(&mut receipts, sent.message_id, ReceiptStatus::Expired).await;
    let oncall = h.client(SOCIAL_ONCALL).await;
    let Outcome::Expired(r) = fetch_raw(&oncall, sent.message_id).await.unwrap() else {
        panic!("an expired message is answered with its EXPIRED receipt");
    };
    assert_eq!(r.statement.unwrap().at_ms, expired.statement.at.0);
    match oncall.ack(sent.message_id, "jour-1").await {
        Err(e @ ClientError::Expired { .. }) => assert_eq!(
            e.to_string(),
            format!(
                "message {} expired unacknowledged at {} and can no longer be acknowledged",
                sent.message_id, expired.statement.at
            )
        ),
        other => panic!("expected Expired, got {other:?}"),
    }
    assert!(delivered(&h).await.is_empty(), "an expired message is never delivered");
}

/// The on-call person acknowledging one referral in a queue of many: the
/// client fetches that one alone, so nothing else is delivered on the way.
#[tokio::test]
async fn one_message_among_many_waiting_is_acknowledged_through_the_client() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(police.send(&social(), &example_notice()).await.unwrap().message_id);
    }
    let target = ids[27];
    let oncall = h.client(SOCIAL_ONCALL).await;
    let acked = oncall.ack(target, "jour-1").await.unwrap();
    assert!(!acked.already_acknowledged);
    assert_eq!(acked.receipt.statement.message_id, target);
    assert_eq!(delivered(&h).await, vec![(target, oncall.principal().uri())], "only the acknowledged one");
    let mut rest = ids.clone();
    rest.retain(|i| *i != target);
    assert_eq!(waiting(&oncall).await, rest);
}
