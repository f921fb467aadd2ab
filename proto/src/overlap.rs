//! The blind overlap check through the broker (PROTOCOL.md 13.8): the
//! statements agencies sign to propose, accept and finish a session, and the
//! sealed, signed chunks that carry blinded sets and answers to the peer.
//!
//! The broker reads the statements (agencies, padded sizes, legal basis,
//! transcript hash) and the chunk headers; the chunk payloads are
//! HPKE-sealed to the peer exactly like a referral's (`info` binds the
//! session, sender, recipient, kind and chunk index; `aad` the whole
//! header), so the broker relays blinded values it cannot read.

use hpke::{Deserializable as _, Serializable as _};

use crate::canonical::{Canonical, label};
use crate::directory::{Agency, Directory};
use crate::envelope::{ENCAPSULATED_KEY_LEN, payload_digest};
use crate::ids::{AgencyId, IdError, KeyId, MessageId};
use crate::keys::{AgencyKeyBundle, AgencyPublicKey, BadSignature, HpkeAead, HpkeKdf, HpkeKem};
use crate::notice::LegalBasisKind;
use crate::psi::{ELEMENT_BYTES, MAX_SET_SIZE};
use crate::seal::{OpenError, SealError, VerifyError};
use crate::time::Timestamp;
use crate::{Digest, PROTOCOL_VERSION, pb};

/// Most payload bytes in one chunk: 2,048 elements. A sealed chunk stays
/// well under the broker's 256 KiB request limit and sled's blob threshold.
pub const CHUNK_BYTES: usize = 2048 * ELEMENT_BYTES;

/// Most characters of a legal citation.
pub const MAX_CITATION_CHARS: usize = 200;

/// Which statement: who signs it and what it carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Step {
    /// The initiator proposes: its padded size and legal basis.
    Propose,
    /// The responder accepts: its padded size and legal basis.
    Accept,
    /// Either side reports its transcript hash.
    Finish,
}

impl Step {
    pub fn code(self) -> u8 {
        match self {
            Step::Propose => 1,
            Step::Accept => 2,
            Step::Finish => 3,
        }
    }

    pub fn from_code(v: i32) -> Option<Self> {
        match v {
            1 => Some(Step::Propose),
            2 => Some(Step::Accept),
            3 => Some(Step::Finish),
            _ => None,
        }
    }
}

/// What a chunk carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Kind {
    /// The sender's blinded set.
    Set,
    /// The sender's answer to the peer's set: its digest, then the re-blinded elements.
    Answer,
}

impl Kind {
    pub fn code(self) -> u8 {
        match self {
            Kind::Set => 1,
            Kind::Answer => 2,
        }
    }

    pub fn from_code(v: i32) -> Option<Self> {
        match v {
            1 => Some(Kind::Set),
            2 => Some(Kind::Answer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Set => "set",
            Kind::Answer => "answer",
        }
    }
}

/// The byte length of a whole message of `kind` from a side whose padded
/// set has `own` elements to a peer whose padded set has `peer`.
pub fn message_len(kind: Kind, own: u32, peer: u32) -> usize {
    match kind {
        Kind::Set => own as usize * ELEMENT_BYTES,
        Kind::Answer => 32 + peer as usize * ELEMENT_BYTES,
    }
}

/// How many chunks a message of `len` bytes travels in (at least one).
pub fn chunk_count(len: usize) -> u32 {
    len.div_ceil(CHUNK_BYTES).max(1) as u32
}

/// The payload length of chunk `index` of a message of `len` bytes.
pub fn chunk_len(len: usize, index: u32) -> usize {
    let start = index as usize * CHUNK_BYTES;
    len.saturating_sub(start).min(CHUNK_BYTES)
}

// ---------------------------------------------------------------- statements

/// A proposal, acceptance or finish, as signed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Statement {
    pub step: Step,
    pub session: MessageId,
    pub initiator: AgencyId,
    pub responder: AgencyId,
    pub signer: AgencyId,
    pub signer_key_id: KeyId,
    pub signed_at: Timestamp,
    /// Propose, accept: the signer's padded set size; finish: 0.
    pub set_size: u32,
    /// Propose, accept: the legal basis of the signer's input.
    pub legal_basis: Option<LegalBasisKind>,
    pub legal_citation: String,
    /// Finish: the transcript hash.
    pub transcript_hash: Option<Digest>,
}

/// A statement and its signature.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedStatement {
    pub statement: Statement,
    pub signature: [u8; 64],
}

fn basis_code(k: Option<LegalBasisKind>) -> u8 {
    match k {
        None => 0,
        Some(LegalBasisKind::Consent) => 1,
        Some(LegalBasisKind::Osl10_18c) => 2,
        Some(LegalBasisKind::ChildConcernReport) => 3,
        Some(LegalBasisKind::Other) => 4,
    }
}

fn basis_from_code(v: i32) -> Option<LegalBasisKind> {
    match v {
        1 => Some(LegalBasisKind::Consent),
        2 => Some(LegalBasisKind::Osl10_18c),
        3 => Some(LegalBasisKind::ChildConcernReport),
        4 => Some(LegalBasisKind::Other),
        _ => None,
    }
}

/// The legal basis as its stable name (the notice's JSON name).
pub fn basis_name(k: LegalBasisKind) -> &'static str {
    match k {
        LegalBasisKind::Consent => "consent",
        LegalBasisKind::Osl10_18c => "osl_10_18c",
        LegalBasisKind::ChildConcernReport => "child_concern_report",
        LegalBasisKind::Other => "other",
    }
}

/// Parses a legal basis name ([`basis_name`]).
pub fn parse_basis(s: &str) -> Option<LegalBasisKind> {
    [LegalBasisKind::Consent, LegalBasisKind::Osl10_18c, LegalBasisKind::ChildConcernReport, LegalBasisKind::Other]
        .into_iter()
        .find(|k| basis_name(*k) == s)
}

impl Statement {
    /// canonical(`referral.v1/overlap-statement`, …): what the signer signs.
    pub fn signing_input(&self) -> Vec<u8> {
        let mut c = Canonical::new(label::OVERLAP_STATEMENT);
        c.u32(PROTOCOL_VERSION)
            .u8(self.step.code())
            .bytes(self.session.as_bytes())
            .text(self.initiator.as_str())
            .text(self.responder.as_str())
            .text(self.signer.as_str())
            .bytes(self.signer_key_id.as_bytes())
            .i64(self.signed_at.0)
            .u32(self.set_size)
            .u8(basis_code(self.legal_basis))
            .text(&self.legal_citation)
            .bytes(self.transcript_hash.as_ref().map_or(&[][..], |d| d.as_bytes()));
        c.finish()
    }

    /// The other agency of the session, seen from the signer.
    pub fn peer(&self) -> &AgencyId {
        if self.signer == self.initiator { &self.responder } else { &self.initiator }
    }

    /// Signs with `bundle`, which must be the signer's and carry the key id.
    pub fn sign(self, bundle: &AgencyKeyBundle) -> SignedStatement {
        debug_assert_eq!(bundle.agency(), &self.signer);
        let signature = bundle.sign(&self.signing_input());
        SignedStatement { statement: self, signature }
    }
}

impl SignedStatement {
    /// Checks the signature against the directory, with the signer's key
    /// required to be valid at `key_valid_at`.
    pub fn verify<'d>(
        &self,
        directory: &'d Directory,
        key_valid_at: Timestamp,
    ) -> Result<&'d AgencyPublicKey, VerifyError> {
        let s = &self.statement;
        let key = crate::seal::signer_key(directory, &s.signer, s.signer_key_id, key_valid_at)?;
        key.signing
            .verify(&s.signing_input(), &self.signature)
            .map_err(|BadSignature| VerifyError::BadSignature(key.key_id))?;
        Ok(key)
    }
}

/// Why an overlap statement or chunk from the wire is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverlapError {
    #[error("lacks {0}")]
    Missing(&'static str),
    #[error("field {field}: {source}")]
    Id {
        field: &'static str,
        #[source]
        source: IdError,
    },
    #[error("step {0} is not propose, accept or finish")]
    Step(i32),
    #[error("kind {0} is not set or answer")]
    Kind(i32),
    #[error("initiator and responder are both {0}")]
    SelfSession(AgencyId),
    #[error("a {step} is signed by {signer}, which is not the session's {expected}")]
    WrongSigner { step: &'static str, signer: AgencyId, expected: &'static str },
    #[error("signed_at_ms {0} is not a positive Unix time")]
    Time(i64),
    #[error("set_size {0} is not a power of two from 1 to {MAX_SET_SIZE}")]
    SetSize(u32),
    #[error("legal_basis {0} is not consent, osl_10_18c, child_concern_report or other")]
    LegalBasis(i32),
    #[error("legal_citation must be 1 to {MAX_CITATION_CHARS} characters of one line of text")]
    Citation,
    #[error("a finish carries a 32-byte transcript hash and no size or legal basis")]
    Finish,
    #[error("chunk {index} of {count}: an index must lie below a count of 1 to {max}")]
    ChunkIndex { index: u32, count: u32, max: u32 },
    #[error("encapsulated key must be {ENCAPSULATED_KEY_LEN} bytes, got {0}")]
    EncapsulatedKeyLength(usize),
    #[error("ciphertext of {0} bytes is not 17 to {max} bytes", max = CHUNK_BYTES + 16)]
    CiphertextLength(usize),
    #[error("signature must be 64 bytes, got {0}")]
    SignatureLength(usize),
}

fn id_err(field: &'static str) -> impl Fn(IdError) -> OverlapError {
    move |source| OverlapError::Id { field, source }
}

fn signature(bytes: &[u8]) -> Result<[u8; 64], OverlapError> {
    <[u8; 64]>::try_from(bytes).map_err(|_| OverlapError::SignatureLength(bytes.len()))
}

impl TryFrom<pb::SignedOverlapStatement> for SignedStatement {
    type Error = OverlapError;

    fn try_from(p: pb::SignedOverlapStatement) -> Result<Self, OverlapError> {
        let s = p.statement.ok_or(OverlapError::Missing("statement"))?;
        let step = Step::from_code(s.step).ok_or(OverlapError::Step(s.step))?;
        let statement = Statement {
            step,
            session: MessageId::from_bytes(&s.session_id).map_err(id_err("session_id"))?,
            initiator: AgencyId::new(s.initiator).map_err(id_err("initiator"))?,
            responder: AgencyId::new(s.responder).map_err(id_err("responder"))?,
            signer: AgencyId::new(s.signer).map_err(id_err("signer"))?,
            signer_key_id: KeyId::from_slice(&s.signer_key_id).map_err(id_err("signer_key_id"))?,
            signed_at: Timestamp(s.signed_at_ms),
            set_size: s.set_size,
            legal_basis: None,
            legal_citation: s.legal_citation,
            transcript_hash: None,
        };
        let mut statement = statement;
        if statement.initiator == statement.responder {
            return Err(OverlapError::SelfSession(statement.initiator));
        }
        let (name, expected, ok) = match step {
            Step::Propose => ("proposal", "initiator", statement.signer == statement.initiator),
            Step::Accept => ("acceptance", "responder", statement.signer == statement.responder),
            Step::Finish => (
                "finish",
                "initiator or responder",
                statement.signer == statement.initiator || statement.signer == statement.responder,
            ),
        };
        if !ok {
            return Err(OverlapError::WrongSigner { step: name, signer: statement.signer, expected });
        }
        if s.signed_at_ms <= 0 {
            return Err(OverlapError::Time(s.signed_at_ms));
        }
        match step {
            Step::Propose | Step::Accept => {
                let n = statement.set_size;
                if n == 0 || !n.is_power_of_two() || n as usize > MAX_SET_SIZE {
                    return Err(OverlapError::SetSize(n));
                }
                statement.legal_basis =
                    Some(basis_from_code(s.legal_basis).ok_or(OverlapError::LegalBasis(s.legal_basis))?);
                let chars = statement.legal_citation.chars().count();
                if chars == 0 || chars > MAX_CITATION_CHARS || !crate::text::line_ok(&statement.legal_citation) {
                    return Err(OverlapError::Citation);
                }
                if !s.transcript_hash.is_empty() {
                    return Err(OverlapError::Finish);
                }
            }
            Step::Finish => {
                if statement.set_size != 0 || s.legal_basis != 0 || !statement.legal_citation.is_empty() {
                    return Err(OverlapError::Finish);
                }
                statement.transcript_hash = Some(Digest::from_slice(&s.transcript_hash).ok_or(OverlapError::Finish)?);
            }
        }
        Ok(SignedStatement { statement, signature: signature(&p.signature)? })
    }
}

impl From<&SignedStatement> for pb::SignedOverlapStatement {
    fn from(s: &SignedStatement) -> Self {
        let t = &s.statement;
        pb::SignedOverlapStatement {
            statement: Some(pb::OverlapStatement {
                step: i32::from(t.step.code()),
                session_id: t.session.as_bytes().to_vec(),
                initiator: t.initiator.to_string(),
                responder: t.responder.to_string(),
                signer: t.signer.to_string(),
                signer_key_id: t.signer_key_id.as_bytes().to_vec(),
                signed_at_ms: t.signed_at.0,
                set_size: t.set_size,
                legal_basis: i32::from(basis_code(t.legal_basis)),
                legal_citation: t.legal_citation.clone(),
                transcript_hash: t.transcript_hash.map(|d| d.0.to_vec()).unwrap_or_default(),
            }),
            signature: s.signature.to_vec(),
        }
    }
}

// ---------------------------------------------------------------- chunks

/// A chunk's routing metadata; everything the broker may see of it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ChunkHeader {
    pub session: MessageId,
    pub sender: AgencyId,
    pub recipient: AgencyId,
    pub kind: Kind,
    pub index: u32,
    pub count: u32,
    pub created_at: Timestamp,
    pub sender_key_id: KeyId,
    pub recipient_key_id: KeyId,
}

impl ChunkHeader {
    /// The canonical header bytes: the HPKE `aad` and part of the signing input.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut c = Canonical::new(label::OVERLAP_CHUNK_HEADER);
        c.u32(PROTOCOL_VERSION)
            .bytes(self.session.as_bytes())
            .text(self.sender.as_str())
            .text(self.recipient.as_str())
            .u8(self.kind.code())
            .u32(self.index)
            .u32(self.count)
            .i64(self.created_at.0)
            .bytes(self.sender_key_id.as_bytes())
            .bytes(self.recipient_key_id.as_bytes());
        c.finish()
    }

    /// The HPKE `info`: binds version, sender, recipient, session, kind and index.
    pub fn hpke_info(&self) -> Vec<u8> {
        let mut c = Canonical::new(label::OVERLAP_HPKE_INFO);
        c.u32(PROTOCOL_VERSION)
            .text(self.sender.as_str())
            .text(self.recipient.as_str())
            .bytes(self.session.as_bytes())
            .u8(self.kind.code())
            .u32(self.index);
        c.finish()
    }
}

/// canonical(`referral.v1/overlap-chunk-signature`, header bytes, payload digest).
pub fn chunk_signing_input(header: &ChunkHeader, payload_digest: &Digest) -> Vec<u8> {
    let mut c = Canonical::new(label::OVERLAP_CHUNK_SIGNATURE);
    c.bytes(&header.canonical_bytes()).bytes(payload_digest.as_bytes());
    c.finish()
}

/// A sealed, signed chunk.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Chunk {
    pub header: ChunkHeader,
    pub encapsulated_key: [u8; ENCAPSULATED_KEY_LEN],
    pub ciphertext: Vec<u8>,
    pub signature: [u8; 64],
}

/// The largest chunk count a message can need.
pub fn max_chunks() -> u32 {
    chunk_count(32 + MAX_SET_SIZE * ELEMENT_BYTES)
}

impl Chunk {
    pub fn payload_digest(&self) -> Digest {
        payload_digest(&self.encapsulated_key, &self.ciphertext)
    }

    /// canonical(`referral.v1/overlap-chunk-signature`, header bytes, payload digest).
    pub fn signing_input(&self) -> Vec<u8> {
        chunk_signing_input(&self.header, &self.payload_digest())
    }

    /// SHA-256 of the signing input and the signature: one exact chunk.
    pub fn digest(&self) -> Digest {
        let mut c = Canonical::new(label::OVERLAP_CHUNK_DIGEST);
        c.bytes(&self.signing_input()).bytes(&self.signature);
        Digest::of(&c.finish())
    }

    pub fn payload_len(&self) -> usize {
        ENCAPSULATED_KEY_LEN + self.ciphertext.len()
    }

    /// The plaintext length this chunk carries.
    pub fn plaintext_len(&self) -> usize {
        self.ciphertext.len() - crate::seal::AEAD_TAG_LEN
    }

    /// Checks the signature against the directory at `key_valid_at`.
    pub fn verify<'d>(
        &self,
        directory: &'d Directory,
        key_valid_at: Timestamp,
    ) -> Result<&'d AgencyPublicKey, VerifyError> {
        let h = &self.header;
        let sender = directory.agency(&h.sender).ok_or_else(|| VerifyError::UnknownSender(h.sender.clone()))?;
        let key = sender
            .key(&h.sender_key_id)
            .ok_or_else(|| VerifyError::UnknownSenderKey { agency: h.sender.clone(), key_id: h.sender_key_id })?;
        if !key.valid_at(key_valid_at) {
            return Err(VerifyError::SenderKeyNotValid { key_id: key.key_id, at: key_valid_at });
        }
        let recipient =
            directory.agency(&h.recipient).ok_or_else(|| VerifyError::UnknownRecipient(h.recipient.clone()))?;
        if recipient.key(&h.recipient_key_id).is_none() {
            return Err(VerifyError::UnknownRecipientKey { agency: h.recipient.clone(), key_id: h.recipient_key_id });
        }
        key.signing
            .verify(&self.signing_input(), &self.signature)
            .map_err(|BadSignature| VerifyError::BadSignature(key.key_id))?;
        Ok(key)
    }
}

impl TryFrom<pb::OverlapChunkHeader> for ChunkHeader {
    type Error = OverlapError;

    fn try_from(h: pb::OverlapChunkHeader) -> Result<Self, OverlapError> {
        let header = ChunkHeader {
            session: MessageId::from_bytes(&h.session_id).map_err(id_err("session_id"))?,
            sender: AgencyId::new(h.sender).map_err(id_err("sender"))?,
            recipient: AgencyId::new(h.recipient).map_err(id_err("recipient"))?,
            kind: Kind::from_code(h.kind).ok_or(OverlapError::Kind(h.kind))?,
            index: h.index,
            count: h.count,
            created_at: Timestamp(h.created_at_ms),
            sender_key_id: KeyId::from_slice(&h.sender_key_id).map_err(id_err("sender_key_id"))?,
            recipient_key_id: KeyId::from_slice(&h.recipient_key_id).map_err(id_err("recipient_key_id"))?,
        };
        if header.sender == header.recipient {
            return Err(OverlapError::SelfSession(header.sender));
        }
        if h.count == 0 || h.count > max_chunks() || h.index >= h.count {
            return Err(OverlapError::ChunkIndex { index: h.index, count: h.count, max: max_chunks() });
        }
        if h.created_at_ms <= 0 {
            return Err(OverlapError::Time(h.created_at_ms));
        }
        Ok(header)
    }
}

impl From<&ChunkHeader> for pb::OverlapChunkHeader {
    fn from(h: &ChunkHeader) -> Self {
        pb::OverlapChunkHeader {
            session_id: h.session.as_bytes().to_vec(),
            sender: h.sender.to_string(),
            recipient: h.recipient.to_string(),
            kind: i32::from(h.kind.code()),
            index: h.index,
            count: h.count,
            created_at_ms: h.created_at.0,
            sender_key_id: h.sender_key_id.as_bytes().to_vec(),
            recipient_key_id: h.recipient_key_id.as_bytes().to_vec(),
        }
    }
}

impl TryFrom<pb::OverlapChunk> for Chunk {
    type Error = OverlapError;

    fn try_from(c: pb::OverlapChunk) -> Result<Self, OverlapError> {
        let header = ChunkHeader::try_from(c.header.ok_or(OverlapError::Missing("header"))?)?;
        let encapsulated_key = <[u8; ENCAPSULATED_KEY_LEN]>::try_from(c.encapsulated_key.as_slice())
            .map_err(|_| OverlapError::EncapsulatedKeyLength(c.encapsulated_key.len()))?;
        let n = c.ciphertext.len();
        if n <= crate::seal::AEAD_TAG_LEN || n > CHUNK_BYTES + crate::seal::AEAD_TAG_LEN {
            return Err(OverlapError::CiphertextLength(n));
        }
        Ok(Chunk { header, encapsulated_key, ciphertext: c.ciphertext, signature: signature(&c.signature)? })
    }
}

impl From<&Chunk> for pb::OverlapChunk {
    fn from(c: &Chunk) -> Self {
        pb::OverlapChunk {
            header: Some((&c.header).into()),
            encapsulated_key: c.encapsulated_key.to_vec(),
            ciphertext: c.ciphertext.clone(),
            signature: c.signature.to_vec(),
        }
    }
}

/// Seals and signs one chunk's bytes under `header`. Exposed so that tests
/// can build chunks an honest side never would (a malformed point).
pub fn seal_chunk(
    bytes: &[u8],
    header: ChunkHeader,
    sender: &AgencyKeyBundle,
    recipient_key: &AgencyPublicKey,
    rng: &mut impl rand_core::CryptoRng,
) -> Result<Chunk, SealError> {
    if &header.sender != sender.agency() {
        return Err(SealError::WrongSenderBundle { bundle: sender.agency().clone(), sender: header.sender });
    }
    let pk = recipient_key.hpke_public().map_err(|e| SealError::Hpke(e.to_string()))?;
    let (enc, ciphertext) = hpke::single_shot_seal_with_rng::<HpkeAead, HpkeKdf, HpkeKem>(
        &hpke::OpModeS::Base,
        &pk,
        &header.hpke_info(),
        bytes,
        &header.canonical_bytes(),
        rng,
    )
    .map_err(|e| SealError::Hpke(e.to_string()))?;
    let mut encapsulated_key = [0u8; ENCAPSULATED_KEY_LEN];
    encapsulated_key.copy_from_slice(&enc.to_bytes());
    let mut chunk = Chunk { header, encapsulated_key, ciphertext, signature: [0; 64] };
    chunk.signature = sender.sign(&chunk.signing_input());
    Ok(chunk)
}

/// Splits a whole message into chunks, each sealed to `recipient`'s current
/// key and signed with `sender` at `now`.
pub fn seal_message(
    session: MessageId,
    kind: Kind,
    bytes: &[u8],
    sender: &AgencyKeyBundle,
    recipient: &Agency,
    now: Timestamp,
    rng: &mut impl rand_core::CryptoRng,
) -> Result<Vec<Chunk>, SealError> {
    if !sender.public().valid_at(now) {
        return Err(SealError::SenderKeyNotValid(sender.key_id()));
    }
    let recipient_key = recipient.current_key(now).ok_or_else(|| SealError::NoRecipientKey(recipient.id.clone()))?;
    let count = chunk_count(bytes.len());
    (0..count)
        .map(|index| {
            let start = index as usize * CHUNK_BYTES;
            let part = &bytes[start..start + chunk_len(bytes.len(), index)];
            let header = ChunkHeader {
                session,
                sender: sender.agency().clone(),
                recipient: recipient.id.clone(),
                kind,
                index,
                count,
                created_at: now,
                sender_key_id: sender.key_id(),
                recipient_key_id: recipient_key.key_id,
            };
            seal_chunk(part, header, sender, recipient_key, rng)
        })
        .collect()
}

/// Verifies (at the chunk's `created_at`) and decrypts a chunk addressed to
/// the holder of `bundles`.
pub fn open_chunk(chunk: &Chunk, directory: &Directory, bundles: &[AgencyKeyBundle]) -> Result<Vec<u8>, OpenError> {
    chunk.verify(directory, chunk.header.created_at)?;
    let h = &chunk.header;
    let bundle = bundles
        .iter()
        .find(|b| b.key_id() == h.recipient_key_id)
        .ok_or(OpenError::NoMatchingKey(h.recipient_key_id))?;
    if bundle.agency() != &h.recipient {
        return Err(OpenError::NotForUs { recipient: h.recipient.clone(), ours: bundle.agency().clone() });
    }
    let enc =
        <HpkeKem as hpke::Kem>::EncappedKey::from_bytes(&chunk.encapsulated_key).map_err(|_| OpenError::Decrypt)?;
    hpke::single_shot_open::<HpkeAead, HpkeKdf, HpkeKem>(
        &hpke::OpModeR::Base,
        bundle.hpke_secret(),
        &enc,
        &h.hpke_info(),
        &chunk.ciphertext,
        &h.canonical_bytes(),
    )
    .map_err(|_| OpenError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_vectors::TestRng;

    #[test]
    fn chunking_covers_a_message_exactly() {
        for len in [32, CHUNK_BYTES, CHUNK_BYTES + 32, 32 + 4096 * 32, MAX_SET_SIZE * 32 + 32] {
            let n = chunk_count(len);
            let total: usize = (0..n).map(|i| chunk_len(len, i)).sum();
            assert_eq!(total, len, "len {len}");
            assert!((0..n).all(|i| chunk_len(len, i) > 0));
        }
        assert_eq!(chunk_count(CHUNK_BYTES), 1);
        assert_eq!(chunk_count(CHUNK_BYTES + 1), 2);
        assert_eq!(max_chunks(), 33);
        assert_eq!(message_len(Kind::Answer, 4, 8), 32 + 8 * 32);
    }

    #[test]
    fn legal_basis_names_round_trip() {
        for k in [
            LegalBasisKind::Consent,
            LegalBasisKind::Osl10_18c,
            LegalBasisKind::ChildConcernReport,
            LegalBasisKind::Other,
        ] {
            assert_eq!(parse_basis(basis_name(k)), Some(k));
            assert_eq!(basis_from_code(i32::from(basis_code(Some(k)))), Some(k));
        }
        assert_eq!(parse_basis("because"), None);
    }

    #[test]
    fn a_statement_round_trips_and_binds_every_field() {
        let v = crate::test_vectors::build();
        let (dir, police, social) = (v.directory, v.sender, v.recipient);
        let now = crate::test_vectors::CREATED_AT;
        let s = Statement {
            step: Step::Propose,
            session: crate::test_vectors::message_id(),
            initiator: police.agency().clone(),
            responder: social.agency().clone(),
            signer: police.agency().clone(),
            signer_key_id: police.key_id(),
            signed_at: now,
            set_size: 8,
            legal_basis: Some(LegalBasisKind::Osl10_18c),
            legal_citation: "OSL 10 kap. 18 c §".into(),
            transcript_hash: None,
        }
        .sign(&police);
        let back = SignedStatement::try_from(pb::SignedOverlapStatement::from(&s)).unwrap();
        assert_eq!(back, s);
        back.verify(&dir, now).unwrap();
        let mut changed = s.clone();
        changed.statement.set_size = 16;
        assert!(matches!(changed.verify(&dir, now), Err(VerifyError::BadSignature(_))));
        let mut p = pb::SignedOverlapStatement::from(&s);
        p.statement.as_mut().unwrap().signer = social.agency().to_string();
        assert!(matches!(SignedStatement::try_from(p), Err(OverlapError::WrongSigner { .. })));
        let mut p = pb::SignedOverlapStatement::from(&s);
        p.statement.as_mut().unwrap().set_size = 12;
        assert_eq!(SignedStatement::try_from(p), Err(OverlapError::SetSize(12)));
    }

    #[test]
    fn a_chunk_opens_only_for_its_recipient_and_unaltered() {
        let v = crate::test_vectors::build();
        let (dir, police, social) = (v.directory, v.sender, v.recipient);
        let now = crate::test_vectors::CREATED_AT;
        let session = crate::test_vectors::message_id();
        let bytes: Vec<u8> = (0..(CHUNK_BYTES + 64)).map(|i| i as u8).collect();
        let chunks = seal_message(
            session,
            Kind::Set,
            &bytes,
            &police,
            dir.agency(social.agency()).unwrap(),
            now,
            &mut TestRng::new(3),
        )
        .unwrap();
        assert_eq!(chunks.len(), 2);
        let opened: Vec<u8> = chunks
            .iter()
            .flat_map(|c| {
                let c = Chunk::try_from(pb::OverlapChunk::from(c)).unwrap();
                open_chunk(&c, &dir, std::slice::from_ref(&social)).unwrap()
            })
            .collect();
        assert_eq!(opened, bytes);
        assert!(open_chunk(&chunks[0], &dir, std::slice::from_ref(&police)).is_err());
        // Moving a chunk to another index breaks its signature and its HPKE binding.
        let mut moved = chunks[1].clone();
        moved.header.index = 0;
        assert!(matches!(open_chunk(&moved, &dir, std::slice::from_ref(&social)), Err(OpenError::Verify(_))));
        let mut flipped = chunks[0].clone();
        flipped.ciphertext[5] ^= 1;
        assert!(open_chunk(&flipped, &dir, std::slice::from_ref(&social)).is_err());
    }
}
