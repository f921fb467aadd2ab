//! The recipient's signed acknowledgement: proof that a person at the
//! recipient agency took the referral. The broker relays it to the sender as
//! part of the ACKNOWLEDGED receipt and keeps it in the audit log.

use crate::Digest;
use crate::canonical::{Canonical, label};
use crate::directory::Directory;
use crate::ids::{AgencyId, IdError, KeyId, MessageId};
use crate::keys::{AgencyKeyBundle, AgencyPublicKey};
use crate::notice::contains_personal_identity_number;
use crate::pb;
use crate::time::Timestamp;

/// What the acknowledging agency signs.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AckStatement {
    pub message_id: MessageId,
    pub envelope_digest: Digest,
    pub acknowledged_at: Timestamp,
    pub acker_agency: AgencyId,
    /// The agency's identifier for the person (a staff id or on-call
    /// principal name), 1..=64 printable characters. Never the subject's data.
    pub acknowledged_by: String,
    pub signer_key_id: KeyId,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedAck {
    pub statement: AckStatement,
    pub signature: [u8; 64],
}

/// Why an acknowledgement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("ack lacks {0}")]
    Missing(&'static str),
    #[error("ack field {field}: {source}")]
    Id {
        field: &'static str,
        #[source]
        source: IdError,
    },
    #[error("ack envelope digest must be 32 bytes")]
    DigestLength,
    #[error("ack signature must be 64 bytes")]
    SignatureLength,
    #[error(
        "ack acknowledged_by must be 1 to 64 characters, not only whitespace, without control or bidirectional formatting characters"
    )]
    AcknowledgedBy,
    /// The label would sit in the permanent audit log forever, so a
    /// personal identity number (anyone's) is refused outright.
    #[error("ack acknowledged_by must not contain a personal identity number")]
    AcknowledgedByPersonalNumber,
    #[error("acking agency {0} is not in the directory")]
    UnknownAgency(AgencyId),
    #[error("ack key {key_id} is not a key of agency {agency} in the directory")]
    UnknownKey { agency: AgencyId, key_id: KeyId },
    #[error("ack key {key_id} is not valid at {at}")]
    KeyNotValid { key_id: KeyId, at: Timestamp },
    #[error("ack signature does not verify with key {0}")]
    BadSignature(KeyId),
}

/// PROTOCOL.md 7.1, rule 5: checked when an ack is signed and when one is
/// read from the wire, so the sender's client and the broker refuse alike.
fn check_acknowledged_by(s: &str) -> Result<(), AckError> {
    if !(1..=64).contains(&s.chars().count()) || !crate::text::line_ok(s) || s.trim().is_empty() {
        return Err(AckError::AcknowledgedBy);
    }
    if contains_personal_identity_number(s) {
        return Err(AckError::AcknowledgedByPersonalNumber);
    }
    Ok(())
}

impl AckStatement {
    /// canonical(`referral.v1/ack-signature`, message id, envelope digest,
    /// i64 acknowledged_at_ms, acker agency, acknowledged_by, signer key id).
    pub fn signing_input(&self) -> Vec<u8> {
        let mut c = Canonical::new(label::ACK_SIGNATURE);
        c.bytes(self.message_id.as_bytes())
            .bytes(self.envelope_digest.as_bytes())
            .i64(self.acknowledged_at.0)
            .text(self.acker_agency.as_str())
            .text(&self.acknowledged_by)
            .bytes(self.signer_key_id.as_bytes());
        c.finish()
    }
}

/// Signs an acknowledgement of `message_id` with the agency's bundle.
pub fn sign_ack(
    message_id: MessageId,
    envelope_digest: Digest,
    acknowledged_at: Timestamp,
    acknowledged_by: &str,
    bundle: &AgencyKeyBundle,
) -> Result<SignedAck, AckError> {
    check_acknowledged_by(acknowledged_by)?;
    let statement = AckStatement {
        message_id,
        envelope_digest,
        acknowledged_at,
        acker_agency: bundle.agency().clone(),
        acknowledged_by: acknowledged_by.to_owned(),
        signer_key_id: bundle.key_id(),
    };
    let signature = bundle.sign(&statement.signing_input());
    Ok(SignedAck { statement, signature })
}

impl SignedAck {
    /// Checks the signature with the acker's key from the directory, the key
    /// judged at the signed `acknowledged_at`: all a party can check that does
    /// not know when the broker received the ack. The broker (and the
    /// auditor, from the log) judge it at the broker's receive time with
    /// [`SignedAck::verify_at`], since the signer chooses `acknowledged_at`.
    pub fn verify(&self, directory: &Directory) -> Result<(), AckError> {
        self.verify_at(directory, self.statement.acknowledged_at).map(drop)
    }

    /// Checks the signature with the acker's key from the directory; the key
    /// must be valid at `key_valid_at`. Returns the key that signed.
    pub fn verify_at<'d>(
        &self,
        directory: &'d Directory,
        key_valid_at: Timestamp,
    ) -> Result<&'d AgencyPublicKey, AckError> {
        let s = &self.statement;
        let agency =
            directory.agency(&s.acker_agency).ok_or_else(|| AckError::UnknownAgency(s.acker_agency.clone()))?;
        let key = agency
            .key(&s.signer_key_id)
            .ok_or_else(|| AckError::UnknownKey { agency: s.acker_agency.clone(), key_id: s.signer_key_id })?;
        if !key.valid_at(key_valid_at) {
            return Err(AckError::KeyNotValid { key_id: key.key_id, at: key_valid_at });
        }
        key.signing.verify(&s.signing_input(), &self.signature).map_err(|_| AckError::BadSignature(key.key_id))?;
        Ok(key)
    }
}

impl TryFrom<pb::SignedAck> for SignedAck {
    type Error = AckError;

    fn try_from(p: pb::SignedAck) -> Result<Self, AckError> {
        let s = p.statement.ok_or(AckError::Missing("statement"))?;
        let id = |field| move |source| AckError::Id { field, source };
        check_acknowledged_by(&s.acknowledged_by)?;
        Ok(SignedAck {
            statement: AckStatement {
                message_id: MessageId::from_bytes(&s.message_id).map_err(id("message_id"))?,
                envelope_digest: Digest::from_slice(&s.envelope_digest).ok_or(AckError::DigestLength)?,
                acknowledged_at: Timestamp(s.acknowledged_at_ms),
                acker_agency: AgencyId::new(s.acker_agency).map_err(id("acker_agency"))?,
                acknowledged_by: s.acknowledged_by,
                signer_key_id: KeyId::from_slice(&s.signer_key_id).map_err(id("signer_key_id"))?,
            },
            signature: p.signature.as_slice().try_into().map_err(|_| AckError::SignatureLength)?,
        })
    }
}

impl From<&SignedAck> for pb::SignedAck {
    fn from(a: &SignedAck) -> Self {
        let s = &a.statement;
        pb::SignedAck {
            statement: Some(pb::AckStatement {
                message_id: s.message_id.as_bytes().to_vec(),
                envelope_digest: s.envelope_digest.0.to_vec(),
                acknowledged_at_ms: s.acknowledged_at.0,
                acker_agency: s.acker_agency.to_string(),
                acknowledged_by: s.acknowledged_by.clone(),
                signer_key_id: s.signer_key_id.as_bytes().to_vec(),
            }),
            signature: a.signature.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_vectors::{CREATED_AT, build};

    #[test]
    fn acknowledged_by_refuses_personal_numbers_and_terminal_text() {
        let v = build();
        let sign = |by: &str| sign_ack(v.envelope.header.message_id, v.envelope.digest(), CREATED_AT, by, &v.recipient);
        for pin in ["198503122387", "19850312-2387", "8503122383", "850312-2383", "jour 850312+2383"] {
            assert_eq!(sign(pin).unwrap_err(), AckError::AcknowledgedByPersonalNumber, "{pin}");
        }
        for bad in ["", "   ", "jour\u{1b}[2K", "jour\n1", "\u{202E}1-ruoj", &"x".repeat(65)] {
            assert_eq!(sign(bad).unwrap_err(), AckError::AcknowledgedBy, "{bad:?}");
        }
        let ok = sign("jour-1").unwrap();
        // The same rule when reading from the wire (what the broker does).
        let mut p = pb::SignedAck::from(&ok);
        p.statement.as_mut().unwrap().acknowledged_by = "19850312-2387".into();
        assert_eq!(SignedAck::try_from(p.clone()).unwrap_err(), AckError::AcknowledgedByPersonalNumber);
        p.statement.as_mut().unwrap().acknowledged_by = "a\u{9b}b".into();
        assert_eq!(SignedAck::try_from(p).unwrap_err(), AckError::AcknowledgedBy);
        assert_eq!(SignedAck::try_from(pb::SignedAck::from(&ok)).unwrap(), ok);
    }
}
