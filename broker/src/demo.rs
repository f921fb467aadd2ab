//! `broker demo`: the whole product in one process, in seconds. A fresh
//! development federation in a temporary folder, a broker on loopback with
//! real mTLS and a real sled store, the police sending a referral to social
//! services, the on-call social worker getting the alert and acknowledging
//! it, the police getting the signed receipts, a referral the other way,
//! and finally the auditor verifying the log.
//!
//! The transcript shows what each party sees, but never the subject's
//! identity: the demo prints to the terminal of whoever runs it, who is
//! not the recipient.

use std::sync::Arc;
use std::time::Instant;

use agency_client::Client;
use agency_client::alerts::{AlertEvent, IncomingReferral};
use anyhow::{Context as _, bail};
use certs::dev::{DevFederation, DevOptions, POLICE, SOCIAL};
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::notice::{ReferralNotice, example_notice};
use referral_proto::receipt::ReceiptStatus;
use tokio_util::sync::CancellationToken;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::server::{StartOptions, start};

struct Transcript(Instant);

impl Transcript {
    fn say(&self, who: &str, what: impl AsRef<str>) {
        println!("[{:>6.3}s] {who:<34} {}", self.0.elapsed().as_secs_f64(), what.as_ref());
    }
}

/// The JSON name of an enum value (`osl_10_18c`, `sara_sv`, …).
fn name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|j| j.as_str().map(str::to_owned)).unwrap_or_default()
}

fn summary(r: &IncomingReferral) -> String {
    let n = &r.notice;
    let support: Vec<String> = n.requested_support.iter().map(name).collect();
    format!(
        "ALERT {} referral {} from {} (queue position {}): legal basis {}, consent {}, risk {} {}, {} child(ren), asks for {}; the subject's identity is shown to the recipient only",
        r.urgency,
        r.message_id,
        r.sender_name,
        r.sequence,
        name(&n.legal_basis.kind),
        name(&n.consent.state),
        name(&n.risk.tool),
        n.risk.level.as_ref().map(name).unwrap_or_default(),
        n.children.len(),
        support.join(", "),
    )
}

/// Waits for `id` on the alert stream and acknowledges it as `by`.
async fn receive_and_ack(t: &Transcript, who: &str, client: &Client, id: MessageId, by: &str) -> anyhow::Result<()> {
    let mut alerts = client.subscribe().await?;
    loop {
        match alerts.next().await?.context("the alert stream ended")? {
            AlertEvent::Referral(r) if r.message_id == id => {
                t.say(who, summary(&r));
                let acked = client.ack_digest(r.message_id, r.envelope_digest, by).await?;
                t.say(
                    who,
                    format!(
                        "acknowledged as {by:?}: broker receipt {} (log index {})",
                        acked.receipt.statement.status, acked.receipt.statement.log_index
                    ),
                );
                return Ok(());
            }
            AlertEvent::Unreadable { error, .. } => bail!("an alert failed verification: {error}"),
            _ => {}
        }
    }
}

/// Follows the sender's receipts for `id` until it is acknowledged.
async fn follow_receipts(t: &Transcript, who: &str, client: &Client, id: MessageId) -> anyhow::Result<()> {
    let mut receipts = client.watch_receipts(0).await?;
    while let Some((_, r)) = receipts.next().await? {
        if r.statement.message_id != id {
            continue;
        }
        match (&r.statement.status, &r.ack) {
            (ReceiptStatus::Acknowledged, Some(ack)) => {
                t.say(
                    who,
                    format!(
                        "receipt ACKNOWLEDGED by {} at {} (broker and {} signatures verified)",
                        ack.statement.acknowledged_by, ack.statement.acknowledged_at, ack.statement.acker_agency
                    ),
                );
                return Ok(());
            }
            (status, _) => {
                t.say(who, format!("receipt {status} (broker signature verified){}", detail(&r.statement.detail)))
            }
        }
    }
    bail!("the receipt stream ended before the acknowledgement")
}

fn detail(d: &str) -> String {
    if d.is_empty() { String::new() } else { format!(", {d}") }
}

async fn exchange(
    t: &Transcript,
    dev: &DevFederation,
    from: &str,
    to: &str,
    notice: &ReferralNotice,
) -> anyhow::Result<()> {
    let sender = Client::connect_dir(&dev.profile(&format!("{from}-system"))).await?;
    let oncall = Client::connect_dir(&dev.profile(&format!("{to}-oncall"))).await?;
    let (s_who, o_who) = (format!("{from}/system"), format!("{to}/oncall"));
    let sent = sender.send(&AgencyId::new(to)?, notice).await?;
    t.say(
        &s_who,
        format!(
            "sent {} referral {} to {to}: {} (log index {})",
            notice.urgency, sent.message_id, sent.receipt.statement.status, sent.receipt.statement.log_index
        ),
    );
    let (a, b) = tokio::join!(
        receive_and_ack(t, &o_who, &oncall, sent.message_id, "jour-1"),
        follow_receipts(t, &s_who, &sender, sent.message_id)
    );
    a?;
    b?;
    Ok(())
}

/// Runs the demo; returns an error if any step fails.
pub async fn run() -> anyhow::Result<()> {
    let t = Transcript(Instant::now());
    let tmp = tempfile_dir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let fed_dir = tmp.join("federation");
    let dev = certs::dev::create(&fed_dir, &DevOptions { broker_addr: addr.to_string(), force: false }, certs::now())?;
    // No admin endpoint: the demo needs none (it is off unless configured).
    let config = Config::for_dev_federation(&fed_dir, addr, &tmp.join("broker-data"));
    println!(
        "referral broker demo (everything below is real: mTLS with TLS 1.3, Ed25519 + HPKE, fsync'd {})",
        config.storage.engine.name()
    );
    println!("  federation igor.example.se in {}", fed_dir.display());
    let shutdown = CancellationToken::new();
    let running =
        start(listener, config, StartOptions { clock: Arc::new(SystemClock), sighup: false }, shutdown.clone()).await?;
    t.say("broker", format!("listening on {addr}, data in {}", tmp.join("broker-data").display()));

    let result = async {
        exchange(&t, &dev, POLICE, SOCIAL, &example_notice()).await?;
        let mut back = example_notice();
        back.legal_basis.kind = referral_proto::notice::LegalBasisKind::Osl10_18c;
        back.legal_basis.citation = "OSL 10 kap. 18 c §".into();
        back.legal_basis.reason =
            "Social services know of threats against the subject that the police should assess.".into();
        back.consent.state = referral_proto::notice::ConsentState::NotSoughtUnsafe;
        back.urgency = referral_proto::envelope::Urgency::Immediate;
        back.sender_case_reference = "SOC-2026-118".into();
        exchange(&t, &dev, SOCIAL, POLICE, &back).await?;
        crate::demo_audit::verify(&t_say(&t), &dev).await
    }
    .await;
    shutdown.cancel();
    running.wait().await?;
    result?;
    println!(
        "demo finished in {:.2} s; the temporary folder {} is removed",
        t.0.elapsed().as_secs_f64(),
        tmp.display()
    );
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn t_say(t: &Transcript) -> impl Fn(&str, String) + '_ {
    move |who, what| t.say(who, what)
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let base = std::env::temp_dir().join(format!("referral-demo-{}-{}", std::process::id(), certs::now().0));
    certs::durable_file::create_dir_all(&base)?;
    Ok(base)
}
