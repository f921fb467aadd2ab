//! Subscriptions: fan-out to every subscriber, first ack wins, redelivery
//! after reconnect in queue order, and a stuck subscriber that holds up
//! nobody.

use std::time::Duration;

use agency_client::alerts::{AlertEvent, Alerts, IncomingReferral};
use futures_util::StreamExt as _;
use integration_tests::*;
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::notice::example_notice;
use referral_proto::pb;
use tonic::Code;

/// The next referral on the stream, skipping bookkeeping events.
async fn next_referral(alerts: &mut Alerts<'_>) -> Box<IncomingReferral> {
    loop {
        match alerts.next().await.unwrap().expect("stream open") {
            AlertEvent::Referral(r) => return r,
            AlertEvent::CaughtUp { .. } | AlertEvent::Heartbeat { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Every referral up to the CaughtUp marker.
async fn backlog(alerts: &mut Alerts<'_>) -> Vec<Box<IncomingReferral>> {
    let mut out = Vec::new();
    loop {
        match alerts.next().await.unwrap().expect("stream open") {
            AlertEvent::Referral(r) => out.push(r),
            AlertEvent::CaughtUp { .. } => return out,
            AlertEvent::Heartbeat { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn next_settled(alerts: &mut Alerts<'_>) -> (MessageId, String) {
    loop {
        match alerts.next().await.unwrap().expect("stream open") {
            AlertEvent::Settled { message_id, acknowledged_by, .. } => return (message_id, acknowledged_by),
            AlertEvent::Heartbeat { .. } | AlertEvent::CaughtUp { .. } | AlertEvent::Referral(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn every_subscriber_is_alerted_and_the_first_ack_wins() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let oncall = h.client(SOCIAL_ONCALL).await;
    let oncall_second_device = h.client(SOCIAL_ONCALL).await;
    let system = h.client(SOCIAL_SYSTEM).await;
    let mut a = oncall.subscribe().await.unwrap();
    let mut b = oncall_second_device.subscribe().await.unwrap();
    let mut c = system.subscribe().await.unwrap();
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    for alerts in [&mut a, &mut b, &mut c] {
        assert_eq!(next_referral(alerts).await.message_id, sent.message_id);
    }
    let first = oncall.ack_digest(sent.message_id, sent.envelope_digest, "jour-1").await.unwrap();
    assert!(!first.already_acknowledged);
    let second = system.ack_digest(sent.message_id, sent.envelope_digest, "handlaggare-2").await.unwrap();
    assert!(second.already_acknowledged);
    assert_eq!(second.receipt, first.receipt, "the later ack gets the first ack's receipt");
    assert_eq!(second.receipt.ack.unwrap().statement.acknowledged_by, "jour-1");
    for alerts in [&mut a, &mut b, &mut c] {
        assert_eq!(next_settled(alerts).await, (sent.message_id, "jour-1".to_owned()));
    }
}

#[tokio::test]
async fn unacknowledged_messages_are_redelivered_in_order_after_reconnect() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap().message_id);
    }
    let oncall = h.client(SOCIAL_ONCALL).await;
    let first = {
        let mut alerts = oncall.subscribe().await.unwrap();
        backlog(&mut alerts).await
    };
    assert_eq!(first.iter().map(|r| r.message_id).collect::<Vec<_>>(), ids);
    assert_eq!(first.iter().map(|r| r.sequence).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert!(first.iter().all(|r| !r.redelivery));
    oncall.ack_digest(first[1].message_id, first[1].envelope_digest, "jour-1").await.unwrap();
    let again = {
        let mut alerts = oncall.subscribe().await.unwrap();
        backlog(&mut alerts).await
    };
    let expected: Vec<MessageId> = ids.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, id)| *id).collect();
    assert_eq!(again.iter().map(|r| r.message_id).collect::<Vec<_>>(), expected);
    assert!(again.iter().all(|r| r.redelivery), "sent to this principal before");
    // Another principal of the agency has never been sent them.
    let system = h.client(SOCIAL_SYSTEM).await;
    let mut alerts = system.subscribe().await.unwrap();
    assert!(backlog(&mut alerts).await.iter().all(|r| !r.redelivery));
}

#[tokio::test]
async fn a_stuck_subscriber_is_cut_off_without_holding_up_anyone() {
    let h = Harness::start_with(Options {
        tweak: Box::new(|c| {
            c.subscriber_buffer = 2;
            c.stall_timeout = Duration::from_millis(300);
        }),
        ..Options::default()
    })
    .await;
    // A subscriber with tiny HTTP/2 windows that never reads.
    let p = certs::profile::Profile::load(&h.profile(SOCIAL_ONCALL), certs::now()).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&p.ca_pem))
        .identity(tonic::transport::Identity::from_pem(&p.cert_pem, p.key_pem.as_bytes()))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", h.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .unwrap();
    let mut stuck = pb::referral_broker_client::ReferralBrokerClient::new(channel)
        .subscribe(pb::SubscribeRequest {})
        .await
        .unwrap()
        .into_inner();

    let police = h.client(POLICE_SYSTEM).await;
    let system = h.client(SOCIAL_SYSTEM).await;
    let mut reader = system.subscribe().await.unwrap();
    // More than the stuck client's windows and the server's HTTP/2 send
    // buffer (hyper keeps up to 400 KiB per stream) can hold: 150 x ~4.3 KiB.
    let mut big = example_notice();
    big.free_text = "x".repeat(3900);
    let mut sent = Vec::new();
    for _ in 0..150 {
        sent.push(police.send(&AgencyId::new(SOCIAL).unwrap(), &big).await.unwrap().message_id);
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        got.push(next_referral(&mut reader).await.message_id);
    }
    assert_eq!(got, sent, "the reading subscriber got everything, in order");
    // The stuck one: what fitted in its buffers, then a clear status.
    let mut delivered = 0;
    let status = loop {
        match stuck.next().await {
            Some(Ok(_)) => delivered += 1,
            Some(Err(s)) => break s,
            None => panic!("the stream ended without a status"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("did not read"), "{status:?}");
    assert!(delivered < 150, "a stuck reader cannot have received everything ({delivered})");
}

#[tokio::test]
async fn idle_streams_get_heartbeats() {
    let h = Harness::start_with(Options {
        tweak: Box::new(|c| c.heartbeat_interval = Duration::from_millis(100)),
        ..Options::default()
    })
    .await;
    let oncall = h.client(SOCIAL_ONCALL).await;
    let mut alerts = oncall.subscribe().await.unwrap();
    let mut beats = 0;
    while beats < 2 {
        match alerts.next().await.unwrap().unwrap() {
            AlertEvent::Heartbeat { at } => {
                assert!(at.0 > 0);
                beats += 1;
            }
            AlertEvent::CaughtUp { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
