//! What operators rely on: gRPC health with its transitions, reflection,
//! metrics after traffic, status, backup and restore, and key and
//! certificate rotation with traffic flowing.

use std::time::Duration;

use crate::support::exe;
use agency_client::alerts::AlertEvent;
use futures_util::StreamExt as _;
use integration_tests::*;
use referral_proto::ids::AgencyId;
use referral_proto::notice::example_notice;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn health_is_serving_and_turns_not_serving_when_the_certificate_expires() {
    let h = Harness::start_with(Options { manual_clock: true, ..Options::default() }).await;
    let client = h.client(POLICE_ONCALL).await;
    let mut health = HealthClient::new(client.channel());
    let mut watch =
        health.watch(HealthCheckRequest { service: "referral.v1.ReferralBroker".into() }).await.unwrap().into_inner();
    loop {
        let s = watch.next().await.unwrap().unwrap();
        if s.status == ServingStatus::Serving as i32 {
            break;
        }
    }
    let (code, body) = h.admin("GET", "/health", None).await;
    assert_eq!((code, body.trim()), (200, "SERVING"));
    // A year and more later, the broker's own certificate has expired.
    h.advance(Duration::from_secs(400 * 86_400));
    loop {
        let s = watch.next().await.unwrap().unwrap();
        if s.status == ServingStatus::NotServing as i32 {
            break;
        }
    }
    let (code, body) = h.admin("GET", "/health", None).await;
    assert_eq!(code, 503);
    assert!(body.contains("server certificate expired at"), "{body}");
}

#[tokio::test]
async fn expiring_credentials_are_warned_about_ahead_of_time() {
    let h = Harness::start_with(Options { manual_clock: true, ..Options::default() }).await;
    let (problems, warnings) = broker::health::check(h.state()).await;
    assert!(problems.is_empty() && warnings.is_empty(), "{problems:?} {warnings:?}");
    // 25 days on, the 30-day CRL is within the 14-day warning window.
    h.advance(Duration::from_secs(25 * 86_400));
    let (problems, warnings) = broker::health::check(h.state()).await;
    assert!(problems.is_empty(), "{problems:?}");
    assert!(warnings.iter().any(|w| w.starts_with("the CRL expires at") && w.contains("certs crl")), "{warnings:?}");
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let h = Harness::start().await;
    let client = h.client(AUDITOR).await;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(client.channel())
        .server_reflection_info(futures_util::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let r = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = r.message_response else { panic!("unexpected {r:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["referral.v1.ReferralBroker", "referral.v1.Auditor", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
}

#[tokio::test]
async fn metrics_describe_traffic_without_personal_data() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let mut n = example_notice();
    n.subject.name = "Metrik Personsson".into();
    let social = AgencyId::new(SOCIAL).unwrap();
    // One delivered and acknowledged, one left waiting (oldest unacked).
    let sent = police.send(&social, &n).await.unwrap();
    police.send(&social, &example_notice()).await.unwrap();
    let oncall = h.client(SOCIAL_ONCALL).await;
    let mut alerts = oncall.subscribe().await.unwrap();
    let mut delivered = 0;
    while delivered < 2 {
        if let AlertEvent::Referral(_) = alerts.next().await.unwrap().unwrap() {
            delivered += 1;
        }
    }
    oncall.ack_digest(sent.message_id, sent.envelope_digest, "jour-1").await.unwrap();
    let mut bad = crate::support::example_envelope(&h, POLICE_SYSTEM, SOCIAL).await;
    bad.signature[1] ^= 1;
    crate::support::submit_raw(&police, bad).await.unwrap_err();
    broker::health::update_gauges(h.state());
    let (code, text) = h.admin("GET", "/metrics", None).await;
    assert_eq!(code, 200);
    for expected in [
        "broker_submits_total{outcome=\"accepted\"}",
        "broker_rejections_total{reason=\"bad_signature\"}",
        "broker_deliveries_total",
        "broker_acks_total",
        "broker_streams_open",
        "broker_oldest_unacked_seconds{recipient=\"huddinge-socialtjanst\"}",
        "broker_audit_log_entries",
        "broker_commit_seconds_bucket",
        "broker_queue_depth{recipient=\"huddinge-socialtjanst\"}",
        "broker_certificate_not_after_seconds{which=\"server\"}",
        "broker_connections_open{kind=\"tls\"}",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    assert!(!text.contains("Personsson") && !text.contains("spiffe://"), "no people, no principals in labels");
}

/// A broker on `storage` (its `[storage]` lines beside data_dir) holding
/// three referrals to social services, the first acknowledged.
async fn three_sent_one_acked(
    dir: &std::path::Path,
    storage: &str,
) -> (ChildBroker, Vec<referral_proto::ids::MessageId>) {
    let b = ChildBroker::start_on(exe(), dir, &dir.join("data"), storage, "").await;
    let police = agency_client::Client::connect_dir(&b.dev.profile(POLICE_SYSTEM)).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap().message_id);
    }
    let oncall = agency_client::Client::connect_dir(&b.dev.profile(SOCIAL_ONCALL)).await.unwrap();
    oncall.ack(ids[0], "jour-1").await.unwrap();
    (b, ids)
}

#[tokio::test]
async fn status_backup_and_restore_with_a_running_and_a_stopped_broker() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut b, ids) = three_sent_one_acked(tmp.path(), "").await;
    let config = b.config_path.display().to_string();

    // Status from the running broker.
    let (code, out, err) = run_tool(exe(), "broker", &["status", "--config", &config, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(status["queues"][SOCIAL]["pending"], 2);
    assert_eq!(status["queues"][SOCIAL]["last_sequence"], 3);

    // A backup while serving.
    let backup = tmp.path().join("backup");
    let (code, out, err) =
        run_tool(exe(), "broker", &["backup", "--config", &config, "--to", backup.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("verified"), "{out}");
    // A backup refuses a folder that holds something.
    let (code, _, err) =
        run_tool(exe(), "broker", &["backup", "--config", &config, "--to", backup.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{}: already exists", backup.display())), "the real cause: {err}");

    // Lose the data directory; restore refuses while the broker runs.
    let (code, _, err) =
        run_tool(exe(), "broker", &["restore", "--config", &config, "--from", backup.to_str().unwrap()]).await;
    assert_eq!(code, 1);
    assert!(err.contains("stop it before restoring"), "{err}");
    assert!(b.terminate().await.success());
    // Status from the stopped broker's data directory.
    let (code, out, _) = run_tool(exe(), "broker", &["status", "--config", &config]).await;
    assert_eq!(code, 0);
    assert!(out.contains("huddinge-socialtjanst") && out.contains("pending        2"), "{out}");
    assert!(out.starts_with("broker: not running"), "{out}");
    std::fs::rename(&b.data_dir, tmp.path().join("lost")).unwrap();
    let (code, out, err) =
        run_tool(exe(), "broker", &["restore", "--config", &config, "--from", backup.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("verified"), "{out}");

    // The restored broker serves the waiting referrals and its log verifies.
    b.spawn().await;
    let oncall = agency_client::Client::connect_dir(&b.dev.profile(SOCIAL_ONCALL)).await.unwrap();
    let got = crate::support::waiting(&oncall).await;
    assert_eq!(got, ids[1..]);
    let auditor = agency_client::Client::connect_dir(&b.dev.profile(AUDITOR)).await.unwrap();
    let v = auditor.verify_log(&tmp.path().join("audit.json"), |_, _| {}).await.unwrap();
    assert!(v.ok, "{:?}", v.report.failures);
    assert!(b.terminate().await.success());
}

#[tokio::test]
async fn a_store_moves_from_sled_to_fjall_by_backup_and_restore_and_fjall_backs_up_online() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut b, mut ids) = three_sent_one_acked(tmp.path(), "engine = \"sled\"\n").await;
    let config = b.config_path.display().to_string();
    assert!(b.terminate().await.success());
    assert!(b.data_dir.join("db").is_file(), "a sled store");

    // A backup of the stopped sled broker.
    let backup = tmp.path().join("backup-sled");
    let (code, out, err) =
        run_tool(exe(), "broker", &["backup", "--config", &config, "--to", backup.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("verified"), "{out}");

    // fjall configured: a restore into the data directory that holds the sled store is refused.
    let text = std::fs::read_to_string(&b.config_path).unwrap();
    std::fs::write(&b.config_path, text.replacen("engine = \"sled\"\n", "engine = \"fjall\"\n", 1)).unwrap();
    let restore = ["restore", "--config", &config, "--from", backup.to_str().unwrap()];
    let (code, _, err) = run_tool(exe(), "broker", &restore).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("holds data; a restore goes into an empty or missing data directory (move this one aside)"),
        "{err}"
    );
    // Moved aside, the backup is restored as a fjall store.
    std::fs::rename(&b.data_dir, tmp.path().join("sled-data")).unwrap();
    let (code, out, err) = run_tool(exe(), "broker", &restore).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("verified"), "{out}");
    assert!(b.data_dir.join("version").is_file() && !b.data_dir.join("db").exists(), "a fjall store now");

    // It serves what the sled store held, and takes new work.
    b.spawn().await;
    let oncall = agency_client::Client::connect_dir(&b.dev.profile(SOCIAL_ONCALL)).await.unwrap();
    assert_eq!(crate::support::waiting(&oncall).await, ids[1..]);
    let police = agency_client::Client::connect_dir(&b.dev.profile(POLICE_SYSTEM)).await.unwrap();
    ids.push(police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap().message_id);
    oncall.ack(ids[1], "jour-1").await.unwrap();

    // An online backup of the fjall broker is a verified fjall store.
    let online = tmp.path().join("backup-fjall");
    let (code, out, err) =
        run_tool(exe(), "broker", &["backup", "--config", &config, "--to", online.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("verified"), "{out}");
    assert!(online.join("version").is_file(), "a copy in the broker's own engine");
    let auditor = agency_client::Client::connect_dir(&b.dev.profile(AUDITOR)).await.unwrap();
    let v = auditor.verify_log(&tmp.path().join("audit.json"), |_, _| {}).await.unwrap();
    assert!(v.ok, "{:?}", v.report.failures);
    assert!(b.terminate().await.success());

    // And back to sled from the fjall backup.
    std::fs::write(&b.config_path, &text).unwrap();
    std::fs::rename(&b.data_dir, tmp.path().join("fjall-data")).unwrap();
    let (code, _, err) =
        run_tool(exe(), "broker", &["restore", "--config", &config, "--from", online.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    b.spawn().await;
    let oncall = agency_client::Client::connect_dir(&b.dev.profile(SOCIAL_ONCALL)).await.unwrap();
    assert_eq!(crate::support::waiting(&oncall).await, vec![ids[2], ids[3]]);
    let auditor = agency_client::Client::connect_dir(&b.dev.profile(AUDITOR)).await.unwrap();
    let v = auditor.verify_log(&tmp.path().join("audit.json"), |_, _| {}).await.unwrap();
    assert!(v.ok, "{:?}", v.report.failures);
    assert!(b.terminate().await.success());
}

#[tokio::test]
async fn agency_keys_rotate_with_traffic_flowing() {
    let h = Harness::start().await;
    let social = AgencyId::new(SOCIAL).unwrap();
    let police = h.client(POLICE_SYSTEM).await;
    let oncall = h.client(SOCIAL_ONCALL).await;
    let old_key = oncall.bundles()[0].key_id();

    // Police send all through the rotation; on-call acknowledges everything.
    let (published_tx, published) = tokio::sync::oneshot::channel::<()>();
    let sender = tokio::spawn({
        let police_profile = h.profile(POLICE_SYSTEM);
        async move {
            let police = agency_client::Client::connect_dir(&police_profile).await.unwrap();
            let mut sent = Vec::new();
            let mut published = Some(published);
            for i in 0..30 {
                if i == 15 {
                    // Picks up the new directory as a long-running client would after its max age.
                    published.take().unwrap().await.unwrap();
                    police.refresh_directory().await.unwrap();
                }
                sent.push(police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        }
    });
    // Social services generate a new bundle, put it in their profiles, and
    // the federation publishes it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let now = certs::now();
    let key_path = h.dir().join("social-2.key");
    let (_, files) =
        certs::keygen::generate(&social, &key_path, now.plus_millis(-1000), now.plus_millis(730 * 86_400_000), false)
            .unwrap();
    for p in [SOCIAL_ONCALL, SOCIAL_SYSTEM] {
        certs::profile::add_bundle(&h.profile(p), &key_path).unwrap();
    }
    let mut fed = h.federation();
    let new_key = fed.add_agency_key(&certs::keygen::read_public(&files.public).unwrap()).unwrap();
    fed.publish_directory(certs::now()).unwrap();
    h.reload();
    published_tx.send(()).unwrap();

    let sent = sender.await.unwrap();
    let mut alerts = oncall.subscribe().await.unwrap();
    let mut opened = 0;
    loop {
        match alerts.next().await.unwrap().unwrap() {
            AlertEvent::Referral(r) => {
                oncall.ack_digest(r.message_id, r.envelope_digest, "jour-1").await.unwrap();
                opened += 1;
            }
            AlertEvent::Unreadable { error, .. } => panic!("unreadable during rotation: {error}"),
            AlertEvent::CaughtUp { .. } => break,
            _ => {}
        }
    }
    assert_eq!(opened, sent.len(), "every referral opened and acknowledged");
    // The first 15 were sealed to the old key (the sender's directory did
    // not know the new one yet), the rest to the newest, as the audit log's
    // signed headers show; the old ones still opened above.
    let receipts = police.receipts(&sent.iter().map(|s| s.message_id).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(receipts.len(), 30);
    let sealed_to: std::collections::HashMap<Vec<u8>, Vec<u8>> = crate::support::audit_entries(&h)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            Some(referral_proto::pb::audit_entry::Event::Submitted(s)) => {
                let header = s.header.unwrap();
                Some((header.message_id, header.recipient_key_id))
            }
            _ => None,
        })
        .collect();
    let key_of = |i: usize| sealed_to[sent[i].message_id.as_bytes().as_slice()].clone();
    assert!((0..15).all(|i| key_of(i) == old_key.as_bytes()), "sealed to the old key before the refresh");
    assert!((15..30).all(|i| key_of(i) == new_key.as_bytes()), "sealed to the new key after it");
    let dir = police.refresh_directory().await.unwrap();
    assert_eq!(dir.agency(&social).unwrap().current_key(certs::now()).unwrap().key_id, new_key);
    assert_ne!(old_key, new_key);
    // Social services now sign with the new key; the police open it.
    let social_system = h.client(SOCIAL_SYSTEM).await;
    let back = social_system.send(&AgencyId::new(POLICE).unwrap(), &example_notice()).await.unwrap();
    let police_oncall = h.client(POLICE_ONCALL).await;
    let mut alerts = police_oncall.subscribe().await.unwrap();
    loop {
        if let AlertEvent::Referral(r) = alerts.next().await.unwrap().unwrap() {
            assert_eq!(r.message_id, back.message_id);
            break;
        }
    }
}

#[tokio::test]
async fn the_server_certificate_renews_without_dropping_streams() {
    let h = Harness::start().await;
    let oncall = h.client(SOCIAL_ONCALL).await;
    let mut alerts = oncall.subscribe().await.unwrap();
    let before = h.state().tls.current().server_cert_not_after;
    let mut fed = h.federation();
    certs::broker_creds::renew_server_cert(
        &mut fed,
        &h.dev.broker_dir(),
        vec!["localhost".into()],
        vec!["127.0.0.1".parse().unwrap()],
        certs::now(),
        400,
    )
    .unwrap();
    h.reload();
    assert!(h.state().tls.current().server_cert_not_after > before);
    // A new connection handshakes with the new certificate…
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    // …and the stream opened before the renewal still delivers.
    loop {
        if let AlertEvent::Referral(r) = alerts.next().await.unwrap().unwrap() {
            assert_eq!(r.message_id, sent.message_id);
            break;
        }
    }
}

/// The shipped systemd unit is one systemd accepts, and keeps its
/// hardening: `systemd-analyze verify` passes with the tested binary in
/// place of /usr/local/bin/broker, and `systemd-analyze security` rates
/// the unit's exposure at 2.0 or less (of 10).
#[test]
fn the_systemd_unit_verifies_and_stays_hardened() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/referral-broker.service")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("referral-broker.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/broker", &format!("{} broker", exe().display()))).unwrap();
    let analyze = |args: &[&str]| {
        std::process::Command::new("systemd-analyze")
            .args(args)
            .arg(&path)
            .output()
            .expect("systemd-analyze (Debian package systemd; .ci/run installs it) runs")
    };
    let verify = analyze(&["verify", "--man=no"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    assert!(verify.stderr.is_empty(), "{}", String::from_utf8_lossy(&verify.stderr));
    let security = analyze(&["security", "--offline=yes", "--threshold=20"]);
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(security.status.success(), "exposure above 2.0:\n{report}");
    assert!(report.contains("Overall exposure level for referral-broker.service"), "{report}");
    // It never runs as root.
    assert!(unit.lines().any(|l| l == "User=referral-broker"), "{unit}");
}

#[tokio::test]
async fn status_says_the_broker_runs_and_for_which_agency_nobody_is_listening() {
    let h = Harness::start().await;
    let status = |body: String| -> broker::status::Status { serde_json::from_str(&body).unwrap() };
    let (code, body) = h.admin("GET", "/status", None).await;
    assert_eq!(code, 200, "{body}");
    let before = status(body);
    assert!(before.running);
    assert_eq!(before.live_subscribers.get(SOCIAL), Some(&0));
    let text = broker::status::render(&before);
    assert!(text.starts_with("broker: running"), "{text}");
    assert!(text.contains(&format!("no live subscriber for agency {SOCIAL}: nobody on call is listening")), "{text}");

    // Someone on call opens the alert stream (caught up: the stream is live).
    let oncall = h.client(SOCIAL_ONCALL).await;
    let mut alerts = oncall.subscribe().await.unwrap();
    while !matches!(alerts.next().await.unwrap().unwrap(), AlertEvent::CaughtUp { .. }) {}
    let (_, body) = h.admin("GET", "/status", None).await;
    let during = status(body);
    assert_eq!(during.live_subscribers.get(SOCIAL), Some(&1));
    assert!(!broker::status::render(&during).contains(&format!("for agency {SOCIAL}:")));
    let (_, metrics) = h.admin("GET", "/metrics", None).await;
    assert!(metrics.contains(&format!("broker_live_subscribers{{agency=\"{SOCIAL}\"}} 1")), "{metrics}");
    assert!(metrics.contains(&format!("broker_live_subscribers{{agency=\"{POLICE}\"}} 0")), "{metrics}");
}

#[tokio::test]
async fn a_broker_writing_its_log_to_a_file_writes_no_colour_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = ChildBroker::start(exe(), tmp.path(), "").await;
    assert!(b.terminate().await.success());
    let log = b.log();
    assert!(log.contains("broker serving"), "{log}");
    assert!(!log.contains('\u{1b}'), "no terminal escape codes in a log file:\n{log:?}");
}
