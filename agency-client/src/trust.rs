//! What the client believes from the broker's receipts: a status only as
//! far as a signature proves it (PROTOCOL.md 8.4).
//!
//! The broker signs receipts with its log key, so a receipt proves what the
//! broker says. That is enough for ACCEPTED, DELIVERED, ESCALATED and
//! EXPIRED, which are the broker's own acts. ACKNOWLEDGED is a claim about
//! the recipient, and the broker has no key of the recipient's: the client
//! believes it only when the receipt carries a signed acknowledgement by
//! the recipient agency, for this message and this envelope, that verifies
//! against the directory. Answers must also be to the question asked: the
//! receipts of the requested message ids, each exactly once.

use std::collections::HashSet;

use referral_proto::Digest;
use referral_proto::ack::{AckError, SignedAck};
use referral_proto::directory::Directory;
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::pb;
use referral_proto::receipt::{Receipt, ReceiptStatus};

use crate::ClientError;

/// What the client knows about the message a receipt must be about. Every
/// field left `None` is not checked (the client does not know it).
#[derive(Debug, Default, Clone)]
pub struct Expect {
    pub message_id: Option<MessageId>,
    pub envelope_digest: Option<Digest>,
    pub sender: Option<AgencyId>,
    pub recipient: Option<AgencyId>,
    pub status: Option<ReceiptStatus>,
    /// The acknowledgement this client has just signed and sent. An
    /// ACKNOWLEDGED receipt carrying exactly it (statement and signature)
    /// needs no check of that signature: this client made it. Any other
    /// ack in the receipt (another person's, which came first) is verified.
    pub own_ack: Option<SignedAck>,
}

/// A receipt or an answer that the broker signed (or sent) but that does
/// not prove what it claims. Each names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptMismatch {
    #[error("the broker's ACKNOWLEDGED receipt for {0} carries no signed acknowledgement")]
    AckMissing(MessageId),
    #[error("the broker's {status} receipt for {message_id} carries a signed acknowledgement; only ACKNOWLEDGED may")]
    UnexpectedAck { message_id: MessageId, status: ReceiptStatus },
    #[error(
        "the acknowledgement in the broker's receipt for {message_id} is signed by agency {acker}, not by the recipient {recipient}"
    )]
    AckerNotRecipient { message_id: MessageId, acker: AgencyId, recipient: AgencyId },
    #[error("the acknowledgement in the broker's receipt for {message_id} is for another message ({ack_message_id})")]
    AckForAnotherMessage { message_id: MessageId, ack_message_id: MessageId },
    #[error(
        "the acknowledgement in the broker's receipt for {message_id} is for another envelope (digest {ack_digest}, the receipt's is {receipt_digest})"
    )]
    AckForAnotherEnvelope { message_id: MessageId, ack_digest: String, receipt_digest: String },
    #[error("the acknowledgement in the broker's receipt for {message_id} does not verify: {source}")]
    AckSignature {
        message_id: MessageId,
        #[source]
        source: AckError,
    },
    #[error("the broker answered with a receipt for {got} where one for {expected} was due")]
    AnotherMessage { expected: MessageId, got: MessageId },
    #[error("the broker's receipt for {message_id} names envelope digest {got}, not {expected}")]
    AnotherEnvelope { message_id: MessageId, expected: String, got: String },
    #[error("the broker's receipt for {message_id} names recipient {got}, but the message is for {expected}")]
    AnotherRecipient { message_id: MessageId, expected: AgencyId, got: AgencyId },
    #[error("the broker's receipt for {message_id} names sender {got}, but the message is from {expected}")]
    AnotherSender { message_id: MessageId, expected: AgencyId, got: AgencyId },
    #[error("the broker answered a {got} receipt for {message_id} where {expected} was due")]
    AnotherStatus { message_id: MessageId, expected: ReceiptStatus, got: ReceiptStatus },
    #[error("the broker answered receipts for {0}, which was not asked for")]
    NotRequested(MessageId),
    #[error("the broker answered receipts for {0} more than once")]
    AnsweredTwice(MessageId),
    #[error("the broker's answer lacks the receipts for {0}")]
    NotAnswered(MessageId),
}

/// Parses and checks one receipt: the broker's signature, that it is about
/// the expected message, and every rule about its acknowledgement.
pub fn check_receipt(dir: &Directory, raw: Option<pb::Receipt>, expect: &Expect) -> Result<Receipt, ClientError> {
    let r = Receipt::try_from(raw.ok_or(ClientError::Incomplete("receipt"))?)?;
    r.verify(&dir.broker_log_key)?;
    let s = &r.statement;
    let id = s.message_id;
    if let Some(expected) = expect.message_id
        && expected != id
    {
        return Err(ReceiptMismatch::AnotherMessage { expected, got: id }.into());
    }
    if let Some(expected) = expect.envelope_digest
        && expected != s.envelope_digest
    {
        let (expected, got) = (expected.to_hex(), s.envelope_digest.to_hex());
        return Err(ReceiptMismatch::AnotherEnvelope { message_id: id, expected, got }.into());
    }
    if let Some(expected) = &expect.sender
        && expected != &s.sender
    {
        return Err(ReceiptMismatch::AnotherSender {
            message_id: id,
            expected: expected.clone(),
            got: s.sender.clone(),
        }
        .into());
    }
    if let Some(expected) = &expect.recipient
        && expected != &s.recipient
    {
        let got = s.recipient.clone();
        return Err(ReceiptMismatch::AnotherRecipient { message_id: id, expected: expected.clone(), got }.into());
    }
    if let Some(expected) = expect.status
        && expected != s.status
    {
        return Err(ReceiptMismatch::AnotherStatus { message_id: id, expected, got: s.status }.into());
    }
    match (&r.ack, s.status) {
        (None, ReceiptStatus::Acknowledged) => return Err(ReceiptMismatch::AckMissing(id).into()),
        (None, _) => {}
        (Some(_), status) if status != ReceiptStatus::Acknowledged => {
            return Err(ReceiptMismatch::UnexpectedAck { message_id: id, status }.into());
        }
        (Some(ack), _) => {
            let a = &ack.statement;
            if a.acker_agency != s.recipient {
                let (acker, recipient) = (a.acker_agency.clone(), s.recipient.clone());
                return Err(ReceiptMismatch::AckerNotRecipient { message_id: id, acker, recipient }.into());
            }
            if a.message_id != id {
                return Err(
                    ReceiptMismatch::AckForAnotherMessage { message_id: id, ack_message_id: a.message_id }.into()
                );
            }
            if a.envelope_digest != s.envelope_digest {
                let (ack_digest, receipt_digest) = (a.envelope_digest.to_hex(), s.envelope_digest.to_hex());
                return Err(
                    ReceiptMismatch::AckForAnotherEnvelope { message_id: id, ack_digest, receipt_digest }.into()
                );
            }
            let own = expect
                .own_ack
                .as_ref()
                .is_some_and(|own| own.statement == ack.statement && own.signature == ack.signature);
            if !own {
                ack.verify(dir).map_err(|source| ReceiptMismatch::AckSignature { message_id: id, source })?;
            }
        }
    }
    Ok(r)
}

/// Checks a `GetReceipts` answer against the ids asked for: every answered
/// id was requested, none twice, none missing; each receipt is that
/// message's, from `sender`; and one message's receipts agree on its
/// envelope and recipient.
pub fn check_receipts_answer(
    dir: &Directory,
    requested: &[MessageId],
    sender: &AgencyId,
    answer: Vec<pb::MessageReceipts>,
) -> Result<Vec<(MessageId, Vec<Receipt>)>, ClientError> {
    let asked: HashSet<MessageId> = requested.iter().copied().collect();
    let mut answered = HashSet::new();
    let mut out = Vec::with_capacity(answer.len());
    for m in answer {
        let id = MessageId::from_bytes(&m.message_id).map_err(|e| ClientError::Invalid(e.to_string()))?;
        if !asked.contains(&id) {
            return Err(ReceiptMismatch::NotRequested(id).into());
        }
        if !answered.insert(id) {
            return Err(ReceiptMismatch::AnsweredTwice(id).into());
        }
        let mut expect = Expect { message_id: Some(id), sender: Some(sender.clone()), ..Expect::default() };
        let mut receipts = Vec::with_capacity(m.receipts.len());
        for raw in m.receipts {
            let r = check_receipt(dir, Some(raw), &expect)?;
            // The first receipt fixes the envelope and recipient the others must name.
            expect.envelope_digest = Some(r.statement.envelope_digest);
            expect.recipient = Some(r.statement.recipient.clone());
            receipts.push(r);
        }
        out.push((id, receipts));
    }
    if let Some(missing) = requested.iter().find(|id| !answered.contains(id)) {
        return Err(ReceiptMismatch::NotAnswered(*missing).into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use referral_proto::test_vectors::{Vectors, build};

    /// The vectors' message, ACKNOWLEDGED with `ack`, signed by the broker.
    fn acknowledged(v: &Vectors, ack: SignedAck) -> pb::Receipt {
        let mut s = v.receipt.statement.clone();
        s.status = ReceiptStatus::Acknowledged;
        pb::Receipt::from(&s.sign(&v.broker_log, Some(ack)))
    }

    fn expect(v: &Vectors, own_ack: Option<SignedAck>) -> Expect {
        Expect {
            message_id: Some(v.message_id),
            envelope_digest: Some(v.envelope.digest()),
            status: Some(ReceiptStatus::Acknowledged),
            own_ack,
            ..Expect::default()
        }
    }

    fn bad_signature(r: &Result<Receipt, ClientError>) -> bool {
        matches!(
            r,
            Err(ClientError::Untrusted(ReceiptMismatch::AckSignature { source: AckError::BadSignature(_), .. }))
        )
    }

    #[test]
    fn the_clients_own_ack_is_taken_as_sent_and_any_other_ack_is_verified() {
        let v = build();
        // The ack this client sent, carried back: accepted, with or without
        // telling the check it is its own.
        for own in [None, Some(v.ack.clone())] {
            let r = check_receipt(&v.directory, Some(acknowledged(&v, v.ack.clone())), &expect(&v, own)).unwrap();
            assert_eq!(r.ack.as_ref(), Some(&v.ack));
        }
        // The same statement under another signature is not the one sent:
        // it is verified, and refused.
        let mut forged = v.ack.clone();
        forged.signature[0] ^= 1;
        for own in [None, Some(v.ack.clone())] {
            let r = check_receipt(&v.directory, Some(acknowledged(&v, forged.clone())), &expect(&v, own));
            assert!(bad_signature(&r), "{r:?}");
        }
        // Another ack (someone else's, which came first) with a bad
        // signature: verified and refused even though the client sent one.
        let mut other = v.ack.clone();
        other.statement.acknowledged_by = "jour-2".into();
        let r = check_receipt(&v.directory, Some(acknowledged(&v, other)), &expect(&v, Some(v.ack.clone())));
        assert!(bad_signature(&r), "{r:?}");
    }
}
