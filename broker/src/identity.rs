//! Who is calling: the one function that maps a verified client certificate
//! to a [`Principal`], and the per-connection record of it that every RPC
//! reads.
//!
//! rustls has already verified the chain to the federation CA, the validity
//! period, the key usage and the CRL before anything here runs. This module
//! decides only which principal the certificate names.

use std::net::SocketAddr;

use std::sync::Arc;

use referral_proto::ids::{Principal, TrustDomain};
use referral_proto::time::Timestamp;
use rustls_pki_types::CertificateDer;

use crate::error::BrokerError;

/// A principal and the serial of the certificate that proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub principal: Principal,
    pub serial: Vec<u8>,
    /// The certificate's end of validity: the connection ends then.
    pub not_after: Timestamp,
}

/// Attached to each connection; every request on it carries a copy.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub identity: Result<Identity, BrokerError>,
    pub remote: Option<SocketAddr>,
    /// The connection's standing, for a connection with a valid identity.
    pub connection: Option<Arc<crate::trust::Connection>>,
}

/// Maps the verified leaf certificate to a principal: it must carry exactly
/// one `spiffe://` URI SAN, of the form
/// `spiffe://<trust-domain>/agency/<agency-id>/<role>/<name>`, in this
/// federation's trust domain.
pub fn principal_from_cert(leaf: &CertificateDer<'_>, trust_domain: &TrustDomain) -> Result<Identity, BrokerError> {
    let info = certs::pki::cert_info_der(leaf).map_err(|e| BrokerError::BadIdentity(e.to_string()))?;
    let spiffe: Vec<&String> = info.uris.iter().filter(|u| u.starts_with("spiffe://")).collect();
    let uri = match spiffe.as_slice() {
        [one] => *one,
        [] => {
            return Err(BrokerError::BadIdentity("no spiffe:// URI in the subject alternative names".into()));
        }
        _ => {
            return Err(BrokerError::BadIdentity(
                "more than one spiffe:// URI in the subject alternative names".into(),
            ));
        }
    };
    let principal = Principal::parse_uri(uri).map_err(|e| BrokerError::BadIdentity(e.to_string()))?;
    if &principal.trust_domain != trust_domain {
        return Err(BrokerError::ForeignTrustDomain {
            found: principal.trust_domain.to_string(),
            expected: trust_domain.to_string(),
        });
    }
    Ok(Identity { principal, serial: info.serial, not_after: info.not_after })
}

#[cfg(test)]
mod tests {
    use super::*;
    use certs::pki::{Ca, LeafSpec};
    use rustls_pki_types::pem::PemObject as _;

    fn leaf(ca: &Ca, uris: &[&str]) -> CertificateDer<'static> {
        let mut spec = LeafSpec::server(vec![], vec![], Timestamp(0), Timestamp(4_000_000_000_000));
        spec.uris = uris.iter().map(|s| s.to_string()).collect();
        spec.client_auth = true;
        CertificateDer::from_pem_slice(ca.issue(&spec).unwrap().cert_pem.as_bytes()).unwrap()
    }

    #[test]
    fn maps_and_refuses() {
        let td = TrustDomain::new("igor.example.se").unwrap();
        let ca = Ca::generate("igor.example.se", Timestamp(0), Timestamp(4_000_000_000_000)).unwrap();
        let ok = principal_from_cert(&leaf(&ca, &["spiffe://igor.example.se/agency/polisen-huddinge/system/a"]), &td)
            .unwrap();
        assert_eq!(ok.principal.name, "a");
        assert!(!ok.serial.is_empty());
        assert!(
            matches!(principal_from_cert(&leaf(&ca, &[]), &td), Err(BrokerError::BadIdentity(m)) if m.contains("no spiffe"))
        );
        assert!(matches!(
            principal_from_cert(&leaf(&ca, &["spiffe://other.example/agency/polisen-huddinge/system/a"]), &td),
            Err(BrokerError::ForeignTrustDomain { .. })
        ));
        assert!(matches!(
            principal_from_cert(&leaf(&ca, &["spiffe://igor.example.se/agency/polisen-huddinge/admin/a"]), &td),
            Err(BrokerError::BadIdentity(_))
        ));
        assert!(matches!(
            principal_from_cert(
                &leaf(&ca, &["spiffe://igor.example.se/agency/a-b-c/system/a", "spiffe://igor.example.se/agency/a-b-c/oncall/b"]),
                &td
            ),
            Err(BrokerError::BadIdentity(m)) if m.contains("more than one")
        ));
    }
}
