//! `referral.v1.ReferralBroker`: submit (one by one or on a stream), subscribe, fetch, ack, receipts, directory.

use std::sync::Arc;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use prost::Message as _;
use referral_proto::MAX_ENVELOPE_BYTES;
use referral_proto::ack::{AckError, SignedAck};
use referral_proto::envelope::Envelope;
use referral_proto::ids::{MessageId, Principal};
use referral_proto::pb;
use referral_proto::pb::referral_broker_server::ReferralBroker;
use referral_proto::receipt::ReceiptStatus;
use referral_proto::seal::{VerifyError, verify_envelope_at};
use referral_proto::time::Timestamp;
use tonic::{Request, Response, Status};
use tonic_types::StatusExt as _;
use tracing::Instrument as _;

use super::streams::{BoundedStream, Producer, bounded};
use crate::authz::{self, Rpc};
use crate::commit::DeliveryOutcome;
use crate::error::BrokerError;
use crate::hub::HubEvent;
use crate::refusals::{self, Evidence, Refusal};
use crate::state::BrokerState;
use crate::store::records::{MessageRecord, MessageState};
use crate::store::tables::{Durable, Tables};
use crate::trust::Connection;

/// Most message ids in one GetReceipts call.
pub const MAX_RECEIPT_QUERY: usize = 1000;
const PAGE: usize = 64;
/// Reads a Fetch makes before it gives up on an answer: each pass that
/// finds no answer waited for the commit of a settlement in flight, so only
/// a store whose commits keep failing takes more than two.
const FETCH_PASSES: usize = 3;
/// The credit window of a SubmitStream: envelopes a client may have sent
/// and not yet seen answered. Announced in the stream's first response.
/// Within the default per-principal cap on concurrent requests (each
/// envelope in the window holds one, as a unary Submit does), so that a few
/// streams of one principal are not refused for concurrency.
pub const SUBMIT_WINDOW: u32 = 64;

#[derive(Debug, Clone)]
pub struct ReferralService {
    state: Arc<BrokerState>,
}

impl ReferralService {
    pub fn new(state: Arc<BrokerState>) -> Self {
        Self { state }
    }

    /// Answers a refusal of an authenticated caller's request; recorded by
    /// what it proves (see [`crate::refusals`]).
    async fn rejected(&self, principal: &Principal, e: BrokerError, evidence: Evidence) -> Status {
        refusals::refuse(&self.state, principal, e, evidence).await
    }

    /// A signed time must lie within the skew window around the broker's clock.
    fn within_skew(&self, what: &'static str, signed_at: Timestamp, now: Timestamp) -> Result<(), BrokerError> {
        let c = &self.state.config;
        let skew = signed_at.0 - now.0;
        if skew > c.delivery.max_clock_skew_future_ms || -skew > c.delivery.max_clock_skew_past_ms {
            return Err(BrokerError::ClockSkew {
                what,
                skew_s: skew / 1000,
                max_future_s: c.delivery.max_clock_skew_future_ms / 1000,
                max_past_s: c.delivery.max_clock_skew_past_ms / 1000,
            });
        }
        Ok(())
    }

    async fn submit_inner(&self, principal: &Principal, req: pb::SubmitRequest) -> Result<pb::SubmitResponse, Status> {
        let state = &self.state;
        let Some(pb_env) = req.envelope else {
            return Err(self.rejected(principal, BrokerError::Missing("envelope"), Evidence::Unsigned).await);
        };
        let size = pb_env.encoded_len();
        if size > MAX_ENVELOPE_BYTES {
            let e = BrokerError::Oversize { size, max: MAX_ENVELOPE_BYTES };
            return Err(self.rejected(principal, e, Evidence::Unsigned).await);
        }
        let envelope = match Envelope::try_from(pb_env) {
            Ok(e) => e,
            Err(e) => {
                let e = BrokerError::MalformedEnvelope(e.to_string());
                return Err(self.rejected(principal, e, Evidence::Unsigned).await);
            }
        };
        let id = envelope.header.message_id;
        tracing::Span::current().record("message_id", tracing::field::display(id));
        let digest = envelope.digest();
        let dir = state.directory.current();
        if let Err(e) =
            authz::check_route(principal, &envelope.header, &dir.directory, &state.config.policy.allow_same_kind)
        {
            return Err(self.rejected(principal, e, Evidence::Unsigned).await);
        }
        // The sender's key must be valid when the broker receives the
        // envelope: the sender chooses created_at, so a key judged at that
        // time would let a retired (perhaps stolen) key sign today. Only a
        // verified signature makes a refusal worth logging one by one.
        let now = state.clock.now();
        let checked = match verify_envelope_at(&envelope, &dir.directory, now) {
            Err(VerifyError::UnknownRecipient(r)) => Err((BrokerError::UnknownRecipient(r), Evidence::Unsigned)),
            Err(VerifyError::SenderKeyNotValid { key_id, at }) => {
                Err((BrokerError::KeyNotValid { what: "sender", key_id, at }, Evidence::Unsigned))
            }
            Err(other) => Err((BrokerError::EnvelopeSignature(other.to_string()), Evidence::Unsigned)),
            Ok(_) => self
                .within_skew("envelope created_at", envelope.header.created_at, now)
                .map_err(|e| (e, Evidence::Signed { message_id: id, digest })),
        };
        let outcome = match checked {
            Ok(()) => {
                let encoded = envelope.encode();
                state.committer.submit(envelope, encoded, principal.uri()).await?
            }
            // A late retry of an accepted envelope still gets its original
            // receipt once the clock or the directory would refuse it afresh
            // (equal digests mean equal bytes, verified the first time). The
            // committer decides, so that it sees only durable state.
            // A refusal is recorded by the ledger, which decides it.
            Err((e, evidence)) => {
                state.committer.submit_if_duplicate(envelope, Refusal::new(principal.uri(), e, evidence)).await?
            }
        };
        tracing::debug!(duplicate = outcome.duplicate, "accepted");
        let outcome_label = if outcome.duplicate { "duplicate" } else { "accepted" };
        metrics::counter!(crate::metrics::SUBMITS, "outcome" => outcome_label).increment(1);
        Ok(pb::SubmitResponse { receipt: Some(signed(state, outcome.receipt)?), duplicate: outcome.duplicate })
    }

    /// One envelope of a SubmitStream: admitted by the same limits and
    /// checked, recorded and committed by the same code as a unary Submit.
    async fn submit_one(&self, principal: &Principal, req: pb::SubmitRequest) -> Result<pb::SubmitResponse, Status> {
        let _permit = self.state.limiter.submit(&principal.uri())?;
        self.submit_inner(principal, req).await
    }

    /// The SubmitStream loop: announces the window, then reads envelopes
    /// while it answers them in order. Every envelope is submitted as soon
    /// as it arrives (concurrently, on its own task, so that one group
    /// commit covers many); its result is sent once its own submit has
    /// answered, which is after the commit that made it durable, and after
    /// every earlier envelope's result.
    async fn run_submit_stream(
        self,
        conn: Arc<Connection>,
        principal: Principal,
        mut inbound: tonic::Streaming<pb::SubmitStreamRequest>,
        out: Producer<pb::SubmitStreamResponse>,
    ) -> Result<(), BrokerError> {
        use pb::submit_result::Outcome;
        use pb::submit_stream_response::Event;
        let window = Event::Window(pb::SubmitWindow { max_unanswered: SUBMIT_WINDOW });
        if out.send(pb::SubmitStreamResponse { event: Some(window) }).await.is_err() {
            return Ok(());
        }
        let state = self.state.clone();
        let mut pending = FuturesOrdered::new();
        let mut next_index = 0u64;
        let mut inbound_open = true;
        while inbound_open || !pending.is_empty() {
            tokio::select! {
                biased;
                Some((index, answer)) = pending.next(), if !pending.is_empty() => {
                    let outcome = match answer {
                        Ok(Ok(response)) => Outcome::Accepted(response),
                        Ok(Err(status)) => Outcome::Refused(refusal(&status)),
                        // The submit's task panicked: nothing is known of it.
                        Err(_) => Outcome::Refused(refusal(&BrokerError::StorageFailed.into())),
                    };
                    let result = Event::Result(pb::SubmitResult { index, outcome: Some(outcome) });
                    if out.send(pb::SubmitStreamResponse { event: Some(result) }).await.is_err() {
                        return Ok(());
                    }
                }
                request = inbound.message(), if inbound_open => match request {
                    Ok(Some(request)) => {
                        // A result sent is a result answered: a client that
                        // waits for one before sending more never gets here.
                        if pending.len() >= SUBMIT_WINDOW as usize {
                            let e = BrokerError::SubmitWindowExceeded { window: SUBMIT_WINDOW };
                            crate::metrics::rejected(e.reason());
                            out.end(e.into());
                            return Ok(());
                        }
                        let (me, p, index) = (self.clone(), principal.clone(), next_index);
                        next_index += 1;
                        let span = tracing::info_span!(
                            "submit", principal = %p, stream_index = index, message_id = tracing::field::Empty
                        );
                        let submit = async move {
                            me.submit_one(&p, pb::SubmitRequest { envelope: request.envelope }).await
                        };
                        let task = state.tasks.spawn(submit.instrument(span));
                        pending.push_back(async move { (index, task.await) });
                    }
                    Ok(None) => inbound_open = false,
                    // The client cancelled, or sent what does not decode: the
                    // stream ends with that status (a cancelled client sees
                    // nothing). Submits under way finish; a resend under the
                    // same message ids gets their receipts.
                    Err(status) => {
                        out.end(status);
                        return Ok(());
                    }
                },
                why = conn.ended() => {
                    out.end(why.into());
                    return Ok(());
                }
                _ = out.closed() => return Ok(()),
                _ = state.shutdown.cancelled() => {
                    out.end(BrokerError::ShuttingDown.into());
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    async fn ack_inner(&self, principal: &Principal, req: pb::AckRequest) -> Result<pb::AckResponse, Status> {
        let state = &self.state;
        let Some(pb_ack) = req.ack else {
            return Err(self.rejected(principal, BrokerError::Missing("ack"), Evidence::Unsigned).await);
        };
        let ack = match SignedAck::try_from(pb_ack) {
            // A signed note digest must come with the note: the sender could
            // never read a note the broker was not given.
            Ok(a) if a.statement.note_digest.is_some() && a.note.is_none() => {
                let e = BrokerError::MalformedAck("the ack signs a note_digest but carries no note".into());
                return Err(self.rejected(principal, e, Evidence::Unsigned).await);
            }
            Ok(a) => a,
            Err(e) => {
                let e = match e {
                    AckError::NoteTooLarge { size, max } => BrokerError::NoteTooLarge { size, max },
                    other => BrokerError::MalformedAck(other.to_string()),
                };
                return Err(self.rejected(principal, e, Evidence::Unsigned).await);
            }
        };
        let s = &ack.statement;
        tracing::Span::current().record("message_id", tracing::field::display(s.message_id));
        if s.acker_agency != principal.agency {
            let e = BrokerError::AckerMismatch {
                acker: s.acker_agency.clone(),
                principal_agency: principal.agency.clone(),
            };
            return Err(self.rejected(principal, e, Evidence::Unsigned).await);
        }
        // As for envelopes: the key must be valid at the broker's receive
        // time, and the signed time within the skew window on both sides (the
        // committer also refuses an ack signed before the message's submission).
        let now = state.clock.now();
        if let Err(e) = ack.verify_at(&state.directory.current().directory, now) {
            let e = match e {
                AckError::KeyNotValid { key_id, at } => BrokerError::KeyNotValid { what: "ack", key_id, at },
                other => BrokerError::AckSignature(other.to_string()),
            };
            return Err(self.rejected(principal, e, Evidence::Unsigned).await);
        }
        let evidence = Evidence::Signed { message_id: s.message_id, digest: s.envelope_digest };
        if let Err(e) = self.within_skew("ack acknowledged_at", s.acknowledged_at, now) {
            return Err(self.rejected(principal, e, evidence).await);
        }
        let outcome = state.committer.ack(ack, principal.clone()).await?;
        tracing::debug!(already = outcome.already_acknowledged, "acknowledged");
        Ok(pb::AckResponse {
            receipt: Some(signed(state, outcome.receipt)?),
            already_acknowledged: outcome.already_acknowledged,
        })
    }

    /// One message of the caller's agency, by id, in point reads only (its
    /// record, its few receipts, its envelope): the cost does not grow with
    /// the queue. A waiting message is recorded as delivered to the caller
    /// on the path Subscribe's deliveries take, the single writer's
    /// (`Committer::delivered`), and returned only once that record is
    /// durable; a settled one is answered from its durable receipts.
    async fn fetch_inner(
        &self,
        conn: &Connection,
        principal: &Principal,
        req: pb::FetchRequest,
    ) -> Result<pb::FetchResponse, Status> {
        use pb::fetch_response::Outcome;
        let state = &self.state;
        let id = match MessageId::from_bytes(&req.message_id) {
            Ok(id) => id,
            Err(e) => {
                let e = BrokerError::InvalidRequest(e.to_string());
                return Err(self.rejected(principal, e, Evidence::Unsigned).await);
            }
        };
        tracing::Span::current().record("message_id", tracing::field::display(id));
        let me = principal.uri();
        for _ in 0..FETCH_PASSES {
            // Another agency's message, and one not yet durable, are answered
            // exactly like an unknown one: no one learns which ids exist.
            let Some((rec, receipts)) =
                durable_receipts(state, &id)?.filter(|(rec, _)| rec.recipient == principal.agency.as_str())
            else {
                return Err(self.rejected(principal, BrokerError::UnknownMessage(id), Evidence::Unsigned).await);
            };
            for r in receipts.into_iter().rev() {
                match r.statement.as_ref().and_then(|s| ReceiptStatus::from_code(s.status)) {
                    Some(ReceiptStatus::Acknowledged) => {
                        return Ok(pb::FetchResponse { outcome: Some(Outcome::Acknowledged(signed(state, r)?)) });
                    }
                    Some(ReceiptStatus::Expired) => {
                        return Ok(pb::FetchResponse { outcome: Some(Outcome::Expired(signed(state, r)?)) });
                    }
                    _ => {}
                }
            }
            // Durably waiting. The store may already show a settlement that
            // is not durable yet; then there is nothing to deliver, and the
            // next pass, after that commit, reads how it was settled.
            let Some(d) = delivery(state, &id, rec.sequence, &me)? else {
                state.committer.barrier().await;
                continue;
            };
            still_trusted(state, conn)?;
            // Nothing to put into a stream: the answer is this call's, sent
            // once the writer says the delivery is on record.
            let handoff: crate::commit::Handoff = Box::new(|| {});
            match state.committer.delivered(id, me.clone(), conn.ended_token(), handoff).await? {
                DeliveryOutcome::Sent => return Ok(pb::FetchResponse { outcome: Some(Outcome::Waiting(d)) }),
                // Settled meanwhile, durably now: the next pass says how.
                DeliveryOutcome::NotWaiting => {}
                DeliveryOutcome::Untrusted => return Err(conn.check().err().unwrap_or(BrokerError::Revoked).into()),
            }
        }
        Err(BrokerError::StorageFailed.into())
    }
}

/// What a unary Submit would have answered with `status`, as a stream result.
fn refusal(status: &Status) -> pb::SubmitRefusal {
    pb::SubmitRefusal {
        code: status.code() as i32,
        reason: status.get_details_error_info().map(|i| i.reason).unwrap_or_default(),
        message: status.message().to_owned(),
    }
}

/// The durable view of the store: only what a durable commit made visible.
fn durable(state: &BrokerState) -> Durable<'_> {
    Durable::new(&*state.store, state.hub.tree.borrow().0)
}

/// A message's record and its durable receipts; None when the message is
/// unknown or not yet durable (see [`Durable::message`]).
pub fn durable_receipts(
    state: &BrokerState,
    id: &MessageId,
) -> Result<Option<(MessageRecord, Vec<pb::Receipt>)>, BrokerError> {
    Ok(durable(state).message(id)?)
}

/// A stored receipt, signed for sending.
fn receipt(state: &BrokerState, id: &MessageId, n: u8) -> Result<pb::Receipt, BrokerError> {
    signed(state, Tables(&*state.store).receipt(id, n)?.ok_or(BrokerError::StorageCorrupt)?)
}

/// Signs a receipt the committer stored unsigned.
fn signed(state: &BrokerState, r: pb::Receipt) -> Result<pb::Receipt, BrokerError> {
    state.receipts.sign(r).map_err(|_| BrokerError::StorageCorrupt)
}

/// Builds the delivery of queue entry `seq`; None once the message is
/// acknowledged or expired (its ciphertext is kept for a while after that,
/// but it is never delivered again).
fn delivery(
    state: &BrokerState,
    id: &MessageId,
    seq: u64,
    principal: &str,
) -> Result<Option<pb::Delivery>, BrokerError> {
    let tables = Tables(&*state.store);
    let Some(rec) = tables.message(id)? else {
        return Ok(None);
    };
    if !matches!(rec.state, MessageState::Pending) {
        return Ok(None);
    }
    let Some(envelope) = tables.envelope(id)? else {
        return Ok(None);
    };
    Ok(Some(pb::Delivery {
        envelope: Some(envelope),
        envelope_digest: rec.envelope_digest.to_vec(),
        sequence: seq,
        ack_deadline_ms: rec.ack_deadline_ms,
        redelivery: tables.delivered_to(id, principal)?,
        escalated: rec.escalated,
    }))
}

fn alert(event: pb::alert::Event) -> pb::Alert {
    pb::Alert { event: Some(event) }
}

/// Ok while the connection is trusted by the current CRL, directory and
/// clock; otherwise ends its trust (every stream of it) and says why.
fn still_trusted(state: &BrokerState, conn: &Connection) -> Result<(), BrokerError> {
    conn.check().and_then(|()| state.judge(&conn.identity)).inspect_err(|why| conn.end(why.clone()))
}

/// Deliveries a subscriber stream has queued in the committer at most.
const DELIVERIES_IN_FLIGHT: usize = 32;

/// Takes a queued delivery's outcome; false when the stream must end (its
/// trust ended: the committer recorded and sent nothing, and neither does
/// anything queued after it).
fn delivery_done(
    outcome: DeliveryOutcome,
    conn: &Connection,
    out: &Producer<pb::Alert>,
    heartbeat: &mut tokio::time::Interval,
) -> bool {
    match outcome {
        DeliveryOutcome::Sent => heartbeat.reset(),
        DeliveryOutcome::NotWaiting => {}
        DeliveryOutcome::Untrusted => {
            out.end(conn.check().err().unwrap_or(BrokerError::Revoked).into());
            return false;
        }
    }
    true
}

/// The subscriber loop: backlog, then live alerts, heartbeats when idle.
///
/// Each delivery is checked against the connection's trust right before it
/// is recorded, recorded durably (the committer refuses once trust has
/// ended), and only then sent: no Delivery and no DELIVERED receipt
/// reaches or names a principal after the reload that ended its trust.
async fn run_subscriber(
    state: Arc<BrokerState>,
    conn: Arc<Connection>,
    out: Producer<pb::Alert>,
) -> Result<(), BrokerError> {
    let principal = conn.identity.principal.clone();
    let agency = principal.agency.clone();
    let me = principal.uri();
    let hub = state.hub.agency(&agency)?;
    let mut seq_rx = hub.queue_seq.subscribe();
    let mut events = hub.events.subscribe();
    let mut heartbeat = tokio::time::interval(state.config.delivery.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.reset();
    let mut cursor = 0u64;
    let mut caught_up = false;
    loop {
        let watermark = *seq_rx.borrow_and_update();
        while cursor < watermark {
            let page = Tables(&*state.store).queue(&agency, cursor + 1, watermark + 1, PAGE)?;
            if page.is_empty() {
                cursor = watermark;
                break;
            }
            // Deliveries queued in the committer and not yet answered: up
            // to DELIVERIES_IN_FLIGHT share group commits, in queue order.
            let mut pending = std::collections::VecDeque::new();
            for (seq, id) in page {
                // Room first, then the state: a message settled while this
                // stream waited for room is never sent afterwards.
                let Ok(permit) = out.reserve_owned().await else {
                    return Ok(());
                };
                if let Err(why) = still_trusted(&state, &conn) {
                    out.end(why.into());
                    return Ok(());
                }
                if let Some(d) = delivery(&state, &id, seq, &me)? {
                    // The single writer decides, against the state that
                    // settles messages: it records the Delivered entry (and
                    // the sender's DELIVERED receipt) durably and then puts
                    // the delivery into this stream, before it announces
                    // anything later, or it answers that the message was
                    // settled first and nothing is sent.
                    let send: crate::commit::Handoff = Box::new(move || {
                        let _ = permit.send(alert(pb::alert::Event::Delivery(d)));
                    });
                    pending
                        .push_back(state.committer.delivered_queued(id, me.clone(), conn.ended_token(), send).await?);
                    if pending.len() >= DELIVERIES_IN_FLIGHT
                        && let Some(first) = pending.pop_front()
                        && !delivery_done(first.outcome().await?, &conn, &out, &mut heartbeat)
                    {
                        return Ok(());
                    }
                }
                cursor = seq;
            }
            for first in pending {
                if !delivery_done(first.outcome().await?, &conn, &out, &mut heartbeat) {
                    return Ok(());
                }
            }
        }
        if !caught_up {
            caught_up = true;
            if out.send(alert(pb::alert::Event::CaughtUp(pb::CaughtUp { sequence: watermark }))).await.is_err() {
                return Ok(());
            }
        }
        tokio::select! {
            changed = seq_rx.changed() => if changed.is_err() { return Ok(()) },
            ev = events.recv() => match ev {
                Ok(ev) => {
                    let forward = match &*ev {
                        HubEvent::Settled { message_id, sequence, ack } => Some(pb::alert::Event::Settled(pb::Settled {
                            message_id: message_id.to_vec(),
                            sequence: *sequence,
                            ack: Some(ack.clone()),
                        })),
                        HubEvent::Escalation { contact, alert } => {
                            (alert.recipient == agency.as_str() || contact.as_deref() == Some(me.as_str()))
                                .then(|| pb::alert::Event::Escalation(alert.clone()))
                        }
                    };
                    if let Some(e) = forward {
                        if out.send(alert(e)).await.is_err() {
                            return Ok(());
                        }
                        heartbeat.reset();
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    out.end(BrokerError::SubscriberLagged.into());
                    return Ok(());
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = heartbeat.tick() => {
                let hb = pb::alert::Event::Heartbeat(pb::Heartbeat { at_ms: state.clock.now().0 });
                if out.send(alert(hb)).await.is_err() {
                    return Ok(());
                }
            }
            _ = out.closed() => return Ok(()),
            why = conn.ended() => {
                out.end(why.into());
                return Ok(());
            }
            _ = state.shutdown.cancelled() => {
                out.end(BrokerError::ShuttingDown.into());
                return Ok(());
            }
        }
    }
}

/// The receipt watcher loop: everything after the cursor, then live.
async fn run_receipts(
    state: Arc<BrokerState>,
    conn: Arc<Connection>,
    mut cursor: u64,
    out: Producer<pb::ReceiptEvent>,
) -> Result<(), BrokerError> {
    let sender = conn.identity.principal.agency.clone();
    let hub = state.hub.agency(&sender)?;
    let mut cursor_rx = hub.receipt_cursor.subscribe();
    loop {
        let newest = *cursor_rx.borrow_and_update();
        while cursor < newest {
            let page = Tables(&*state.store).feed(&sender, cursor + 1, newest + 1, PAGE)?;
            if page.is_empty() {
                cursor = newest;
                break;
            }
            if let Err(why) = still_trusted(&state, &conn) {
                out.end(why.into());
                return Ok(());
            }
            for (c, entry) in page {
                let id = MessageId::from_bytes(&entry.message_id).map_err(|_| BrokerError::StorageCorrupt)?;
                let r = receipt(&state, &id, entry.receipt)?;
                if out.send(pb::ReceiptEvent { cursor: c, receipt: Some(r) }).await.is_err() {
                    return Ok(());
                }
                cursor = c;
            }
        }
        tokio::select! {
            changed = cursor_rx.changed() => if changed.is_err() { return Ok(()) },
            _ = out.closed() => return Ok(()),
            why = conn.ended() => {
                out.end(why.into());
                return Ok(());
            }
            _ = state.shutdown.cancelled() => {
                out.end(BrokerError::ShuttingDown.into());
                return Ok(());
            }
        }
    }
}

fn spawn_stream<T, F>(
    tasks: &tokio_util::task::TaskTracker,
    name: &'static str,
    principal: &Principal,
    out: Producer<T>,
    run: impl FnOnce(Producer<T>) -> F,
) where
    T: Send + 'static,
    F: std::future::Future<Output = Result<(), BrokerError>> + Send + 'static,
{
    let span = tracing::info_span!("stream", rpc = name, principal = %principal);
    let ender = Producer::clone_ending(&out);
    let fut = run(out);
    tasks.spawn(
        async move {
            let _open = crate::metrics::Open::new(crate::metrics::STREAMS, name);
            if let Err(e) = fut.await {
                tracing::warn!(error = %e, "stream ended by an error");
                ender(e.into());
            }
        }
        .instrument(span),
    );
}

impl<T> Producer<T> {
    /// A function that can end the stream after the producer was moved.
    fn clone_ending(&self) -> impl FnOnce(Status) + Send + 'static {
        let ending = self.ending_handle();
        move |s| *ending.lock().expect("stream lock") = Some(s)
    }
}

#[tonic::async_trait]
impl ReferralBroker for ReferralService {
    async fn submit(&self, req: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        let identity = self.state.authorize(&req, Rpc::Submit)?;
        let p = identity.principal;
        let span = tracing::info_span!("submit", principal = %p, message_id = tracing::field::Empty);
        async {
            let _permit = match self.state.limiter.submit(&p.uri()) {
                Ok(permit) => permit,
                Err(e) => return Err(e.into()),
            };
            self.submit_inner(&p, req.into_inner()).await.map(Response::new)
        }
        .instrument(span)
        .await
    }

    type SubmitStreamStream = BoundedStream<pb::SubmitStreamResponse>;

    async fn submit_stream(
        &self,
        req: Request<tonic::Streaming<pb::SubmitStreamRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let identity = self.state.authorize(&req, Rpc::SubmitStream)?;
        let conn = self.state.connection(&req)?;
        let p = identity.principal;
        let permit = self.state.limiter.stream(&p.uri())?;
        // Room for the window's results and the announcement: a client that
        // keeps to the window never makes the broker wait to answer.
        let (out, stream) = bounded(SUBMIT_WINDOW as usize + 1, self.state.config.delivery.subscriber_stall_timeout);
        let service = self.clone();
        let inbound = req.into_inner();
        let principal = p.clone();
        spawn_stream(&self.state.tasks, "SubmitStream", &p, out, move |out| async move {
            let _permit = permit;
            service.run_submit_stream(conn, principal, inbound, out).await
        });
        Ok(Response::new(stream))
    }

    type SubscribeStream = BoundedStream<pb::Alert>;

    async fn subscribe(&self, req: Request<pb::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let identity = self.state.authorize(&req, Rpc::Subscribe)?;
        let conn = self.state.connection(&req)?;
        let p = identity.principal;
        let permit = self.state.limiter.stream(&p.uri())?;
        let (out, stream) =
            bounded(self.state.config.delivery.subscriber_buffer, self.state.config.delivery.subscriber_stall_timeout);
        tracing::info!(principal = %p, "subscribed");
        let state = self.state.clone();
        spawn_stream(&self.state.tasks, "Subscribe", &p, out, move |out| async move {
            let _permit = permit;
            run_subscriber(state, conn, out).await
        });
        Ok(Response::new(stream))
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let identity = self.state.authorize(&req, Rpc::Ack)?;
        let p = identity.principal;
        let span = tracing::info_span!("ack", principal = %p, message_id = tracing::field::Empty);
        async {
            let _permit = self.state.limiter.submit(&p.uri())?;
            self.ack_inner(&p, req.into_inner()).await.map(Response::new)
        }
        .instrument(span)
        .await
    }

    async fn fetch(&self, req: Request<pb::FetchRequest>) -> Result<Response<pb::FetchResponse>, Status> {
        let identity = self.state.authorize(&req, Rpc::Fetch)?;
        let conn = self.state.connection(&req)?;
        let p = identity.principal;
        let span = tracing::info_span!("fetch", principal = %p, message_id = tracing::field::Empty);
        async {
            // A fetch may write (the first delivery to this principal), so it
            // shares the writes' limits.
            let _permit = self.state.limiter.submit(&p.uri())?;
            self.fetch_inner(&conn, &p, req.into_inner()).await.map(Response::new)
        }
        .instrument(span)
        .await
    }

    async fn get_receipts(
        &self,
        req: Request<pb::GetReceiptsRequest>,
    ) -> Result<Response<pb::GetReceiptsResponse>, Status> {
        let identity = self.state.authorize(&req, Rpc::GetReceipts)?;
        let agency = identity.principal.agency;
        let ids = req.into_inner().message_ids;
        if ids.len() > MAX_RECEIPT_QUERY {
            return Err(BrokerError::InvalidRequest(format!(
                "at most {MAX_RECEIPT_QUERY} message ids per call, got {}",
                ids.len()
            ))
            .into());
        }
        let mut messages = Vec::with_capacity(ids.len());
        for raw in ids {
            let id = MessageId::from_bytes(&raw).map_err(|e| BrokerError::InvalidRequest(e.to_string()))?;
            // Another agency's message, and one not yet durable, are
            // reported exactly like an unknown one.
            let receipts = durable_receipts(&self.state, &id)?
                .filter(|(rec, _)| rec.sender == agency.as_str())
                .map(|(_, receipts)| receipts)
                .ok_or(BrokerError::UnknownMessage(id))?;
            let receipts = receipts.into_iter().map(|r| signed(&self.state, r)).collect::<Result<Vec<_>, _>>()?;
            messages.push(pb::MessageReceipts { message_id: raw, receipts });
        }
        Ok(Response::new(pb::GetReceiptsResponse { messages }))
    }

    type WatchReceiptsStream = BoundedStream<pb::ReceiptEvent>;

    async fn watch_receipts(
        &self,
        req: Request<pb::WatchReceiptsRequest>,
    ) -> Result<Response<Self::WatchReceiptsStream>, Status> {
        let identity = self.state.authorize(&req, Rpc::WatchReceipts)?;
        let conn = self.state.connection(&req)?;
        let p = identity.principal;
        let permit = self.state.limiter.stream(&p.uri())?;
        let after = req.into_inner().after_cursor;
        let (out, stream) =
            bounded(self.state.config.delivery.subscriber_buffer, self.state.config.delivery.subscriber_stall_timeout);
        let state = self.state.clone();
        spawn_stream(&self.state.tasks, "WatchReceipts", &p, out, move |out| async move {
            let _permit = permit;
            run_receipts(state, conn, after, out).await
        });
        Ok(Response::new(stream))
    }

    async fn get_directory(
        &self,
        req: Request<pb::GetDirectoryRequest>,
    ) -> Result<Response<pb::SignedDirectory>, Status> {
        self.state.authorize(&req, Rpc::GetDirectory)?;
        Ok(Response::new(self.state.directory.current().signed.to_pb()))
    }
}
