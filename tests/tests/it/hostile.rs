//! Hostile clients over the real listener: plaintext to the TLS port,
//! stalled handshakes, connection floods, certificates with the wrong key
//! usage; and an outside TLS client (OpenSSL) checking what the port
//! offers. Each case checks the exact outcome and that others are served
//! throughout.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use certs::pki::LeafSpec;
use integration_tests::*;
use referral_proto::ids::{AgencyId, Principal};
use referral_proto::notice::example_notice;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A legitimate client still gets through.
async fn others_are_served(h: &Harness) {
    let police = h.client(POLICE_SYSTEM).await;
    police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.expect("a legitimate submit");
}

fn quick_handshakes() -> Options {
    Options {
        tweak: Box::new(|c| {
            c.listen.handshake_timeout = Duration::from_millis(500);
            c.listen.max_connections = 200;
        }),
        ..Options::default()
    }
}

#[tokio::test]
async fn plaintext_http2_to_the_tls_port_gets_no_response() {
    let h = Harness::start_with(quick_handshakes()).await;
    let mut tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the broker answers or closes")
        .unwrap_or(0);
    // Whatever comes back is at most a TLS alert record (content type 21), never HTTP/2.
    assert!(n == 0 || buf[0] == 21, "got {:?}", &buf[..n.min(16)]);
    assert!(!buf[..n].windows(8).any(|w| w == b"HTTP/2.0"));
    others_are_served(&h).await;
    assert!(h.state().accept_stats.handshakes_failed.load(Relaxed) >= 1);
}

#[tokio::test]
async fn a_stalled_handshake_is_dropped_after_the_timeout() {
    let h = Harness::start_with(quick_handshakes()).await;
    // Slowloris: connect and send half a ClientHello, then nothing.
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
        stalled.push(tcp);
    }
    others_are_served(&h).await;
    let started = Instant::now();
    for tcp in &mut stalled {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.expect("closed by the broker");
        assert!(matches!(r, Ok(0) | Err(_)), "the broker closes the stalled connection");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(h.state().accept_stats.handshakes_timed_out.load(Relaxed) >= 50);
    // The slots were freed: many more connections than the limit have come and gone.
    others_are_served(&h).await;
}

#[tokio::test]
async fn thousands_of_connections_opened_and_dropped_leak_nothing() {
    let h = Harness::start_with(quick_handshakes()).await;
    for _round in 0..10 {
        let mut batch = Vec::new();
        for _ in 0..200 {
            batch.push(tokio::net::TcpStream::connect(h.addr).await.unwrap());
        }
        drop(batch);
    }
    // Past the 200-connection limit ten times over; every slot came back.
    let mut served = false;
    for _ in 0..100 {
        if let Ok(c) = agency_client::Client::connect_dir(&h.profile(POLICE_SYSTEM)).await
            && c.refresh_directory().await.is_ok()
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "a legitimate client is served after the flood");
    let stats = &h.state().accept_stats;
    let seen = || stats.accepted.load(Relaxed) + stats.refused_over_limit.load(Relaxed);
    for _ in 0..200 {
        if seen() >= 2000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen() >= 2000, "the broker accepted (or refused at the limit) every connection: {}", seen());
}

#[tokio::test]
async fn a_certificate_without_client_auth_usage_is_refused() {
    let h = Harness::start().await;
    let now = certs::now();
    let fed = h.federation();
    let p = Principal::parse_uri("spiffe://igor.example.se/agency/polisen-huddinge/system/serveronly").unwrap();
    let mut spec = LeafSpec::principal(&p, now.plus_millis(-60_000), now.plus_millis(86_400_000));
    spec.client_auth = false;
    spec.server_auth = true;
    let issued = fed.ca().issue(&spec).unwrap();
    crate::support::refused_at_handshake(&h, Some((&issued.cert_pem, &issued.key_pem)), "UnsupportedCertificate").await;
    others_are_served(&h).await;
}

/// Runs `openssl s_client` against the broker, sending an HTTP/2 preface
/// once connected; returns its combined output.
async fn s_client(h: &Harness, args: &[&str], wait_for_the_broker: bool) -> String {
    let mut child = tokio::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(h.addr.to_string())
        .arg("-servername")
        .arg("localhost")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl is installed (Debian package openssl)");
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    // Either keep stdin open, so that s_client runs until the broker ends
    // the session, or close it, so that s_client says goodbye itself.
    let keep = if wait_for_the_broker {
        Some(stdin)
    } else {
        drop(stdin);
        None
    };
    let out = match tokio::time::timeout(Duration::from_secs(5), child.wait_with_output()).await {
        Ok(out) => out.unwrap(),
        Err(_) => panic!("openssl s_client did not finish"),
    };
    drop(keep);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn openssl_finds_only_tls_1_3_and_no_way_in_without_a_certificate() {
    let h = Harness::start().await;
    let ca = h.dev.federation_dir().join("ca.pem").display().to_string();
    for old in ["-tls1_2", "-tls1_1", "-tls1"] {
        let out = s_client(&h, &[old, "-CAfile", &ca], false).await;
        assert!(!out.contains("Protocol  : TLSv1") || out.contains("(NONE)"), "{old} was accepted:\n{out}");
        assert!(
            out.contains("alert") || out.contains("error") || out.contains("no protocols available"),
            "{old}:\n{out}"
        );
    }
    // TLS 1.3 without a client certificate: the broker demands one and ends the session.
    let out = s_client(&h, &["-tls1_3", "-alpn", "h2", "-CAfile", &ca], true).await;
    assert!(out.contains("certificate required") || out.contains("alert number 116"), "no certificate:\n{out}");
    // With a federation certificate: TLS 1.3, h2, a verified server certificate.
    let p = h.profile(POLICE_SYSTEM);
    let cert = p.join("cert.pem").display().to_string();
    let key = p.join("key.pem").display().to_string();
    let out = s_client(
        &h,
        &["-tls1_3", "-alpn", "h2", "-CAfile", &ca, "-cert", &cert, "-key", &key, "-verify_return_error"],
        false,
    )
    .await;
    assert!(out.contains("TLSv1.3"), "{out}");
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
}
