//! The blind overlap check through the real broker (PROTOCOL.md 13.8):
//! each side learns exactly its own matches, the broker keeps nothing an
//! identifier could be recomputed from, and every rule it enforces refuses
//! with its exact status.

use std::time::Duration;

use agency_client::overlap::{LegalBasis, OverlapResult, OverlapRun};
use agency_client::{Client, ClientError};
use integration_tests::*;
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::notice::LegalBasisKind;
use referral_proto::overlap::{Kind, SignedStatement, Statement, Step};
use referral_proto::pb;
use referral_proto::psi::{PersonalIdentityNumber, hash_to_ristretto255, session_dst};
use tonic::Code;

use crate::support::{contains, files};

const WAIT: Duration = Duration::from_secs(60);

/// A valid 12-digit personal identity number born in 1980 + `n / 900`,
/// serial from `n`: Luhn check digit computed here.
fn number(n: u32) -> String {
    let yy = 80 + (n / 900) % 20;
    let serial = 100 + n % 900;
    let nine = format!("{yy:02}0101{serial:03}");
    let sum: u32 = nine
        .bytes()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0') * if i % 2 == 0 { 2 } else { 1 };
            d / 10 + d % 10
        })
        .sum();
    format!("19{nine}{}", (10 - sum % 10) % 10)
}

fn pins(ns: impl IntoIterator<Item = u32>) -> Vec<PersonalIdentityNumber> {
    ns.into_iter().map(|n| PersonalIdentityNumber::parse(&number(n), certs::now()).unwrap()).collect()
}

fn basis() -> LegalBasis {
    LegalBasis { kind: LegalBasisKind::Osl10_18c, citation: "OSL 10 kap. 18 c §".into() }
}

fn social_id() -> AgencyId {
    AgencyId::new(SOCIAL).unwrap()
}

fn police_id() -> AgencyId {
    AgencyId::new(POLICE).unwrap()
}

/// Proposes from the police to social services, accepts, and runs both sides at once.
async fn run_pair(
    police: &Client,
    social_client: &Client,
    police_subjects: &[PersonalIdentityNumber],
    social_subjects: &[PersonalIdentityNumber],
) -> (OverlapResult, OverlapResult) {
    let (a, b) = start_pair(police, social_client, police_subjects, social_subjects).await;
    let (ra, rb) = tokio::join!(a.run(police, WAIT), b.run(social_client, WAIT));
    (ra.unwrap(), rb.unwrap())
}

async fn start_pair(
    police: &Client,
    social_client: &Client,
    police_subjects: &[PersonalIdentityNumber],
    social_subjects: &[PersonalIdentityNumber],
) -> (OverlapRun, OverlapRun) {
    let a = police.overlap_propose(&social_id(), police_subjects, &basis()).await.unwrap();
    let b = social_client.overlap_accept(a.session(), social_subjects, &basis()).await.unwrap();
    (a, b)
}

fn numbers(v: &[PersonalIdentityNumber]) -> Vec<String> {
    let mut out: Vec<String> = v.iter().map(|p| p.as_str().to_owned()).collect();
    out.sort();
    out
}

async fn verify_log(h: &Harness) -> agency_client::auditor::Verification {
    let auditor = h.client(AUDITOR).await;
    let state = h.dir().join("auditor-state.json");
    let v = auditor.verify_log(&state, |_, _| {}).await.unwrap();
    let failures: Vec<String> = v.report.failures.iter().map(|f| f.to_string()).collect();
    assert!(failures.is_empty(), "{failures:?}");
    v
}

#[tokio::test]
async fn each_side_learns_exactly_its_own_matches_and_the_log_shows_the_session() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let social_client = h.client(SOCIAL_SYSTEM).await;
    // Two shared subjects; social services writes one of them in ten-digit form.
    let police_subjects = pins([1, 2, 3, 4, 5]);
    let mut social_subjects = pins([4, 5, 6]);
    let ten_digit = PersonalIdentityNumber::parse(&number(4)[2..], certs::now()).unwrap();
    social_subjects[0] = ten_digit;
    let (rp, rs) = run_pair(&police, &social_client, &police_subjects, &social_subjects).await;
    assert_eq!(rp.matches, numbers(&pins([4, 5])));
    assert_eq!(rs.matches, numbers(&pins([4, 5])));
    assert_eq!((rp.own_size, rp.peer_size, rs.own_size, rs.peer_size), (8, 4, 4, 8));
    assert_eq!((rp.own_subjects, rs.own_subjects), (5, 3));
    assert_eq!(rp.transcript, rs.transcript);
    // Kept for `overlap result`, readable by the profile's owner only.
    let session: MessageId = rp.session.parse().unwrap();
    assert_eq!(police.overlap_result(session).unwrap(), rp);
    let sessions = social_client.overlap_sessions().await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].state, pb::OverlapState::Finished as i32);
    // The auditor verifies every signature and sees sizes, legal bases and the transcript.
    let v = verify_log(&h).await;
    let o = &v.report.overlaps[0];
    assert_eq!((o.initiator.as_str(), o.responder.as_str()), (POLICE, SOCIAL));
    assert_eq!((o.initiator_size, o.responder_size), (8, 4));
    assert_eq!(o.initiator_legal_basis, "osl_10_18c: OSL 10 kap. 18 c §");
    assert_eq!(o.initiator_transcript.as_deref(), Some(rp.transcript.as_str()));
    assert!(o.completed());
    assert_eq!(o.chunks, 4, "a set and an answer each way");
}

#[tokio::test]
async fn empty_full_and_one_sided_overlaps() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let social_client = h.client(SOCIAL_SYSTEM).await;
    // Empty intersection.
    let (rp, rs) = run_pair(&police, &social_client, &pins([1, 2, 3]), &pins([10, 11, 12, 13, 14])).await;
    assert!(rp.matches.is_empty() && rs.matches.is_empty());
    // Full overlap, duplicates counted once.
    let (rp, rs) = run_pair(&police, &social_client, &pins([20, 21, 22, 23, 23]), &pins([23, 22, 21, 20])).await;
    assert_eq!(rp.matches, numbers(&pins([20, 21, 22, 23])));
    assert_eq!(rs.matches, rp.matches);
    assert_eq!((rp.own_size, rs.own_size), (4, 4));
    // One side padded from 1 to 1, the other from 9 to 16 (a padding-only
    // side pads to 1): matches are still exact, and padding matches nothing.
    let (rp, rs) = run_pair(&police, &social_client, &pins([30]), &pins(30..39)).await;
    assert_eq!((rp.own_size, rp.peer_size), (1, 16));
    assert_eq!(rp.matches, numbers(&pins([30])));
    assert_eq!(rs.matches, numbers(&pins([30])));
    // A side with no subjects at all still takes part (one padding element).
    let (rp, rs) = run_pair(&police, &social_client, &[], &pins([40, 41])).await;
    assert!(rp.matches.is_empty() && rs.matches.is_empty());
    assert_eq!(rp.own_size, 1);
    verify_log(&h).await;
}

#[tokio::test]
async fn the_broker_keeps_nothing_an_identifier_could_be_recomputed_from() {
    let mut h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let social_client = h.client(SOCIAL_SYSTEM).await;
    let police_subjects = pins([1, 2, 3, 4]);
    let social_subjects = pins([3, 4, 5]);
    let (a, b) = start_pair(&police, &social_client, &police_subjects, &social_subjects).await;
    let session = a.session();
    // What an observer could test guesses against: the hashes of every
    // input under this session's tag, each side's blinded elements, and the
    // numbers themselves in every form.
    let dst = session_dst(&session);
    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for p in police_subjects.iter().chain(&social_subjects) {
        let hashed = hash_to_ristretto255(p.as_str().as_bytes(), dst.as_bytes()).unwrap();
        needles.push(("hash_to_ristretto255 output".into(), hashed.compress().as_bytes().to_vec()));
        needles.push(("personal identity number".into(), p.as_str().as_bytes().to_vec()));
        needles.push(("ten-digit number".into(), p.as_str().as_bytes()[2..].to_vec()));
        needles.push(("hyphenated number".into(), format!("{}-{}", &p.as_str()[2..8], &p.as_str()[8..]).into_bytes()));
    }
    for run in [&a, &b] {
        for element in run.blinded_set().as_bytes().chunks(32) {
            needles.push(("blinded element".into(), element.to_vec()));
        }
    }
    let (ra, rb) = tokio::join!(a.run(&police, WAIT), b.run(&social_client, WAIT));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.matches, numbers(&pins([3, 4])));
    assert_eq!(rb.matches, ra.matches, "each side's result is exactly its matches");
    // The audit log as an auditor replays it.
    let auditor = h.client(AUDITOR).await;
    let entries: Vec<Vec<u8>> = {
        let mut s = auditor.auditor_rpc().replay(pb::ReplayRequest { from: 0, to: 0 }).await.unwrap().into_inner();
        let mut v = Vec::new();
        while let Some(e) = s.message().await.unwrap() {
            v.push(e.entry);
        }
        v
    };
    assert!(entries.len() >= 6, "proposal, acceptance, 4 chunks, 2 finishes");
    // Everything on disk, after a clean stop (all flushed).
    h.stop().await;
    let mut haystacks: Vec<_> =
        files(&h.config.storage.data_dir).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    haystacks.extend(entries.into_iter().map(|e| (std::path::PathBuf::from("audit entry"), e)));
    assert!(haystacks.iter().map(|(_, b)| b.len()).sum::<usize>() > 10_000, "the store was read");
    for (what, needle) in &needles {
        for (path, bytes) in &haystacks {
            assert!(!contains(bytes, needle), "{} holds a {what}", path.display());
        }
    }
}

/// Signs `statement` with `client`'s current bundle, for requests the library would not send.
fn signed(
    client: &Client,
    statement: impl FnOnce(&referral_proto::keys::AgencyKeyBundle) -> Statement,
) -> pb::SignedOverlapStatement {
    let bundles = client.bundles();
    let b = &bundles[0];
    pb::SignedOverlapStatement::from(&statement(b).sign(b))
}

fn proposal(b: &referral_proto::keys::AgencyKeyBundle, to: &str, size: u32) -> Statement {
    Statement {
        step: Step::Propose,
        session: MessageId::generate(certs::now().0),
        initiator: b.agency().clone(),
        responder: AgencyId::new(to).unwrap(),
        signer: b.agency().clone(),
        signer_key_id: b.key_id(),
        signed_at: certs::now(),
        set_size: size,
        legal_basis: Some(LegalBasisKind::Osl10_18c),
        legal_citation: "OSL 10 kap. 18 c §".into(),
        transcript_hash: None,
    }
}

fn status(e: ClientError) -> tonic::Status {
    match e {
        ClientError::Rpc(s) => s,
        other => panic!("expected a refusal by the broker, got {other}"),
    }
}

#[tokio::test]
async fn over_the_daily_limit_of_a_pair_is_refused() {
    let h = Harness::start_with(Options {
        tweak: Box::new(|c| c.overlap.sessions_per_pair_per_day = 2),
        ..Options::default()
    })
    .await;
    let police = h.client(POLICE_SYSTEM).await;
    let social_client = h.client(SOCIAL_SYSTEM).await;
    police.overlap_propose(&social_id(), &pins([1]), &basis()).await.unwrap();
    social_client.overlap_propose(&police_id(), &pins([1]), &basis()).await.unwrap();
    // The pair's third session today, whichever side proposes.
    for (client, to) in [(&police, social_id()), (&social_client, police_id())] {
        let s = status(client.overlap_propose(&to, &pins([1]), &basis()).await.unwrap_err());
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert_eq!(reason(&s).as_deref(), Some("overlap_daily_limit"));
        assert!(s.message().contains("daily limit"), "{}", s.message());
    }
    // Made visible: the refused proposals are in the log one by one.
    let v = verify_log(&h).await;
    assert_eq!(v.report.rejections.get("overlap_daily_limit"), Some(&2));
    assert_eq!(v.report.overlaps.len(), 2);
}

#[tokio::test]
async fn over_the_size_cap_is_refused_for_either_side() {
    let h =
        Harness::start_with(Options { tweak: Box::new(|c| c.overlap.max_set_size = 8), ..Options::default() }).await;
    let police = h.client(POLICE_SYSTEM).await;
    let social_client = h.client(SOCIAL_SYSTEM).await;
    let s = status(police.overlap_propose(&social_id(), &pins(0..9), &basis()).await.unwrap_err());
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert_eq!(reason(&s).as_deref(), Some("overlap_set_too_large"));
    assert_eq!(s.message(), "an overlap set of 16 (padded) elements is over the broker's cap of 8");
    let a = police.overlap_propose(&social_id(), &pins(0..8), &basis()).await.unwrap();
    let s = status(social_client.overlap_accept(a.session(), &pins(0..9), &basis()).await.unwrap_err());
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert_eq!(reason(&s).as_deref(), Some("overlap_set_too_large"));
}

#[tokio::test]
async fn an_unknown_agency_is_refused() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    // The library stops it first, naming the agencies it knows.
    let e = police.overlap_propose(&AgencyId::new("okand-kommun").unwrap(), &pins([1]), &basis()).await.unwrap_err();
    assert!(matches!(e, ClientError::UnknownAgency { .. }), "{e}");
    // The broker refuses it too.
    let raw = signed(&police, |b| proposal(b, "okand-kommun", 1));
    let s = assert_refused(police.overlap_rpc().propose(raw).await, Code::NotFound, "unknown_recipient");
    assert_eq!(s.message(), "recipient agency okand-kommun is not in the directory");
}

#[tokio::test]
async fn an_agency_without_the_role_is_refused() {
    let h = Harness::start().await;
    let oncall = h.client(SOCIAL_ONCALL).await;
    let s = status(oncall.overlap_propose(&police_id(), &pins([1]), &basis()).await.unwrap_err());
    assert_eq!(s.code(), Code::PermissionDenied);
    assert_eq!(reason(&s).as_deref(), Some("role_not_allowed"));
    assert_eq!(s.message(), "role oncall may not call Overlap.Propose");
    let auditor = h.client(AUDITOR).await;
    assert_refused(
        auditor.overlap_rpc().sessions(pb::OverlapSessionsRequest {}).await,
        Code::PermissionDenied,
        "role_not_allowed",
    );
    // Police to police is not a pair the routing policy allows.
    let police = h.client(POLICE_SYSTEM).await;
    let raw = signed(&police, |b| proposal(b, POLICE, 1));
    let s = police.overlap_rpc().propose(raw).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "a self-session is malformed: {s:?}");
    assert_eq!(reason(&s).as_deref(), Some("malformed_overlap"));
}

#[tokio::test]
async fn nothing_blinded_is_relayed_before_both_sides_accept() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let social_client = h.client(SOCIAL_SYSTEM).await;
    let a = police.overlap_propose(&social_id(), &pins([1, 2]), &basis()).await.unwrap();
    let bytes = a.blinded_set().as_bytes().to_vec();
    let s = status(police.overlap_send(a.session(), Kind::Set, &social_id(), &bytes).await.unwrap_err());
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert_eq!(reason(&s).as_deref(), Some("overlap_not_accepted"));
    assert_eq!(
        s.message(),
        format!(
            "overlap session {} has not been accepted by both sides; nothing blinded is relayed before that",
            a.session()
        )
    );
    // Nor may an answer come before the peer's whole set.
    let b = social_client.overlap_accept(a.session(), &pins([2]), &basis()).await.unwrap();
    let answer = vec![7u8; 32 + 2 * 32];
    let s = status(social_client.overlap_send(b.session(), Kind::Answer, &police_id(), &answer).await.unwrap_err());
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert_eq!(reason(&s).as_deref(), Some("overlap_out_of_order"));
    // A chunk whose size contradicts the signed sizes.
    let s = status(police.overlap_send(a.session(), Kind::Set, &social_id(), &bytes[..32]).await.unwrap_err());
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(reason(&s).as_deref(), Some("overlap_chunk_mismatch"));
    // An agency outside the session cannot read it.
    let s = assert_refused(
        h.client(POLICE_ONCALL)
            .await
            .overlap_rpc()
            .receive(pb::OverlapReceiveRequest { session_id: a.session().as_bytes().to_vec(), kind: 1, from_index: 0 })
            .await,
        Code::PermissionDenied,
        "role_not_allowed",
    );
    assert!(s.message().contains("Overlap.Receive"));
}

#[tokio::test]
async fn a_malformed_point_from_the_peer_is_refused_by_the_receiving_side() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let social_client = h.client(SOCIAL_SYSTEM).await;
    let a = police.overlap_propose(&social_id(), &pins([1, 2]), &basis()).await.unwrap();
    let b = social_client.overlap_accept(a.session(), &pins([2, 3]), &basis()).await.unwrap();
    // A dishonest responder sends, sealed and signed, a set whose second
    // element is not a canonical ristretto255 encoding. The broker cannot
    // see it; the initiator's client refuses it.
    let mut bad = b.blinded_set().as_bytes().to_vec();
    bad[32..64].copy_from_slice(&[0xff; 32]);
    social_client.overlap_send(b.session(), Kind::Set, &police_id(), &bad).await.unwrap();
    let e = a.run(&police, WAIT).await.unwrap_err();
    assert!(matches!(e, ClientError::Overlap { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "overlap session {}: {SOCIAL}'s blinded set is malformed: element 1 is not a canonical ristretto255 encoding",
            b.session()
        )
    );
}

#[tokio::test]
async fn a_session_survives_a_broker_restart() {
    let mut h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let a = police.overlap_propose(&social_id(), &pins([1, 2, 3]), &basis()).await.unwrap();
    h.restart().await;
    let police = h.client(POLICE_SYSTEM).await;
    let social_client = h.client(SOCIAL_SYSTEM).await;
    let sessions = social_client.overlap_sessions().await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].state, pb::OverlapState::Proposed as i32);
    let b = social_client.overlap_accept(a.session(), &pins([3, 4]), &basis()).await.unwrap();
    let (ra, rb) = tokio::join!(a.run(&police, WAIT), b.run(&social_client, WAIT));
    assert_eq!(ra.unwrap().matches, numbers(&pins([3])));
    assert_eq!(rb.unwrap().matches, numbers(&pins([3])));
}

/// A statement's signature binds the legal basis: a broker (or anyone)
/// that changed it would be caught.
#[tokio::test]
async fn a_forged_statement_is_refused() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let mut raw = signed(&police, |b| proposal(b, SOCIAL, 1));
    raw.statement.as_mut().unwrap().legal_citation = "something else".into();
    assert_refused(police.overlap_rpc().propose(raw).await, Code::InvalidArgument, "overlap_bad_signature");
    let ok = signed(&police, |b| proposal(b, SOCIAL, 1));
    let parsed = SignedStatement::try_from(ok.clone()).unwrap();
    police.overlap_rpc().propose(ok.clone()).await.unwrap();
    // The same proposal again is answered as the first time; another one under the same id is not.
    police.overlap_rpc().propose(ok).await.unwrap();
    let other = signed(&police, |_| Statement { set_size: 2, ..parsed.statement.clone() });
    assert_refused(police.overlap_rpc().propose(other).await, Code::AlreadyExists, "overlap_exists");
}

#[tokio::test]
async fn large_sets_travel_in_chunks() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let social_client = h.client(SOCIAL_SYSTEM).await;
    // 2,100 subjects pad to 4,096 elements: a set of 2 chunks, and the
    // peer's answer to it (its digest first) of 3.
    let (rp, rs) = run_pair(&police, &social_client, &pins(0..2100), &pins(2050..2150)).await;
    assert_eq!((rp.own_size, rp.peer_size), (4096, 128));
    assert_eq!(rp.matches, numbers(&pins(2050..2100)));
    assert_eq!(rs.matches, rp.matches);
    let v = verify_log(&h).await;
    assert_eq!(v.report.overlaps[0].chunks, 2 + 1 + 1 + 3);
}

#[tokio::test]
async fn the_command_line_starts_accepts_lists_and_shows_results() {
    use tokio::io::AsyncBufReadExt as _;
    let h = Harness::start().await;
    let exe = crate::support::exe();
    let police_file = h.dir().join("police-subjects.txt");
    let social_file = h.dir().join("social-subjects.txt");
    std::fs::write(&police_file, format!("# police\n{}\n{}\n\n{}\n", number(1), number(2), number(3))).unwrap();
    std::fs::write(&social_file, format!("{}\n{}\n", &number(3)[2..], number(9))).unwrap();
    let police_profile = h.profile(POLICE_SYSTEM);
    let social_profile = h.profile(SOCIAL_SYSTEM);
    let input = |file: &std::path::Path| {
        vec![
            "--subjects".to_owned(),
            file.display().to_string(),
            "--legal-basis".into(),
            "osl_10_18c".into(),
            "--citation".into(),
            "OSL 10 kap. 18 c §".into(),
            "--timeout".into(),
            "60".into(),
        ]
    };
    let mut start = tokio::process::Command::new(exe)
        .arg("agency-client")
        .args(["--profile", police_profile.to_str().unwrap(), "--json", "overlap", "start", "--with", SOCIAL])
        .args(input(&police_file))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(start.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(first["event"], "proposed");
    let session = first["session"].as_str().unwrap().to_owned();
    // Social services sees the proposal, with the police's size and legal basis.
    let social = |args: Vec<String>| {
        let mut all = vec!["--profile".to_owned(), social_profile.display().to_string(), "--json".into()];
        all.extend(args);
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            run_tool(exe, "agency-client", &refs).await
        }
    };
    let (code, out, err) = social(vec!["overlap".into(), "list".into()]).await;
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(listed["session"], session.as_str());
    assert_eq!(listed["state"], "proposed");
    assert_eq!(listed["proposal"]["set_size"], 4);
    assert_eq!(listed["proposal"]["legal_basis"], "osl_10_18c");
    let mut args = vec!["overlap".to_owned(), "accept".into(), session.clone()];
    args.extend(input(&social_file));
    let (code, out, err) = social(args).await;
    assert_eq!(code, 0, "{err}");
    let accepted: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(accepted["matches"], json_list(&[&number(3)]));
    let police_result: serde_json::Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert!(start.wait().await.unwrap().success());
    assert_eq!(police_result["matches"], json_list(&[&number(3)]));
    assert_eq!(police_result["transcript"], accepted["transcript"]);
    // The result again, and as a referral template pre-filled with the subject.
    let (code, out, _) = social(vec!["overlap".into(), "result".into(), session.clone()]).await;
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(out.trim()).unwrap(), accepted);
    let (code, out, _) =
        social(vec!["overlap".into(), "result".into(), session.clone(), "--referral-template".into()]).await;
    assert_eq!(code, 0);
    let t: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(t["to"], POLICE);
    assert_eq!(t["referral"]["subject"]["personal_identity_number"], number(3));
    // Bad input: a number that is not one names its line, never its content.
    std::fs::write(&social_file, "198001011234\n").unwrap();
    let mut args = vec!["overlap".to_owned(), "accept".into(), session.clone()];
    args.extend(input(&social_file));
    let (code, _, err) = social(args).await;
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("subjects line 1: the check digit is wrong"), "{err}");
    assert!(!err.contains("198001011234"), "{err}");
    let (code, _, err) = social(vec!["overlap".into(), "result".into(), MessageId::generate(1).to_string()]).await;
    assert_ne!(code, 0);
    assert!(err.contains("no result of session"), "{err}");
    // The auditor's report and replay show the session: sizes and legal bases, no subject.
    let auditor = h.profile(AUDITOR);
    let state = h.dir().join("auditor.state");
    let (a, s) = (auditor.to_str().unwrap(), state.to_str().unwrap());
    let (code, out, err) =
        run_tool(exe, "agency-client", &["--profile", a, "--json", "audit", "report", "--state", s]).await;
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let o = &report["overlaps"][0];
    assert_eq!(
        (o["session"].as_str(), o["initiator_size"].as_u64(), o["responder_size"].as_u64()),
        (Some(session.as_str()), Some(4), Some(2))
    );
    assert_eq!(o["responder_legal_basis"], "osl_10_18c: OSL 10 kap. 18 c §");
    // CSV: the referral table (none here), a blank line, then the sessions with their own header.
    let (code, out, err) =
        run_tool(exe, "agency-client", &["--profile", a, "audit", "report", "--csv", "--state", s]).await;
    assert_eq!(code, 0, "{err}");
    let basis = |side: &str| o[format!("{side}_legal_basis")].as_str().unwrap().to_owned();
    assert_eq!(
        out,
        format!(
            "month,agency,direction,referrals,delivered,acknowledged,escalated,expired,ack_median_seconds,ack_p90_seconds\n\
             \n\
             proposed_at,session,initiator,initiator_size,initiator_legal_basis,responder,responder_size,\
             responder_legal_basis,accepted_at,chunks,sealed_bytes,status\n\
             {},{session},{POLICE},4,{},{SOCIAL},2,{},{},{},{},completed\n",
            o["proposed_at"].as_str().unwrap(),
            basis("initiator"),
            basis("responder"),
            o["accepted_at"].as_str().unwrap(),
            o["chunks"],
            o["sealed_bytes"],
        )
    );
    assert!(o["chunks"].as_u64().unwrap() > 0 && o["sealed_bytes"].as_u64().unwrap() > 0);
    let (code, out, _) = run_tool(exe, "agency-client", &["--profile", a, "audit", "report", "--state", s]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("{session} {POLICE} (4, osl_10_18c: OSL 10 kap. 18 c §) <-> {SOCIAL} (2, ")),
        "{out}"
    );
    assert!(out.contains(": completed"), "{out}");
    let (code, out, _) = run_tool(exe, "agency-client", &["--profile", a, "audit", "replay"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("overlap_relayed") && out.contains("overlap_finished"), "{out}");
    for n in [1, 2, 3, 9] {
        assert!(!out.contains(&number(n)[2..]), "no subject in the replay");
    }
}

fn json_list(v: &[&str]) -> serde_json::Value {
    serde_json::Value::Array(v.iter().map(|s| serde_json::Value::String((*s).to_owned())).collect())
}

/// The session timeout: a session left unfinished expires on the broker's
/// clock; its sealed chunks are deleted, the log records it, every further
/// step is refused with `overlap_expired`, and a finished session is left alone.
#[tokio::test]
async fn an_unfinished_session_expires_its_chunks_are_deleted_and_the_rest_is_refused() {
    let h = Harness::start_with(Options {
        manual_clock: true,
        tweak: Box::new(|c| c.overlap.session_timeout = Duration::from_secs(3600)),
        ..Options::default()
    })
    .await;
    let police = h.client(POLICE_SYSTEM).await;
    let social_client = h.client(SOCIAL_SYSTEM).await;
    let (done, _) = run_pair(&police, &social_client, &pins([1, 2]), &pins([2, 3])).await;
    let (a, b) = start_pair(&police, &social_client, &pins([4, 5]), &pins([5])).await;
    let session = a.session();
    police.overlap_send(session, Kind::Set, &social_id(), a.blinded_set().as_bytes()).await.unwrap();
    let tables = || broker::store::tables::Tables(&*h.state().store);
    assert!(tables().overlap_chunk(&session, 0, Kind::Set.code(), 0).unwrap().is_some(), "the chunk is kept");

    h.advance(Duration::from_secs(3600 + 60));
    let state_of = |sessions: &[pb::OverlapSession], id: MessageId| {
        sessions.iter().find(|s| s.session_id == id.as_bytes()).map(|s| s.state).unwrap()
    };
    let waited = tokio::time::Instant::now();
    while state_of(&social_client.overlap_sessions().await.unwrap(), session) != pb::OverlapState::Expired as i32 {
        assert!(waited.elapsed() < WAIT, "the session did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sessions = social_client.overlap_sessions().await.unwrap();
    let finished: MessageId = done.session.parse().unwrap();
    assert_eq!(state_of(&sessions, finished), pb::OverlapState::Finished as i32, "a finished session stays so");
    assert!(tables().overlap_chunk(&session, 0, Kind::Set.code(), 0).unwrap().is_none(), "the chunk is deleted");

    // The responder's set is refused, with when and why.
    let s = status(b.run(&social_client, WAIT).await.unwrap_err());
    assert_eq!((s.code(), reason(&s).as_deref()), (Code::FailedPrecondition, Some("overlap_expired")));
    assert!(
        s.message().starts_with(&format!("overlap session {session} expired at "))
            && s.message().ends_with(
                "it was not finished within the broker's session timeout, and its sealed chunks are deleted; start a new session"
            ),
        "{}",
        s.message()
    );
    // The initiator's client stops waiting and says why.
    let e = a.run(&police, WAIT).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "overlap session {session}: the broker expired the session: it was not finished within the broker's session timeout; start a new one"
        )
    );
    // A finish is refused too (a signed statement the library would not send).
    let finish = signed(&police, |bundle| Statement {
        step: Step::Finish,
        set_size: 0,
        legal_basis: None,
        legal_citation: String::new(),
        transcript_hash: Some(referral_proto::Digest([9; 32])),
        session,
        ..proposal(bundle, SOCIAL, 1)
    });
    let s = assert_refused(police.overlap_rpc().finish(finish).await, Code::FailedPrecondition, "overlap_expired");
    assert!(s.message().starts_with(&format!("overlap session {session} expired at ")), "{}", s.message());

    // The auditor sees it ended unfinished, once, and the log checks out.
    let v = verify_log(&h).await;
    assert_eq!(v.report.counts.get(&referral_proto::audit::EventKind::OverlapExpired), Some(&1));
    let o = v.report.overlaps.iter().find(|o| o.session == session.to_string()).unwrap();
    assert_eq!((o.status(), o.chunks), ("expired", 1));
    let done = v.report.overlaps.iter().find(|o| o.session == finished.to_string()).unwrap();
    assert_eq!((done.status(), done.expired_at), ("completed", None));
}
