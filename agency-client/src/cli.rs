//! The `agency-client` command line, for agency systems' operators, on-call
//! staff and auditors. Every command but `completions`, `manpages`,
//! `schema` and `validate` takes `--profile DIR` (a folder made by `certs`)
//! and prints for people, or JSON with `--json`.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use referral_proto::envelope::Urgency;
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::notice::ReferralNotice;
use referral_proto::receipt::Receipt;
use serde_json::json;

use crate::Client;
use crate::alerts::{AlertEvent, IncomingReferral};
use crate::display::{json_line, safe, safe_block};

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
    /// Show alerts for this agency as they come (waiting ones first).
    Listen {
        /// Stop after the messages waiting now have been shown.
        #[arg(long)]
        once: bool,
    },
    /// Acknowledge a referral with this agency's signature.
    Ack {
        /// The message id.
        id: String,
        /// Who takes it: a staff identifier (default: this profile's principal name).
        #[arg(long)]
        by: Option<String>,
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
            run_connected(&profile, cli.json, command).await
        }
    }
}

/// Carries out a command that talks to the broker as the profile's
/// principal. A failure that was really the broker refusing this profile's
/// certificate is reported as that (see [`Client::certificate_refusal`]).
async fn run_connected(profile: &std::path::Path, json: bool, command: Command) -> anyhow::Result<bool> {
    let client = Client::connect_dir(profile).await?;
    match run_command(&client, profile, json, command).await {
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

async fn run_command(client: &Client, profile: &std::path::Path, json: bool, command: Command) -> anyhow::Result<bool> {
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
        Command::Listen { once } => {
            let mut alerts = client.subscribe().await?;
            let me = client.principal().uri();
            while let Some(ev) = alerts.next().await? {
                if json {
                    out!("{}", json_line(&event_json(&ev)));
                } else if let Some(text) = event_text(&ev, profile, &me) {
                    out!("{text}");
                }
                if once && matches!(ev, AlertEvent::CaughtUp { .. }) {
                    break;
                }
            }
        }
        Command::Ack { id, by } => {
            let id: MessageId = id.parse()?;
            let by = by.unwrap_or_else(|| client.principal().name.clone());
            let acked = client.ack(id, &by).await?;
            if json {
                out!(
                    "{}",
                    json_line(
                        &json!({"message_id": id.to_string(), "already_acknowledged": acked.already_acknowledged, "receipt": receipt_json(&acked.receipt)})
                    )
                );
            } else if acked.already_acknowledged {
                let by = acked.receipt.ack.as_ref().map(|a| a.statement.acknowledged_by.clone()).unwrap_or_default();
                out!("{id} was already acknowledged by {}; nothing more to do", safe(&by));
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
                            &json!({"message_id": id.to_string(), "receipts": receipts.iter().map(receipt_json).collect::<Vec<_>>()})
                        )
                    );
                } else {
                    out!("{id}");
                    for r in &receipts {
                        out!("  {}", receipt_line(r));
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
                    out!("{}", json_line(&json!({"cursor": cursor, "receipt": receipt_json(&r)})));
                } else {
                    out!("#{cursor} {} {}", r.statement.message_id, receipt_line(&r));
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
    } else if !s.detail.is_empty() {
        line.push_str(&format!("; {}", safe(&s.detail)));
    }
    line
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

fn event_json(ev: &AlertEvent) -> serde_json::Value {
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

fn event_text(ev: &AlertEvent, profile: &std::path::Path, me: &str) -> Option<String> {
    match ev {
        AlertEvent::Referral(r) => Some(referral_text(r, profile)),
        AlertEvent::Unreadable { message_id, sequence, error } => Some(format!(
            "!! message {} (queue position {sequence}) failed verification and is not shown: {}",
            message_id.map_or("?".into(), |m| m.to_string()),
            safe(error)
        )),
        AlertEvent::Settled { message_id, acknowledged_by, at, .. } => {
            Some(format!("-- {message_id} was acknowledged by {} at {at}", safe(acknowledged_by)))
        }
        AlertEvent::Escalation { message_id, sender, deadline, urgency, .. } => Some(format!(
            "!! ESCALATION: {} referral {message_id} from {} was not acknowledged by {deadline}{}",
            urgency.map_or("", |u| u.as_str()),
            safe(sender),
            if me.is_empty() { "" } else { "; please take it now" }
        )),
        AlertEvent::CaughtUp { .. } => Some("-- all waiting referrals shown; listening for new ones".into()),
        AlertEvent::Heartbeat { .. } => None,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn or_dash(s: &str) -> &str {
    if s.trim().is_empty() { "-" } else { s }
}

/// The full referral, for the on-call person at the recipient agency.
fn referral_text(r: &IncomingReferral, profile: &std::path::Path) -> String {
    let n = &r.notice;
    let s = &n.subject;
    let c = &n.safe_contact;
    let urgency = match r.urgency {
        Urgency::Immediate => "IMMEDIATE",
        Urgency::Urgent => "URGENT",
        Urgency::Routine => "routine",
    };
    let mut out = format!(
        "== {urgency} referral {} from {} (queue position {}){}{}\n   acknowledge by {}\n",
        r.message_id,
        safe(if r.sender_name.is_empty() { r.sender.as_str() } else { &r.sender_name }),
        r.sequence,
        if r.redelivery { ", shown before" } else { "" },
        if r.escalated { ", ESCALATED" } else { "" },
        r.ack_deadline
    );
    // Every value passes through `safe_block`: the notice was validated on
    // open, but what reaches a terminal is neutralised here all the same,
    // and a free-text line is indented under its label so it can never
    // pass for a field line of its own.
    let mut field = |name: &str, value: String| {
        out.push_str(&format!("   {name:<16}{}\n", safe_block(&value, &" ".repeat(19))));
    };
    field(
        "Subject:",
        format!(
            "{}, {} (protected identity: {})",
            s.name,
            or_dash(&s.personal_identity_number),
            yes_no(s.protected_identity)
        ),
    );
    let has_address = !(s.street_address.is_empty() && s.city.is_empty());
    if has_address && !s.protected_identity {
        field("Address:", format!("{}, {} {}", s.street_address, s.postal_code, s.city));
    }
    field(
        "Safe contact:",
        format!(
            "{:?} {}; best time {}; leave a message: {}; language {}{}",
            c.channel,
            or_dash(&c.address),
            or_dash(&c.best_time),
            yes_no(c.safe_to_leave_message),
            or_dash(&c.language),
            if c.interpreter_needed { "; interpreter needed" } else { "" }
        ),
    );
    field("Legal basis:", format!("{:?}, {}: {}", n.legal_basis.kind, n.legal_basis.citation, n.legal_basis.reason));
    field(
        "Consent:",
        format!(
            "{:?}{}",
            n.consent.state,
            n.consent.obtained_at.map(|t| format!(" (by {} at {t})", n.consent.obtained_by)).unwrap_or_default()
        ),
    );
    field("Victim aware:", format!("{:?}", n.victim_aware));
    field(
        "Risk:",
        format!(
            "{:?} {}{}",
            n.risk.tool,
            n.risk.level.map(|l| format!("{l:?}")).unwrap_or_default(),
            n.risk.assessed_at.map(|t| format!(" (assessed {t})")).unwrap_or_default()
        ),
    );
    if !n.children.is_empty() {
        let kids: Vec<String> = n
            .children
            .iter()
            .map(|k| {
                format!(
                    "{} y{}{}",
                    k.age,
                    if k.present { ", present" } else { "" },
                    if k.witnessed { ", witnessed" } else { "" }
                )
            })
            .collect();
        field("Children:", kids.join("; "));
    }
    if !n.requested_support.is_empty() {
        field("Requested:", format!("{:?}", n.requested_support));
    }
    if let Some(t) = n.respond_by {
        field("Respond by:", t.to_string());
    }
    let p = &n.sender_contact;
    field(
        "Sender case:",
        format!("{}; contact {} ({}) {} {}", n.sender_case_reference, p.name, or_dash(&p.title), p.phone, p.email),
    );
    if !n.free_text.is_empty() {
        field("Notes:", n.free_text.clone());
    }
    out.push_str(&format!("   to acknowledge: agency-client --profile {} ack {}\n", profile.display(), r.message_id));
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
