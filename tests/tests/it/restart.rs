//! Restarting the broker loses nothing and forgets no deadline.

use std::time::Duration;

use integration_tests::*;
use referral_proto::ids::AgencyId;
use referral_proto::notice::example_notice;
use referral_proto::receipt::ReceiptStatus;

use crate::deadlines::wait_status;

#[tokio::test]
async fn queued_messages_survive_a_restart() {
    let mut h = Harness::start_with(Options { manual_clock: true, ..Options::default() }).await;
    let police = h.client(POLICE_SYSTEM).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap().message_id);
    }
    let (size_before, root_before) = *h.state().hub.tree.borrow();
    h.restart().await;
    assert_eq!(*h.state().hub.tree.borrow(), (size_before, root_before), "the audit log is intact");
    let oncall = h.client(SOCIAL_ONCALL).await;
    let got = crate::support::waiting(&oncall).await;
    assert_eq!(got, ids);
    // New messages continue the queue's sequence.
    let police = h.client(POLICE_SYSTEM).await;
    let next = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    assert_eq!(next.receipt.statement.recipient_sequence, 4);
    // Deadlines were stored, not kept in memory: the restart forgot none.
    let mut receipts = police.watch_receipts(0).await.unwrap();
    h.advance(Duration::from_secs(4 * 3600 + 60));
    for id in &ids {
        wait_status(&mut receipts, *id, ReceiptStatus::Escalated).await;
    }
}

#[tokio::test]
async fn a_retry_days_later_still_gets_the_original_receipt() {
    let h = Harness::start_with(Options { manual_clock: true, ..Options::default() }).await;
    let police = h.client(POLICE_SYSTEM).await;
    let envelope = crate::support::example_envelope(&h, POLICE_SYSTEM, SOCIAL).await;
    let first = crate::support::submit_raw(&police, envelope.clone()).await.unwrap();
    // Long past the clock-skew window a fresh envelope would face.
    h.advance(Duration::from_secs(10 * 86_400));
    let again = crate::support::submit_raw(&police, envelope).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.receipt, first.receipt);
}

#[tokio::test]
async fn an_older_directory_is_refused_on_reload_and_on_restart() {
    let mut h = Harness::start().await;
    let path = h.dev.federation_dir().join("directory.bin");
    let v1 = std::fs::read(&path).unwrap();
    h.federation().publish_directory(certs::now()).unwrap();
    h.reload();
    assert_eq!(h.state().directory.current().directory.version, 2);
    std::fs::write(&path, &v1).unwrap();
    let err = broker::tasks::reload(h.state()).unwrap_err();
    assert!(err.contains("older than version 2"), "{err}");
    assert_eq!(h.state().directory.current().directory.version, 2, "kept the newer one");
    h.stop().await;
    let listener = bind_again(h.addr).await;
    let opts = broker::server::StartOptions { clock: std::sync::Arc::new(broker::clock::SystemClock), sighup: false };
    let err = broker::server::start(listener, h.config.clone(), opts, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the directory file holds version 1, older than version 2 this broker has served; refusing a rollback"
    );
}

/// A submit made while the broker is down is retried by the client library
/// with the same message id and the same bytes, and lands exactly once
/// when the broker is back.
#[tokio::test]
async fn a_submit_during_an_outage_is_retried_and_lands_once() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_under-test"));
    let mut b = ChildBroker::start(exe, tmp.path(), "").await;
    let police = std::sync::Arc::new(agency_client::Client::connect_dir(&b.dev.profile(POLICE_SYSTEM)).await.unwrap());
    police.refresh_directory().await.unwrap();
    assert!(b.terminate().await.success());
    let sending = tokio::spawn({
        let police = police.clone();
        async move { police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await }
    });
    // Down long enough for the first attempts to fail (the first retry
    // waits 100 ms, then 200, 400, ...).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!sending.is_finished(), "still retrying while the broker is down");
    b.spawn().await;
    let sent = sending.await.unwrap().expect("landed after the restart");
    assert_eq!(sent.receipt.statement.message_id, sent.message_id);
    // Exactly once in the recipient's queue.
    let oncall = agency_client::Client::connect_dir(&b.dev.profile(SOCIAL_ONCALL)).await.unwrap();
    assert_eq!(crate::support::waiting(&oncall).await, vec![sent.message_id]);
    assert!(b.terminate().await.success());
}
