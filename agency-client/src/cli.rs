//! The `agency-client` command line, for agency systems' operators, on-call
//! staff and auditors. Every command but `completions`, `manpages`,
//! `schema` and `validate` takes `--profile DIR` (a folder made by `certs`)
//! and prints for people, or JSON with `--json`.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::notice::ReferralNotice;
use referral_proto::receipt::Receipt;
use serde_json::json;

use crate::Client;
use crate::alerts::{AlertEvent, Fetched, IncomingReferral};
use crate::display::{json_line, safe, safe_block};
use crate::present::Presenter;

/// Standard output was closed by its reader (`agency-client … | head -1`).
/// Not a failure: the command stops quietly with exit code 0.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
pub struct StdoutClosed;

/// Writes one line to standard output. A closed pipe becomes
/// [`StdoutClosed`], which [`run_program`] turns into a quiet exit, where
/// `println!` would panic.
pub fn write_line(line: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(line).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to standard output")),
    }
}

/// `println!` for the CLI: see [`write_line`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_line(format_args!($($arg)*))?
    };
}
pub(crate) use out;

/// Send, receive and acknowledge referrals; verify the broker's audit log.
#[derive(Debug, Parser)]
#[command(name = "agency-client", version)]
pub struct Cli {
    /// Profile folder (certificate, key, CA, federation key, agency keys).
    #[arg(long, env = "AGENCY_CLIENT_PROFILE", global = true)]
    pub profile: Option<PathBuf>,
    /// Machine-readable output (JSON; one object per line for streams).
    #[arg(long, global = true)]
    pub json: bool,
    /// Language of what on-call staff read (`listen`, `show`, `console`):
    /// sv (Swedish, the default) or en (English).
    #[arg(long, global = true, env = "AGENCY_CLIENT_LANG", default_value = "sv")]
    pub lang: crate::present::Lang,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Seal a referral (JSON file) to an agency and submit it; with --bulk,
    /// many referrals on one stream, one line per referral.
    Send {
        /// Recipient agency id, e.g. huddinge-socialtjanst.
        #[arg(long)]
        to: String,
        /// The referral notice as JSON (see PROTOCOL.md, "Referral notice").
        #[arg(long, required_unless_present = "bulk", conflicts_with = "bulk")]
        referral: Option<PathBuf>,
        /// Many referrals: a folder of referral JSON files (every `*.json`, in
        /// name order) or a JSON-lines file (one referral notice per line).
        /// Each gets a fresh message id; all are submitted on one SubmitStream.
        #[arg(long, conflicts_with = "message_id")]
        bulk: Option<PathBuf>,
        /// Reuse a message id to resend the same referral (the broker deduplicates).
        #[arg(long)]
        message_id: Option<String>,
    },
    /// Show alerts for this agency as they come: first a summary of the
    /// waiting ones (most urgent, then nearest deadline, first), then each
    /// new one in full. Reconnects by itself when the broker goes away.
    Listen {
        /// Print the summary of what waits now, then stop.
        #[arg(long)]
        once: bool,
        /// At most this many waiting referrals in the summary (0: all).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one referral for this agency in full, by message id.
    Show {
        /// The message id.
        id: String,
    },
    /// Serve the on-call web console on loopback (see OPERATIONS.md,
    /// "The on-call console"): prints a one-time login address.
    Console(crate::console::ConsoleArgs),
    /// Acknowledge a referral with this agency's signature.
    Ack {
        /// The message id.
        id: String,
        /// Who takes it: a staff identifier (default: this profile's principal name).
        #[arg(long)]
        by: Option<String>,
        /// A note for the sending agency (at most 2044 bytes; newlines
        /// allowed). It is encrypted to the sender: the broker never reads
        /// it and it is not kept in the audit log.
        #[arg(long, conflicts_with = "note_file")]
        note: Option<String>,
        /// Read the note from this file (`-` for standard input).
        #[arg(long, value_name = "PATH")]
        note_file: Option<std::path::PathBuf>,
    },
    /// Show the receipts of messages this agency sent.
    Status {
        /// Message ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Show receipts for this agency's messages as they happen.
    Receipts {
        /// Show only receipts after this cursor.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep waiting for new receipts.
        #[arg(long)]
        follow: bool,
    },
    /// Show the federation directory (verified against the pinned federation key).
    Directory,
    /// Check a referral file as `send` would, offline: no broker, no profile,
    /// nothing sent. Every problem is listed at once (exit code 65).
    Validate {
        /// The referral notice as JSON (see PROTOCOL.md, "Referral notice").
        #[arg(long)]
        referral: PathBuf,
    },
    /// Print the referral form's JSON Schema (draft 2020-12), generated from
    /// the types `send` and `validate` read (needs no profile). The same file
    /// is agency-client/schema/referral.schema.json in the source.
    Schema,
    /// Auditor commands: verify, replay and prove the broker's log.
    #[command(subcommand)]
    Audit(crate::auditor::AuditCommand),
    /// The blind overlap check: find which of this agency's subjects another
    /// agency also knows, without either side (or the broker) seeing the rest.
    #[command(subcommand)]
    Overlap(OverlapCommand),
    /// Print shell completions for agency-client (needs no profile).
    Completions {
        /// The shell: bash, elvish, fish, powershell or zsh.
        shell: certs::tool_docs::Shell,
    },
    /// Write the man pages of agency-client (agency-client.1 and one per subcommand) into a folder (needs no profile).
    Manpages {
        /// Folder for the pages (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

/// What a side states for its input: the same kinds as a referral's legal basis.
#[derive(Debug, clap::Args)]
pub struct OverlapInput {
    /// This agency's subjects: one personal identity or coordination number
    /// per line (any common form; `#` starts a comment line).
    #[arg(long)]
    subjects: PathBuf,
    /// The legal basis for this agency's input: consent, osl_10_18c,
    /// child_concern_report or other. The broker and the audit log see it.
    #[arg(long)]
    legal_basis: String,
    /// The provision relied on, e.g. "OSL 10 kap. 18 c §" (no personal data).
    #[arg(long)]
    citation: String,
    /// How long to wait for the other agency at each step, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum OverlapCommand {
    /// Propose a session to another agency and run it to the end (the other
    /// agency runs `overlap accept ID`). Prints the session id at once, then
    /// this agency's matches.
    Start {
        /// The other agency's id, e.g. huddinge-socialtjanst.
        #[arg(long = "with")]
        with: String,
        #[command(flatten)]
        input: OverlapInput,
    },
    /// Accept a session proposed to this agency and run it to the end.
    Accept {
        /// The session id (`overlap list` shows proposals).
        id: String,
        #[command(flatten)]
        input: OverlapInput,
    },
    /// The sessions this agency takes part in, as the broker records them.
    List,
    /// This agency's result of a session it ran: its own subjects the other
    /// agency also holds.
    Result {
        /// The session id.
        id: String,
        /// Print, for each match, a referral notice to the other agency
        /// pre-filled with the subject's number (JSON; fill in the rest
        /// before `send --referral`).
        #[arg(long)]
        referral_template: bool,
    },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        // About the tool itself: no profile, no connection.
        Command::Completions { shell } => {
            let mut script = Vec::new();
            certs::tool_docs::completions(shell, <Cli as clap::CommandFactory>::command(), &mut script);
            out!("{}", String::from_utf8_lossy(&script).trim_end());
            Ok(true)
        }
        Command::Manpages { out } => {
            for page in certs::tool_docs::write_man_page(<Cli as clap::CommandFactory>::command(), &out)? {
                out!("{}", page.display());
            }
            Ok(true)
        }
        Command::Schema => {
            out!("{}", crate::form::schema_text().trim_end());
            Ok(true)
        }
        // Offline and without a profile: an agency system checks its output.
        Command::Validate { referral } => {
            let notice = read_referral(&referral)?;
            if cli.json {
                out!(
                    "{}",
                    json_line(
                        &json!({"valid": true, "file": referral.display().to_string(), "urgency": notice.urgency})
                    )
                );
            } else {
                out!(
                    "OK: {} is a valid referral notice ({} urgency); nothing was sent",
                    referral.display(),
                    notice.urgency
                );
            }
            Ok(true)
        }
        command => {
            let Some(profile) = cli.profile else {
                return Err(
                    crate::exit::UsageError("--profile DIR is required (or set AGENCY_CLIENT_PROFILE)".into()).into()
                );
            };
            // Offline: checks a saved proof with nothing but the profile.
            if let Command::Audit(crate::auditor::AuditCommand::CheckProof { file }) = &command {
                return crate::auditor::check_proof(&profile, file, cli.json);
            }
            run_connected(&profile, cli.json, cli.lang, command).await
        }
    }
}

/// Carries out a command that talks to the broker as the profile's
/// principal. A failure that was really the broker refusing this profile's
/// certificate is reported as that (see [`Client::certificate_refusal`]).
async fn run_connected(
    profile: &std::path::Path,
    json: bool,
    lang: crate::present::Lang,
    command: Command,
) -> anyhow::Result<bool> {
    // The watchers start without the broker and retry until it answers
    // (they say so); every other command needs it now.
    let watching = matches!(command, Command::Console(_) | Command::Listen { once: false, .. });
    let client =
        if watching { Client::connect_dir_waiting(profile).await? } else { Client::connect_dir(profile).await? };
    // The console keeps the connection for as long as it runs.
    if let Command::Console(args) = command {
        return crate::console::run(client, lang, args).await;
    }
    match run_command(&client, profile, json, lang, command).await {
        Err(e) => {
            // The status of a failed call, whether or not the library wrapped it.
            let status = e.chain().find_map(|c| {
                c.downcast_ref::<crate::ClientError>()
                    .and_then(crate::ClientError::status)
                    .or_else(|| c.downcast_ref::<tonic::Status>())
            });
            let failed = crate::ClientError::Rpc(match status {
                Some(s) => s.clone(),
                None => return Err(e),
            });
            match client.certificate_refusal(&failed).await {
                Some(refused) => Err(crate::ClientError::CertificateRefused(refused).into()),
                None => Err(e),
            }
        }
        done => done,
    }
}

async fn run_command(
    client: &Client,
    profile: &std::path::Path,
    json: bool,
    lang: crate::present::Lang,
    command: Command,
) -> anyhow::Result<bool> {
    match command {
        Command::Send { to, bulk: Some(bulk), .. } => {
            return send_bulk(client, &AgencyId::new(to)?, &bulk, json).await;
        }
        Command::Send { to, referral, message_id, .. } => {
            let Some(referral) = referral else {
                return Err(crate::exit::UsageError("--referral FILE or --bulk PATH is required".into()).into());
            };
            let notice = read_referral(&referral)?;
            let to = AgencyId::new(to)?;
            let id = match message_id {
                Some(id) => id.parse()?,
                None => MessageId::generate(certs::now().0),
            };
            let sent = match client.send_with_id(&to, &notice, id).await {
                Ok(sent) => sent,
                // Without an answer the sealed envelope stays in the outbox:
                // say how to resend exactly it.
                Err(e) if client.outbox().path(id).exists() => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "referral {id} got no answer; it is kept sealed, resend it with --message-id {id}"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                out!(
                    "{}",
                    json_line(
                        &json!({"message_id": sent.message_id.to_string(), "duplicate": sent.duplicate, "receipt": receipt_json(&sent.receipt)})
                    )
                );
            } else {
                out!("sent {} referral {} to {to}", notice.urgency, sent.message_id);
                out!(
                    "  {}{}",
                    receipt_line(&sent.receipt),
                    if sent.duplicate { " (already accepted earlier)" } else { "" }
                );
            }
        }
        Command::Listen { once, limit } => {
            return crate::listen::run(client, profile, json, lang, once, limit).await;
        }
        Command::Show { id } => {
            let id: MessageId = id.parse()?;
            let p = Presenter::new(lang);
            match client.fetch(id).await {
                Err(crate::ClientError::Rpc(s)) if crate::error::reason(&s).as_deref() == Some("unknown_message") => {
                    return Err(crate::ClientError::NotWaiting(id).into());
                }
                Err(e) => return Err(e.into()),
                Ok(Fetched::Waiting(ev)) => {
                    if json {
                        out!("{}", json_line(&event_json(&ev)));
                    } else if let AlertEvent::Referral(r) = &ev {
                        out!("{}", referral_text(r, profile, &p, certs::now()).trim_end());
                    } else if let Some(text) = event_text(&ev, profile, &p, certs::now()) {
                        out!("{text}");
                    }
                }
                Ok(Fetched::Acknowledged(r)) => {
                    let (by, at) = r
                        .ack
                        .as_ref()
                        .map(|a| (a.statement.acknowledged_by.clone(), a.statement.acknowledged_at))
                        .unwrap_or_default();
                    if json {
                        out!("{}", json_line(&json!({"message_id": id.to_string(), "receipt": receipt_json(&r)})));
                    } else {
                        out!("{id}: {}", p.already_acknowledged(&safe(&by), at));
                    }
                }
                Ok(Fetched::Expired(r)) => {
                    if json {
                        out!("{}", json_line(&json!({"message_id": id.to_string(), "receipt": receipt_json(&r)})));
                    } else {
                        out!("{id}: {}", crate::ClientError::Expired { message_id: id, at: r.statement.at });
                    }
                }
            }
        }
        Command::Console(_) => unreachable!("run_connected runs the console"),
        Command::Ack { id, by, note, note_file } => {
            let id: MessageId = id.parse()?;
            let by = by.unwrap_or_else(|| client.principal().name.clone());
            let note = match (note, note_file) {
                (Some(n), _) => Some(n),
                (None, Some(path)) => Some(read_note_file(&path)?),
                (None, None) => None,
            };
            // Checked before anything is fetched or signed, naming the rule.
            if let Some(n) = &note {
                referral_proto::ack::check_note(n).map_err(|e| crate::ClientError::Invalid(format!("--note: {e}")))?;
            }
            let acked = client.ack_with_note(id, &by, note.as_deref()).await?;
            if json {
                out!(
                    "{}",
                    json_line(
                        &json!({"message_id": id.to_string(), "already_acknowledged": acked.already_acknowledged, "receipt": receipt_json(&acked.receipt)})
                    )
                );
            } else if acked.already_acknowledged {
                let (by, at) = acked
                    .receipt
                    .ack
                    .as_ref()
                    .map(|a| (a.statement.acknowledged_by.clone(), a.statement.acknowledged_at))
                    .unwrap_or_default();
                let p = Presenter::new(lang);
                let nothing = match lang {
                    crate::present::Lang::Sv => "inget mer att göra",
                    crate::present::Lang::En => "nothing more to do",
                };
                out!("{id}: {}; {nothing}", p.already_acknowledged(&safe(&by), at));
            } else {
                out!("acknowledged {id} as {}", safe(&by));
                out!("  {}", receipt_line(&acked.receipt));
            }
        }
        Command::Status { ids } => {
            let ids = ids.iter().map(|s| s.parse()).collect::<Result<Vec<MessageId>, _>>()?;
            for (id, receipts) in client.receipts(&ids).await? {
                if json {
                    out!(
                        "{}",
                        json_line(
                            &json!({"message_id": id.to_string(), "receipts": receipts.iter().map(|r| sender_receipt_json(client, r)).collect::<Vec<_>>()})
                        )
                    );
                } else {
                    out!("{id}");
                    for r in &receipts {
                        out!("  {}", receipt_line(r));
                        if let Some(n) = note_line(client, r) {
                            out!("  {n}");
                        }
                    }
                }
            }
        }
        Command::Receipts { after, follow } => {
            let mut stream = client.watch_receipts(after).await?;
            // Without --follow, stop once the stream has nothing more for a moment.
            loop {
                let next = if follow {
                    stream.next().await?
                } else {
                    match tokio::time::timeout(std::time::Duration::from_millis(500), stream.next()).await {
                        Ok(r) => r?,
                        Err(_) => break,
                    }
                };
                let Some((cursor, r)) = next else { break };
                if json {
                    out!("{}", json_line(&json!({"cursor": cursor, "receipt": sender_receipt_json(client, &r)})));
                } else {
                    out!("#{cursor} {} {}", r.statement.message_id, receipt_line(&r));
                    if let Some(n) = note_line(client, &r) {
                        out!("  {n}");
                    }
                }
            }
        }
        Command::Directory => {
            let dir = client.refresh_directory().await?;
            if json {
                let agencies: Vec<_> = dir
                    .agencies
                    .values()
                    .map(|a| {
                        json!({
                            "id": a.id.to_string(), "display_name": a.display_name, "kind": a.kind.as_str(),
                            "keys": a.keys.iter().map(|k| json!({"key_id": k.key_id.to_string(), "not_before": k.not_before.to_string(), "not_after": k.not_after.to_string()})).collect::<Vec<_>>(),
                            "escalation": a.escalation.as_ref().map(|e| json!({"principal": e.principal.uri(), "display_name": e.display_name, "phone": e.phone})),
                        })
                    })
                    .collect();
                out!(
                    "{}",
                    json_line(
                        &json!({"trust_domain": dir.trust_domain.to_string(), "version": dir.version, "issued_at": dir.issued_at.to_string(), "valid_until": dir.valid_until.to_string(), "agencies": agencies})
                    )
                );
            } else {
                out!(
                    "directory of {} version {} (issued {}, valid until {}), signature verified",
                    dir.trust_domain,
                    dir.version,
                    dir.issued_at,
                    dir.valid_until
                );
                for a in dir.agencies.values() {
                    out!("  {:<24} {:<9} {}", a.id, a.kind.as_str(), safe(&a.display_name));
                    for k in &a.keys {
                        out!("    key {} valid {} .. {}", k.key_id, k.not_before, k.not_after);
                    }
                    if let Some(e) = &a.escalation {
                        out!("    escalation: {} ({}, {})", safe(&e.display_name), e.principal, safe(&e.phone));
                    }
                }
            }
        }
        Command::Audit(cmd) => return crate::auditor::run(client, cmd, json).await,
        Command::Overlap(cmd) => overlap(client, cmd, json).await?,
        Command::Completions { .. } | Command::Manpages { .. } | Command::Validate { .. } | Command::Schema => {
            unreachable!("answered by run without connecting")
        }
    }
    Ok(true)
}

/// The referrals of a `--bulk` path, each with where it came from
/// (`file.json`, or `file.jsonl:LINE`); every one is read and checked before
/// anything is sent.
fn read_bulk(path: &std::path::Path) -> anyhow::Result<Vec<(String, ReferralNotice)>> {
    let parse = |source: String, text: &str| -> anyhow::Result<(String, ReferralNotice)> {
        let notice: ReferralNotice =
            crate::form::parse(text).with_context(|| format!("{source} is not a valid referral notice"))?;
        if let Err(e) = notice.validate() {
            bail!("{source}: {e}");
        }
        Ok((source, notice))
    };
    if path.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).with_context(|| format!("cannot read {}", path.display()))? {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "json") && p.is_file() {
                files.push(p);
            }
        }
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
                parse(p.display().to_string(), &text)
            })
            .collect()
    } else {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| parse(format!("{}:{}", path.display(), n + 1), l))
            .collect()
    }
}

/// `send --bulk`: one SubmitStream, one line per referral; false when any
/// was not accepted.
async fn send_bulk(client: &Client, to: &AgencyId, path: &std::path::Path, json: bool) -> anyhow::Result<bool> {
    let referrals = read_bulk(path)?;
    if referrals.is_empty() {
        bail!("{} holds no referrals", path.display());
    }
    let batch: Vec<(AgencyId, ReferralNotice)> = referrals.iter().map(|(_, n)| (to.clone(), n.clone())).collect();
    let results = client.send_many(&batch).await?;
    let mut all_ok = true;
    for ((source, notice), result) in referrals.iter().zip(results) {
        match result {
            Ok(sent) if json => out!(
                "{}",
                json_line(&json!({
                    "source": source, "message_id": sent.message_id.to_string(), "duplicate": sent.duplicate,
                    "receipt": receipt_json(&sent.receipt),
                }))
            ),
            Ok(sent) => out!(
                "{source}: sent {} referral {} to {to}; {}{}",
                notice.urgency,
                sent.message_id,
                receipt_line(&sent.receipt),
                if sent.duplicate { " (already accepted earlier)" } else { "" }
            ),
            Err(e) => {
                all_ok = false;
                if json {
                    let status = e.status();
                    out!(
                        "{}",
                        json_line(&json!({
                            "source": source,
                            "error": {
                                "code": status.map(|s| s.code() as i32),
                                "reason": e.reason(),
                                "message": crate::error_chain(&e),
                            },
                        }))
                    );
                } else {
                    out!("{source}: not sent: {}", crate::error_chain(&e));
                }
            }
        }
    }
    Ok(all_ok)
}

/// Reads a referral file and validates it as the recipient will: every
/// problem at once, naming fields, never their content. The errors keep
/// their types, so that the exit code says "invalid input".
fn read_referral(path: &std::path::Path) -> anyhow::Result<ReferralNotice> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let notice: ReferralNotice =
        crate::form::parse(&text).with_context(|| format!("{} is not a valid referral notice", path.display()))?;
    notice.validate().with_context(|| path.display().to_string())?;
    Ok(notice)
}

/// A note file's text (`-`: standard input), without one trailing newline.
fn read_note_file(path: &std::path::Path) -> anyhow::Result<String> {
    let mut text = if path == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read the note from standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read the note file {}", path.display()))?
    };
    if text.ends_with('\n') {
        text.pop();
    }
    Ok(text)
}

/// The acknowledgement's note as the sender sees it (decrypted here, shown,
/// never logged), or why it cannot be read; None when there is none.
fn note_line(client: &Client, r: &Receipt) -> Option<String> {
    let ack = r.ack.as_ref()?;
    match client.open_note(r) {
        Ok(Some(text)) => {
            Some(format!("note from {}:\n    {}", safe(&ack.statement.acknowledged_by), safe_block(&text, "    ")))
        }
        Ok(None) if ack.statement.note_digest.is_some() => {
            Some("note: no longer held by the broker (purged with the message)".to_owned())
        }
        Ok(None) => None,
        Err(e) => Some(format!("note: cannot be read: {e}")),
    }
}

/// [`receipt_json`] with the acknowledgement's note opened for the sender:
/// `note` (text or null) and `note_error` (why it could not be read).
fn sender_receipt_json(client: &Client, r: &Receipt) -> serde_json::Value {
    let mut v = receipt_json(r);
    let (note, error) = match client.open_note(r) {
        Ok(n) => (n, None),
        Err(e) => (None, Some(e.to_string())),
    };
    v["note"] = json!(note);
    v["note_error"] = json!(error);
    v
}

fn receipt_line(r: &Receipt) -> String {
    let s = &r.statement;
    let mut line = format!(
        "{} at {} (queue position {}, log index {}; broker signature verified)",
        s.status, s.at, s.recipient_sequence, s.log_index
    );
    if let Some(ack) = &r.ack {
        line.push_str(&format!(
            "; acknowledged by {} of {} at {} (signature verified)",
            safe(&ack.statement.acknowledged_by),
            ack.statement.acker_agency,
            ack.statement.acknowledged_at
        ));
        if ack.statement.note_digest.is_some() {
            line.push_str("; with a note for the sender (encrypted to the sending agency)");
        }
    } else if !s.detail.is_empty() {
        line.push_str(&format!("; {}", safe(&s.detail)));
    }
    line
}

fn overlap_input(
    input: &OverlapInput,
) -> anyhow::Result<(Vec<referral_proto::psi::PersonalIdentityNumber>, crate::overlap::LegalBasis)> {
    let text = std::fs::read_to_string(&input.subjects)
        .with_context(|| format!("cannot read the subjects file {}", input.subjects.display()))?;
    let subjects = crate::overlap::read_subjects(&text)?;
    let Some(kind) = referral_proto::overlap::parse_basis(&input.legal_basis) else {
        return Err(crate::ClientError::Invalid(format!(
            "--legal-basis {:?} is not consent, osl_10_18c, child_concern_report or other",
            input.legal_basis
        ))
        .into());
    };
    Ok((subjects, crate::overlap::LegalBasis { kind, citation: input.citation.clone() }))
}

fn print_overlap_result(r: &crate::overlap::OverlapResult, json: bool) -> anyhow::Result<()> {
    if json {
        out!("{}", json_line(&serde_json::to_value(r)?));
        return Ok(());
    }
    out!(
        "session {}: {} of this agency's {} subjects are also known to {} (sets of {} and {} elements; transcript {})",
        r.session,
        r.matches.len(),
        r.own_subjects,
        safe(&r.peer),
        r.own_size,
        r.peer_size,
        r.transcript
    );
    for m in &r.matches {
        out!("  {m}");
    }
    Ok(())
}

fn session_json(s: &referral_proto::pb::OverlapSession) -> serde_json::Value {
    let state = match referral_proto::pb::OverlapState::try_from(s.state) {
        Ok(referral_proto::pb::OverlapState::Proposed) => "proposed",
        Ok(referral_proto::pb::OverlapState::Accepted) => "accepted",
        Ok(referral_proto::pb::OverlapState::Finished) => "finished",
        Ok(referral_proto::pb::OverlapState::Expired) => "expired",
        _ => "unknown",
    };
    let st = |p: &Option<referral_proto::pb::SignedOverlapStatement>| {
        let raw = p.as_ref()?;
        let s = raw.statement.clone()?;
        let basis = referral_proto::overlap::SignedStatement::try_from(raw.clone())
            .ok()
            .and_then(|x| x.statement.legal_basis)
            .map(referral_proto::overlap::basis_name);
        Some(json!({"signer": s.signer, "set_size": s.set_size, "legal_basis": basis, "citation": s.legal_citation,
               "signed_at": referral_proto::time::Timestamp(s.signed_at_ms).to_string()}))
    };
    json!({
        "session": MessageId::from_bytes(&s.session_id).map(|m| m.to_string()).unwrap_or_default(),
        "initiator": s.initiator, "responder": s.responder, "state": state,
        "proposal": st(&s.proposal), "acceptance": st(&s.acceptance),
        "proposed_at": referral_proto::time::Timestamp(s.proposed_at_ms).to_string(),
    })
}

async fn overlap(client: &Client, cmd: OverlapCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        OverlapCommand::Start { with, input } => {
            let (subjects, basis) = overlap_input(&input)?;
            let run = client.overlap_propose(&AgencyId::new(with)?, &subjects, &basis).await?;
            if json {
                out!(
                    "{}",
                    json_line(
                        &json!({"event": "proposed", "session": run.session().to_string(), "with": run.peer().to_string()})
                    )
                );
            } else {
                out!(
                    "proposed session {} to {}; waiting for it to run `agency-client overlap accept {}`",
                    run.session(),
                    safe(run.peer().as_str()),
                    run.session()
                );
            }
            let r = run.run(client, std::time::Duration::from_secs(input.timeout)).await?;
            print_overlap_result(&r, json)?;
        }
        OverlapCommand::Accept { id, input } => {
            let (subjects, basis) = overlap_input(&input)?;
            let id: MessageId = id.parse().context("the session id is not a UUID")?;
            let run = client.overlap_accept(id, &subjects, &basis).await?;
            let r = run.run(client, std::time::Duration::from_secs(input.timeout)).await?;
            print_overlap_result(&r, json)?;
        }
        OverlapCommand::List => {
            for s in client.overlap_sessions().await? {
                let j = session_json(&s);
                if json {
                    out!("{}", json_line(&j));
                } else {
                    let size = |k: &str| j[k]["set_size"].as_u64().map_or("-".to_owned(), |n| n.to_string());
                    out!(
                        "{} {} {} -> {} ({} / {} elements)",
                        j["session"].as_str().unwrap_or(""),
                        j["state"].as_str().unwrap_or(""),
                        safe(&s.initiator),
                        safe(&s.responder),
                        size("proposal"),
                        size("acceptance")
                    );
                }
            }
        }
        OverlapCommand::Result { id, referral_template } => {
            let id: MessageId = id.parse().context("the session id is not a UUID")?;
            let r = client.overlap_result(id)?;
            if !referral_template {
                return print_overlap_result(&r, json);
            }
            let mut base: serde_json::Value = serde_json::from_str(include_str!("../examples/referral.json"))?;
            for m in &r.matches {
                base["subject"]["personal_identity_number"] = json!(m);
                base["subject"]["name"] = json!("");
                base["free_text"] = json!(format!("Found by overlap session {} with {}.", r.session, r.peer));
                let template = json!({"to": r.peer, "referral": base});
                if json {
                    out!("{}", json_line(&template));
                } else {
                    out!("{}", serde_json::to_string_pretty(&template)?);
                }
            }
        }
    }
    Ok(())
}

fn receipt_json(r: &Receipt) -> serde_json::Value {
    let s = &r.statement;
    json!({
        "message_id": s.message_id.to_string(),
        "status": s.status,
        "at": s.at.to_string(),
        "sender": s.sender.to_string(),
        "recipient": s.recipient.to_string(),
        "recipient_sequence": s.recipient_sequence,
        "log_index": s.log_index,
        "detail": s.detail,
        "envelope_digest": s.envelope_digest.to_hex(),
        "acknowledged_by": r.ack.as_ref().map(|a| a.statement.acknowledged_by.clone()),
        "acknowledged_at": r.ack.as_ref().map(|a| a.statement.acknowledged_at.to_string()),
    })
}

pub(crate) fn event_json(ev: &AlertEvent) -> serde_json::Value {
    match ev {
        AlertEvent::Referral(r) => json!({
            "event": "referral", "message_id": r.message_id.to_string(), "sender": r.sender.to_string(),
            "sequence": r.sequence, "urgency": r.urgency, "created_at": r.created_at.to_string(),
            "ack_deadline": r.ack_deadline.to_string(), "redelivery": r.redelivery, "escalated": r.escalated,
            "envelope_digest": r.envelope_digest.to_hex(), "notice": r.notice,
        }),
        AlertEvent::Unreadable { message_id, sequence, error } => {
            json!({"event": "unreadable", "message_id": message_id.map(|m| m.to_string()), "sequence": sequence, "error": error})
        }
        AlertEvent::Settled { message_id, sequence, acknowledged_by, at } => {
            json!({"event": "settled", "message_id": message_id.to_string(), "sequence": sequence, "acknowledged_by": acknowledged_by, "at": at.to_string()})
        }
        AlertEvent::Escalation { message_id, sender, recipient, urgency, deadline, sequence } => json!({
            "event": "escalation", "message_id": message_id.to_string(), "sender": sender, "recipient": recipient,
            "urgency": urgency, "deadline": deadline.to_string(), "sequence": sequence,
        }),
        AlertEvent::CaughtUp { sequence } => json!({"event": "caught_up", "sequence": sequence}),
        AlertEvent::Heartbeat { at } => json!({"event": "heartbeat", "at": at.to_string()}),
    }
}

/// An event of the alert stream as text for a person on call.
pub(crate) fn event_text(
    ev: &AlertEvent,
    profile: &std::path::Path,
    p: &Presenter,
    now: referral_proto::time::Timestamp,
) -> Option<String> {
    match ev {
        AlertEvent::Referral(r) => Some(referral_text(r, profile, p, now)),
        AlertEvent::Unreadable { message_id, sequence, error } => Some(format!(
            "!! message {} (queue position {sequence}) failed verification and is not shown: {}",
            message_id.map_or("?".into(), |m| m.to_string()),
            safe(error)
        )),
        AlertEvent::Settled { message_id, acknowledged_by, at, .. } => {
            Some(format!("-- {message_id}: {}", p.already_acknowledged(&safe(acknowledged_by), *at)))
        }
        AlertEvent::Escalation { message_id, sender, deadline, urgency, .. } => Some(match p.lang {
            crate::present::Lang::Sv => format!(
                "!! ESKALERING: {} hänvisning {message_id} från {} kvitterades inte före {}; ta den nu",
                urgency.map_or("", |u| p.urgency(u)),
                safe(sender),
                p.local_time(*deadline)
            ),
            crate::present::Lang::En => format!(
                "!! ESCALATION: {} referral {message_id} from {} was not acknowledged by {}; please take it now",
                urgency.map_or("", |u| p.urgency(u)),
                safe(sender),
                p.local_time(*deadline)
            ),
        }),
        AlertEvent::CaughtUp { .. } => Some(match p.lang {
            crate::present::Lang::Sv => "-- alla väntande hänvisningar visade; lyssnar efter nya".into(),
            crate::present::Lang::En => "-- all waiting referrals shown; listening for new ones".into(),
        }),
        AlertEvent::Heartbeat { .. } => None,
    }
}

/// The full referral, for the on-call person at the recipient agency:
/// every field under a human label, in local time. Every value passes
/// through `safe_block`: the notice was validated on open, but what
/// reaches a terminal is neutralised here all the same, and a free-text
/// line is indented under its label so it can never pass for a field line
/// of its own.
pub(crate) fn referral_text(
    r: &IncomingReferral,
    profile: &std::path::Path,
    p: &Presenter,
    now: referral_proto::time::Timestamp,
) -> String {
    let mut out = format!("== {}\n", safe(&p.summary_line(r, now)));
    for section in p.sections(r, now) {
        out.push_str(&format!("   [{}]\n", section.title));
        for row in &section.rows {
            let label = if row.label.is_empty() { String::new() } else { format!("{}:", row.label) };
            out.push_str(&format!("     {label:<32}{}\n", safe_block(&row.value, &" ".repeat(37))));
        }
    }
    let verb = match p.lang {
        crate::present::Lang::Sv => "kvittera",
        crate::present::Lang::En => "to acknowledge",
    };
    out.push_str(&format!(
        "   {verb}: agency-client --profile {} ack {} --by {}\n",
        profile.display(),
        r.message_id,
        if p.lang == crate::present::Lang::Sv { "NAMN" } else { "NAME" }
    ));
    out
}

/// Runs a command-line program's work to completion, for this CLI and the
/// load generator: installs the one TLS crypto provider (ring, never
/// aws-lc-rs), runs `work` on a fresh runtime, prints an error with its
/// causes, and turns the outcome into an exit code (`exit` for success).
/// (`broker::cli::main_with` does the same for the broker, which may not
/// depend on this crate, without the closed-stdout case it never meets.)
pub fn run_program<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
    exit: impl FnOnce(T) -> std::process::ExitCode,
) -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(t) => exit(t),
        // The reader of our output went away: nothing is wrong with the work.
        Err(e) if e.is::<StdoutClosed>() => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Errors can quote text from elsewhere (the broker's messages).
            eprintln!("error: {}", safe_block(&format!("{e:#}"), "  "));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the CLI to completion and turns the outcome into an exit code
/// (see [`crate::exit`]: 0 done, 2 an audit that found failures, 64 and up
/// by the kind of error).
pub fn main_with(cli: Cli) -> std::process::ExitCode {
    crate::exit::main_with(cli)
}

#[cfg(test)]
mod tests {
    /// The example in `agency-client/examples/referral.json` (which the
    /// README points people to) is the library's example notice.
    #[test]
    fn the_example_referral_file_is_valid() {
        let text = include_str!("../examples/referral.json");
        let n: referral_proto::notice::ReferralNotice = serde_json::from_str(text).unwrap();
        n.validate().unwrap();
        assert_eq!(n, referral_proto::notice::example_notice());
    }
}
