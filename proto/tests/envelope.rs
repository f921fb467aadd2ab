//! Sealing and opening: round trips over many notices, and every way an
//! envelope can be wrong, each with the error it must produce.

use proptest::prelude::*;
use referral_proto::MAX_ENVELOPE_BYTES;
use referral_proto::directory::Directory;
use referral_proto::envelope::{DecodeError, Envelope, EnvelopeError, Urgency};
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::keys::AgencyKeyBundle;
use referral_proto::notice::{NoticeError, ReferralNotice, example_notice};
use referral_proto::seal::{
    FixedIkm, OpenError, SealError, VerifyError, open, seal, seal_header, unpad, verify_envelope,
};
use referral_proto::test_vectors::{CREATED_AT, Vectors, build, counting};
use referral_proto::time::Timestamp;

fn sealed(v: &Vectors, notice: &ReferralNotice) -> Envelope {
    let to = v.directory.agency(v.recipient.agency()).unwrap();
    seal(notice, &v.sender, to, MessageId::generate(CREATED_AT.0), CREATED_AT).unwrap()
}

fn open_err(v: &Vectors, e: &Envelope) -> OpenError {
    open(e, &v.directory, std::slice::from_ref(&v.recipient)).unwrap_err()
}

/// Re-signs a (tampered) envelope with the sender's real key, as a
/// malicious or buggy sender could.
fn resign(v: &Vectors, mut e: Envelope) -> Envelope {
    e.signature = v.sender.sign(&e.signing_input());
    e
}

#[test]
fn flipped_bits_in_any_signed_part_fail_the_signature() {
    let v = build();
    let key_id = v.sender.key_id();
    let mut header = v.envelope.clone();
    header.header.created_at = Timestamp(header.header.created_at.0 ^ 1);
    assert_eq!(open_err(&v, &header), OpenError::Verify(VerifyError::BadSignature(key_id)));
    let mut ct = v.envelope.clone();
    ct.ciphertext[100] ^= 0x04;
    assert_eq!(open_err(&v, &ct), OpenError::Verify(VerifyError::BadSignature(key_id)));
    let mut enc = v.envelope.clone();
    enc.encapsulated_key[0] ^= 0x80;
    assert_eq!(open_err(&v, &enc), OpenError::Verify(VerifyError::BadSignature(key_id)));
    let mut sig = v.envelope.clone();
    sig.signature[5] ^= 0x01;
    assert_eq!(open_err(&v, &sig), OpenError::Verify(VerifyError::BadSignature(key_id)));
    // The broker runs the same check and so refuses all four before storing.
    for e in [&header, &ct, &enc, &sig] {
        assert_eq!(verify_envelope(e, &v.directory), Err(VerifyError::BadSignature(key_id)));
    }
}

#[test]
fn tampering_re_signed_by_the_sender_still_fails_to_decrypt() {
    let v = build();
    let mut ct = v.envelope.clone();
    ct.ciphertext[7] ^= 0x01;
    assert_eq!(open_err(&v, &resign(&v, ct)), OpenError::Decrypt);
    // The header is the HPKE aad: changing it (here the urgency) breaks decryption.
    let mut h = v.envelope.clone();
    h.header.urgency = Urgency::Routine;
    assert_eq!(open_err(&v, &resign(&v, h)), OpenError::Decrypt);
    // The message id is in the HPKE info: a replayed payload under a new id fails.
    let mut id = v.envelope.clone();
    id.header.message_id = MessageId::generate(CREATED_AT.0);
    assert_eq!(open_err(&v, &resign(&v, id)), OpenError::Decrypt);
}

#[test]
fn another_agency_cannot_reuse_a_ciphertext_as_its_own() {
    // The municipality signs the police's ciphertext as if it had sent it
    // (to itself it cannot, so to a third agency sharing the recipient key is
    // impossible); the info binds the sender, so decryption fails.
    let v = build();
    let mut stolen = v.envelope.clone();
    let mallory = AgencyKeyBundle::from_secrets(
        AgencyId::new("polisen-botkyrka").unwrap(),
        counting(1),
        &counting(2),
        Timestamp(0),
        Timestamp(i64::MAX),
    )
    .unwrap();
    let mut dir: Directory = v.directory.clone();
    let mut entry = dir.agency(v.sender.agency()).unwrap().clone();
    entry.id = mallory.agency().clone();
    entry.keys = vec![mallory.public().clone()];
    dir.agencies.insert(mallory.agency().clone(), entry);
    stolen.header.sender = mallory.agency().clone();
    stolen.header.sender_key_id = mallory.key_id();
    stolen.signature = mallory.sign(&stolen.signing_input());
    verify_envelope(&stolen, &dir).unwrap();
    assert_eq!(open(&stolen, &dir, std::slice::from_ref(&v.recipient)).unwrap_err(), OpenError::Decrypt);
}

#[test]
fn wrong_keys() {
    let v = build();
    // Sealed to the recipient, opened by the sender: not addressed to it.
    assert_eq!(
        open(&v.envelope, &v.directory, std::slice::from_ref(&v.sender)).unwrap_err(),
        OpenError::NotForUs { recipient: v.recipient.agency().clone(), ours: v.sender.agency().clone() }
    );
    // The recipient holds only a different key generation.
    let other = AgencyKeyBundle::from_secrets(
        v.recipient.agency().clone(),
        counting(9),
        &counting(10),
        Timestamp(0),
        Timestamp(i64::MAX),
    )
    .unwrap();
    assert_eq!(open(&v.envelope, &v.directory, &[other]).unwrap_err(), OpenError::NoMatchingKey(v.recipient.key_id()));
    // Signed by a key the directory does not list for the sender.
    let rogue = AgencyKeyBundle::from_secrets(
        v.sender.agency().clone(),
        counting(3),
        &counting(4),
        Timestamp(0),
        Timestamp(i64::MAX),
    )
    .unwrap();
    let to = v.directory.agency(v.recipient.agency()).unwrap();
    let e = seal(&example_notice(), &rogue, to, MessageId::generate(CREATED_AT.0), CREATED_AT).unwrap();
    assert_eq!(
        open_err(&v, &e),
        OpenError::Verify(VerifyError::UnknownSenderKey { agency: v.sender.agency().clone(), key_id: rogue.key_id() })
    );
    // Claims the sender's real key id but is signed by another key.
    let mut forged = e.clone();
    forged.header.sender_key_id = v.sender.key_id();
    forged.signature = rogue.sign(&forged.signing_input());
    assert_eq!(open_err(&v, &forged), OpenError::Verify(VerifyError::BadSignature(v.sender.key_id())));
    // Created outside the sender key's validity.
    let mut late = v.envelope.clone();
    late.header.created_at = Timestamp(v.sender.public().not_after.0);
    assert_eq!(
        open_err(&v, &resign(&v, late)),
        OpenError::Verify(VerifyError::SenderKeyNotValid {
            key_id: v.sender.key_id(),
            at: v.sender.public().not_after
        })
    );
}

#[test]
fn unknown_parties() {
    let v = build();
    let mut dir = v.directory.clone();
    dir.agencies.remove(v.sender.agency());
    assert_eq!(verify_envelope(&v.envelope, &dir), Err(VerifyError::UnknownSender(v.sender.agency().clone())));
    let mut dir = v.directory.clone();
    dir.agencies.remove(v.recipient.agency());
    assert_eq!(verify_envelope(&v.envelope, &dir), Err(VerifyError::UnknownRecipient(v.recipient.agency().clone())));
}

#[test]
fn truncated_and_malformed_bytes() {
    let v = build();
    let bytes = v.envelope.encode();
    assert_eq!(Envelope::decode(&bytes[..bytes.len() - 10]), Err(DecodeError::Protobuf));
    // Well-formed protobuf whose ciphertext lost its last byte.
    let mut short = referral_proto::pb::Envelope::from(&v.envelope);
    short.ciphertext.pop();
    let len = short.ciphertext.len();
    assert_eq!(Envelope::try_from(short), Err(EnvelopeError::CiphertextLength(len)));
    let mut no_header = referral_proto::pb::Envelope::from(&v.envelope);
    no_header.header = None;
    assert_eq!(Envelope::try_from(no_header), Err(EnvelopeError::Missing("header")));
    let mut short_sig = referral_proto::pb::Envelope::from(&v.envelope);
    short_sig.signature.truncate(63);
    assert_eq!(Envelope::try_from(short_sig), Err(EnvelopeError::SignatureLength(63)));
    let mut bad_id = referral_proto::pb::Envelope::from(&v.envelope);
    bad_id.header.as_mut().unwrap().message_id = vec![0; 16];
    assert!(matches!(Envelope::try_from(bad_id), Err(EnvelopeError::Id { field: "message_id", .. })));
    let mut self_addressed = referral_proto::pb::Envelope::from(&v.envelope);
    self_addressed.header.as_mut().unwrap().recipient = v.sender.agency().to_string();
    assert_eq!(Envelope::try_from(self_addressed), Err(EnvelopeError::SelfAddressed(v.sender.agency().clone())));
    let mut version = referral_proto::pb::Envelope::from(&v.envelope);
    version.header.as_mut().unwrap().protocol_version = 2;
    assert_eq!(Envelope::try_from(version), Err(EnvelopeError::Version(2)));
    assert_eq!(unpad(&[0u8; 100]), Err(OpenError::Padding));
    let mut bad_pad = vec![0u8; 1024];
    bad_pad[3] = 2;
    bad_pad[1000] = 1;
    assert_eq!(unpad(&bad_pad), Err(OpenError::Padding));
}

#[test]
fn oversize() {
    let v = build();
    let mut big = referral_proto::pb::Envelope::from(&v.envelope);
    big.ciphertext = vec![0; MAX_ENVELOPE_BYTES];
    let size = prost::Message::encoded_len(&big);
    assert_eq!(Envelope::try_from(big.clone()), Err(EnvelopeError::Oversize { size, max: MAX_ENVELOPE_BYTES }));
    let encoded = prost::Message::encode_to_vec(&big);
    assert_eq!(
        Envelope::decode(&encoded),
        Err(DecodeError::Envelope(EnvelopeError::Oversize { size: encoded.len(), max: MAX_ENVELOPE_BYTES }))
    );
    // A notice too large for the biggest bucket is refused before sealing.
    let to = v.directory.agency(v.recipient.agency()).unwrap();
    let err = seal_header(
        &vec![1u8; 60_000],
        v.envelope.header.clone(),
        &v.sender,
        to.current_key(CREATED_AT).unwrap(),
        &mut FixedIkm::new([0; 32]),
    )
    .unwrap_err();
    assert!(matches!(err, SealError::TooLarge { size: 60_000, max: 49_148 }), "{err}");
}

/// Text that would drive the recipient's terminal (PROTOCOL.md 6.3, rule
/// 32): refused by `seal`, and by `open` when a sender seals it raw.
#[test]
fn terminal_escapes_are_refused_at_seal_and_at_open() {
    let v = build();
    let to = v.directory.agency(v.recipient.agency()).unwrap();
    let mut n = example_notice();
    n.subject.street_address = "Storgatan 1\u{1b}[2K\rHamngatan 9".into();
    n.free_text = "\u{1b}]52;c;cm0gLXJmIH4K\u{7}".into();
    n.sender_contact.name = "Anna \u{202E}nossral".into();
    let expected = ["subject.street_address", "sender_contact.name", "free_text"];
    match seal(&n, &v.sender, to, MessageId::generate(CREATED_AT.0), CREATED_AT) {
        Err(SealError::Invalid(e)) => assert_eq!(e.0.iter().map(|e| e.field).collect::<Vec<_>>(), expected),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let key = to.current_key(CREATED_AT).unwrap();
    let e = seal_header(&n.encode(), v.envelope.header.clone(), &v.sender, key, &mut FixedIkm::new([5; 32])).unwrap();
    match open_err(&v, &e) {
        OpenError::Notice(NoticeError::Invalid(errs)) => {
            assert_eq!(errs.0.iter().map(|e| e.field).collect::<Vec<_>>(), expected);
            let msg = errs.to_string();
            assert!(!msg.contains('\u{1b}') && !msg.contains("Hamngatan"), "names fields, never values: {msg}");
        }
        other => panic!("expected an invalid notice, got {other:?}"),
    }
}

#[test]
fn invalid_notices_are_refused_at_both_ends() {
    let v = build();
    let to = v.directory.agency(v.recipient.agency()).unwrap();
    let mut n = example_notice();
    n.legal_basis.reason.clear();
    match seal(&n, &v.sender, to, MessageId::generate(CREATED_AT.0), CREATED_AT) {
        Err(SealError::Invalid(e)) => assert!(e.has("legal_basis.reason")),
        other => panic!("expected Invalid, got {other:?}"),
    }
    // A sender bypassing validation: the recipient validates again.
    let key = to.current_key(CREATED_AT).unwrap();
    let e = seal_header(&n.encode(), v.envelope.header.clone(), &v.sender, key, &mut FixedIkm::new([5; 32])).unwrap();
    match open_err(&v, &e) {
        OpenError::Notice(NoticeError::Invalid(errs)) => assert!(errs.has("legal_basis.reason")),
        other => panic!("expected an invalid notice, got {other:?}"),
    }
    // Header urgency differing from the notice's.
    let mut h = v.envelope.header.clone();
    h.urgency = Urgency::Immediate;
    let e = seal_header(&example_notice().encode(), h, &v.sender, key, &mut FixedIkm::new([5; 32])).unwrap();
    assert_eq!(open_err(&v, &e), OpenError::UrgencyMismatch { header: Urgency::Immediate, notice: Urgency::Urgent });
    // Not protobuf at all inside the encryption.
    let e =
        seal_header(b"\xff\xff\xff", v.envelope.header.clone(), &v.sender, key, &mut FixedIkm::new([5; 32])).unwrap();
    assert_eq!(open_err(&v, &e), OpenError::Notice(NoticeError::Decode));
}

#[test]
fn expired_sender_bundle_cannot_seal() {
    let v = build();
    let to = v.directory.agency(v.recipient.agency()).unwrap();
    let late = v.sender.public().not_after;
    assert!(matches!(
        seal(&example_notice(), &v.sender, to, MessageId::generate(late.0), late),
        Err(SealError::SenderKeyNotValid(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn seal_open_round_trip(free in proptest::collection::vec(any::<char>(), 0..4000), urgency in 0usize..3, children in 0usize..6) {
        let v = build();
        let mut n = example_notice();
        n.free_text = free.into_iter().filter(|&c| !referral_proto::text::forbidden_in_free_text(c)).collect();
        n.urgency = Urgency::ALL[urgency];
        n.children = (0..children).map(|i| referral_proto::notice::Child { age: i as u32, present: true, witnessed: i % 2 == 0 }).collect();
        let e = sealed(&v, &n);
        prop_assert!(e.encode().len() <= MAX_ENVELOPE_BYTES);
        let back = Envelope::decode(&e.encode()).unwrap();
        prop_assert_eq!(&back, &e);
        prop_assert_eq!(open(&back, &v.directory, std::slice::from_ref(&v.recipient)).unwrap(), n);
    }
}
