//! A certificate refused in the TLS handshake is reported as such: whose
//! (ours by the broker, or the broker's by us), why as far as TLS tells,
//! and with its own exit code; never as a bare "transport error".

use std::path::{Path, PathBuf};

use agency_client::exit::{Class, classify};
use certs::pki::{Ca, LeafSpec};
use certs::profile::{CA, CERT, KEY, Profile};
use integration_tests::*;

use crate::support::client;

const DAY: i64 = 86_400_000;

static COPIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The police system's principal in the development federation.
fn police_system(h: &Harness) -> referral_proto::ids::Principal {
    Profile::load(&h.profile(POLICE_SYSTEM), certs::now()).unwrap().principal
}

/// A copy of profile `name` (keys keep their 0600 mode), to change a file of.
fn copy_profile(h: &Harness, name: &str) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
    let to = h.dir().join(format!("{name}-copy-{}", COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    copy(&h.profile(name), &to);
    to
}

fn replace_identity(profile: &Path, issued: &certs::pki::Issued) {
    std::fs::write(profile.join(CERT), &issued.cert_pem).unwrap();
    certs::secret_file::write(&profile.join(KEY), issued.key_pem.as_bytes(), true).unwrap();
}

async fn run(profile: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--profile", profile.to_str().unwrap()];
    all.extend_from_slice(args);
    run_tool(crate::support::exe(), "agency-client", &all).await
}

fn json(err: &str) -> serde_json::Value {
    serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("{e}: {err}"))
}

const OURS: &str = "ask the federation operator for a new certificate";

#[tokio::test]
async fn a_revoked_certificate_is_reported_as_revoked() {
    let h = Harness::start().await;
    h.federation().revoke(&police_system(&h).uri(), certs::now()).unwrap();
    h.reload();
    let (code, out, err) = client(&h, POLICE_SYSTEM, &["directory"]).await;
    assert_eq!((code, out.as_str()), (77, ""), "{err}");
    assert_eq!(err.trim(), format!("error: your certificate was refused by the broker: revoked; {OURS}"));
    let (code, _, err) = client(&h, POLICE_SYSTEM, &["directory", "--json"]).await;
    assert_eq!(code, 77);
    let e = json(&err);
    assert_eq!(
        (&e["exit_code"], &e["class"], &e["reason"]),
        (&77.into(), &"permission".into(), &"certificate_revoked".into())
    );
    // Sending is refused the same way, without retrying for half a minute.
    let file = h.dir().join("referral.json");
    std::fs::write(&file, serde_json::to_string(&referral_proto::notice::example_notice()).unwrap()).unwrap();
    let started = std::time::Instant::now();
    let (code, _, err) =
        client(&h, POLICE_SYSTEM, &["send", "--to", SOCIAL, "--referral", file.to_str().unwrap()]).await;
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("your certificate was refused by the broker: revoked"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "not retried as if the broker were away");
}

/// A certificate from a CA that is not the federation's: the broker answers
/// with the unknown_ca alert, or decrypt_error when that CA has the
/// federation CA's name (its signature does not verify).
#[tokio::test]
async fn a_certificate_from_a_foreign_ca_is_reported_as_such() {
    let h = Harness::start().await;
    let now = certs::now();
    for (ca_name, cause, reason) in [
        ("other.example.org", "not issued by the federation's CA", "unknown_ca"),
        (certs::dev::TRUST_DOMAIN, "its signature does not verify against the federation's CA", "bad_certificate"),
    ] {
        let foreign = Ca::generate(ca_name, now.plus_millis(-DAY), now.plus_millis(DAY)).unwrap();
        let spec = LeafSpec::principal(&police_system(&h), now.plus_millis(-DAY), now.plus_millis(DAY));
        let profile = copy_profile(&h, POLICE_SYSTEM);
        replace_identity(&profile, &foreign.issue(&spec).unwrap());
        let (code, _, err) = run(&profile, &["directory"]).await;
        assert_eq!(code, 77, "{err}");
        assert_eq!(err.trim(), format!("error: your certificate was refused by the broker: {cause}; {OURS}"));
        let (code, _, err) = run(&profile, &["--json", "directory"]).await;
        assert_eq!((code, &json(&err)["reason"]), (77, &reason.into()), "{err}");
    }
}

/// The other way round: the profile's ca.pem is not the CA that issued the
/// broker's certificate, so this client refuses the broker (exit 78, the
/// profile's setup).
#[tokio::test]
async fn a_broker_certificate_from_another_ca_is_refused_by_the_client() {
    let h = Harness::start().await;
    let now = certs::now();
    for ca_name in ["other.example.org", certs::dev::TRUST_DOMAIN] {
        let foreign = Ca::generate(ca_name, now.plus_millis(-DAY), now.plus_millis(DAY)).unwrap();
        let profile = copy_profile(&h, POLICE_SYSTEM);
        std::fs::write(profile.join(CA), foreign.cert_pem()).unwrap();
        let (code, _, err) = run(&profile, &["directory"]).await;
        assert_eq!(code, 78, "{err}");
        assert_eq!(
            err.trim(),
            "error: the broker's certificate was refused: not issued by the CA in the profile's ca.pem; \
         check the profile's broker address, server_name and ca.pem"
        );
        let (code, _, err) = run(&profile, &["--json", "directory"]).await;
        let e = json(&err);
        assert_eq!((code, &e["class"], &e["reason"]), (78, &"config".into(), &"broker_unknown_ca".into()));
    }
}

/// An expired certificate. The CLI checks expiry itself before connecting
/// (exit 78, the profile's setup), so the broker's refusal is met when the
/// client's clock is behind: loaded as of two days ago here.
#[tokio::test]
async fn an_expired_certificate_is_reported_as_expired() {
    let h = Harness::start().await;
    let now = certs::now();
    let issued =
        h.federation().issue_principal(&police_system(&h), now.plus_millis(-10 * DAY), now.plus_millis(-DAY)).unwrap();
    let profile = copy_profile(&h, POLICE_SYSTEM);
    replace_identity(&profile, &issued);

    let (code, _, err) = run(&profile, &["directory"]).await;
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("the certificate expired at") && err.contains("ask the federation for a new one"), "{err}");

    let loaded = Profile::load(&profile, now.plus_millis(-2 * DAY)).unwrap();
    let client = agency_client::Client::connect(loaded).await.unwrap();
    // The call fails; why is in its error or, when the transport lost the
    // broker's alert, found by the client's second look.
    let failed = client.refresh_directory().await.unwrap_err();
    let refused = client.certificate_refusal(&failed).await.unwrap_or_else(|| panic!("not explained: {failed}"));
    let e = agency_client::ClientError::CertificateRefused(refused);
    assert_eq!(
        e.to_string(),
        format!(
            "your certificate was refused by the broker: expired, or not valid yet (TLS does not tell which); {OURS}"
        )
    );
    let (class, reason) = classify(&anyhow::Error::new(e));
    assert_eq!((class, class.code(), reason.as_str()), (Class::Permission, 77, "certificate_expired"));
}
