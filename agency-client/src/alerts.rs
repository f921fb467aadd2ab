//! The subscription: alerts for this principal's agency, each envelope
//! verified against the directory and opened with the agency's keys before
//! anyone sees it. A referral that fails verification is reported as
//! unreadable, never shown. Also one message fetched by id
//! ([`Client::fetch`]), opened the same way.

use std::sync::Arc;

use referral_proto::Digest;
use referral_proto::ack::SignedAck;
use referral_proto::directory::Directory;
use referral_proto::envelope::{Envelope, Urgency};
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::notice::ReferralNotice;
use referral_proto::pb;
use referral_proto::receipt::{Receipt, ReceiptStatus};
use referral_proto::seal::{OpenError, VerifyError, open};
use referral_proto::time::Timestamp;

use crate::trust::{Expect, check_receipt};
use crate::{Client, ClientError};

/// A referral for this agency, verified and decrypted.
#[derive(Debug, Clone)]
pub struct IncomingReferral {
    pub message_id: MessageId,
    pub sender: AgencyId,
    pub sender_name: String,
    pub sequence: u64,
    pub urgency: Urgency,
    pub created_at: Timestamp,
    pub ack_deadline: Timestamp,
    pub redelivery: bool,
    pub escalated: bool,
    /// Computed here from the envelope, not taken from the broker.
    pub envelope_digest: Digest,
    pub notice: ReferralNotice,
}

#[derive(Debug, Clone)]
pub enum AlertEvent {
    Referral(Box<IncomingReferral>),
    /// An envelope that failed verification or decryption; its content is
    /// never shown. Report it to the sender and the federation.
    Unreadable {
        message_id: Option<MessageId>,
        sequence: u64,
        error: String,
    },
    /// Someone at this agency acknowledged a message.
    Settled {
        message_id: MessageId,
        sequence: u64,
        acknowledged_by: String,
        at: Timestamp,
    },
    /// An ack deadline passed. Metadata only.
    Escalation {
        message_id: MessageId,
        sender: String,
        recipient: String,
        urgency: Option<Urgency>,
        deadline: Timestamp,
        sequence: u64,
    },
    /// Every message waiting when the stream opened has been sent.
    CaughtUp {
        sequence: u64,
    },
    Heartbeat {
        at: Timestamp,
    },
}

/// The alert stream.
#[derive(Debug)]
pub struct Alerts<'a> {
    client: &'a Client,
    inner: tonic::Streaming<pb::Alert>,
    dir: Arc<Directory>,
}

impl Client {
    /// Opens the alert stream for this principal's agency.
    pub async fn subscribe(&self) -> Result<Alerts<'_>, ClientError> {
        let dir = self.directory().await?;
        let inner = self.broker().subscribe(pb::SubscribeRequest {}).await?.into_inner();
        Ok(Alerts { client: self, inner, dir })
    }
}

impl Alerts<'_> {
    /// The next event; `None` when the broker ends the stream normally.
    pub async fn next(&mut self) -> Result<Option<AlertEvent>, ClientError> {
        let Some(alert) = self.inner.message().await? else {
            return Ok(None);
        };
        let Some(event) = alert.event else {
            return Err(ClientError::Incomplete("alert event"));
        };
        Ok(Some(match event {
            pb::alert::Event::Delivery(d) => self.delivery(d).await?,
            pb::alert::Event::Settled(s) => {
                let ack = SignedAck::try_from(s.ack.ok_or(ClientError::Incomplete("ack"))?)?;
                ack.verify(&self.dir)?;
                // Settled means a colleague at this agency took it: the ack must
                // be this agency's, for the message the alert names.
                let ours = &self.client.principal().agency;
                if &ack.statement.acker_agency != ours || s.message_id != ack.statement.message_id.as_bytes().as_slice()
                {
                    return Err(ClientError::Invalid(format!(
                        "the broker's settled alert for {} carries an acknowledgement by {} of {}, not one by this agency ({ours})",
                        MessageId::from_bytes(&s.message_id).map_or_else(|_| "?".to_owned(), |m| m.to_string()),
                        ack.statement.acker_agency,
                        ack.statement.message_id
                    )));
                }
                AlertEvent::Settled {
                    message_id: ack.statement.message_id,
                    sequence: s.sequence,
                    acknowledged_by: ack.statement.acknowledged_by.clone(),
                    at: ack.statement.acknowledged_at,
                }
            }
            pb::alert::Event::Escalation(e) => AlertEvent::Escalation {
                message_id: MessageId::from_bytes(&e.message_id).map_err(|e| ClientError::Invalid(e.to_string()))?,
                sender: e.sender,
                recipient: e.recipient,
                urgency: Urgency::from_pb(e.urgency),
                deadline: Timestamp(e.deadline_ms),
                sequence: e.sequence,
            },
            pb::alert::Event::CaughtUp(c) => AlertEvent::CaughtUp { sequence: c.sequence },
            pb::alert::Event::Heartbeat(h) => AlertEvent::Heartbeat { at: Timestamp(h.at_ms) },
        }))
    }

    async fn delivery(&mut self, d: pb::Delivery) -> Result<AlertEvent, ClientError> {
        self.client.open_delivery(&mut self.dir, d).await
    }
}

/// One message of this agency, fetched by id ([`Client::fetch`]).
#[derive(Debug, Clone)]
pub enum Fetched {
    /// Waiting for an acknowledgement: verified and opened (or
    /// [`AlertEvent::Unreadable`]), exactly as a subscription shows it.
    Waiting(AlertEvent),
    /// Acknowledged: the broker's ACKNOWLEDGED receipt, checked, carrying
    /// the acknowledgement this agency signed (who, when).
    Acknowledged(Receipt),
    /// Expired unacknowledged: the broker's EXPIRED receipt, checked; its
    /// statement's `at` is when.
    Expired(Receipt),
}

impl Client {
    /// Verifies and opens one delivery with this agency's keys; what fails
    /// is [`AlertEvent::Unreadable`]. `dir` is refreshed when the envelope
    /// names a key newer than it.
    async fn open_delivery(&self, dir: &mut Arc<Directory>, d: pb::Delivery) -> Result<AlertEvent, ClientError> {
        let raw = d.envelope.ok_or(ClientError::Incomplete("envelope"))?;
        let id_hint = raw.header.as_ref().and_then(|h| MessageId::from_bytes(&h.message_id).ok());
        let unreadable = |error: String| AlertEvent::Unreadable { message_id: id_hint, sequence: d.sequence, error };
        let envelope = match Envelope::try_from(raw) {
            Ok(e) => e,
            Err(e) => return Ok(unreadable(e.to_string())),
        };
        let mut bundles = self.bundles();
        let mut result = open(&envelope, dir, &bundles);
        if matches!(
            result,
            Err(OpenError::Verify(
                VerifyError::UnknownSender(_)
                    | VerifyError::UnknownSenderKey { .. }
                    | VerifyError::UnknownRecipientKey { .. }
            ))
        ) {
            // The sender may be an agency, or use a key, published after our
            // copy of the directory.
            *dir = self.refresh_directory().await?;
            result = open(&envelope, dir, &bundles);
        }
        if matches!(result, Err(OpenError::NoMatchingKey(_))) {
            // Sealed to a key of ours this client has not loaded yet (a rotation).
            self.reload_keys()?;
            bundles = self.bundles();
            result = open(&envelope, dir, &bundles);
        }
        let h = &envelope.header;
        match result {
            Ok(notice) => Ok(AlertEvent::Referral(Box::new(IncomingReferral {
                message_id: h.message_id,
                sender: h.sender.clone(),
                sender_name: dir.agency(&h.sender).map(|a| a.display_name.clone()).unwrap_or_default(),
                sequence: d.sequence,
                urgency: h.urgency,
                created_at: h.created_at,
                ack_deadline: Timestamp(d.ack_deadline_ms),
                redelivery: d.redelivery,
                escalated: d.escalated,
                envelope_digest: envelope.digest(),
                notice,
            }))),
            Err(e) => Ok(unreadable(e.to_string())),
        }
    }

    /// One message addressed to this agency, by id, whatever the length of
    /// its queue (`Fetch`, PROTOCOL.md 10.7). A waiting message is verified
    /// and opened like an alert (the broker records it as delivered to this
    /// principal); a settled one is believed only from its checked receipt.
    /// An unknown id, or one addressed elsewhere, is the broker's
    /// `NOT_FOUND` / `unknown_message`.
    pub async fn fetch(&self, message_id: MessageId) -> Result<Fetched, ClientError> {
        use pb::fetch_response::Outcome;
        let mut dir = self.directory().await?;
        let req = pb::FetchRequest { message_id: message_id.as_bytes().to_vec() };
        let answer = self.broker().fetch(req).await?.into_inner();
        let ours = self.principal().agency.clone();
        let settled = |status| Expect {
            message_id: Some(message_id),
            recipient: Some(ours.clone()),
            status: Some(status),
            ..Expect::default()
        };
        match answer.outcome.ok_or(ClientError::Incomplete("fetch outcome"))? {
            Outcome::Waiting(d) => {
                // The answer must be the message asked for.
                let got = d.envelope.as_ref().and_then(|e| e.header.as_ref()).map(|h| h.message_id.as_slice());
                if got != Some(message_id.as_bytes().as_slice()) {
                    let got =
                        got.and_then(|b| MessageId::from_bytes(b).ok()).map_or("none".to_owned(), |m| m.to_string());
                    return Err(ClientError::Invalid(format!(
                        "the broker answered the fetch of {message_id} with another message ({got})"
                    )));
                }
                Ok(Fetched::Waiting(self.open_delivery(&mut dir, d).await?))
            }
            Outcome::Acknowledged(r) => {
                Ok(Fetched::Acknowledged(check_receipt(&dir, Some(r), &settled(ReceiptStatus::Acknowledged))?))
            }
            Outcome::Expired(r) => {
                Ok(Fetched::Expired(check_receipt(&dir, Some(r), &settled(ReceiptStatus::Expired))?))
            }
        }
    }
}
