//! `loadgen serve-ceiling`: the cost of gRPC and mutual TLS alone.
//!
//! The same listener as the broker (its `TlsState` and `accept_loop`: TLS
//! 1.3, ALPN h2, client certificates verified against the federation CA and
//! CRL, TCP_NODELAY, the handshake timeout and connection cap) and the same
//! tonic server settings (keepalive, largest decoded message), serving
//! `referral.v1.ReferralBroker`. `Submit` has its request decoded by tonic
//! and answers one `SubmitResponse` made at start-up (a real receipt signed
//! with the broker's log key), without verifying or storing anything. Every
//! other RPC answers `UNIMPLEMENTED`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use broker::config::Config;
use broker::directory::{DirectoryState, read_federation_key};
use broker::server::MAX_DECODING_BYTES;
use broker::tls::{AcceptOptions, AcceptStats, TlsState, accept_loop};
use referral_proto::Digest;
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::keys::{KeyPurpose, parse_signing_key_file};
use referral_proto::pb;
use referral_proto::pb::referral_broker_server::{ReferralBroker, ReferralBrokerServer};
use referral_proto::receipt::{ReceiptStatement, ReceiptStatus};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The ceiling service: a fixed answer to every submit.
#[derive(Debug, Clone)]
pub struct Ceiling {
    answer: Arc<pb::SubmitResponse>,
}

impl Ceiling {
    pub fn new(answer: pb::SubmitResponse) -> Self {
        Self { answer: Arc::new(answer) }
    }
}

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("the ceiling server answers Submit only, not {rpc}"))
}

#[tonic::async_trait]
impl ReferralBroker for Ceiling {
    async fn submit(&self, req: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        // The request was decoded by tonic; it is dropped unexamined.
        drop(req);
        Ok(Response::new((*self.answer).clone()))
    }

    type SubmitStreamStream = tokio_stream::Empty<Result<pb::SubmitStreamResponse, Status>>;

    async fn submit_stream(
        &self,
        _: Request<tonic::Streaming<pb::SubmitStreamRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        Err(unimplemented("SubmitStream"))
    }

    type SubscribeStream = tokio_stream::Empty<Result<pb::Alert, Status>>;

    async fn subscribe(&self, _: Request<pb::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(unimplemented("Subscribe"))
    }

    async fn ack(&self, _: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        Err(unimplemented("Ack"))
    }

    async fn fetch(&self, _: Request<pb::FetchRequest>) -> Result<Response<pb::FetchResponse>, Status> {
        Err(unimplemented("Fetch"))
    }

    async fn get_receipts(
        &self,
        _: Request<pb::GetReceiptsRequest>,
    ) -> Result<Response<pb::GetReceiptsResponse>, Status> {
        Err(unimplemented("GetReceipts"))
    }

    type WatchReceiptsStream = tokio_stream::Empty<Result<pb::ReceiptEvent, Status>>;

    async fn watch_receipts(
        &self,
        _: Request<pb::WatchReceiptsRequest>,
    ) -> Result<Response<Self::WatchReceiptsStream>, Status> {
        Err(unimplemented("WatchReceipts"))
    }

    async fn get_directory(
        &self,
        _: Request<pb::GetDirectoryRequest>,
    ) -> Result<Response<pb::SignedDirectory>, Status> {
        Err(unimplemented("GetDirectory"))
    }
}

/// The fixed answer: an ACCEPTED receipt for a made-up message between the
/// directory's first two agencies, signed once with the broker's log key.
fn fixed_answer(config: &Config, directory: &DirectoryState) -> anyhow::Result<pb::SubmitResponse> {
    let path = config.federation.log_key.display().to_string();
    let text = certs::secret_file::read(&config.federation.log_key).with_context(|| format!("cannot read {path}"))?;
    let log_key = parse_signing_key_file(&text, KeyPurpose::BrokerLog).with_context(|| path.clone())?;
    let loaded = directory.current();
    let agencies: Vec<AgencyId> = loaded.directory.agencies.keys().cloned().collect();
    let [sender, recipient, ..] = agencies.as_slice() else {
        anyhow::bail!("the directory must list two agencies");
    };
    let now = certs::now();
    let receipt = ReceiptStatement {
        message_id: MessageId::generate(now.0),
        envelope_digest: Digest::of(b"loadgen ceiling"),
        status: ReceiptStatus::Accepted,
        at: now,
        sender: sender.clone(),
        recipient: recipient.clone(),
        recipient_sequence: 1,
        log_index: 0,
        detail: String::new(),
    }
    .sign(&log_key, None);
    Ok(pb::SubmitResponse { receipt: Some(pb::Receipt::from(&receipt)), duplicate: false })
}

/// Serves until SIGTERM or SIGINT.
pub async fn serve(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path, &[])?;
    let federation_key = read_federation_key(&config.federation.federation_key)?;
    let directory = DirectoryState::open(&config.federation.directory, federation_key, certs::now())?;
    let answer = fixed_answer(&config, &directory)?;
    let trust_domain = directory.current().directory.trust_domain.clone();
    let tls = Arc::new(TlsState::open(&config.tls)?);
    let termination = broker::cli::Termination::listen().context("cannot install the SIGTERM/SIGINT handlers")?;
    let listener = tokio::net::TcpListener::bind(config.listen.address)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen.address))?;
    let shutdown = CancellationToken::new();
    let incoming = accept_loop(
        listener,
        tls,
        AcceptOptions {
            handshake_timeout: config.listen.handshake_timeout,
            max_connections: config.listen.max_connections,
            max_connections_per_principal: config.limits.max_connections_per_principal,
            trust_domain,
            registry: Default::default(),
            // The ceiling server has no CRL reloads or directory to judge by.
            judge: broker::tls::Judge(Arc::new(|_| Ok(()))),
        },
        Arc::new(AcceptStats::default()),
        shutdown.clone(),
    );
    let service = ReferralBrokerServer::new(Ceiling::new(answer)).max_decoding_message_size(MAX_DECODING_BYTES);
    let hb = config.delivery.heartbeat_interval;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        termination.recv().await;
        stop.cancel();
    });
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(hb))
        .http2_keepalive_timeout(Some(hb))
        .add_service(service)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(incoming), shutdown.cancelled_owned())
        .await
        .context("the gRPC server failed")
}

/// `loadgen serve-ceiling --config FILE`, with the broker's runtime and
/// crypto provider.
pub fn main(config_path: &Path) -> ExitCode {
    agency_client::cli::run_program(serve(config_path), |()| ExitCode::SUCCESS)
}
