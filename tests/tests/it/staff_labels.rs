//! The `acknowledged_by` label stays in the permanent audit log: one that
//! holds a personal identity number is refused by the client before
//! sending, and by the broker if a client sends it anyway.

use std::path::Path;

use agency_client::ClientError;
use integration_tests::*;
use referral_proto::ack::{AckError, AckStatement};
use referral_proto::ids::AgencyId;
use referral_proto::notice::example_notice;
use referral_proto::pb;

use crate::support::{profile, waiting};

#[tokio::test]
async fn an_ack_label_holding_a_personal_identity_number_is_refused_by_client_and_broker() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    let oncall = h.client(SOCIAL_ONCALL).await;

    // The library refuses before anything is sent.
    for label in ["19850312-2387", "jour 8503122383"] {
        match oncall.ack_digest(sent.message_id, sent.envelope_digest, label).await {
            Err(ClientError::Ack(AckError::AcknowledgedByPersonalNumber)) => {}
            other => panic!("{label}: expected a refusal, got {other:?}"),
        }
    }
    // And the command line says why.
    let (p, id) = (h.profile(SOCIAL_ONCALL).display().to_string(), sent.message_id.to_string());
    let exe = Path::new(env!("CARGO_BIN_EXE_under-test"));
    let (code, _, err) = run_tool(exe, "agency-client", &["--profile", &p, "ack", &id, "--by", "198503122387"]).await;
    assert_eq!(code, 65);
    assert_eq!(err.trim(), "error: ack acknowledged_by must not contain a personal identity number");

    // A client that signs such a label anyway (the signature is valid) is
    // refused by the broker as a malformed ack.
    let bundle = &profile(&h, SOCIAL_ONCALL).bundles[0];
    let statement = AckStatement {
        message_id: sent.message_id,
        envelope_digest: sent.envelope_digest,
        acknowledged_at: certs::now(),
        acker_agency: AgencyId::new(SOCIAL).unwrap(),
        acknowledged_by: "850312-2383".into(),
        signer_key_id: bundle.key_id(),
        note_digest: None,
    };
    let signature = bundle.sign(&statement.signing_input()).to_vec();
    let ack = pb::SignedAck {
        statement: Some(pb::AckStatement {
            message_id: statement.message_id.as_bytes().to_vec(),
            envelope_digest: statement.envelope_digest.0.to_vec(),
            acknowledged_at_ms: statement.acknowledged_at.0,
            acker_agency: SOCIAL.into(),
            acknowledged_by: statement.acknowledged_by.clone(),
            signer_key_id: statement.signer_key_id.as_bytes().to_vec(),
            note_digest: vec![],
        }),
        signature,
        note: None,
    };
    let s = assert_refused(
        oncall.broker().ack(pb::AckRequest { ack: Some(ack) }).await,
        tonic::Code::InvalidArgument,
        "malformed_ack",
    );
    // The message names the rule, never the value.
    assert_eq!(s.message(), "malformed ack: ack acknowledged_by must not contain a personal identity number");
    assert_eq!(waiting(&oncall).await, [sent.message_id], "still waiting for a proper acknowledgement");
}
