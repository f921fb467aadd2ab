//! The recipient's signed acknowledgement: proof that a person at the
//! recipient agency took the referral. The broker relays it to the sender as
//! part of the ACKNOWLEDGED receipt and keeps it in the audit log.
//!
//! An ack may carry a free-text note for the sender (PROTOCOL.md 7.4): HPKE-
//! sealed to the sending agency, bound to the message and the acknowledging
//! agency and person, and covered by the ack signature through its digest.
//! The broker relays the sealed note but keeps only the digest in the log.

use hpke::{Deserializable as _, Serializable as _};

use crate::canonical::{Canonical, label};
use crate::directory::{Agency, Directory};
use crate::envelope::ENCAPSULATED_KEY_LEN;
use crate::ids::{AgencyId, IdError, KeyId, MessageId};
use crate::keys::{AgencyKeyBundle, AgencyPublicKey, HpkeAead, HpkeKdf, HpkeKem};
use crate::notice::contains_personal_identity_number;
use crate::pb;
use crate::seal::AEAD_TAG_LEN;
use crate::time::Timestamp;
use crate::{Digest, PROTOCOL_VERSION};

/// What the acknowledging agency signs.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AckStatement {
    pub message_id: MessageId,
    pub envelope_digest: Digest,
    pub acknowledged_at: Timestamp,
    pub acker_agency: AgencyId,
    /// The agency's identifier for the person (a staff id or on-call
    /// principal name), 1..=64 printable characters. Never the subject's data.
    pub acknowledged_by: String,
    pub signer_key_id: KeyId,
    /// The digest of the sealed note, when the ack has one (signed).
    pub note_digest: Option<Digest>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedAck {
    pub statement: AckStatement,
    pub signature: [u8; 64],
    /// The sealed note, while the broker still holds it: `None` in the audit
    /// log and after the purge even when `statement.note_digest` is set.
    pub note: Option<SealedNote>,
}

/// Plaintext sizes a note is padded to (a u32 length, the UTF-8 text, zeros):
/// an observer learns only the bucket.
pub const NOTE_BUCKETS: [usize; 3] = [256, 1024, 2048];
/// The longest note, in UTF-8 bytes.
pub const MAX_NOTE_BYTES: usize = NOTE_BUCKETS[NOTE_BUCKETS.len() - 1] - 4;
/// The longest sealed note ciphertext.
pub const MAX_NOTE_CIPHERTEXT: usize = NOTE_BUCKETS[NOTE_BUCKETS.len() - 1] + AEAD_TAG_LEN;

/// A note HPKE-sealed to the sending agency's key `key_id`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SealedNote {
    pub key_id: KeyId,
    pub encapsulated_key: [u8; ENCAPSULATED_KEY_LEN],
    pub ciphertext: Vec<u8>,
}

impl SealedNote {
    /// SHA-256(canonical(`referral.v1/ack-note-digest`, key id, encapsulated
    /// key, ciphertext)): what the ack signs.
    pub fn digest(&self) -> Digest {
        let mut c = Canonical::new(label::ACK_NOTE_DIGEST);
        c.bytes(self.key_id.as_bytes()).bytes(&self.encapsulated_key).bytes(&self.ciphertext);
        Digest::of(&c.finish())
    }
}

/// The note's HPKE `info`: canonical(`referral.v1/ack-note-hpke-info`, u32
/// version, sender agency (the note's reader), acker agency, message id).
pub fn note_hpke_info(sender: &AgencyId, acker: &AgencyId, message_id: &MessageId) -> Vec<u8> {
    let mut c = Canonical::new(label::ACK_NOTE_HPKE_INFO);
    c.u32(PROTOCOL_VERSION).text(sender.as_str()).text(acker.as_str()).bytes(message_id.as_bytes());
    c.finish()
}

/// The note's HPKE `aad`: canonical(`referral.v1/ack-note-aad`, message id,
/// envelope digest, i64 acknowledged_at_ms, acker agency, acknowledged_by,
/// the key id the note is sealed to).
pub fn note_aad(s: &AckStatement, key_id: &KeyId) -> Vec<u8> {
    let mut c = Canonical::new(label::ACK_NOTE_AAD);
    c.bytes(s.message_id.as_bytes())
        .bytes(s.envelope_digest.as_bytes())
        .i64(s.acknowledged_at.0)
        .text(s.acker_agency.as_str())
        .text(&s.acknowledged_by)
        .bytes(key_id.as_bytes());
    c.finish()
}

/// Why a note could not be sealed, or opened by the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("the note is {size} bytes; at most {max} bytes are allowed")]
    TooLarge { size: usize, max: usize },
    #[error("the note is empty")]
    Empty,
    #[error("the note {}", crate::text::FREE_TEXT_RULE)]
    Text,
    #[error("sending agency {0} has no key valid now in the directory")]
    NoSenderKey(AgencyId),
    #[error("HPKE sealing failed: {0}")]
    Hpke(String),
    #[error("the note does not match the digest the ack signed")]
    DigestMismatch,
    #[error("the note was sealed to key {0}, which is not among this agency's key bundles")]
    NoMatchingKey(KeyId),
    #[error("the note was sealed to agency {to}, not to this agency ({ours})")]
    NotForUs { to: AgencyId, ours: AgencyId },
    #[error(
        "the note does not decrypt: it was altered, sealed for another message or acknowledgement, or to another agency"
    )]
    Decrypt,
    #[error("the decrypted note has invalid padding or is not UTF-8 text")]
    Padding,
}

/// Why an acknowledgement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("ack lacks {0}")]
    Missing(&'static str),
    #[error("ack field {field}: {source}")]
    Id {
        field: &'static str,
        #[source]
        source: IdError,
    },
    #[error("ack envelope digest must be 32 bytes")]
    DigestLength,
    #[error("ack signature must be 64 bytes")]
    SignatureLength,
    #[error(
        "ack acknowledged_by must be 1 to 64 characters, not only whitespace, without control or bidirectional formatting characters"
    )]
    AcknowledgedBy,
    /// The label would sit in the permanent audit log forever, so a
    /// personal identity number (anyone's) is refused outright.
    #[error("ack acknowledged_by must not contain a personal identity number")]
    AcknowledgedByPersonalNumber,
    #[error("acking agency {0} is not in the directory")]
    UnknownAgency(AgencyId),
    #[error("ack key {key_id} is not a key of agency {agency} in the directory")]
    UnknownKey { agency: AgencyId, key_id: KeyId },
    #[error("ack key {key_id} is not valid at {at}")]
    KeyNotValid { key_id: KeyId, at: Timestamp },
    #[error("ack signature does not verify with key {0}")]
    BadSignature(KeyId),
    #[error("ack note_digest must be empty or 32 bytes")]
    NoteDigestLength,
    /// Checked before anything else about the note, so the broker can say so
    /// with its own reason (`note_too_large`).
    #[error("ack note ciphertext is {size} bytes; at most {max} are allowed (a note of at most {max_text} bytes)", max_text = MAX_NOTE_BYTES)]
    NoteTooLarge { size: usize, max: usize },
    #[error("ack note must have a 16-byte key_id, a 32-byte encapsulated_key and a padded ciphertext")]
    NoteShape,
    #[error("ack note does not match the note_digest the ack signed")]
    NoteDigestMismatch,
    #[error("ack note: {0}")]
    Note(NoteError),
}

/// PROTOCOL.md 7.1, rule 5: checked when an ack is signed and when one is
/// read from the wire, so the sender's client and the broker refuse alike.
fn check_acknowledged_by(s: &str) -> Result<(), AckError> {
    if !(1..=64).contains(&s.chars().count()) || !crate::text::line_ok(s) || s.trim().is_empty() {
        return Err(AckError::AcknowledgedBy);
    }
    if contains_personal_identity_number(s) {
        return Err(AckError::AcknowledgedByPersonalNumber);
    }
    Ok(())
}

impl AckStatement {
    /// canonical(`referral.v1/ack-signature`, message id, envelope digest,
    /// i64 acknowledged_at_ms, acker agency, acknowledged_by, signer key id).
    pub fn signing_input(&self) -> Vec<u8> {
        let mut c = Canonical::new(label::ACK_SIGNATURE);
        c.bytes(self.message_id.as_bytes())
            .bytes(self.envelope_digest.as_bytes())
            .i64(self.acknowledged_at.0)
            .text(self.acker_agency.as_str())
            .text(&self.acknowledged_by)
            .bytes(self.signer_key_id.as_bytes());
        // PROTOCOL.md 7.2: an ack with a note signs its digest as a seventh
        // field; one without is signed exactly as before notes existed.
        if let Some(d) = &self.note_digest {
            c.bytes(d.as_bytes());
        }
        c.finish()
    }
}

/// Signs an acknowledgement of `message_id` with the agency's bundle.
pub fn sign_ack(
    message_id: MessageId,
    envelope_digest: Digest,
    acknowledged_at: Timestamp,
    acknowledged_by: &str,
    bundle: &AgencyKeyBundle,
) -> Result<SignedAck, AckError> {
    check_acknowledged_by(acknowledged_by)?;
    let statement = AckStatement {
        message_id,
        envelope_digest,
        acknowledged_at,
        acker_agency: bundle.agency().clone(),
        acknowledged_by: acknowledged_by.to_owned(),
        signer_key_id: bundle.key_id(),
        note_digest: None,
    };
    let signature = bundle.sign(&statement.signing_input());
    Ok(SignedAck { statement, signature, note: None })
}

/// Checks a note's text: 1 to [`MAX_NOTE_BYTES`] UTF-8 bytes, not blank,
/// free text (newlines allowed; no other control or bidirectional
/// formatting character).
pub fn check_note(note: &str) -> Result<(), NoteError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(NoteError::TooLarge { size: note.len(), max: MAX_NOTE_BYTES });
    }
    if note.trim().is_empty() {
        return Err(NoteError::Empty);
    }
    if !crate::text::free_text_ok(note) {
        return Err(NoteError::Text);
    }
    Ok(())
}

/// [`sign_ack`] with a note sealed to `sender` (the envelope's sending
/// agency, from the directory) under its key valid at `acknowledged_at`.
pub fn sign_ack_with_note(
    message_id: MessageId,
    envelope_digest: Digest,
    acknowledged_at: Timestamp,
    acknowledged_by: &str,
    note: &str,
    sender: &Agency,
    bundle: &AgencyKeyBundle,
) -> Result<SignedAck, AckError> {
    sign_ack_with_note_rng(
        message_id,
        envelope_digest,
        acknowledged_at,
        acknowledged_by,
        note,
        sender,
        bundle,
        &mut crate::seal::getrandom_rng(),
    )
}

/// [`sign_ack_with_note`] with a caller-supplied source for the HPKE
/// ephemeral key. Only test vectors pass anything but the OS generator.
#[allow(clippy::too_many_arguments)]
pub fn sign_ack_with_note_rng(
    message_id: MessageId,
    envelope_digest: Digest,
    acknowledged_at: Timestamp,
    acknowledged_by: &str,
    note: &str,
    sender: &Agency,
    bundle: &AgencyKeyBundle,
    rng: &mut impl rand_core::CryptoRng,
) -> Result<SignedAck, AckError> {
    check_acknowledged_by(acknowledged_by)?;
    check_note(note).map_err(AckError::Note)?;
    let key =
        sender.current_key(acknowledged_at).ok_or_else(|| AckError::Note(NoteError::NoSenderKey(sender.id.clone())))?;
    let mut statement = AckStatement {
        message_id,
        envelope_digest,
        acknowledged_at,
        acker_agency: bundle.agency().clone(),
        acknowledged_by: acknowledged_by.to_owned(),
        signer_key_id: bundle.key_id(),
        note_digest: None,
    };
    let bucket = *NOTE_BUCKETS.iter().find(|&&b| b >= note.len() + 4).expect("checked against MAX_NOTE_BYTES");
    let mut padded = zeroize::Zeroizing::new(Vec::with_capacity(bucket));
    padded.extend_from_slice(&(note.len() as u32).to_be_bytes());
    padded.extend_from_slice(note.as_bytes());
    padded.resize(bucket, 0);
    let info = note_hpke_info(&sender.id, &statement.acker_agency, &message_id);
    let aad = note_aad(&statement, &key.key_id);
    let hpke_err = |e: hpke::HpkeError| AckError::Note(NoteError::Hpke(e.to_string()));
    let pk = key.hpke_public().map_err(hpke_err)?;
    let (enc, ciphertext) = hpke::single_shot_seal_with_rng::<HpkeAead, HpkeKdf, HpkeKem>(
        &hpke::OpModeS::Base,
        &pk,
        &info,
        &padded,
        &aad,
        rng,
    )
    .map_err(hpke_err)?;
    let mut encapsulated_key = [0u8; ENCAPSULATED_KEY_LEN];
    encapsulated_key.copy_from_slice(&enc.to_bytes());
    let sealed = SealedNote { key_id: key.key_id, encapsulated_key, ciphertext };
    statement.note_digest = Some(sealed.digest());
    let signature = bundle.sign(&statement.signing_input());
    Ok(SignedAck { statement, signature, note: Some(sealed) })
}

impl SignedAck {
    /// Checks the signature with the acker's key from the directory, the key
    /// judged at the signed `acknowledged_at`: all a party can check that does
    /// not know when the broker received the ack. The broker (and the
    /// auditor, from the log) judge it at the broker's receive time with
    /// [`SignedAck::verify_at`], since the signer chooses `acknowledged_at`.
    pub fn verify(&self, directory: &Directory) -> Result<(), AckError> {
        self.verify_at(directory, self.statement.acknowledged_at).map(drop)
    }

    /// Checks the signature with the acker's key from the directory; the key
    /// must be valid at `key_valid_at`. Returns the key that signed.
    pub fn verify_at<'d>(
        &self,
        directory: &'d Directory,
        key_valid_at: Timestamp,
    ) -> Result<&'d AgencyPublicKey, AckError> {
        let s = &self.statement;
        let agency =
            directory.agency(&s.acker_agency).ok_or_else(|| AckError::UnknownAgency(s.acker_agency.clone()))?;
        let key = agency
            .key(&s.signer_key_id)
            .ok_or_else(|| AckError::UnknownKey { agency: s.acker_agency.clone(), key_id: s.signer_key_id })?;
        if !key.valid_at(key_valid_at) {
            return Err(AckError::KeyNotValid { key_id: key.key_id, at: key_valid_at });
        }
        key.signing.verify(&s.signing_input(), &self.signature).map_err(|_| AckError::BadSignature(key.key_id))?;
        Ok(key)
    }

    /// The same ack without its sealed note (the digest stays signed): what
    /// the audit log and the recipient agency's `Settled` events carry.
    pub fn without_note(&self) -> SignedAck {
        SignedAck { note: None, ..self.clone() }
    }

    /// Opens the note for the sending agency `sender`, holder of `bundles`.
    /// `Ok(None)` when the ack has no note (or no longer carries it). The
    /// caller verifies the ack's signature first (as every receipt check
    /// does); this checks the note against the signed digest, then decrypts
    /// under the `info` and `aad` that bind it to this message, this
    /// acknowledging agency and person, and `sender`.
    pub fn open_note(&self, sender: &AgencyId, bundles: &[AgencyKeyBundle]) -> Result<Option<String>, NoteError> {
        let Some(note) = &self.note else { return Ok(None) };
        let s = &self.statement;
        if s.note_digest != Some(note.digest()) {
            return Err(NoteError::DigestMismatch);
        }
        let Some(bundle) = bundles.iter().find(|b| b.key_id() == note.key_id) else {
            return Err(NoteError::NoMatchingKey(note.key_id));
        };
        if bundle.agency() != sender {
            return Err(NoteError::NotForUs { to: sender.clone(), ours: bundle.agency().clone() });
        }
        let info = note_hpke_info(sender, &s.acker_agency, &s.message_id);
        let enc =
            <HpkeKem as hpke::Kem>::EncappedKey::from_bytes(&note.encapsulated_key).map_err(|_| NoteError::Decrypt)?;
        let padded = zeroize::Zeroizing::new(
            hpke::single_shot_open::<HpkeAead, HpkeKdf, HpkeKem>(
                &hpke::OpModeR::Base,
                bundle.hpke_secret(),
                &enc,
                &info,
                &note.ciphertext,
                &note_aad(s, &note.key_id),
            )
            .map_err(|_| NoteError::Decrypt)?,
        );
        if !NOTE_BUCKETS.contains(&padded.len()) {
            return Err(NoteError::Padding);
        }
        let len = u32::from_be_bytes(padded[..4].try_into().expect("bucket >= 4")) as usize;
        let body = padded.get(4..4 + len).ok_or(NoteError::Padding)?;
        if padded[4 + len..].iter().any(|&b| b != 0) {
            return Err(NoteError::Padding);
        }
        let text = String::from_utf8(body.to_vec()).map_err(|_| NoteError::Padding)?;
        check_note(&text)?;
        Ok(Some(text))
    }
}

impl TryFrom<pb::SealedNote> for SealedNote {
    type Error = AckError;

    fn try_from(p: pb::SealedNote) -> Result<Self, AckError> {
        if p.ciphertext.len() > MAX_NOTE_CIPHERTEXT {
            return Err(AckError::NoteTooLarge { size: p.ciphertext.len(), max: MAX_NOTE_CIPHERTEXT });
        }
        if !NOTE_BUCKETS.iter().any(|b| b + AEAD_TAG_LEN == p.ciphertext.len()) {
            return Err(AckError::NoteShape);
        }
        Ok(SealedNote {
            key_id: KeyId::from_slice(&p.key_id).map_err(|_| AckError::NoteShape)?,
            encapsulated_key: p.encapsulated_key.as_slice().try_into().map_err(|_| AckError::NoteShape)?,
            ciphertext: p.ciphertext,
        })
    }
}

impl From<&SealedNote> for pb::SealedNote {
    fn from(n: &SealedNote) -> Self {
        pb::SealedNote {
            key_id: n.key_id.as_bytes().to_vec(),
            encapsulated_key: n.encapsulated_key.to_vec(),
            ciphertext: n.ciphertext.clone(),
        }
    }
}

impl TryFrom<pb::SignedAck> for SignedAck {
    type Error = AckError;

    fn try_from(p: pb::SignedAck) -> Result<Self, AckError> {
        let s = p.statement.ok_or(AckError::Missing("statement"))?;
        let id = |field| move |source| AckError::Id { field, source };
        // The note first: an oversized one gets its own reason.
        let note = p.note.map(SealedNote::try_from).transpose()?;
        check_acknowledged_by(&s.acknowledged_by)?;
        let note_digest = match s.note_digest.len() {
            0 => None,
            _ => Some(Digest::from_slice(&s.note_digest).ok_or(AckError::NoteDigestLength)?),
        };
        // A note must be the one signed; a signed digest without the note is
        // an ack whose note was withheld (the audit log) or purged.
        if let Some(n) = &note
            && note_digest != Some(n.digest())
        {
            return Err(AckError::NoteDigestMismatch);
        }
        Ok(SignedAck {
            statement: AckStatement {
                message_id: MessageId::from_bytes(&s.message_id).map_err(id("message_id"))?,
                envelope_digest: Digest::from_slice(&s.envelope_digest).ok_or(AckError::DigestLength)?,
                acknowledged_at: Timestamp(s.acknowledged_at_ms),
                acker_agency: AgencyId::new(s.acker_agency).map_err(id("acker_agency"))?,
                acknowledged_by: s.acknowledged_by,
                signer_key_id: KeyId::from_slice(&s.signer_key_id).map_err(id("signer_key_id"))?,
                note_digest,
            },
            signature: p.signature.as_slice().try_into().map_err(|_| AckError::SignatureLength)?,
            note,
        })
    }
}

impl From<&SignedAck> for pb::SignedAck {
    fn from(a: &SignedAck) -> Self {
        let s = &a.statement;
        pb::SignedAck {
            statement: Some(pb::AckStatement {
                message_id: s.message_id.as_bytes().to_vec(),
                envelope_digest: s.envelope_digest.0.to_vec(),
                acknowledged_at_ms: s.acknowledged_at.0,
                acker_agency: s.acker_agency.to_string(),
                acknowledged_by: s.acknowledged_by.clone(),
                signer_key_id: s.signer_key_id.as_bytes().to_vec(),
                note_digest: s.note_digest.map(|d| d.0.to_vec()).unwrap_or_default(),
            }),
            signature: a.signature.to_vec(),
            note: a.note.as_ref().map(pb::SealedNote::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::test_vectors::{CREATED_AT, build};

    #[test]
    fn acknowledged_by_refuses_personal_numbers_and_terminal_text() {
        let v = build();
        let sign = |by: &str| sign_ack(v.envelope.header.message_id, v.envelope.digest(), CREATED_AT, by, &v.recipient);
        for pin in ["198503122387", "19850312-2387", "8503122383", "850312-2383", "jour 850312+2383"] {
            assert_eq!(sign(pin).unwrap_err(), AckError::AcknowledgedByPersonalNumber, "{pin}");
        }
        for bad in ["", "   ", "jour\u{1b}[2K", "jour\n1", "\u{202E}1-ruoj", &"x".repeat(65)] {
            assert_eq!(sign(bad).unwrap_err(), AckError::AcknowledgedBy, "{bad:?}");
        }
        let ok = sign("jour-1").unwrap();
        // The same rule when reading from the wire (what the broker does).
        let mut p = pb::SignedAck::from(&ok);
        p.statement.as_mut().unwrap().acknowledged_by = "19850312-2387".into();
        assert_eq!(SignedAck::try_from(p.clone()).unwrap_err(), AckError::AcknowledgedByPersonalNumber);
        p.statement.as_mut().unwrap().acknowledged_by = "a\u{9b}b".into();
        assert_eq!(SignedAck::try_from(p).unwrap_err(), AckError::AcknowledgedBy);
        assert_eq!(SignedAck::try_from(pb::SignedAck::from(&ok)).unwrap(), ok);
    }

    fn other_message(v: &crate::test_vectors::Vectors) -> MessageId {
        let mut b = *v.message_id.as_bytes();
        b[15] = 0x02;
        MessageId::from_bytes(&b).unwrap()
    }

    #[test]
    fn a_note_opens_only_for_the_sender_and_only_on_its_own_ack() {
        let v = build();
        let police = v.directory.agency(v.sender.agency()).unwrap();
        let sender = std::slice::from_ref(&v.sender);
        let with = |id: MessageId, note: &str| {
            sign_ack_with_note(id, v.envelope.digest(), CREATED_AT, "jour-1", note, police, &v.recipient).unwrap()
        };
        let a = with(v.message_id, "ring först");
        a.verify(&v.directory).unwrap();
        assert_eq!(a.open_note(v.sender.agency(), sender).unwrap().as_deref(), Some("ring först"));
        // Through the wire form and back: the same ack, the note intact.
        assert_eq!(SignedAck::try_from(pb::SignedAck::from(&a)).unwrap(), a);

        // The audit log's form: no note, the signed digest still verifies.
        let logged = a.without_note();
        assert_eq!(logged.note, None);
        logged.verify(&v.directory).unwrap();
        assert_eq!(logged.open_note(v.sender.agency(), sender).unwrap(), None);
        assert!(
            !pb::SignedAck::from(&logged)
                .encode_to_vec()
                .windows(16)
                .any(|w| w == &a.note.as_ref().unwrap().ciphertext[..16])
        );

        // A note sealed for message A, moved onto an ack of message B whose
        // acker even re-signs the digest: the HPKE info/aad differ, so the
        // sender cannot open it.
        let b = with(other_message(&v), "annat");
        let mut moved = b.clone();
        moved.note = a.note.clone();
        moved.statement.note_digest = Some(a.note.as_ref().unwrap().digest());
        moved.signature = v.recipient.sign(&moved.statement.signing_input());
        moved.verify(&v.directory).unwrap();
        assert_eq!(moved.open_note(v.sender.agency(), sender).unwrap_err(), NoteError::Decrypt);
        // Moved without re-signing: the digest no longer matches what B signed.
        let mut swapped = b.clone();
        swapped.note = a.note.clone();
        assert_eq!(swapped.open_note(v.sender.agency(), sender).unwrap_err(), NoteError::DigestMismatch);
        assert_eq!(SignedAck::try_from(pb::SignedAck::from(&swapped)).unwrap_err(), AckError::NoteDigestMismatch);
        // Another acknowledging person on the same message: aad differs.
        let mut relabelled = a.clone();
        relabelled.statement.acknowledged_by = "jour-2".into();
        relabelled.signature = v.recipient.sign(&relabelled.statement.signing_input());
        assert_eq!(relabelled.open_note(v.sender.agency(), sender).unwrap_err(), NoteError::Decrypt);
        // One flipped ciphertext bit: refused when read from the wire.
        let mut tampered = pb::SignedAck::from(&a);
        tampered.note.as_mut().unwrap().ciphertext[3] ^= 1;
        assert_eq!(SignedAck::try_from(tampered).unwrap_err(), AckError::NoteDigestMismatch);
        // Stripping the digest from the statement breaks the signature.
        let mut stripped = a.clone();
        stripped.statement.note_digest = None;
        stripped.note = None;
        assert_eq!(stripped.verify(&v.directory).unwrap_err(), AckError::BadSignature(v.recipient.key_id()));

        // Sealed to another agency (here the acker's own): the sender holds no such key.
        let social = v.directory.agency(v.recipient.agency()).unwrap();
        let elsewhere =
            sign_ack_with_note(v.message_id, v.envelope.digest(), CREATED_AT, "jour-1", "x", social, &v.recipient)
                .unwrap();
        assert_eq!(
            elsewhere.open_note(v.sender.agency(), sender).unwrap_err(),
            NoteError::NoMatchingKey(v.recipient.key_id())
        );
        // And the recipient itself, which has that key, reads it under the wrong sender binding.
        assert_eq!(
            elsewhere.open_note(v.sender.agency(), std::slice::from_ref(&v.recipient)).unwrap_err(),
            NoteError::NotForUs { to: v.sender.agency().clone(), ours: v.recipient.agency().clone() }
        );
    }

    #[test]
    fn note_sizes_and_text_are_checked_when_sealing_and_reading() {
        let v = build();
        let police = v.directory.agency(v.sender.agency()).unwrap();
        let sign = |note: &str| {
            sign_ack_with_note(v.message_id, v.envelope.digest(), CREATED_AT, "jour-1", note, police, &v.recipient)
        };
        let longest = "å".repeat(MAX_NOTE_BYTES / 2);
        let a = sign(&longest).unwrap();
        assert_eq!(a.note.as_ref().unwrap().ciphertext.len(), MAX_NOTE_CIPHERTEXT);
        assert_eq!(
            sign(&"x".repeat(MAX_NOTE_BYTES + 1)).unwrap_err(),
            AckError::Note(NoteError::TooLarge { size: MAX_NOTE_BYTES + 1, max: MAX_NOTE_BYTES })
        );
        assert_eq!(sign(" \n ").unwrap_err(), AckError::Note(NoteError::Empty));
        assert_eq!(sign("ring\u{1b}[2J").unwrap_err(), AckError::Note(NoteError::Text));
        // A multi-line note is fine; a short one pads to the smallest bucket.
        let short = sign("rad 1\nrad 2").unwrap();
        assert_eq!(short.note.as_ref().unwrap().ciphertext.len(), NOTE_BUCKETS[0] + AEAD_TAG_LEN);
        // From the wire: an oversized ciphertext is refused before anything else.
        let mut big = pb::SignedAck::from(&a);
        big.note.as_mut().unwrap().ciphertext.resize(MAX_NOTE_CIPHERTEXT + 1, 0);
        assert_eq!(
            SignedAck::try_from(big).unwrap_err(),
            AckError::NoteTooLarge { size: MAX_NOTE_CIPHERTEXT + 1, max: MAX_NOTE_CIPHERTEXT }
        );
        let mut odd = pb::SignedAck::from(&a);
        odd.note.as_mut().unwrap().ciphertext.truncate(300);
        assert_eq!(SignedAck::try_from(odd).unwrap_err(), AckError::NoteShape);
        let mut short_digest = pb::SignedAck::from(&a);
        short_digest.statement.as_mut().unwrap().note_digest.truncate(31);
        assert_eq!(SignedAck::try_from(short_digest).unwrap_err(), AckError::NoteDigestLength);
    }
}
