//! Known-answer tests: PROTOCOL.md's vectors and the checked-in envelope are
//! exactly what the code produces, and the HPKE suite reproduces RFC 9180.

use hpke::{Deserializable as _, Serializable as _};
use referral_proto::envelope::Envelope;
use referral_proto::keys::{HpkeAead, HpkeKdf, HpkeKem};
use referral_proto::notice::example_notice;
use referral_proto::seal::{FixedIkm, open, verify_envelope};
use referral_proto::test_vectors::{build, envelope_hex, render, render_psi};

const BEGIN: &str = "<!-- test-vectors:begin -->\n";
const END: &str = "<!-- test-vectors:end -->";
const HINT: &str = "if the change is intended, run: UPDATE_VECTORS=1 cargo test -p referral-proto --test vectors";

fn path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Both PROTOCOL.md checks may rewrite the file under UPDATE_VECTORS; one at a time.
static PROTOCOL_MD: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn update() -> bool {
    std::env::var_os("UPDATE_VECTORS").is_some()
}

#[test]
fn protocol_md_publishes_the_vectors_the_code_produces() {
    let _one_at_a_time = PROTOCOL_MD.lock().unwrap_or_else(|e| e.into_inner());
    let doc_path = path("../PROTOCOL.md");
    let doc = std::fs::read_to_string(&doc_path).expect("PROTOCOL.md at the workspace root");
    let start = doc.find(BEGIN).expect("PROTOCOL.md has the begin marker") + BEGIN.len();
    let end = doc.find(END).expect("PROTOCOL.md has the end marker");
    let expected = render();
    if update() {
        std::fs::write(&doc_path, format!("{}{}{}", &doc[..start], expected, &doc[end..])).unwrap();
        return;
    }
    assert_eq!(&doc[start..end], expected, "PROTOCOL.md's vectors differ from the code; {HINT}");
}

#[test]
fn protocol_md_publishes_the_overlap_vectors_the_code_produces() {
    const PSI_BEGIN: &str = "<!-- psi-vectors:begin -->\n";
    const PSI_END: &str = "<!-- psi-vectors:end -->";
    let _one_at_a_time = PROTOCOL_MD.lock().unwrap_or_else(|e| e.into_inner());
    let doc_path = path("../PROTOCOL.md");
    let doc = std::fs::read_to_string(&doc_path).expect("PROTOCOL.md at the workspace root");
    let start = doc.find(PSI_BEGIN).expect("PROTOCOL.md has the overlap begin marker") + PSI_BEGIN.len();
    let end = doc.find(PSI_END).expect("PROTOCOL.md has the overlap end marker");
    let expected = render_psi();
    if update() {
        std::fs::write(&doc_path, format!("{}{}{}", &doc[..start], expected, &doc[end..])).unwrap();
        return;
    }
    assert_eq!(&doc[start..end], expected, "PROTOCOL.md's overlap vectors differ from the code; {HINT}");
}

#[test]
fn the_checked_in_envelope_is_the_one_the_code_seals() {
    let file = path("testdata/envelope-v1.hex");
    let expected = envelope_hex(&build());
    if update() {
        std::fs::write(&file, &expected).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&file).expect("proto/testdata/envelope-v1.hex");
    assert_eq!(checked_in, expected, "sealing or signing changed; {HINT}");
}

#[test]
fn the_checked_in_envelope_verifies_and_opens() {
    let v = build();
    let hex_text: String =
        std::fs::read_to_string(path("testdata/envelope-v1.hex")).unwrap().split_whitespace().collect();
    let envelope = Envelope::decode(&hex::decode(hex_text).unwrap()).unwrap();
    assert_eq!(envelope, v.envelope);
    verify_envelope(&envelope, &v.directory).unwrap();
    assert_eq!(open(&envelope, &v.directory, &[v.recipient]).unwrap(), example_notice());
    v.ack.verify(&v.directory).unwrap();
    v.ack_with_note.verify(&v.directory).unwrap();
    let note = v.ack_with_note.open_note(v.sender.agency(), std::slice::from_ref(&v.sender)).unwrap();
    assert_eq!(note.as_deref(), Some(referral_proto::test_vectors::NOTE));
    v.receipt.verify(&v.directory.broker_log_key).unwrap();
    assert_eq!(
        v.signed_directory.verify(&v.federation.verifying_key(), None, v.directory.issued_at).unwrap(),
        v.directory
    );
}

/// RFC 9180 appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
/// ChaCha20Poly1305, Base mode, first encryption.
#[test]
fn hpke_suite_reproduces_rfc_9180_a_2_1() {
    let h = |s: &str| hex::decode(s).unwrap();
    let pk_r = <HpkeKem as hpke::Kem>::PublicKey::from_bytes(&h(
        "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a",
    ))
    .unwrap();
    let sk_r = <HpkeKem as hpke::Kem>::PrivateKey::from_bytes(&h(
        "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb",
    ))
    .unwrap();
    let info = h("4f6465206f6e2061204772656369616e2055726e");
    let pt = h("4265617574792069732074727574682c20747275746820626561757479");
    let aad = h("436f756e742d30");
    let ikm_e: [u8; 32] = h("909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b").try_into().unwrap();
    let (enc, ct) = hpke::single_shot_seal_with_rng::<HpkeAead, HpkeKdf, HpkeKem>(
        &hpke::OpModeS::Base,
        &pk_r,
        &info,
        &pt,
        &aad,
        &mut FixedIkm::new(ikm_e),
    )
    .unwrap();
    assert_eq!(hex::encode(enc.to_bytes()), "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a");
    assert_eq!(
        hex::encode(&ct),
        "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28"
    );
    let back =
        hpke::single_shot_open::<HpkeAead, HpkeKdf, HpkeKem>(&hpke::OpModeR::Base, &sk_r, &enc, &info, &ct, &aad)
            .unwrap();
    assert_eq!(back, pt);
}

/// RFC 8032 section 7.1, test 1: Ed25519 as the protocol uses it (ed25519-dalek since
/// issue 14; ring before, with the same bytes).
#[test]
fn ed25519_reproduces_rfc_8032_test_1() {
    let seed: [u8; 32] =
        hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60").unwrap().try_into().unwrap();
    let key = referral_proto::keys::SigningKey::from_seed(seed);
    assert_eq!(key.verifying_key().to_hex(), "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
    assert_eq!(
        hex::encode(key.sign(b"")),
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    );
}
