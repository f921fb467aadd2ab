//! The test vectors PROTOCOL.md publishes, computed from fixed inputs.
//!
//! `proto/tests/vectors.rs` checks that the block between the vector markers
//! in PROTOCOL.md is exactly [`render`]'s output and that the full envelope
//! matches `proto/testdata/envelope-v1.hex`, so the document cannot drift from
//! the code and any change to a signing input or to sealing is caught.
//! Every secret here is public; never use these keys for anything else.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::ack::{SignedAck, note_aad, note_hpke_info, sign_ack, sign_ack_with_note_rng};
use crate::directory::{Agency, AgencyKind, Directory, EscalationContact, SignedDirectory};
use crate::envelope::{Envelope, EnvelopeHeader};
use crate::ids::{AgencyId, MessageId, Principal, TrustDomain};
use crate::keys::{AgencyKeyBundle, SigningKey};
use crate::merkle::{MemoryTree, consistency_proof, inclusion_proof, leaf_hash};
use crate::notice::example_notice;
use crate::receipt::{Receipt, ReceiptStatement, ReceiptStatus, SignedTreeHead, TreeHead};
use crate::seal::{FixedIkm, hpke_info, pad, seal_with_rng};
use crate::time::Timestamp;
use crate::{Digest, PROTOCOL_VERSION};

/// Bytes `start, start+1, …, start+31`.
pub fn counting(start: u8) -> [u8; 32] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

/// 2026-11-29T08:15:00Z.
pub const CREATED_AT: Timestamp = Timestamp(1_795_940_100_000);
/// 2026-11-29T08:20:00Z.
pub const ACKED_AT: Timestamp = Timestamp(1_795_940_400_000);
const NOT_BEFORE: Timestamp = Timestamp(1_767_225_600_000); // 2026-01-01T00:00:00Z
const NOT_AFTER: Timestamp = Timestamp(1_830_297_600_000); // 2028-01-01T00:00:00Z

/// Everything the vectors are computed from and what they produce.
#[derive(Debug)]
pub struct Vectors {
    pub sender: AgencyKeyBundle,
    pub recipient: AgencyKeyBundle,
    pub federation: SigningKey,
    pub broker_log: SigningKey,
    pub directory: Directory,
    pub signed_directory: SignedDirectory,
    pub message_id: MessageId,
    pub envelope: Envelope,
    pub ack: SignedAck,
    /// Vector 6: the same acknowledgement with [`NOTE`] sealed to the sender.
    pub ack_with_note: SignedAck,
    pub receipt: Receipt,
}

/// The note of vector 6.
pub const NOTE: &str = "Vi ringer målsäganden före kl. 10. Kontakt: jour-1, 08-000 000 02.";

pub fn message_id() -> MessageId {
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&CREATED_AT.0.to_be_bytes()[2..]);
    b[6] = 0x70;
    b[7] = 0x01;
    b[8] = 0x80;
    b[15] = 0x01;
    MessageId::from_bytes(&b).expect("a UUIDv7")
}

pub fn build() -> Vectors {
    let police = AgencyId::new("polisen-huddinge").unwrap();
    let social = AgencyId::new("huddinge-socialtjanst").unwrap();
    let sender = AgencyKeyBundle::from_secrets(police.clone(), counting(0x00), &counting(0x20), NOT_BEFORE, NOT_AFTER)
        .expect("fixed keys");
    let recipient =
        AgencyKeyBundle::from_secrets(social.clone(), counting(0x40), &counting(0x60), NOT_BEFORE, NOT_AFTER)
            .expect("fixed keys");
    let federation = SigningKey::from_seed(counting(0x80));
    let broker_log = SigningKey::from_seed(counting(0xa0));
    let td = TrustDomain::new("igor.example.se").unwrap();
    let mut agencies = BTreeMap::new();
    agencies.insert(
        police.clone(),
        Agency {
            id: police.clone(),
            display_name: "Polisen, lokalpolisområde Huddinge".into(),
            kind: AgencyKind::Police,
            keys: vec![sender.public().clone()],
            escalation: None,
        },
    );
    agencies.insert(
        social.clone(),
        Agency {
            id: social.clone(),
            display_name: "Huddinge kommun, socialtjänsten".into(),
            kind: AgencyKind::Municipal,
            keys: vec![recipient.public().clone()],
            escalation: Some(EscalationContact {
                principal: Principal::parse_uri(
                    "spiffe://igor.example.se/agency/huddinge-socialtjanst/oncall/socialjour-chef",
                )
                .unwrap(),
                display_name: "Socialjouren, ansvarig chef".into(),
                phone: "+46 8 000 000 01".into(),
            }),
        },
    );
    let directory = Directory {
        trust_domain: td,
        version: 1,
        issued_at: Timestamp(1_795_939_200_000),
        valid_until: Timestamp(1_827_475_200_000),
        agencies,
        broker_log_key: broker_log.verifying_key(),
    };
    let signed_directory = directory.sign(&federation);
    let message_id = message_id();
    let envelope = seal_with_rng(
        &example_notice(),
        &sender,
        directory.agency(&social).unwrap(),
        message_id,
        CREATED_AT,
        &mut FixedIkm::new(counting(0xc0)),
    )
    .expect("the example seals");
    let ack = sign_ack(message_id, envelope.digest(), ACKED_AT, "socialjour-1", &recipient).expect("valid ack");
    let ack_with_note = sign_ack_with_note_rng(
        message_id,
        envelope.digest(),
        ACKED_AT,
        "socialjour-1",
        NOTE,
        directory.agency(&police).unwrap(),
        &recipient,
        &mut FixedIkm::new(counting(0xe0)),
    )
    .expect("valid ack with a note");
    let receipt = ReceiptStatement {
        message_id,
        envelope_digest: envelope.digest(),
        status: ReceiptStatus::Accepted,
        at: Timestamp(CREATED_AT.0 + 42),
        sender: police,
        recipient: social,
        recipient_sequence: 1,
        log_index: 0,
        detail: String::new(),
    }
    .sign(&broker_log, None);
    Vectors {
        sender,
        recipient,
        federation,
        broker_log,
        directory,
        signed_directory,
        message_id,
        envelope,
        ack,
        ack_with_note,
        receipt,
    }
}

fn hex_block(out: &mut String, name: &str, bytes: &[u8]) {
    let _ = writeln!(out, "{name} ({} bytes):", bytes.len());
    let h = hex::encode(bytes);
    for chunk in h.as_bytes().chunks(64) {
        let _ = writeln!(out, "  {}", std::str::from_utf8(chunk).unwrap());
    }
}

fn line(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{name}: {value}");
}

/// The encoded envelope of vector 1, as hex, 64 digits a line.
pub fn envelope_hex(v: &Vectors) -> String {
    let h = hex::encode(v.envelope.encode());
    h.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap().to_owned() + "\n").collect()
}

/// The Merkle entries of vector 5: the ASCII strings `entry 0` … `entry 6`.
pub fn merkle_entries() -> Vec<Vec<u8>> {
    (0..7).map(|i| format!("entry {i}").into_bytes()).collect()
}

/// The Markdown text between the vector markers of PROTOCOL.md.
pub fn render() -> String {
    let v = build();
    let mut o = String::new();
    o.push_str("```text\n");
    o.push_str("# Keys (all secrets are public test values)\n");
    line(&mut o, "sender agency", v.sender.agency());
    hex_block(&mut o, "sender ed25519 seed", &counting(0x00));
    hex_block(&mut o, "sender x25519 secret", &counting(0x20));
    hex_block(&mut o, "sender ed25519 public", &v.sender.public().signing.0);
    hex_block(&mut o, "sender x25519 public", &v.sender.public().encryption);
    line(&mut o, "sender key id", v.sender.key_id());
    line(&mut o, "recipient agency", v.recipient.agency());
    hex_block(&mut o, "recipient ed25519 seed", &counting(0x40));
    hex_block(&mut o, "recipient x25519 secret", &counting(0x60));
    hex_block(&mut o, "recipient ed25519 public", &v.recipient.public().signing.0);
    hex_block(&mut o, "recipient x25519 public", &v.recipient.public().encryption);
    line(&mut o, "recipient key id", v.recipient.key_id());
    line(&mut o, "key validity", format!("[{NOT_BEFORE}, {NOT_AFTER})"));
    hex_block(&mut o, "federation directory key seed", &counting(0x80));
    line(&mut o, "federation directory key id", v.federation.verifying_key().key_id());
    hex_block(&mut o, "broker log key seed", &counting(0xa0));
    hex_block(&mut o, "broker log public key", &v.broker_log.verifying_key().0);

    o.push_str("\n# Vector 1: envelope (notice = notice::example_notice(), see below)\n");
    let h: &EnvelopeHeader = &v.envelope.header;
    line(&mut o, "message id", h.message_id);
    line(&mut o, "created at", format!("{} ({} ms)", h.created_at, h.created_at.0));
    line(&mut o, "urgency", format!("{} (code {})", h.urgency, h.urgency.code()));
    hex_block(&mut o, "header canonical bytes = HPKE aad", &h.canonical_bytes());
    hex_block(&mut o, "HPKE info", &hpke_info(PROTOCOL_VERSION, &h.sender, &h.recipient, &h.message_id));
    let notice = example_notice().encode();
    line(&mut o, "encoded notice length", notice.len());
    let padded = pad(&notice).expect("fits");
    line(&mut o, "padded plaintext length", padded.len());
    line(&mut o, "padded plaintext SHA-256", Digest::of(&padded));
    hex_block(&mut o, "HPKE ikmE", &counting(0xc0));
    hex_block(&mut o, "encapsulated key", &v.envelope.encapsulated_key);
    line(&mut o, "ciphertext length", v.envelope.ciphertext.len());
    line(&mut o, "ciphertext SHA-256", Digest::of(&v.envelope.ciphertext));
    line(&mut o, "payload digest", v.envelope.payload_digest());
    hex_block(&mut o, "signing input", &v.envelope.signing_input());
    hex_block(&mut o, "signature", &v.envelope.signature);
    line(&mut o, "envelope digest", v.envelope.digest());
    line(
        &mut o,
        "encoded envelope SHA-256 (full hex: proto/testdata/envelope-v1.hex)",
        Digest::of(&v.envelope.encode()),
    );

    o.push_str("\n# Vector 2: acknowledgement by the recipient\n");
    let s = &v.ack.statement;
    line(&mut o, "acknowledged at", format!("{} ({} ms)", s.acknowledged_at, s.acknowledged_at.0));
    line(&mut o, "acknowledged by", &s.acknowledged_by);
    hex_block(&mut o, "signing input", &s.signing_input());
    hex_block(&mut o, "signature", &v.ack.signature);

    o.push_str("\n# Vector 3: directory (version 1, both agencies, escalation contact for the municipality)\n");
    hex_block(&mut o, "encoded Directory", &v.signed_directory.bytes);
    line(&mut o, "signer key id", v.signed_directory.signer_key_id);
    hex_block(&mut o, "signature", &v.signed_directory.signature);

    o.push_str("\n# Vector 4: ACCEPTED receipt (sequence 1, log index 0, at created + 42 ms)\n");
    hex_block(&mut o, "signing input", &v.receipt.statement.signing_input());
    hex_block(&mut o, "signature", &v.receipt.signature);

    o.push_str("\n# Vector 5: Merkle tree over the 7 ASCII entries \"entry 0\" … \"entry 6\"\n");
    let mut tree = MemoryTree::default();
    for (i, e) in merkle_entries().iter().enumerate() {
        tree.append_entry(e);
        if i == 0 {
            line(&mut o, "leaf hash of \"entry 0\"", leaf_hash(e));
        }
    }
    for size in [1u64, 2, 3, 4, 7] {
        line(&mut o, &format!("root, size {size}"), crate::merkle::root(&tree, size).expect("in memory"));
    }
    let path = inclusion_proof(&tree, 3, 7).expect("in memory");
    line(&mut o, "inclusion proof, leaf 3 of 7", path.iter().map(Digest::to_hex).collect::<Vec<_>>().join(" "));
    let proof = consistency_proof(&tree, 3, 7).expect("in memory");
    line(&mut o, "consistency proof, 3 to 7", proof.iter().map(Digest::to_hex).collect::<Vec<_>>().join(" "));
    let sth: SignedTreeHead =
        TreeHead { tree_size: 7, root_hash: tree.root(), timestamp: Timestamp(CREATED_AT.0 + 1000) }
            .sign(&v.broker_log);
    hex_block(&mut o, "tree head signing input (size 7, at created + 1 s)", &sth.head.signing_input());
    hex_block(&mut o, "tree head signature", &sth.signature);

    o.push_str("\n# Vector 6: acknowledgement with a note, sealed to the sender (same ack as vector 2)\n");
    let a = &v.ack_with_note;
    let note = a.note.as_ref().expect("vector 6 has a note");
    line(&mut o, "note (UTF-8)", NOTE);
    line(&mut o, "note length", NOTE.len());
    line(&mut o, "sealed to sender key id", note.key_id);
    hex_block(&mut o, "note HPKE info", &note_hpke_info(v.sender.agency(), &a.statement.acker_agency, &v.message_id));
    hex_block(&mut o, "note HPKE aad", &note_aad(&a.statement, &note.key_id));
    hex_block(&mut o, "note HPKE ikmE", &counting(0xe0));
    hex_block(&mut o, "note encapsulated key", &note.encapsulated_key);
    line(&mut o, "note ciphertext length", note.ciphertext.len());
    line(&mut o, "note ciphertext SHA-256", Digest::of(&note.ciphertext));
    line(&mut o, "note digest", note.digest());
    hex_block(&mut o, "signing input", &a.statement.signing_input());
    hex_block(&mut o, "signature", &a.signature);
    o.push_str("```\n");
    o
}

/// A deterministic generator for known answers and tests: SHA-512 of the seed
/// and a block counter. Predictable by design; never use it for anything else.
#[derive(Debug, Clone)]
pub struct TestRng {
    seed: u64,
    counter: u64,
    block: [u8; 64],
    used: usize,
}

impl TestRng {
    pub fn new(seed: u64) -> Self {
        Self { seed, counter: 0, block: [0; 64], used: 64 }
    }
}

impl rand_core::TryRng for TestRng {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for d in dst {
            if self.used == 64 {
                let input = [self.seed.to_be_bytes(), self.counter.to_be_bytes()].concat();
                self.block.copy_from_slice(ring::digest::digest(&ring::digest::SHA512, &input).as_ref());
                self.counter += 1;
                self.used = 0;
            }
            *d = self.block[self.used];
            self.used += 1;
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for TestRng {}

/// Subjects of the overlap vector: the initiator's three and the responder's
/// two, one (198503122387) in both; the responder writes it in ten-digit form.
pub const PSI_INITIATOR_SUBJECTS: [&str; 3] = ["198503122387", "19850372-2384", "201203122385"];
pub const PSI_RESPONDER_SUBJECTS: [&str; 2] = ["850312-2387", "191203122385"];

/// The scalars of the overlap vector (canonical little-endian, below ℓ).
pub fn psi_scalars() -> ([u8; 32], [u8; 32]) {
    let mut a = counting(0x11);
    a[31] = 0x0a;
    let mut b = counting(0x51);
    b[31] = 0x05;
    (a, b)
}

/// The Markdown text between the overlap vector markers of PROTOCOL.md.
pub fn render_psi() -> String {
    use crate::psi::{
        self, Answer, BlindingKey, Party, PersonalIdentityNumber, expand_message_xmd, hash_to_ristretto255, session_dst,
    };
    let session = message_id();
    let dst = session_dst(&session);
    let parse = |s: &&str| PersonalIdentityNumber::parse(s, CREATED_AT).expect("valid test numbers");
    let ours: Vec<_> = PSI_INITIATOR_SUBJECTS.iter().map(parse).collect();
    let theirs: Vec<_> = PSI_RESPONDER_SUBJECTS.iter().map(parse).collect();
    let (a, b) = psi_scalars();
    let key = |k: [u8; 32]| BlindingKey::from_canonical_bytes(k).expect("canonical non-zero scalar");

    let mut o = String::new();
    o.push_str("```text\n");
    line(&mut o, "session id", session);
    line(&mut o, "DST", &dst);
    line(&mut o, "today (for ten-digit forms)", CREATED_AT);
    line(&mut o, "initiator subjects", PSI_INITIATOR_SUBJECTS.join(", "));
    line(&mut o, "responder subjects", PSI_RESPONDER_SUBJECTS.join(", "));
    hex_block(&mut o, "initiator scalar a", &a);
    hex_block(&mut o, "responder scalar b", &b);

    o.push_str("\n# One identifier through every step\n");
    let x = &ours[0];
    line(&mut o, "normalised identifier (msg, ASCII)", x.as_str());
    let uniform = expand_message_xmd(x.as_str().as_bytes(), dst.as_bytes(), 64).expect("short tag");
    hex_block(&mut o, "expand_message_xmd(msg, DST, 64)", &uniform);
    let hx = hash_to_ristretto255(x.as_str().as_bytes(), dst.as_bytes()).expect("short tag");
    hex_block(&mut o, "H(x) = hash_to_ristretto255", hx.compress().as_bytes());
    let ax = key(a).blind(&hx);
    hex_block(&mut o, "a·H(x)", ax.compress().as_bytes());
    hex_block(&mut o, "b·a·H(x)", key(b).blind(&ax).compress().as_bytes());

    o.push_str("\n# A whole session (padding and shuffle from TestRng seeds 1 and 2)\n");
    let (initiator, set_a) =
        Party::start_with_key(session, &ours, key(a), &mut TestRng::new(1)).expect("three subjects");
    let (responder, set_b) =
        Party::start_with_key(session, &theirs, key(b), &mut TestRng::new(2)).expect("two subjects");
    hex_block(&mut o, "initiator's blinded set (4 = 3 padded)", set_a.as_bytes());
    line(&mut o, "its digest", set_a.digest(&session));
    hex_block(&mut o, "responder's blinded set (2)", set_b.as_bytes());
    line(&mut o, "its digest", set_b.digest(&session));
    let (wa, answer_a) = initiator.answer(&set_b);
    let (wb, answer_b) = responder.answer(&set_a);
    hex_block(&mut o, "initiator's answer (digest of responder's set, then a·elements)", &answer_a.to_bytes());
    hex_block(&mut o, "responder's answer (digest of initiator's set, then b·elements)", &answer_b.to_bytes());
    let transcript =
        psi::transcript_hash(&session, &set_a.digest(&session), &set_b.digest(&session), &answer_a, &answer_b);
    line(&mut o, "transcript hash", transcript);
    let answer_b: Answer = Answer::from_bytes(&answer_b.to_bytes()).expect("well formed");
    let show = |m: Vec<PersonalIdentityNumber>| m.iter().map(|p| p.as_str().to_owned()).collect::<Vec<_>>().join(", ");
    line(&mut o, "initiator's matches", show(wa.finish(&answer_b).expect("answers its set")));
    line(&mut o, "responder's matches", show(wb.finish(&answer_a).expect("answers its set")));
    o.push_str("```\n");
    o
}
