//! Runs the `loadgen` binary end to end on tiny workloads and checks the
//! counts in its JSON reports: every submit answered, every alert and
//! receipt arrived, every stream open. No timing is asserted: these runs
//! share the machine with whatever else is running.

use std::process::Command;

use serde_json::Value;

fn loadgen(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen")).args(args).output().expect("run loadgen");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadgen {args:?} failed:\n{stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("loadgen {args:?} printed no JSON ({e}):\n{stderr}"))
}

fn target<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["target"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

#[test]
fn both_targets_with_subscribers() {
    let r = loadgen(&[
        "run",
        "--target",
        "both",
        "--count",
        "200",
        "--connections",
        "2",
        "--in-flight",
        "4",
        "--subscribers",
        "2",
        "--presealed",
        "--json",
    ]);
    assert_eq!(r["settings"]["sizes"]["ciphertext_bytes"], 2064, "2048-byte bucket");
    assert_eq!(r["settings"]["engine"], "fjall", "the broker's default for a new store");
    for op in ["sign_us", "verify_us"] {
        let us = r["machine"]["core_speed"][op].as_f64().unwrap_or_else(|| panic!("no machine.core_speed.{op}: {r}"));
        assert!(us > 0.0 && us < 10_000.0, "one {op} measured at {us} us");
    }
    for name in ["ceiling", "broker"] {
        let t = target(&r, name);
        assert_eq!(t["submits_ok"], 200, "{t}");
        assert_eq!(t["duplicates"], 0, "{t}");
        assert!(t["server_cpu_seconds"].as_f64().expect("cpu") >= 0.0);
        assert!(t["server_peak_rss_mib"].as_f64().expect("rss") > 0.0);
    }
    let e2e = &target(&r, "broker")["end_to_end"];
    let delivered = e2e["alerts_received"].as_u64().expect("alerts");
    let settled_first = e2e["settled_before_delivery"].as_u64().expect("settled first");
    assert_eq!(delivered + settled_first, 400, "{e2e}");
    assert_eq!(e2e["ack_receipts_received"], 200, "{e2e}");
    assert_eq!(e2e["acks_first"], 200, "{e2e}");
    assert_eq!(e2e["unreadable"], 0, "{e2e}");
    assert!(target(&r, "ceiling")["end_to_end"].is_null());
    assert!(r["broker_over_ceiling"].as_f64().is_some());
}

/// Redis as the broker's peer (`.ci/run` installs Debian's redis-server):
/// every LPUSH answered is on the recipient's list afterwards, the report
/// gives the broker's rate as a share of Redis's, and `--stream` measures
/// the broker once more through SubmitStream.
#[test]
fn redis_beside_the_broker() {
    let r = loadgen(&[
        "run",
        "--target",
        "all",
        "--count",
        "300",
        "--connections",
        "2",
        "--in-flight",
        "8",
        "--presealed",
        "--stream",
        "--json",
    ]);
    assert_eq!(r["skipped"].as_array().map(Vec::len), Some(0), "is redis-server installed? {r}");
    let t = target(&r, "redis");
    assert_eq!(t["submits_ok"], 300, "{t}");
    assert_eq!(t["queued_after"], 300, "{t}");
    assert_eq!(t["errors"].as_object().map(serde_json::Map::len), Some(0), "{t}");
    assert_eq!(target(&r, "broker")["submits_ok"], 300);
    assert!(r["broker_over_redis"].as_f64().is_some(), "{r}");
    assert!(r["redis_over_ceiling"].as_f64().is_some(), "{r}");
    // The same envelopes through SubmitStream, on a fresh store: none a duplicate.
    let s = target(&r, "broker_stream");
    assert_eq!(s["submits_ok"], 300, "{s}");
    assert_eq!(s["duplicates"], 0, "{s}");
    assert!(r["broker_stream_over_redis"].as_f64().is_some(), "{r}");
}

/// The broker on PostgreSQL beside the broker on sled (`.ci/run` installs
/// Debian's postgresql): the same envelopes, all accepted, none a
/// duplicate, with subscribers acknowledging, and the ratio reported.
#[test]
fn the_broker_on_postgres_beside_sled() {
    let r = loadgen(&[
        "run",
        "--target",
        "broker",
        "--postgres",
        "--count",
        "200",
        "--connections",
        "2",
        "--in-flight",
        "4",
        "--subscribers",
        "1",
        "--presealed",
        "--json",
    ]);
    assert_eq!(r["skipped"].as_array().map(Vec::len), Some(0), "is postgresql installed? {r}");
    for name in ["broker", "broker_postgres"] {
        let t = target(&r, name);
        assert_eq!(t["submits_ok"], 200, "{t}");
        assert_eq!(t["duplicates"], 0, "{t}");
        assert_eq!(t["end_to_end"]["acks_first"], 200, "{t}");
    }
    assert!(r["broker_postgres_over_broker"].as_f64().is_some(), "{r}");
}

#[test]
fn open_loop_on_the_fly_after_a_fill() {
    let r = loadgen(&[
        "run", "--target", "broker", "--fill", "500", "--rate", "200", "--count", "50", "--size", "1024", "--engine",
        "fjall", "--json",
    ]);
    assert_eq!(r["settings"]["engine"], "fjall", "{r}");
    assert_eq!(r["fill"]["messages"], 500, "{r}");
    assert_eq!(r["fill"]["failed"], 0, "{r}");
    let t = target(&r, "broker");
    assert_eq!(t["submits_ok"], 50, "{t}");
    assert!(t["submit_latency_from_schedule"]["count"].as_u64() == Some(50), "{t}");
}

#[test]
fn idle_streams_stay_open() {
    let r = loadgen(&["streams", "--count", "30", "--per-connection", "10", "--hold", "0.5", "--json"]);
    assert_eq!(r["connections"], 3, "{r}");
    assert_eq!(r["established"], 30, "{r}");
    assert_eq!(r["open_after_hold"], 30, "{r}");
}

#[test]
fn bad_options_are_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["run", "--fill", "10", "--subscribers", "1"])
        .output()
        .expect("run loadgen");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fill with --subscribers"));
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen")).args(["run", "--rate", "0"]).output().expect("run loadgen");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a positive number"));
}

#[test]
fn acks_at_two_queue_lengths() {
    let r = loadgen(&["acks", "--waiting", "5,200", "--acks", "10", "--warmup", "1", "--readable", "4", "--json"]);
    let levels = r["levels"].as_array().expect("levels");
    assert_eq!(levels.len(), 2, "{r}");
    for (l, waiting) in levels.iter().zip([5, 200]) {
        assert_eq!(l["waiting"], waiting, "{l}");
        assert_eq!(l["readable"], 4, "{l}");
        assert_eq!(l["ack_latency"]["count"], 10, "{l}");
    }
    assert!(r["p50_ratio"].as_f64().is_some(), "{r}");
}
