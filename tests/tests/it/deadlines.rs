//! Ack deadlines, escalation, expiry and purging, on a clock the test moves.

use std::time::Duration;

use agency_client::ReceiptStream;
use agency_client::alerts::AlertEvent;
use integration_tests::*;
use referral_proto::envelope::Urgency;
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::notice::example_notice;
use referral_proto::pb;
use referral_proto::receipt::ReceiptStatus;
use tonic::Code;

use crate::support::audit_entries;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

pub async fn wait_status(
    receipts: &mut ReceiptStream,
    id: MessageId,
    status: ReceiptStatus,
) -> referral_proto::receipt::Receipt {
    loop {
        let (_, r) = receipts.next().await.unwrap().expect("receipt stream open");
        if r.statement.message_id == id && r.statement.status == status {
            return r;
        }
    }
}

async fn send(h: &Harness, urgency: Urgency) -> (agency_client::Sent, agency_client::Client) {
    let police = h.client(POLICE_SYSTEM).await;
    let mut n = example_notice();
    n.urgency = urgency;
    (police.send(&AgencyId::new(SOCIAL).unwrap(), &n).await.unwrap(), police)
}

fn manual() -> Options {
    Options { manual_clock: true, ..Options::default() }
}

#[tokio::test]
async fn a_missed_deadline_escalates_to_sender_and_escalation_contact() {
    let h = Harness::start_with(manual()).await;
    let (sent, police) = send(&h, Urgency::Urgent).await;
    let oncall = h.client(SOCIAL_ONCALL).await; // the directory's escalation contact
    let mut alerts = oncall.subscribe().await.unwrap();
    let mut receipts = police.watch_receipts(0).await.unwrap();
    wait_status(&mut receipts, sent.message_id, ReceiptStatus::Accepted).await;
    h.advance(4 * HOUR - Duration::from_secs(60));
    h.state().committer.barrier().await;
    h.advance(2 * Duration::from_secs(60));
    let escalated = wait_status(&mut receipts, sent.message_id, ReceiptStatus::Escalated).await;
    assert_eq!(escalated.statement.detail, "spiffe://igor.example.se/agency/huddinge-socialtjanst/oncall/socialjour");
    loop {
        match alerts.next().await.unwrap().unwrap() {
            AlertEvent::Escalation { message_id, urgency, .. } => {
                assert_eq!(message_id, sent.message_id);
                assert_eq!(urgency, Some(Urgency::Urgent));
                break;
            }
            AlertEvent::Referral(_) | AlertEvent::CaughtUp { .. } | AlertEvent::Heartbeat { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Still acknowledgeable, and marked as escalated on redelivery.
    let acked = oncall.ack(sent.message_id, "jour-2").await.unwrap();
    assert!(!acked.already_acknowledged);
    wait_status(&mut receipts, sent.message_id, ReceiptStatus::Acknowledged).await;
}

/// The directory may name an escalation contact in another agency (a joint
/// regional on-call service, say): that principal gets the escalation alert
/// even though the referral was not addressed to its agency.
#[tokio::test]
async fn the_escalation_contact_may_belong_to_another_agency() {
    use referral_proto::directory::{AgencyKind, EscalationContact};
    use referral_proto::ids::{Principal, Role};
    let h = Harness::start_with(manual()).await;
    let now = certs::now();
    let mut fed = h.federation();
    let region = AgencyId::new("sodertorn-jour").unwrap();
    let town = AgencyId::new("botkyrka-socialtjanst").unwrap();
    let contact = Principal::new(fed.trust_domain(), region.clone(), Role::Oncall, "jour").unwrap();
    fed.add_agency(&region, AgencyKind::Municipal, "Södertörns socialjour", None).unwrap();
    let escalation = EscalationContact {
        principal: contact.clone(),
        display_name: "Södertörns socialjour".into(),
        phone: "+46 8 0".into(),
    };
    fed.add_agency(&town, AgencyKind::Municipal, "Botkyrka kommun, socialtjänsten", Some(escalation)).unwrap();
    let mut key_files = Vec::new();
    for agency in [&region, &town] {
        let path = h.dir().join(format!("{agency}.key"));
        let (_, files) =
            certs::keygen::generate(agency, &path, now.plus_millis(-60_000), now.plus_millis(86_400_000), false)
                .unwrap();
        fed.add_agency_key(&certs::keygen::read_public(&files.public).unwrap()).unwrap();
        key_files.push(path);
    }
    fed.publish_directory(now).unwrap();
    h.reload();
    let profile = h.dir().join("profiles").join("sodertorn-jour");
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_under-test"));
    let (code, _, err) = run_tool(
        exe,
        "certs",
        &[
            "issue",
            "--dir",
            h.dev.federation_dir().to_str().unwrap(),
            "--principal",
            &contact.uri(),
            "--out",
            profile.to_str().unwrap(),
            "--broker",
            &format!("https://{}", h.addr),
            "--agency-keys",
            key_files[0].to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let jour = agency_client::Client::connect_dir(&profile).await.unwrap();
    let mut jour_alerts = jour.subscribe().await.unwrap();
    // The recipient's own subscriber and the police's on-call are not the contact.
    let police_oncall = h.client(POLICE_ONCALL).await;
    let mut police_alerts = police_oncall.subscribe().await.unwrap();

    let police = h.client(POLICE_SYSTEM).await;
    police.refresh_directory().await.unwrap();
    let mut n = example_notice();
    n.urgency = Urgency::Urgent;
    let sent = police.send(&town, &n).await.unwrap();
    let mut receipts = police.watch_receipts(0).await.unwrap();
    wait_status(&mut receipts, sent.message_id, ReceiptStatus::Accepted).await;
    h.advance(4 * HOUR + Duration::from_secs(60));
    let escalated = wait_status(&mut receipts, sent.message_id, ReceiptStatus::Escalated).await;
    assert_eq!(escalated.statement.detail, contact.uri());
    loop {
        match jour_alerts.next().await.unwrap().unwrap() {
            AlertEvent::Escalation { message_id, .. } => {
                assert_eq!(message_id, sent.message_id);
                break;
            }
            AlertEvent::CaughtUp { .. } | AlertEvent::Heartbeat { .. } => {}
            other => panic!("the contact is sent the escalation only, got {other:?}"),
        }
    }
    // The police on-call got no escalation of a referral the police sent
    // (the sender learns of it through its ESCALATED receipt).
    police_oncall.refresh_directory().await.unwrap();
    match tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            match police_alerts.next().await.unwrap().unwrap() {
                AlertEvent::CaughtUp { .. } | AlertEvent::Heartbeat { .. } => {}
                other => return other,
            }
        }
    })
    .await
    {
        Err(_) => {}
        Ok(other) => panic!("the police on-call was sent {other:?}"),
    }
}

#[tokio::test]
async fn each_urgency_has_its_own_deadline() {
    let h = Harness::start_with(manual()).await;
    let (immediate, police) = send(&h, Urgency::Immediate).await;
    let (routine, _) = send(&h, Urgency::Routine).await;
    let mut receipts = police.watch_receipts(0).await.unwrap();
    h.advance(Duration::from_secs(16 * 60));
    wait_status(&mut receipts, immediate.message_id, ReceiptStatus::Escalated).await;
    let statuses = police.receipts(&[routine.message_id]).await.unwrap().remove(0).1;
    assert!(statuses.iter().all(|r| r.statement.status != ReceiptStatus::Escalated), "routine waits 3 days");
    h.advance(3 * DAY);
    wait_status(&mut receipts, routine.message_id, ReceiptStatus::Escalated).await;
}

#[tokio::test]
async fn unacknowledged_messages_expire_and_their_ciphertext_is_deleted() {
    let h = Harness::start_with(manual()).await;
    let (sent, police) = send(&h, Urgency::Routine).await;
    let mut receipts = police.watch_receipts(0).await.unwrap();
    h.advance(30 * DAY + Duration::from_secs(1));
    wait_status(&mut receipts, sent.message_id, ReceiptStatus::Expired).await;
    h.state().committer.barrier().await;
    let key = sent.message_id.as_bytes().to_vec();
    assert_eq!(h.state().store.get(broker::store::Table::Envelopes, &key).unwrap(), None, "ciphertext purged");
    // Too late to acknowledge. (Signed at the broker's moved clock: an ack
    // dated 30 days before it would be refused as clock skew first.)
    let oncall = h.client(SOCIAL_ONCALL).await;
    let bundle = &crate::support::profile(&h, SOCIAL_ONCALL).bundles[0];
    let late =
        referral_proto::ack::sign_ack(sent.message_id, sent.envelope_digest, h.state().clock.now(), "jour-1", bundle)
            .unwrap();
    let ack = Some(pb::SignedAck::from(&late));
    let status = oncall.broker().ack(pb::AckRequest { ack }).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(integration_tests::reason(&status).as_deref(), Some("ack_after_expiry"), "{status:?}");
    // Gone from the queue too.
    let mut alerts = oncall.subscribe().await.unwrap();
    loop {
        match alerts.next().await.unwrap().unwrap() {
            AlertEvent::Referral(r) => panic!("expired message {} was delivered", r.message_id),
            AlertEvent::CaughtUp { .. } => break,
            _ => {}
        }
    }
    let kinds: Vec<_> = audit_entries(&h)
        .await
        .into_iter()
        .filter_map(|e| e.event)
        .map(|e| referral_proto::audit::EventKind::of(&e))
        .collect();
    use referral_proto::audit::EventKind::*;
    assert_eq!(kinds, [Submitted, Escalated, Expired, Purged, Rejected], "the late ack is logged as rejected");
}

#[tokio::test]
async fn acknowledged_ciphertext_is_purged_after_the_retention_period() {
    let h = Harness::start_with(manual()).await;
    let (sent, police) = send(&h, Urgency::Urgent).await;
    h.client(SOCIAL_ONCALL).await.ack(sent.message_id, "jour-1").await.unwrap();
    let key = sent.message_id.as_bytes().to_vec();
    assert!(h.state().store.get(broker::store::Table::Envelopes, &key).unwrap().is_some());
    let mut tree = h.state().hub.tree.subscribe();
    h.advance(7 * DAY + Duration::from_secs(1));
    loop {
        h.state().committer.barrier().await;
        let entries = audit_entries(&h).await;
        if entries.iter().any(|e| matches!(e.event, Some(pb::audit_entry::Event::Purged(_)))) {
            break;
        }
        tree.changed().await.unwrap();
    }
    assert_eq!(h.state().store.get(broker::store::Table::Envelopes, &key).unwrap(), None);
    // The receipts stay: the log and the sender keep digests, not content.
    let receipts = police.receipts(&[sent.message_id]).await.unwrap().remove(0).1;
    assert_eq!(receipts.last().unwrap().statement.status, ReceiptStatus::Acknowledged);
}
