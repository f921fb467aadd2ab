//! Criterion benchmarks of the protocol cryptography.
//!
//! `envelope_2k`: one referral of about 2 KiB of encoded notice (the 2048-byte
//! padding bucket), sealed from the test-vector sender to the test-vector
//! recipient: sealing, opening, what the broker checks per submit, and the
//! signatures and digests those are made of.
//!
//! `merkle`: the audit log's Merkle tree at one million leaves.
//!
//! Run with `cargo bench -p referral-proto --bench crypto`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use referral_proto::Digest;
use referral_proto::ack::sign_ack;
use referral_proto::envelope::Envelope;
use referral_proto::merkle::{MemoryTree, consistency_proof, inclusion_proof, leaf_hash, verify_inclusion};
use referral_proto::notice::{ReferralNotice, example_notice};
use referral_proto::seal::{open, seal, verify_envelope};
use referral_proto::test_vectors::{self, ACKED_AT, CREATED_AT};

/// Encoded notice size the envelope benchmarks aim for.
const NOTICE_TARGET_BYTES: usize = 2000;
const NOTICE_MIN_BYTES: usize = 1900;
const NOTICE_MAX_BYTES: usize = 2048;

/// Leaves in the tree the Merkle benchmarks run against.
const TREE_SIZE: u64 = 1_000_000;
/// The append benchmark starts over from a copy of the 1,000,000-leaf tree
/// once the working tree would pass this size, so memory stays bounded.
const APPEND_RESET_SIZE: u64 = 2 * TREE_SIZE;
/// Leaf proved by `inclusion_proof` and `verify_inclusion`.
const PROVED_LEAF: u64 = 777_777;
/// Older tree size `consistency_proof` proves from.
const CONSISTENCY_FROM: u64 = 750_000;

/// The example notice with `free_text` grown until the notice encodes to
/// exactly [`NOTICE_TARGET_BYTES`].
fn notice_2k() -> ReferralNotice {
    const FILLER: &str = "The subject describes repeated threats and controlling behaviour \
        over the last year; she asks to be contacted discreetly and only during \
        working hours, when her partner is away from home. ";
    let mut notice = example_notice();
    let mut text_len = 0usize;
    for _ in 0..8 {
        notice.free_text = FILLER.chars().cycle().take(text_len).collect();
        let len = notice.encode().len();
        if len == NOTICE_TARGET_BYTES {
            break;
        }
        text_len = (text_len + NOTICE_TARGET_BYTES).saturating_sub(len);
    }
    let len = notice.encode().len();
    assert!((NOTICE_MIN_BYTES..=NOTICE_MAX_BYTES).contains(&len), "benchmark notice encodes to {len} bytes");
    notice.validate().expect("the benchmark notice is valid");
    notice
}

fn envelope_2k(c: &mut Criterion) {
    let v = test_vectors::build();
    let notice = notice_2k();
    let recipient = v.directory.agency(v.recipient.agency()).expect("recipient in the directory");
    let sender_key = v.sender.public();
    let bundles = std::slice::from_ref(&v.recipient);
    let message_id = test_vectors::message_id();

    let envelope = seal(&notice, &v.sender, recipient, message_id, CREATED_AT).expect("seals");
    let encoded = envelope.encode();
    let signing_input = envelope.signing_input();
    let digest = envelope.digest();
    let ack = sign_ack(message_id, digest, ACKED_AT, "socialjour-1", &v.recipient).expect("acks");
    // Everything below must succeed, or the timings measure an error path.
    assert_eq!(open(&envelope, &v.directory, bundles).expect("opens"), notice);
    assert_eq!(Envelope::decode(&encoded).expect("decodes"), envelope);
    verify_envelope(&envelope, &v.directory).expect("verifies");
    ack.verify(&v.directory).expect("ack verifies");
    sender_key.signing.verify(&signing_input, &envelope.signature).expect("signature verifies");

    let mut g = c.benchmark_group("envelope_2k");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    g.sample_size(30);

    g.bench_function("seal", |b| {
        b.iter(|| seal(black_box(&notice), &v.sender, recipient, black_box(message_id), CREATED_AT).expect("seals"))
    });
    g.bench_function("open", |b| b.iter(|| open(black_box(&envelope), &v.directory, bundles).expect("opens")));
    g.bench_function("verify_envelope", |b| {
        b.iter(|| verify_envelope(black_box(&envelope), &v.directory).expect("verifies"))
    });
    g.bench_function("sign_envelope", |b| b.iter(|| v.sender.sign(black_box(&signing_input))));
    g.bench_function("verify_signature", |b| {
        b.iter(|| {
            sender_key.signing.verify(black_box(&signing_input), black_box(&envelope.signature)).expect("verifies")
        })
    });
    g.bench_function("envelope_digest", |b| b.iter(|| black_box(&envelope).digest()));
    g.bench_function("decode", |b| b.iter(|| Envelope::decode(black_box(&encoded)).expect("decodes")));
    g.bench_function("sign_ack", |b| {
        b.iter(|| {
            sign_ack(black_box(message_id), black_box(digest), ACKED_AT, "socialjour-1", &v.recipient).expect("acks")
        })
    });
    g.bench_function("verify_ack", |b| b.iter(|| black_box(&ack).verify(&v.directory).expect("ack verifies")));
    g.finish();
}

fn leaf(i: u64) -> Digest {
    leaf_hash(&i.to_be_bytes())
}

fn merkle(c: &mut Criterion) {
    let mut base = MemoryTree::default();
    for i in 0..TREE_SIZE {
        base.append_leaf(leaf(i));
    }
    let root = base.root();
    let path = inclusion_proof(&base, PROVED_LEAF, TREE_SIZE).expect("in memory");
    verify_inclusion(&leaf(PROVED_LEAF), PROVED_LEAF, TREE_SIZE, &path, &root).expect("the proof verifies");

    let mut g = c.benchmark_group("merkle");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    g.sample_size(30);

    // Appends to a tree of 1,000,000 to 2,000,000 leaves; starting over from
    // a copy of the base tree happens outside the timed region.
    let mut tree = base.clone();
    let next = leaf(u64::MAX);
    g.bench_function("append_leaf", |b| {
        b.iter_custom(|iters| {
            if tree.size() + iters > APPEND_RESET_SIZE && tree.size() > TREE_SIZE {
                tree = base.clone();
            }
            let start = Instant::now();
            for _ in 0..iters {
                black_box(tree.append_leaf(black_box(next)));
            }
            start.elapsed()
        })
    });
    drop(tree);

    g.bench_function("inclusion_proof", |b| {
        b.iter(|| inclusion_proof(&base, black_box(PROVED_LEAF), black_box(TREE_SIZE)).expect("in memory"))
    });
    g.bench_function("consistency_proof", |b| {
        b.iter(|| consistency_proof(&base, black_box(CONSISTENCY_FROM), black_box(TREE_SIZE)).expect("in memory"))
    });
    let proved = leaf(PROVED_LEAF);
    g.bench_function("verify_inclusion", |b| {
        b.iter(|| {
            verify_inclusion(black_box(&proved), PROVED_LEAF, TREE_SIZE, black_box(&path), &root).expect("verifies")
        })
    });
    g.finish();
}

/// Signatures per batch in the `signatures` group: the SubmitStream credit
/// window, and about what the broker gathers per batch at 64 in flight.
const BATCH: usize = 64;

/// Ed25519 verification: ring, dalek's strict single verification, and
/// [`referral_proto::sigbatch::verify_batch`] over batches of [`BATCH`]
/// (reported per batch; divide by 64 for one signature), beside dalek's bare
/// batch equation and the per-signature checks the strict rule adds to it.
fn signatures(c: &mut Criterion) {
    use criterion::Throughput;
    use referral_proto::keys::{SigningKey, VerifyingKey};
    use referral_proto::sigbatch::{self, Item};

    let signed: Vec<(VerifyingKey, Vec<u8>, [u8; 64])> = (0..BATCH)
        .map(|i| {
            let key = SigningKey::from_seed([i as u8 + 1; 32]);
            let message = vec![i as u8; 600];
            let signature = key.sign(&message);
            (key.verifying_key(), message, signature)
        })
        .collect();
    let items: Vec<Item<'_>> =
        signed.iter().map(|(key, message, signature)| Item { key, message, signature }).collect();
    assert!(sigbatch::verify_batch(&items).iter().all(Result::is_ok));
    let dalek_keys: Vec<ed25519_dalek::VerifyingKey> =
        signed.iter().map(|(k, _, _)| ed25519_dalek::VerifyingKey::from_bytes(&k.0).expect("a key")).collect();
    let dalek_sigs: Vec<ed25519_dalek::Signature> =
        signed.iter().map(|(_, _, s)| ed25519_dalek::Signature::from_bytes(s)).collect();
    let messages: Vec<&[u8]> = signed.iter().map(|(_, m, _)| m.as_slice()).collect();
    let r = curve25519_dalek::edwards::CompressedEdwardsY(signed[0].2[..32].try_into().expect("32 bytes"))
        .decompress()
        .expect("R decompresses");

    let mut g = c.benchmark_group("signatures");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    g.sample_size(30);
    let (key, message, signature) = &signed[0];
    g.bench_function("ring_verify", |b| b.iter(|| key.verify(black_box(message), black_box(signature)).expect("ok")));
    g.bench_function("dalek_verify_strict", |b| {
        b.iter(|| sigbatch::verify_strict(key, black_box(message), black_box(signature)).expect("ok"))
    });
    // What `verify_strict` did before it remembered decoded keys.
    let dalek_signature = ed25519_dalek::Signature::from_bytes(signature);
    g.bench_function("dalek_verify_strict_decoding_the_key", |b| {
        b.iter(|| {
            ed25519_dalek::VerifyingKey::from_bytes(black_box(&key.0))
                .expect("a key")
                .verify_strict(black_box(message), &dalek_signature)
                .expect("ok")
        })
    });
    let ring_key = SigningKey::from_seed([1; 32]);
    let dalek_key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    assert_eq!(ed25519_dalek::Signer::sign(&dalek_key, message).to_bytes(), ring_key.sign(message));
    g.bench_function("ring_sign", |b| b.iter(|| ring_key.sign(black_box(message))));
    g.bench_function("dalek_sign", |b| b.iter(|| ed25519_dalek::Signer::sign(&dalek_key, black_box(message))));
    g.bench_function("r_torsion_check", |b| b.iter(|| black_box(&r).is_torsion_free()));
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("dalek_verify_batch_64_bare", |b| {
        b.iter(|| ed25519_dalek::verify_batch(black_box(&messages), &dalek_sigs, &dalek_keys).expect("ok"))
    });
    g.bench_function("sigbatch_verify_batch_64", |b| b.iter(|| sigbatch::verify_batch(black_box(&items))));
    g.finish();
}

criterion_group!(benches, envelope_2k, merkle, signatures);
criterion_main!(benches);
