//! Sealing a referral to its recipient and opening it again.
//!
//! Seal: validate the notice, encode it, pad it to a size bucket, HPKE-seal it
//! to the recipient's current X25519 key with `info` binding protocol version,
//! sender, recipient and message id and `aad` binding the whole header, then
//! sign the header and payload digest with the sender's Ed25519 key.
//!
//! Open: verify the signature against the directory first (so nothing
//! unauthenticated is ever decrypted), then decrypt, unpad, decode, validate.

use hpke::{Deserializable as _, Serializable as _};

use crate::canonical::{Canonical, label};
use crate::directory::{Agency, Directory};
use crate::envelope::{ENCAPSULATED_KEY_LEN, Envelope, EnvelopeHeader, payload_digest, signing_input};
use crate::ids::{AgencyId, KeyId, MessageId};
use crate::keys::{AgencyKeyBundle, AgencyPublicKey, BadSignature, HpkeAead, HpkeKdf, HpkeKem};
use crate::notice::{NoticeError, ReferralNotice, ValidationErrors};
use crate::time::Timestamp;
use crate::{MAX_ENVELOPE_BYTES, PROTOCOL_VERSION};

/// Plaintext sizes a notice is padded to: an observer learns only the bucket.
pub const PADDING_BUCKETS: [usize; 7] = [1024, 2048, 4096, 8192, 16384, 32768, 49152];

/// ChaCha20-Poly1305 tag length.
pub const AEAD_TAG_LEN: usize = 16;

/// Whether a ciphertext length is a padding bucket plus the AEAD tag.
pub fn is_padded_ciphertext_len(len: usize) -> bool {
    PADDING_BUCKETS.iter().any(|b| b + AEAD_TAG_LEN == len)
}

/// The HPKE `info`: canonical(`referral.v1/hpke-info`, u32 version, sender,
/// recipient, message id).
pub fn hpke_info(version: u32, sender: &AgencyId, recipient: &AgencyId, message_id: &MessageId) -> Vec<u8> {
    let mut c = Canonical::new(label::HPKE_INFO);
    c.u32(version).text(sender.as_str()).text(recipient.as_str()).bytes(message_id.as_bytes());
    c.finish()
}

/// u32 big-endian length, the notice bytes, zeros up to the smallest bucket
/// that holds them.
pub fn pad(notice: &[u8]) -> Result<Vec<u8>, SealError> {
    let needed = notice.len() + 4;
    let bucket = *PADDING_BUCKETS
        .iter()
        .find(|&&b| b >= needed)
        .ok_or(SealError::TooLarge { size: notice.len(), max: PADDING_BUCKETS[PADDING_BUCKETS.len() - 1] - 4 })?;
    let mut out = Vec::with_capacity(bucket);
    out.extend_from_slice(&(notice.len() as u32).to_be_bytes());
    out.extend_from_slice(notice);
    out.resize(bucket, 0);
    Ok(out)
}

/// Inverse of [`pad`]; refuses a wrong length or non-zero padding.
pub fn unpad(padded: &[u8]) -> Result<&[u8], OpenError> {
    if !PADDING_BUCKETS.contains(&padded.len()) {
        return Err(OpenError::Padding);
    }
    let len = u32::from_be_bytes(padded[..4].try_into().expect("bucket >= 4")) as usize;
    let body = padded.get(4..4 + len).ok_or(OpenError::Padding)?;
    if padded[4 + len..].iter().any(|&b| b != 0) {
        return Err(OpenError::Padding);
    }
    Ok(body)
}

/// Why a notice could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    #[error("referral notice is {size} bytes encoded; at most {max} fit in an envelope")]
    TooLarge { size: usize, max: usize },
    #[error("agency {0} has no key valid now in the directory")]
    NoRecipientKey(AgencyId),
    #[error("the sender's key {0} is not valid now; use a current key bundle")]
    SenderKeyNotValid(KeyId),
    #[error("the sender's key bundle is for agency {bundle}, not {sender}")]
    WrongSenderBundle { bundle: AgencyId, sender: AgencyId },
    #[error("HPKE sealing failed: {0}")]
    Hpke(String),
}

/// Why an envelope's signature or addressing does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("sender agency {0} is not in the directory")]
    UnknownSender(AgencyId),
    #[error("sender key {key_id} is not a key of agency {agency} in the directory")]
    UnknownSenderKey { agency: AgencyId, key_id: KeyId },
    #[error("sender key {key_id} is not valid at {at}")]
    SenderKeyNotValid { key_id: KeyId, at: Timestamp },
    #[error("recipient agency {0} is not in the directory")]
    UnknownRecipient(AgencyId),
    #[error("recipient key {key_id} is not a key of agency {agency} in the directory")]
    UnknownRecipientKey { agency: AgencyId, key_id: KeyId },
    #[error("envelope signature does not verify with sender key {0}")]
    BadSignature(KeyId),
}

/// Why an envelope could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("envelope is addressed to {recipient}, not to this agency ({ours})")]
    NotForUs { recipient: AgencyId, ours: AgencyId },
    #[error("envelope was sealed to key {0}, which is not among this agency's key bundles")]
    NoMatchingKey(KeyId),
    #[error("envelope payload does not decrypt with the recipient key: it was altered or sealed to another key")]
    Decrypt,
    #[error("decrypted payload has invalid padding")]
    Padding,
    #[error("decrypted payload: {0}")]
    Notice(#[from] NoticeError),
    #[error("envelope urgency {header} differs from the notice's urgency {notice}")]
    UrgencyMismatch { header: crate::envelope::Urgency, notice: crate::envelope::Urgency },
}

/// Seals `notice` from `sender` to `recipient` at `now`.
pub fn seal(
    notice: &ReferralNotice,
    sender: &AgencyKeyBundle,
    recipient: &Agency,
    message_id: MessageId,
    now: Timestamp,
) -> Result<Envelope, SealError> {
    seal_with_rng(notice, sender, recipient, message_id, now, &mut getrandom_rng())
}

/// The operating system's generator: what every caller outside known-answer
/// tests passes where a `rand_core::CryptoRng` is asked for (sealing, the
/// overlap check's scalars, padding and shuffle).
pub fn getrandom_rng() -> impl rand_core::CryptoRng {
    rand_core::UnwrapErr(getrandom::SysRng)
}

/// [`seal`] with a caller-supplied source for the HPKE ephemeral key. Only
/// test vectors pass anything but the OS generator.
pub fn seal_with_rng(
    notice: &ReferralNotice,
    sender: &AgencyKeyBundle,
    recipient: &Agency,
    message_id: MessageId,
    now: Timestamp,
    rng: &mut impl rand_core::CryptoRng,
) -> Result<Envelope, SealError> {
    notice.validate()?;
    if !sender.public().valid_at(now) {
        return Err(SealError::SenderKeyNotValid(sender.key_id()));
    }
    let recipient_key = recipient.current_key(now).ok_or_else(|| SealError::NoRecipientKey(recipient.id.clone()))?;
    let header = EnvelopeHeader {
        message_id,
        sender: sender.agency().clone(),
        recipient: recipient.id.clone(),
        created_at: now,
        urgency: notice.urgency,
        sender_key_id: sender.key_id(),
        recipient_key_id: recipient_key.key_id,
    };
    seal_header(&notice.encode(), header, sender, recipient_key, rng)
}

/// Pads, seals and signs already-encoded notice bytes under `header`.
/// Exposed for test vectors and for tests that must build envelopes the
/// validating path refuses to make; agencies use [`seal`].
pub fn seal_header(
    notice_bytes: &[u8],
    header: EnvelopeHeader,
    sender: &AgencyKeyBundle,
    recipient_key: &AgencyPublicKey,
    rng: &mut impl rand_core::CryptoRng,
) -> Result<Envelope, SealError> {
    if &header.sender != sender.agency() {
        return Err(SealError::WrongSenderBundle { bundle: sender.agency().clone(), sender: header.sender });
    }
    let plaintext = zeroize::Zeroizing::new(pad(notice_bytes)?);
    let info = hpke_info(PROTOCOL_VERSION, &header.sender, &header.recipient, &header.message_id);
    let aad = header.canonical_bytes();
    let pk = recipient_key.hpke_public().map_err(|e| SealError::Hpke(e.to_string()))?;
    let (enc, ciphertext) = hpke::single_shot_seal_with_rng::<HpkeAead, HpkeKdf, HpkeKem>(
        &hpke::OpModeS::Base,
        &pk,
        &info,
        &plaintext,
        &aad,
        rng,
    )
    .map_err(|e| SealError::Hpke(e.to_string()))?;
    let mut encapsulated_key = [0u8; ENCAPSULATED_KEY_LEN];
    encapsulated_key.copy_from_slice(&enc.to_bytes());
    let signature = sender.sign(&signing_input(&header, &payload_digest(&encapsulated_key, &ciphertext)));
    let envelope = Envelope { header, encapsulated_key, ciphertext, signature };
    debug_assert!(envelope.encode().len() <= MAX_ENVELOPE_BYTES);
    Ok(envelope)
}

/// Checks the envelope's addressing and signature against the directory,
/// the sender's key judged at the signed `created_at`: what a recipient does
/// before decrypting (it does not know when the broker received it). The
/// broker judges the key at its receive time instead, with
/// [`verify_envelope_at`], since the sender chooses `created_at`. Returns
/// the sender key that signed.
pub fn verify_envelope<'d>(envelope: &Envelope, directory: &'d Directory) -> Result<&'d AgencyPublicKey, VerifyError> {
    verify_envelope_at(envelope, directory, envelope.header.created_at)
}

/// The directory's key `key_id` of agency `signer`, which must be valid at
/// `key_valid_at`: the first check of every signed message.
pub(crate) fn signer_key<'d>(
    directory: &'d Directory,
    signer: &crate::ids::AgencyId,
    key_id: crate::ids::KeyId,
    key_valid_at: Timestamp,
) -> Result<&'d AgencyPublicKey, VerifyError> {
    let agency = directory.agency(signer).ok_or_else(|| VerifyError::UnknownSender(signer.clone()))?;
    let key = agency.key(&key_id).ok_or_else(|| VerifyError::UnknownSenderKey { agency: signer.clone(), key_id })?;
    if !key.valid_at(key_valid_at) {
        return Err(VerifyError::SenderKeyNotValid { key_id: key.key_id, at: key_valid_at });
    }
    Ok(key)
}

/// [`verify_envelope`] with the sender's key required to be valid at
/// `key_valid_at`.
pub fn verify_envelope_at<'d>(
    envelope: &Envelope,
    directory: &'d Directory,
    key_valid_at: Timestamp,
) -> Result<&'d AgencyPublicKey, VerifyError> {
    let h = &envelope.header;
    let key = signer_key(directory, &h.sender, h.sender_key_id, key_valid_at)?;
    let recipient = directory.agency(&h.recipient).ok_or_else(|| VerifyError::UnknownRecipient(h.recipient.clone()))?;
    if recipient.key(&h.recipient_key_id).is_none() {
        return Err(VerifyError::UnknownRecipientKey { agency: h.recipient.clone(), key_id: h.recipient_key_id });
    }
    key.signing
        .verify(&envelope.signing_input(), &envelope.signature)
        .map_err(|BadSignature| VerifyError::BadSignature(key.key_id))?;
    Ok(key)
}

/// Verifies, decrypts and validates an envelope addressed to the holder of
/// `bundles` (every key bundle the agency still holds, for rotation).
pub fn open(
    envelope: &Envelope,
    directory: &Directory,
    bundles: &[AgencyKeyBundle],
) -> Result<ReferralNotice, OpenError> {
    verify_envelope(envelope, directory)?;
    let h = &envelope.header;
    let bundle = bundles.iter().find(|b| b.key_id() == h.recipient_key_id);
    let Some(bundle) = bundle else {
        if let Some(ours) = bundles.first().map(|b| b.agency()).filter(|a| *a != &h.recipient) {
            return Err(OpenError::NotForUs { recipient: h.recipient.clone(), ours: ours.clone() });
        }
        return Err(OpenError::NoMatchingKey(h.recipient_key_id));
    };
    if bundle.agency() != &h.recipient {
        return Err(OpenError::NotForUs { recipient: h.recipient.clone(), ours: bundle.agency().clone() });
    }
    let info = hpke_info(PROTOCOL_VERSION, &h.sender, &h.recipient, &h.message_id);
    let enc =
        <HpkeKem as hpke::Kem>::EncappedKey::from_bytes(&envelope.encapsulated_key).map_err(|_| OpenError::Decrypt)?;
    let plaintext = zeroize::Zeroizing::new(
        hpke::single_shot_open::<HpkeAead, HpkeKdf, HpkeKem>(
            &hpke::OpModeR::Base,
            bundle.hpke_secret(),
            &enc,
            &info,
            &envelope.ciphertext,
            &h.canonical_bytes(),
        )
        .map_err(|_| OpenError::Decrypt)?,
    );
    let notice = ReferralNotice::decode(unpad(&plaintext)?)?;
    if notice.urgency != h.urgency {
        return Err(OpenError::UrgencyMismatch { header: h.urgency, notice: notice.urgency });
    }
    Ok(notice)
}

/// A generator that replays fixed bytes: the HPKE `ikmE` of a test vector.
/// Never use it for anything but reproducing vectors.
#[derive(Debug)]
pub struct FixedIkm(pub [u8; 32], usize);

impl FixedIkm {
    pub fn new(ikm: [u8; 32]) -> Self {
        Self(ikm, 0)
    }
}

impl rand_core::TryRng for FixedIkm {
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
            *d = self.0[self.1 % 32];
            self.1 += 1;
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for FixedIkm {}
