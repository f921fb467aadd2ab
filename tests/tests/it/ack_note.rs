//! The optional note with an acknowledgement (PROTOCOL.md 7.4): sealed to
//! the sending agency, relayed in the ACKNOWLEDGED receipt, never in the
//! broker's log, its disk in plaintext, or the audit log; purged with the
//! payload; refused when oversized, altered or unsigned; useless when moved.

use std::path::Path;
use std::time::Duration;

use referral_proto::ack::{AckError, MAX_NOTE_CIPHERTEXT, NoteError, SignedAck, sign_ack, sign_ack_with_note};
use referral_proto::envelope::Envelope;
use referral_proto::ids::AgencyId;
use referral_proto::notice::example_notice;
use referral_proto::pb;
use referral_proto::receipt::ReceiptStatus;
use tonic::Code;

use crate::support::{client, contains, files, sealed, submit_raw};
use integration_tests::*;

/// A note holding a name and a personal identity number: allowed, since only
/// the sender can read it.
const NOTE: &str = "Ringer Ingrid Hemligsdotter (197904163305) kl 08.\nHembesök bokat.";
const SECRETS: [&str; 3] = ["Hemligsdotter", "197904163305", "Hembesök bokat"];

fn acked_receipt(receipts: &[referral_proto::receipt::Receipt]) -> &referral_proto::receipt::Receipt {
    receipts.iter().find(|r| r.statement.status == ReceiptStatus::Acknowledged).expect("an ACKNOWLEDGED receipt")
}

#[tokio::test]
async fn the_sender_reads_the_note_and_the_broker_log_and_disk_never_hold_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = ChildBroker::start(
        Path::new(env!("CARGO_BIN_EXE_under-test")),
        tmp.path(),
        "[log]\nlevel = \"trace\"\nformat = \"json\"",
    )
    .await;
    let police = agency_client::Client::connect_dir(&b.dev.profile(POLICE_SYSTEM)).await.unwrap();
    let oncall = agency_client::Client::connect_dir(&b.dev.profile(SOCIAL_ONCALL)).await.unwrap();
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    let acked = oncall.ack_with_note(sent.message_id, "jour-1", Some(NOTE)).await.unwrap();
    assert!(!acked.already_acknowledged);
    // The acknowledging agency cannot read what it sealed to the sender.
    let sealed_to = acked.receipt.ack.as_ref().unwrap().note.as_ref().unwrap().key_id;
    assert_eq!(oncall.open_note(&acked.receipt).unwrap_err(), NoteError::NoMatchingKey(sealed_to));

    let receipts = police.receipts(&[sent.message_id]).await.unwrap().remove(0).1;
    let r = acked_receipt(&receipts);
    assert_eq!(police.open_note(r).unwrap().as_deref(), Some(NOTE), "the sender reads the note");
    drop((police, oncall));
    assert!(b.terminate().await.success());

    let log = b.log();
    assert!(log.contains(&sent.message_id.to_string()), "the log is real and mentions the message id:\n{log}");
    for needle in SECRETS {
        assert!(!log.contains(needle), "{needle:?} appears in the broker log");
    }
    let data = files(&b.data_dir);
    assert!(!data.is_empty());
    for f in data {
        let bytes = std::fs::read(&f).unwrap();
        for needle in SECRETS {
            assert!(!contains(&bytes, needle.as_bytes()), "{} holds {needle:?} in plaintext", f.display());
        }
    }
}

#[tokio::test]
async fn ack_note_on_the_command_line_status_shows_it_and_the_audit_log_keeps_only_its_digest() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    let id = sent.message_id.to_string();

    // A note the rules refuse is refused before anything is signed.
    let (code, _, err) = client(&h, SOCIAL_ONCALL, &["ack", &id, "--note", &"x".repeat(2045)]).await;
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("--note: the note is 2045 bytes; at most 2044 bytes are allowed"), "{err}");
    let (code, _, err) = client(&h, SOCIAL_ONCALL, &["ack", &id, "--note", "ring\u{1b}[2J"]).await;
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("--note: the note contains a control character other than newline"), "{err}");

    let note_file = h.dir().join("note.txt");
    std::fs::write(&note_file, format!("{NOTE}\n")).unwrap();
    let (code, out, err) =
        client(&h, SOCIAL_ONCALL, &["ack", &id, "--by", "jour-3", "--note-file", note_file.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("with a note for the sender (encrypted to the sending agency)"), "{out}");
    assert!(!out.contains("Hemligsdotter"), "the acker's output has no plaintext of the sealed note: {out}");

    let (code, out, err) = client(&h, POLICE_SYSTEM, &["status", &id]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "  note from jour-3:\n    Ringer Ingrid Hemligsdotter (197904163305) kl 08.\n    | Hembesök bokat.\n"
        ),
        "{out}"
    );
    let (code, out, err) = client(&h, POLICE_SYSTEM, &["--json", "status", &id]).await;
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let ack = &status["receipts"][2];
    assert_eq!((ack["status"].as_str(), ack["note"].as_str()), (Some("ACKNOWLEDGED"), Some(NOTE)));
    assert_eq!(ack["note_error"], serde_json::Value::Null);
    assert_eq!(status["receipts"][0]["note"], serde_json::Value::Null, "ACCEPTED has no note");

    // What an auditor replays: the Acknowledged entry signs the note's
    // digest, and holds none of the sealed note's bytes.
    let receipts = police.receipts(&[sent.message_id]).await.unwrap().remove(0).1;
    let note = acked_receipt(&receipts).ack.as_ref().unwrap().note.clone().unwrap();
    h.state().committer.barrier().await;
    let auditor = h.client(AUDITOR).await;
    let size = h.state().hub.tree.borrow().0;
    let mut stream = auditor.auditor_rpc().replay(pb::ReplayRequest { from: 0, to: size }).await.unwrap().into_inner();
    let mut log = Vec::new();
    let mut logged_ack = None;
    while let Some(e) = stream.message().await.unwrap() {
        log.extend_from_slice(&e.entry);
        let entry: pb::AuditEntry = prost::Message::decode(e.entry.as_slice()).unwrap();
        if let Some(pb::audit_entry::Event::Acknowledged(a)) = entry.event {
            logged_ack = a.ack;
        }
    }
    let logged = SignedAck::try_from(logged_ack.expect("an Acknowledged entry")).unwrap();
    assert_eq!((&logged.note, logged.statement.note_digest), (&None, Some(note.digest())));
    logged.verify(&h.client(AUDITOR).await.directory().await.unwrap()).unwrap();
    assert!(contains(&log, note.digest().as_bytes()), "the control: the digest is in the log");
    for (what, secret) in [("ciphertext", &note.ciphertext[..]), ("encapsulated key", &note.encapsulated_key[..])] {
        for window in secret.chunks(16).filter(|c| c.len() == 16) {
            assert!(!contains(&log, window), "16 bytes of the note's {what} are in the audit log");
        }
    }
}

/// Seals a referral from the police, submits it, and returns it.
async fn submitted(h: &Harness) -> Envelope {
    let police = h.client(POLICE_SYSTEM).await;
    let envelope = sealed(h, POLICE_SYSTEM, SOCIAL, &example_notice()).await;
    submit_raw(&police, pb::Envelope::from(&envelope)).await.unwrap();
    envelope
}

#[tokio::test]
async fn oversized_altered_or_unsealed_notes_are_refused_and_a_moved_note_does_not_open() {
    let h = Harness::start().await;
    let a = submitted(&h).await;
    let b = submitted(&h).await;
    let oncall = h.client(SOCIAL_ONCALL).await;
    let police = h.client(POLICE_SYSTEM).await;
    let dir = oncall.directory().await.unwrap();
    let police_agency = dir.agency(&AgencyId::new(POLICE).unwrap()).unwrap();
    let bundles = oncall.bundles();
    let bundle = &bundles[0];
    let now = certs::now();
    let with_note = |e: &Envelope, note: &str| {
        sign_ack_with_note(e.header.message_id, e.digest(), now, "jour-1", note, police_agency, bundle).unwrap()
    };
    let send = |ack: pb::SignedAck| {
        let mut rpc = oncall.broker();
        async move { rpc.ack(pb::AckRequest { ack: Some(ack) }).await }
    };

    // Oversized: refused with its own reason, before anything else.
    let mut big = pb::SignedAck::from(&with_note(&a, "stor"));
    big.note.as_mut().unwrap().ciphertext.resize(MAX_NOTE_CIPHERTEXT + 1, 0);
    let s = assert_refused(send(big).await, Code::InvalidArgument, "note_too_large");
    assert!(s.message().contains(&format!("ack note ciphertext is {} bytes; at most 2064", MAX_NOTE_CIPHERTEXT + 1)));
    // One bit of the note changed: it no longer matches the signed digest.
    let mut altered = pb::SignedAck::from(&with_note(&a, "ändrad"));
    altered.note.as_mut().unwrap().ciphertext[10] ^= 1;
    let s = assert_refused(send(altered).await, Code::InvalidArgument, "malformed_ack");
    assert!(s.message().contains(&AckError::NoteDigestMismatch.to_string()), "{}", s.message());
    // A signed digest without the note.
    let mut unsealed = pb::SignedAck::from(&with_note(&a, "borta"));
    unsealed.note = None;
    let s = assert_refused(send(unsealed).await, Code::InvalidArgument, "malformed_ack");
    assert!(s.message().contains("the ack signs a note_digest but carries no note"), "{}", s.message());
    // A note swapped in from another ack, the signature left alone.
    let mut swapped = pb::SignedAck::from(&sign_ack(a.header.message_id, a.digest(), now, "jour-1", bundle).unwrap());
    swapped.note = pb::SignedAck::from(&with_note(&a, "lånad")).note;
    let s = assert_refused(send(swapped).await, Code::InvalidArgument, "malformed_ack");
    assert!(s.message().contains(&AckError::NoteDigestMismatch.to_string()), "{}", s.message());
    // Nothing was settled by any of them.
    let receipts = police.receipts(&[a.header.message_id]).await.unwrap().remove(0).1;
    assert!(receipts.iter().all(|r| r.statement.status != ReceiptStatus::Acknowledged), "{receipts:?}");

    // Message A acknowledged with its note; the note moved onto message B's
    // ack and re-signed there (by an acker, or anyone with its key): the
    // broker cannot tell, but the sender's client cannot open it.
    let mut alerts =
        h.client(SOCIAL_SYSTEM).await.broker().subscribe(pb::SubscribeRequest {}).await.unwrap().into_inner();
    let genuine = with_note(&a, "för A");
    send(pb::SignedAck::from(&genuine)).await.unwrap();
    // The acknowledging agency's own consoles hear of it without the note
    // (sealed to the sender, no use to them), its signed digest kept.
    let settled = loop {
        let alert = tokio::time::timeout(Duration::from_secs(10), alerts.message()).await.unwrap().unwrap().unwrap();
        if let Some(pb::alert::Event::Settled(s)) = alert.event {
            break s;
        }
    };
    let settled = SignedAck::try_from(settled.ack.unwrap()).unwrap();
    assert_eq!((settled.note, settled.statement.note_digest), (None, genuine.statement.note_digest));
    let mut moved = sign_ack(b.header.message_id, b.digest(), now, "jour-1", bundle).unwrap();
    moved.note = genuine.note.clone();
    moved.statement.note_digest = genuine.statement.note_digest;
    moved.signature = bundle.sign(&moved.statement.signing_input());
    send(pb::SignedAck::from(&moved)).await.unwrap();
    let all = police.receipts(&[a.header.message_id, b.header.message_id]).await.unwrap();
    assert_eq!(police.open_note(acked_receipt(&all[0].1)).unwrap().as_deref(), Some("för A"));
    assert_eq!(police.open_note(acked_receipt(&all[1].1)).unwrap_err(), NoteError::Decrypt);
}

#[tokio::test]
async fn the_note_is_purged_with_the_payload_and_the_ack_still_verifies() {
    let h = Harness::start_with(Options { manual_clock: true, ..Options::default() }).await;
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    h.client(SOCIAL_ONCALL).await.ack_with_note(sent.message_id, "jour-1", Some(NOTE)).await.unwrap();
    let before = police.receipts(&[sent.message_id]).await.unwrap().remove(0).1;
    let note = acked_receipt(&before).ack.as_ref().unwrap().note.clone().expect("held until the purge");
    let key = sent.message_id.as_bytes().to_vec();
    let mut tree = h.state().hub.tree.subscribe();
    h.advance(Duration::from_secs(7 * 86_400 + 1));
    while h.state().store.get(broker::store::Table::Envelopes, &key).unwrap().is_some() {
        tree.changed().await.unwrap();
        h.state().committer.barrier().await;
    }
    // Checked again by the client (broker signature and ack signature).
    let after = police.receipts(&[sent.message_id]).await.unwrap().remove(0).1;
    let ack = acked_receipt(&after).ack.as_ref().unwrap();
    assert_eq!((ack.note.as_ref(), ack.statement.note_digest), (None, Some(note.digest())));
    assert_eq!(police.open_note(acked_receipt(&after)).unwrap(), None);
    let (code, out, err) = client(&h, POLICE_SYSTEM, &["status", &sent.message_id.to_string()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("  note: no longer held by the broker (purged with the message)\n"), "{out}");
    // No table keeps any of the sealed note's bytes.
    for table in broker::store::Table::ALL {
        for (_, v) in h.state().store.range(table, &[], &[0xff; 64], usize::MAX).unwrap() {
            assert!(!contains(&v, &note.ciphertext[..32]), "{table:?} still holds the sealed note");
        }
    }
}
