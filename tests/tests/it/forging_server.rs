//! A forging broker: an in-process server with the real broker certificate
//! (real mTLS, the broker's own accept loop) and the real broker log key,
//! whose receipts and proofs are signed but lie. The client must believe
//! nothing a broker cannot prove: an ACKNOWLEDGED needs the recipient's
//! signed ack for this message and envelope, and answers must be to the
//! question asked (SECURITY.md, "The broker cannot forge an acknowledgement").

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agency_client::trust::ReceiptMismatch;
use agency_client::{Client, ClientError};
use broker::config::Config;
use broker::directory::{DirectoryState, read_federation_key};
use broker::tls::{AcceptOptions, AcceptStats, TlsState, accept_loop};
use certs::dev::DevOptions;
use certs::profile::Profile;
use futures_util::Stream;
use integration_tests::{AUDITOR, POLICE, POLICE_SYSTEM, SOCIAL, SOCIAL_ONCALL, init_crypto};
use referral_proto::Digest;
use referral_proto::ack::{SignedAck, sign_ack};
use referral_proto::envelope::Envelope;
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::keys::{AgencyKeyBundle, KeyPurpose, SigningKey, parse_signing_key_file};
use referral_proto::merkle::leaf_hash;
use referral_proto::notice::example_notice;
use referral_proto::pb;
use referral_proto::pb::auditor_server::{Auditor, AuditorServer};
use referral_proto::pb::referral_broker_server::{ReferralBroker, ReferralBrokerServer};
use referral_proto::receipt::{ReceiptStatement, ReceiptStatus, TreeHead};
use referral_proto::seal::seal;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// What the forging server answers.
#[derive(Default)]
struct Answers {
    directory: pb::SignedDirectory,
    receipts: Vec<pb::MessageReceipts>,
    events: Vec<pb::ReceiptEvent>,
    alerts: Vec<pb::Alert>,
    fetch: Option<pb::FetchResponse>,
    proof: Option<pb::InclusionProofResponse>,
}

#[derive(Clone)]
struct Forger(Arc<Answers>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn not_here(rpc: &str) -> Status {
    Status::unimplemented(format!("the forging server does not answer {rpc}"))
}

#[tonic::async_trait]
impl ReferralBroker for Forger {
    async fn submit(&self, _: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        Err(not_here("Submit"))
    }

    type SubmitStreamStream = BoxStream<pb::SubmitStreamResponse>;

    async fn submit_stream(
        &self,
        _: Request<tonic::Streaming<pb::SubmitStreamRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        Err(not_here("SubmitStream"))
    }

    type SubscribeStream = BoxStream<pb::Alert>;

    async fn subscribe(&self, _: Request<pb::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let alerts: Vec<Result<pb::Alert, Status>> = self.0.alerts.iter().cloned().map(Ok).collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(alerts))))
    }

    async fn ack(&self, _: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        Err(not_here("Ack"))
    }

    async fn fetch(&self, _: Request<pb::FetchRequest>) -> Result<Response<pb::FetchResponse>, Status> {
        self.0.fetch.clone().map(Response::new).ok_or_else(|| not_here("Fetch"))
    }

    async fn get_receipts(
        &self,
        _: Request<pb::GetReceiptsRequest>,
    ) -> Result<Response<pb::GetReceiptsResponse>, Status> {
        Ok(Response::new(pb::GetReceiptsResponse { messages: self.0.receipts.clone() }))
    }

    type WatchReceiptsStream = BoxStream<pb::ReceiptEvent>;

    async fn watch_receipts(
        &self,
        _: Request<pb::WatchReceiptsRequest>,
    ) -> Result<Response<Self::WatchReceiptsStream>, Status> {
        let events: Vec<Result<pb::ReceiptEvent, Status>> = self.0.events.iter().cloned().map(Ok).collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(events))))
    }

    async fn get_directory(
        &self,
        _: Request<pb::GetDirectoryRequest>,
    ) -> Result<Response<pb::SignedDirectory>, Status> {
        Ok(Response::new(self.0.directory.clone()))
    }
}

#[tonic::async_trait]
impl Auditor for Forger {
    async fn get_tree_head(&self, _: Request<pb::GetTreeHeadRequest>) -> Result<Response<pb::SignedTreeHead>, Status> {
        Err(not_here("GetTreeHead"))
    }

    type ReplayStream = BoxStream<pb::LogEntry>;

    async fn replay(&self, _: Request<pb::ReplayRequest>) -> Result<Response<Self::ReplayStream>, Status> {
        Err(not_here("Replay"))
    }

    async fn inclusion_proof(
        &self,
        _: Request<pb::InclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProofResponse>, Status> {
        self.0.proof.clone().map(Response::new).ok_or_else(|| not_here("InclusionProof"))
    }

    async fn consistency_proof(
        &self,
        _: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProofResponse>, Status> {
        Err(not_here("ConsistencyProof"))
    }

    async fn get_directory(
        &self,
        _: Request<pb::GetDirectoryRequest>,
    ) -> Result<Response<pb::SignedDirectory>, Status> {
        Ok(Response::new(self.0.directory.clone()))
    }
}

/// A development federation whose broker address is a forging server, with
/// the keys a forger holds (the broker's) and, to make forgeries whose
/// signatures verify, both agencies' real bundles.
struct Scene {
    tmp: tempfile::TempDir,
    listener: Option<tokio::net::TcpListener>,
    config: Config,
    log_key: SigningKey,
    police: AgencyKeyBundle,
    social: AgencyKeyBundle,
    /// A real referral from police to social services.
    sent: Envelope,
    shutdown: CancellationToken,
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn bundle(dir: &Path) -> AgencyKeyBundle {
    Profile::load(dir, certs::now()).unwrap().bundles.remove(0)
}

impl Scene {
    async fn new() -> Self {
        init_crypto();
        let tmp = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dev = certs::dev::create(
            &tmp.path().join("federation"),
            &DevOptions { broker_addr: addr.to_string(), force: false },
            certs::now(),
        )
        .unwrap();
        let config = Config::for_dev_federation(&dev.dir, addr, &tmp.path().join("data"));
        let text = certs::secret_file::read(&config.federation.log_key).unwrap();
        let log_key = parse_signing_key_file(&text, KeyPurpose::BrokerLog).unwrap();
        let police = bundle(&dev.profile(POLICE_SYSTEM));
        let social = bundle(&dev.profile(SOCIAL_ONCALL));
        let directory = DirectoryState::open(
            &config.federation.directory,
            read_federation_key(&config.federation.federation_key).unwrap(),
            certs::now(),
        )
        .unwrap()
        .current()
        .directory
        .clone();
        let now = certs::now();
        let sent = seal(
            &example_notice(),
            &police,
            directory.agency(&AgencyId::new(SOCIAL).unwrap()).unwrap(),
            MessageId::generate(now.0),
            now,
        )
        .unwrap();
        Self {
            tmp,
            listener: Some(listener),
            config,
            log_key,
            police,
            social,
            sent,
            shutdown: CancellationToken::new(),
        }
    }

    fn id(&self) -> MessageId {
        self.sent.header.message_id
    }

    fn profile(&self, name: &str) -> std::path::PathBuf {
        self.tmp.path().join("federation").join("profiles").join(name)
    }

    /// A receipt for the referral sent, signed with the real log key.
    fn receipt(&self, status: ReceiptStatus, ack: Option<SignedAck>) -> pb::Receipt {
        let s = ReceiptStatement {
            message_id: self.id(),
            envelope_digest: self.sent.digest(),
            status,
            at: certs::now(),
            sender: AgencyId::new(POLICE).unwrap(),
            recipient: AgencyId::new(SOCIAL).unwrap(),
            recipient_sequence: 1,
            log_index: 3,
            detail: if status == ReceiptStatus::Acknowledged {
                format!("spiffe://igor.example.se/agency/{SOCIAL}/oncall/socialjour")
            } else {
                String::new()
            },
        };
        pb::Receipt::from(&s.sign(&self.log_key, ack))
    }

    /// An ack signed with `by`'s real bundle.
    fn ack(&self, message_id: MessageId, digest: Digest, by: &AgencyKeyBundle) -> SignedAck {
        sign_ack(message_id, digest, certs::now(), "jour-1", by).unwrap()
    }

    /// Starts the forging server with these receipts (answered by both
    /// GetReceipts, as one message's, and WatchReceipts).
    async fn serve(&mut self, mut answers: Answers) {
        let federation_key = read_federation_key(&self.config.federation.federation_key).unwrap();
        let directory = DirectoryState::open(&self.config.federation.directory, federation_key, certs::now()).unwrap();
        answers.directory = directory.current().signed.to_pb();
        let trust_domain = directory.current().directory.trust_domain.clone();
        let tls = Arc::new(TlsState::open(&self.config.tls).unwrap());
        let incoming = accept_loop(
            self.listener.take().expect("served once"),
            tls,
            AcceptOptions {
                handshake_timeout: Duration::from_secs(5),
                max_connections: 16,
                max_connections_per_principal: 16,
                trust_domain,
                registry: Default::default(),
                // The forging server judges nobody: it is the attacker.
                judge: broker::tls::Judge(std::sync::Arc::new(|_| Ok(()))),
            },
            Arc::new(AcceptStats::default()),
            self.shutdown.clone(),
        );
        let incoming = futures_util::stream::unfold(incoming, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        let forger = Forger(Arc::new(answers));
        let server = tonic::transport::Server::builder()
            .add_service(ReferralBrokerServer::new(forger.clone()))
            .add_service(AuditorServer::new(forger))
            .serve_with_incoming_shutdown(incoming, self.shutdown.clone().cancelled_owned());
        tokio::spawn(server);
    }

    /// Serves `receipts` as the sent message's, both ways.
    async fn serve_receipts(&mut self, receipts: Vec<pb::Receipt>) {
        let events = receipts
            .iter()
            .enumerate()
            .map(|(i, r)| pb::ReceiptEvent { cursor: i as u64 + 1, receipt: Some(r.clone()) });
        let answers = Answers {
            events: events.collect(),
            receipts: vec![pb::MessageReceipts { message_id: self.id().as_bytes().to_vec(), receipts }],
            ..Answers::default()
        };
        self.serve(answers).await;
    }

    async fn police(&self) -> Client {
        Client::connect_dir(&self.profile(POLICE_SYSTEM)).await.unwrap()
    }
}

/// Both ways a sender reads receipts must refuse with `expected`:
/// `GetReceipts` (status) and `WatchReceipts`, at the receipt in position
/// `at` of the stream.
async fn both_refuse(scene: &Scene, at: usize, expected: ReceiptMismatch, message: &str) {
    let client = scene.police().await;
    match client.receipts(&[scene.id()]).await {
        Err(ClientError::Untrusted(m)) => {
            assert_eq!(m, expected);
            assert_eq!(m.to_string(), message);
        }
        other => panic!("GetReceipts: expected {expected:?}, got {other:?}"),
    }
    let mut stream = client.watch_receipts(0).await.unwrap();
    for _ in 0..at {
        stream.next().await.expect("the receipts before the forged one are genuine").expect("a receipt");
    }
    match stream.next().await {
        Err(ClientError::Untrusted(m)) => assert_eq!(m, expected),
        other => panic!("WatchReceipts: expected {expected:?}, got {other:?}"),
    }
}

/// The control: genuine receipts through the same forging server are
/// believed, so the refusals below are about the forgeries alone.
#[tokio::test]
async fn a_genuine_acknowledgement_from_the_recipient_is_believed() {
    let mut scene = Scene::new().await;
    let ack = scene.ack(scene.id(), scene.sent.digest(), &scene.social);
    let receipts =
        vec![scene.receipt(ReceiptStatus::Accepted, None), scene.receipt(ReceiptStatus::Acknowledged, Some(ack))];
    scene.serve_receipts(receipts).await;
    let client = scene.police().await;
    let got = client.receipts(&[scene.id()]).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1[1].statement.status, ReceiptStatus::Acknowledged);
    assert_eq!(got[0].1[1].ack.as_ref().unwrap().statement.acker_agency.as_str(), SOCIAL);
    let mut stream = client.watch_receipts(0).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().1.statement.status, ReceiptStatus::Accepted);
    assert_eq!(stream.next().await.unwrap().unwrap().1.statement.status, ReceiptStatus::Acknowledged);
    assert!(stream.next().await.unwrap().is_none());
}

#[tokio::test]
async fn forged_acknowledged_without_a_signed_ack_is_refused() {
    let mut scene = Scene::new().await;
    let receipts = vec![scene.receipt(ReceiptStatus::Accepted, None), scene.receipt(ReceiptStatus::Acknowledged, None)];
    scene.serve_receipts(receipts).await;
    let id = scene.id();
    let message = format!("the broker's ACKNOWLEDGED receipt for {id} carries no signed acknowledgement");
    both_refuse(&scene, 1, ReceiptMismatch::AckMissing(id), &message).await;
}

#[tokio::test]
async fn forged_acknowledged_with_an_ack_by_another_agency_is_refused() {
    let mut scene = Scene::new().await;
    // The sender's own agency signs (its signature verifies against the
    // directory), but it is not the recipient.
    let ack = scene.ack(scene.id(), scene.sent.digest(), &scene.police);
    scene.serve_receipts(vec![scene.receipt(ReceiptStatus::Acknowledged, Some(ack))]).await;
    let id = scene.id();
    let expected = ReceiptMismatch::AckerNotRecipient {
        message_id: id,
        acker: AgencyId::new(POLICE).unwrap(),
        recipient: AgencyId::new(SOCIAL).unwrap(),
    };
    let message = format!(
        "the acknowledgement in the broker's receipt for {id} is signed by agency {POLICE}, not by the recipient {SOCIAL}"
    );
    both_refuse(&scene, 0, expected, &message).await;
}

#[tokio::test]
async fn forged_acknowledged_with_an_ack_for_another_message_is_refused() {
    let mut scene = Scene::new().await;
    // A real ack by the recipient, of another message (same envelope digest,
    // so only the message id gives it away).
    let other = MessageId::generate(certs::now().0);
    let ack = scene.ack(other, scene.sent.digest(), &scene.social);
    scene.serve_receipts(vec![scene.receipt(ReceiptStatus::Acknowledged, Some(ack))]).await;
    let id = scene.id();
    let message = format!("the acknowledgement in the broker's receipt for {id} is for another message ({other})");
    both_refuse(&scene, 0, ReceiptMismatch::AckForAnotherMessage { message_id: id, ack_message_id: other }, &message)
        .await;
}

#[tokio::test]
async fn forged_acknowledged_with_an_ack_for_another_envelope_is_refused() {
    let mut scene = Scene::new().await;
    let other = Digest::of(b"another envelope under the same message id");
    let ack = scene.ack(scene.id(), other, &scene.social);
    scene.serve_receipts(vec![scene.receipt(ReceiptStatus::Acknowledged, Some(ack))]).await;
    let id = scene.id();
    let (ack_digest, receipt_digest) = (other.to_hex(), scene.sent.digest().to_hex());
    let message = format!(
        "the acknowledgement in the broker's receipt for {id} is for another envelope (digest {ack_digest}, the receipt's is {receipt_digest})"
    );
    both_refuse(
        &scene,
        0,
        ReceiptMismatch::AckForAnotherEnvelope { message_id: id, ack_digest, receipt_digest },
        &message,
    )
    .await;
}

#[tokio::test]
async fn receipts_for_a_message_not_asked_for_are_refused() {
    let mut scene = Scene::new().await;
    let id = scene.id();
    let other = MessageId::generate(certs::now().0);
    let genuine = scene.receipt(ReceiptStatus::Accepted, None);
    // GetReceipts: the answer holds, besides the one asked for, another id.
    let entry =
        |m: MessageId| pb::MessageReceipts { message_id: m.as_bytes().to_vec(), receipts: vec![genuine.clone()] };
    // WatchReceipts carries this agency's messages only: a receipt of a
    // message social services sent is not an answer to this agency.
    let mut foreign = ReceiptStatement::try_from(genuine.statement.clone().unwrap()).unwrap();
    foreign.sender = AgencyId::new(SOCIAL).unwrap();
    foreign.recipient = AgencyId::new(POLICE).unwrap();
    let foreign = pb::Receipt::from(&foreign.sign(&scene.log_key, None));
    scene
        .serve(Answers {
            receipts: vec![entry(id), entry(other)],
            events: vec![pb::ReceiptEvent { cursor: 1, receipt: Some(foreign) }],
            ..Answers::default()
        })
        .await;
    let client = scene.police().await;
    match client.receipts(&[id]).await {
        Err(ClientError::Untrusted(m)) => {
            assert_eq!(m, ReceiptMismatch::NotRequested(other));
            assert_eq!(m.to_string(), format!("the broker answered receipts for {other}, which was not asked for"));
        }
        other => panic!("expected NotRequested, got {other:?}"),
    }
    let mut stream = client.watch_receipts(0).await.unwrap();
    let expected = ReceiptMismatch::AnotherSender {
        message_id: id,
        expected: AgencyId::new(POLICE).unwrap(),
        got: AgencyId::new(SOCIAL).unwrap(),
    };
    match stream.next().await {
        Err(ClientError::Untrusted(m)) => {
            assert_eq!(
                m.to_string(),
                format!("the broker's receipt for {id} names sender {SOCIAL}, but the message is from {POLICE}")
            );
            assert_eq!(m, expected);
        }
        other => panic!("expected AnotherSender, got {other:?}"),
    }
}

/// The other ways a `GetReceipts` answer can fail to match the question:
/// an id answered twice, an id left out, and an entry holding another
/// message's receipt.
#[tokio::test]
async fn receipts_answers_must_match_the_ids_asked_one_for_one() {
    let scene = Scene::new().await;
    let id = scene.id();
    let genuine = scene.receipt(ReceiptStatus::Accepted, None);
    let entry =
        |m: MessageId| pb::MessageReceipts { message_id: m.as_bytes().to_vec(), receipts: vec![genuine.clone()] };
    let other = MessageId::generate(certs::now().0);
    let dir = {
        let fk = read_federation_key(&scene.config.federation.federation_key).unwrap();
        DirectoryState::open(&scene.config.federation.directory, fk, certs::now()).unwrap().current().directory.clone()
    };
    let police = AgencyId::new(POLICE).unwrap();
    let check =
        |asked: &[MessageId], answer| match agency_client::trust::check_receipts_answer(&dir, asked, &police, answer) {
            Err(ClientError::Untrusted(m)) => m,
            other => panic!("expected a mismatch, got {other:?}"),
        };
    assert_eq!(check(&[id], vec![entry(id), entry(id)]), ReceiptMismatch::AnsweredTwice(id));
    assert_eq!(check(&[id, other], vec![entry(id)]), ReceiptMismatch::NotAnswered(other));
    assert_eq!(check(&[other], vec![entry(other)]), ReceiptMismatch::AnotherMessage { expected: other, got: id });
}

/// `audit prove`: a valid proof, under a correctly signed tree head, of an
/// entry that is not the requested message's submission is refused.
#[tokio::test]
async fn inclusion_proof_of_another_entry_is_refused() {
    let mut scene = Scene::new().await;
    let asked = MessageId::generate(certs::now().0);
    // The log holds one entry: the submission of the referral sent, not of `asked`.
    let env = pb::Envelope::from(&scene.sent);
    let entry = pb::AuditEntry {
        format_version: referral_proto::audit::AUDIT_ENTRY_FORMAT_VERSION,
        index: 0,
        logged_at_ms: certs::now().0,
        event: Some(pb::audit_entry::Event::Submitted(pb::Submitted {
            header: env.header.clone(),
            payload_digest: scene.sent.payload_digest().0.to_vec(),
            signature: env.signature.clone(),
            envelope_digest: scene.sent.digest().0.to_vec(),
            recipient_sequence: 1,
            payload_length: env.ciphertext.len() as u32,
            submitted_by: format!("spiffe://igor.example.se/agency/{POLICE}/system/arendesystem"),
        })),
    };
    let bytes = prost::Message::encode_to_vec(&entry);
    let head = TreeHead { tree_size: 1, root_hash: leaf_hash(&bytes), timestamp: certs::now() }.sign(&scene.log_key);
    scene
        .serve(Answers {
            proof: Some(pb::InclusionProofResponse {
                entry: Some(pb::LogEntry { index: 0, entry: bytes }),
                tree_size: 1,
                path: vec![],
                tree_head: Some(head.to_pb()),
            }),
            ..Answers::default()
        })
        .await;
    let auditor = Client::connect_dir(&scene.profile(AUDITOR)).await.unwrap();
    let err = auditor.prove(asked).await.unwrap_err();
    let sent = scene.id();
    assert!(
        matches!(&err, ClientError::ProofForAnotherEntry { message_id, index: 0, entry } if *message_id == asked && *entry == format!("the submission of {sent}")),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("the broker proved entry #0 (the submission of {sent}), not the submission of {asked}")
    );
}

/// The on-call side: a "settled" alert (a colleague took the referral) is
/// believed only with an ack by this agency, for the message it names.
#[tokio::test]
async fn forged_settled_alert_with_another_agencys_ack_is_refused() {
    let mut scene = Scene::new().await;
    let id = scene.id();
    // Social services' on-call is told police acknowledged its referral.
    let ack = scene.ack(id, scene.sent.digest(), &scene.police);
    let settled = |ack: &SignedAck| pb::Alert {
        event: Some(pb::alert::Event::Settled(pb::Settled {
            message_id: id.as_bytes().to_vec(),
            sequence: 1,
            ack: Some(pb::SignedAck::from(ack)),
        })),
    };
    let genuine = scene.ack(id, scene.sent.digest(), &scene.social);
    scene.serve(Answers { alerts: vec![settled(&genuine), settled(&ack)], ..Answers::default() }).await;
    let oncall = Client::connect_dir(&scene.profile(SOCIAL_ONCALL)).await.unwrap();
    let mut alerts = oncall.subscribe().await.unwrap();
    match alerts.next().await.unwrap().unwrap() {
        agency_client::alerts::AlertEvent::Settled { message_id, acknowledged_by, .. } => {
            assert_eq!((message_id, acknowledged_by.as_str()), (id, "jour-1"));
        }
        other => panic!("expected the genuine settled alert, got {other:?}"),
    }
    let err = alerts.next().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the broker's settled alert for {id} carries an acknowledgement by {POLICE} of {id}, not one by this agency ({SOCIAL})"
        )
    );
}

/// `agency-client ack ID` takes the envelope to acknowledge from `Fetch`:
/// a broker that answers with another message gets nothing signed.
#[tokio::test]
async fn a_fetch_answered_with_another_message_is_not_acknowledged() {
    let mut scene = Scene::new().await;
    let delivery = pb::Delivery {
        envelope: Some(pb::Envelope::from(&scene.sent)),
        envelope_digest: scene.sent.digest().0.to_vec(),
        sequence: 1,
        ..pb::Delivery::default()
    };
    let outcome = Some(pb::fetch_response::Outcome::Waiting(delivery));
    scene.serve(Answers { fetch: Some(pb::FetchResponse { outcome }), ..Answers::default() }).await;
    let oncall = Client::connect_dir(&scene.profile(SOCIAL_ONCALL)).await.unwrap();
    let asked = MessageId::generate(certs::now().0);
    let expected = format!("the broker answered the fetch of {asked} with another message ({})", scene.id());
    for result in [oncall.ack(asked, "jour-1").await.map(drop), oncall.fetch(asked).await.map(drop)] {
        match result {
            Err(ClientError::Invalid(m)) => assert_eq!(m, expected),
            other => panic!("expected the mismatch to be refused, got {other:?}"),
        }
    }
    // The control: asked for the message it carries, the same answer is opened.
    assert!(matches!(
        oncall.fetch(scene.id()).await.unwrap(),
        agency_client::alerts::Fetched::Waiting(agency_client::alerts::AlertEvent::Referral(_))
    ));
}

/// A settled answer to `Fetch` is believed only as far as its receipt proves it.
#[tokio::test]
async fn a_fetch_answered_acknowledged_without_a_signed_ack_is_refused() {
    let mut scene = Scene::new().await;
    let outcome = Some(pb::fetch_response::Outcome::Acknowledged(scene.receipt(ReceiptStatus::Acknowledged, None)));
    scene.serve(Answers { fetch: Some(pb::FetchResponse { outcome }), ..Answers::default() }).await;
    let oncall = Client::connect_dir(&scene.profile(SOCIAL_ONCALL)).await.unwrap();
    match oncall.ack(scene.id(), "jour-1").await {
        Err(ClientError::Untrusted(m)) => assert_eq!(m, ReceiptMismatch::AckMissing(scene.id())),
        other => panic!("expected the unproven ACKNOWLEDGED to be refused, got {other:?}"),
    }
}
