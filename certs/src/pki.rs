//! X.509 for the federation: the CA, broker server certificates, principal
//! client certificates with SPIFFE URI SANs, and CRLs.
//!
//! Keys are ECDSA P-256 with SHA-256 (rcgen's default, accepted by rustls,
//! OpenSSL and every HSM): see SECURITY.md, "Algorithms".

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber,
};
use referral_proto::ids::Principal;
use referral_proto::time::Timestamp;
use ring::rand::SecureRandom as _;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("time {0} is out of range for a certificate")]
    Time(Timestamp),
    #[error("{what} is not a PEM certificate this tool can read")]
    Parse { what: String },
    #[error("{what} is not a certificate request with a valid signature ({reason})")]
    Request { what: String, reason: String },
}

pub(crate) fn offset(t: Timestamp) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.0) * 1_000_000).map_err(|_| PkiError::Time(t))
}

/// A fresh random 16-byte positive serial number.
pub fn random_serial() -> Vec<u8> {
    let mut s = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut s).expect("the OS random source failed");
    s[0] &= 0x7f;
    s[0] |= 0x01; // never a leading zero byte: the DER encoding stays 16 bytes
    s.to_vec()
}

/// A certificate and its private key, both PEM.
#[derive(Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
    pub serial: Vec<u8>,
}

/// What a leaf certificate says. Tests build unusual ones (other trust
/// domains, wrong key usage, expired) through the same path.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub client_auth: bool,
    pub server_auth: bool,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

impl LeafSpec {
    /// A client certificate for `principal`.
    pub fn principal(principal: &Principal, not_before: Timestamp, not_after: Timestamp) -> Self {
        Self {
            common_name: format!("{}/{}/{}", principal.agency, principal.role, principal.name),
            uris: vec![principal.uri()],
            dns_names: vec![],
            ips: vec![],
            client_auth: true,
            server_auth: false,
            not_before,
            not_after,
        }
    }

    /// A server certificate for the broker.
    pub fn server(dns_names: Vec<String>, ips: Vec<IpAddr>, not_before: Timestamp, not_after: Timestamp) -> Self {
        Self {
            common_name: dns_names.first().cloned().unwrap_or_else(|| "referral-broker".into()),
            uris: vec![],
            dns_names,
            ips,
            client_auth: false,
            server_auth: true,
            not_before,
            not_after,
        }
    }
}

/// The federation's certificate authority.
#[derive(Debug)]
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl Ca {
    /// A new self-signed CA for `trust_domain`, valid over the given times.
    pub fn generate(trust_domain: &str, not_before: Timestamp, not_after: Timestamp) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{trust_domain} federation CA"));
        dn.push(DnType::OrganizationName, trust_domain);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = offset(not_before)?;
        params.not_after = offset(not_after)?;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), key })
    }

    /// Loads a CA from its certificate and PKCS#8 key, both PEM.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        // Check that the certificate parses as a CA certificate now, not at first use.
        Issuer::from_ca_cert_pem(cert_pem, &key).map_err(|_| PkiError::Parse { what: "CA certificate".into() })?;
        Ok(Self { cert_pem: cert_pem.to_owned(), key })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.serialize_pem())
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?)
    }

    /// Issues a leaf certificate with a fresh key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let (cert_pem, serial) = self.issue_for(spec, &key)?;
        Ok(Issued { cert_pem, key_pem: Zeroizing::new(key.serialize_pem()), serial })
    }

    /// Issues the certificate `spec` describes for a public key whose private
    /// half stays with its holder (from a certificate request): the
    /// certificate PEM and its serial. Nothing of the request but the key
    /// is used: what it may do is decided here.
    pub fn issue_for(&self, spec: &LeafSpec, key: &impl rcgen::PublicKeyData) -> Result<(String, Vec<u8>), PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.common_name.clone());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = [
            spec.client_auth.then_some(ExtendedKeyUsagePurpose::ClientAuth),
            spec.server_auth.then_some(ExtendedKeyUsagePurpose::ServerAuth),
        ]
        .into_iter()
        .flatten()
        .collect();
        for uri in &spec.uris {
            params.subject_alt_names.push(SanType::URI(uri.as_str().try_into()?));
        }
        for dns in &spec.dns_names {
            params.subject_alt_names.push(SanType::DnsName(dns.as_str().try_into()?));
        }
        params.subject_alt_names.extend(spec.ips.iter().copied().map(SanType::IpAddress));
        params.not_before = offset(spec.not_before)?;
        params.not_after = offset(spec.not_after)?;
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params.signed_by(key, &self.issuer()?)?;
        Ok((cert.pem(), serial))
    }

    /// A CRL listing `revoked` (serial, revocation time), numbered `number`.
    pub fn crl(
        &self,
        revoked: &[(Vec<u8>, Timestamp)],
        number: u64,
        this_update: Timestamp,
        next_update: Timestamp,
    ) -> Result<String, PkiError> {
        let params = CertificateRevocationListParams {
            this_update: offset(this_update)?,
            next_update: offset(next_update)?,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(serial, at)| {
                    Ok(RevokedCertParams {
                        serial_number: SerialNumber::from_slice(serial),
                        revocation_time: offset(*at)?,
                        reason_code: None,
                        invalidity_date: None,
                    })
                })
                .collect::<Result<_, PkiError>>()?,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer()?)?.pem()?)
    }
}

/// What the tools need to know about a certificate: its serial, validity
/// and SPIFFE URIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub serial: Vec<u8>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub uris: Vec<String>,
}

/// Reads the first certificate of a PEM text.
pub fn cert_info(pem: &str) -> Result<CertInfo, PkiError> {
    let bad = || PkiError::Parse { what: "certificate".into() };
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| bad())?;
    let cert = p.parse_x509().map_err(|_| bad())?;
    cert_info_of(&cert)
}

/// [`cert_info`] for DER bytes.
pub fn cert_info_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| PkiError::Parse { what: "certificate".into() })?;
    cert_info_of(&cert)
}

fn cert_info_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<CertInfo, PkiError> {
    let ms = |t: x509_parser::time::ASN1Time| Timestamp(t.timestamp() * 1000);
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = name {
                uris.push((*u).to_owned());
            }
        }
    }
    Ok(CertInfo {
        serial: cert.tbs_certificate.raw_serial().to_vec(),
        not_before: ms(cert.validity().not_before),
        not_after: ms(cert.validity().not_after),
        uris,
    })
}

/// A principal's own TLS key and a certificate request for it: what an
/// agency makes so that its private key never leaves it.
#[derive(Debug)]
pub struct Request {
    pub csr_pem: String,
    pub key_pem: Zeroizing<String>,
}

/// Makes a fresh ECDSA P-256 key and a request, signed with it, for a
/// certificate naming `principal` (its SPIFFE URI as the only SAN).
pub fn request(principal: &Principal) -> Result<Request, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{}/{}/{}", principal.agency, principal.role, principal.name));
    params.distinguished_name = dn;
    params.subject_alt_names.push(SanType::URI(principal.uri().as_str().try_into()?));
    let csr = params.serialize_request(&key)?;
    Ok(Request { csr_pem: csr.pem()?, key_pem: Zeroizing::new(key.serialize_pem()) })
}

/// A verified certificate request: its public key and the URIs it names.
#[derive(Debug)]
pub struct VerifiedRequest {
    pub public_key: rcgen::PublicKey,
    pub uris: Vec<String>,
}

/// Parses a PEM certificate request and checks its signature (proof that
/// whoever sent it holds the private key).
pub fn verify_request(pem: &str, what: &str) -> Result<VerifiedRequest, PkiError> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(pem)
        .map_err(|e| PkiError::Request { what: what.to_owned(), reason: e.to_string() })?;
    let uris = csr
        .params
        .subject_alt_names
        .iter()
        .filter_map(|san| match san {
            SanType::URI(u) => Some(u.as_str().to_owned()),
            _ => None,
        })
        .collect();
    Ok(VerifiedRequest { public_key: csr.public_key, uris })
}

/// Whether the PEM certificate is for the public half of the PEM private key.
pub fn key_matches_cert(key_pem: &str, cert_pem: &str) -> Result<bool, PkiError> {
    let bad = || PkiError::Parse { what: "certificate".into() };
    let key = KeyPair::from_pem(key_pem)?;
    let (_, p) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|_| bad())?;
    let cert = p.parse_x509().map_err(|_| bad())?;
    Ok(cert.tbs_certificate.subject_pki.raw == rcgen::PublicKeyData::subject_public_key_info(&key).as_slice())
}
