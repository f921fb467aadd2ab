//! Keys: Ed25519 signing keys (ed25519-dalek; signatures verified with the
//! strict rule of [`crate::sigbatch`]), the agency key bundle (Ed25519 for
//! signatures, X25519 for HPKE), key ids, and the text format of key files.
//!
//! Secrets never appear in `Debug` output, and seeds are zeroized on drop.
//! ring cannot hold a long-term X25519 key, so the HPKE key lives in the
//! `hpke` crate's types.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hpke::{Deserializable as _, Kem as _, Serializable as _};
use ring::rand::SecureRandom as _;
use zeroize::Zeroizing;

use crate::Digest;
use crate::canonical::{Canonical, label};
use crate::ids::{AgencyId, IdError, KeyId};
use crate::time::{TimeError, Timestamp};

/// The HPKE suite of PROTOCOL.md: DHKEM(X25519, HKDF-SHA256).
pub type HpkeKem = hpke::kem::X25519HkdfSha256;
/// HKDF-SHA256.
pub type HpkeKdf = hpke::kdf::HkdfSha256;
/// ChaCha20-Poly1305.
pub type HpkeAead = hpke::aead::ChaCha20Poly1305;

/// An Ed25519 signature failed to verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Ed25519 signature does not verify")]
pub struct BadSignature;

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyingKey(pub [u8; 32]);

impl VerifyingKey {
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(b).ok().map(Self)
    }

    /// Verifies a 64-byte Ed25519 signature over `message` with the protocol's
    /// one accept rule, ed25519-dalek's `verify_strict` (PROTOCOL.md 2.1; the
    /// batches of [`crate::sigbatch`] answer exactly the same).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), BadSignature> {
        crate::sigbatch::verify_strict(self, message, signature)
    }

    /// The id of a lone signing key such as the federation directory key or the
    /// broker log key: the first 16 bytes of
    /// SHA-256(canonical(`referral.v1/signing-key-id`, public key)).
    pub fn key_id(&self) -> KeyId {
        let mut c = Canonical::new(label::SIGNING_KEY_ID);
        c.bytes(&self.0);
        truncate_key_id(&c.finish())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({})", self.to_hex())
    }
}

fn truncate_key_id(input: &[u8]) -> KeyId {
    let d = Digest::of(input);
    let mut id = [0u8; 16];
    id.copy_from_slice(&d.0[..16]);
    KeyId(id)
}

fn random_32() -> Zeroizing<[u8; 32]> {
    let mut seed = Zeroizing::new([0u8; 32]);
    ring::rand::SystemRandom::new().fill(seed.as_mut()).expect("the OS random source failed");
    seed
}

/// An Ed25519 private key, kept as its 32-byte seed (RFC 8032), and expanded
/// for signing by ed25519-dalek (which wipes it on drop). Ed25519 signing is
/// deterministic: the bytes are those ring produced before (the test vectors
/// did not change); dalek signs in about 80% of ring's time here.
pub struct SigningKey {
    seed: Zeroizing<[u8; 32]>,
    dalek: ed25519_dalek::SigningKey,
}

impl SigningKey {
    pub fn generate() -> Self {
        Self::from_seed(*random_32())
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        let dalek = ed25519_dalek::SigningKey::from_bytes(&seed);
        Self { seed: Zeroizing::new(seed), dalek }
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer as _;
        self.dalek.sign(message).to_bytes()
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.dalek.verifying_key().to_bytes())
    }

    fn seed(&self) -> &[u8; 32] {
        &self.seed
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("public", &self.verifying_key()).finish_non_exhaustive()
    }
}

/// The public half of one generation of an agency's keys, as published in the
/// directory.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AgencyPublicKey {
    pub key_id: KeyId,
    pub signing: VerifyingKey,
    /// X25519 public key for HPKE.
    pub encryption: [u8; 32],
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

impl AgencyPublicKey {
    /// Whether the key may be used at `at` (validity is half-open).
    pub fn valid_at(&self, at: Timestamp) -> bool {
        self.not_before <= at && at < self.not_after
    }

    pub(crate) fn hpke_public(&self) -> Result<<HpkeKem as hpke::Kem>::PublicKey, hpke::HpkeError> {
        <HpkeKem as hpke::Kem>::PublicKey::from_bytes(&self.encryption)
    }
}

/// The key id of an agency key bundle: the first 16 bytes of
/// SHA-256(canonical(`referral.v1/bundle-key-id`, Ed25519 public, X25519 public)).
pub fn bundle_key_id(signing: &VerifyingKey, encryption: &[u8; 32]) -> KeyId {
    let mut c = Canonical::new(label::BUNDLE_KEY_ID);
    c.bytes(&signing.0).bytes(encryption);
    truncate_key_id(&c.finish())
}

/// One generation of an agency's private keys: Ed25519 to sign envelopes and
/// acknowledgements, X25519 to open envelopes sealed to the agency.
pub struct AgencyKeyBundle {
    agency: AgencyId,
    signing: SigningKey,
    encryption_secret: <HpkeKem as hpke::Kem>::PrivateKey,
    public: AgencyPublicKey,
}

impl AgencyKeyBundle {
    /// Generates fresh keys valid over `[not_before, not_after)`.
    pub fn generate(agency: AgencyId, not_before: Timestamp, not_after: Timestamp) -> Self {
        let (sk, _) = HpkeKem::gen_keypair();
        Self::from_parts(agency, SigningKey::generate(), sk, not_before, not_after)
    }

    /// Builds a bundle from fixed secrets; for test vectors and key files.
    pub fn from_secrets(
        agency: AgencyId,
        ed25519_seed: [u8; 32],
        x25519_secret: &[u8; 32],
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> Result<Self, KeyFileError> {
        let sk = <HpkeKem as hpke::Kem>::PrivateKey::from_bytes(x25519_secret)
            .map_err(|_| KeyFileError::Invalid("x25519-secret is not an X25519 private key"))?;
        Ok(Self::from_parts(agency, SigningKey::from_seed(ed25519_seed), sk, not_before, not_after))
    }

    fn from_parts(
        agency: AgencyId,
        signing: SigningKey,
        encryption_secret: <HpkeKem as hpke::Kem>::PrivateKey,
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> Self {
        let pk = HpkeKem::sk_to_pk(&encryption_secret);
        let mut encryption = [0u8; 32];
        encryption.copy_from_slice(&pk.to_bytes());
        let verifying = signing.verifying_key();
        let public = AgencyPublicKey {
            key_id: bundle_key_id(&verifying, &encryption),
            signing: verifying,
            encryption,
            not_before,
            not_after,
        };
        Self { agency, signing, encryption_secret, public }
    }

    pub fn agency(&self) -> &AgencyId {
        &self.agency
    }

    pub fn key_id(&self) -> KeyId {
        self.public.key_id
    }

    pub fn public(&self) -> &AgencyPublicKey {
        &self.public
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message)
    }

    pub(crate) fn hpke_secret(&self) -> &<HpkeKem as hpke::Kem>::PrivateKey {
        &self.encryption_secret
    }

    /// The key file text (PROTOCOL.md, "Key files"). Holds secrets: write it
    /// only to a file readable by its owner alone.
    pub fn to_key_file(&self) -> Zeroizing<String> {
        let mut x = Zeroizing::new([0u8; 32]);
        x.copy_from_slice(&self.encryption_secret.to_bytes());
        Zeroizing::new(format!(
            "{KEY_FILE_MAGIC}\nkind: agency-bundle\nagency: {}\nkey-id: {}\nnot-before: {}\nnot-after: {}\ned25519-seed: {}\nx25519-secret: {}\n",
            self.agency,
            self.key_id(),
            self.public.not_before,
            self.public.not_after,
            B64.encode(self.signing.seed()),
            B64.encode(x.as_ref()),
        ))
    }

    /// Parses a key file made by [`AgencyKeyBundle::to_key_file`].
    pub fn from_key_file(text: &str) -> Result<Self, KeyFileError> {
        let fields = parse_key_file(text, "agency-bundle")?;
        let agency = AgencyId::new(fields.get("agency")?).map_err(KeyFileError::Id)?;
        let not_before = Timestamp::parse_rfc3339(fields.get("not-before")?).map_err(KeyFileError::Time)?;
        let not_after = Timestamp::parse_rfc3339(fields.get("not-after")?).map_err(KeyFileError::Time)?;
        let seed = fields.secret_32("ed25519-seed")?;
        let x = fields.secret_32("x25519-secret")?;
        let bundle = Self::from_secrets(agency, *seed, &x, not_before, not_after)?;
        let stated: KeyId = fields.get("key-id")?.parse().map_err(KeyFileError::Id)?;
        if stated != bundle.key_id() {
            return Err(KeyFileError::KeyIdMismatch { stated, actual: bundle.key_id() });
        }
        Ok(bundle)
    }
}

impl fmt::Debug for AgencyKeyBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgencyKeyBundle")
            .field("agency", &self.agency)
            .field("key_id", &self.public.key_id)
            .finish_non_exhaustive()
    }
}

/// What a lone signing key is for; written into its key file so that a
/// broker log key is never loaded as a directory key by mistake.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KeyPurpose {
    /// Signs the federation directory.
    FederationDirectory,
    /// Signs the broker's receipts and tree heads.
    BrokerLog,
}

impl KeyPurpose {
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyPurpose::FederationDirectory => "federation-directory",
            KeyPurpose::BrokerLog => "broker-log",
        }
    }
}

/// Key file text for a lone signing key.
pub fn signing_key_file(key: &SigningKey, purpose: KeyPurpose) -> Zeroizing<String> {
    Zeroizing::new(format!(
        "{KEY_FILE_MAGIC}\nkind: signing-key\npurpose: {}\nkey-id: {}\ned25519-seed: {}\n",
        purpose.as_str(),
        key.verifying_key().key_id(),
        B64.encode(key.seed()),
    ))
}

/// Parses a lone signing key file and checks its purpose.
pub fn parse_signing_key_file(text: &str, purpose: KeyPurpose) -> Result<SigningKey, KeyFileError> {
    let fields = parse_key_file(text, "signing-key")?;
    let found = fields.get("purpose")?;
    if found != purpose.as_str() {
        return Err(KeyFileError::WrongPurpose { expected: purpose.as_str(), found: found.to_owned() });
    }
    let key = SigningKey::from_seed(*fields.secret_32("ed25519-seed")?);
    let stated: KeyId = fields.get("key-id")?.parse().map_err(KeyFileError::Id)?;
    let actual = key.verifying_key().key_id();
    if stated != actual {
        return Err(KeyFileError::KeyIdMismatch { stated, actual });
    }
    Ok(key)
}

/// The first line of every key file.
pub const KEY_FILE_MAGIC: &str = "referral-key v1";

/// A key file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("not a referral key file (the first line must be {KEY_FILE_MAGIC:?})")]
    Magic,
    #[error("key file holds a {found:?}, expected a {expected:?}")]
    WrongKind { expected: &'static str, found: String },
    #[error("key file is for purpose {found:?}, expected {expected:?}")]
    WrongPurpose { expected: &'static str, found: String },
    #[error("key file line {line} is not 'name: value'")]
    Syntax { line: usize },
    #[error("key file has {0:?} twice")]
    Duplicate(String),
    #[error("key file lacks {0:?}")]
    Missing(&'static str),
    #[error("key file has unknown field {0:?}")]
    Unknown(String),
    #[error("key file field {0:?} is not 32 bytes of base64")]
    Secret(&'static str),
    #[error("key file is invalid: {0}")]
    Invalid(&'static str),
    #[error("key file states key id {stated} but its keys have id {actual}: the file is corrupt")]
    KeyIdMismatch { stated: KeyId, actual: KeyId },
    #[error("key file: {0}")]
    Id(IdError),
    #[error("key file: {0}")]
    Time(TimeError),
}

struct KeyFields<'a>(BTreeMap<&'a str, &'a str>);

impl<'a> KeyFields<'a> {
    fn get(&self, name: &'static str) -> Result<&'a str, KeyFileError> {
        self.0.get(name).copied().ok_or(KeyFileError::Missing(name))
    }

    fn secret_32(&self, name: &'static str) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
        let raw = Zeroizing::new(B64.decode(self.get(name)?).map_err(|_| KeyFileError::Secret(name))?);
        let mut out = Zeroizing::new([0u8; 32]);
        if raw.len() != 32 {
            return Err(KeyFileError::Secret(name));
        }
        out.copy_from_slice(&raw);
        Ok(out)
    }
}

fn parse_key_file<'a>(text: &'a str, kind: &'static str) -> Result<KeyFields<'a>, KeyFileError> {
    const KNOWN: [&str; 8] =
        ["kind", "agency", "key-id", "not-before", "not-after", "ed25519-seed", "x25519-secret", "purpose"];
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(KEY_FILE_MAGIC) {
        return Err(KeyFileError::Magic);
    }
    let mut fields = BTreeMap::new();
    for (i, line) in lines.enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once(':').ok_or(KeyFileError::Syntax { line: i + 2 })?;
        let name = name.trim();
        if !KNOWN.contains(&name) {
            return Err(KeyFileError::Unknown(name.to_owned()));
        }
        if fields.insert(name, value.trim()).is_some() {
            return Err(KeyFileError::Duplicate(name.to_owned()));
        }
    }
    let fields = KeyFields(fields);
    let found = fields.get("kind")?;
    if found != kind {
        return Err(KeyFileError::WrongKind { expected: kind, found: found.to_owned() });
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agency() -> AgencyId {
        AgencyId::new("polisen-huddinge").unwrap()
    }

    #[test]
    fn bundle_key_file_round_trips() {
        let b = AgencyKeyBundle::generate(agency(), Timestamp(0), Timestamp(10_000));
        let text = b.to_key_file();
        let back = AgencyKeyBundle::from_key_file(&text).unwrap();
        assert_eq!(back.public(), b.public());
        assert_eq!(back.agency(), b.agency());
        let sig = back.sign(b"m");
        b.public().signing.verify(b"m", &sig).unwrap();
    }

    #[test]
    fn key_file_rejections_name_the_problem() {
        let b = AgencyKeyBundle::generate(agency(), Timestamp(0), Timestamp(10_000));
        let text = b.to_key_file().to_string();
        assert!(matches!(AgencyKeyBundle::from_key_file("hello"), Err(KeyFileError::Magic)));
        let other_id = "key-id: 00000000000000000000000000000000";
        let tampered =
            text.lines().map(|l| if l.starts_with("key-id") { other_id } else { l }).collect::<Vec<_>>().join("\n");
        assert!(matches!(AgencyKeyBundle::from_key_file(&tampered), Err(KeyFileError::KeyIdMismatch { .. })));
        let no_seed = text.lines().filter(|l| !l.starts_with("ed25519-seed")).collect::<Vec<_>>().join("\n");
        assert!(matches!(AgencyKeyBundle::from_key_file(&no_seed), Err(KeyFileError::Missing("ed25519-seed"))));
        let signing = signing_key_file(&SigningKey::generate(), KeyPurpose::BrokerLog);
        assert!(matches!(AgencyKeyBundle::from_key_file(&signing), Err(KeyFileError::WrongKind { .. })));
        assert!(matches!(
            parse_signing_key_file(&signing, KeyPurpose::FederationDirectory),
            Err(KeyFileError::WrongPurpose { .. })
        ));
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let k = SigningKey::from_seed([7; 32]);
        let b = AgencyKeyBundle::from_secrets(agency(), [7; 32], &[9; 32], Timestamp(0), Timestamp(1)).unwrap();
        let seed_b64 = B64.encode([7u8; 32]);
        for dbg in [format!("{k:?}"), format!("{b:?}")] {
            assert!(!dbg.contains(&seed_b64) && !dbg.contains(&hex::encode([7u8; 32])), "{dbg}");
        }
    }

    #[test]
    fn signing_key_round_trip_and_verify() {
        let k = SigningKey::generate();
        let back = parse_signing_key_file(&signing_key_file(&k, KeyPurpose::BrokerLog), KeyPurpose::BrokerLog).unwrap();
        assert_eq!(back.verifying_key(), k.verifying_key());
        let sig = k.sign(b"hello");
        assert_eq!(k.verifying_key().verify(b"hello", &sig), Ok(()));
        assert_eq!(k.verifying_key().verify(b"hellO", &sig), Err(BadSignature));
    }
}
