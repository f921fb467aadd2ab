//! `audit report`: what a data-protection officer asks of the log, per
//! agency and month: referrals, how many were delivered, acknowledged,
//! escalated and expired, and how long acknowledging took. Built from a
//! verified replay; it holds agency ids, counts and durations only, never
//! a message id, a principal or a staff name.

use std::collections::{BTreeMap, HashMap};

use referral_proto::audit::OverlapSummary;
use referral_proto::pb;
use referral_proto::pb::audit_entry::Event;
use referral_proto::time::Timestamp;
use serde::Serialize;

/// Which side of its referrals a row counts for the agency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Sent,
    Received,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

/// One agency's referrals of one month (by the month, UTC, the broker
/// accepted them), sent or received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub month: String,
    pub agency: String,
    pub direction: Direction,
    pub referrals: u64,
    pub delivered: u64,
    pub acknowledged: u64,
    pub escalated: u64,
    pub expired: u64,
    /// From acceptance to the logged acknowledgement, nearest rank; none
    /// without acknowledgements.
    pub ack_median_seconds: Option<u64>,
    pub ack_p90_seconds: Option<u64>,
}

#[derive(Debug)]
struct Referral {
    sender: String,
    recipient: String,
    month: String,
    accepted_at: i64,
    delivered: bool,
    ack_after_ms: Option<i64>,
    escalated: bool,
    expired: bool,
}

/// Gathers referrals from the log's entries, in log order.
#[derive(Debug, Default)]
pub struct ReportBuilder {
    referrals: HashMap<Vec<u8>, Referral>,
}

impl ReportBuilder {
    pub fn push(&mut self, entry: &pb::AuditEntry) {
        let at = entry.logged_at_ms;
        let Some(event) = &entry.event else { return };
        let (id, f): (&[u8], fn(&mut Referral, i64)) = match event {
            Event::Submitted(s) => {
                let Some(h) = &s.header else { return };
                let month = Timestamp(at).to_string().chars().take(7).collect();
                self.referrals.entry(h.message_id.clone()).or_insert(Referral {
                    sender: h.sender.clone(),
                    recipient: h.recipient.clone(),
                    month,
                    accepted_at: at,
                    delivered: false,
                    ack_after_ms: None,
                    escalated: false,
                    expired: false,
                });
                return;
            }
            Event::Delivered(d) => (&d.message_id, |r, _| r.delivered = true),
            Event::Acknowledged(a) => {
                let id = a.ack.as_ref().and_then(|a| a.statement.as_ref()).map(|s| s.message_id.as_slice());
                let Some(id) = id else { return };
                (id, |r, at| r.ack_after_ms = r.ack_after_ms.or(Some(at - r.accepted_at)))
            }
            Event::Escalated(e) => (&e.message_id, |r, _| r.escalated = true),
            Event::Expired(e) => (&e.message_id, |r, _| r.expired = true),
            // Overlap sessions are not referrals; `audit verify` lists them.
            Event::Rejected(_)
            | Event::RejectionSummary(_)
            | Event::Purged(_)
            | Event::OverlapProposed(_)
            | Event::OverlapAccepted(_)
            | Event::OverlapRelayed(_)
            | Event::OverlapFinished(_)
            | Event::OverlapExpired(_) => return,
        };
        if let Some(r) = self.referrals.get_mut(id) {
            f(r, at);
        }
    }

    /// The rows, by month, agency and direction.
    pub fn finish(self) -> Vec<Row> {
        #[derive(Default)]
        struct Tally {
            referrals: u64,
            delivered: u64,
            escalated: u64,
            expired: u64,
            acks: Vec<i64>,
        }
        let mut tallies: BTreeMap<(String, String, Direction), Tally> = BTreeMap::new();
        for r in self.referrals.into_values() {
            for (agency, direction) in [(&r.sender, Direction::Sent), (&r.recipient, Direction::Received)] {
                let t = tallies.entry((r.month.clone(), agency.clone(), direction)).or_default();
                t.referrals += 1;
                t.delivered += u64::from(r.delivered);
                t.escalated += u64::from(r.escalated);
                t.expired += u64::from(r.expired);
                t.acks.extend(r.ack_after_ms);
            }
        }
        tallies
            .into_iter()
            .map(|((month, agency, direction), mut t)| {
                t.acks.sort_unstable();
                Row {
                    month,
                    agency,
                    direction,
                    referrals: t.referrals,
                    delivered: t.delivered,
                    acknowledged: t.acks.len() as u64,
                    escalated: t.escalated,
                    expired: t.expired,
                    ack_median_seconds: nearest_rank(&t.acks, 50),
                    ack_p90_seconds: nearest_rank(&t.acks, 90),
                }
            })
            .collect()
    }
}

/// The `p`th percentile of sorted milliseconds by nearest rank (the
/// smallest value with at least p% of the values at or below it), in
/// whole seconds.
fn nearest_rank(sorted_ms: &[i64], p: usize) -> Option<u64> {
    let n = sorted_ms.len();
    let rank = (p * n).div_ceil(100).max(1);
    sorted_ms.get(rank - 1).map(|ms| u64::try_from(*ms).unwrap_or(0) / 1000)
}

/// `45s`, `3m05s`, `2h07m`, `3d04h`.
pub fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

const COLUMNS: [&str; 10] = [
    "month",
    "agency",
    "direction",
    "referrals",
    "delivered",
    "acknowledged",
    "escalated",
    "expired",
    "ack_median_seconds",
    "ack_p90_seconds",
];

/// The rows as a table for people.
pub fn text(rows: &[Row]) -> Vec<String> {
    if rows.is_empty() {
        return vec!["no referrals in the log".into()];
    }
    let width = rows.iter().map(|r| r.agency.len()).max().unwrap_or(0).max("agency".len());
    let dur = |s: Option<u64>| s.map_or("-".into(), duration);
    let mut lines = vec![format!(
        "{:<7}  {:<width$}  {:<9}  {:>9}  {:>9}  {:>12}  {:>9}  {:>7}  {:>10}  {:>7}",
        "month",
        "agency",
        "direction",
        "referrals",
        "delivered",
        "acknowledged",
        "escalated",
        "expired",
        "ack median",
        "ack p90"
    )];
    for r in rows {
        lines.push(format!(
            "{:<7}  {:<width$}  {:<9}  {:>9}  {:>9}  {:>12}  {:>9}  {:>7}  {:>10}  {:>7}",
            r.month,
            r.agency,
            r.direction.as_str(),
            r.referrals,
            r.delivered,
            r.acknowledged,
            r.escalated,
            r.expired,
            dur(r.ack_median_seconds),
            dur(r.ack_p90_seconds)
        ));
    }
    lines
}

/// The rows as CSV (RFC 4180), with a header line. Agency ids are
/// letters, digits and dashes, so no field needs quoting.
pub fn csv(rows: &[Row]) -> Vec<String> {
    let opt = |s: Option<u64>| s.map_or(String::new(), |s| s.to_string());
    let mut lines = vec![COLUMNS.join(",")];
    for r in rows {
        lines.push(format!(
            "{},{},{},{},{},{},{},{},{},{}",
            r.month,
            r.agency,
            r.direction.as_str(),
            r.referrals,
            r.delivered,
            r.acknowledged,
            r.escalated,
            r.expired,
            opt(r.ack_median_seconds),
            opt(r.ack_p90_seconds)
        ));
    }
    lines
}

const OVERLAP_COLUMNS: [&str; 12] = [
    "proposed_at",
    "session",
    "initiator",
    "initiator_size",
    "initiator_legal_basis",
    "responder",
    "responder_size",
    "responder_legal_basis",
    "accepted_at",
    "chunks",
    "sealed_bytes",
    "status",
];

/// One CSV field (RFC 4180) of text an agency signed: control and
/// bidirectional formatting characters shown as `\u{..}` (as the text
/// report shows them, so every record stays one line a terminal cannot be
/// steered by), quoted when it holds a comma or a quote, quotes doubled.
/// A field a spreadsheet would run as a formula (starting with `=`, `+`,
/// `-` or `@`) gets a leading `'`, so a citation can never become a
/// formula in the officer's spreadsheet.
fn field(s: &str) -> String {
    let s = crate::display::safe(s);
    let s = if s.starts_with(['=', '+', '-', '@']) { format!("'{s}") } else { s.into_owned() };
    if s.contains([',', '"']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
}

/// The blind overlap sessions of the verified log as CSV, with a header
/// line: when and between whom, the padded set sizes and legal bases each
/// side signed, what the broker relayed, and whether both sides finished
/// with the same transcript (`completed`) or not (`not completed`).
pub fn overlaps_csv(overlaps: &[OverlapSummary]) -> Vec<String> {
    let mut lines = vec![OVERLAP_COLUMNS.join(",")];
    for o in overlaps {
        lines.push(
            [
                o.proposed_at.to_string(),
                o.session.clone(),
                field(&o.initiator),
                o.initiator_size.to_string(),
                field(&o.initiator_legal_basis),
                field(&o.responder),
                o.responder_size.to_string(),
                field(&o.responder_legal_basis),
                o.accepted_at.map_or(String::new(), |t| t.to_string()),
                o.chunks.to_string(),
                o.sealed_bytes.to_string(),
                o.status().to_owned(),
            ]
            .join(","),
        );
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: i64, event: Event) -> pb::AuditEntry {
        pb::AuditEntry { format_version: 1, index: 0, logged_at_ms: at, event: Some(event) }
    }

    fn submitted(id: u8, from: &str, to: &str) -> Event {
        Event::Submitted(pb::Submitted {
            header: Some(pb::EnvelopeHeader {
                message_id: vec![id; 16],
                sender: from.into(),
                recipient: to.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn acked(id: u8) -> Event {
        Event::Acknowledged(pb::Acknowledged {
            ack: Some(pb::SignedAck {
                statement: Some(pb::AckStatement { message_id: vec![id; 16], ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    const NOV: i64 = 1_764_000_000_000; // 2025-11-24T16:00:00Z
    const DEC: i64 = 1_765_000_000_000; // 2025-12-06T05:46:40Z

    #[test]
    fn counts_and_times_per_agency_and_month() {
        let mut b = ReportBuilder::default();
        let delivered = |id: u8| Event::Delivered(pb::Delivered { message_id: vec![id; 16], ..Default::default() });
        for (i, at) in [(1u8, NOV), (2, NOV + 1000), (3, NOV + 2000), (4, DEC)] {
            b.push(&entry(at, submitted(i, "polisen", "soc")));
        }
        b.push(&entry(NOV + 5000, delivered(1)));
        b.push(&entry(NOV + 6000, delivered(1)));
        b.push(&entry(NOV + 7000, delivered(2)));
        b.push(&entry(NOV + 65_000, acked(1)));
        b.push(&entry(NOV + 3_601_000, acked(2)));
        b.push(&entry(
            NOV + 4 * 3_600_000,
            Event::Escalated(pb::Escalated { message_id: vec![3; 16], ..Default::default() }),
        ));
        b.push(&entry(DEC + 1000, Event::Expired(pb::Expired { message_id: vec![4; 16], ..Default::default() })));
        let rows = b.finish();
        assert_eq!(
            text(&rows),
            [
                "month    agency   direction  referrals  delivered  acknowledged  escalated  expired  ack median  ack p90",
                "2025-11  polisen  sent               3          2             2          1        0       1m05s    1h00m",
                "2025-11  soc      received           3          2             2          1        0       1m05s    1h00m",
                "2025-12  polisen  sent               1          0             0          0        1           -        -",
                "2025-12  soc      received           1          0             0          0        1           -        -",
            ]
        );
        assert_eq!(
            csv(&rows),
            [
                "month,agency,direction,referrals,delivered,acknowledged,escalated,expired,ack_median_seconds,ack_p90_seconds",
                "2025-11,polisen,sent,3,2,2,1,0,65,3600",
                "2025-11,soc,received,3,2,2,1,0,65,3600",
                "2025-12,polisen,sent,1,0,0,0,1,,",
                "2025-12,soc,received,1,0,0,0,1,,",
            ]
        );
        assert_eq!(
            serde_json::to_value(&rows[0]).unwrap(),
            serde_json::json!({"month": "2025-11", "agency": "polisen", "direction": "sent", "referrals": 3,
                "delivered": 2, "acknowledged": 2, "escalated": 1, "expired": 0,
                "ack_median_seconds": 65, "ack_p90_seconds": 3600})
        );
    }

    #[test]
    fn overlap_sessions_as_csv() {
        let mut o = OverlapSummary {
            session: "0192f5e0-0000-7000-8000-000000000001".into(),
            initiator: "polisen".into(),
            responder: "soc".into(),
            initiator_size: 8,
            responder_size: 4,
            initiator_legal_basis: "osl_10_18c: OSL 10 kap. 18 c §".into(),
            responder_legal_basis: "other: =HYPERLINK(\"x\"), \"quoted\"\nnext".into(),
            proposed_at: Timestamp(NOV),
            accepted_at: Some(Timestamp(NOV + 1000)),
            chunks: 4,
            sealed_bytes: 1234,
            initiator_transcript: Some("ab".into()),
            responder_transcript: Some("ab".into()),
            expired_at: None,
        };
        let open = OverlapSummary {
            session: "0192f5e0-0000-7000-8000-000000000002".into(),
            initiator_legal_basis: "=1+1".into(),
            responder_legal_basis: String::new(),
            responder_size: 0,
            accepted_at: None,
            chunks: 0,
            sealed_bytes: 0,
            responder_transcript: None,
            ..o.clone()
        };
        assert_eq!(
            overlaps_csv(&[o.clone(), open]),
            [
                "proposed_at,session,initiator,initiator_size,initiator_legal_basis,responder,responder_size,\
                 responder_legal_basis,accepted_at,chunks,sealed_bytes,status",
                &format!(
                    "{},0192f5e0-0000-7000-8000-000000000001,polisen,8,osl_10_18c: OSL 10 kap. 18 c §,soc,4,\
                     \"other: =HYPERLINK(\"\"x\"\"), \"\"quoted\"\"\\u{{a}}next\",{},4,1234,completed",
                    Timestamp(NOV),
                    Timestamp(NOV + 1000)
                ),
                &format!(
                    "{},0192f5e0-0000-7000-8000-000000000002,polisen,8,'=1+1,soc,0,,,0,0,not completed",
                    Timestamp(NOV)
                ),
            ]
        );
        o.responder_transcript = Some("cd".into());
        assert!(overlaps_csv(&[o.clone()])[1].ends_with(",not completed"), "transcripts differ");
        o.responder_transcript = None;
        o.expired_at = Some(Timestamp(NOV + 86_400_000));
        assert!(overlaps_csv(&[o])[1].ends_with(",expired"), "the broker ended it unfinished");
        assert_eq!(overlaps_csv(&[]), [OVERLAP_COLUMNS.join(",")]);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms: Vec<i64> = (1..=10).map(|s| s * 1000).collect();
        assert_eq!((nearest_rank(&ms, 50), nearest_rank(&ms, 90)), (Some(5), Some(9)));
        assert_eq!(nearest_rank(&[7000], 90), Some(7));
        assert_eq!(nearest_rank(&[], 50), None);
        assert_eq!(
            [duration(59), duration(185), duration(7620), duration(273_600)],
            ["59s", "3m05s", "2h07m", "3d04h"]
        );
    }
}
