//! Validated identifiers: agency ids, message ids, key ids, trust domains and
//! the SPIFFE-style principal every client certificate names.

use std::fmt;
use std::str::FromStr;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("agency id {0:?} is invalid: use 3 to 63 characters a-z, 0-9 and '-', not starting or ending with '-'")]
    AgencyId(String),
    #[error("message id must be 16 bytes, got {0}")]
    MessageIdLength(usize),
    #[error("message id {0} is not a UUIDv7")]
    MessageIdVersion(String),
    #[error("message id {0:?} is not a UUID")]
    MessageIdSyntax(String),
    #[error("key id must be 16 bytes, got {0}")]
    KeyIdLength(usize),
    #[error("key id {0:?} is not 32 hex digits")]
    KeyIdSyntax(String),
    #[error("trust domain {0:?} is invalid: use a lowercase DNS name")]
    TrustDomain(String),
    #[error("principal name {0:?} is invalid: use 1 to 63 characters a-z, 0-9, '-', '_' and '.'")]
    PrincipalName(String),
    #[error("role {0:?} is unknown: expected system, oncall or auditor")]
    Role(String),
    #[error("principal {0:?} is not of the form spiffe://<trust-domain>/agency/<agency-id>/<role>/<name>")]
    PrincipalUri(String),
}

/// An agency id such as `polisen-huddinge`: 3..=63 of `[a-z0-9-]`, no leading
/// or trailing `-`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct AgencyId(String);

impl AgencyId {
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        let ok = (3..=63).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok { Ok(Self(s)) } else { Err(IdError::AgencyId(s)) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgencyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AgencyId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

/// A message id: a UUIDv7 chosen by the sender. Its time-ordered prefix keeps
/// storage keys roughly in arrival order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(uuid::Uuid);

impl MessageId {
    /// A fresh UUIDv7 for `now_ms` (Unix milliseconds) with random bits from the OS.
    pub fn generate(now_ms: i64) -> Self {
        let ms = u64::try_from(now_ms).unwrap_or(0);
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
        Self(uuid::Uuid::new_v7(ts))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        let arr: [u8; 16] = bytes.try_into().map_err(|_| IdError::MessageIdLength(bytes.len()))?;
        let u = uuid::Uuid::from_bytes(arr);
        if u.get_version_num() != 7 || u.get_variant() != uuid::Variant::RFC4122 {
            return Err(IdError::MessageIdVersion(u.to_string()));
        }
        Ok(Self(u))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The millisecond timestamp embedded in the UUIDv7.
    pub fn timestamp_ms(&self) -> i64 {
        let b = self.0.as_bytes();
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&b[..6]);
        i64::from_be_bytes(ms)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl FromStr for MessageId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let u = uuid::Uuid::parse_str(s).map_err(|_| IdError::MessageIdSyntax(s.to_owned()))?;
        Self::from_bytes(u.as_bytes())
    }
}

/// A 16-byte key id (PROTOCOL.md, "Key ids").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
        bytes.try_into().map(Self).map_err(|_| IdError::KeyIdLength(bytes.len()))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bytes = hex::decode(s).map_err(|_| IdError::KeyIdSyntax(s.to_owned()))?;
        Self::from_slice(&bytes).map_err(|_| IdError::KeyIdSyntax(s.to_owned()))
    }
}

/// The SPIFFE trust domain of a federation, e.g. `igor.example.se`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if s.len() <= 253 && s.split('.').all(label_ok) { Ok(Self(s)) } else { Err(IdError::TrustDomain(s)) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a principal may do; see the broker's authorization matrix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Role {
    /// An agency's case system: sends, receives, acknowledges, reads receipts.
    System,
    /// On-call staff: receive alerts and acknowledge them.
    Oncall,
    /// Reads the audit log; never content.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::System, Role::Oncall, Role::Auditor];

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Oncall => "oncall",
            Role::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        match s {
            "system" => Ok(Role::System),
            "oncall" => Ok(Role::Oncall),
            "auditor" => Ok(Role::Auditor),
            _ => Err(IdError::Role(s.to_owned())),
        }
    }
}

/// An authenticated party: `spiffe://<trust-domain>/agency/<agency-id>/<role>/<name>`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Principal {
    pub trust_domain: TrustDomain,
    pub agency: AgencyId,
    pub role: Role,
    pub name: String,
}

impl Principal {
    pub fn new(trust_domain: TrustDomain, agency: AgencyId, role: Role, name: &str) -> Result<Self, IdError> {
        let ok = (1..=63).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(IdError::PrincipalName(name.to_owned()));
        }
        Ok(Self { trust_domain, agency, role, name: name.to_owned() })
    }

    /// Parses a SPIFFE URI.
    pub fn parse_uri(uri: &str) -> Result<Self, IdError> {
        let bad = || IdError::PrincipalUri(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("agency"), Some(agency), Some(role), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Self::new(TrustDomain::new(td)?, AgencyId::new(agency)?, role.parse()?, name)
    }

    pub fn uri(&self) -> String {
        format!("spiffe://{}/agency/{}/{}/{}", self.trust_domain, self.agency, self.role, self.name)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agency_ids() {
        assert!(AgencyId::new("polisen-huddinge").is_ok());
        for bad in ["", "ab", "-abc", "abc-", "Abc", "a_b_c", "åäö", &"a".repeat(64)] {
            assert_eq!(AgencyId::new(bad), Err(IdError::AgencyId(bad.to_owned())), "{bad}");
        }
    }

    #[test]
    fn principal_round_trip_and_rejections() {
        let uri = "spiffe://igor.example.se/agency/polisen-huddinge/oncall/duty-1";
        let p = Principal::parse_uri(uri).unwrap();
        assert_eq!(p.role, Role::Oncall);
        assert_eq!(p.agency.as_str(), "polisen-huddinge");
        assert_eq!(p.uri(), uri);
        assert_eq!(
            Principal::parse_uri("spiffe://igor.example.se/agency/polisen-huddinge/admin/x"),
            Err(IdError::Role("admin".into()))
        );
        for bad in [
            "https://igor.example.se/agency/polisen-huddinge/oncall/x",
            "spiffe://igor.example.se/agency/polisen-huddinge/oncall",
            "spiffe://igor.example.se/agency/polisen-huddinge/oncall/x/y",
            "spiffe://igor.example.se/org/polisen-huddinge/oncall/x",
        ] {
            assert_eq!(Principal::parse_uri(bad), Err(IdError::PrincipalUri(bad.into())));
        }
        assert_eq!(
            Principal::parse_uri("spiffe://igor.example.se/agency/polisen-huddinge/oncall/Bad Name"),
            Err(IdError::PrincipalName("Bad Name".into()))
        );
    }

    #[test]
    fn message_ids_must_be_uuid_v7() {
        let id = MessageId::generate(1_764_000_000_123);
        assert_eq!(id.timestamp_ms(), 1_764_000_000_123);
        assert_eq!(MessageId::from_bytes(id.as_bytes()), Ok(id));
        assert_eq!(id.to_string().parse::<MessageId>(), Ok(id));
        let v4 = uuid::Uuid::from_u128(0x67e5_5044_10b1_426f_9247_bb68_0e5f_e0c8);
        assert_eq!(MessageId::from_bytes(v4.as_bytes()), Err(IdError::MessageIdVersion(v4.to_string())));
        assert_eq!(MessageId::from_bytes(&[0; 15]), Err(IdError::MessageIdLength(15)));
    }
}
