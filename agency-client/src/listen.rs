//! `agency-client listen`: the terminal view of the alert stream, with the
//! console's presentation ([`crate::present`]). What waits is summarised
//! and sorted (most urgent, then nearest deadline, first); what arrives
//! afterwards is shown in full; a broken connection is said out loud and
//! retried with backoff ([`crate::live`]).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use referral_proto::ids::MessageId;
use referral_proto::time::Timestamp;

use crate::Client;
use crate::alerts::{AlertEvent, IncomingReferral};
use crate::cli::{event_text, out, referral_text};
use crate::display::{json_line, safe};
use crate::live::{self, Backoff, LiveEvent};
use crate::present::{Lang, Presenter, triage_order};

/// The summary of what waits, sorted, at most `limit` lines (0: all).
pub(crate) fn summary(
    waiting: &BTreeMap<MessageId, IncomingReferral>,
    unreadable: &[String],
    profile: &Path,
    p: &Presenter,
    limit: usize,
    now: Timestamp,
) -> Vec<String> {
    let mut list: Vec<&IncomingReferral> = waiting.values().collect();
    list.sort_by(|a, b| triage_order(a, b));
    let mut lines = vec![p.summary_head(&list, now)];
    let shown = if limit == 0 { list.len() } else { limit.min(list.len()) };
    for r in &list[..shown] {
        lines.push(format!("  {}", safe(&p.summary_line(r, now))));
    }
    if shown < list.len() {
        lines.push(match p.lang {
            Lang::Sv => format!("  … och {} till (--limit 0 visar alla)", list.len() - shown),
            Lang::En => format!("  … and {} more (--limit 0 shows all)", list.len() - shown),
        });
    }
    lines.extend(unreadable.iter().cloned());
    if !list.is_empty() {
        lines.push(match p.lang {
            Lang::Sv => format!("-- öppna en: agency-client --profile {} show MEDDELANDE-ID", profile.display()),
            Lang::En => format!("-- open one: agency-client --profile {} show MESSAGE-ID", profile.display()),
        });
    }
    lines
}

/// Runs `listen`; with `once`, stops after the summary of what waits now.
pub async fn run(
    client: &Client,
    profile: &Path,
    json: bool,
    lang: Lang,
    once: bool,
    limit: usize,
) -> anyhow::Result<bool> {
    let p = Presenter::new(lang);
    if once {
        // One stream, no reconnecting: --once answers "what waits now?", and
        // a broker that cannot be reached is an error to report.
        let mut alerts = client.subscribe().await?;
        let mut waiting = BTreeMap::new();
        let mut unreadable = Vec::new();
        while let Some(ev) = alerts.next().await? {
            if json {
                out!("{}", json_line(&crate::cli::event_json(&ev)));
            }
            match ev {
                AlertEvent::Referral(r) => {
                    waiting.insert(r.message_id, *r);
                }
                AlertEvent::Settled { message_id, .. } => {
                    waiting.remove(&message_id);
                }
                ev @ AlertEvent::Unreadable { .. } => {
                    unreadable.extend(event_text(&ev, profile, &p, certs::now()));
                }
                AlertEvent::CaughtUp { .. } => break,
                AlertEvent::Escalation { .. } | AlertEvent::Heartbeat { .. } => {}
            }
        }
        if !json {
            for line in summary(&waiting, &unreadable, profile, &p, limit, certs::now()) {
                out!("{line}");
            }
        }
        return Ok(true);
    }

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let producer = live::run(client, Backoff::default(), move |ev| tx.send(ev).is_ok());
    let consumer = async {
        // Until the first CaughtUp the backlog is gathered for the summary;
        // afterwards a referral not seen before is shown in full. After a
        // reconnect the broker sends the waiting ones again: seen, not repeated.
        let mut backlog = Some((BTreeMap::new(), Vec::new()));
        let mut seen: HashSet<MessageId> = HashSet::new();
        while let Some(ev) = rx.recv().await {
            let now = certs::now();
            if json {
                let line = match &ev {
                    LiveEvent::Alert(a) => crate::cli::event_json(a),
                    LiveEvent::Connected { again } => serde_json::json!({"event": "connected", "again": again}),
                    LiveEvent::Down { error, retry_in } => serde_json::json!({
                        "event": "connection_down", "error": error, "retry_in_ms": retry_in.as_millis() as u64,
                    }),
                };
                out!("{}", json_line(&line));
                continue;
            }
            match ev {
                LiveEvent::Connected { again: false } => {}
                LiveEvent::Connected { again: true } => out!(
                    "{}",
                    match lang {
                        Lang::Sv => "-- ansluten till brokern igen; hämtar det som väntar",
                        Lang::En => "-- connected to the broker again; fetching what waits",
                    }
                ),
                LiveEvent::Down { error, retry_in } => out!(
                    "{}",
                    match lang {
                        Lang::Sv => format!(
                            "!! FÖRBINDELSEN MED BROKERN ÄR NERE ({}); nya hänvisningar syns inte; nytt försök om {} s",
                            safe(&error),
                            retry_in.as_secs_f32()
                        ),
                        Lang::En => format!(
                            "!! CONNECTION TO THE BROKER IS DOWN ({}); new referrals are not shown; retrying in {} s",
                            safe(&error),
                            retry_in.as_secs_f32()
                        ),
                    }
                ),
                LiveEvent::Alert(a) => match (&mut backlog, a) {
                    (Some((waiting, _)), AlertEvent::Referral(r)) => {
                        seen.insert(r.message_id);
                        waiting.insert(r.message_id, *r);
                    }
                    (Some((waiting, _)), AlertEvent::Settled { message_id, .. }) => {
                        waiting.remove(&message_id);
                    }
                    (Some((_, unreadable)), ev @ AlertEvent::Unreadable { .. }) => {
                        unreadable.extend(event_text(&ev, profile, &p, now));
                    }
                    (Some(_), AlertEvent::CaughtUp { .. }) => {
                        let (waiting, unreadable) = backlog.take().unwrap_or_default();
                        for line in summary(&waiting, &unreadable, profile, &p, limit, now) {
                            out!("{line}");
                        }
                        out!(
                            "{}",
                            event_text(&AlertEvent::CaughtUp { sequence: 0 }, profile, &p, now).unwrap_or_default()
                        );
                    }
                    (Some(_), _) => {}
                    (None, AlertEvent::Referral(r)) => {
                        if seen.insert(r.message_id) {
                            out!("{}", referral_text(&r, profile, &p, now).trim_end());
                        }
                    }
                    (None, AlertEvent::CaughtUp { .. }) => {}
                    (None, ev) => {
                        if let Some(text) = event_text(&ev, profile, &p, now) {
                            out!("{text}");
                        }
                    }
                },
            }
        }
        Ok::<bool, anyhow::Error>(true)
    };
    tokio::select! {
        () = producer => Ok(true),
        r = consumer => r,
    }
}
