//! Retired keys settle nothing: the key that signed an envelope or an ack
//! must be valid at the broker's receive time, and the signed time must lie
//! within the skew window (for an ack, not before the submission).

use integration_tests::*;
use referral_proto::ack::sign_ack;
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::keys::AgencyKeyBundle;
use referral_proto::notice::example_notice;
use referral_proto::pb;
use referral_proto::time::Timestamp;
use tonic::Code;

use crate::support::*;

const DAY: i64 = 86_400_000;

/// A key bundle of `agency` valid over [now + from_days, now + to_days),
/// published in the directory (as a rotation leaves the old key there), and
/// the broker reloaded.
fn published_bundle(h: &Harness, agency: &str, from_days: i64, to_days: i64) -> AgencyKeyBundle {
    let now = certs::now();
    let id = AgencyId::new(agency).unwrap();
    let path = h.dir().join(format!("{agency}{from_days}{to_days}.key"));
    let (bundle, files) =
        certs::keygen::generate(&id, &path, now.plus_millis(from_days * DAY), now.plus_millis(to_days * DAY), false)
            .unwrap();
    let mut fed = h.federation();
    fed.add_agency_key(&certs::keygen::read_public(&files.public).unwrap()).unwrap();
    fed.publish_directory(now).unwrap();
    h.reload();
    bundle
}

async fn ack_with(client: &agency_client::Client, ack: &referral_proto::ack::SignedAck) -> Result<(), tonic::Status> {
    client.broker().ack(pb::AckRequest { ack: Some(pb::SignedAck::from(ack)) }).await.map(drop)
}

#[tokio::test]
async fn an_envelope_signed_with_a_retired_key_is_refused() {
    let h = Harness::start().await;
    // Valid from ten days ago until yesterday; the envelope claims to be
    // from two days ago, inside both the key's validity and the 7-day skew.
    let retired = published_bundle(&h, POLICE, -10, -1);
    // (The recipient needs a key valid then too, for the envelope to be sealed.)
    published_bundle(&h, SOCIAL, -30, 30);
    let police = h.client(POLICE_SYSTEM).await;
    let dir = police.refresh_directory().await.unwrap();
    let created = certs::now().plus_millis(-2 * DAY);
    let envelope = referral_proto::seal::seal(
        &example_notice(),
        &retired,
        dir.agency(&AgencyId::new(SOCIAL).unwrap()).unwrap(),
        MessageId::generate(created.0),
        created,
    )
    .unwrap();
    let s = assert_refused(
        submit_raw(&police, pb::Envelope::from(&envelope)).await,
        Code::InvalidArgument,
        "key_not_valid",
    );
    assert!(s.message().contains("the sender key") && s.message().contains("broker's receive time"), "{s:?}");
    // Never stored, never queued.
    let oncall = h.client(SOCIAL_ONCALL).await;
    assert!(waiting(&oncall).await.is_empty());
}

#[tokio::test]
async fn acks_signed_with_retired_keys_or_at_chosen_times_are_refused() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    let accepted_at = sent.receipt.statement.at;
    let oncall = h.client(SOCIAL_ONCALL).await;

    // The attack: a bundle valid only long ago signs an ack dated
    // inside its validity. Judged at the broker's receive time, it is refused.
    let ancient = published_bundle(&h, SOCIAL, -400, -300);
    let old =
        sign_ack(sent.message_id, sent.envelope_digest, certs::now().plus_millis(-350 * DAY), "x", &ancient).unwrap();
    assert_refused(ack_with(&oncall, &old).await, Code::InvalidArgument, "key_not_valid");
    // A bundle retired yesterday, signing now.
    let retired = published_bundle(&h, SOCIAL, -10, -1);
    let now_signed = sign_ack(sent.message_id, sent.envelope_digest, certs::now(), "jour-1", &retired).unwrap();
    assert_refused(ack_with(&oncall, &now_signed).await, Code::InvalidArgument, "key_not_valid");

    // The current key, but a signed time beyond the past skew (7 days)...
    let current = &profile(&h, SOCIAL_ONCALL).bundles[0];
    let stale =
        sign_ack(sent.message_id, sent.envelope_digest, certs::now().plus_millis(-8 * DAY), "jour-1", current).unwrap();
    let s = assert_refused(ack_with(&oncall, &stale).await, Code::InvalidArgument, "clock_skew");
    assert!(s.message().starts_with("ack acknowledged_at is -"), "{s:?}");
    // ...and one within the skew but before the broker accepted the message.
    let early =
        sign_ack(sent.message_id, sent.envelope_digest, accepted_at.plus_millis(-60_000), "jour-1", current).unwrap();
    assert_refused(ack_with(&oncall, &early).await, Code::InvalidArgument, "ack_before_submission");

    // None of them settled it: the message still waits, and the real ack wins.
    assert_eq!(waiting(&oncall).await, [sent.message_id]);
    let ok = oncall.ack_digest(sent.message_id, sent.envelope_digest, "jour-1").await.unwrap();
    assert!(!ok.already_acknowledged);
    // The two with a verified signature are logged one by one; the retired
    // keys' attempts only counted.
    assert_eq!(rejection_reasons(&h).await, ["clock_skew", "ack_before_submission"]);
    assert_eq!(summarised(&h).await.get("key_not_valid"), Some(&2));
    // And the log verifies under the auditor's rule (keys valid at the
    // logged time, acks after their submission).
    let auditor = h.client(AUDITOR).await;
    let v = auditor.verify_log(&h.dir().join("audit.json"), |_, _| {}).await.unwrap();
    assert!(v.ok, "{:?}", v.report.failures);
}

#[tokio::test]
async fn an_envelope_dated_beyond_the_skew_is_refused_on_both_sides() {
    let h = Harness::start().await;
    // A key valid over the whole window, so that only the time is wrong.
    let signer = published_bundle(&h, POLICE, -30, 30);
    published_bundle(&h, SOCIAL, -30, 30);
    let police = h.client(POLICE_SYSTEM).await;
    let dir = police.refresh_directory().await.unwrap();
    let social = dir.agency(&AgencyId::new(SOCIAL).unwrap()).unwrap();
    for offset in [3_600_000, -8 * DAY] {
        let at = Timestamp(certs::now().0 + offset);
        let e = referral_proto::seal::seal(&example_notice(), &signer, social, MessageId::generate(at.0), at).unwrap();
        let s = assert_refused(submit_raw(&police, pb::Envelope::from(&e)).await, Code::InvalidArgument, "clock_skew");
        assert!(s.message().starts_with("envelope created_at is "), "{s:?}");
    }
    // Signed and verified, so each is logged one by one.
    assert_eq!(rejection_reasons(&h).await, ["clock_skew", "clock_skew"]);
}
