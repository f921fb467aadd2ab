//! The envelope: a plaintext header the broker routes on, an HPKE-sealed
//! payload it cannot read, and the sender's Ed25519 signature over both.
//!
//! Conversion from the wire (`pb::Envelope`) validates every header field and
//! every length once, so the rest of the system handles only well-formed
//! envelopes. PROTOCOL.md, "Envelope", specifies the bytes computed here.

use crate::canonical::{Canonical, label};
use crate::ids::{AgencyId, IdError, KeyId, MessageId};
use crate::seal::is_padded_ciphertext_len;
use crate::time::Timestamp;
use crate::{Digest, MAX_ENVELOPE_BYTES, NOTICE_CONTENT_TYPE, NOTICE_CONTENT_VERSION, PROTOCOL_VERSION, pb};

/// How soon the recipient must acknowledge.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Urgency {
    Immediate,
    Urgent,
    Routine,
}

impl Urgency {
    pub const ALL: [Urgency; 3] = [Urgency::Immediate, Urgency::Urgent, Urgency::Routine];

    /// The one-byte code in canonical encodings (the protobuf enum number).
    pub fn code(self) -> u8 {
        match self {
            Urgency::Immediate => 1,
            Urgency::Urgent => 2,
            Urgency::Routine => 3,
        }
    }

    pub fn from_pb(value: i32) -> Option<Self> {
        match pb::Urgency::try_from(value).ok()? {
            pb::Urgency::Immediate => Some(Urgency::Immediate),
            pb::Urgency::Urgent => Some(Urgency::Urgent),
            pb::Urgency::Routine => Some(Urgency::Routine),
            pb::Urgency::Unspecified => None,
        }
    }

    pub fn to_pb(self) -> pb::Urgency {
        match self {
            Urgency::Immediate => pb::Urgency::Immediate,
            Urgency::Urgent => pb::Urgency::Urgent,
            Urgency::Routine => pb::Urgency::Routine,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::Immediate => "immediate",
            Urgency::Urgent => "urgent",
            Urgency::Routine => "routine",
        }
    }
}

impl std::fmt::Display for Urgency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The routing metadata of an envelope; everything the broker may see.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EnvelopeHeader {
    pub message_id: MessageId,
    pub sender: AgencyId,
    pub recipient: AgencyId,
    pub created_at: Timestamp,
    pub urgency: Urgency,
    pub sender_key_id: KeyId,
    pub recipient_key_id: KeyId,
}

impl EnvelopeHeader {
    /// The canonical header bytes: the HPKE `aad`, and part of the signing input.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut c = Canonical::new(label::HEADER);
        c.u32(PROTOCOL_VERSION)
            .bytes(self.message_id.as_bytes())
            .text(self.sender.as_str())
            .text(self.recipient.as_str())
            .i64(self.created_at.0)
            .u8(self.urgency.code())
            .bytes(self.sender_key_id.as_bytes())
            .bytes(self.recipient_key_id.as_bytes())
            .text(NOTICE_CONTENT_TYPE)
            .u32(NOTICE_CONTENT_VERSION);
        c.finish()
    }
}

/// Length of an HPKE encapsulated key for DHKEM(X25519, HKDF-SHA256).
pub const ENCAPSULATED_KEY_LEN: usize = 32;

/// A signed, sealed referral.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Envelope {
    pub header: EnvelopeHeader,
    pub encapsulated_key: [u8; ENCAPSULATED_KEY_LEN],
    pub ciphertext: Vec<u8>,
    pub signature: [u8; 64],
}

impl Envelope {
    /// SHA-256(encapsulated_key || ciphertext): the payload digest that is
    /// signed and that the audit log keeps in place of the ciphertext.
    pub fn payload_digest(&self) -> Digest {
        payload_digest(&self.encapsulated_key, &self.ciphertext)
    }

    /// The bytes the sender's Ed25519 key signs.
    pub fn signing_input(&self) -> Vec<u8> {
        signing_input(&self.header, &self.payload_digest())
    }

    /// The envelope digest: the idempotency check and what acks refer to.
    pub fn digest(&self) -> Digest {
        envelope_digest(&self.header, &self.payload_digest(), &self.signature)
    }

    /// Length of the sealed payload (encapsulated key plus ciphertext).
    pub fn payload_len(&self) -> usize {
        ENCAPSULATED_KEY_LEN + self.ciphertext.len()
    }
}

/// SHA-256(encapsulated_key || ciphertext).
pub fn payload_digest(encapsulated_key: &[u8], ciphertext: &[u8]) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(encapsulated_key);
    ctx.update(ciphertext);
    Digest::from_ring(ctx.finish())
}

/// canonical(`referral.v1/envelope-signature`, header bytes, payload digest).
pub fn signing_input(header: &EnvelopeHeader, payload_digest: &Digest) -> Vec<u8> {
    let mut c = Canonical::new(label::ENVELOPE_SIGNATURE);
    c.bytes(&header.canonical_bytes()).bytes(payload_digest.as_bytes());
    c.finish()
}

/// SHA-256(canonical(`referral.v1/envelope-digest`, header bytes, payload digest, signature)).
pub fn envelope_digest(header: &EnvelopeHeader, payload_digest: &Digest, signature: &[u8]) -> Digest {
    let mut c = Canonical::new(label::ENVELOPE_DIGEST);
    c.bytes(&header.canonical_bytes()).bytes(payload_digest.as_bytes()).bytes(signature);
    Digest::of(&c.finish())
}

/// Why an envelope from the wire was refused before any cryptography ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is {size} bytes; the limit is {max}")]
    Oversize { size: usize, max: usize },
    #[error("envelope lacks {0}")]
    Missing(&'static str),
    #[error("envelope protocol version {0} is not supported (expected {PROTOCOL_VERSION})")]
    Version(u32),
    #[error(
        "envelope content type {0:?} is not supported (expected {NOTICE_CONTENT_TYPE:?} version {NOTICE_CONTENT_VERSION})"
    )]
    ContentType(String),
    #[error("envelope header field {field}: {source}")]
    Id {
        field: &'static str,
        #[source]
        source: IdError,
    },
    #[error("envelope urgency {0} is not immediate, urgent or routine")]
    Urgency(i32),
    #[error("envelope sender and recipient are both {0}")]
    SelfAddressed(AgencyId),
    #[error("envelope created_at_ms {0} is not a positive Unix time")]
    CreatedAt(i64),
    #[error("envelope encapsulated key must be {ENCAPSULATED_KEY_LEN} bytes, got {0}")]
    EncapsulatedKeyLength(usize),
    #[error("envelope ciphertext of {0} bytes is not a padding bucket plus the 16-byte tag")]
    CiphertextLength(usize),
    #[error("envelope signature must be 64 bytes, got {0}")]
    SignatureLength(usize),
}

impl TryFrom<pb::EnvelopeHeader> for EnvelopeHeader {
    type Error = EnvelopeError;

    fn try_from(h: pb::EnvelopeHeader) -> Result<Self, EnvelopeError> {
        let id = |field| move |source| EnvelopeError::Id { field, source };
        if h.protocol_version != PROTOCOL_VERSION {
            return Err(EnvelopeError::Version(h.protocol_version));
        }
        if h.content_type != NOTICE_CONTENT_TYPE || h.content_version != NOTICE_CONTENT_VERSION {
            return Err(EnvelopeError::ContentType(format!("{} v{}", h.content_type, h.content_version)));
        }
        let header = EnvelopeHeader {
            message_id: MessageId::from_bytes(&h.message_id).map_err(id("message_id"))?,
            sender: AgencyId::new(h.sender).map_err(id("sender"))?,
            recipient: AgencyId::new(h.recipient).map_err(id("recipient"))?,
            created_at: Timestamp(h.created_at_ms),
            urgency: Urgency::from_pb(h.urgency).ok_or(EnvelopeError::Urgency(h.urgency))?,
            sender_key_id: KeyId::from_slice(&h.sender_key_id).map_err(id("sender_key_id"))?,
            recipient_key_id: KeyId::from_slice(&h.recipient_key_id).map_err(id("recipient_key_id"))?,
        };
        if h.created_at_ms <= 0 {
            return Err(EnvelopeError::CreatedAt(h.created_at_ms));
        }
        if header.sender == header.recipient {
            return Err(EnvelopeError::SelfAddressed(header.sender));
        }
        Ok(header)
    }
}

impl From<&EnvelopeHeader> for pb::EnvelopeHeader {
    fn from(h: &EnvelopeHeader) -> Self {
        pb::EnvelopeHeader {
            protocol_version: PROTOCOL_VERSION,
            message_id: h.message_id.as_bytes().to_vec(),
            sender: h.sender.to_string(),
            recipient: h.recipient.to_string(),
            created_at_ms: h.created_at.0,
            urgency: h.urgency.to_pb() as i32,
            sender_key_id: h.sender_key_id.as_bytes().to_vec(),
            recipient_key_id: h.recipient_key_id.as_bytes().to_vec(),
            content_type: NOTICE_CONTENT_TYPE.to_owned(),
            content_version: NOTICE_CONTENT_VERSION,
        }
    }
}

impl TryFrom<pb::Envelope> for Envelope {
    type Error = EnvelopeError;

    fn try_from(e: pb::Envelope) -> Result<Self, EnvelopeError> {
        let size = prost::Message::encoded_len(&e);
        if size > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::Oversize { size, max: MAX_ENVELOPE_BYTES });
        }
        let header = EnvelopeHeader::try_from(e.header.ok_or(EnvelopeError::Missing("header"))?)?;
        let encapsulated_key = <[u8; ENCAPSULATED_KEY_LEN]>::try_from(e.encapsulated_key.as_slice())
            .map_err(|_| EnvelopeError::EncapsulatedKeyLength(e.encapsulated_key.len()))?;
        if !is_padded_ciphertext_len(e.ciphertext.len()) {
            return Err(EnvelopeError::CiphertextLength(e.ciphertext.len()));
        }
        let signature = <[u8; 64]>::try_from(e.signature.as_slice())
            .map_err(|_| EnvelopeError::SignatureLength(e.signature.len()))?;
        Ok(Envelope { header, encapsulated_key, ciphertext: e.ciphertext, signature })
    }
}

impl From<&Envelope> for pb::Envelope {
    fn from(e: &Envelope) -> Self {
        pb::Envelope {
            header: Some((&e.header).into()),
            encapsulated_key: e.encapsulated_key.to_vec(),
            ciphertext: e.ciphertext.clone(),
            signature: e.signature.to_vec(),
        }
    }
}

impl Envelope {
    /// Decodes and validates an encoded `pb::Envelope`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(DecodeError::Envelope(EnvelopeError::Oversize { size: bytes.len(), max: MAX_ENVELOPE_BYTES }));
        }
        let pb: pb::Envelope = prost::Message::decode(bytes).map_err(|_| DecodeError::Protobuf)?;
        Ok(Envelope::try_from(pb)?)
    }

    /// Encodes as `pb::Envelope`.
    pub fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&pb::Envelope::from(self))
    }
}

/// Bytes that should have held an envelope did not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a valid protobuf referral.v1.Envelope")]
    Protobuf,
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}
