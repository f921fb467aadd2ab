//! No certificate can grow the permanent audit log without bound: refusals
//! without a verified agency signature are counted and summarised, only
//! signed ones are logged one by one.

use integration_tests::*;
use referral_proto::Digest;
use referral_proto::ack::sign_ack;
use referral_proto::ids::MessageId;
use referral_proto::pb;
use referral_proto::pb::audit_entry::Event;
use tonic::Code;

use crate::support::*;

#[tokio::test]
async fn a_thousand_garbage_acks_add_one_summary_entry_per_reason() {
    let h = Harness::start_with(Options {
        tweak: Box::new(|c| {
            // Within the rate limits: the flood is what one certificate may send.
            c.limits.submit_burst = 5000;
            c.limits.submit_rate_per_second = 5000;
        }),
        ..Options::default()
    })
    .await;
    let oncall = h.client(SOCIAL_ONCALL).await;
    let before = audit_entries(&h).await;
    let mut rpc = oncall.broker();
    for i in 0..1000 {
        // Empty acks and acks with a statement missing.
        let (req, reason) = if i % 2 == 0 {
            (pb::AckRequest { ack: None }, "missing_field")
        } else {
            (
                pb::AckRequest { ack: Some(pb::SignedAck { statement: None, signature: vec![7; 64], note: None }) },
                "malformed_ack",
            )
        };
        assert_refused(rpc.ack(req).await, Code::InvalidArgument, reason);
    }
    // The interval closes (every minute, and at shutdown).
    broker::refusals::close_interval(h.state()).await;
    let after = audit_entries(&h).await;
    let added = &after[before.len()..];
    assert!(added.len() <= 2, "1,000 refusals added {} entries", added.len());
    let mut summaries: Vec<(String, String, u64)> = added
        .iter()
        .map(|e| match &e.event {
            Some(Event::RejectionSummary(s)) => (s.principal.clone(), s.reason.clone(), s.count),
            other => panic!("only summaries, not {other:?}"),
        })
        .collect();
    summaries.sort();
    let me = "spiffe://igor.example.se/agency/huddinge-socialtjanst/oncall/socialjour".to_owned();
    assert_eq!(
        summaries,
        [(me.clone(), "malformed_ack".to_owned(), 500), (me.clone(), "missing_field".to_owned(), 500)]
    );
    let bytes: usize = added.iter().map(prost::Message::encoded_len).sum();
    println!("1000 garbage acks: {} log entries, {bytes} bytes", added.len());

    // An ack whose signature verifies but that is refused afterwards is
    // attributable to the agency's key: logged one by one, at once.
    let bundle = &profile(&h, SOCIAL_ONCALL).bundles[0];
    let unknown = MessageId::generate(certs::now().0);
    let signed = sign_ack(unknown, Digest([3; 32]), certs::now(), "jour-1", bundle).unwrap();
    assert_refused(
        rpc.ack(pb::AckRequest { ack: Some(pb::SignedAck::from(&signed)) }).await,
        Code::NotFound,
        "unknown_message",
    );
    let last = audit_entries(&h).await.pop().unwrap();
    match last.event {
        Some(Event::Rejected(r)) => {
            assert_eq!((r.principal, r.reason.as_str()), (me, "unknown_message"));
            assert_eq!(r.message_id, unknown.as_bytes().to_vec());
        }
        other => panic!("expected a Rejected entry, got {other:?}"),
    }
    // The auditor reads both kinds and counts every refusal.
    let auditor = h.client(AUDITOR).await;
    let v = auditor.verify_log(&h.dir().join("audit.json"), |_, _| {}).await.unwrap();
    assert!(v.ok, "{:?}", v.report.failures);
    assert_eq!(v.report.rejections.get("missing_field"), Some(&500));
    assert_eq!(v.report.rejections.get("malformed_ack"), Some(&500));
    assert_eq!(v.report.rejections.get("unknown_message"), Some(&1));
}

#[tokio::test]
async fn counted_refusals_are_logged_at_shutdown() {
    let mut h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    assert_refused(
        police.broker().submit(pb::SubmitRequest { envelope: None }).await,
        Code::InvalidArgument,
        "missing_field",
    );
    let data = h.config.storage.data_dir.clone();
    h.stop().await;
    let (_, store) = broker::store::LocalEngine::open_existing(&data).unwrap();
    let size = broker::commit::restore_frontier(&*store).unwrap().size();
    let entries = broker::audit::read_entries(&*store, 0, size, usize::MAX).unwrap();
    let (i, bytes) = entries.last().expect("an entry");
    let e = referral_proto::audit::decode_entry(bytes, *i).unwrap();
    match e.event {
        Some(Event::RejectionSummary(s)) => assert_eq!((s.reason.as_str(), s.count), ("missing_field", 1)),
        other => panic!("expected the summary, got {other:?}"),
    }
}
