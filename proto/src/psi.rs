//! The blind overlap check: a two-party, mutual ECDH private set intersection
//! over ristretto255 (RFC 9496), as pure functions (PROTOCOL.md, "Blind
//! overlap check").
//!
//! Each side hashes its normalised personal identity numbers to the group with
//! RFC 9380's `hash_to_ristretto255` under a tag that binds the protocol version
//! and the session id, multiplies them by a fresh secret scalar, pads the set
//! with random elements to a power of two and shuffles it. The peer multiplies
//! that set by its own scalar and sends it back in the same order; each side
//! then knows its own subjects' doubly blinded values and compares them with
//! the peer's doubly blinded values (which it computed itself). Equal values
//! mean the same number, so each side learns which of its own subjects the
//! other holds, and how large the other's padded set is, nothing more.
//!
//! # Layout
//! - [`expand_message_xmd`], [`hash_to_ristretto255`]: RFC 9380 section 5.3.1
//!   with SHA-512, and appendix B's hash to ristretto255.
//! - [`PersonalIdentityNumber`]: the input both sides must compute identically.
//! - [`BlindedSet`], [`Answer`]: what travels, with their canonical checks.
//! - [`Party`] → [`AwaitingAnswer`] → matches: one side of a session. Randomness
//!   comes from the caller (`rand_core::CryptoRng`); this module draws none.

use std::collections::{BTreeSet, HashSet};
use std::fmt;

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use zeroize::{Zeroize, Zeroizing};

use crate::Digest;
use crate::canonical::Canonical;
use crate::ids::MessageId;
use crate::time::Timestamp;

/// Version of the overlap protocol; it is part of every hash-to-group tag.
pub const PSI_VERSION: u32 = 1;

/// The RFC 9380 suite identifier of the hash to the group.
pub const SUITE_ID: &str = "ristretto255_XMD:SHA-512_R255MAP_RO_";

/// Most subjects one side may bring to a session (before padding). A broker
/// may configure a lower cap; this bound keeps a malicious peer from making
/// the other side compute without end.
pub const MAX_SET_SIZE: usize = 1 << 16;

/// Bytes of one encoded group element.
pub const ELEMENT_BYTES: usize = 32;

/// SHA-512's output (`b_in_bytes`) and block (`s_in_bytes`) sizes.
const B_IN_BYTES: usize = 64;
const S_IN_BYTES: usize = 128;

/// Why `expand_message_xmd` refused its arguments (RFC 9380 section 5.3.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmdError {
    #[error("the domain-separation tag is empty")]
    EmptyDst,
    #[error("the domain-separation tag is {0} bytes; at most 255 are supported")]
    DstTooLong(usize),
    #[error("{0} output bytes asked for; expand_message_xmd(SHA-512) gives at most 16320")]
    OutputTooLong(usize),
}

/// RFC 9380 section 5.3.1, `expand_message_xmd` with H = SHA-512.
///
/// Tags longer than 255 bytes (section 5.3.3) are refused rather than hashed:
/// the protocol's own tags are short, and the RFC has no SHA-512 vectors for
/// that path to test it against.
pub fn expand_message_xmd(msg: &[u8], dst: &[u8], len_in_bytes: usize) -> Result<Vec<u8>, XmdError> {
    if dst.is_empty() {
        return Err(XmdError::EmptyDst);
    }
    let dst_len = u8::try_from(dst.len()).map_err(|_| XmdError::DstTooLong(dst.len()))?;
    let ell = len_in_bytes.div_ceil(B_IN_BYTES);
    if ell > 255 || len_in_bytes > 65535 {
        return Err(XmdError::OutputTooLong(len_in_bytes));
    }
    let l_i_b_str = (len_in_bytes as u16).to_be_bytes();
    let sha512 = || ring::digest::Context::new(&ring::digest::SHA512);

    // b_0 = H(Z_pad || msg || l_i_b_str || I2OSP(0, 1) || DST_prime)
    let mut h = sha512();
    h.update(&[0u8; S_IN_BYTES]);
    h.update(msg);
    h.update(&l_i_b_str);
    h.update(&[0]);
    h.update(dst);
    h.update(&[dst_len]);
    let b_0 = h.finish();

    let mut out = Vec::with_capacity(ell * B_IN_BYTES);
    let mut b_prev = [0u8; B_IN_BYTES];
    for i in 1..=ell {
        // b_1 = H(b_0 || I2OSP(1, 1) || DST_prime);
        // b_i = H(strxor(b_0, b_(i-1)) || I2OSP(i, 1) || DST_prime).
        let mut input = [0u8; B_IN_BYTES];
        for (k, byte) in input.iter_mut().enumerate() {
            *byte = b_0.as_ref()[k] ^ if i == 1 { 0 } else { b_prev[k] };
        }
        let mut h = sha512();
        h.update(&input);
        h.update(&[i as u8]);
        h.update(dst);
        h.update(&[dst_len]);
        b_prev.copy_from_slice(h.finish().as_ref());
        out.extend_from_slice(&b_prev);
    }
    out.truncate(len_in_bytes);
    Ok(out)
}

/// RFC 9380 appendix B: `hash_to_ristretto255(msg)` = the ristretto255 one-way
/// map (RFC 9496 section 4.3.4) of `expand_message_xmd(msg, DST, 64)`.
pub fn hash_to_ristretto255(msg: &[u8], dst: &[u8]) -> Result<RistrettoPoint, XmdError> {
    let uniform: [u8; 64] = expand_message_xmd(msg, dst, 64)?.try_into().expect("64 bytes asked for");
    Ok(RistrettoPoint::from_uniform_bytes(&uniform))
}

/// The hash-to-group tag of a session: it binds the protocol version and the
/// session id, so values blinded for one session are useless in another.
pub fn session_dst(session: &MessageId) -> String {
    format!("REFERRAL-BROKER-PSI-V{PSI_VERSION}-{session}-{SUITE_ID}")
}

// ---------------------------------------------------------------- identity numbers

/// Why a text is not a personal identity number. The messages never repeat the
/// input: it is personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("not a personal identity number (YYYYMMDD-NNNN, YYYYMMDDNNNN, YYMMDD-NNNN, YYMMDD+NNNN or YYMMDDNNNN)")]
    Form,
    #[error("the date part is not a real date (a coordination number adds 60 to the day)")]
    Date,
    #[error("the check digit is wrong (Luhn over the last ten digits)")]
    CheckDigit,
}

/// A Swedish personal identity number (personnummer) or coordination number
/// (samordningsnummer) in its normalised 12-digit form `YYYYMMDDNNNC`: the one
/// input both sides of an overlap check hash, whatever form their records use.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PersonalIdentityNumber([u8; 12]);

impl PersonalIdentityNumber {
    /// Normalises the forms in common use: `YYYYMMDDNNNC`, `YYYYMMDD-NNNC`,
    /// and the ten-digit `YYMMDD-NNNC`, `YYMMDDNNNC` (born less than a hundred
    /// years before `today`) and `YYMMDD+NNNC` (a hundred years or more), with
    /// surrounding whitespace ignored. The century of a ten-digit form is the
    /// latest one that puts the birth date on or before `today`.
    pub fn parse(input: &str, today: Timestamp) -> Result<Self, PinError> {
        let s = input.trim().as_bytes();
        let digits_only = |b: &[u8]| b.iter().all(u8::is_ascii_digit);
        let (century_digits, rest): (Option<[u8; 2]>, Vec<u8>) = match s.len() {
            12 if digits_only(s) => (Some([s[0], s[1]]), s[2..].to_vec()),
            13 if s[8] == b'-' && digits_only(&s[..8]) && digits_only(&s[9..]) => {
                (Some([s[0], s[1]]), [&s[2..8], &s[9..]].concat())
            }
            10 if digits_only(s) => (None, s.to_vec()),
            11 if matches!(s[6], b'-' | b'+') && digits_only(&s[..6]) && digits_only(&s[7..]) => {
                (None, [&s[..6], &s[7..]].concat())
            }
            _ => return Err(PinError::Form),
        };
        let num = |r: std::ops::Range<usize>| rest[r].iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
        let (yy, month, day) = (num(0..2), num(2..4), num(4..6));
        let day = if day > 60 { day - 60 } else { day };
        let year = match century_digits {
            Some(c) => i64::from(c[0] - b'0') * 1000 + i64::from(c[1] - b'0') * 100 + yy,
            None => {
                let (ty, tm, td) = crate::time::civil_from_days(today.0.div_euclid(86_400_000));
                let mut year = ty - ty.rem_euclid(100) + yy;
                if (year, month, day) > (ty, tm, td) {
                    year -= 100;
                }
                if s[6] == b'+' {
                    year -= 100;
                }
                year
            }
        };
        if !crate::time::is_valid_date(year, month, day) {
            return Err(PinError::Date);
        }
        if !crate::notice::luhn_ok(&rest) {
            return Err(PinError::CheckDigit);
        }
        let mut out = [0u8; 12];
        out[..2].copy_from_slice(format!("{:02}", year / 100).as_bytes());
        out[2..].copy_from_slice(&rest);
        Ok(Self(out))
    }

    /// The 12 digits, `YYYYMMDDNNNC`.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII digits")
    }

    /// Whether this is a coordination number (day of month plus 60).
    pub fn is_coordination_number(&self) -> bool {
        self.0[6] >= b'6'
    }
}

/// Personal data: never printed by `{:?}`, so it cannot reach a log by accident.
impl fmt::Debug for PersonalIdentityNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PersonalIdentityNumber(..)")
    }
}

// ---------------------------------------------------------------- wire values

/// Why a side refused its input or the peer's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PsiError {
    #[error("{0} distinct subjects; at most {MAX_SET_SIZE} may take part in one session")]
    TooManySubjects(usize),
    #[error("a set of {0} bytes is not a whole number of 32-byte elements")]
    Length(usize),
    #[error("a set of {0} elements; it must be a power of two of at most {MAX_SET_SIZE}")]
    SetSize(usize),
    #[error("element {index} is not a canonical ristretto255 encoding")]
    NotCanonical { index: usize },
    #[error("element {index} is the identity element")]
    Identity { index: usize },
    #[error("an answer of {0} bytes is shorter than its 32-byte set digest")]
    AnswerLength(usize),
    #[error("the answer re-blinds another set than the one this side sent")]
    AnswersAnotherSet,
    #[error("the answer has {got} elements for the {sent} this side sent")]
    AnswerSize { sent: usize, got: usize },
}

/// A blinded set as it travels: a power-of-two number of canonical
/// ristretto255 encodings, none the identity. Decoding checks all of it, so a
/// value of this type is always well formed.
#[derive(Clone, PartialEq, Eq)]
pub struct BlindedSet {
    encoded: Vec<u8>,
    points: Vec<RistrettoPoint>,
}

impl BlindedSet {
    fn from_points(points: Vec<RistrettoPoint>) -> Self {
        let mut encoded = Vec::with_capacity(points.len() * ELEMENT_BYTES);
        for p in &points {
            encoded.extend_from_slice(p.compress().as_bytes());
        }
        Self { encoded, points }
    }

    /// Decodes the concatenated 32-byte encodings, refusing anything that is
    /// not canonical (RFC 9496 section 4.3.1), the identity, or a set whose
    /// size is not a power of two up to [`MAX_SET_SIZE`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PsiError> {
        if !bytes.len().is_multiple_of(ELEMENT_BYTES) {
            return Err(PsiError::Length(bytes.len()));
        }
        let n = bytes.len() / ELEMENT_BYTES;
        if !n.is_power_of_two() || n > MAX_SET_SIZE {
            return Err(PsiError::SetSize(n));
        }
        let mut points = Vec::with_capacity(n);
        for (index, chunk) in bytes.chunks_exact(ELEMENT_BYTES).enumerate() {
            let point = CompressedRistretto::from_slice(chunk)
                .expect("32 bytes")
                .decompress()
                .ok_or(PsiError::NotCanonical { index })?;
            if point == RistrettoPoint::default() {
                return Err(PsiError::Identity { index });
            }
            points.push(point);
        }
        Ok(Self { encoded: bytes.to_vec(), points })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.encoded
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The set's digest within `session`: what an answer names and what the
    /// transcript hash covers.
    pub fn digest(&self, session: &MessageId) -> Digest {
        let mut c = Canonical::new(crate::canonical::label::PSI_SET);
        c.bytes(session.as_bytes()).u32(self.len() as u32).bytes(&self.encoded);
        Digest::of(&c.finish())
    }
}

impl fmt::Debug for BlindedSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlindedSet({} elements)", self.len())
    }
}

/// The peer's set re-blinded with this side's scalar, in the peer's order,
/// naming the set it answers by digest.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Answer {
    pub answers: Digest,
    pub set: BlindedSet,
}

impl Answer {
    /// The 32-byte digest of the answered set, then the re-blinded elements.
    pub fn to_bytes(&self) -> Vec<u8> {
        [self.answers.as_bytes().as_slice(), self.set.as_bytes()].concat()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PsiError> {
        if bytes.len() < 32 {
            return Err(PsiError::AnswerLength(bytes.len()));
        }
        let answers = Digest::from_slice(&bytes[..32]).expect("32 bytes");
        Ok(Self { answers, set: BlindedSet::from_bytes(&bytes[32..])? })
    }
}

/// The padded size of a set of `n` subjects: the next power of two, at least one.
pub fn padded_size(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

/// The transcript hash of a session: both blinded sets and both answers, in
/// the initiator's then the responder's order. Both sides and the audit log
/// can name a run by it without holding anything identifier-derived.
pub fn transcript_hash(
    session: &MessageId,
    initiator_set: &Digest,
    responder_set: &Digest,
    initiator_answer: &Answer,
    responder_answer: &Answer,
) -> Digest {
    let mut c = Canonical::new(crate::canonical::label::PSI_TRANSCRIPT);
    c.u32(PSI_VERSION)
        .bytes(session.as_bytes())
        .bytes(initiator_set.as_bytes())
        .bytes(responder_set.as_bytes())
        .bytes(&Digest::of(&initiator_answer.to_bytes()).0)
        .bytes(&Digest::of(&responder_answer.to_bytes()).0);
    Digest::of(&c.finish())
}

// ---------------------------------------------------------------- the two sides

/// A side's secret scalar for one session. Zeroized when dropped; never printed.
pub struct BlindingKey(Scalar);

impl BlindingKey {
    /// A uniformly random non-zero scalar: 64 bytes from `rng` reduced mod ℓ.
    pub fn random(rng: &mut impl rand_core::CryptoRng) -> Self {
        loop {
            let mut wide = Zeroizing::new([0u8; 64]);
            rng.fill_bytes(wide.as_mut());
            let s = Scalar::from_bytes_mod_order_wide(&wide);
            if s != Scalar::ZERO {
                return Self(s);
            }
        }
    }

    /// A fixed scalar (canonical little-endian), for known-answer tests only.
    pub fn from_canonical_bytes(bytes: [u8; 32]) -> Option<Self> {
        Option::<Scalar>::from(Scalar::from_canonical_bytes(bytes)).filter(|s| *s != Scalar::ZERO).map(Self)
    }

    pub fn blind(&self, point: &RistrettoPoint) -> RistrettoPoint {
        point * self.0
    }
}

impl Drop for BlindingKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for BlindingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindingKey(..)")
    }
}

/// One side of a session before it has answered the peer.
pub struct Party {
    session: MessageId,
    key: BlindingKey,
    /// The subject at each position of the sent set; `None` for padding.
    positions: Vec<Option<PersonalIdentityNumber>>,
    sent: Digest,
}

/// One side after answering, waiting for the peer's answer to its own set.
pub struct AwaitingAnswer {
    session: MessageId,
    positions: Vec<Option<PersonalIdentityNumber>>,
    sent: Digest,
    /// The peer's elements times both scalars.
    peer_doubly_blinded: HashSet<[u8; 32]>,
}

/// Blinded values must never reach a log unsealed (two answers side by side
/// show the overlap), so a side prints its sizes only.
impl fmt::Debug for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Party {{ session: {}, key: {:?}, positions: {} }}", self.session, self.key, self.positions.len())
    }
}

impl fmt::Debug for AwaitingAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AwaitingAnswer {{ session: {}, positions: {}, peer: {} }}",
            self.session,
            self.positions.len(),
            self.peer_doubly_blinded.len()
        )
    }
}

impl Party {
    /// Starts a side: hashes each distinct subject to the group under the
    /// session's tag, blinds it with a fresh scalar, pads with random
    /// elements to a power of two and shuffles. Returns the side and the set
    /// to send.
    pub fn start(
        session: MessageId,
        subjects: &[PersonalIdentityNumber],
        rng: &mut impl rand_core::CryptoRng,
    ) -> Result<(Self, BlindedSet), PsiError> {
        let key = BlindingKey::random(rng);
        Self::start_with_key(session, subjects, key, rng)
    }

    /// [`Party::start`] with a given scalar, for known-answer tests.
    pub fn start_with_key(
        session: MessageId,
        subjects: &[PersonalIdentityNumber],
        key: BlindingKey,
        rng: &mut impl rand_core::CryptoRng,
    ) -> Result<(Self, BlindedSet), PsiError> {
        let distinct: BTreeSet<&PersonalIdentityNumber> = subjects.iter().collect();
        if distinct.len() > MAX_SET_SIZE {
            return Err(PsiError::TooManySubjects(distinct.len()));
        }
        let dst = session_dst(&session);
        let mut entries: Vec<(Option<PersonalIdentityNumber>, RistrettoPoint)> = distinct
            .into_iter()
            .map(|pin| {
                let h = hash_to_ristretto255(&pin.0, dst.as_bytes()).expect("the session tag is short");
                (Some(pin.clone()), key.blind(&h))
            })
            .collect();
        // Padding is a uniformly random element: indistinguishable from a
        // blinded one, and matching nothing but with negligible probability.
        while entries.len() < padded_size(entries.len()) {
            let mut wide = [0u8; 64];
            rng.fill_bytes(&mut wide);
            entries.push((None, RistrettoPoint::from_uniform_bytes(&wide)));
        }
        shuffle(&mut entries, rng);
        let (positions, points): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
        let set = BlindedSet::from_points(points);
        let sent = set.digest(&session);
        Ok((Self { session, key, positions, sent }, set))
    }

    /// Re-blinds the peer's set with this side's scalar, in the peer's order,
    /// and remembers the result to match against. The scalar is dropped (and
    /// zeroized) here: nothing after this needs it.
    pub fn answer(self, peer: &BlindedSet) -> (AwaitingAnswer, Answer) {
        let reblinded: Vec<RistrettoPoint> = peer.points.iter().map(|p| self.key.blind(p)).collect();
        let set = BlindedSet::from_points(reblinded);
        let peer_doubly_blinded =
            set.encoded.chunks_exact(ELEMENT_BYTES).map(|c| <[u8; 32]>::try_from(c).expect("32 bytes")).collect();
        let answer = Answer { answers: peer.digest(&self.session), set };
        let waiting =
            AwaitingAnswer { session: self.session, positions: self.positions, sent: self.sent, peer_doubly_blinded };
        (waiting, answer)
    }

    /// The digest of the set this side sent.
    pub fn sent_digest(&self) -> Digest {
        self.sent
    }
}

impl AwaitingAnswer {
    /// This side's matches: the subjects whose doubly blinded value the peer
    /// also holds, in ascending order (so nothing of the shuffle shows).
    pub fn finish(self, answer: &Answer) -> Result<Vec<PersonalIdentityNumber>, PsiError> {
        if answer.answers != self.sent {
            return Err(PsiError::AnswersAnotherSet);
        }
        if answer.set.len() != self.positions.len() {
            return Err(PsiError::AnswerSize { sent: self.positions.len(), got: answer.set.len() });
        }
        let mut matches: Vec<PersonalIdentityNumber> = self
            .positions
            .into_iter()
            .zip(answer.set.encoded.chunks_exact(ELEMENT_BYTES))
            .filter_map(|(subject, element)| {
                let subject = subject?;
                self.peer_doubly_blinded.contains(element).then_some(subject)
            })
            .collect();
        matches.sort();
        Ok(matches)
    }

    pub fn session(&self) -> &MessageId {
        &self.session
    }

    pub fn sent_digest(&self) -> Digest {
        self.sent
    }
}

/// Fisher–Yates with indexes drawn without modulo bias.
fn shuffle<T>(items: &mut [T], rng: &mut impl rand_core::CryptoRng) {
    for i in (1..items.len()).rev() {
        let bound = (i + 1) as u64;
        // The largest multiple of `bound` that fits; draws above it are redrawn.
        let zone = u64::MAX - (u64::MAX % bound);
        let j = loop {
            let r = rng.next_u64();
            if r < zone {
                break (r % bound) as usize;
            }
        };
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_vectors::TestRng;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// 2026-12-02T00:00:00Z.
    const TODAY: Timestamp = Timestamp(1_796_169_600_000);

    fn pin(s: &str) -> PersonalIdentityNumber {
        PersonalIdentityNumber::parse(s, TODAY).unwrap()
    }

    /// RFC 9380 appendix K.3: expand_message_xmd(SHA-512).
    #[test]
    fn expand_message_xmd_reproduces_rfc_9380_k_3() {
        let dst = b"QUUX-V01-CS02-with-expander-SHA512-256";
        let q128 = format!("q128_{}", "q".repeat(128));
        let a512 = format!("a512_{}", "a".repeat(512));
        let cases: [(&[u8], usize, &str); 10] = [
            (b"", 0x20, "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"),
            (b"abc", 0x20, "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"),
            (b"abcdef0123456789", 0x20, "087e45a86e2939ee8b91100af1583c4938e0f5fc6c9db4b107b83346bc967f58"),
            (q128.as_bytes(), 0x20, "7336234ee9983902440f6bc35b348352013becd88938d2afec44311caf8356b3"),
            (a512.as_bytes(), 0x20, "57b5f7e766d5be68a6bfe1768e3c2b7f1228b3e4b3134956dd73a59b954c66f4"),
            (
                b"",
                0x80,
                "41b037d1734a5f8df225dd8c7de38f851efdb45c372887be655212d07251b921\
                 b052b62eaed99b46f72f2ef4cc96bfaf254ebbbec091e1a3b9e4fb5e5b619d2e\
                 0c5414800a1d882b62bb5cd1778f098b8eb6cb399d5d9d18f5d5842cf5d13d7e\
                 b00a7cff859b605da678b318bd0e65ebff70bec88c753b159a805d2c89c55961",
            ),
            (
                b"abc",
                0x80,
                "7f1dddd13c08b543f2e2037b14cefb255b44c83cc397c1786d975653e36a6b11\
                 bdd7732d8b38adb4a0edc26a0cef4bb45217135456e58fbca1703cd6032cb134\
                 7ee720b87972d63fbf232587043ed2901bce7f22610c0419751c065922b48843\
                 1851041310ad659e4b23520e1772ab29dcdeb2002222a363f0c2b1c972b3efe1",
            ),
            (
                b"abcdef0123456789",
                0x80,
                "3f721f208e6199fe903545abc26c837ce59ac6fa45733f1baaf0222f8b7acb04\
                 24814fcb5eecf6c1d38f06e9d0a6ccfbf85ae612ab8735dfdf9ce84c372a77c8\
                 f9e1c1e952c3a61b7567dd0693016af51d2745822663d0c2367e3f4f0bed827f\
                 eecc2aaf98c949b5ed0d35c3f1023d64ad1407924288d366ea159f46287e61ac",
            ),
            (
                q128.as_bytes(),
                0x80,
                "b799b045a58c8d2b4334cf54b78260b45eec544f9f2fb5bd12fb603eaee70db7\
                 317bf807c406e26373922b7b8920fa29142703dd52bdf280084fb7ef69da78af\
                 df80b3586395b433dc66cde048a258e476a561e9deba7060af40adf30c64249c\
                 a7ddea79806ee5beb9a1422949471d267b21bc88e688e4014087a0b592b695ed",
            ),
            (
                a512.as_bytes(),
                0x80,
                "05b0bfef265dcee87654372777b7c44177e2ae4c13a27f103340d9cd11c86cb2\
                 426ffcad5bd964080c2aee97f03be1ca18e30a1f14e27bc11ebbd650f305269c\
                 c9fb1db08bf90bfc79b42a952b46daf810359e7bc36452684784a64952c343c5\
                 2e5124cd1f71d474d5197fefc571a92929c9084ffe1112cf5eea5192ebff330b",
            ),
        ];
        for (msg, len, expected) in cases {
            let out = expand_message_xmd(msg, dst, len).unwrap();
            assert_eq!(hex::encode(out), expected, "msg of {} bytes, len {len:#x}", msg.len());
        }
    }

    #[test]
    fn expand_message_xmd_refuses_what_the_rfc_aborts_on() {
        assert_eq!(expand_message_xmd(b"m", b"", 32), Err(XmdError::EmptyDst));
        assert_eq!(expand_message_xmd(b"m", &[b'x'; 256], 32), Err(XmdError::DstTooLong(256)));
        assert_eq!(expand_message_xmd(b"m", b"d", 255 * 64 + 1), Err(XmdError::OutputTooLong(16321)));
        assert_eq!(expand_message_xmd(b"m", b"d", 255 * 64).unwrap().len(), 16320);
        assert_eq!(expand_message_xmd(b"m", &[b'x'; 255], 1).unwrap().len(), 1);
    }

    /// RFC 9496 appendix A.3: the one-way map (`from_uniform_bytes`) the hash uses.
    #[test]
    fn one_way_map_reproduces_rfc_9496_a_3() {
        let cases = [
            (
                "5d1be09e3d0c82fc538112490e35701979d99e06ca3e2b5b54bffe8b4dc772c14d98b696a1bbfb5ca32c436cc61c16563790306c79eaca7705668b47dffe5bb6",
                "3066f82a1a747d45120d1740f14358531a8f04bbffe6a819f86dfe50f44a0a46",
            ),
            (
                "f116b34b8f17ceb56e8732a60d913dd10cce47a6d53bee9204be8b44f6678b270102a56902e2488c46120e9276cfe54638286b9e4b3cdb470b542d46c2068d38",
                "f26e5b6f7d362d2d2a94c5d0e7602cb4773c95a2e5c31a64f133189fa76ed61b",
            ),
            (
                "8422e1bbdaab52938b81fd602effb6f89110e1e57208ad12d9ad767e2e25510c27140775f9337088b982d83d7fcf0b2fa1edffe51952cbe7365e95c86eaf325c",
                "006ccd2a9e6867e6a2c5cea83d3302cc9de128dd2a9a57dd8ee7b9d7ffe02826",
            ),
            (
                "ac22415129b61427bf464e17baee8db65940c233b98afce8d17c57beeb7876c2150d15af1cb1fb824bbd14955f2b57d08d388aab431a391cfc33d5bafb5dbbaf",
                "f8f0c87cf237953c5890aec3998169005dae3eca1fbb04548c635953c817f92a",
            ),
            (
                "165d697a1ef3d5cf3c38565beefcf88c0f282b8e7dbd28544c483432f1cec7675debea8ebb4e5fe7d6f6e5db15f15587ac4d4d4a1de7191e0c1ca6664abcc413",
                "ae81e7dedf20a497e10c304a765c1767a42d6e06029758d2d7e8ef7cc4c41179",
            ),
            (
                "a836e6c9a9ca9f1e8d486273ad56a78c70cf18f0ce10abb1c7172ddd605d7fd2979854f47ae1ccf204a33102095b4200e5befc0465accc263175485f0e17ea5c",
                "e2705652ff9f5e44d3e841bf1c251cf7dddb77d140870d1ab2ed64f1a9ce8628",
            ),
            (
                "2cdc11eaeb95daf01189417cdddbf95952993aa9cb9c640eb5058d09702c74622c9965a697a3b345ec24ee56335b556e677b30e6f90ac77d781064f866a3c982",
                "80bd07262511cdde4863f8a7434cef696750681cb9510eea557088f76d9e5065",
            ),
        ];
        for (input, output) in cases {
            let bytes: [u8; 64] = h(input).try_into().unwrap();
            assert_eq!(hex::encode(RistrettoPoint::from_uniform_bytes(&bytes).compress().as_bytes()), output);
        }
    }

    /// RFC 9497 appendix A.1.1 (OPRF(ristretto255, SHA-512), mode 0x00): its
    /// HashToGroup is exactly RFC 9380's hash_to_ristretto255 under the tag
    /// "HashToGroup-OPRFV1-\x00-ristretto255-SHA512", so BlindedElement =
    /// Blind · hash_to_ristretto255(Input) checks the whole hash end to end,
    /// and EvaluationElement = skSm · BlindedElement checks the re-blinding.
    #[test]
    fn hash_to_ristretto255_reproduces_rfc_9497_a_1_1() {
        let dst = b"HashToGroup-OPRFV1-\x00-ristretto255-SHA512";
        let blind = BlindingKey::from_canonical_bytes(
            h("64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706").try_into().unwrap(),
        )
        .unwrap();
        let server = BlindingKey::from_canonical_bytes(
            h("5ebcea5ee37023ccb9fc2d2019f9d7737be85591ae8652ffa9ef0f4d37063b0e").try_into().unwrap(),
        )
        .unwrap();
        let cases = [
            (
                "00",
                "609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c",
                "7ec6578ae5120958eb2db1745758ff379e77cb64fe77b0b2d8cc917ea0869c7e",
            ),
            (
                "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
                "da27ef466870f5f15296299850aa088629945a17d1f5b7f5ff043f76b3c06418",
                "b4cbf5a4f1eeda5a63ce7b77c7d23f461db3fcab0dd28e4e17cecb5c90d02c25",
            ),
        ];
        for (input, blinded, evaluated) in cases {
            let b = blind.blind(&hash_to_ristretto255(&h(input), dst).unwrap());
            assert_eq!(hex::encode(b.compress().as_bytes()), blinded);
            assert_eq!(hex::encode(server.blind(&b).compress().as_bytes()), evaluated);
        }
    }

    /// RFC 9496 appendix A.2: encodings every implementation must reject (plus
    /// libsodium's two with the top bit set), each refused with its index.
    #[test]
    fn non_canonical_encodings_are_refused_with_their_index() {
        let bad = [
            "00ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "f3ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "0100000000000000000000000000000000000000000000000000000000000080",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "ed57ffd8c914fb201471d1c3d245ce3c746fcbe63a3679d51b6a516ebebe0e20",
            "c34c4e1826e5d403b78e246e88aa051c36ccf0aafebffe137d148a2bf9104562",
            "c940e5a4404157cfb1628b108db051a8d439e1a421394ec4ebccb9ec92a8ac78",
            "47cfc5497c53dc8e61c91d17fd626ffb1c49e2bca94eed052281b510b1117a24",
            "f1c6165d33367351b0da8f6e4511010c68174a03b6581212c71c0e1d026c3c72",
            "87260f7a2f12495118360f02c26a470f450dadf34a413d21042b43b9d93e1309",
            "26948d35ca62e643e26a83177332e6b6afeb9d08e4268b650f1f5bbd8d81d371",
            "4eac077a713c57b4f4397629a4145982c661f48044dd3f96427d40b147d9742f",
            "de6a7b00deadc788eb6b6c8d20c0ae96c2f2019078fa604fee5b87d6e989ad7b",
            "bcab477be20861e01e4a0e295284146a510150d9817763caf1a6f4b422d67042",
            "2a292df7e32cababbd9de088d1d1abec9fc0440f637ed2fba145094dc14bea08",
            "f4a9e534fc0d216c44b218fa0c42d99635a0127ee2e53c712f70609649fdff22",
            "8268436f8c4126196cf64b3c7ddbda90746a378625f9813dd9b8457077256731",
            "2810e5cbc2cc4d4eece54f61c6f69758e289aa7ab440b3cbeaa21995c2f4232b",
            "3eb858e78f5a7254d8c9731174a94f76755fd3941c0ac93735c07ba14579630e",
            "a45fdc55c76448c049a1ab33f17023edfb2be3581e9c7aade8a6125215e04220",
            "d483fe813c6ba647ebbfd3ec41adca1c6130c2beeee9d9bf065c8d151c5f396e",
            "8a2e1d30050198c65a54483123960ccc38aef6848e1ec8f5f780e8523769ba32",
            "32888462f8b486c68ad7dd9610be5192bbeaf3b443951ac1a8118419d9fa097b",
            "227142501b9d4355ccba290404bde41575b037693cef1f438c47f8fbf35d1165",
            "5c37cc491da847cfeb9281d407efc41e15144c876e0170b499a96a22ed31e01e",
            "445425117cb8c90edcbc7c1cc0e74f747f2c1efa5630a967c64f287792a48a4b",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ];
        // A valid element (the base point) around each bad one: the error names
        // the bad one's position.
        let base = h("e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76");
        for b in bad {
            let set = [base.clone(), base.clone(), h(b), base.clone()].concat();
            assert_eq!(BlindedSet::from_bytes(&set), Err(PsiError::NotCanonical { index: 2 }), "{b}");
            assert_eq!(
                BlindedSet::from_bytes(&h(b)).unwrap_err().to_string(),
                "element 0 is not a canonical ristretto255 encoding"
            );
        }
        assert_eq!(BlindedSet::from_bytes(&[base.clone(), vec![0; 32]].concat()), Err(PsiError::Identity { index: 1 }));
        assert_eq!(BlindedSet::from_bytes(&base).unwrap().len(), 1);
    }

    #[test]
    fn set_sizes_and_lengths_are_checked() {
        let base = h("e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76");
        assert_eq!(BlindedSet::from_bytes(&[]), Err(PsiError::SetSize(0)));
        assert_eq!(BlindedSet::from_bytes(&base[..31]), Err(PsiError::Length(31)));
        assert_eq!(BlindedSet::from_bytes(&base.repeat(3)), Err(PsiError::SetSize(3)));
        assert_eq!(BlindedSet::from_bytes(&base.repeat(MAX_SET_SIZE * 2)), Err(PsiError::SetSize(MAX_SET_SIZE * 2)));
        assert_eq!(Answer::from_bytes(&[0; 31]), Err(PsiError::AnswerLength(31)));
        assert_eq!(padded_size(0), 1);
        assert_eq!(padded_size(1), 1);
        assert_eq!(padded_size(3), 4);
        assert_eq!(padded_size(1024), 1024);
        assert_eq!(padded_size(1025), 2048);
    }

    #[test]
    fn identity_numbers_are_normalised_from_common_forms() {
        for form in ["198503122387", "19850312-2387", "850312-2387", "8503122387", "  850312-2387\n"] {
            assert_eq!(pin(form).as_str(), "198503122387", "{form}");
        }
        // '+' marks a hundred years or more.
        assert_eq!(pin("120312+2385").as_str(), "191203122385");
        assert_eq!(pin("120312-2385").as_str(), "201203122385");
        // A ten-digit date later in this century than today is last century's.
        assert_eq!(pin("261203-2389").as_str(), "192612032389");
        assert_eq!(pin("261202-2380").as_str(), "202612022380");
        // Coordination number: day + 60.
        let c = pin("198503722384");
        assert!(c.is_coordination_number());
        assert_eq!(pin("850372-2384"), c);
        assert!(!pin("198503122387").is_coordination_number());
        // Leap days depend on the century the ten-digit form resolves to.
        assert_eq!(pin("000229-2381").as_str(), "200002292381");
        assert_eq!(PersonalIdentityNumber::parse("000229+2381", TODAY), Err(PinError::Date), "1900 was no leap year");

        let err = |s: &str| PersonalIdentityNumber::parse(s, TODAY).unwrap_err();
        assert_eq!(err("198503122388"), PinError::CheckDigit);
        assert_eq!(err("198513122383"), PinError::Date);
        assert_eq!(err("198502302388"), PinError::Date);
        assert_eq!(err("19850312+2387"), PinError::Form);
        assert_eq!(err("1985-03-12-2387"), PinError::Form);
        assert_eq!(err("85031223870"), PinError::Form);
        assert_eq!(err("８５０３１２-２３８７"), PinError::Form);
        assert_eq!(err(""), PinError::Form);
        // Errors never repeat the number.
        assert!(!err("198503122388").to_string().contains("2388"));
        assert_eq!(format!("{:?}", pin("198503122387")), "PersonalIdentityNumber(..)");
    }

    /// `n` distinct valid numbers: 999 serial numbers per date, one date a month from 1950.
    fn numbers(n: usize, offset: usize) -> Vec<PersonalIdentityNumber> {
        (offset..offset + n)
            .map(|i| {
                let k = i / 999;
                let body = format!("{}{:02}01{:03}", 1950 + k / 12, 1 + k % 12, i % 999);
                PersonalIdentityNumber::parse(&with_check_digit(&body), TODAY).unwrap()
            })
            .collect()
    }

    fn with_check_digit(eleven: &str) -> String {
        (0..10).map(|c| format!("{eleven}{c}")).find(|s| crate::notice::luhn_ok(&s.as_bytes()[2..])).unwrap()
    }

    /// Runs a whole session between `a` and `b`; returns each side's matches.
    fn run(
        a: &[PersonalIdentityNumber],
        b: &[PersonalIdentityNumber],
        rng: &mut TestRng,
    ) -> (Vec<PersonalIdentityNumber>, Vec<PersonalIdentityNumber>, usize, usize) {
        let session = crate::test_vectors::message_id();
        let (pa, sa) = Party::start(session, a, rng).unwrap();
        let (pb, sb) = Party::start(session, b, rng).unwrap();
        // Over the wire: bytes, decoded and checked on arrival.
        let sa = BlindedSet::from_bytes(sa.as_bytes()).unwrap();
        let sb = BlindedSet::from_bytes(sb.as_bytes()).unwrap();
        let (wa, answer_a) = pa.answer(&sb);
        let (wb, answer_b) = pb.answer(&sa);
        let answer_a = Answer::from_bytes(&answer_a.to_bytes()).unwrap();
        let answer_b = Answer::from_bytes(&answer_b.to_bytes()).unwrap();
        (wa.finish(&answer_b).unwrap(), wb.finish(&answer_a).unwrap(), sa.len(), sb.len())
    }

    fn sorted(v: &[PersonalIdentityNumber]) -> Vec<PersonalIdentityNumber> {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn a_partial_overlap_is_found_by_both_sides_and_nothing_else() {
        let mut rng = TestRng::new(1);
        let all = numbers(40, 0);
        let a = all[..25].to_vec(); // 25 → padded to 32
        let b = all[15..].to_vec(); // 25 → padded to 32
        let (ma, mb, na, nb) = run(&a, &b, &mut rng);
        assert_eq!(ma, sorted(&all[15..25]));
        assert_eq!(mb, ma);
        assert_eq!((na, nb), (32, 32));
    }

    #[test]
    fn full_empty_and_one_sided_padding() {
        let mut rng = TestRng::new(2);
        let all = numbers(16, 100);
        // Full overlap, no padding on either side.
        let (ma, mb, na, nb) = run(&all, &all, &mut rng);
        assert_eq!((ma.len(), mb.len(), na, nb), (16, 16, 16, 16));
        // Empty on one side: a single random element travels, nothing matches.
        let (ma, mb, na, nb) = run(&all, &[], &mut rng);
        assert_eq!((ma, mb, na, nb), (vec![], vec![], 16, 1));
        // Both empty.
        let (ma, mb, _, _) = run(&[], &[], &mut rng);
        assert!(ma.is_empty() && mb.is_empty());
        // Only one side padded: 16 (none) against 3 → 4; padding never matches.
        let (ma, mb, na, nb) = run(&all, &all[5..8], &mut rng);
        assert_eq!(ma, sorted(&all[5..8]));
        assert_eq!(mb, ma);
        assert_eq!((na, nb), (16, 4));
        // Disjoint sets.
        let (ma, mb, _, _) = run(&all[..8], &all[8..], &mut rng);
        assert!(ma.is_empty() && mb.is_empty());
    }

    #[test]
    fn duplicates_count_once_and_other_forms_of_a_number_match() {
        let mut rng = TestRng::new(3);
        let a = vec![pin("198503122387"), pin("19850312-2387"), pin("198503722384")];
        let b = vec![pin("850312-2387")];
        let (ma, mb, na, nb) = run(&a, &b, &mut rng);
        assert_eq!(ma, vec![pin("198503122387")]);
        assert_eq!(mb, ma);
        assert_eq!((na, nb), (2, 1));
    }

    #[test]
    fn a_value_blinded_for_another_session_matches_nothing() {
        let mut rng = TestRng::new(4);
        let subjects = numbers(4, 0);
        let s1 = crate::test_vectors::message_id();
        let mut other = *s1.as_bytes();
        other[15] ^= 1;
        let s2 = MessageId::from_bytes(&other).unwrap();
        let key = || BlindingKey::from_canonical_bytes([7; 32]).unwrap();
        let (_, set1) = Party::start_with_key(s1, &subjects, key(), &mut rng).unwrap();
        let (_, set2) = Party::start_with_key(s2, &subjects, key(), &mut rng).unwrap();
        let e1: HashSet<&[u8]> = set1.as_bytes().chunks(32).collect();
        assert!(set2.as_bytes().chunks(32).all(|e| !e1.contains(e)));
    }

    #[test]
    fn an_answer_to_another_set_or_of_another_size_is_refused() {
        // The same seed gives the same run, so each check gets a fresh side.
        let setup = || {
            let mut rng = TestRng::new(5);
            let session = crate::test_vectors::message_id();
            let (pa, sa) = Party::start(session, &numbers(3, 0), &mut rng).unwrap();
            let (pb, sb) = Party::start(session, &numbers(3, 2), &mut rng).unwrap();
            let (wa, _) = pa.answer(&sb);
            let (_, answer_b) = pb.answer(&sa);
            (wa, answer_b, sa)
        };
        let (wa, answer_b, _) = setup();
        let wrong = Answer { answers: Digest([7; 32]), ..answer_b };
        assert_eq!(wa.finish(&wrong), Err(PsiError::AnswersAnotherSet));

        let (wa, answer_b, sa) = setup();
        let short = Answer { answers: answer_b.answers, set: BlindedSet::from_bytes(&sa.as_bytes()[..64]).unwrap() };
        assert_eq!(wa.finish(&short), Err(PsiError::AnswerSize { sent: 4, got: 2 }));

        let (wa, answer_b, _) = setup();
        assert_eq!(wa.sent_digest(), answer_b.answers);
        assert_eq!(wa.finish(&answer_b).unwrap().len(), 1);
    }

    #[test]
    fn too_many_subjects_are_refused_before_any_work() {
        let mut rng = TestRng::new(6);
        let many = numbers(MAX_SET_SIZE + 1, 0);
        let err = Party::start(crate::test_vectors::message_id(), &many, &mut rng).unwrap_err();
        assert_eq!(err, PsiError::TooManySubjects(MAX_SET_SIZE + 1));
    }

    #[test]
    fn secrets_are_not_printed() {
        let mut rng = TestRng::new(7);
        let (party, _) = Party::start(crate::test_vectors::message_id(), &[pin("198503122387")], &mut rng).unwrap();
        let shown = format!("{party:?}");
        assert!(shown.contains("BlindingKey(..)") && !shown.contains("198503122387"), "{shown}");
        let (_, peer) = Party::start(crate::test_vectors::message_id(), &[pin("198503722384")], &mut rng).unwrap();
        let (waiting, answer) = party.answer(&peer);
        let shown = format!("{waiting:?}");
        assert_eq!(shown, format!("AwaitingAnswer {{ session: {}, positions: 1, peer: 1 }}", waiting.session()));
        assert_eq!(format!("{:?}", answer.set), "BlindedSet(1 elements)");
    }

    #[test]
    fn the_session_tag_binds_version_and_session() {
        let dst = session_dst(&crate::test_vectors::message_id());
        assert!(dst.starts_with("REFERRAL-BROKER-PSI-V1-"), "{dst}");
        assert!(dst.contains(&crate::test_vectors::message_id().to_string()));
        assert!(dst.ends_with(SUITE_ID));
        assert!(dst.len() <= 255);
    }
}
