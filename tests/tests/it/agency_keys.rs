//! An agency keeps its principals' TLS keys: it makes each key and a
//! certificate request (`certs request`), the federation issues a
//! certificate for the request's key into a folder of public material only
//! (`certs issue --csr`), and the agency assembles its profile (`certs
//! profile`). Every way the exchange can go wrong is refused by name.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::support::exe;
use integration_tests::*;
use referral_proto::ids::AgencyId;
use referral_proto::notice::example_notice;

fn principal(name: &str) -> String {
    format!("spiffe://{}/agency/{POLICE}/system/{name}", certs::dev::TRUST_DOMAIN)
}

async fn certs_tool(args: &[&str]) -> (i32, String, String) {
    run_tool(exe(), "certs", args).await
}

async fn request(dir: &Path, who: &str) -> PathBuf {
    let out = dir.join(format!("request-{who}"));
    let (code, _, err) = certs_tool(&["request", "--principal", &principal(who), "--out", out.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    out
}

/// The one agency key bundle of the police's system profile.
fn police_bundle(h: &Harness) -> PathBuf {
    let keys = h.dev.profile(POLICE_SYSTEM).join("agency-keys");
    std::fs::read_dir(keys).unwrap().next().unwrap().unwrap().path()
}

#[tokio::test]
async fn an_agency_gets_a_certificate_for_its_own_key_and_its_profile_works() {
    let h = Harness::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let fed = h.dev.federation_dir();
    let req = request(tmp.path(), "arende-2").await;
    let key_mode = std::fs::metadata(req.join("key.pem")).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600, "the private key is readable by its owner only");

    let issued = tmp.path().join("issued");
    let broker = format!("https://{}", h.addr);
    let (code, out, err) = certs_tool(&[
        "issue",
        "--dir",
        fed.to_str().unwrap(),
        "--principal",
        &principal("arende-2"),
        "--csr",
        req.join("request.csr").to_str().unwrap(),
        "--out",
        issued.to_str().unwrap(),
        "--broker",
        &broker,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hand the folder back to the agency"), "{out}");
    // Only public material comes back.
    let mut names: Vec<String> =
        std::fs::read_dir(&issued).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["ca.pem", "cert.pem", "federation.pub", "issued.toml"]);
    for name in &names {
        let text = std::fs::read_to_string(issued.join(name)).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{name} holds no private key");
    }

    let profile = tmp.path().join("profile");
    let bundle = police_bundle(&h);
    let (code, out, err) = certs_tool(&[
        "profile",
        "--request",
        req.to_str().unwrap(),
        "--issued",
        issued.to_str().unwrap(),
        "--out",
        profile.to_str().unwrap(),
        "--agency-keys",
        bundle.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&principal("arende-2")), "{out}");
    let police = agency_client::Client::connect_dir(&profile).await.unwrap();
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    assert_eq!(sent.receipt.statement.sender.as_str(), POLICE);
}

#[tokio::test]
async fn a_request_for_another_principal_a_forged_request_and_a_mismatched_key_are_refused() {
    let h = Harness::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let fed = h.dev.federation_dir();
    let req = request(tmp.path(), "arende-3").await;
    let csr = req.join("request.csr");
    let issue = |csr: PathBuf, who: &'static str, out: PathBuf| {
        let fed = fed.clone();
        let broker = format!("https://{}", h.addr);
        async move {
            certs_tool(&[
                "issue",
                "--dir",
                fed.to_str().unwrap(),
                "--principal",
                &principal(who),
                "--csr",
                csr.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--broker",
                &broker,
            ])
            .await
        }
    };

    // The request names arende-3; the federation was asked for someone else.
    let (code, _, err) = issue(csr.clone(), "kassan", tmp.path().join("x")).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "asks for {}, not {}; make the request with 'certs request --principal {}'",
            principal("arende-3"),
            principal("kassan"),
            principal("kassan")
        )),
        "{err}"
    );

    // A request whose signature does not verify (its content changed after signing).
    let pem = std::fs::read_to_string(&csr).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut der = base64_decode(&body);
    let at = der.len() / 2;
    der[at] ^= 0x01;
    let forged = tmp.path().join("forged.csr");
    std::fs::write(&forged, pem_encode(&der)).unwrap();
    let (code, _, err) = issue(forged.clone(), "arende-3", tmp.path().join("y")).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{} is not a certificate request with a valid signature", forged.display())),
        "{err}"
    );
    assert!(!tmp.path().join("y").exists(), "nothing issued");

    // Issued for arende-3's request, assembled with another request's key.
    let (code, _, err) = issue(csr, "arende-3", tmp.path().join("issued")).await;
    assert_eq!(code, 0, "{err}");
    let other = request(tmp.path(), "arende-4").await;
    let (code, _, err) = certs_tool(&[
        "profile",
        "--request",
        other.to_str().unwrap(),
        "--issued",
        tmp.path().join("issued").to_str().unwrap(),
        "--out",
        tmp.path().join("profile").to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "the certificate is not for the key in {}; was it issued for another request?",
            other.join("key.pem").display()
        )),
        "{err}"
    );
    assert!(!tmp.path().join("profile").join("profile.toml").exists(), "no profile written");

    // Agency keys never go to the federation.
    let (code, _, err) = certs_tool(&[
        "issue",
        "--dir",
        fed.to_str().unwrap(),
        "--principal",
        &principal("arende-3"),
        "--csr",
        req.join("request.csr").to_str().unwrap(),
        "--out",
        tmp.path().join("z").to_str().unwrap(),
        "--broker",
        &format!("https://{}", h.addr),
        "--agency-keys",
        police_bundle(&h).to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--agency-keys goes to 'certs profile' on the agency's side, not to 'certs issue --csr'"),
        "{err}"
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).expect("base64")
}

fn pem_encode(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", lines.join("\n"))
}
