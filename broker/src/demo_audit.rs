//! The demo's last step: the auditor replays and verifies the log.

use agency_client::Client;
use certs::dev::DevFederation;

/// Verifies the whole log as the development federation's auditor.
pub async fn verify(say: &impl Fn(&str, String), dev: &DevFederation) -> anyhow::Result<()> {
    let auditor = Client::connect_dir(&dev.profile("auditor")).await?;
    let state = dev.dir.join("audit-state.json");
    let v = auditor.verify_log(&state, |_, _| {}).await?;
    let r = &v.report;
    let counts: Vec<String> = r.counts.iter().map(|(k, n)| format!("{n} {}", k.as_str())).collect();
    if !v.ok {
        for f in &r.failures {
            say("auditor", format!("FAILED: {f}"));
        }
        anyhow::bail!("the audit log did not verify");
    }
    say(
        "auditor",
        format!(
            "verified the audit log: {} entries ({}), every signature and queue sequence checks out, root {} matches the broker's signed tree head; no content seen",
            r.tree_size,
            counts.join(", "),
            &r.root.to_hex()[..16]
        ),
    );
    Ok(())
}
