//! The subscription: alerts for this principal's agency, each envelope
//! verified against the directory and opened with the agency's keys before
//! anyone sees it. A referral that fails verification is reported as
//! unreadable, never shown.

use std::sync::Arc;

use referral_proto::Digest;
use referral_proto::ack::SignedAck;
use referral_proto::directory::Directory;
use referral_proto::envelope::{Envelope, Urgency};
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::notice::ReferralNotice;
use referral_proto::pb;
use referral_proto::seal::{OpenError, VerifyError, open};
use referral_proto::time::Timestamp;

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
        let raw = d.envelope.ok_or(ClientError::Incomplete("envelope"))?;
        let id_hint = raw.header.as_ref().and_then(|h| MessageId::from_bytes(&h.message_id).ok());
        let unreadable = |error: String| AlertEvent::Unreadable { message_id: id_hint, sequence: d.sequence, error };
        let envelope = match Envelope::try_from(raw) {
            Ok(e) => e,
            Err(e) => return Ok(unreadable(e.to_string())),
        };
        let mut bundles = self.client.bundles();
        let mut result = open(&envelope, &self.dir, &bundles);
        if matches!(
            result,
            Err(OpenError::Verify(VerifyError::UnknownSenderKey { .. } | VerifyError::UnknownRecipientKey { .. }))
        ) {
            // The sender may use a key published after our copy of the directory.
            self.dir = self.client.refresh_directory().await?;
            result = open(&envelope, &self.dir, &bundles);
        }
        if matches!(result, Err(OpenError::NoMatchingKey(_))) {
            // Sealed to a key of ours this client has not loaded yet (a rotation).
            self.client.reload_keys()?;
            bundles = self.client.bundles();
            result = open(&envelope, &self.dir, &bundles);
        }
        let h = &envelope.header;
        match result {
            Ok(notice) => Ok(AlertEvent::Referral(Box::new(IncomingReferral {
                message_id: h.message_id,
                sender: h.sender.clone(),
                sender_name: self.dir.agency(&h.sender).map(|a| a.display_name.clone()).unwrap_or_default(),
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
}

/// Finds `message_id` among the messages waiting for this agency and returns
/// the digest of its verified envelope.
pub(crate) async fn find_waiting(client: &Client, message_id: MessageId) -> Result<Digest, ClientError> {
    let mut alerts = client.subscribe().await?;
    while let Some(ev) = alerts.next().await? {
        match ev {
            AlertEvent::Referral(r) if r.message_id == message_id => return Ok(r.envelope_digest),
            AlertEvent::Unreadable { message_id: Some(id), error, .. } if id == message_id => {
                return Err(ClientError::Invalid(format!(
                    "message {id} failed verification and must not be acknowledged: {error}"
                )));
            }
            AlertEvent::CaughtUp { .. } => break,
            _ => {}
        }
    }
    Err(ClientError::NotWaiting(message_id))
}
