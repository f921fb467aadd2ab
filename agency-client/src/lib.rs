//! The client library agency systems embed, and what the `agency-client`
//! CLI is built on.
//!
//! A [`Client`] is one principal (a profile folder made by `certs`). It
//! verifies the directory against the pinned federation key (refusing
//! rollback), seals and signs outgoing referrals, opens and verifies
//! incoming ones, signs acknowledgements, checks the broker's signatures on
//! receipts, and retries submits with the same message id when the
//! transport fails (the broker is idempotent on it).
//!
//! Architecture invariant: the agency's private keys never leave this
//! process; the broker only ever receives sealed envelopes and signatures.
//!
//! # Layout
//! - [`Client`] (this file): connection, directory, send, ack, receipts.
//! - [`alerts`]: the subscription stream, opened and verified.
//! - [`auditor`]: the auditor's replay, verification and proofs.
//! - [`trust`]: what a receipt proves, and nothing more (an ACKNOWLEDGED
//!   needs the recipient's signed ack); answers must match what was asked.
//! - [`outbox`]: sealed envelopes kept until answered, so a resend is
//!   byte-identical.
//! - [`overlap`]: the blind overlap check: propose or accept a session and
//!   run it through the broker.
//! - [`display`]: remote text made safe for a terminal.
//! - [`present`]: labels, local times, flags and triage order for people on
//!   call, shared by `listen` and the console.
//! - [`live`]: the alert stream kept up across broker restarts.
//! - [`listen`]: the terminal view of it; [`console`]: the loopback web page.
//! - [`form`]: referral files read without quoting values in errors, and
//!   the form's JSON Schema.
//! - [`cli`]: the command-line interface over all of it.

pub mod alerts;
pub mod auditor;
pub mod cli;
pub mod console;
pub mod display;
pub mod error;
pub mod exit;
pub mod form;
pub mod listen;
pub mod live;
pub mod outbox;
pub mod overlap;
pub mod present;
pub mod proof;
pub mod report;
pub mod restore;
pub mod trust;

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use certs::profile::Profile;
use referral_proto::Digest;
use referral_proto::ack::{AckError, NoteError, sign_ack, sign_ack_with_note};
use referral_proto::directory::{Directory, SignedDirectory};
use referral_proto::ids::{AgencyId, MessageId, Principal};
use referral_proto::keys::AgencyKeyBundle;
use referral_proto::notice::ReferralNotice;
use referral_proto::pb;
use referral_proto::pb::auditor_client::AuditorClient;
use referral_proto::pb::referral_broker_client::ReferralBrokerClient;
use referral_proto::receipt::{Receipt, ReceiptStatus};
use referral_proto::seal::seal;
use referral_proto::time::Timestamp;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use error::ClientError;
use outbox::Outbox;
use trust::{Expect, check_receipt};

/// How often and how patiently a submit is retried on transport failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 8, first_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(5) }
    }
}

/// Whether a failed call may be retried unchanged: the broker did not
/// answer, or said it could not do it now.
pub fn is_retryable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    ) && !s.message().contains("certificate")
        && error::certificate_refusal(s).is_none()
}

/// Whether the broker answered a submit for good: with a receipt, or with a
/// refusal that a resend of the same bytes would meet again.
fn answered(result: &Result<Sent, ClientError>) -> bool {
    match result {
        Ok(_) => true,
        Err(ClientError::Rpc(s)) => !is_retryable(s) && s.code() != tonic::Code::ResourceExhausted,
        Err(_) => false,
    }
}

/// A stream result's refusal as the status unary Submit would have returned.
fn refusal_status(r: pb::SubmitRefusal) -> tonic::Status {
    use tonic_types::StatusExt as _;
    let details = tonic_types::ErrorDetails::with_error_info(r.reason, referral_proto::ERROR_DOMAIN, []);
    tonic::Status::with_error_details(tonic::Code::from(r.code), r.message, details)
}

/// Checks the broker's answer to `envelope` and makes it a [`Sent`].
fn check_submitted(
    dir: &Directory,
    envelope: &pb::Envelope,
    response: pb::SubmitResponse,
) -> Result<Sent, ClientError> {
    let domain = referral_proto::envelope::Envelope::try_from(envelope.clone())
        .map_err(|e| ClientError::Invalid(e.to_string()))?;
    let h = &domain.header;
    let expect = Expect {
        message_id: Some(h.message_id),
        envelope_digest: Some(domain.digest()),
        sender: Some(h.sender.clone()),
        recipient: Some(h.recipient.clone()),
        status: Some(ReceiptStatus::Accepted),
        own_ack: None,
    };
    let receipt = check_receipt(dir, response.receipt, &expect)?;
    Ok(Sent { message_id: h.message_id, envelope_digest: domain.digest(), receipt, duplicate: response.duplicate })
}

/// One TLS handshake with the profile's identity, then a read: a refused
/// certificate shows as the broker's alert (see
/// [`Client::certificate_refusal`]). Anything else (a timeout, the
/// session tickets of an accepted handshake) says nothing.
async fn probe_handshake(p: &Profile) -> Option<error::CertificateRefusal> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt as _;
    const WAIT: Duration = Duration::from_secs(2);
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(p.ca_pem.as_bytes()) {
        roots.add(ca.ok()?).ok()?;
    }
    let chain = CertificateDer::pem_slice_iter(p.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().ok()?;
    let key = PrivateKeyDer::from_pem_slice(p.key_pem.as_bytes()).ok()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .ok()?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let address = p.broker.strip_prefix("https://")?.trim_end_matches('/');
    let tcp = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(address)).await.ok()?.ok()?;
    let name = ServerName::try_from(p.server_name.clone()).ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = match tokio::time::timeout(WAIT, connector.connect(name, tcp)).await.ok()? {
        Ok(tls) => tls,
        Err(e) => return error::certificate_refusal(&e),
    };
    let mut byte = [0u8; 1];
    match tokio::time::timeout(WAIT, tls.read(&mut byte)).await {
        Ok(Err(e)) => error::certificate_refusal(&e),
        _ => None,
    }
}

/// A referral as sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message_id: MessageId,
    pub envelope_digest: Digest,
    /// The broker's signed ACCEPTED receipt, checked.
    pub receipt: Receipt,
    /// The broker had this message already (a retry).
    pub duplicate: bool,
}

/// The result of an acknowledgement.
#[derive(Debug, Clone)]
pub struct Acked {
    pub receipt: Receipt,
    pub already_acknowledged: bool,
}

/// One principal's connection to the broker.
#[derive(Debug)]
pub struct Client {
    profile: Profile,
    channel: Channel,
    directory: Mutex<Option<(Arc<Directory>, Instant)>>,
    bundles: RwLock<Arc<Vec<AgencyKeyBundle>>>,
    pub retry: RetryPolicy,
    /// How long a fetched directory is used before it is fetched again
    /// (so that key rotations reach long-running clients).
    pub directory_max_age: Duration,
}

fn now() -> Timestamp {
    certs::now()
}

impl Client {
    /// Loads the profile folder and connects.
    pub async fn connect_dir(dir: &Path) -> Result<Self, ClientError> {
        Self::connect(Profile::load(dir, now())?).await
    }

    /// Connects with a loaded profile.
    pub async fn connect(profile: Profile) -> Result<Self, ClientError> {
        Self::connect_with(profile, false).await
    }

    /// For the commands that watch the queue for hours (`console`, `listen`):
    /// loads the profile and connects, but a broker that cannot be reached
    /// now is not an error. The client is returned all the same with a
    /// channel that connects on first use and again after every break, so
    /// that the watcher can start, say that the connection is down, and
    /// retry ([`crate::live`]). A profile that does not load, or a
    /// certificate the broker refuses, is still an error at once: no retry
    /// cures those.
    pub async fn connect_dir_waiting(dir: &Path) -> Result<Self, ClientError> {
        Self::connect_with(Profile::load(dir, now())?, true).await
    }

    async fn connect_with(mut profile: Profile, wait_for_broker: bool) -> Result<Self, ClientError> {
        let err = |message: String| ClientError::Connect { broker: profile.broker.clone(), message };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&profile.ca_pem))
            .identity(Identity::from_pem(&profile.cert_pem, profile.key_pem.as_bytes()))
            .domain_name(profile.server_name.clone());
        let endpoint = Endpoint::from_shared(profile.broker.clone())
            .map_err(|e| err(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| err(e.to_string()))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => match error::certificate_refusal(&e) {
                Some(refused) => return Err(ClientError::CertificateRefused(refused)),
                None if wait_for_broker => endpoint.connect_lazy(),
                None => return Err(err(error_chain(&e))),
            },
        };
        let bundles = RwLock::new(Arc::new(std::mem::take(&mut profile.bundles)));
        Ok(Self {
            profile,
            channel,
            directory: Mutex::new(None),
            bundles,
            retry: RetryPolicy::default(),
            directory_max_age: Duration::from_secs(300),
        })
    }

    /// Whether `e`, a call that failed in the transport without a word from
    /// the broker, was the broker refusing this profile's certificate, and
    /// why. With TLS 1.3 the broker's alert (certificate revoked, expired,
    /// from another CA) comes after the client's handshake has finished, and
    /// the call often fails first ("operation was canceled", or a reset)
    /// without it; so one more handshake is made, reading until the broker's
    /// first word, which is then the alert. None when nothing was refused.
    pub async fn certificate_refusal(&self, e: &ClientError) -> Option<error::CertificateRefusal> {
        match e {
            ClientError::CertificateRefused(r) => Some(r.clone()),
            ClientError::Rpc(s)
                if error::reason(s).is_none()
                    && matches!(s.code(), tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Unavailable) =>
            {
                probe_handshake(&self.profile).await
            }
            _ => None,
        }
    }

    pub fn principal(&self) -> &Principal {
        &self.profile.principal
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The raw gRPC client on this connection, for tools and tests that
    /// must send what the library would refuse to build.
    pub fn broker(&self) -> ReferralBrokerClient<Channel> {
        ReferralBrokerClient::new(self.channel.clone()).max_decoding_message_size(1024 * 1024)
    }

    /// The raw auditor gRPC client on this connection.
    pub fn auditor_rpc(&self) -> AuditorClient<Channel> {
        AuditorClient::new(self.channel.clone()).max_decoding_message_size(1024 * 1024)
    }

    /// The agency's key bundles this client holds, newest first.
    pub fn bundles(&self) -> Arc<Vec<AgencyKeyBundle>> {
        self.bundles.read().expect("bundles lock").clone()
    }

    /// Re-reads the profile's `agency-keys/` (after a key rotation put a
    /// new bundle there). Returns how many bundles it now holds.
    pub fn reload_keys(&self) -> Result<usize, ClientError> {
        let fresh = certs::profile::load_bundles(&self.profile.dir, &self.profile.principal)?;
        let n = fresh.len();
        *self.bundles.write().expect("bundles lock") = Arc::new(fresh);
        Ok(n)
    }

    /// The note of an ACKNOWLEDGED receipt of a message this agency sent,
    /// opened with this agency's key bundles (`Ok(None)`: no note, or no
    /// longer held by the broker). Call it on checked receipts only (every
    /// receipt this client returns is). Show the text to the sender only;
    /// never log it.
    pub fn open_note(&self, receipt: &Receipt) -> Result<Option<String>, NoteError> {
        match &receipt.ack {
            Some(ack) => ack.open_note(&receipt.statement.sender, &self.bundles()),
            None => Ok(None),
        }
    }

    /// Runs `f` with the bundle to sign and seal with now: the newest valid one.
    fn with_bundle<T>(&self, f: impl FnOnce(&AgencyKeyBundle) -> T) -> Result<T, ClientError> {
        let bundles = self.bundles();
        let t = now();
        let b = bundles
            .iter()
            .find(|b| b.public().valid_at(t))
            .ok_or_else(|| ClientError::NoValidKey(self.profile.principal.role.to_string()))?;
        Ok(f(b))
    }

    /// The raw gRPC channel (for health checks, reflection and tools).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn seen_version_path(&self) -> std::path::PathBuf {
        self.profile.state_dir().join(certs::profile::DIRECTORY_VERSION_FILE)
    }

    fn seen_version(&self) -> Result<Option<u64>, ClientError> {
        let path = self.seen_version_path();
        match std::fs::read_to_string(&path) {
            Ok(t) => t
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| ClientError::State { path, message: "not a directory version".into() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClientError::State { path, message: e.to_string() }),
        }
    }

    fn remember_version(&self, v: u64) -> Result<(), ClientError> {
        outbox::write_durably(&self.seen_version_path(), format!("{v}\n").as_bytes())
    }

    /// The sealed envelopes this profile keeps until the broker answers.
    pub fn outbox(&self) -> Outbox {
        Outbox::new(&self.profile.state_dir())
    }

    /// Checks a signed directory against the pinned federation key and the
    /// newest version this profile has seen, and remembers it.
    pub fn accept_directory(&self, signed: pb::SignedDirectory) -> Result<Arc<Directory>, ClientError> {
        let signed = SignedDirectory::from_pb(signed)?;
        let seen = self.seen_version()?;
        let dir = signed.verify(&self.profile.federation_key, seen, now())?;
        if seen.is_none_or(|s| dir.version > s) {
            self.remember_version(dir.version)?;
        }
        let dir = Arc::new(dir);
        *self.directory.lock().expect("directory lock") = Some((dir.clone(), Instant::now()));
        Ok(dir)
    }

    /// Fetches and verifies the directory.
    pub async fn refresh_directory(&self) -> Result<Arc<Directory>, ClientError> {
        let signed = if self.profile.principal.role == referral_proto::ids::Role::Auditor {
            self.auditor_rpc().get_directory(pb::GetDirectoryRequest {}).await?.into_inner()
        } else {
            self.broker().get_directory(pb::GetDirectoryRequest {}).await?.into_inner()
        };
        self.accept_directory(signed)
    }

    /// The verified directory, fetched on first use.
    pub async fn directory(&self) -> Result<Arc<Directory>, ClientError> {
        if let Some((d, at)) = self.directory.lock().expect("directory lock").clone()
            && at.elapsed() < self.directory_max_age
        {
            return Ok(d);
        }
        self.refresh_directory().await
    }

    /// Seals `notice` to agency `to` and submits it with a fresh message id.
    pub async fn send(&self, to: &AgencyId, notice: &ReferralNotice) -> Result<Sent, ClientError> {
        self.send_with_id(to, notice, MessageId::generate(now().0)).await
    }

    /// Like [`Client::send`] with a chosen message id (to resend the same
    /// referral). When this profile's outbox still holds the envelope sealed
    /// for `message_id` (an earlier attempt got no answer), those bytes are
    /// submitted again rather than a fresh seal, so the broker recognises
    /// the retry and answers with the original receipt; `notice` is then not
    /// sealed again (a changed referral needs a new message id).
    pub async fn send_with_id(
        &self,
        to: &AgencyId,
        notice: &ReferralNotice,
        message_id: MessageId,
    ) -> Result<Sent, ClientError> {
        let outbox = self.outbox();
        let envelope = match outbox.load(message_id)? {
            Some(stored) => {
                let header = referral_proto::envelope::Envelope::try_from(stored.clone())
                    .map_err(|e| ClientError::Invalid(e.to_string()))?
                    .header;
                if &header.recipient != to {
                    return Err(ClientError::Invalid(format!(
                        "message {message_id} was sealed to {} and is waiting in {} for an answer; it cannot be sent to {to} (use another message id)",
                        header.recipient,
                        outbox.path(message_id).display()
                    )));
                }
                stored
            }
            None => self.seal_to_outbox(to, notice, message_id).await?,
        };
        self.submit_stored(envelope).await
    }

    /// Seals `notice` to `to` under `message_id` and keeps the envelope in the
    /// outbox (durably, before anything is submitted). The first half of
    /// [`Client::send_with_id`].
    pub async fn seal_to_outbox(
        &self,
        to: &AgencyId,
        notice: &ReferralNotice,
        message_id: MessageId,
    ) -> Result<pb::Envelope, ClientError> {
        let dir = self.directory().await?;
        let recipient = dir.agency(to).ok_or_else(|| ClientError::UnknownAgency {
            agency: to.clone(),
            known: dir.agencies.keys().cloned().collect(),
        })?;
        let envelope = pb::Envelope::from(&self.with_bundle(|b| seal(notice, b, recipient, message_id, now()))??);
        self.outbox().store(message_id, &envelope)?;
        Ok(envelope)
    }

    /// Submits an envelope kept in the outbox and forgets it once the broker
    /// has answered with a receipt, or has refused it for good (then nothing
    /// is stored under its id). A transport failure keeps it for a resend.
    async fn submit_stored(&self, envelope: pb::Envelope) -> Result<Sent, ClientError> {
        let id = MessageId::from_bytes(&envelope.header.as_ref().map(|h| h.message_id.clone()).unwrap_or_default())
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let result = self.submit_envelope(envelope).await;
        if answered(&result) {
            self.outbox().remove(id)?;
        }
        result
    }

    /// Submits an already sealed envelope, retrying transport failures with
    /// the same bytes.
    pub async fn submit_envelope(&self, envelope: pb::Envelope) -> Result<Sent, ClientError> {
        let dir = self.directory().await?;
        referral_proto::envelope::Envelope::try_from(envelope.clone())
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 1;
        let response = loop {
            match self.broker().submit(pb::SubmitRequest { envelope: Some(envelope.clone()) }).await {
                Ok(r) => break r.into_inner(),
                Err(s) if is_retryable(&s) && attempt < self.retry.attempts => {
                    tracing::warn!(attempt, code = ?s.code(), "submit failed; retrying with the same message id");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                    attempt += 1;
                }
                Err(s) => return Err(s.into()),
            }
        };
        check_submitted(&dir, &envelope, response)
    }

    /// Seals each referral to its recipient under a fresh message id into
    /// the outbox, submits them all on one `SubmitStream`
    /// ([`Client::submit_many`]), and forgets those the broker answered
    /// (as [`Client::send_with_id`] does one by one). One result per
    /// referral, in order; one that could not be sealed is not submitted.
    pub async fn send_many(
        &self,
        referrals: &[(AgencyId, ReferralNotice)],
    ) -> Result<Vec<Result<Sent, ClientError>>, ClientError> {
        let mut sealed = Vec::with_capacity(referrals.len());
        let mut results: Vec<Option<Result<Sent, ClientError>>> = Vec::with_capacity(referrals.len());
        for (to, notice) in referrals {
            match self.seal_to_outbox(to, notice, MessageId::generate(now().0)).await {
                Ok(e) => {
                    sealed.push(e);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let ids: Vec<Vec<u8>> =
            sealed.iter().map(|e| e.header.as_ref().map(|h| h.message_id.clone()).unwrap_or_default()).collect();
        let mut answers = self.submit_many(sealed).await?.into_iter().zip(ids);
        for slot in results.iter_mut().filter(|r| r.is_none()) {
            let (answer, id) = answers.next().ok_or(ClientError::Incomplete("submit result"))?;
            if answered(&answer)
                && let Ok(id) = MessageId::from_bytes(&id)
            {
                self.outbox().remove(id)?;
            }
            *slot = Some(answer);
        }
        Ok(results.into_iter().map(|r| r.unwrap_or(Err(ClientError::Incomplete("submit result")))).collect())
    }

    /// Submits many sealed envelopes on one `SubmitStream` and returns one
    /// result per envelope, in order: the checked receipt, or the refusal
    /// as the status unary Submit would have returned (same code, same
    /// reason). Keeps at most the broker's announced window unanswered. When
    /// the stream itself fails (transport, authorization), every envelope
    /// not yet answered gets that status; nothing is retried here (a resend
    /// with the same bytes gets the original receipts).
    pub async fn submit_many(
        &self,
        envelopes: Vec<pb::Envelope>,
    ) -> Result<Vec<Result<Sent, ClientError>>, ClientError> {
        use pb::submit_result::Outcome;
        use pb::submit_stream_response::Event;
        let dir = self.directory().await?;
        let total = envelopes.len();
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SubmitStreamRequest>(1);
        let mut results: Vec<Result<Sent, ClientError>> = Vec::with_capacity(total);
        if total == 0 {
            return Ok(results);
        }
        let mut responses =
            self.broker().submit_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        let window = match responses.message().await? {
            Some(pb::SubmitStreamResponse { event: Some(Event::Window(w)) }) => w.max_unanswered.max(1) as usize,
            _ => return Err(ClientError::Incomplete("SubmitStream window")),
        };
        let mut to_send = envelopes.iter();
        let mut sent = 0usize;
        let failure = loop {
            // Keep the window full, then wait for the next answer.
            while sent - results.len() < window
                && let Some(e) = to_send.next()
            {
                if tx.send(pb::SubmitStreamRequest { envelope: Some(e.clone()) }).await.is_err() {
                    break;
                }
                sent += 1;
            }
            if results.len() == total {
                break None;
            }
            let result = match responses.message().await {
                Ok(Some(pb::SubmitStreamResponse { event: Some(Event::Result(r)) })) => r,
                Ok(_) => break Some(tonic::Status::unavailable("the SubmitStream ended before every result")),
                Err(status) => break Some(status),
            };
            let i = results.len();
            if result.index != i as u64 {
                break Some(tonic::Status::internal(format!("result {} arrived where {i} was due", result.index)));
            }
            results.push(match result.outcome {
                Some(Outcome::Accepted(response)) => check_submitted(&dir, &envelopes[i], response),
                Some(Outcome::Refused(r)) => Err(ClientError::Rpc(refusal_status(r))),
                None => Err(ClientError::Incomplete("submit outcome")),
            });
        };
        drop(tx);
        if let Some(status) = failure {
            while results.len() < total {
                results.push(Err(ClientError::Rpc(status.clone())));
            }
        }
        Ok(results)
    }

    /// Signs and sends an acknowledgement of a received referral.
    pub async fn ack_digest(
        &self,
        message_id: MessageId,
        envelope_digest: Digest,
        by: &str,
    ) -> Result<Acked, ClientError> {
        self.ack_digest_with_note(message_id, envelope_digest, by, None).await
    }

    /// [`Client::ack_digest`] with an optional note for the sending agency
    /// `note.1`: HPKE-sealed to that agency's current key, so only the sender
    /// can read it (PROTOCOL.md 7.4); the broker relays it and never logs it.
    pub async fn ack_digest_with_note(
        &self,
        message_id: MessageId,
        envelope_digest: Digest,
        by: &str,
        note: Option<(&str, &AgencyId)>,
    ) -> Result<Acked, ClientError> {
        let dir = self.directory().await?;
        let ack = match note {
            None => self.with_bundle(|b| sign_ack(message_id, envelope_digest, now(), by, b))??,
            Some((text, sender)) => {
                let agency = dir
                    .agency(sender)
                    .ok_or_else(|| ClientError::Ack(AckError::Note(NoteError::NoSenderKey(sender.clone()))))?;
                self.with_bundle(|b| sign_ack_with_note(message_id, envelope_digest, now(), by, text, agency, b))??
            }
        };
        let r = self.broker().ack(pb::AckRequest { ack: Some(pb::SignedAck::from(&ack)) }).await?.into_inner();
        // The answer must be the ACKNOWLEDGED receipt of the message acked, to
        // this agency (its ack may be another person's, when one came first).
        let expect = Expect {
            message_id: Some(message_id),
            envelope_digest: Some(envelope_digest),
            sender: None,
            recipient: Some(self.profile.principal.agency.clone()),
            status: Some(ReceiptStatus::Acknowledged),
            own_ack: Some(ack),
        };
        let receipt = check_receipt(&dir, r.receipt, &expect)?;
        Ok(Acked { receipt, already_acknowledged: r.already_acknowledged })
    }

    /// Acknowledges `message_id` when only its id is known: fetches it by id
    /// ([`Client::fetch`]: the same cost however many messages wait),
    /// verifies and opens it, and acks the digest computed here (never one
    /// taken on the broker's word). A message already acknowledged answers
    /// with its checked receipt and `already_acknowledged`, as a second ack
    /// would; an expired one is [`ClientError::Expired`]; an unknown one, or
    /// one addressed elsewhere, [`ClientError::NotWaiting`].
    pub async fn ack(&self, message_id: MessageId, by: &str) -> Result<Acked, ClientError> {
        self.ack_with_note(message_id, by, None).await
    }

    /// [`Client::ack`] with an optional note for the sender (see
    /// [`Client::ack_digest_with_note`]). A note on a message someone
    /// already acknowledged is not sent: the answer is the first ack.
    pub async fn ack_with_note(
        &self,
        message_id: MessageId,
        by: &str,
        note: Option<&str>,
    ) -> Result<Acked, ClientError> {
        let fetched = match self.fetch(message_id).await {
            Err(ClientError::Rpc(s)) if error::reason(&s).as_deref() == Some("unknown_message") => {
                return Err(ClientError::NotWaiting(message_id));
            }
            other => other?,
        };
        match fetched {
            alerts::Fetched::Waiting(alerts::AlertEvent::Referral(r)) => {
                self.ack_digest_with_note(message_id, r.envelope_digest, by, note.map(|n| (n, &r.sender))).await
            }
            alerts::Fetched::Waiting(alerts::AlertEvent::Unreadable { error, .. }) => Err(ClientError::Invalid(
                format!("message {message_id} failed verification and must not be acknowledged: {error}"),
            )),
            alerts::Fetched::Waiting(_) => Err(ClientError::Incomplete("delivery")),
            alerts::Fetched::Acknowledged(receipt) => Ok(Acked { receipt, already_acknowledged: true }),
            alerts::Fetched::Expired(receipt) => Err(ClientError::Expired { message_id, at: receipt.statement.at }),
        }
    }

    /// Every receipt of each message (this agency's own messages only), once
    /// per distinct id, in the order asked. Each receipt is checked
    /// ([`trust`]), and so is the answer: exactly the ids asked for.
    pub async fn receipts(&self, ids: &[MessageId]) -> Result<Vec<(MessageId, Vec<Receipt>)>, ClientError> {
        let dir = self.directory().await?;
        let mut unique = Vec::with_capacity(ids.len());
        for id in ids {
            if !unique.contains(id) {
                unique.push(*id);
            }
        }
        let req = pb::GetReceiptsRequest { message_ids: unique.iter().map(|i| i.as_bytes().to_vec()).collect() };
        let r = self.broker().get_receipts(req).await?.into_inner();
        let out = trust::check_receipts_answer(&dir, &unique, &self.profile.principal.agency, r.messages)?;
        // A message with a receipt needs no resend: its envelope leaves the outbox.
        let outbox = self.outbox();
        for (id, receipts) in &out {
            if !receipts.is_empty() {
                outbox.remove(*id)?;
            }
        }
        Ok(out)
    }

    /// Receipts as they happen, after `cursor`; each checked ([`trust`]).
    pub async fn watch_receipts(&self, after_cursor: u64) -> Result<ReceiptStream, ClientError> {
        let dir = self.directory().await?;
        let inner = self.broker().watch_receipts(pb::WatchReceiptsRequest { after_cursor }).await?.into_inner();
        Ok(ReceiptStream { inner, dir, agency: self.profile.principal.agency.clone(), outbox: self.outbox() })
    }
}

/// A stream of checked receipts with their cursors.
#[derive(Debug)]
pub struct ReceiptStream {
    inner: tonic::Streaming<pb::ReceiptEvent>,
    dir: Arc<Directory>,
    /// The stream carries receipts of this agency's own messages only.
    agency: AgencyId,
    outbox: Outbox,
}

impl ReceiptStream {
    /// The next receipt; `None` when the broker ends the stream.
    pub async fn next(&mut self) -> Result<Option<(u64, Receipt)>, ClientError> {
        let Some(ev) = self.inner.message().await? else {
            return Ok(None);
        };
        let expect = Expect { sender: Some(self.agency.clone()), ..Expect::default() };
        let r = check_receipt(&self.dir, ev.receipt, &expect)?;
        // A message with a receipt needs no resend: its envelope leaves the outbox.
        self.outbox.remove(r.statement.message_id)?;
        Ok(Some((ev.cursor, r)))
    }
}

/// The whole chain of an error's causes, for messages to people.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
