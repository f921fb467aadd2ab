//! A federation folder: the CA, the directory key, the registry of agencies
//! and issued certificates, the CRL and the signed directory.
//!
//! Layout of `DIR`:
//! - `federation.toml`: the registry (public data only)
//! - `ca.pem`, `ca.key` (0600): the CA
//! - `directory.key` (0600), `federation.pub`: the directory signing key and its public half
//! - `crl.pem`: the current CRL
//! - `directory.bin`: the current signed directory (an encoded `referral.v1.SignedDirectory`)
//!
//! The federation never holds an agency's private end-to-end keys: agencies
//! generate bundles themselves ([`crate::keygen`]) and hand in the public half.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use referral_proto::directory::{Agency, AgencyKind, Directory, EscalationContact, SignedDirectory};
use referral_proto::ids::{AgencyId, KeyId, Principal, TrustDomain};
use referral_proto::keys::{AgencyPublicKey, KeyPurpose, SigningKey, VerifyingKey, bundle_key_id};
use referral_proto::time::Timestamp;
use serde::{Deserialize, Serialize};

use crate::pki::{Ca, Issued, LeafSpec, PkiError};
use crate::secret_file::{self, SecretFileError};
use crate::{DAY_MS, read_text, write_text_atomic};

pub const STATE_FILE: &str = "federation.toml";
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const DIRECTORY_KEY: &str = "directory.key";
pub const FEDERATION_PUB: &str = "federation.pub";
pub const CRL: &str = "crl.pem";
pub const DIRECTORY: &str = "directory.bin";

/// How long a CRL is valid before the broker must get a fresh one.
pub const CRL_VALIDITY_DAYS: i64 = 30;

/// How long a published directory is valid by default before every party
/// refuses it as stale (PROTOCOL.md 9.4). It bounds how long a broker can keep
/// clients on an old directory, for example one that still lists a
/// compromised key: re-sign well before (OPERATIONS.md).
pub const DIRECTORY_VALIDITY_DAYS: i64 = 30;

/// The longest validity `certs directory --valid-days` accepts.
pub const MAX_DIRECTORY_VALIDITY_DAYS: i64 = 366;

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("{0}: a federation already exists here")]
    Exists(PathBuf),
    #[error("{0}: not a federation folder (no federation.toml); create one with 'certs init'")]
    NotAFederation(PathBuf),
    #[error("{path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("agency {0} is already registered")]
    DuplicateAgency(AgencyId),
    #[error("agency {0} is not registered; add it with 'certs add-agency'")]
    UnknownAgency(AgencyId),
    #[error("key {0} is already registered")]
    DuplicateKey(KeyId),
    #[error("public key file {path}: {message}")]
    PublicKeyFile { path: PathBuf, message: String },
    #[error("principal {principal} is of trust domain {found}, but this federation is {expected}")]
    TrustDomain { principal: String, found: String, expected: String },
    #[error("no broker log key is registered; create broker credentials with 'certs broker' first")]
    NoBrokerLogKey,
    #[error("no issued certificate matches {0}")]
    NothingToRevoke(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Secret(#[from] SecretFileError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{path}: {source}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: referral_proto::keys::KeyFileError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub format: u32,
    pub trust_domain: String,
    pub directory_version: u64,
    pub crl_number: u64,
    #[serde(default)]
    pub broker_log_key: Option<String>,
    #[serde(default)]
    pub agencies: Vec<AgencyRecord>,
    #[serde(default)]
    pub certificates: Vec<CertRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgencyRecord {
    pub id: String,
    pub display_name: String,
    pub kind: AgencyKind,
    #[serde(default)]
    pub escalation: Option<EscalationRecord>,
    #[serde(default)]
    pub keys: Vec<PublicKeyRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationRecord {
    pub principal: String,
    pub display_name: String,
    pub phone: String,
}

/// The public half of an agency key bundle, as handed to the federation
/// (`*.pub` files) and kept in `federation.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyRecord {
    pub agency: String,
    pub key_id: String,
    pub signing_public: String,
    pub encryption_public: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

impl PublicKeyRecord {
    pub fn from_key(agency: &AgencyId, k: &AgencyPublicKey) -> Self {
        Self {
            agency: agency.to_string(),
            key_id: k.key_id.to_string(),
            signing_public: k.signing.to_hex(),
            encryption_public: hex::encode(k.encryption),
            not_before: k.not_before,
            not_after: k.not_after,
        }
    }

    /// Parses and checks that the key id matches the keys.
    pub fn to_key(&self) -> Result<AgencyPublicKey, String> {
        let b32 = |s: &str, what: &str| -> Result<[u8; 32], String> {
            hex::decode(s).ok().and_then(|v| v.try_into().ok()).ok_or_else(|| format!("{what} is not 64 hex digits"))
        };
        let signing = VerifyingKey(b32(&self.signing_public, "signing_public")?);
        let encryption = b32(&self.encryption_public, "encryption_public")?;
        let key_id: KeyId = self.key_id.parse().map_err(|e| format!("{e}"))?;
        if bundle_key_id(&signing, &encryption) != key_id {
            return Err("key_id does not match the keys".into());
        }
        if self.not_before >= self.not_after {
            return Err("not_before is not before not_after".into());
        }
        Ok(AgencyPublicKey { key_id, signing, encryption, not_before: self.not_before, not_after: self.not_after })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRecord {
    pub serial: String,
    /// `spiffe://…` for principals, `dns:<name>` for the broker.
    pub subject: String,
    pub not_after: Timestamp,
    #[serde(default)]
    pub revoked_at: Option<Timestamp>,
}

/// An open federation folder.
#[derive(Debug)]
pub struct Federation {
    dir: PathBuf,
    state: State,
    ca: Ca,
    directory_key: SigningKey,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FederationError + '_ {
    move |source| FederationError::Io { path: path.to_owned(), source }
}

impl Federation {
    /// Creates a federation in `dir` (which must not already hold one).
    pub fn init(dir: &Path, trust_domain: &TrustDomain, now: Timestamp, ca_days: i64) -> Result<Self, FederationError> {
        if dir.join(STATE_FILE).exists() {
            return Err(FederationError::Exists(dir.to_owned()));
        }
        crate::durable_file::create_dir_all(dir).map_err(io(dir))?;
        let ca = Ca::generate(trust_domain.as_str(), now.plus_millis(-DAY_MS), now.plus_millis(ca_days * DAY_MS))?;
        let directory_key = SigningKey::generate();
        write_text_atomic(&dir.join(CA_CERT), ca.cert_pem())?;
        secret_file::write(&dir.join(CA_KEY), ca.key_pem().as_bytes(), false)?;
        let key_file = referral_proto::keys::signing_key_file(&directory_key, KeyPurpose::FederationDirectory);
        secret_file::write(&dir.join(DIRECTORY_KEY), key_file.as_bytes(), false)?;
        write_text_atomic(&dir.join(FEDERATION_PUB), &format!("{}\n", directory_key.verifying_key().to_hex()))?;
        let state = State {
            format: 1,
            trust_domain: trust_domain.to_string(),
            directory_version: 0,
            crl_number: 0,
            broker_log_key: None,
            agencies: vec![],
            certificates: vec![],
        };
        let mut fed = Self { dir: dir.to_owned(), state, ca, directory_key };
        fed.write_crl(now)?;
        fed.save()?;
        Ok(fed)
    }

    /// Opens an existing federation folder.
    pub fn open(dir: &Path) -> Result<Self, FederationError> {
        let state_path = dir.join(STATE_FILE);
        if !state_path.exists() {
            return Err(FederationError::NotAFederation(dir.to_owned()));
        }
        let text = read_text(&state_path)?;
        let state: State =
            crate::from_toml(&text).map_err(|message| FederationError::State { path: state_path.clone(), message })?;
        if state.format != 1 {
            return Err(FederationError::State {
                path: state_path,
                message: format!("format {} is not supported", state.format),
            });
        }
        let ca = Ca::load(&read_text(&dir.join(CA_CERT))?, &secret_file::read(&dir.join(CA_KEY))?)?;
        let key_path = dir.join(DIRECTORY_KEY);
        let directory_key = referral_proto::keys::parse_signing_key_file(
            &secret_file::read(&key_path)?,
            KeyPurpose::FederationDirectory,
        )
        .map_err(|source| FederationError::KeyFile { path: key_path, source })?;
        Ok(Self { dir: dir.to_owned(), state, ca, directory_key })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain::new(self.state.trust_domain.clone()).expect("validated at init")
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    pub fn federation_key(&self) -> VerifyingKey {
        self.directory_key.verifying_key()
    }

    fn save(&self) -> Result<(), FederationError> {
        let text = toml::to_string_pretty(&self.state).map_err(|e| FederationError::Invalid(e.to_string()))?;
        write_text_atomic(
            &self.dir.join(STATE_FILE),
            &format!("# Federation registry: public data only. Edit with the 'certs' tool.\n{text}"),
        )
    }

    fn agency_mut(&mut self, id: &AgencyId) -> Result<&mut AgencyRecord, FederationError> {
        self.state
            .agencies
            .iter_mut()
            .find(|a| a.id == id.as_str())
            .ok_or_else(|| FederationError::UnknownAgency(id.clone()))
    }

    pub fn add_agency(
        &mut self,
        id: &AgencyId,
        kind: AgencyKind,
        display_name: &str,
        escalation: Option<EscalationContact>,
    ) -> Result<(), FederationError> {
        if self.state.agencies.iter().any(|a| a.id == id.as_str()) {
            return Err(FederationError::DuplicateAgency(id.clone()));
        }
        if display_name.trim().is_empty() {
            return Err(FederationError::Invalid("an agency needs a display name".into()));
        }
        let line = |what: &str, v: &str| {
            if referral_proto::text::line_ok(v) {
                Ok(())
            } else {
                Err(FederationError::Invalid(format!("{what} {}", referral_proto::text::LINE_RULE)))
            }
        };
        line("the display name", display_name)?;
        if let Some(e) = &escalation {
            self.check_trust_domain(&e.principal)?;
            line("the escalation contact's display name", &e.display_name)?;
            line("the escalation contact's phone", &e.phone)?;
        }
        self.state.agencies.push(AgencyRecord {
            id: id.to_string(),
            display_name: display_name.to_owned(),
            kind,
            escalation: escalation.map(|e| EscalationRecord {
                principal: e.principal.uri(),
                display_name: e.display_name,
                phone: e.phone,
            }),
            keys: vec![],
        });
        self.save()
    }

    /// Registers the public half of an agency key bundle.
    pub fn add_agency_key(&mut self, record: &PublicKeyRecord) -> Result<KeyId, FederationError> {
        let key = record.to_key().map_err(FederationError::Invalid)?;
        let id = AgencyId::new(record.agency.clone()).map_err(|e| FederationError::Invalid(e.to_string()))?;
        if self.state.agencies.iter().flat_map(|a| &a.keys).any(|k| k.key_id == record.key_id) {
            return Err(FederationError::DuplicateKey(key.key_id));
        }
        self.agency_mut(&id)?.keys.push(record.clone());
        self.save()?;
        Ok(key.key_id)
    }

    pub fn set_broker_log_key(&mut self, key: &VerifyingKey) -> Result<(), FederationError> {
        self.state.broker_log_key = Some(key.to_hex());
        self.save()
    }

    fn check_trust_domain(&self, p: &Principal) -> Result<(), FederationError> {
        if p.trust_domain.as_str() != self.state.trust_domain {
            return Err(FederationError::TrustDomain {
                principal: p.uri(),
                found: p.trust_domain.to_string(),
                expected: self.state.trust_domain.clone(),
            });
        }
        Ok(())
    }

    fn record_cert(&mut self, issued: &Issued, subject: String, not_after: Timestamp) -> Result<(), FederationError> {
        self.state.certificates.push(CertRecord {
            serial: hex::encode(&issued.serial),
            subject,
            not_after,
            revoked_at: None,
        });
        self.save()
    }

    /// Issues a client certificate for `principal`.
    pub fn issue_principal(
        &mut self,
        principal: &Principal,
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> Result<Issued, FederationError> {
        self.check_trust_domain(principal)?;
        let issued = self.ca.issue(&LeafSpec::principal(principal, not_before, not_after))?;
        self.record_cert(&issued, principal.uri(), not_after)?;
        Ok(issued)
    }

    /// Issues a principal's certificate for the key of a certificate request
    /// (`certs request` on the agency's side): the request must verify and
    /// name exactly `principal`. Returns the certificate PEM.
    pub fn issue_principal_for_request(
        &mut self,
        principal: &Principal,
        csr_pem: &str,
        csr_path: &str,
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> Result<String, FederationError> {
        self.check_trust_domain(principal)?;
        let request = crate::pki::verify_request(csr_pem, csr_path)?;
        if request.uris != [principal.uri()] {
            return Err(FederationError::Invalid(format!(
                "{csr_path} asks for {}, not {}; make the request with 'certs request --principal {}'",
                if request.uris.is_empty() { "no SPIFFE id".to_owned() } else { request.uris.join(", ") },
                principal.uri(),
                principal.uri()
            )));
        }
        let (cert_pem, serial) =
            self.ca.issue_for(&LeafSpec::principal(principal, not_before, not_after), &request.public_key)?;
        let issued = Issued { cert_pem, key_pem: Default::default(), serial };
        self.record_cert(&issued, principal.uri(), not_after)?;
        Ok(issued.cert_pem)
    }

    /// Issues a broker server certificate.
    pub fn issue_server(
        &mut self,
        dns_names: Vec<String>,
        ips: Vec<std::net::IpAddr>,
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> Result<Issued, FederationError> {
        let subject = format!("dns:{}", dns_names.join(","));
        let issued = self.ca.issue(&LeafSpec::server(dns_names, ips, not_before, not_after))?;
        self.record_cert(&issued, subject, not_after)?;
        Ok(issued)
    }

    /// Revokes every unrevoked certificate whose serial (hex) or subject
    /// equals `what`, then writes a new CRL. Returns the revoked serials.
    pub fn revoke(&mut self, what: &str, now: Timestamp) -> Result<Vec<String>, FederationError> {
        let what_lower = what.to_ascii_lowercase();
        let mut revoked = Vec::new();
        for c in &mut self.state.certificates {
            if c.revoked_at.is_none() && (c.serial == what_lower || c.subject == what) {
                c.revoked_at = Some(now);
                revoked.push(c.serial.clone());
            }
        }
        if revoked.is_empty() {
            return Err(FederationError::NothingToRevoke(what.to_owned()));
        }
        self.write_crl(now)?;
        Ok(revoked)
    }

    /// Writes a fresh CRL with every revoked serial.
    pub fn write_crl(&mut self, now: Timestamp) -> Result<(), FederationError> {
        self.state.crl_number += 1;
        let revoked: Vec<(Vec<u8>, Timestamp)> = self
            .state
            .certificates
            .iter()
            .filter_map(|c| Some((hex::decode(&c.serial).ok()?, c.revoked_at?)))
            .collect();
        let pem = self.ca.crl(
            &revoked,
            self.state.crl_number,
            now.plus_millis(-60_000),
            now.plus_millis(CRL_VALIDITY_DAYS * DAY_MS),
        )?;
        write_text_atomic(&self.dir.join(CRL), &pem)?;
        self.save()
    }

    /// The directory as registered now, at the next version, valid for
    /// `valid_days` days from `now`.
    pub fn directory(&self, now: Timestamp, valid_days: i64) -> Result<Directory, FederationError> {
        if !(1..=MAX_DIRECTORY_VALIDITY_DAYS).contains(&valid_days) {
            return Err(FederationError::Invalid(format!(
                "a directory's validity must be 1 to {MAX_DIRECTORY_VALIDITY_DAYS} days, not {valid_days}"
            )));
        }
        let broker_log_key = self
            .state
            .broker_log_key
            .as_deref()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| VerifyingKey::from_slice(&b))
            .ok_or(FederationError::NoBrokerLogKey)?;
        let mut agencies = BTreeMap::new();
        for a in &self.state.agencies {
            let id = AgencyId::new(a.id.clone()).map_err(|e| FederationError::Invalid(e.to_string()))?;
            let keys = a
                .keys
                .iter()
                .map(|k| k.to_key().map_err(|m| FederationError::Invalid(format!("agency {id}: {m}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let escalation = match &a.escalation {
                None => None,
                Some(e) => Some(EscalationContact {
                    principal: Principal::parse_uri(&e.principal)
                        .map_err(|e| FederationError::Invalid(e.to_string()))?,
                    display_name: e.display_name.clone(),
                    phone: e.phone.clone(),
                }),
            };
            agencies.insert(
                id.clone(),
                Agency { id, display_name: a.display_name.clone(), kind: a.kind, keys, escalation },
            );
        }
        Ok(Directory {
            trust_domain: self.trust_domain(),
            version: self.state.directory_version + 1,
            issued_at: now,
            valid_until: now.plus_millis(valid_days * DAY_MS),
            agencies,
            broker_log_key,
        })
    }

    /// Signs and writes the next directory version to `directory.bin`, valid
    /// for the default [`DIRECTORY_VALIDITY_DAYS`].
    pub fn publish_directory(&mut self, now: Timestamp) -> Result<SignedDirectory, FederationError> {
        self.publish_directory_valid_for(now, DIRECTORY_VALIDITY_DAYS)
    }

    /// Signs and writes the next directory version to `directory.bin`, valid
    /// for `valid_days` days.
    pub fn publish_directory_valid_for(
        &mut self,
        now: Timestamp,
        valid_days: i64,
    ) -> Result<SignedDirectory, FederationError> {
        let directory = self.directory(now, valid_days)?;
        let signed = directory.sign(&self.directory_key);
        let path = self.dir.join(DIRECTORY);
        crate::durable_file::write(&path, signed.encode()).map_err(io(&path))?;
        self.state.directory_version = directory.version;
        self.save()?;
        Ok(signed)
    }
}

/// Reads `federation.pub`: the pinned Ed25519 directory key, 64 hex digits.
pub fn read_federation_key(path: &Path) -> Result<VerifyingKey, FederationError> {
    let text = read_text(path)?;
    hex::decode(text.trim()).ok().and_then(|b| VerifyingKey::from_slice(&b)).ok_or_else(|| FederationError::State {
        path: path.to_owned(),
        message: "not a 64-hex-digit Ed25519 public key".into(),
    })
}
