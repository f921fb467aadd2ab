//! The auditor's command line as a data-protection officer uses it:
//! `accept-restore` after a real backup and restore, `replay` filters,
//! proofs saved and checked offline, and the report per agency and month.

use std::path::Path;
use std::time::Duration;

use crate::deadlines::wait_status;
use crate::support::{audit_entries, client, exe};
use agency_client::alerts::AlertEvent;
use integration_tests::*;
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::notice::example_notice;
use referral_proto::receipt::ReceiptStatus;
use referral_proto::time::Timestamp;

fn state_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn auditor(b: &ChildBroker, args: &[&str]) -> (i32, String, String) {
    let p = b.dev.profile(AUDITOR).display().to_string();
    let mut all = vec!["--profile", p.as_str()];
    all.extend_from_slice(args);
    run_tool(exe(), "agency-client", &all).await
}

#[tokio::test]
async fn after_a_restore_verify_fails_until_the_auditor_accepts_what_was_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = ChildBroker::start(exe(), tmp.path(), "").await;
    let config = b.config_path.display().to_string();
    let social = AgencyId::new(SOCIAL).unwrap();
    let police = agency_client::Client::connect_dir(&b.dev.profile(POLICE_SYSTEM)).await.unwrap();
    for _ in 0..2 {
        police.send(&social, &example_notice()).await.unwrap();
    }
    let backup = tmp.path().join("backup");
    let (code, out, err) =
        run_tool(exe(), "broker", &["backup", "--config", &config, "--to", backup.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    // Sent after the backup, and verified by the auditor: the restore loses them.
    for _ in 0..2 {
        police.send(&social, &example_notice()).await.unwrap();
    }
    let state = tmp.path().join("auditor").join("audit-state.json");
    let state_arg = state.display().to_string();
    let (code, out, err) = auditor(&b, &["audit", "verify", "--state", &state_arg]).await;
    assert_eq!(code, 0, "{out}{err}");
    let trusted = state_json(&state);
    let n = trusted["tree_size"].as_u64().unwrap();
    let verified_at = trusted["verified_at"].as_str().unwrap().to_owned();

    assert!(b.terminate().await.success());
    std::fs::rename(&b.data_dir, tmp.path().join("damaged")).unwrap();
    let (code, out, err) =
        run_tool(exe(), "broker", &["restore", "--config", &config, "--from", backup.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    b.spawn().await;

    // The documented failure, with the way out.
    let m = {
        let c = agency_client::Client::connect_dir(&b.dev.profile(AUDITOR)).await.unwrap();
        c.tree_head().await.unwrap().head.tree_size
    };
    assert!(m + 1 < n, "the restored log is shorter by more than one entry ({m} < {n})");
    let shrank = format!("the log shrank: {n} entries were verified on {verified_at}, the broker now signs {m}");
    let (code, out, err) = auditor(&b, &["audit", "verify", "--state", &state_arg]).await;
    assert_eq!(code, 2, "{out}{err}");
    let tail: Vec<&str> = out.lines().rev().take(3).collect();
    assert_eq!(
        tail,
        [
            "if the broker was restored from a backup: `agency-client audit accept-restore` shows what was lost and records the decision to trust its log from now on",
            &format!("  - {shrank}"),
            "FAILED: 1 problem(s)",
        ]
    );

    // Shown, but not confirmed (no terminal, no --yes): nothing recorded.
    let decisions = tmp.path().join("auditor").join("audit-decisions.jsonl");
    let (code, out, err) = auditor(&b, &["audit", "accept-restore", "--state", &state_arg]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.trim(), "error: not accepted: nothing was recorded (answer yes on a terminal, or pass --yes)");
    assert!(
        out.contains(&format!("no longer provable:  entries {m}..={} ({} entries) of the verified log", n - 1, n - m)),
        "{out}"
    );
    assert!(!decisions.exists());
    assert_eq!(state_json(&state), trusted, "the trusted head is unchanged");
    let (code, _, _) = auditor(&b, &["audit", "verify", "--state", &state_arg]).await;
    assert_eq!(code, 2, "still failing without the decision");

    // Accepted: the loss shown exactly, the decision recorded, verify passes.
    let (code, out, err) = auditor(&b, &["audit", "accept-restore", "--state", &state_arg, "--yes"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let now = state_json(&state);
    assert_eq!(now["tree_size"], m);
    let signed_at = |s: &serde_json::Value| Timestamp(s["timestamp_ms"].as_i64().unwrap()).to_string();
    let expected = [
        format!("the broker can no longer prove the log verified on {verified_at}:"),
        format!("  - {shrank}"),
        format!(
            "trusted head:        {n} entries, root {}, signed at {}",
            trusted["root"].as_str().unwrap(),
            signed_at(&trusted)
        ),
        format!(
            "broker's head now:   {m} entries, root {}, signed at {}; this log verifies by itself",
            now["root"].as_str().unwrap(),
            signed_at(&now)
        ),
        format!("still proven:        entries 0..={} ({m} entries)", m - 1),
        format!("no longer provable:  entries {m}..={} ({} entries) of the verified log", n - 1, n - m),
        "new history:         none of the broker's log".to_owned(),
        format!(
            "accepted: the broker's log of {m} entries (root {}) is trusted from now on; the decision is recorded in {}",
            now["root"].as_str().unwrap(),
            decisions.display()
        ),
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
    let recorded = std::fs::read_to_string(&decisions).unwrap();
    let lines: Vec<serde_json::Value> = recorded.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    let d = &lines[0];
    assert_eq!(d["decision"], "accept-restore");
    assert_eq!(d["by"], "spiffe://igor.example.se/agency/imy/auditor/granskare");
    assert_eq!(
        (d["loss"]["trusted"]["tree_size"].as_u64(), d["loss"]["current"]["tree_size"].as_u64()),
        (Some(n), Some(m))
    );
    assert_eq!(d["loss"]["trusted"]["root"], trusted["root"]);
    assert_eq!(d["loss"]["current"]["root"], now["root"]);
    assert_eq!((d["loss"]["unchanged"].as_u64(), d["loss"]["exact"].as_bool()), (Some(m), Some(true)));
    Timestamp::parse_rfc3339(d["at"].as_str().unwrap()).unwrap();

    // From now on the log only has to extend the accepted head.
    let police = agency_client::Client::connect_dir(&b.dev.profile(POLICE_SYSTEM)).await.unwrap();
    police.send(&social, &example_notice()).await.unwrap();
    let (code, out, err) = auditor(&b, &["audit", "verify", "--state", &state_arg]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().last().unwrap().starts_with("OK: every signature"), "{out}");
    // And there is nothing left to accept.
    let (code, out, _) = auditor(&b, &["audit", "accept-restore", "--state", &state_arg, "--yes"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("nothing to accept: the broker's log of "), "{out}");
    assert_eq!(std::fs::read_to_string(&decisions).unwrap(), recorded, "nothing more recorded");
    assert!(b.terminate().await.success());
}

const HOUR: Duration = Duration::from_secs(3600);

/// Police send three referrals to social services and social services one
/// to the police, on the broker's manual clock: the on-call social worker
/// receives all three and acknowledges the first after one minute and the
/// second after three; four hours on, the other two escalate. One refused
/// submission by the police too. Returns the ids, in that order.
async fn known_run(h: &Harness) -> Vec<MessageId> {
    let (social, police_id) = (AgencyId::new(SOCIAL).unwrap(), AgencyId::new(POLICE).unwrap());
    let police = h.client(POLICE_SYSTEM).await;
    let social_system = h.client(SOCIAL_SYSTEM).await;
    let oncall = h.client(SOCIAL_ONCALL).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(police.send(&social, &example_notice()).await.unwrap());
    }
    let back = social_system.send(&police_id, &example_notice()).await.unwrap();
    let mut alerts = oncall.subscribe().await.unwrap();
    let mut seen = 0;
    while seen < 3 {
        if let AlertEvent::Referral(_) = alerts.next().await.unwrap().unwrap() {
            seen += 1;
        }
    }
    h.advance(Duration::from_secs(60));
    oncall.ack_digest(ids[0].message_id, ids[0].envelope_digest, "jour-1").await.unwrap();
    h.advance(Duration::from_secs(120));
    oncall.ack_digest(ids[1].message_id, ids[1].envelope_digest, "jour-2").await.unwrap();
    let mut bad = crate::support::example_envelope(h, POLICE_SYSTEM, SOCIAL).await;
    bad.signature[0] ^= 1;
    crate::support::submit_raw(&police, bad).await.unwrap_err();
    broker::refusals::close_interval(h.state()).await;
    let mut police_receipts = police.watch_receipts(0).await.unwrap();
    let mut social_receipts = social_system.watch_receipts(0).await.unwrap();
    h.state().committer.barrier().await;
    h.advance(4 * HOUR);
    wait_status(&mut police_receipts, ids[2].message_id, ReceiptStatus::Escalated).await;
    wait_status(&mut social_receipts, back.message_id, ReceiptStatus::Escalated).await;
    h.state().committer.barrier().await;
    let mut all: Vec<MessageId> = ids.iter().map(|s| s.message_id).collect();
    all.push(back.message_id);
    all
}

#[tokio::test]
async fn the_report_and_replay_filters_over_a_known_run() {
    let h = Harness::start_with(Options { manual_clock: true, ..Options::default() }).await;
    let ids = known_run(&h).await;
    let entries = audit_entries(&h).await;
    let month: String = Timestamp(entries[0].logged_at_ms).to_string().chars().take(7).collect();

    let (code, out, err) = client(&h, AUDITOR, &["audit", "report"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with(&format!("referrals in the verified log of {} entries (root ", entries.len())),
        "{out}"
    );
    assert_eq!(
        lines[1..],
        [
            "time to acknowledge runs from acceptance to the logged acknowledgement (median and 90th percentile)",
            "month    agency                 direction  referrals  delivered  acknowledged  escalated  expired  ack median  ack p90",
            &format!(
                "{month}  huddinge-socialtjanst  sent               1          0             0          1        0           -        -"
            ),
            &format!(
                "{month}  huddinge-socialtjanst  received           3          3             2          1        0       1m00s    3m00s"
            ),
            &format!(
                "{month}  polisen-huddinge       sent               3          3             2          1        0       1m00s    3m00s"
            ),
            &format!(
                "{month}  polisen-huddinge       received           1          0             0          1        0           -        -"
            ),
        ]
    );
    let (code, out, _) = client(&h, AUDITOR, &["audit", "report", "--csv"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!(
            "month,agency,direction,referrals,delivered,acknowledged,escalated,expired,ack_median_seconds,ack_p90_seconds\n\
             {month},huddinge-socialtjanst,sent,1,0,0,1,0,,\n\
             {month},huddinge-socialtjanst,received,3,3,2,1,0,60,180\n\
             {month},polisen-huddinge,sent,3,3,2,1,0,60,180\n\
             {month},polisen-huddinge,received,1,0,0,1,0,,\n"
        )
    );
    let (code, out, _) = client(&h, AUDITOR, &["--json", "audit", "report"]).await;
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["tree_size"], entries.len());
    assert_eq!(
        report["rows"][1],
        serde_json::json!({"month": month, "agency": SOCIAL, "direction": "received", "referrals": 3, "delivered": 3,
            "acknowledged": 2, "escalated": 1, "expired": 0, "ack_median_seconds": 60, "ack_p90_seconds": 180})
    );
    // No personal data, no people: agency ids, counts and durations only.
    for forbidden in ["Testperson", "jour-1", "spiffe://", &ids[0].to_string()] {
        assert!(!out.contains(forbidden), "{forbidden} in {out}");
    }

    // Replay filters, applied after the whole log verified.
    let replay = |args: &'static [&'static str]| {
        let h = &h;
        async move {
            let mut all = vec!["--json", "audit", "replay"];
            all.extend_from_slice(args);
            let (code, out, err) = client(h, AUDITOR, &all).await;
            assert_eq!(code, 0, "{out}{err}");
            out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect::<Vec<_>>()
        }
    };
    let everything = replay(&[]).await;
    assert_eq!(everything.len(), entries.len());
    let first = ids[0].to_string();
    let (code, out, err) = client(&h, AUDITOR, &["--json", "audit", "replay", "--message", &first]).await;
    assert_eq!(code, 0, "{err}");
    let events: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["submitted", "delivered", "acknowledged"]);
    // By agency: the police's referrals both ways and its own refusal.
    let police_only = replay(&["--agency", "polisen-huddinge"]).await;
    assert_eq!(police_only, everything, "every entry concerns the police here");
    let social_only = replay(&["--agency", "huddinge-socialtjanst"]).await;
    let without_refusals: Vec<_> = everything.iter().filter(|e| e["event"] != "rejection_summary").cloned().collect();
    assert_eq!(social_only, without_refusals);
    assert!(everything.len() > social_only.len(), "the refusal is the police's");
    // By time: from the first acknowledgement (one minute in) until just
    // before the escalations.
    let start = Timestamp(entries[0].logged_at_ms);
    let since = start.plus_millis(60_000).to_string();
    let until = start.plus_millis(3_600_000).to_string();
    let (code, out, err) =
        client(&h, AUDITOR, &["--json", "audit", "replay", "--since", &since, "--until", &until]).await;
    assert_eq!(code, 0, "{err}");
    let window: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let expected: Vec<_> = everything
        .iter()
        .filter(|e| {
            let at = Timestamp::parse_rfc3339(e["logged_at"].as_str().unwrap()).unwrap();
            at >= start.plus_millis(60_000) && at < start.plus_millis(3_600_000)
        })
        .cloned()
        .collect();
    assert_eq!(window, expected);
    let kinds: Vec<&str> = window.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["acknowledged", "acknowledged", "rejection_summary"]);
}

#[tokio::test]
async fn a_saved_proof_checks_offline_and_a_tampered_one_fails() {
    let mut h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    let file = h.dir().join("proof.json");
    let file_arg = file.display().to_string();
    let id = sent.message_id.to_string();
    let (code, out, err) = client(&h, AUDITOR, &["audit", "prove", &id, "--out", &file_arg]).await;
    assert_eq!(code, 0, "{out}{err}");
    let profile = h.profile(AUDITOR).display().to_string();
    assert_eq!(
        out.lines().last().unwrap(),
        format!(
            "saved to {file_arg}; check it offline with: agency-client --profile {profile} audit check-proof {file_arg}"
        )
    );
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    // Offline: the broker is gone.
    h.stop().await;
    let (code, out, err) = client(&h, AUDITOR, &["audit", "check-proof", &file_arg]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.trim(),
        format!(
            "OK: {file_arg} holds: entry {} is the submission of message {id}, included in the log of {} entries with root {} that the broker signed at {} (log key from directory version 1, signed by the federation)",
            sent.receipt.statement.log_index,
            saved["tree_size"],
            saved["root"].as_str().unwrap(),
            saved["tree_head_timestamp"].as_str().unwrap()
        )
    );
    // Each kind of tampering, with its exact reason and exit code 2.
    let tampered = h.dir().join("tampered.json");
    let tampered_arg = tampered.display().to_string();
    type Tamper = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: [(&str, Tamper); 3] = [
        (
            "the inclusion proof does not verify: proof does not lead to the expected root hash",
            Box::new(|p| {
                let first = p["audit_path"][0].as_str().unwrap();
                let flipped = if first.starts_with('0') { "1" } else { "0" };
                p["audit_path"][0] = format!("{flipped}{}", &first[1..]).into();
            }),
        ),
        (
            "the readable entry in the file is not what the entry bytes say",
            Box::new(|p| {
                p["entry"]["recipient"] = "polisen-huddinge".into();
            }),
        ),
        (
            "the tree head's signature does not verify with the broker log key of directory version 1",
            Box::new(|p| {
                p["tree_size"] = (p["tree_size"].as_u64().unwrap() + 1).into();
            }),
        ),
    ];
    for (reason, tamper) in cases {
        let mut p = saved.clone();
        tamper(&mut p);
        std::fs::write(&tampered, serde_json::to_string_pretty(&p).unwrap()).unwrap();
        let (code, out, err) = client(&h, AUDITOR, &["audit", "check-proof", &tampered_arg]).await;
        assert_eq!((code, out.trim()), (2, format!("FAILED: {tampered_arg}: {reason}").as_str()), "{err}");
    }
    let (code, out, _) = client(&h, AUDITOR, &["--json", "audit", "check-proof", &tampered_arg]).await;
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"ok": false, "error": "the tree head's signature does not verify with the broker log key of directory version 1"})
    );
}
