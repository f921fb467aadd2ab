//! The auditor's side: verify, replay and prove the broker's audit log.

use clap::Subcommand;

use crate::Client;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Replay the whole log and verify it.
    Verify {
        #[arg(long)]
        state: Option<std::path::PathBuf>,
    },
}

pub async fn run(_client: &Client, _cmd: AuditCommand, _json: bool) -> anyhow::Result<bool> {
    anyhow::bail!("the audit commands arrive with the audit log issue")
}
