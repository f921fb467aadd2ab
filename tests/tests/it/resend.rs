//! Resending: the client keeps each sealed envelope until the broker has
//! answered with a receipt, so a resend under the same message id is the
//! same bytes and gets the original receipt (never `duplicate_conflict`).

use std::path::Path;

use integration_tests::*;
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::notice::example_notice;
use referral_proto::receipt::Receipt;

use crate::support::submit_raw;

#[tokio::test]
async fn a_resend_after_a_lost_answer_gets_the_original_receipt() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let social = AgencyId::new(SOCIAL).unwrap();
    let notice = example_notice();

    // The first attempt reaches the broker but its answer is lost: the
    // envelope was sealed and kept, then submitted outside the library.
    let id = MessageId::generate(certs::now().0);
    let envelope = police.seal_to_outbox(&social, &notice, id).await.unwrap();
    let kept = police.outbox().path(id);
    assert!(kept.exists());
    let first = submit_raw(&police, envelope).await.unwrap();
    assert!(!first.duplicate);
    let original = Receipt::try_from(first.receipt.unwrap()).unwrap();
    assert_eq!(police.outbox().pending().unwrap(), [id], "no answer seen yet: still kept");

    // The retry re-submits the kept bytes: the broker recognises it.
    let again = police.send_with_id(&social, &notice, id).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.receipt, original, "the original receipt, signed the same");
    assert!(!kept.exists(), "a receipt arrived: the envelope is no longer kept");

    // The same through the command line, for another message.
    let id = MessageId::generate(certs::now().0);
    let envelope = police.seal_to_outbox(&social, &notice, id).await.unwrap();
    let original = Receipt::try_from(submit_raw(&police, envelope).await.unwrap().receipt.unwrap()).unwrap();
    let file = h.dir().join("referral.json");
    std::fs::write(&file, serde_json::to_string(&notice).unwrap()).unwrap();
    let (p, f, i) = (h.profile(POLICE_SYSTEM).display().to_string(), file.display().to_string(), id.to_string());
    let exe = Path::new(env!("CARGO_BIN_EXE_under-test"));
    let args = ["--profile", &p, "--json", "send", "--to", SOCIAL, "--referral", &f, "--message-id", &i];
    let (code, out, err) = run_tool(exe, "agency-client", &args).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["duplicate"], true);
    assert_eq!(v["receipt"]["log_index"], original.statement.log_index);
    assert_eq!(v["receipt"]["envelope_digest"], original.statement.envelope_digest.to_hex());
    assert!(police.outbox().pending().unwrap().is_empty());
}

#[tokio::test]
async fn a_sent_envelope_leaves_the_outbox_with_its_receipt() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let social = AgencyId::new(SOCIAL).unwrap();
    let sent = police.send(&social, &example_notice()).await.unwrap();
    assert!(police.outbox().pending().unwrap().is_empty());
    // Without the kept envelope a resend is a fresh seal, which the broker
    // must refuse: it cannot tell it from a swapped referral.
    let err = police.send_with_id(&social, &example_notice(), sent.message_id).await.unwrap_err();
    let s = err.status().expect("a broker refusal");
    assert_eq!(s.code(), tonic::Code::AlreadyExists);
    assert_eq!(
        s.message(),
        format!("message id {} was already accepted with a different envelope digest", sent.message_id)
    );

    // A receipt seen through GetReceipts or WatchReceipts also ends the keeping.
    let id = MessageId::generate(certs::now().0);
    let envelope = police.seal_to_outbox(&social, &example_notice(), id).await.unwrap();
    submit_raw(&police, envelope).await.unwrap();
    police.receipts(&[id]).await.unwrap();
    assert!(police.outbox().pending().unwrap().is_empty());
}
