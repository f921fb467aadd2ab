//! Helpers shared by the scenarios: building envelopes by hand and reading
//! what the broker stored.

use agency_client::Client;
use agency_client::alerts::AlertEvent;
use certs::profile::Profile;
use integration_tests::Harness;
use referral_proto::envelope::Envelope;
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::notice::{ReferralNotice, example_notice};
use referral_proto::pb;
use referral_proto::seal::seal;

/// A loaded profile of the development federation.
pub fn profile(h: &Harness, name: &str) -> Profile {
    Profile::load(&h.profile(name), certs::now()).unwrap()
}

/// Seals `notice` from the agency of profile `from` to agency `to`.
pub async fn sealed(h: &Harness, from: &str, to: &str, notice: &ReferralNotice) -> Envelope {
    let client = h.client(from).await;
    let dir = client.directory().await.unwrap();
    let p = profile(h, from);
    seal(
        notice,
        &p.bundles[0],
        dir.agency(&AgencyId::new(to).unwrap()).unwrap(),
        MessageId::generate(certs::now().0),
        certs::now(),
    )
    .unwrap()
}

/// A sealed example referral as a wire envelope.
pub async fn example_envelope(h: &Harness, from: &str, to: &str) -> pb::Envelope {
    pb::Envelope::from(&sealed(h, from, to, &example_notice()).await)
}

/// Submits a wire envelope with `client`'s credentials, unchecked.
pub async fn submit_raw(client: &Client, envelope: pb::Envelope) -> Result<pb::SubmitResponse, tonic::Status> {
    client.broker().submit(pb::SubmitRequest { envelope: Some(envelope) }).await.map(|r| r.into_inner())
}

/// Every audit log entry, decoded, once everything sent to the committer
/// so far is committed.
pub async fn audit_entries(h: &Harness) -> Vec<pb::AuditEntry> {
    let state = h.state();
    state.committer.barrier().await;
    let size = state.hub.tree.borrow().0;
    broker::audit::read_entries(&*state.store, 0, size, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(i, bytes)| referral_proto::audit::decode_entry(&bytes, i).unwrap())
        .collect()
}

/// The reasons of every Rejected entry in the log, in order.
pub async fn rejection_reasons(h: &Harness) -> Vec<String> {
    audit_entries(h)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            Some(pb::audit_entry::Event::Rejected(r)) => Some(r.reason),
            _ => None,
        })
        .collect()
}

/// Closes the broker's rejection-counting interval (as its timer and its
/// shutdown do), then sums the counts of every RejectionSummary entry by
/// reason: the refusals that carried no verified signature.
pub async fn summarised(h: &Harness) -> std::collections::BTreeMap<String, u64> {
    broker::refusals::close_interval(h.state()).await;
    let mut out = std::collections::BTreeMap::new();
    for e in audit_entries(h).await {
        if let Some(pb::audit_entry::Event::RejectionSummary(r)) = e.event {
            *out.entry(r.reason).or_default() += r.count;
        }
    }
    out
}

/// The ids of every referral waiting for `client`'s agency, in queue order.
pub async fn waiting(client: &Client) -> Vec<MessageId> {
    let mut alerts = client.subscribe().await.unwrap();
    let mut got = Vec::new();
    loop {
        match alerts.next().await.unwrap().unwrap() {
            AlertEvent::Referral(r) => got.push(r.message_id),
            AlertEvent::CaughtUp { .. } => return got,
            _ => {}
        }
    }
}

/// Connects with `identity` (or none) and makes one call: the broker must
/// end the TLS handshake with the fatal alert `alert` (that is all TLS can
/// say about why), and keep serving everyone else.
pub async fn refused_at_handshake(h: &Harness, identity: Option<(&str, &str)>, alert: &str) {
    let ca = std::fs::read_to_string(h.dev.federation_dir().join("ca.pem")).unwrap();
    let r = match integration_tests::raw_client(h.addr, &ca, identity).await {
        Ok(mut c) => c.get_directory(pb::GetDirectoryRequest {}).await.map(drop),
        Err(e) => Err(tonic::Status::unavailable(format!("{e:?}"))),
    };
    let s = r.expect_err("must be refused at the handshake");
    let all = format!("{s:?}");
    assert!(all.contains(&format!("received fatal alert: {alert}\"")), "expected the {alert} alert: {all}");
    h.client(integration_tests::SOCIAL_SYSTEM).await.refresh_directory().await.expect("others are still served");
}

/// The test binary that runs all three command lines (`under-test broker|certs|agency-client ...`).
pub fn exe() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_under-test"))
}

/// Runs `agency-client --profile <profile> <args>`: exit code, stdout, stderr.
pub async fn client(h: &Harness, profile: &str, args: &[&str]) -> (i32, String, String) {
    let p = h.profile(profile).display().to_string();
    let mut all = vec!["--profile", p.as_str()];
    all.extend_from_slice(args);
    integration_tests::run_tool(exe(), "agency-client", &all).await
}

/// Every file under `dir`, in every subfolder: what a privacy test scans.
pub fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(files(&p)) } else { out.push(p) }
    }
    out
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
