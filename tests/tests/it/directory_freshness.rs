//! The directory's validity (PROTOCOL.md 9.4): a stale directory is refused
//! by the broker at start, on reload and while serving, and by clients even
//! when a broker serves it; a new profile refuses versions older than the
//! federation had published.

use std::time::Duration;

use integration_tests::{Harness, Options, POLICE_SYSTEM, SOCIAL, SOCIAL_ONCALL, assert_refused, bind_again};
use referral_proto::directory::DirectoryError;
use tonic::Code;

use crate::support::exe;
use crate::support::{example_envelope, submit_raw};

const DAY_MS: i64 = 86_400_000;

#[tokio::test]
async fn a_broker_whose_directory_went_stale_refuses_submits_and_acks_until_a_fresh_one_is_loaded() {
    let h = Harness::start_with(Options { manual_clock: true, ..Options::default() }).await;
    let client = h.client(POLICE_SYSTEM).await;
    let envelope = example_envelope(&h, POLICE_SYSTEM, SOCIAL).await;
    let earlier = submit_raw(&client, example_envelope(&h, POLICE_SYSTEM, SOCIAL).await).await.unwrap();
    let earlier = referral_proto::receipt::Receipt::try_from(earlier.receipt.unwrap()).unwrap().statement;
    let oncall = h.client(SOCIAL_ONCALL).await;
    oncall.directory().await.unwrap();
    let (problems, _) = broker::health::check(h.state()).await;
    assert!(problems.is_empty(), "{problems:?}");

    // The development directory is valid for 90 days.
    h.advance(Duration::from_secs(91 * 86_400));
    let status = assert_refused(submit_raw(&client, envelope.clone()).await, Code::Unavailable, "directory_stale");
    assert!(status.message().starts_with("the broker's directory (version 1) went stale at "), "{status:?}");
    // Nor is an acknowledgement verified against it.
    let acked = oncall.ack_digest(earlier.message_id, earlier.envelope_digest, "jour-1").await;
    let status = acked.expect_err("refused").status().cloned().expect("a broker status");
    assert_eq!(
        (status.code(), integration_tests::reason(&status).as_deref()),
        (Code::Unavailable, Some("directory_stale"))
    );
    let (problems, _) = broker::health::check(h.state()).await;
    assert!(
        problems.iter().any(|p| p.starts_with("the federation directory expired at") && p.contains("certs directory")),
        "{problems:?}"
    );

    // The federation re-signs; after the reload the broker verifies again.
    h.federation().publish_directory_valid_for(certs::now(), 120).unwrap();
    h.reload();
    assert_eq!(h.state().directory.current().directory.version, 2);
    // (The 30-day CRL has expired too by now; that is another problem.)
    let (problems, _) = broker::health::check(h.state()).await;
    assert!(!problems.iter().any(|p| p.contains("directory")), "{problems:?}");
    h.manual_clock.as_ref().unwrap().advance(-91 * DAY_MS);
    let accepted = submit_raw(&client, envelope).await.expect("accepted with the fresh directory");
    assert!(!accepted.duplicate);
}

#[tokio::test]
async fn a_stale_directory_file_is_refused_at_start_and_on_reload() {
    let mut h = Harness::start().await;
    let now = certs::now();
    // Signed 40 days ago for 30 days: stale for ten days now.
    h.federation().publish_directory_valid_for(now.plus_millis(-40 * DAY_MS), 30).unwrap();

    let e = broker::tasks::reload(h.state()).unwrap_err();
    assert!(
        e.contains("directory reload failed, keeping version 1") && e.contains("directory version 2 is stale"),
        "{e}"
    );
    assert_eq!(h.state().directory.current().directory.version, 1);

    h.stop().await;
    let started = broker::server::start(
        bind_again(h.addr).await,
        h.config.clone(),
        broker::server::StartOptions { clock: std::sync::Arc::new(broker::clock::SystemClock), sighup: false },
        tokio_util::sync::CancellationToken::new(),
    )
    .await;
    let e = started.expect_err("a stale directory stops the start").to_string();
    assert!(e.contains("directory version 2 is stale: it was valid until"), "{e}");

    // check-config says the same, naming the file.
    // (Paths in the configuration are relative to its folder.)
    let config = h.dev.dir.join("check.toml");
    std::fs::write(&config, broker::config::dev_config_text(h.addr, &h.dir().join("data"))).unwrap();
    let (code, _, err) =
        integration_tests::run_tool(exe(), "broker", &["check-config", "--config", config.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("directory.bin: directory version 2 is stale"), "{err}");
}

#[tokio::test]
async fn a_client_refuses_a_stale_directory_even_when_the_broker_serves_it() {
    // A broker whose clock is 40 days behind accepts a directory that every
    // correctly set clock finds stale, and serves it.
    let h = Harness::start_with(Options { manual_clock: true, ..Options::default() }).await;
    h.manual_clock.as_ref().unwrap().advance(-40 * DAY_MS);
    h.federation().publish_directory_valid_for(certs::now().plus_millis(-40 * DAY_MS), 30).unwrap();
    h.reload();
    assert_eq!(h.state().directory.current().directory.version, 2);

    let client = h.client(POLICE_SYSTEM).await;
    let e = client.refresh_directory().await.unwrap_err();
    match &e {
        agency_client::ClientError::Directory(DirectoryError::Expired { version: 2, .. }) => {}
        other => panic!("expected a stale-directory refusal, got {other:?}"),
    }
    assert!(e.to_string().contains("directory version 2 is stale"), "{e}");
    // And so the client sends nothing on it.
    let sent = client
        .send(&referral_proto::ids::AgencyId::new(SOCIAL).unwrap(), &referral_proto::notice::example_notice())
        .await;
    assert!(matches!(sent, Err(agency_client::ClientError::Directory(DirectoryError::Expired { .. }))), "{sent:?}");
}

#[tokio::test]
async fn a_new_profile_refuses_a_directory_older_than_the_federation_published() {
    let h = Harness::start().await;
    // The federation publishes version 2; the broker still serves version 1.
    h.federation().publish_directory(certs::now()).unwrap();
    let out = h.dir().join("new-profile");
    let fed_dir = h.dev.federation_dir();
    let key = h.dev.agency_keys_dir().join(format!("{}.key", integration_tests::POLICE));
    let (code, _, err) = integration_tests::run_tool(
        exe(),
        "certs",
        &[
            "issue",
            "--dir",
            fed_dir.to_str().unwrap(),
            "--principal",
            "spiffe://igor.example.se/agency/polisen-huddinge/system/ny",
            "--out",
            out.to_str().unwrap(),
            "--broker",
            &format!("https://{}", h.addr),
            "--agency-keys",
            key.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let client = agency_client::Client::connect_dir(&out).await.unwrap();
    let e = client.refresh_directory().await.unwrap_err();
    assert!(matches!(&e, agency_client::ClientError::Directory(DirectoryError::Rollback { seen: 2, got: 1 })), "{e:?}");
    // Once the broker serves version 2, the new profile takes it.
    h.reload();
    assert_eq!(client.refresh_directory().await.unwrap().version, 2);
}
