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

/// A backlog longer than the deliveries a stream queues with the committer
/// at a time (32): it still arrives in queue order, each message once, and
/// each is recorded as delivered exactly once.
#[tokio::test]
async fn a_long_backlog_arrives_in_queue_order_each_once_and_each_recorded_once() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap().message_id);
    }
    let oncall = h.client(SOCIAL_ONCALL).await;
    let mut alerts = oncall.subscribe().await.unwrap();
    let got = backlog(&mut alerts).await;
    assert_eq!(got.iter().map(|r| r.message_id).collect::<Vec<_>>(), ids);
    assert_eq!(got.iter().map(|r| r.sequence).collect::<Vec<_>>(), (1..=100).collect::<Vec<u64>>());
    assert!(got.iter().all(|r| !r.redelivery));
    // Each was recorded as delivered once: one DELIVERED receipt each.
    for (id, receipts) in police.receipts(&ids).await.unwrap() {
        let statuses: Vec<_> = receipts.iter().map(|r| r.statement.status).collect();
        assert_eq!(
            statuses,
            [referral_proto::receipt::ReceiptStatus::Accepted, referral_proto::receipt::ReceiptStatus::Delivered],
            "message {id}"
        );
    }
}

/// A raw subscription over a connection with 16 KiB HTTP/2 windows, so
/// that a client that does not read soon fills every buffer on the way.
async fn tiny_window_subscription(h: &Harness, principal: &str) -> tonic::Streaming<pb::Alert> {
    let p = certs::profile::Profile::load(&h.profile(principal), certs::now()).unwrap();
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
    pb::referral_broker_client::ReferralBrokerClient::new(channel)
        .subscribe(pb::SubscribeRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// A referral big enough that 150 of them overflow a stuck reader's
/// windows and the server's HTTP/2 send buffer (hyper keeps up to 400 KiB
/// per stream): about 4.3 KiB each.
fn big_notice() -> referral_proto::notice::ReferralNotice {
    let mut big = example_notice();
    big.free_text = "x".repeat(3900);
    big
}

#[tokio::test]
async fn a_stuck_subscriber_is_cut_off_without_holding_up_anyone() {
    let h = Harness::start_with(Options {
        tweak: Box::new(|c| {
            c.delivery.subscriber_buffer = 2;
            c.delivery.subscriber_stall_timeout = Duration::from_millis(300);
        }),
        ..Options::default()
    })
    .await;
    // A subscriber with tiny HTTP/2 windows that never reads.
    let mut stuck = tiny_window_subscription(&h, SOCIAL_ONCALL).await;

    let police = h.client(POLICE_SYSTEM).await;
    let system = h.client(SOCIAL_SYSTEM).await;
    let mut reader = system.subscribe().await.unwrap();
    let big = big_notice();
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
async fn a_message_acknowledged_while_a_subscriber_waits_for_room_is_never_sent_to_it() {
    let h = Harness::start_with(Options {
        tweak: Box::new(|c| {
            c.delivery.subscriber_buffer = 2;
            // Long enough that the slow subscriber is waited for, not cut off.
            c.delivery.subscriber_stall_timeout = Duration::from_secs(120);
        }),
        ..Options::default()
    })
    .await;
    let police = h.client(POLICE_SYSTEM).await;
    let system = h.client(SOCIAL_SYSTEM).await;
    let social = AgencyId::new(SOCIAL).unwrap();
    // 60 referrals of about 16 KB: one page of the broker's backlog read,
    // and about 1 MB, far more than the slow subscriber's buffers hold.
    let mut huge = example_notice();
    huge.free_text = "\u{1F512}".repeat(3900);
    let mut sent = Vec::new();
    for _ in 0..60 {
        sent.push(police.send(&social, &huge).await.unwrap());
    }
    let mut slow = tiny_window_subscription(&h, SOCIAL_ONCALL).await;
    let delivery_id = |alert: pb::Alert| match alert.event {
        Some(pb::alert::Event::Delivery(d)) => {
            Some(MessageId::from_bytes(&d.envelope.unwrap().header.unwrap().message_id).unwrap())
        }
        _ => None,
    };
    // Its first delivery shows the broker has read the backlog; then it
    // stops reading, and its stream fills up and waits for room.
    let first = loop {
        if let Some(id) = delivery_id(slow.next().await.expect("stream open").expect("no error status")) {
            break id;
        }
    };
    assert_eq!(first, sent[0].message_id);
    // Another subscriber of the agency settles every one of them meanwhile.
    for m in &sent {
        let acked = system.ack_digest(m.message_id, m.envelope_digest, "handlaggare-2").await.unwrap();
        assert!(!acked.already_acknowledged);
    }
    // One more, left open, marks the end of what the slow one can be sent.
    let last = police.send(&social, &huge).await.unwrap().message_id;
    let mut delivered = vec![first];
    while delivered.last() != Some(&last) {
        if let Some(id) = delivery_id(slow.next().await.expect("stream open").expect("no error status")) {
            delivered.push(id);
        }
    }
    // What was queued for it before the acks (its buffers' worth) arrives;
    // nothing acknowledged before it had room is sent afterwards.
    let before_acks = delivered.len() - 1;
    assert!(before_acks < 60, "acknowledged messages were still sent to the slow subscriber ({before_acks} of 60)");
    let expected: Vec<MessageId> = sent[..before_acks].iter().map(|m| m.message_id).chain([last]).collect();
    assert_eq!(delivered, expected, "a prefix of the queue, in order, then the open message");
}

#[tokio::test]
async fn idle_streams_get_heartbeats() {
    let h = Harness::start_with(Options {
        tweak: Box::new(|c| c.delivery.heartbeat_interval = Duration::from_millis(100)),
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

/// What one observing stream saw, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Delivery(MessageId),
    Settled(MessageId),
}

/// Reads a raw Subscribe stream until it has seen `n` settlements.
async fn observe(mut stream: tonic::Streaming<pb::Alert>, n: usize) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut settled = 0;
    while settled < n {
        let alert = stream.message().await.expect("stream open").expect("stream not ended");
        match alert.event {
            Some(pb::alert::Event::Delivery(d)) => {
                let header = d.envelope.unwrap().header.unwrap();
                seen.push(Seen::Delivery(MessageId::from_bytes(&header.message_id).unwrap()));
            }
            Some(pb::alert::Event::Settled(s)) => {
                seen.push(Seen::Settled(MessageId::from_bytes(&s.message_id).unwrap()));
                settled += 1;
            }
            _ => {}
        }
    }
    seen
}

/// Acks race deliveries: while referrals arrive, an on-call device acks
/// each one the moment it is accepted, and three streams of the agency
/// (two on-call devices and the case system, each on its own connection)
/// are being sent the same referrals. On no stream may a referral arrive
/// after its settlement: the single writer decides each delivery against
/// the state that settles it, and puts it into the stream before it
/// announces anything later.
#[tokio::test]
async fn acks_racing_deliveries_never_leave_an_alert_after_its_settlement() {
    const N: usize = 60;
    let h = Harness::start_with(Options {
        tweak: Box::new(|c| {
            c.limits.submit_rate_per_second = 10_000;
            c.limits.submit_burst = 10_000;
            c.limits.max_in_flight_per_principal = 256;
        }),
        ..Options::default()
    })
    .await;
    let social = AgencyId::new(SOCIAL).unwrap();
    let mut observers = Vec::new();
    for name in [SOCIAL_ONCALL, SOCIAL_ONCALL, SOCIAL_SYSTEM] {
        let client = h.client(name).await;
        let mut stream = client.broker().subscribe(pb::SubscribeRequest {}).await.unwrap().into_inner();
        // Up to the (empty) backlog's end, so the stream is live.
        loop {
            let a = stream.message().await.unwrap().unwrap();
            if matches!(a.event, Some(pb::alert::Event::CaughtUp(_))) {
                break;
            }
        }
        observers.push(tokio::spawn(async move {
            let _keep = client;
            observe(stream, N).await
        }));
    }

    // The acker acks each referral the moment the sender holds its
    // receipt, racing the broker's deliveries of it to the observers.
    let acker = std::sync::Arc::new(h.client(SOCIAL_ONCALL).await);
    let (to_ack, mut acks_due) = tokio::sync::mpsc::unbounded_channel::<(MessageId, referral_proto::Digest)>();
    let acking = tokio::spawn(async move {
        let mut acks = Vec::new();
        while let Some((id, digest)) = acks_due.recv().await {
            let acker = acker.clone();
            acks.push(tokio::spawn(async move { acker.ack_digest(id, digest, "jour-1").await.unwrap() }));
        }
        assert_eq!(acks.len(), N);
        for a in acks {
            a.await.unwrap();
        }
    });

    // Referrals from four police connections at once.
    let mut senders = Vec::new();
    for _ in 0..4 {
        let police = h.client(POLICE_SYSTEM).await;
        let social = social.clone();
        let to_ack = to_ack.clone();
        senders.push(tokio::spawn(async move {
            for _ in 0..N / 4 {
                let sent = police.send(&social, &example_notice()).await.unwrap();
                to_ack.send((sent.message_id, sent.envelope_digest)).unwrap();
            }
        }));
    }
    drop(to_ack);
    let everything = async {
        for s in senders {
            s.await.unwrap();
        }
        acking.await.unwrap();
        let mut seen = Vec::new();
        for o in observers {
            seen.push(o.await.unwrap());
        }
        seen
    };
    let seen = tokio::time::timeout(Duration::from_secs(60), everything).await.expect("the race ends in time");
    let mut deliveries = 0;
    for (i, stream) in seen.iter().enumerate() {
        let mut settled = std::collections::HashSet::new();
        for event in stream {
            match *event {
                Seen::Settled(id) => assert!(settled.insert(id), "stream {i}: {id} settled twice"),
                Seen::Delivery(id) => {
                    deliveries += 1;
                    assert!(!settled.contains(&id), "stream {i}: {id} was delivered after its settlement: {stream:?}");
                }
            }
        }
        assert_eq!(settled.len(), N, "stream {i} saw every settlement");
    }
    // The race was real: the observers were sent some referrals (not
    // every one: those acknowledged first are rightly never sent).
    assert!(deliveries > 0, "no referral reached an observer");

    // And the writer's own record agrees: no Delivered entry follows the
    // Acknowledged entry of its message (a delivery decided on a stale
    // view would be recorded, and sent, after the settlement).
    let mut acked_at = std::collections::HashMap::new();
    let mut late = Vec::new();
    for (index, entry) in crate::support::audit_entries(&h).await.into_iter().enumerate() {
        match entry.event {
            Some(pb::audit_entry::Event::Acknowledged(a)) => {
                let statement = a.ack.unwrap().statement.unwrap();
                acked_at.insert(MessageId::from_bytes(&statement.message_id).unwrap(), index);
            }
            Some(pb::audit_entry::Event::Delivered(d)) => {
                let id = MessageId::from_bytes(&d.message_id).unwrap();
                if acked_at.contains_key(&id) {
                    late.push((id, d.principal));
                }
            }
            _ => {}
        }
    }
    assert_eq!(acked_at.len(), N);
    assert!(late.is_empty(), "delivered after their acknowledgement: {late:?}");
}
