//! Referrals both ways, with every receipt; idempotent resubmission.

use agency_client::alerts::AlertEvent;
use integration_tests::*;
use referral_proto::ids::AgencyId;
use referral_proto::notice::example_notice;
use referral_proto::receipt::ReceiptStatus;

#[tokio::test]
async fn police_to_social_services_and_back() {
    let h = Harness::start().await;
    for (from, to_profile, to) in [(POLICE_SYSTEM, SOCIAL_ONCALL, SOCIAL), (SOCIAL_SYSTEM, POLICE_ONCALL, POLICE)] {
        let sender = h.client(from).await;
        let oncall = h.client(to_profile).await;
        let mut alerts = oncall.subscribe().await.unwrap();
        let sent = sender.send(&AgencyId::new(to).unwrap(), &example_notice()).await.unwrap();
        assert_eq!(sent.receipt.statement.status, ReceiptStatus::Accepted);
        assert!(!sent.duplicate);
        let incoming = loop {
            match alerts.next().await.unwrap().unwrap() {
                AlertEvent::Referral(r) => break r,
                AlertEvent::CaughtUp { .. } | AlertEvent::Heartbeat { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(incoming.message_id, sent.message_id);
        assert_eq!(incoming.notice, example_notice());
        assert_eq!(incoming.envelope_digest, sent.envelope_digest);
        let acked = oncall.ack_digest(incoming.message_id, incoming.envelope_digest, "jour-7").await.unwrap();
        assert!(!acked.already_acknowledged);
        let mut receipts = sender.watch_receipts(0).await.unwrap();
        let mut statuses = Vec::new();
        while statuses.len() < 3 {
            let (_, r) = receipts.next().await.unwrap().unwrap();
            assert_eq!(r.statement.message_id, sent.message_id);
            statuses.push(r.statement.status);
            if r.statement.status == ReceiptStatus::Acknowledged {
                assert_eq!(r.ack.as_ref().unwrap().statement.acknowledged_by, "jour-7");
            }
        }
        assert_eq!(statuses, [ReceiptStatus::Accepted, ReceiptStatus::Delivered, ReceiptStatus::Acknowledged]);
    }
}
