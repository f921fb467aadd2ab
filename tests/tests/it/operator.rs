//! The operator's surfaces under attack: the admin endpoint (off unless
//! configured, its own token), backups (a new private folder), and key
//! files others can read.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use crate::support::exe;
use broker::clock::SystemClock;
use broker::config::Config;
use broker::server::StartOptions;
use certs::dev::DevOptions;
use integration_tests::*;
use tokio_util::sync::CancellationToken;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn the_admin_endpoint_is_off_without_an_admin_section() {
    let h = Harness::start_with(Options {
        tweak: Box::new(|c| {
            // What a configuration without [admin] gives.
            let plain = Config::for_dev_federation(Path::new("/x"), c.listen.address, &c.storage.data_dir);
            assert_eq!(plain.admin.endpoint, None);
            c.admin.endpoint = plain.admin.endpoint;
        }),
        ..Options::default()
    })
    .await;
    assert_eq!(h.admin_endpoint(), None, "no admin listener");
}

#[tokio::test]
async fn admin_requests_without_the_token_are_refused() {
    let h = Harness::start().await;
    let addr = h.admin_addr();
    let target = h.dir().join("stolen-backup");
    let body = serde_json::json!({ "to": target }).to_string();
    let wrong = "f".repeat(64);
    for token in [None, Some(wrong.as_str()), Some("")] {
        for (method, path, body) in
            [("GET", "/metrics", None), ("GET", "/status", None), ("POST", "/backup", Some(body.as_str()))]
        {
            let (code, text) = broker::admin::request(addr, token, method, path, body).await.unwrap();
            assert_eq!(code, 401, "{method} {path} with {token:?}: {text}");
            assert!(text.contains("Authorization: Bearer"), "{text}");
        }
    }
    assert!(!target.exists(), "no backup was made");
    // The liveness probe stays open; with the token everything answers.
    let (code, text) = broker::admin::request(addr, None, "GET", "/health", None).await.unwrap();
    assert!(code == 200 || (code == 503 && text.starts_with("NOT_SERVING")), "{code} {text}");
    assert_eq!(h.admin("GET", "/status", None).await.0, 200);
    assert_eq!(h.admin("GET", "/metrics", None).await.0, 200);
}

#[tokio::test]
async fn a_backup_into_a_folder_that_exists_is_refused() {
    let h = Harness::start().await;
    // Made beforehand by someone else, world-writable, or a link to elsewhere.
    let existing = h.dir().join("prepared");
    std::fs::create_dir(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o777)).unwrap();
    let link = h.dir().join("link");
    std::os::unix::fs::symlink(h.dir().join("elsewhere"), &link).unwrap();
    for to in [&existing, &link] {
        let (code, text) = h.admin("POST", "/backup", Some(&serde_json::json!({ "to": to }).to_string())).await;
        assert_eq!(code, 409, "{text}");
        assert_eq!(
            text,
            format!(
                "{}: already exists; a backup goes into a new folder that the broker creates itself (0700), so choose a path that does not exist",
                to.display()
            )
        );
    }
    assert_eq!(std::fs::read_dir(&existing).unwrap().count(), 0, "nothing written into it");
    assert!(!h.dir().join("elsewhere").exists(), "nothing written through the link");
}

/// Every folder 0700 and every file 0600 under `dir`.
fn assert_private(dir: &Path) -> usize {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    let mut files = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files += assert_private(&p);
        } else {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            files += 1;
        }
    }
    files
}

#[tokio::test]
async fn backup_files_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = ChildBroker::start(exe(), tmp.path(), "").await;
    // The broker process runs under umask 0: every file it creates without
    // an explicit mode would be world-readable and writable.
    assert!(b.terminate().await.success());
    b.umask = Some(0);
    b.spawn().await;
    let police = agency_client::Client::connect_dir(&b.dev.profile(POLICE_SYSTEM)).await.unwrap();
    let social = referral_proto::ids::AgencyId::new(SOCIAL).unwrap();
    police.send(&social, &referral_proto::notice::example_notice()).await.unwrap();
    let config = b.config_path.display().to_string();
    let to = tmp.path().join("backups").join("1");
    let (code, out, err) =
        run_tool(exe(), "broker", &["backup", "--config", &config, "--to", to.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    let files = assert_private(&to);
    assert!(files >= 2, "the copy holds the store's files ({files})");
    // Again into the same folder: refused, through the CLI too.
    let (code, _, err) =
        run_tool(exe(), "broker", &["backup", "--config", &config, "--to", to.to_str().unwrap()]).await;
    assert_eq!(code, 1);
    assert!(err.contains("already exists; a backup goes into a new folder"), "{err}");
    assert!(b.terminate().await.success());
    // An offline backup under umask 0 too (through sh, as the broker was).
    let offline = tmp.path().join("backups").join("2");
    let script = "umask 000; exec \"$0\" broker backup --config \"$1\" --to \"$2\"";
    let out = tokio::process::Command::new("sh")
        .args(["-c", script, exe().to_str().unwrap(), &config, offline.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_private(&offline);
}

/// A development federation and its broker configuration, not started.
fn federation(dir: &Path) -> (Config, tokio::net::TcpListener) {
    init_crypto();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(l).unwrap();
    let addr = listener.local_addr().unwrap();
    let dev = certs::dev::create(
        &dir.join("federation"),
        &DevOptions { broker_addr: addr.to_string(), force: false },
        certs::now(),
    )
    .unwrap();
    let config = Config::for_dev_federation(&dev.dir, addr, &dir.join("data"));
    (config, listener)
}

#[tokio::test]
async fn a_tls_key_others_can_read_stops_the_broker_and_check_config() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, listener) = federation(tmp.path());
    let key = config.tls.key.clone();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let expected = format!(
        "TLS: private key {}: permissions are 0644; a secret must be readable by its owner only (run: chmod 600 {})",
        key.display(),
        key.display()
    );
    let opts = StartOptions { clock: Arc::new(SystemClock), sighup: false };
    let err = broker::server::start(listener, config.clone(), opts, CancellationToken::new()).await.unwrap_err();
    assert_eq!(err.to_string(), expected);
    assert_eq!(broker::server::check_files(&config).unwrap_err(), std::slice::from_ref(&expected));
    // The command line says the same, with the path and the fix.
    // Beside the federation, so that its relative paths resolve.
    let config_path = tmp.path().join("federation").join("broker.toml");
    std::fs::write(&config_path, broker::config::dev_config_text(config.listen.address, &config.storage.data_dir))
        .unwrap();
    let (code, out, err) =
        run_tool(exe(), "broker", &["check-config", "--config", config_path.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.contains(&expected), "{err}");
    // Once private again, both accept it.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(broker::server::check_files(&config).is_ok());
    let (code, out, err) =
        run_tool(exe(), "broker", &["check-config", "--config", config_path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
}
