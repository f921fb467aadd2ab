//! Terminal injection: text that would drive the on-call person's terminal
//! (ESC sequences, OSC 52 clipboard writes, bidirectional overrides) is
//! refused on open, and whatever text from elsewhere the CLI prints is
//! neutralised; the CLI also ends quietly when its reader goes away.

use std::process::Stdio;
use std::time::Duration;

use integration_tests::*;
use referral_proto::directory::AgencyKind;
use referral_proto::ids::AgencyId;
use referral_proto::notice::example_notice;
use referral_proto::pb;
use referral_proto::seal::{FixedIkm, seal_header};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::support::{client, exe};
use crate::support::{profile, sealed, submit_raw};

/// Neither a raw ESC, nor a C1 control, nor a bidirectional override.
fn assert_inert(what: &str, out: &str) {
    for (i, c) in out.chars().enumerate() {
        assert!(!referral_proto::text::forbidden_in_free_text(c), "{what}: {c:?} at {i} in {out:?}");
    }
    assert!(!out.as_bytes().contains(&0x1b), "{what}: ESC byte in {out:?}");
}

#[tokio::test]
async fn escapes_sealed_raw_are_refused_on_open_and_never_reach_the_terminal() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let mut n = example_notice();
    // Erase the Address line and print another; write the clipboard; reverse a name.
    n.subject.street_address = "Storgatan 1\u{1b}[2K\rAddress:        Hamngatan 9".into();
    n.free_text = "\u{1b}]52;c;cm0gLXJmIH4K\u{7}".into();
    n.sender_contact.name = "Anna \u{202E}nossral".into();
    // A sender that skips validation: the notice is sealed raw, and the
    // broker (which cannot read it) accepts the envelope.
    let valid = sealed(&h, POLICE_SYSTEM, SOCIAL, &example_notice()).await;
    let dir = police.directory().await.unwrap();
    let key = dir.agency(&AgencyId::new(SOCIAL).unwrap()).unwrap().current_key(certs::now()).unwrap();
    let bundle = &profile(&h, POLICE_SYSTEM).bundles[0];
    let forced = seal_header(&n.encode(), valid.header.clone(), bundle, key, &mut FixedIkm::new([9; 32])).unwrap();
    let id = forced.header.message_id;
    submit_raw(&police, pb::Envelope::from(&forced)).await.expect("the broker cannot see the text");

    let (code, out, err) = client(&h, SOCIAL_ONCALL, &["listen", "--once"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "!! message {id} (queue position 1) failed verification and is not shown: decrypted payload: invalid referral notice: subject.street_address: {rule}; sender_contact.name: {rule}; free_text: {free}",
            rule = referral_proto::text::LINE_RULE,
            free = referral_proto::text::FREE_TEXT_RULE
        )),
        "{out}"
    );
    assert!(!out.contains("Hamngatan"), "never shown: {out}");
    assert_inert("listen", &out);
    let (code, out, err) = client(&h, SOCIAL_ONCALL, &["--json", "listen", "--once"]).await;
    assert_eq!(code, 0, "{err}");
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["event"], "unreadable");
    assert_inert("listen --json", &out);
}

#[tokio::test]
async fn escapes_in_directory_names_are_refused_by_the_federation_and_by_verifiers() {
    let h = Harness::start().await;
    let mut fed = h.federation();
    let evil = "Kommun\u{1b}]52;c;cm0gLXJmIH4K\u{7}\u{1b}[2J\u{202E}nummok";
    let e = fed.add_agency(&AgencyId::new("evil-kommun").unwrap(), AgencyKind::Municipal, evil, None).unwrap_err();
    assert_eq!(e.to_string(), "the display name contains a control character or a bidirectional formatting character");

    // A federation that signs one anyway (here by hand, with its real key):
    // the broker will not load it and a client will not accept it.
    let key_text = certs::secret_file::read(&h.dev.federation_dir().join("directory.key")).unwrap();
    let key =
        referral_proto::keys::parse_signing_key_file(&key_text, referral_proto::keys::KeyPurpose::FederationDirectory)
            .unwrap();
    let mut directory = fed.directory(certs::now(), 30).unwrap();
    directory.agencies.values_mut().next().unwrap().display_name = evil.to_owned();
    let signed = directory.sign(&key);
    std::fs::write(h.dev.federation_dir().join("directory.bin"), signed.encode()).unwrap();
    let e = broker::tasks::reload(h.state()).unwrap_err();
    assert!(
        e.contains("directory reload failed, keeping version 1")
            && e.contains("display_name contains a control character or a bidirectional formatting character"),
        "{e}"
    );
    let police = h.client(POLICE_SYSTEM).await;
    let refused = police.accept_directory(signed.to_pb()).unwrap_err();
    assert!(
        matches!(&refused, agency_client::ClientError::Directory(referral_proto::directory::DirectoryError::Invalid(m))
            if m.ends_with("display_name contains a control character or a bidirectional formatting character")),
        "{refused:?}"
    );
    let (code, out, err) = client(&h, POLICE_SYSTEM, &["directory"]).await;
    assert_eq!(code, 0, "{err}");
    assert_inert("directory", &out);
}

/// `agency-client receipts --follow | head -1`: the reader goes away and
/// the next line the CLI writes meets a closed pipe. It must end with exit
/// code 0 and say nothing (Rust's `println!` would panic there).
#[tokio::test]
async fn a_closed_stdout_pipe_ends_the_cli_quietly() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let social = AgencyId::new(SOCIAL).unwrap();
    police.send(&social, &example_notice()).await.unwrap();
    let p = h.profile(POLICE_SYSTEM).display().to_string();
    let mut child = tokio::process::Command::new(exe())
        .args(["agency-client", "--profile", &p, "receipts", "--follow"])
        .env_remove("AGENCY_CLIENT_PROFILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
    assert!(first.starts_with("#1 ") && first.contains("ACCEPTED"), "{first}");
    // Close the reading end, then make the CLI write again.
    drop(lines);
    police.send(&social, &example_notice()).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("the CLI ends when its output is closed")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "", "no panic, no error message");
}
