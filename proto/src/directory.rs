//! The federation directory: every agency, its kind, its public keys and its
//! escalation contact, signed by the federation's directory key.
//!
//! The signature covers the exact encoded `Directory` bytes; a verifier checks
//! it before decoding anything and keeps the bytes verbatim to pass on. A
//! client refuses a directory older than the newest it has seen (rollback),
//! and the broker serves the signed bytes without being able to change a key.

use std::collections::{BTreeMap, BTreeSet};

use crate::canonical::{Canonical, label};
use crate::ids::{AgencyId, IdError, KeyId, Principal, TrustDomain};
use crate::keys::{AgencyPublicKey, SigningKey, VerifyingKey, bundle_key_id};
use crate::pb;
use crate::sigbatch::{WeakKey, check_signing_key};
use crate::time::Timestamp;

/// The format of `referral.v1.Directory` this crate reads and writes.
pub const DIRECTORY_FORMAT_VERSION: u32 = 1;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgencyKind {
    Police,
    Municipal,
}

impl AgencyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AgencyKind::Police => "police",
            AgencyKind::Municipal => "municipal",
        }
    }
}

impl std::str::FromStr for AgencyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "police" => Ok(AgencyKind::Police),
            "municipal" => Ok(AgencyKind::Municipal),
            _ => Err(format!("agency kind {s:?} is unknown: expected police or municipal")),
        }
    }
}

/// Who is alerted when an agency misses an ack deadline.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EscalationContact {
    pub principal: Principal,
    pub display_name: String,
    pub phone: String,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Agency {
    pub id: AgencyId,
    pub display_name: String,
    pub kind: AgencyKind,
    /// Every key generation, current and retired, in the order published.
    pub keys: Vec<AgencyPublicKey>,
    pub escalation: Option<EscalationContact>,
}

impl Agency {
    pub fn key(&self, id: &KeyId) -> Option<&AgencyPublicKey> {
        self.keys.iter().find(|k| &k.key_id == id)
    }

    /// The key a sender seals to at `at`: among keys valid then, the one that
    /// became valid last (so a rotation takes effect at its `not_before`).
    pub fn current_key(&self, at: Timestamp) -> Option<&AgencyPublicKey> {
        self.keys.iter().filter(|k| k.valid_at(at)).max_by_key(|k| k.not_before)
    }
}

/// A verified, decoded directory.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Directory {
    pub trust_domain: TrustDomain,
    pub version: u64,
    pub issued_at: Timestamp,
    /// The directory is stale from this instant on (PROTOCOL.md 9.4).
    pub valid_until: Timestamp,
    pub agencies: BTreeMap<AgencyId, Agency>,
    /// The broker's log key: receipts and tree heads are signed with it.
    pub broker_log_key: VerifyingKey,
}

impl Directory {
    pub fn agency(&self, id: &AgencyId) -> Option<&Agency> {
        self.agencies.get(id)
    }

    /// Refuses a directory that is stale at `now` (`now >= valid_until`).
    pub fn check_fresh(&self, now: Timestamp) -> Result<(), DirectoryError> {
        if now >= self.valid_until {
            return Err(DirectoryError::Expired { version: self.version, valid_until: self.valid_until, now });
        }
        Ok(())
    }

    /// Encodes and signs with the federation directory key.
    pub fn sign(&self, key: &SigningKey) -> SignedDirectory {
        let bytes = prost::Message::encode_to_vec(&self.to_pb());
        let signature = key.sign(&directory_signing_input(&bytes));
        SignedDirectory { bytes, signer_key_id: key.verifying_key().key_id(), signature }
    }

    fn to_pb(&self) -> pb::Directory {
        pb::Directory {
            format_version: DIRECTORY_FORMAT_VERSION,
            trust_domain: self.trust_domain.to_string(),
            version: self.version,
            issued_at_ms: self.issued_at.0,
            valid_until_ms: self.valid_until.0,
            agencies: self
                .agencies
                .values()
                .map(|a| pb::AgencyEntry {
                    id: a.id.to_string(),
                    display_name: a.display_name.clone(),
                    kind: match a.kind {
                        AgencyKind::Police => pb::AgencyKind::Police,
                        AgencyKind::Municipal => pb::AgencyKind::Municipal,
                    } as i32,
                    keys: a
                        .keys
                        .iter()
                        .map(|k| pb::AgencyKey {
                            key_id: k.key_id.as_bytes().to_vec(),
                            signing_public_key: k.signing.0.to_vec(),
                            encryption_public_key: k.encryption.to_vec(),
                            not_before_ms: k.not_before.0,
                            not_after_ms: k.not_after.0,
                        })
                        .collect(),
                    escalation: a.escalation.as_ref().map(|e| pb::EscalationContact {
                        principal: e.principal.uri(),
                        display_name: e.display_name.clone(),
                        phone: e.phone.clone(),
                    }),
                })
                .collect(),
            broker_log_key: self.broker_log_key.0.to_vec(),
        }
    }
}

/// canonical(`referral.v1/directory-signature`, directory bytes).
pub fn directory_signing_input(directory_bytes: &[u8]) -> Vec<u8> {
    let mut c = Canonical::new(label::DIRECTORY_SIGNATURE);
    c.bytes(directory_bytes);
    c.finish()
}

/// A directory as transported: encoded bytes plus the federation's signature.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedDirectory {
    pub bytes: Vec<u8>,
    pub signer_key_id: KeyId,
    pub signature: [u8; 64],
}

/// Why a directory was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("directory is signed by key {found}, but the pinned federation key is {expected}")]
    WrongSigner { expected: KeyId, found: KeyId },
    #[error("directory signature does not verify with the pinned federation key")]
    BadSignature,
    #[error("directory is not a valid protobuf referral.v1.Directory")]
    Decode,
    #[error("directory format version {0} is not supported (expected {DIRECTORY_FORMAT_VERSION})")]
    FormatVersion(u32),
    #[error("directory is invalid: {0}")]
    Invalid(String),
    #[error("directory version {got} is older than version {seen} already seen: refusing a rollback")]
    Rollback { seen: u64, got: u64 },
    #[error(
        "directory version {version} is stale: it was valid until {valid_until} and it is now {now}; the federation must publish a fresh one"
    )]
    Expired { version: u64, valid_until: Timestamp, now: Timestamp },
    #[error("signed directory lacks {0}")]
    Missing(&'static str),
    /// A signing key no honest key generation produces (PROTOCOL.md 2.1, 9.3):
    /// refused before any signature is verified against it.
    #[error("directory is invalid: agency {agency} key {key_id}: signing key {reason}")]
    WeakSigningKey { agency: AgencyId, key_id: KeyId, reason: WeakKey },
}

impl SignedDirectory {
    /// Verifies the signature with the pinned federation key, then decodes and
    /// validates. `seen_version` is the newest version this party accepted
    /// before; `now` is the verifier's clock, against which a stale directory
    /// (past its `valid_until`) is refused.
    pub fn verify(
        &self,
        federation_key: &VerifyingKey,
        seen_version: Option<u64>,
        now: Timestamp,
    ) -> Result<Directory, DirectoryError> {
        let expected = federation_key.key_id();
        if self.signer_key_id != expected {
            return Err(DirectoryError::WrongSigner { expected, found: self.signer_key_id });
        }
        federation_key
            .verify(&directory_signing_input(&self.bytes), &self.signature)
            .map_err(|_| DirectoryError::BadSignature)?;
        let pb: pb::Directory = prost::Message::decode(self.bytes.as_slice()).map_err(|_| DirectoryError::Decode)?;
        let directory = Directory::try_from(pb)?;
        if let Some(seen) = seen_version
            && directory.version < seen
        {
            return Err(DirectoryError::Rollback { seen, got: directory.version });
        }
        directory.check_fresh(now)?;
        Ok(directory)
    }

    pub fn to_pb(&self) -> pb::SignedDirectory {
        pb::SignedDirectory {
            directory: self.bytes.clone(),
            signer_key_id: self.signer_key_id.as_bytes().to_vec(),
            signature: self.signature.to_vec(),
        }
    }

    pub fn from_pb(p: pb::SignedDirectory) -> Result<Self, DirectoryError> {
        Ok(Self {
            bytes: p.directory,
            signer_key_id: KeyId::from_slice(&p.signer_key_id).map_err(|_| DirectoryError::Missing("signer_key_id"))?,
            signature: p.signature.as_slice().try_into().map_err(|_| DirectoryError::Missing("signature"))?,
        })
    }

    /// The transport form (an encoded `pb::SignedDirectory`), as written to
    /// `directory.bin` files.
    pub fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&self.to_pb())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DirectoryError> {
        Self::from_pb(prost::Message::decode(bytes).map_err(|_| DirectoryError::Decode)?)
    }
}

fn invalid(msg: impl Into<String>) -> DirectoryError {
    DirectoryError::Invalid(msg.into())
}

impl TryFrom<pb::Directory> for Directory {
    type Error = DirectoryError;

    fn try_from(d: pb::Directory) -> Result<Self, DirectoryError> {
        if d.format_version != DIRECTORY_FORMAT_VERSION {
            return Err(DirectoryError::FormatVersion(d.format_version));
        }
        let id_err = |what: &str, e: IdError| invalid(format!("{what}: {e}"));
        let trust_domain = TrustDomain::new(d.trust_domain).map_err(|e| id_err("trust domain", e))?;
        let broker_log_key =
            VerifyingKey::from_slice(&d.broker_log_key).ok_or_else(|| invalid("broker log key is not 32 bytes"))?;
        check_signing_key(&broker_log_key).map_err(|reason| invalid(format!("broker log key {reason}")))?;
        if d.valid_until_ms <= d.issued_at_ms {
            return Err(invalid("valid_until is not after issued_at (a directory must say until when it is valid)"));
        }
        let mut agencies = BTreeMap::new();
        let mut key_ids = BTreeSet::new();
        for a in d.agencies {
            let id = AgencyId::new(a.id).map_err(|e| id_err("agency", e))?;
            let kind = match pb::AgencyKind::try_from(a.kind) {
                Ok(pb::AgencyKind::Police) => AgencyKind::Police,
                Ok(pb::AgencyKind::Municipal) => AgencyKind::Municipal,
                _ => return Err(invalid(format!("agency {id} has no kind"))),
            };
            if a.display_name.trim().is_empty() {
                return Err(invalid(format!("agency {id} has no display name")));
            }
            // Names reach people's terminals and pages (PROTOCOL.md 6.3, rule 32).
            if !crate::text::line_ok(&a.display_name) {
                return Err(invalid(format!("agency {id}: display_name {}", crate::text::LINE_RULE)));
            }
            let mut keys = Vec::with_capacity(a.keys.len());
            for k in a.keys {
                let key_id = KeyId::from_slice(&k.key_id).map_err(|e| id_err("key id", e))?;
                let signing = VerifyingKey::from_slice(&k.signing_public_key)
                    .ok_or_else(|| invalid(format!("agency {id} key {key_id}: signing key is not 32 bytes")))?;
                check_signing_key(&signing).map_err(|reason| DirectoryError::WeakSigningKey {
                    agency: id.clone(),
                    key_id,
                    reason,
                })?;
                let encryption: [u8; 32] = k
                    .encryption_public_key
                    .as_slice()
                    .try_into()
                    .map_err(|_| invalid(format!("agency {id} key {key_id}: encryption key is not 32 bytes")))?;
                if bundle_key_id(&signing, &encryption) != key_id {
                    return Err(invalid(format!("agency {id} key {key_id}: key id does not match its keys")));
                }
                if k.not_before_ms >= k.not_after_ms {
                    return Err(invalid(format!("agency {id} key {key_id}: not_before is not before not_after")));
                }
                if !key_ids.insert(key_id) {
                    return Err(invalid(format!("key id {key_id} appears twice")));
                }
                keys.push(AgencyPublicKey {
                    key_id,
                    signing,
                    encryption,
                    not_before: Timestamp(k.not_before_ms),
                    not_after: Timestamp(k.not_after_ms),
                });
            }
            let escalation = match a.escalation {
                None => None,
                Some(e) => {
                    let principal = Principal::parse_uri(&e.principal).map_err(|e| id_err("escalation contact", e))?;
                    if principal.trust_domain != trust_domain {
                        return Err(invalid(format!("agency {id}: escalation contact is outside the trust domain")));
                    }
                    for (field, value) in [("display_name", &e.display_name), ("phone", &e.phone)] {
                        if !crate::text::line_ok(value) {
                            return Err(invalid(format!(
                                "agency {id}: escalation contact {field} {}",
                                crate::text::LINE_RULE
                            )));
                        }
                    }
                    Some(EscalationContact { principal, display_name: e.display_name, phone: e.phone })
                }
            };
            let agency = Agency { id: id.clone(), display_name: a.display_name, kind, keys, escalation };
            if agencies.insert(id.clone(), agency).is_some() {
                return Err(invalid(format!("agency {id} appears twice")));
            }
        }
        Ok(Directory {
            trust_domain,
            version: d.version,
            issued_at: Timestamp(d.issued_at_ms),
            valid_until: Timestamp(d.valid_until_ms),
            agencies,
            broker_log_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::AgencyKeyBundle;

    pub(crate) fn sample(version: u64) -> (Directory, SigningKey) {
        let fed = SigningKey::from_seed([1; 32]);
        let mut agencies = BTreeMap::new();
        for (id, kind) in [("polisen-huddinge", AgencyKind::Police), ("huddinge-socialtjanst", AgencyKind::Municipal)] {
            let id = AgencyId::new(id).unwrap();
            let b = AgencyKeyBundle::generate(id.clone(), Timestamp(0), Timestamp(i64::MAX));
            agencies.insert(
                id.clone(),
                Agency { id, display_name: "x".into(), kind, keys: vec![b.public().clone()], escalation: None },
            );
        }
        let d = Directory {
            trust_domain: TrustDomain::new("igor.example.se").unwrap(),
            version,
            issued_at: Timestamp(5),
            valid_until: Timestamp(1_000),
            agencies,
            broker_log_key: SigningKey::from_seed([2; 32]).verifying_key(),
        };
        (d, fed)
    }

    #[test]
    fn sign_verify_round_trip() {
        let (d, fed) = sample(3);
        let signed = d.sign(&fed);
        let back = SignedDirectory::decode(&signed.encode()).unwrap();
        assert_eq!(back.verify(&fed.verifying_key(), Some(3), Timestamp(999)).unwrap(), d);
    }

    #[test]
    fn a_stale_directory_is_refused() {
        let (d, fed) = sample(3);
        let signed = d.sign(&fed);
        assert_eq!(
            signed.verify(&fed.verifying_key(), None, Timestamp(1_000)),
            Err(DirectoryError::Expired { version: 3, valid_until: Timestamp(1_000), now: Timestamp(1_000) })
        );
        let mut open_ended = d.clone();
        open_ended.valid_until = open_ended.issued_at;
        assert!(matches!(
            open_ended.sign(&fed).verify(&fed.verifying_key(), None, Timestamp(6)),
            Err(DirectoryError::Invalid(m)) if m.contains("valid_until is not after issued_at")
        ));
    }

    #[test]
    fn rejections() {
        let (d, fed) = sample(3);
        let signed = d.sign(&fed);
        assert_eq!(
            signed.verify(&fed.verifying_key(), Some(4), Timestamp(6)),
            Err(DirectoryError::Rollback { seen: 4, got: 3 })
        );
        let other = SigningKey::from_seed([9; 32]);
        assert!(matches!(
            signed.verify(&other.verifying_key(), None, Timestamp(6)),
            Err(DirectoryError::WrongSigner { .. })
        ));
        let mut flipped = signed.clone();
        flipped.bytes[10] ^= 1;
        assert_eq!(flipped.verify(&fed.verifying_key(), None, Timestamp(6)), Err(DirectoryError::BadSignature));
        // A key whose id does not match its keys is refused even when signed.
        let mut bad = d.clone();
        let a = bad.agencies.values_mut().next().unwrap();
        a.keys[0].key_id = KeyId([0; 16]);
        assert!(
            matches!(bad.sign(&fed).verify(&fed.verifying_key(), None, Timestamp(6)), Err(DirectoryError::Invalid(m)) if m.contains("does not match"))
        );
    }

    /// A directory entry with `signing` as an agency's signing key (and a key
    /// id that matches it, so only the key itself is wrong).
    fn with_signing_key(d: &Directory, signing: VerifyingKey) -> (Directory, AgencyId, KeyId) {
        let mut d = d.clone();
        let a = d.agencies.values_mut().next().unwrap();
        let k = &mut a.keys[0];
        k.signing = signing;
        k.key_id = bundle_key_id(&k.signing, &k.encryption);
        let (agency, key_id) = (a.id.clone(), k.key_id);
        (d, agency, key_id)
    }

    #[test]
    fn a_directory_holding_a_small_order_or_non_canonical_key_is_refused() {
        let (d, fed) = sample(3);
        // The identity point: every signature with R = identity and S = 0
        // verifies against it with ring for any message (speccheck case 0's kind).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        // The same point spelled with y = p + 1.
        let mut non_canonical = [0xffu8; 32];
        non_canonical[0] = 0xee;
        non_canonical[31] = 0x7f;
        // An honest key plus the point of order 2 (speccheck's mixed-order keys).
        let mixed = hex::decode("cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d").unwrap();
        for (bytes, reason, text) in [
            (identity.to_vec(), WeakKey::SmallOrder, "is a small-order point (signatures against it prove nothing)"),
            (
                non_canonical.to_vec(),
                WeakKey::NotCanonical,
                "is not canonically encoded (a coordinate is not reduced, or a zero x carries a sign)",
            ),
            (mixed, WeakKey::MixedOrder, "has a small-order component (no honestly generated key has one)"),
        ] {
            let (bad, agency, key_id) = with_signing_key(&d, VerifyingKey::from_slice(&bytes).unwrap());
            let err = bad.sign(&fed).verify(&fed.verifying_key(), None, Timestamp(6)).unwrap_err();
            assert_eq!(err, DirectoryError::WeakSigningKey { agency: agency.clone(), key_id, reason });
            assert_eq!(
                err.to_string(),
                format!("directory is invalid: agency {agency} key {key_id}: signing key {text}")
            );
        }
        // The broker's log key is checked the same way.
        let mut bad = d.clone();
        bad.broker_log_key = VerifyingKey(identity);
        assert_eq!(
            bad.sign(&fed).verify(&fed.verifying_key(), None, Timestamp(6)),
            Err(DirectoryError::Invalid(
                "broker log key is a small-order point (signatures against it prove nothing)".into()
            ))
        );
    }

    #[test]
    fn current_key_prefers_the_newest_valid_key() {
        let id = AgencyId::new("huddinge-socialtjanst").unwrap();
        let old = AgencyKeyBundle::generate(id.clone(), Timestamp(0), Timestamp(200));
        let new = AgencyKeyBundle::generate(id.clone(), Timestamp(100), Timestamp(300));
        let a = Agency {
            id,
            display_name: "x".into(),
            kind: AgencyKind::Municipal,
            keys: vec![old.public().clone(), new.public().clone()],
            escalation: None,
        };
        assert_eq!(a.current_key(Timestamp(50)).unwrap().key_id, old.key_id());
        assert_eq!(a.current_key(Timestamp(150)).unwrap().key_id, new.key_id());
        assert_eq!(a.current_key(Timestamp(250)).unwrap().key_id, new.key_id());
        assert!(a.current_key(Timestamp(300)).is_none());
    }
}
