//! Personal data never reaches the broker's logs or, in plaintext, its disk.

use std::path::Path;

use agency_client::alerts::AlertEvent;
use integration_tests::*;
use referral_proto::ids::AgencyId;
use referral_proto::notice::example_notice;

use crate::support::{contains, files};

const NAME: &str = "Ingrid Hemligsdotter";
const PIN: &str = "197904163305";

#[tokio::test]
async fn names_and_personal_identity_numbers_never_reach_logs_or_disk() {
    assert!(referral_proto::notice::is_personal_identity_number(PIN));
    let tmp = tempfile::tempdir().unwrap();
    // Everything the broker can log, as JSON, at the most verbose level.
    let mut b = ChildBroker::start(
        Path::new(env!("CARGO_BIN_EXE_under-test")),
        tmp.path(),
        "[log]\nlevel = \"trace\"\nformat = \"json\"",
    )
    .await;
    let police = agency_client::Client::connect_dir(&b.dev.profile(POLICE_SYSTEM)).await.unwrap();
    let oncall = agency_client::Client::connect_dir(&b.dev.profile(SOCIAL_ONCALL)).await.unwrap();
    let mut n = example_notice();
    n.subject.name = NAME.into();
    n.subject.personal_identity_number = PIN.into();
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &n).await.unwrap();
    let mut alerts = oncall.subscribe().await.unwrap();
    loop {
        if let AlertEvent::Referral(r) = alerts.next().await.unwrap().unwrap() {
            assert_eq!(r.notice.subject.name, NAME, "the recipient does read it");
            oncall.ack_digest(r.message_id, r.envelope_digest, "jour-1").await.unwrap();
            break;
        }
    }
    police.receipts(&[sent.message_id]).await.unwrap();
    drop(alerts);
    assert!(b.terminate().await.success());

    let log = b.log();
    assert!(log.contains(&sent.message_id.to_string()), "the log is real and mentions the message id:\n{log}");
    for needle in [NAME, PIN, "19790416-3305", "Hemligsdotter"] {
        assert!(!log.contains(needle), "{needle:?} appears in the broker log");
    }
    let data = files(&b.data_dir);
    assert!(!data.is_empty());
    for f in data {
        let bytes = std::fs::read(&f).unwrap();
        for needle in [NAME.as_bytes(), PIN.as_bytes(), b"Hemligsdotter"] {
            assert!(
                !contains(&bytes, needle),
                "{} holds {:?} in plaintext",
                f.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
}

/// What an auditor replays holds the envelope's digest and metadata, never
/// its ciphertext (nor its encapsulated key): auditing needs no content.
#[tokio::test]
async fn the_audit_log_an_auditor_replays_holds_no_ciphertext() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let envelope = crate::support::sealed(&h, POLICE_SYSTEM, SOCIAL, &example_notice()).await;
    crate::support::submit_raw(&police, referral_proto::pb::Envelope::from(&envelope)).await.unwrap();
    let oncall = h.client(SOCIAL_ONCALL).await;
    oncall.ack_digest(envelope.header.message_id, envelope.digest(), "jour-1").await.unwrap();
    h.state().committer.barrier().await;

    let auditor = h.client(AUDITOR).await;
    let size = h.state().hub.tree.borrow().0;
    let mut stream = auditor
        .auditor_rpc()
        .replay(referral_proto::pb::ReplayRequest { from: 0, to: size })
        .await
        .unwrap()
        .into_inner();
    let mut log = Vec::new();
    let mut entries = 0;
    while let Some(e) = stream.message().await.unwrap() {
        log.extend_from_slice(&e.entry);
        entries += 1;
    }
    assert!(entries >= 2, "a submitted and an acknowledged entry: {entries}");
    // The control: the log does carry the envelope's digest.
    assert!(contains(&log, envelope.digest().as_bytes()), "the digest is in the log");
    for (what, secret) in
        [("ciphertext", &envelope.ciphertext[..]), ("encapsulated key", &envelope.encapsulated_key[..])]
    {
        for window in secret.chunks(16).filter(|c| c.len() == 16) {
            assert!(!contains(&log, window), "16 bytes of the {what} are in the audit log");
        }
    }
}
