//! `audit accept-restore`: the auditor's explicit, recorded decision to
//! trust a broker's log again after it was restored from a backup.
//!
//! A restore takes the log back to the backup's moment, so the head the
//! auditor trusted can no longer be proven and `audit verify` fails, as it
//! must. This shows what was lost (the trusted head against the broker's
//! current one, and which of the verified entries the broker's log still
//! provably holds), checks the current log in full, and only on
//! confirmation records the decision and trusts the current head.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::bail;
use referral_proto::audit::BLOCK_ENTRIES;
use serde::Serialize;
use serde_json::json;

use crate::Client;
use crate::auditor::{AuditState, LogRun, Mode};
use crate::cli::out;

/// The file beside the audit state where decisions are appended, one JSON
/// object per line.
pub const DECISIONS_FILE: &str = "audit-decisions.jsonl";

/// Where the decisions about the state file `state` are recorded.
pub fn decisions_path(state: &Path) -> PathBuf {
    state.with_file_name(DECISIONS_FILE)
}

/// A signed tree head as the auditor describes it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Head {
    pub tree_size: u64,
    pub root: String,
    /// When the broker signed it.
    pub signed_at: String,
}

/// What the broker's current log no longer proves of the trusted one.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Loss {
    pub trusted: Head,
    /// When the trusted head was verified.
    pub verified_at: String,
    pub current: Head,
    /// Why the trusted head can no longer be proven.
    pub reasons: Vec<String>,
    /// The first `unchanged` entries of the broker's log are provably those verified.
    pub unchanged: u64,
    /// Whether `unchanged` is exact, or only a lower bound (the state kept
    /// whole blocks of 256 entries only, and the change lies in one of them).
    pub exact: bool,
    /// Entries `unchanged..trusted.tree_size` of the verified log.
    pub no_longer_provable: u64,
    /// Entries `unchanged..current.tree_size` of the broker's log, trusted
    /// from the decision on without a link to what was verified before.
    pub new_history: u64,
}

/// How many leading entries of the log in `run` are provably those the
/// state `old` verified: whole blocks by their roots, then the entries
/// after the last complete block leaf by leaf. The flag says whether the
/// count is exact.
pub(crate) fn unchanged(old: &AuditState, run: &LogRun) -> (u64, bool) {
    let old_blocks = old.blocks();
    let new_blocks = &run.verification.report.blocks;
    let same = old_blocks.iter().zip(new_blocks).take_while(|(a, b)| a == b).count();
    let start = same as u64 * BLOCK_ENTRIES;
    if same < old_blocks.len() {
        // A block differs (or the new log ends inside it): its entries
        // cannot be told apart, only the blocks before it.
        return (start, false);
    }
    let tail = old.tail();
    let mut k = start;
    for (i, leaf) in (start..).zip(&tail) {
        if i >= run.head.head.tree_size || run.leaf(i) != Some(leaf) {
            break;
        }
        k += 1;
    }
    (k, tail.len() as u64 == old.tree_size - start)
}

fn loss(old: &AuditState, run: &LogRun) -> Loss {
    let (unchanged, exact) = unchanged(old, run);
    let now = &run.head.head;
    Loss {
        trusted: Head {
            tree_size: old.tree_size,
            root: old.root.clone(),
            signed_at: referral_proto::time::Timestamp(old.timestamp_ms).to_string(),
        },
        verified_at: old.verified_at.clone(),
        current: Head { tree_size: now.tree_size, root: now.root_hash.to_hex(), signed_at: now.timestamp.to_string() },
        reasons: run.history.clone(),
        unchanged,
        exact,
        no_longer_provable: old.tree_size.saturating_sub(unchanged),
        new_history: now.tree_size.saturating_sub(unchanged),
    }
}

/// `a..=b (n entries)`, or `none`.
fn range(from: u64, to: u64) -> String {
    match to.saturating_sub(from) {
        0 => "none".into(),
        1 => format!("entry {from} (1 entry)"),
        n => format!("entries {from}..={} ({})", to - 1, entries(n)),
    }
}

/// `1 entry`, `2 entries`.
fn entries(n: u64) -> String {
    if n == 1 { "1 entry".into() } else { format!("{n} entries") }
}

/// The loss as people read it.
pub fn loss_text(l: &Loss) -> Vec<String> {
    let mut lines = vec![format!("the broker can no longer prove the log verified on {}:", l.verified_at)];
    lines.extend(l.reasons.iter().map(|r| format!("  - {}", crate::display::safe(r))));
    lines.push(format!(
        "trusted head:        {}, root {}, signed at {}",
        entries(l.trusted.tree_size),
        l.trusted.root,
        l.trusted.signed_at
    ));
    lines.push(format!(
        "broker's head now:   {}, root {}, signed at {}; this log verifies by itself",
        entries(l.current.tree_size),
        l.current.root,
        l.current.signed_at
    ));
    let at_least = if l.exact { "" } else { " at least (the last verification kept whole blocks of 256 only)" };
    lines.push(format!("still proven:        {}{at_least}", range(0, l.unchanged)));
    lines.push(format!("no longer provable:  {} of the verified log", range(l.unchanged, l.trusted.tree_size)));
    lines.push(format!("new history:         {} of the broker's log", range(l.unchanged, l.current.tree_size)));
    lines
}

/// Asks on the terminal; anything but yes (or no terminal answer at all) is no.
fn confirm(question: &str) -> anyhow::Result<bool> {
    let mut err = std::io::stderr().lock();
    write!(err, "{question} [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// Appends the decision to the decision file, crash-safely (the whole file
/// is rewritten through the one durable helper; it grows by one line per
/// restore).
fn record(path: &Path, decision: &serde_json::Value) -> anyhow::Result<()> {
    let mut text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display()))),
    };
    text.push_str(&decision.to_string());
    text.push('\n');
    if let Some(dir) = path.parent() {
        certs::durable_file::create_dir_all(dir)?;
    }
    certs::durable_file::write(path, text)
        .map_err(|e| anyhow::Error::new(e).context(format!("cannot write {}", path.display())))
}

/// Runs `audit accept-restore`. Returns false when the broker's log does not
/// verify by itself (nothing can be accepted then).
pub async fn run(client: &Client, state: &Path, yes: bool, json: bool) -> anyhow::Result<bool> {
    let bar = crate::auditor::progress_bar(json);
    let mut progress = |done, total| crate::auditor::show_progress(bar.as_ref(), done, total);
    let run = client.check_log(state, Mode::AcceptRestore, &mut progress, &mut |_, _| {}).await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let Some(old) = &run.previous else {
        bail!("{} holds no trusted head: there is nothing to accept; run `audit verify`", state.display());
    };
    if !run.verification.ok {
        // The current log must stand on its own before it can be trusted.
        crate::auditor::print_report(&run.verification, json)?;
        if !json {
            out!("the broker's current log does not verify by itself: nothing was accepted");
        }
        return Ok(false);
    }
    if run.history.is_empty() {
        if json {
            out!("{}", json!({"accepted": false, "reason": "nothing to accept"}));
        } else {
            out!(
                "nothing to accept: the broker's log of {} entries extends the {} entries verified on {}; `audit verify` passes",
                run.head.head.tree_size,
                old.tree_size,
                old.verified_at
            );
        }
        return Ok(true);
    }
    let loss = loss(old, &run);
    let decisions = decisions_path(state);
    if !json {
        for line in loss_text(&loss) {
            out!("{line}");
        }
    }
    let question = format!(
        "accept the broker's log of {} entries as the trusted head from now on? (the decision is recorded in {})",
        loss.current.tree_size,
        decisions.display()
    );
    let confirmed = yes || (std::io::stdin().is_terminal() && confirm(&question)?);
    if !confirmed {
        if json {
            out!("{}", json!({"accepted": false, "loss": loss}));
        }
        bail!("not accepted: nothing was recorded (answer yes on a terminal, or pass --yes)");
    }
    let decision = json!({
        "decision": "accept-restore",
        "at": certs::now().to_string(),
        "by": client.principal().uri(),
        "state": state.display().to_string(),
        "loss": loss,
    });
    // The decision first: a crash before the state is written leaves a
    // recorded decision that was not yet applied (run it again), never an
    // applied one that was not recorded.
    record(&decisions, &decision)?;
    run.record_state(state)?;
    if json {
        out!("{}", json!({"accepted": true, "loss": loss, "decisions": decisions.display().to_string()}));
    } else {
        out!(
            "accepted: the broker's log of {} entries (root {}) is trusted from now on; the decision is recorded in {}",
            loss.current.tree_size,
            loss.current.root,
            decisions.display()
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_well() {
        assert_eq!(range(3, 3), "none");
        assert_eq!(range(3, 4), "entry 3 (1 entry)");
        assert_eq!(range(0, 9), "entries 0..=8 (9 entries)");
    }
}
