//! HTTP/2 limits, tried with a raw HTTP/2 client (frames written by hand,
//! so that nothing on the client side holds back): the advertised stream
//! limit is enforced, operational streams count against the principal's
//! stream limit, and one certificate cannot take every connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use integration_tests::{Harness, Options, POLICE_SYSTEM, SOCIAL_SYSTEM};
use referral_proto::pb;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

use crate::support::profile;

const LIMIT: Duration = Duration::from_secs(10);

const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection (ALPN h2) with `name`'s certificate.
async fn tls(h: &Harness, name: &str) -> Tls {
    let p = profile(h, name);
    let ca = std::fs::read_to_string(h.dev.federation_dir().join("ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
    let chain = CertificateDer::pem_slice_iter(p.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(p.key_pem.as_bytes()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

async fn write_frame(io: &mut Tls, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    io.write_all(&f).await.unwrap();
    io.flush().await.unwrap();
}

/// (type, flags, stream, payload)
async fn read_frame(io: &mut Tls) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    tokio::time::timeout(LIMIT, io.read_exact(&mut head)).await.expect("a frame in time").expect("a frame");
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.unwrap();
    (head[3], head[4], stream, payload)
}

fn literal(out: &mut Vec<u8>, prefix: u8, name: Option<&str>, value: &str) {
    out.push(prefix);
    if let Some(n) = name {
        out.push(n.len() as u8);
        out.extend_from_slice(n.as_bytes());
    }
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// An HPACK block (no Huffman, nothing indexed) for a gRPC call to `path`.
fn grpc_headers(path: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x87]; // :method POST, :scheme https (static table)
    literal(&mut b, 0x04, None, path); // :path, name from the static table
    literal(&mut b, 0x01, None, "localhost"); // :authority
    literal(&mut b, 0x00, Some("content-type"), "application/grpc");
    literal(&mut b, 0x00, Some("te"), "trailers");
    b
}

/// Opens the connection: preface, settings exchanged and acknowledged (a
/// ping round trip proves the server has read the acknowledgement).
/// Returns the server's settings.
async fn handshake(io: &mut Tls) -> Vec<(u16, u32)> {
    io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    write_frame(io, SETTINGS, 0, 0, &[]).await;
    let settings = loop {
        let (kind, flags, _, payload) = read_frame(io).await;
        if kind == SETTINGS && flags & ACK == 0 {
            break payload
                .chunks(6)
                .map(|c| (u16::from_be_bytes([c[0], c[1]]), u32::from_be_bytes([c[2], c[3], c[4], c[5]])))
                .collect::<Vec<_>>();
        }
    };
    write_frame(io, SETTINGS, ACK, 0, &[]).await;
    write_frame(io, PING, 0, 0, b"12345678").await;
    loop {
        let (kind, flags, _, _) = read_frame(io).await;
        if kind == PING && flags & ACK != 0 {
            return settings;
        }
    }
}

#[tokio::test]
async fn server_advertises_and_enforces_its_stream_limit() {
    const STREAMS: u32 = 8;
    let h = Harness::start_with(Options {
        tweak: Box::new(|c| c.limits.max_concurrent_streams_per_connection = STREAMS),
        ..Options::default()
    })
    .await;
    let mut io = tls(&h, POLICE_SYSTEM).await;
    let settings = handshake(&mut io).await;
    assert!(settings.contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, STREAMS)), "{settings:?}");
    assert!(settings.contains(&(SETTINGS_MAX_HEADER_LIST_SIZE, 16 * 1024)), "{settings:?}");
    // STREAMS calls left open (their request body never ends), then one more.
    let block = grpc_headers("/referral.v1.ReferralBroker/GetDirectory");
    for i in 0..=STREAMS {
        write_frame(&mut io, HEADERS, END_HEADERS, 2 * i + 1, &block).await;
    }
    let over = 2 * STREAMS + 1;
    loop {
        let (kind, _, stream, payload) = read_frame(&mut io).await;
        assert_ne!(kind, GOAWAY, "the connection itself must stay up");
        if kind == RST_STREAM {
            assert_eq!(stream, over, "only the stream over the limit is refused");
            assert_eq!(u32::from_be_bytes(payload[..4].try_into().unwrap()), REFUSED_STREAM);
            break;
        }
    }
}

#[tokio::test]
async fn health_and_reflection_streams_count_against_the_principal_stream_limit() {
    let h = Harness::start_with(Options {
        tweak: Box::new(|c| c.limits.max_streams_per_principal = 2),
        ..Options::default()
    })
    .await;
    let p = profile(&h, POLICE_SYSTEM);
    let ca = std::fs::read_to_string(h.dev.federation_dir().join("ca.pem")).unwrap();
    let channel = integration_tests::raw_channel(h.addr, &ca, Some((&p.cert_pem, &p.key_pem))).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let watch = || tonic_health::pb::HealthCheckRequest { service: String::new() };
    let _first = health.watch(watch()).await.expect("first stream");
    let _second = health.watch(watch()).await.expect("second stream");
    let refused = health.watch(watch()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(refused.message(), "too many concurrent streams for this principal (limit 2)");
    // The same count as the broker's own streams.
    let subscribe = pb::referral_broker_client::ReferralBrokerClient::new(channel.clone())
        .subscribe(pb::SubscribeRequest {})
        .await
        .unwrap_err();
    assert_eq!(subscribe.code(), Code::ResourceExhausted);
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let reflected = reflection.server_reflection_info(futures_util::stream::iter([request])).await.unwrap_err();
    assert_eq!(reflected.code(), Code::ResourceExhausted);
    // Another principal is not affected.
    let social = profile(&h, SOCIAL_SYSTEM);
    let other = integration_tests::raw_channel(h.addr, &ca, Some((&social.cert_pem, &social.key_pem))).await.unwrap();
    tonic_health::pb::health_client::HealthClient::new(other).watch(watch()).await.expect("another principal");
}

#[tokio::test]
async fn one_certificate_cannot_take_more_connections_than_its_cap() {
    let h = Harness::start_with(Options {
        tweak: Box::new(|c| c.limits.max_connections_per_principal = 2),
        ..Options::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut io = tls(&h, POLICE_SYSTEM).await;
        handshake(&mut io).await;
        held.push(io);
    }
    // The third: the server's preface, then GOAWAY with ENHANCE_YOUR_CALM.
    let mut io = tls(&h, POLICE_SYSTEM).await;
    io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    write_frame(&mut io, SETTINGS, 0, 0, &[]).await;
    let (kind, _, _, _) = read_frame(&mut io).await;
    assert_eq!(kind, SETTINGS);
    let (kind, _, stream, payload) = read_frame(&mut io).await;
    assert_eq!((kind, stream), (GOAWAY, 0));
    assert_eq!(u32::from_be_bytes(payload[4..8].try_into().unwrap()), ENHANCE_YOUR_CALM);
    assert_eq!(&payload[8..], b"too many connections for this principal (limit 2)");
    assert_eq!(h.state().accept_stats.refused_per_principal.load(Ordering::Relaxed), 1);
    // Another principal still connects.
    let ca = std::fs::read_to_string(h.dev.federation_dir().join("ca.pem")).unwrap();
    let social = profile(&h, SOCIAL_SYSTEM);
    integration_tests::raw_client(h.addr, &ca, Some((&social.cert_pem, &social.key_pem)))
        .await
        .unwrap()
        .get_directory(pb::GetDirectoryRequest {})
        .await
        .expect("another principal is served");
    // A slot freed is a slot to take again.
    drop(held.pop());
    let uri = format!("spiffe://{}/agency/polisen-huddinge/system/arendesystem", certs::dev::TRUST_DOMAIN);
    tokio::time::timeout(LIMIT, async {
        while h.state().connections.count_of(&uri) > 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the closed connection is released");
    let p = profile(&h, POLICE_SYSTEM);
    integration_tests::raw_client(h.addr, &ca, Some((&p.cert_pem, &p.key_pem)))
        .await
        .unwrap()
        .get_directory(pb::GetDirectoryRequest {})
        .await
        .expect("a freed slot");
}
