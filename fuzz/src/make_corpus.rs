//! Writes the seed corpora under `fuzz/corpus/<target>/` from the protocol's
//! public test vectors. Runs on stable:
//!
//! ```sh
//! cd fuzz && cargo run --bin make-corpus
//! ```
//!
//! The output is deterministic (fixed keys, fixed HPKE ephemeral keys), so
//! rerunning it rewrites the same bytes; the seeds are checked in. Every key
//! here is a published test value from `referral_proto::test_vectors`.

use std::fs;
use std::path::{Path, PathBuf};

use referral_proto::envelope::{Envelope, Urgency};
use referral_proto::ids::MessageId;
use referral_proto::notice::{ContactChannel, LegalBasisKind, ReferralNotice, example_notice};
use referral_proto::pb::{self, audit_entry::Event};
use referral_proto::seal::{FixedIkm, open, seal_with_rng};
use referral_proto::test_vectors::{CREATED_AT, Vectors, build, counting};
use referral_proto::time::Timestamp;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("corpus");
    let v = build();

    envelope(&corpus.join("envelope"), &root, &v);
    notice(&corpus.join("notice"), &root);
    directory(&corpus.join("directory"), &v);
    audit_entry(&corpus.join("audit_entry"), &v);
    key_file(&corpus.join("key_file"), &v);
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("create corpus folder");
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    println!("{} ({} bytes)", path.display(), bytes.len());
}

fn envelope(dir: &Path, root: &Path, v: &Vectors) {
    let hex_path = root.join("../proto/testdata/envelope-v1.hex");
    let text = fs::read_to_string(&hex_path).expect("read proto/testdata/envelope-v1.hex");
    let digits: String = text.split_whitespace().collect();
    let bytes = hex::decode(digits).expect("envelope-v1.hex is hex");
    assert_eq!(bytes, v.envelope.encode(), "envelope-v1.hex matches the vectors");
    write(dir, "envelope-v1.bin", &bytes);
    let opens = |e: &Envelope| open(e, &v.directory, std::slice::from_ref(&v.recipient)).is_ok();
    assert!(opens(&v.envelope), "the vector envelope opens");

    // A flipped ciphertext bit: decodes, fails the signature.
    let mut e = v.envelope.clone();
    e.ciphertext[100] ^= 0x04;
    write(dir, "ciphertext-bit-flipped.bin", &e.encode());

    // A header change re-signed by the (public test) sender key: the
    // signature verifies, the HPKE aad no longer matches.
    let mut e = v.envelope.clone();
    e.header.urgency = Urgency::Immediate;
    e.signature = v.sender.sign(&e.signing_input());
    write(dir, "urgency-changed-resigned.bin", &e.encode());

    // Truncated: not a protobuf message any more.
    write(dir, "truncated.bin", &bytes[..bytes.len() / 2]);

    // An unknown field appended: decodes to the same envelope.
    let mut extra = bytes.clone();
    extra.extend_from_slice(&[0x2a, 0x03, b'x', b'y', b'z']); // field 5, bytes
    assert_eq!(Envelope::decode(&extra).as_ref(), Ok(&v.envelope));
    write(dir, "unknown-field.bin", &extra);

    // A second notice that opens: a larger padding bucket, other enums.
    let to = v.directory.agency(v.recipient.agency()).expect("recipient");
    let e = seal_with_rng(
        &other_notice(),
        &v.sender,
        to,
        MessageId::from_bytes(&{
            let mut id = *v.message_id.as_bytes();
            id[15] = 0x02;
            id
        })
        .expect("a UUIDv7"),
        CREATED_AT,
        &mut FixedIkm::new(counting(0xe0)),
    )
    .expect("the second notice seals");
    assert!(opens(&e), "the second envelope opens");
    write(dir, "second-notice.bin", &e.encode());
}

/// A valid notice that differs from the example in every optional part.
fn other_notice() -> ReferralNotice {
    let mut n = example_notice();
    n.subject.protected_identity = true;
    n.subject.personal_identity_number = "19850372-2384".into();
    n.subject.street_address.clear();
    n.subject.postal_code.clear();
    n.subject.city.clear();
    n.safe_contact.channel = ContactChannel::Email;
    n.safe_contact.address = "syster@example.invalid".into();
    n.safe_contact.language = "ar-SY".into();
    n.legal_basis.kind = LegalBasisKind::Osl10_18c;
    n.consent.state = referral_proto::notice::ConsentState::NotSoughtUnsafe;
    n.consent.obtained_by.clear();
    n.consent.obtained_at = None;
    n.risk.tool = referral_proto::notice::RiskTool::None;
    n.risk.level = None;
    n.risk.assessed_at = None;
    n.children.clear();
    n.requested_support.clear();
    n.urgency = Urgency::Immediate;
    n.respond_by = None;
    n.free_text = "Ring före 12. ".repeat(150);
    n.validate().expect("the second notice is valid");
    n
}

fn notice(dir: &Path, root: &Path) {
    write(dir, "example-notice.pb", &example_notice().encode());
    let mut n = example_notice();
    n.safe_contact.channel = ContactChannel::ViaSender;
    n.safe_contact.address.clear();
    n.urgency = Urgency::Routine;
    n.validate().expect("valid");
    write(dir, "via-sender-notice.pb", &n.encode());
    // The 13-character `YYYYMMDD-NNNN` form, which decoders accept on the
    // wire although the reference encoder strips the '-' (PROTOCOL.md 6.4).
    let mut p = pb::ReferralNotice::from(&example_notice());
    p.subject.as_mut().expect("subject").personal_identity_number = "19850312-2387".into();
    write(dir, "dashed-pin-notice.pb", &prost::Message::encode_to_vec(&p));
    let json = fs::read(root.join("../agency-client/examples/referral.json"))
        .expect("read agency-client/examples/referral.json");
    write(dir, "referral.json", &json);
}

fn directory(dir: &Path, v: &Vectors) {
    write(dir, "signed-directory.bin", &v.signed_directory.encode());
    // The inner Directory bytes, for the validation path after the signature.
    write(dir, "directory.bin", &v.signed_directory.bytes);
}

fn audit_entry(dir: &Path, v: &Vectors) {
    let e = &v.envelope;
    let message_id = v.message_id.as_bytes().to_vec();
    let digest = e.digest().0.to_vec();
    let recipient = v.recipient.agency().to_string();
    let principal =
        |agency: &str, role: &str, name: &str| format!("spiffe://igor.example.se/agency/{agency}/{role}/{name}");
    let events = [
        (
            "submitted",
            Event::Submitted(pb::Submitted {
                header: Some((&e.header).into()),
                payload_digest: e.payload_digest().0.to_vec(),
                signature: e.signature.to_vec(),
                envelope_digest: digest.clone(),
                recipient_sequence: 1,
                payload_length: e.payload_len() as u32,
                submitted_by: principal("polisen-huddinge", "system", "case-system"),
            }),
        ),
        (
            "rejected",
            Event::Rejected(pb::Rejected {
                principal: principal("polisen-huddinge", "system", "case-system"),
                reason: "bad_signature".into(),
                message_id: message_id.clone(),
                envelope_digest: digest.clone(),
            }),
        ),
        (
            "delivered",
            Event::Delivered(pb::Delivered {
                message_id: message_id.clone(),
                recipient_sequence: 1,
                recipient: recipient.clone(),
                principal: principal(&recipient, "oncall", "socialjour-1"),
            }),
        ),
        (
            "acknowledged",
            Event::Acknowledged(pb::Acknowledged {
                ack: Some((&v.ack).into()),
                recipient_sequence: 1,
                recipient: recipient.clone(),
                principal: principal(&recipient, "oncall", "socialjour-1"),
            }),
        ),
        (
            "escalated",
            Event::Escalated(pb::Escalated {
                message_id: message_id.clone(),
                recipient_sequence: 1,
                recipient: recipient.clone(),
                deadline_ms: CREATED_AT.0 + 15 * 60 * 1000,
                contact: principal(&recipient, "oncall", "socialjour-chef"),
            }),
        ),
        (
            "expired",
            Event::Expired(pb::Expired {
                message_id: message_id.clone(),
                recipient_sequence: 1,
                recipient: recipient.clone(),
            }),
        ),
        ("purged", Event::Purged(pb::Purged { message_id, envelope_digest: digest })),
    ];
    for (index, (name, event)) in events.into_iter().enumerate() {
        let entry = pb::AuditEntry {
            format_version: referral_proto::audit::AUDIT_ENTRY_FORMAT_VERSION,
            index: index as u64,
            logged_at_ms: Timestamp(CREATED_AT.0 + 42 + index as i64).0,
            event: Some(event),
        };
        let bytes = referral_proto::audit::encode_entry(&entry);
        referral_proto::audit::decode_entry(&bytes, index as u64).expect("seed entry decodes");
        write(dir, &format!("{index}-{name}.pb"), &bytes);
    }
}

fn key_file(dir: &Path, v: &Vectors) {
    // The sender bundle of the published test vectors (PROTOCOL.md lists its
    // seeds); marked so nobody mistakes it for a real key.
    let key_file = v.sender.to_key_file();
    let (magic, fields) = key_file.split_once('\n').expect("a key file has lines");
    let text = format!(
        "{magic}\n# PUBLIC TEST VECTOR KEY from referral_proto::test_vectors (seeds listed in PROTOCOL.md).\n# Not a secret; never use it for anything but tests.\n{fields}"
    );
    assert!(referral_proto::keys::AgencyKeyBundle::from_key_file(&text).is_ok());
    write(dir, "public-test-vector-key.txt", text.as_bytes());
    write(dir, "timestamp.txt", b"2026-11-29T09:15:00.5+01:00");
}
