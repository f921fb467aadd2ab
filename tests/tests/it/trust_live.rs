//! Trust is judged continuously: a revoked, expired or removed principal
//! loses its open streams and connections, and nothing is delivered to it.

use std::time::Duration;

use integration_tests::{Harness, POLICE_SYSTEM, SOCIAL, SOCIAL_ONCALL, SOCIAL_SYSTEM};
use referral_proto::ids::{AgencyId, Principal, Role, TrustDomain};
use referral_proto::notice::example_notice;
use referral_proto::pb;
use referral_proto::receipt::ReceiptStatus;
use tonic::Code;
use tonic::codec::Streaming;

use crate::support::audit_entries;

const LIMIT: Duration = Duration::from_secs(10);

fn social_oncall(name: &str) -> Principal {
    Principal::new(
        TrustDomain::new(certs::dev::TRUST_DOMAIN).unwrap(),
        AgencyId::new(SOCIAL).unwrap(),
        Role::Oncall,
        name,
    )
    .unwrap()
}

fn ca_pem(h: &Harness) -> String {
    std::fs::read_to_string(h.dev.federation_dir().join("ca.pem")).unwrap()
}

/// Opens a Subscribe stream and reads it up to the end of the backlog.
async fn subscribed(
    client: &mut pb::referral_broker_client::ReferralBrokerClient<tonic::transport::Channel>,
) -> Streaming<pb::Alert> {
    let mut stream = client.subscribe(pb::SubscribeRequest {}).await.expect("subscribe").into_inner();
    loop {
        let alert = tokio::time::timeout(LIMIT, stream.message()).await.expect("backlog in time").unwrap().unwrap();
        if matches!(alert.event, Some(pb::alert::Event::CaughtUp(_))) {
            return stream;
        }
    }
}

/// Reads the stream until it ends; it must end with `code` and `message`,
/// having delivered nothing.
async fn ends_with(stream: &mut Streaming<pb::Alert>, code: Code, message: &str) {
    loop {
        match tokio::time::timeout(LIMIT, stream.message()).await.expect("the stream must end in time") {
            Ok(Some(pb::Alert { event: Some(pb::alert::Event::Heartbeat(_)) })) => continue,
            Ok(other) => panic!("expected the stream to end with {code:?}, got {other:?}"),
            Err(status) => {
                assert_eq!(status.code(), code, "{status:?}");
                assert_eq!(status.message(), message);
                return;
            }
        }
    }
}

/// Waits (bounded) until the broker holds no connection of `principal`.
async fn connection_closed(h: &Harness, principal: &Principal) {
    let uri = principal.uri();
    tokio::time::timeout(LIMIT, async {
        while h.state().connections.count_of(&uri) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the broker closes the connection");
}

/// Sends a referral from the police to social services after the cause,
/// has it delivered to the social services' system (so that the broker
/// did look for subscribers), and checks that no Delivered entry and no
/// DELIVERED receipt names `excluded`.
async fn never_delivered_to(h: &Harness, excluded: &Principal) {
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    let system = h.client(SOCIAL_SYSTEM).await;
    let mut alerts = system.subscribe().await.unwrap();
    loop {
        match tokio::time::timeout(LIMIT, alerts.next()).await.expect("delivered in time").unwrap().unwrap() {
            agency_client::alerts::AlertEvent::Referral(r) if r.message_id == sent.message_id => break,
            _ => {}
        }
    }
    h.state().committer.barrier().await;
    let excluded = excluded.uri();
    let id = sent.message_id.as_bytes().to_vec();
    let mut delivered_to = Vec::new();
    for e in audit_entries(h).await {
        if let Some(pb::audit_entry::Event::Delivered(d)) = e.event
            && d.message_id == id
        {
            delivered_to.push(d.principal);
        }
    }
    assert!(!delivered_to.is_empty(), "the referral was delivered to someone");
    assert!(!delivered_to.contains(&excluded), "delivered to an untrusted principal: {delivered_to:?}");
    let receipts = police.receipts(&[sent.message_id]).await.unwrap();
    for r in &receipts[0].1 {
        if r.statement.status == ReceiptStatus::Delivered {
            assert_ne!(r.statement.detail, excluded, "a DELIVERED receipt names an untrusted principal");
        }
    }
}

#[tokio::test]
async fn revoked_certificate_ends_open_subscribe_stream() {
    let h = Harness::start().await;
    let oncall = h.client(SOCIAL_ONCALL).await;
    let mut broker = oncall.broker();
    let mut stream = subscribed(&mut broker).await;
    let principal = social_oncall("socialjour");
    h.federation().revoke(&principal.uri(), certs::now()).unwrap();
    h.reload();
    ends_with(&mut stream, Code::Unauthenticated, "client certificate has been revoked").await;
    connection_closed(&h, &principal).await;
    never_delivered_to(&h, &principal).await;
    // Its calls fail too: the new connection is refused at the handshake.
    let err = broker.get_directory(pb::GetDirectoryRequest {}).await.unwrap_err();
    assert!(format!("{err:?}").contains("CertificateRevoked"), "{err:?}");
}

#[tokio::test]
async fn expiring_certificate_ends_open_subscribe_stream_at_its_expiry() {
    let h = Harness::start().await;
    let principal = social_oncall("kortlivad");
    let now = certs::now();
    // X.509 times have whole seconds; a few seconds ahead.
    let not_after = referral_proto::time::Timestamp((now.0 / 1000 + 3) * 1000);
    let issued = h.federation().issue_principal(&principal, now.plus_millis(-60_000), not_after).unwrap();
    let mut broker =
        integration_tests::raw_client(h.addr, &ca_pem(&h), Some((&issued.cert_pem, &issued.key_pem))).await.unwrap();
    let mut stream = subscribed(&mut broker).await;
    ends_with(&mut stream, Code::Unauthenticated, "client certificate has expired").await;
    assert!(certs::now().0 > not_after.0, "ended at the expiry instant, not before");
    connection_closed(&h, &principal).await;
    never_delivered_to(&h, &principal).await;
}

/// Edits the federation's registry: removes an agency, or puts it back.
fn edit_agencies(h: &Harness, edit: impl FnOnce(&mut Vec<toml::Value>)) {
    let path = h.dev.federation_dir().join("federation.toml");
    let mut state: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let agencies = state.get_mut("agencies").and_then(|a| a.as_array_mut()).expect("agencies");
    edit(agencies);
    std::fs::write(&path, toml::to_string(&state).unwrap()).unwrap();
    h.federation().publish_directory(certs::now()).unwrap();
}

#[tokio::test]
async fn agency_removed_from_the_directory_ends_open_subscribe_stream() {
    let h = Harness::start().await;
    let oncall = h.client(SOCIAL_ONCALL).await;
    let mut broker = oncall.broker();
    let mut stream = subscribed(&mut broker).await;
    let principal = social_oncall("socialjour");
    let mut removed = None;
    edit_agencies(&h, |agencies| {
        let i = agencies.iter().position(|a| a.get("id").and_then(|v| v.as_str()) == Some(SOCIAL)).unwrap();
        removed = Some(agencies.remove(i));
    });
    h.reload();
    ends_with(
        &mut stream,
        Code::PermissionDenied,
        "agency huddinge-socialtjanst is not in the directory, so it may not use the broker",
    )
    .await;
    connection_closed(&h, &principal).await;
    // The agency comes back in a later directory: its other principals are
    // served again, but the ended connection received nothing.
    edit_agencies(&h, |agencies| agencies.push(removed.take().unwrap()));
    h.reload();
    never_delivered_to(&h, &principal).await;
}

/// Revokes the police system's certificate and reloads, as SIGHUP does.
fn revoke_police_system(h: &Harness) {
    let uri = Principal::new(
        TrustDomain::new(certs::dev::TRUST_DOMAIN).unwrap(),
        AgencyId::new(integration_tests::POLICE).unwrap(),
        Role::System,
        "arendesystem",
    )
    .unwrap()
    .uri();
    h.federation().revoke(&uri, certs::now()).unwrap();
    h.reload();
}

/// Reads any stream until it ends (bounded); it must end with the status
/// of a revoked certificate.
async fn ends_revoked<T: std::fmt::Debug>(stream: &mut Streaming<T>, what: &str) {
    let status = tokio::time::timeout(LIMIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the {what} ended without a status"),
                Err(s) => return s,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the {what} ends in time"));
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(integration_tests::reason(&status).as_deref(), Some("revoked"), "{status:?}");
    assert_eq!(status.message(), "client certificate has been revoked");
}

#[tokio::test]
async fn revoked_certificate_ends_open_receipt_watch() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let mut broker = police.broker();
    let mut watch = broker.watch_receipts(pb::WatchReceiptsRequest { after_cursor: 0 }).await.unwrap().into_inner();
    revoke_police_system(&h);
    ends_revoked(&mut watch, "receipt watch").await;
}

#[tokio::test]
async fn revoked_certificate_ends_open_health_watch() {
    let h = Harness::start().await;
    let p = crate::support::profile(&h, POLICE_SYSTEM);
    let channel = integration_tests::raw_channel(h.addr, &ca_pem(&h), Some((&p.cert_pem, &p.key_pem))).await.unwrap();
    let mut watch = tonic_health::pb::health_client::HealthClient::new(channel)
        .watch(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    revoke_police_system(&h);
    ends_revoked(&mut watch, "health watch").await;
}
