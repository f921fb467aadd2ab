//! The audit log: a real log verifies and proves; every kind of tampering,
//! by an operator who can rewrite the store and re-sign tree heads, is
//! caught by the auditor's next run, which says where.

use std::path::Path;

use agency_client::Client;
use broker::store::{Batch, LocalEngine, Table, keys};
use integration_tests::*;
use referral_proto::ack::sign_ack;
use referral_proto::audit::{EventKind, decode_entry, encode_entry};
use referral_proto::ids::AgencyId;
use referral_proto::merkle::{Frontier, leaf_hash};
use referral_proto::notice::example_notice;
use referral_proto::pb;
use referral_proto::pb::audit_entry::Event;

/// Sends `n` referrals police -> social services, acknowledges every other
/// one, and provokes one rejection.
pub(crate) async fn traffic(h: &Harness, n: usize) {
    let police = h.client(POLICE_SYSTEM).await;
    let oncall = h.client(SOCIAL_ONCALL).await;
    let mut alerts = oncall.subscribe().await.unwrap();
    for i in 0..n {
        let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
        // Receiving it records a delivery.
        loop {
            if let agency_client::alerts::AlertEvent::Referral(r) = alerts.next().await.unwrap().unwrap()
                && r.message_id == sent.message_id
            {
                break;
            }
        }
        if i % 2 == 0 {
            oncall.ack_digest(sent.message_id, sent.envelope_digest, "jour-1").await.unwrap();
        }
    }
    let mut bad = crate::support::example_envelope(h, POLICE_SYSTEM, SOCIAL).await;
    bad.signature[0] ^= 1;
    crate::support::submit_raw(&police, bad).await.unwrap_err();
    // Unsigned, so counted: logged as a summary when the interval closes.
    broker::refusals::close_interval(h.state()).await;
    h.state().committer.barrier().await;
}

pub(crate) async fn verify(h: &Harness, state: &Path) -> agency_client::auditor::Verification {
    let auditor = h.client(AUDITOR).await;
    auditor.verify_log(state, |_, _| {}).await.unwrap()
}

pub(crate) fn failures(v: &agency_client::auditor::Verification) -> String {
    v.report.failures.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn tree_heads_are_issued_while_entries_arrive_and_served_to_auditors() {
    let h = Harness::start_with(Options {
        tweak: Box::new(|c| c.audit.tree_head_interval = std::time::Duration::from_millis(100)),
        ..Options::default()
    })
    .await;
    let log_key = h.state().directory.current().directory.broker_log_key;
    let mut issued = Vec::new();
    for round in 1..=3 {
        traffic(&h, 1).await;
        let (size, root) = *h.state().hub.tree.borrow();
        // Issued by the broker by itself, without anyone asking.
        let head = loop {
            if let Some(head) = h.state().latest_tree_head.load_full()
                && head.head.tree_size == size
            {
                break head;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(head.head.root_hash, root, "round {round}");
        head.verify(&log_key).expect("signed by the log key the directory publishes");
        // Persisted (broker status reads it from the store).
        let stored = h.state().store.get(Table::Meta, keys::meta::TREE_HEAD).unwrap().unwrap();
        assert_eq!(<pb::SignedTreeHead as prost::Message>::decode(stored.as_slice()).unwrap(), head.to_pb());
        // And that same head is what an auditor is given while it is current.
        let auditor = h.client(AUDITOR).await;
        let served = auditor.auditor_rpc().get_tree_head(pb::GetTreeHeadRequest {}).await.unwrap().into_inner();
        assert_eq!(served, head.to_pb(), "round {round}");
        issued.push(head.head.tree_size);
    }
    assert!(issued.windows(2).all(|w| w[0] < w[1]), "a new head for each growth: {issued:?}");
}

#[tokio::test]
async fn a_real_log_verifies_grows_consistently_and_proves_entries() {
    let h = Harness::start().await;
    traffic(&h, 4).await;
    let state = h.dir().join("audit-state.json");
    let v = verify(&h, &state).await;
    assert!(v.ok, "{}", failures(&v));
    let c = |k| v.report.counts.get(&k).copied().unwrap_or(0);
    assert_eq!((c(EventKind::Submitted), c(EventKind::Acknowledged), c(EventKind::Rejected)), (4, 2, 0));
    assert_eq!(c(EventKind::RejectionSummary), 1);
    assert_eq!(v.report.pairs, [(POLICE.to_owned(), SOCIAL.to_owned(), 4)]);
    assert_eq!(v.report.rejections.get("bad_signature"), Some(&1));
    let first_size = v.report.tree_size;

    // More traffic the other way; the next run proves the log only grew.
    let social = h.client(SOCIAL_SYSTEM).await;
    let sent = social.send(&AgencyId::new(POLICE).unwrap(), &example_notice()).await.unwrap();
    let v2 = verify(&h, &state).await;
    assert!(v2.ok, "{}", failures(&v2));
    assert_eq!(v2.previous_size, Some(first_size));
    assert!(v2.report.tree_size > first_size);

    // An inclusion proof for one message, checked by the client.
    let auditor: Client = h.client(AUDITOR).await;
    let proven = auditor.prove(sent.message_id).await.unwrap();
    assert_eq!(proven.index, sent.receipt.statement.log_index);
    assert!(matches!(proven.entry.event, Some(Event::Submitted(_))));
}

#[tokio::test]
async fn the_auditor_cli_verifies_replays_and_proves() {
    let mut h = Harness::start().await;
    traffic(&h, 2).await;
    let exe = Path::new(env!("CARGO_BIN_EXE_under-test"));
    let profile = h.profile(AUDITOR).display().to_string();
    let state = h.dir().join("cli-audit-state.json").display().to_string();
    let verify_args = ["--profile", &profile, "audit", "verify", "--state", &state];
    let (code, out, err) = run_tool(exe, "agency-client", &verify_args).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK: every signature") && out.contains("submitted     2"), "{out}");
    let (code, out, _) = run_tool(exe, "agency-client", &["--profile", &profile, "--json", "audit", "replay"]).await;
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["event"], "submitted");
    assert_eq!(lines[0]["index"], 0);
    let id = lines[0]["message_id"].as_str().unwrap().to_owned();
    assert!(!out.contains("Testperson"), "the log holds no content");
    let (code, out, err) =
        run_tool(exe, "agency-client", &["--profile", &profile, "--json", "audit", "prove", &id]).await;
    assert_eq!(code, 0, "{err}");
    let proof: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // The printed proof checks offline with nothing but the proto crate.
    let entry = hex::decode(proof["entry_bytes"].as_str().unwrap()).unwrap();
    let path: Vec<referral_proto::Digest> = proof["audit_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| referral_proto::Digest::from_slice(&hex::decode(h.as_str().unwrap()).unwrap()).unwrap())
        .collect();
    let root = referral_proto::Digest::from_slice(&hex::decode(proof["root"].as_str().unwrap()).unwrap()).unwrap();
    referral_proto::merkle::verify_inclusion(
        &leaf_hash(&entry),
        proof["leaf_index"].as_u64().unwrap(),
        proof["tree_size"].as_u64().unwrap(),
        &path,
        &root,
    )
    .unwrap();
    // Only auditors may do this.
    let police = h.profile(POLICE_SYSTEM).display().to_string();
    let (code, _, err) = run_tool(exe, "agency-client", &["--profile", &police, "audit", "verify"]).await;
    assert_eq!(code, 77);
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    // A log rewritten since the last run: exit code 2, and the report says so.
    h.stop().await;
    rewrite_log(
        &h.config.storage.data_dir,
        |entries| {
            let at = position(entries, EventKind::Delivered, 0);
            entries[at].logged_at_ms += 1;
        },
        true,
    );
    h.restart().await;
    let (code, out, err) = run_tool(exe, "agency-client", &verify_args).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("it was rewritten or forked"), "{out}");
}

/// Rewrites the stopped broker's log the way its operator could: `edit`
/// changes the list of entries; they are then re-indexed and the Merkle
/// tree rebuilt, so the restarted broker serves, and signs, the new log.
fn rewrite_log(data_dir: &Path, edit: impl FnOnce(&mut Vec<pb::AuditEntry>), rebuild_tree: bool) {
    let (_, store) = LocalEngine::open_existing(data_dir).unwrap();
    let old: Vec<(Vec<u8>, Vec<u8>)> = store.range(Table::Audit, &[], &[0xff; 9], usize::MAX).unwrap();
    let mut entries: Vec<pb::AuditEntry> =
        old.iter().enumerate().map(|(i, (_, b))| decode_entry(b, i as u64).unwrap()).collect();
    edit(&mut entries);
    let mut batch = Batch::default();
    for (k, _) in &old {
        batch.delete(Table::Audit, k.clone());
    }
    let mut frontier = Frontier::default();
    if rebuild_tree {
        for (k, _) in store.range(Table::MerkleNodes, &[], &[0xff; 10], usize::MAX).unwrap() {
            batch.delete(Table::MerkleNodes, k);
        }
    }
    for (i, e) in entries.iter_mut().enumerate() {
        e.index = i as u64;
        let bytes = encode_entry(e);
        for n in frontier.append(leaf_hash(&bytes)) {
            if rebuild_tree {
                batch.put(Table::MerkleNodes, keys::merkle(n.level, n.index), n.hash.0.to_vec());
            }
        }
        batch.put(Table::Audit, keys::audit(i as u64), bytes);
    }
    if rebuild_tree {
        batch.put(Table::Meta, keys::meta::AUDIT_SIZE.to_vec(), frontier.size().to_be_bytes().to_vec());
    }
    store.commit(&batch).unwrap();
    // The broker would refuse a store behind its checkpoint; an operator
    // rewriting history removes that too.
    let _ = std::fs::remove_file(broker::checkpoint::path(data_dir));
}

/// A verified log, then `edit` by the operator, then the auditor again.
async fn tamper_and_verify(
    edit: impl FnOnce(&mut Vec<pb::AuditEntry>),
    rebuild_tree: bool,
) -> agency_client::auditor::Verification {
    let mut h = Harness::start().await;
    traffic(&h, 6).await;
    let state = h.dir().join("audit-state.json");
    let before = verify(&h, &state).await;
    assert!(before.ok, "{}", failures(&before));
    h.stop().await;
    rewrite_log(&h.config.storage.data_dir, edit, rebuild_tree);
    h.restart().await;
    verify(&h, &state).await
}

fn position(entries: &[pb::AuditEntry], kind: EventKind, nth: usize) -> usize {
    entries.iter().enumerate().filter(|(_, e)| EventKind::of(e.event.as_ref().unwrap()) == kind).nth(nth).unwrap().0
}

#[tokio::test]
async fn a_changed_byte_is_caught_and_located() {
    let mut at = 0;
    let v = tamper_and_verify(
        |entries| {
            at = position(entries, EventKind::Submitted, 1);
            if let Some(Event::Submitted(s)) = &mut entries[at].event {
                s.signature[3] ^= 0x10;
            }
        },
        true,
    )
    .await;
    assert!(!v.ok);
    let all = failures(&v);
    assert!(all.contains(&format!("entry {at}: message")) && all.contains("signature does not verify"), "{all}");
    assert!(all.contains(&format!("the first changed block is entries 0..={}", v.report.tree_size - 1)), "{all}");
}

#[tokio::test]
async fn a_changed_unsigned_byte_is_caught_by_the_previous_tree_head() {
    let v = tamper_and_verify(
        |entries| {
            let at = position(entries, EventKind::Delivered, 0);
            entries[at].logged_at_ms += 1;
        },
        true,
    )
    .await;
    assert!(!v.ok);
    let all = failures(&v);
    assert!(all.contains("cannot prove that its log") && all.contains("rewritten or forked"), "{all}");
    assert!(all.contains(&format!("the first changed block is entries 0..={}", v.report.tree_size - 1)), "{all}");
}

#[tokio::test]
async fn a_deleted_entry_is_caught_and_located() {
    let (mut at, mut id) = (0, None);
    let v = tamper_and_verify(
        |entries| {
            at = position(entries, EventKind::Submitted, 2);
            if let Some(Event::Submitted(s)) = &entries[at].event {
                id = Some(referral_proto::ids::MessageId::from_bytes(&s.header.as_ref().unwrap().message_id).unwrap());
            }
            entries.remove(at);
        },
        true,
    )
    .await;
    assert!(!v.ok);
    let all = failures(&v);
    // Where: the entry now at its place is that message's delivery.
    let id = id.unwrap();
    assert!(all.contains(&format!("entry {at}: delivery of message {id}, which was never submitted")), "{all}");
    let n = v.report.tree_size;
    assert!(all.contains(&format!("the log shrank: {} entries were verified", n + 1)), "{all}");
    assert!(all.contains(&format!("the broker now signs {n}")), "{all}");
}

#[tokio::test]
async fn reordered_entries_are_caught_and_located() {
    let mut at = 0;
    let v = tamper_and_verify(
        |entries| {
            let s = position(entries, EventKind::Submitted, 3);
            let d = entries
                .iter()
                .position(|e| matches!(e.event, Some(Event::Delivered(_))) && e.index > s as u64)
                .unwrap();
            entries.swap(s, d);
            at = s;
        },
        true,
    )
    .await;
    assert!(!v.ok);
    let all = failures(&v);
    assert!(all.contains(&format!("entry {at}: delivery of message")) && all.contains("never submitted"), "{all}");
}

#[tokio::test]
async fn a_truncated_and_regrown_log_is_caught() {
    let mut h = Harness::start().await;
    traffic(&h, 6).await;
    let state = h.dir().join("audit-state.json");
    let before = verify(&h, &state).await;
    assert!(before.ok);
    h.stop().await;
    // Drop the second half, then let the log grow past its old size again.
    rewrite_log(&h.config.storage.data_dir, |e| e.truncate(e.len() / 2), true);
    h.restart().await;
    traffic(&h, 6).await;
    let after = verify(&h, &state).await;
    assert!(after.report.tree_size > before.report.tree_size, "regrown past the verified size");
    assert!(!after.ok);
    let all = failures(&after);
    assert!(all.contains("rewritten or forked"), "{all}");
    assert!(
        all.contains(&format!("the first {} entries are no longer those verified", before.report.tree_size)),
        "{all}"
    );
}

#[tokio::test]
async fn entries_changed_without_fixing_the_tree_fail_the_root() {
    let v = tamper_and_verify(
        |entries| {
            let at = position(entries, EventKind::Delivered, 1);
            entries[at].logged_at_ms -= 1;
        },
        false,
    )
    .await;
    assert!(!v.ok);
    assert!(failures(&v).contains("is not the root"), "{}", failures(&v));
}

/// The attack, as an operator could write it into the log: an ack
/// signed by a key retired long ago, dated inside its validity, and an ack
/// with the current key dated before the message existed. The auditor
/// judges keys at each entry's logged time and acks against their
/// submission, so both are caught and located.
#[tokio::test]
async fn the_auditor_flags_acks_by_retired_keys_and_acks_before_their_submission() {
    const DAY: i64 = 86_400_000;
    let mut h = Harness::start().await;
    let social = AgencyId::new(SOCIAL).unwrap();
    let police = h.client(POLICE_SYSTEM).await;
    let first = police.send(&social, &example_notice()).await.unwrap();
    let second = police.send(&social, &example_notice()).await.unwrap();
    let now = certs::now();
    let path = h.dir().join("retired.key");
    let (retired, files) =
        certs::keygen::generate(&social, &path, now.plus_millis(-400 * DAY), now.plus_millis(-300 * DAY), false)
            .unwrap();
    let mut fed = h.federation();
    fed.add_agency_key(&certs::keygen::read_public(&files.public).unwrap()).unwrap();
    fed.publish_directory(now).unwrap();
    h.reload();
    let current = &crate::support::profile(&h, SOCIAL_ONCALL).bundles[0];
    let by_retired = sign_ack(first.message_id, first.envelope_digest, now.plus_millis(-350 * DAY), "x", &retired);
    let too_early = sign_ack(
        second.message_id,
        second.envelope_digest,
        second.receipt.statement.at.plus_millis(-1000),
        "jour-1",
        current,
    );
    h.stop().await;
    let mut appended = Vec::new();
    rewrite_log(
        &h.config.storage.data_dir,
        |entries| {
            for (ack, sent) in [(by_retired.unwrap(), &first), (too_early.unwrap(), &second)] {
                appended.push(entries.len() as u64);
                entries.push(pb::AuditEntry {
                    format_version: referral_proto::audit::AUDIT_ENTRY_FORMAT_VERSION,
                    index: 0,
                    logged_at_ms: certs::now().0,
                    event: Some(Event::Acknowledged(pb::Acknowledged {
                        ack: Some(pb::SignedAck::from(&ack)),
                        recipient_sequence: sent.receipt.statement.recipient_sequence,
                        recipient: SOCIAL.into(),
                        principal: "spiffe://igor.example.se/agency/huddinge-socialtjanst/oncall/socialjour".into(),
                    })),
                });
            }
        },
        true,
    );
    h.restart().await;
    let v = verify(&h, &h.dir().join("audit-state.json")).await;
    assert!(!v.ok);
    let found: Vec<(Option<u64>, String)> = v.report.failures.iter().map(|f| (f.index, f.message.clone())).collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].0, Some(appended[0]));
    assert!(found[0].1.contains(&format!("acknowledgement of message {}", first.message_id)), "{found:?}");
    assert!(found[0].1.contains("is not valid at"), "{found:?}");
    assert_eq!(found[1].0, Some(appended[1]));
    assert!(found[1].1.contains("before the broker accepted it"), "{found:?}");
}

#[tokio::test]
async fn ranges_beyond_the_log_are_refused_with_their_reason() {
    let h = Harness::start().await;
    traffic(&h, 2).await;
    let auditor = h.client(AUDITOR).await;
    let mut rpc = auditor.auditor_rpc();
    let size = rpc.get_tree_head(pb::GetTreeHeadRequest {}).await.unwrap().into_inner().tree_size;
    assert!(size > 0);
    let s = assert_refused(
        rpc.replay(pb::ReplayRequest { from: 0, to: size + 1 }).await,
        tonic::Code::OutOfRange,
        "out_of_range",
    );
    assert_eq!(s.message(), format!("replay range [0, {}) is not within the log of {size} entries", size + 1));
    let s = assert_refused(
        rpc.inclusion_proof(pb::InclusionProofRequest {
            target: Some(pb::inclusion_proof_request::Target::Index(size)),
            tree_size: size,
        })
        .await,
        tonic::Code::OutOfRange,
        "out_of_range",
    );
    assert_eq!(s.message(), format!("entry {size} is not in a tree of {size} entries (the log has {size})"));
    let s = assert_refused(
        rpc.consistency_proof(pb::ConsistencyProofRequest { first: 2, second: 1 }).await,
        tonic::Code::OutOfRange,
        "out_of_range",
    );
    assert_eq!(s.message(), format!("consistency from 2 to 1 is not within the log of {size} entries"));
}
