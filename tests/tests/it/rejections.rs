//! Every rule that refuses something, with the exact status it answers.

use certs::pki::LeafSpec;
use integration_tests::*;
use referral_proto::Digest;
use referral_proto::ack::sign_ack;
use referral_proto::directory::AgencyKind;
use referral_proto::ids::{AgencyId, MessageId, Principal, Role, TrustDomain};
use referral_proto::keys::AgencyKeyBundle;
use referral_proto::notice::example_notice;
use referral_proto::pb;
use referral_proto::time::Timestamp;
use tonic::Code;

use crate::support::*;

const DAY: i64 = 86_400_000;

/// Refused with `code` and the stable reason code `reason` (PROTOCOL.md's
/// error table, read from the status details): never message text.
fn assert_status(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, reason: &str) {
    assert_refused(r, code, reason);
}

fn ca_pem(h: &Harness) -> String {
    std::fs::read_to_string(h.dev.federation_dir().join("ca.pem")).unwrap()
}

fn principal(agency: &str, role: Role, name: &str) -> Principal {
    Principal::new(TrustDomain::new(certs::dev::TRUST_DOMAIN).unwrap(), AgencyId::new(agency).unwrap(), role, name)
        .unwrap()
}

fn issued_pair(i: &certs::pki::Issued) -> Option<(&str, &str)> {
    Some((&i.cert_pem, &i.key_pem))
}

#[tokio::test]
async fn no_client_certificate_is_refused_at_the_handshake() {
    let h = Harness::start().await;
    crate::support::refused_at_handshake(&h, None, "CertificateRequired").await;
    assert!(h.state().accept_stats.handshakes_failed.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let h = Harness::start().await;
    let now = certs::now();
    let spec =
        LeafSpec::principal(&principal(POLICE, Role::System, "intruder"), now.plus_millis(-DAY), now.plus_millis(DAY));
    // A CA of the same name (so the issuer is found, and its signature fails)...
    let twin = certs::pki::Ca::generate(certs::dev::TRUST_DOMAIN, now.plus_millis(-DAY), now.plus_millis(DAY)).unwrap();
    crate::support::refused_at_handshake(&h, issued_pair(&twin.issue(&spec).unwrap()), "DecryptError").await;
    // ...and of another name (no issuer found).
    let other = certs::pki::Ca::generate("other.example.org", now.plus_millis(-DAY), now.plus_millis(DAY)).unwrap();
    crate::support::refused_at_handshake(&h, issued_pair(&other.issue(&spec).unwrap()), "UnknownCA").await;
}

#[tokio::test]
async fn a_self_signed_certificate_is_refused() {
    let h = Harness::start().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "arendesystem");
    let uri = principal(POLICE, Role::System, "arendesystem").uri();
    params.subject_alt_names.push(rcgen::SanType::URI(uri.as_str().try_into().unwrap()));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).unwrap();
    crate::support::refused_at_handshake(&h, Some((&cert.pem(), &key.serialize_pem())), "UnknownCA").await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused() {
    let h = Harness::start().await;
    let now = certs::now();
    let mut fed = h.federation();
    let expired = fed
        .issue_principal(&principal(POLICE, Role::System, "old"), now.plus_millis(-10 * DAY), now.plus_millis(-DAY))
        .unwrap();
    let future = fed
        .issue_principal(&principal(POLICE, Role::System, "early"), now.plus_millis(DAY), now.plus_millis(10 * DAY))
        .unwrap();
    // rustls answers both with certificate_expired (RFC 8446 has no "not yet valid" alert).
    for issued in [expired, future] {
        crate::support::refused_at_handshake(&h, issued_pair(&issued), "CertificateExpired").await;
    }
}

#[tokio::test]
async fn revoked_certificate_is_refused_on_new_and_open_connections() {
    let h = Harness::start().await;
    let client = h.client(POLICE_SYSTEM).await;
    client.refresh_directory().await.unwrap();
    let uri = principal(POLICE, Role::System, "arendesystem").uri();
    h.federation().revoke(&uri, certs::now()).unwrap();
    h.reload();
    // The open connection: refused on its next RPC.
    assert_status(client.broker().get_directory(pb::GetDirectoryRequest {}).await, Code::Unauthenticated, "revoked");
    // A new connection: refused at the handshake; others are unaffected.
    let p = profile(&h, POLICE_SYSTEM);
    crate::support::refused_at_handshake(&h, Some((&p.cert_pem, &p.key_pem)), "CertificateRevoked").await;
}

#[tokio::test]
async fn identities_outside_the_federation_are_unauthenticated() {
    let h = Harness::start().await;
    let now = certs::now();
    let fed = h.federation();
    let mut foreign =
        LeafSpec::principal(&principal(POLICE, Role::System, "x"), now.plus_millis(-DAY), now.plus_millis(DAY));
    foreign.uris = vec!["spiffe://other.example.org/agency/polisen-huddinge/system/x".into()];
    let mut no_uri = foreign.clone();
    no_uri.uris = vec![];
    let mut bad_role = foreign.clone();
    bad_role.uris = vec!["spiffe://igor.example.se/agency/polisen-huddinge/admin/x".into()];
    for (spec, reason) in [(foreign, "foreign_trust_domain"), (no_uri, "bad_identity"), (bad_role, "bad_identity")] {
        let issued = fed.ca().issue(&spec).unwrap();
        let mut c = raw_client(h.addr, &ca_pem(&h), Some((&issued.cert_pem, &issued.key_pem))).await.unwrap();
        assert_status(c.get_directory(pb::GetDirectoryRequest {}).await, Code::Unauthenticated, reason);
    }
}

/// The whole role x RPC table of PROTOCOL.md 10.2, over the wire: each
/// call a role may not make is refused with its exact reason; each call it
/// may make gets past authorization (it may still fail on its empty request).
#[tokio::test]
async fn the_role_table_holds_over_the_wire() {
    let h = Harness::start().await;
    let rpcs = [
        "Submit",
        "SubmitStream",
        "Subscribe",
        "Ack",
        "Fetch",
        "GetReceipts",
        "WatchReceipts",
        "GetDirectory",
        "Auditor.GetTreeHead",
        "Auditor.Replay",
        "Auditor.InclusionProof",
        "Auditor.ConsistencyProof",
        "Auditor.GetDirectory",
        "Overlap.Propose",
        "Overlap.Accept",
        "Overlap.Send",
        "Overlap.Receive",
        "Overlap.Finish",
        "Overlap.Sessions",
    ];
    let (t, f) = (true, false);
    let table: [(&str, &str, [bool; 19]); 3] = [
        (POLICE_SYSTEM, "system", [t, t, t, t, t, t, t, t, f, f, f, f, f, t, t, t, t, t, t]),
        (SOCIAL_ONCALL, "oncall", [f, f, t, t, t, f, f, t, f, f, f, f, f, f, f, f, f, f, f]),
        (AUDITOR, "auditor", [f, f, f, f, f, f, f, f, t, t, t, t, t, f, f, f, f, f, f]),
    ];
    for (who, role, allowed) in table {
        let c = h.client(who).await;
        let (mut b, mut a, mut o) = (c.broker(), c.auditor_rpc(), c.overlap_rpc());
        let outcomes: [Result<(), tonic::Status>; 19] = [
            b.submit(pb::SubmitRequest { envelope: None }).await.map(drop),
            b.submit_stream(futures_util::stream::empty::<pb::SubmitStreamRequest>()).await.map(drop),
            b.subscribe(pb::SubscribeRequest {}).await.map(drop),
            b.ack(pb::AckRequest { ack: None }).await.map(drop),
            b.fetch(pb::FetchRequest { message_id: vec![] }).await.map(drop),
            b.get_receipts(pb::GetReceiptsRequest { message_ids: vec![] }).await.map(drop),
            b.watch_receipts(pb::WatchReceiptsRequest { after_cursor: 0 }).await.map(drop),
            b.get_directory(pb::GetDirectoryRequest {}).await.map(drop),
            a.get_tree_head(pb::GetTreeHeadRequest {}).await.map(drop),
            a.replay(pb::ReplayRequest { from: 0, to: 0 }).await.map(drop),
            a.inclusion_proof(pb::InclusionProofRequest::default()).await.map(drop),
            a.consistency_proof(pb::ConsistencyProofRequest { first: 0, second: 0 }).await.map(drop),
            a.get_directory(pb::GetDirectoryRequest {}).await.map(drop),
            o.propose(pb::SignedOverlapStatement::default()).await.map(drop),
            o.accept(pb::SignedOverlapStatement::default()).await.map(drop),
            o.send(pb::OverlapChunk::default()).await.map(drop),
            o.receive(pb::OverlapReceiveRequest::default()).await.map(drop),
            o.finish(pb::SignedOverlapStatement::default()).await.map(drop),
            o.sessions(pb::OverlapSessionsRequest {}).await.map(drop),
        ];
        for ((rpc, outcome), allowed) in rpcs.iter().zip(outcomes).zip(allowed) {
            if allowed {
                if let Err(s) = outcome {
                    assert_ne!(s.code(), Code::PermissionDenied, "{role} may call {rpc}: {s:?}");
                }
            } else {
                let s = assert_refused(outcome, Code::PermissionDenied, "role_not_allowed");
                assert_eq!(s.message(), format!("role {role} may not call {rpc}"));
            }
        }
    }
}

#[tokio::test]
async fn receipts_of_another_agency_are_not_found() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    // The recipient's system may not read the sender's receipts: reported
    // exactly like a message that does not exist.
    let social = h.client(SOCIAL_SYSTEM).await;
    let ids = vec![sent.message_id.as_bytes().to_vec()];
    assert_status(
        social.broker().get_receipts(pb::GetReceiptsRequest { message_ids: ids.clone() }).await,
        Code::NotFound,
        "unknown_message",
    );
    let unknown = MessageId::generate(certs::now().0);
    assert_status(
        social.broker().get_receipts(pb::GetReceiptsRequest { message_ids: vec![unknown.as_bytes().to_vec()] }).await,
        Code::NotFound,
        "unknown_message",
    );
    // The sender can.
    let mine = police.broker().get_receipts(pb::GetReceiptsRequest { message_ids: ids }).await.unwrap().into_inner();
    assert_eq!(mine.messages.len(), 1);
}

#[tokio::test]
async fn a_sender_cannot_send_as_another_agency() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    // A genuine envelope of social services, replayed by the police.
    let theirs = example_envelope(&h, SOCIAL_SYSTEM, POLICE).await;
    assert_status(submit_raw(&police, theirs).await, Code::PermissionDenied, "sender_mismatch");
    // Nothing verified it came from an agency key: counted, not logged alone.
    assert_eq!(summarised(&h).await.get("sender_mismatch"), Some(&1));
    assert!(rejection_reasons(&h).await.is_empty());
}

#[tokio::test]
async fn unknown_recipient_is_not_found() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let dir = police.directory().await.unwrap();
    let ghost_id = AgencyId::new("okand-kommun").unwrap();
    let ghost_keys = AgencyKeyBundle::generate(ghost_id.clone(), Timestamp(0), Timestamp(i64::MAX));
    let mut ghost = dir.agency(&AgencyId::new(SOCIAL).unwrap()).unwrap().clone();
    ghost.id = ghost_id;
    ghost.keys = vec![ghost_keys.public().clone()];
    let p = profile(&h, POLICE_SYSTEM);
    let e = referral_proto::seal::seal(
        &example_notice(),
        &p.bundles[0],
        &ghost,
        MessageId::generate(certs::now().0),
        certs::now(),
    )
    .unwrap();
    assert_status(submit_raw(&police, pb::Envelope::from(&e)).await, Code::NotFound, "unknown_recipient");
    // The client library refuses before sending.
    let err = police.send(&AgencyId::new("okand-kommun").unwrap(), &example_notice()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "agency okand-kommun is not in the directory; it lists huddinge-socialtjanst, polisen-huddinge"
    );
}

#[tokio::test]
async fn same_kind_routes_need_explicit_policy() {
    let h = Harness::start_with(Options {
        tweak: Box::new(|c| {
            c.policy.allow_same_kind = vec![(AgencyId::new(POLICE).unwrap(), AgencyId::new("polisen-syd").unwrap())]
        }),
        ..Options::default()
    })
    .await;
    let now = certs::now();
    let mut fed = h.federation();
    for id in ["polisen-botkyrka", "polisen-syd"] {
        let agency = AgencyId::new(id).unwrap();
        fed.add_agency(&agency, AgencyKind::Police, id, None).unwrap();
        let key_path = h.dir().join(format!("{id}.key"));
        let (_, files) =
            certs::keygen::generate(&agency, &key_path, now.plus_millis(-DAY), now.plus_millis(DAY), false).unwrap();
        fed.add_agency_key(&certs::keygen::read_public(&files.public).unwrap()).unwrap();
    }
    fed.publish_directory(now).unwrap();
    h.reload();
    let police = h.client(POLICE_SYSTEM).await;
    let refused = example_envelope(&h, POLICE_SYSTEM, "polisen-botkyrka").await;
    assert_status(submit_raw(&police, refused).await, Code::PermissionDenied, "policy");
    let allowed = example_envelope(&h, POLICE_SYSTEM, "polisen-syd").await;
    submit_raw(&police, allowed).await.expect("an allowed same-kind route");
}

#[tokio::test]
async fn tampered_envelopes_are_refused_before_storage() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let mut bad_sig = example_envelope(&h, POLICE_SYSTEM, SOCIAL).await;
    bad_sig.signature[10] ^= 1;
    assert_status(submit_raw(&police, bad_sig).await, Code::InvalidArgument, "bad_signature");
    let mut bad_ct = example_envelope(&h, POLICE_SYSTEM, SOCIAL).await;
    bad_ct.ciphertext[100] ^= 1;
    assert_status(submit_raw(&police, bad_ct).await, Code::InvalidArgument, "bad_signature");
    let mut malformed = example_envelope(&h, POLICE_SYSTEM, SOCIAL).await;
    malformed.header.as_mut().unwrap().message_id.truncate(15);
    assert_status(submit_raw(&police, malformed).await, Code::InvalidArgument, "malformed_envelope");
    let mut no_header = example_envelope(&h, POLICE_SYSTEM, SOCIAL).await;
    no_header.header = None;
    assert_status(submit_raw(&police, no_header).await, Code::InvalidArgument, "malformed_envelope");
    assert_status(
        police.broker().submit(pb::SubmitRequest { envelope: None }).await.map(|r| r.into_inner()),
        Code::InvalidArgument,
        "missing_field",
    );
    let mut oversize = example_envelope(&h, POLICE_SYSTEM, SOCIAL).await;
    oversize.ciphertext = vec![7; 70_000];
    assert_status(submit_raw(&police, oversize).await, Code::ResourceExhausted, "oversize");
    let mut huge = example_envelope(&h, POLICE_SYSTEM, SOCIAL).await;
    huge.ciphertext = vec![7; 1_000_000];
    let s = submit_raw(&police, huge).await.unwrap_err();
    // Refused by the gRPC layer before decoding (tonic's wording, no reason).
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    assert_eq!(reason(&s), None);
    assert_eq!(s.message(), "Error, decoded message length too large: found 1000261 bytes, the limit is: 262144 bytes");
    // None of them was stored; none carried a verified signature, so each
    // is counted in a summary, none logged one by one.
    assert!(rejection_reasons(&h).await.is_empty());
    let counted: Vec<(String, u64)> = summarised(&h).await.into_iter().collect();
    let expected = [("bad_signature", 2), ("malformed_envelope", 2), ("missing_field", 1), ("oversize", 1)];
    assert_eq!(counted, expected.map(|(r, n)| (r.to_owned(), n)));
    let entries = audit_entries(&h).await;
    assert!(entries.iter().all(|e| !matches!(e.event, Some(pb::audit_entry::Event::Submitted(_)))));
}

#[tokio::test]
async fn clock_skew_is_refused() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let p = profile(&h, POLICE_SYSTEM);
    let dir = police.directory().await.unwrap();
    let future = certs::now().plus_millis(3_600_000);
    let e = referral_proto::seal::seal(
        &example_notice(),
        &p.bundles[0],
        dir.agency(&AgencyId::new(SOCIAL).unwrap()).unwrap(),
        MessageId::generate(future.0),
        future,
    )
    .unwrap();
    assert_status(submit_raw(&police, pb::Envelope::from(&e)).await, Code::InvalidArgument, "clock_skew");
}

#[tokio::test]
async fn duplicate_message_id_with_other_content_already_exists() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let first = example_envelope(&h, POLICE_SYSTEM, SOCIAL).await;
    let accepted = submit_raw(&police, first.clone()).await.unwrap();
    // The same bytes again: the original receipt, marked as a duplicate.
    let again = submit_raw(&police, first.clone()).await.unwrap();
    assert!(again.duplicate && !accepted.duplicate);
    assert_eq!(again.receipt, accepted.receipt);
    // Same id, other content (re-sealed, so another digest).
    let id = MessageId::from_bytes(&first.header.as_ref().unwrap().message_id).unwrap();
    let mut n = example_notice();
    n.free_text = "a different text".into();
    let other = police.send_with_id(&AgencyId::new(SOCIAL).unwrap(), &n, id).await.unwrap_err();
    let s = other.status().expect("a status");
    assert_eq!(s.code(), Code::AlreadyExists);
    assert_eq!(other.reason().as_deref(), Some("duplicate_conflict"), "{s:?}");
    assert!(other.to_string().contains("ALREADY_EXISTS (duplicate_conflict): message id"), "{other}");
}

#[tokio::test]
async fn acks_with_the_wrong_key_or_for_another_agency_are_refused() {
    let h = Harness::start().await;
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    let social = h.client(SOCIAL_ONCALL).await;
    let social_bundle = &profile(&h, SOCIAL_ONCALL).bundles[0];
    // Signed by a key the directory does not list for social services,
    // while claiming social services' real key id.
    let rogue = AgencyKeyBundle::generate(AgencyId::new(SOCIAL).unwrap(), Timestamp(0), Timestamp(i64::MAX));
    let mut forged = sign_ack(sent.message_id, sent.envelope_digest, certs::now(), "jour-1", &rogue).unwrap();
    forged.statement.signer_key_id = social_bundle.key_id();
    forged.signature = rogue.sign(&forged.statement.signing_input());
    assert_status(
        social.broker().ack(pb::AckRequest { ack: Some(pb::SignedAck::from(&forged)) }).await,
        Code::InvalidArgument,
        "ack_bad_signature",
    );
    // The police on-call acknowledging a message addressed to social services.
    let police_oncall = h.client(POLICE_ONCALL).await;
    let police_bundle = &profile(&h, POLICE_ONCALL).bundles[0];
    let theirs = sign_ack(sent.message_id, sent.envelope_digest, certs::now(), "vakthavande", police_bundle).unwrap();
    assert_status(
        police_oncall.broker().ack(pb::AckRequest { ack: Some(pb::SignedAck::from(&theirs)) }).await,
        Code::PermissionDenied,
        "ack_other_agency",
    );
    // Signed by social services but sent by a police principal.
    let mismatched = sign_ack(sent.message_id, sent.envelope_digest, certs::now(), "x", social_bundle).unwrap();
    assert_status(
        police_oncall.broker().ack(pb::AckRequest { ack: Some(pb::SignedAck::from(&mismatched)) }).await,
        Code::PermissionDenied,
        "acker_mismatch",
    );
    // The right agency and key, but another envelope digest.
    let wrong_digest = sign_ack(sent.message_id, Digest([9; 32]), certs::now(), "jour-1", social_bundle).unwrap();
    assert_status(
        social.broker().ack(pb::AckRequest { ack: Some(pb::SignedAck::from(&wrong_digest)) }).await,
        Code::InvalidArgument,
        "ack_digest_mismatch",
    );
    // A message the broker never saw.
    let unknown =
        sign_ack(MessageId::generate(certs::now().0), sent.envelope_digest, certs::now(), "jour-1", social_bundle)
            .unwrap();
    assert_status(
        social.broker().ack(pb::AckRequest { ack: Some(pb::SignedAck::from(&unknown)) }).await,
        Code::NotFound,
        "unknown_message",
    );
    // None of these settled it: the real ack still wins.
    let ok = social.ack_digest(sent.message_id, sent.envelope_digest, "jour-1").await.unwrap();
    assert!(!ok.already_acknowledged);
    // Refusals of acks whose signature verified are logged one by one; the
    // others only counted.
    let reasons = rejection_reasons(&h).await;
    assert_eq!(reasons, ["ack_other_agency", "ack_digest_mismatch", "unknown_message"]);
    let counted = summarised(&h).await;
    assert_eq!((counted.get("ack_bad_signature"), counted.get("acker_mismatch")), (Some(&1), Some(&1)));
}

#[tokio::test]
async fn a_flood_from_one_principal_is_rate_limited_while_others_are_served() {
    let h = Harness::start_with(Options {
        tweak: Box::new(|c| {
            c.limits.submit_burst = 5;
            c.limits.submit_rate_per_second = 1;
        }),
        ..Options::default()
    })
    .await;
    let police = h.client(POLICE_SYSTEM).await;
    let social = h.client(SOCIAL_SYSTEM).await;
    let mut limited = 0;
    for i in 0..12 {
        match submit_raw(&police, example_envelope(&h, POLICE_SYSTEM, SOCIAL).await).await {
            Ok(_) => {}
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted);
                assert_eq!(reason(&s).as_deref(), Some("rate_limited"), "{s:?}");
                limited += 1;
            }
        }
        // Social services are served during the flood (within their own burst).
        if i % 4 == 3 {
            social.send(&AgencyId::new(POLICE).unwrap(), &example_notice()).await.unwrap();
        }
    }
    assert!(limited >= 6, "only {limited} of 12 limited");
    // Counted for the operator (the recorder is shared by every broker in
    // this test process, so at least this test's refusals).
    let (code, text) = h.admin("GET", "/metrics", None).await;
    assert_eq!(code, 200);
    let counted: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("broker_rejections_total{reason=\"rate_limited\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rate_limited count in:\n{text}"));
    assert!(counted >= limited, "{counted} counted, {limited} refused");
}
