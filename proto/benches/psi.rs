//! Criterion benchmarks of the blind overlap check's core (PROTOCOL.md section 13).
//!
//! `psi/start/N`: one side hashes, blinds, pads and shuffles N distinct
//! identifiers. `psi/session/N`: a whole mutual session of N × N with half of
//! each side in common, both sides computed one after the other on one core
//! (start both, answer both, finish both), as two agencies would spend it in
//! total. Bytes on the wire are printed once per size before the timings.
//!
//! Run with `cargo bench -p referral-proto --bench psi`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use referral_proto::psi::{Party, PersonalIdentityNumber};
use referral_proto::test_vectors::{CREATED_AT, TestRng, message_id};

/// `n` distinct valid numbers starting at serial `offset`: 999 serials a date, a date a month from 1950.
fn numbers(n: usize, offset: usize) -> Vec<PersonalIdentityNumber> {
    (offset..offset + n)
        .map(|i| {
            let k = i / 999;
            let body = format!("{}{:02}01{:03}", 1950 + k / 12, 1 + k % 12, i % 999);
            (0..10)
                .map(|c| format!("{body}{c}"))
                .find_map(|s| PersonalIdentityNumber::parse(&s, CREATED_AT).ok())
                .expect("one check digit fits")
        })
        .collect()
}

fn session(a: &[PersonalIdentityNumber], b: &[PersonalIdentityNumber], rng: &mut TestRng) -> (usize, usize, usize) {
    let id = message_id();
    let (pa, sa) = Party::start(id, a, rng).unwrap();
    let (pb, sb) = Party::start(id, b, rng).unwrap();
    let (wa, answer_a) = pa.answer(&sb);
    let (wb, answer_b) = pb.answer(&sa);
    let ma = wa.finish(&answer_b).unwrap();
    let mb = wb.finish(&answer_a).unwrap();
    assert_eq!(ma.len(), mb.len());
    let bytes_a = sa.as_bytes().len() + answer_a.to_bytes().len();
    let bytes_b = sb.as_bytes().len() + answer_b.to_bytes().len();
    (ma.len(), bytes_a, bytes_b)
}

fn psi(c: &mut Criterion) {
    let mut g = c.benchmark_group("psi");
    g.sample_size(10);
    for n in [1_000usize, 10_000] {
        let a = numbers(n, 0);
        let b = numbers(n, n / 2);
        let mut rng = TestRng::new(n as u64);
        let (matches, bytes_a, bytes_b) = session(&a, &b, &mut rng);
        println!(
            "psi {n} x {n}: {matches} matches; the initiator sends {bytes_a} bytes and the responder {bytes_b} \
             (a blinded set and an answer each), {} in all",
            bytes_a + bytes_b
        );
        g.bench_with_input(BenchmarkId::new("start", n), &a, |bench, a| {
            bench.iter(|| black_box(Party::start(message_id(), a, &mut rng).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("session", n), &(a, b), |bench, (a, b)| {
            bench.iter(|| black_box(session(a, b, &mut rng)))
        });
    }
    g.finish();
}

criterion_group!(benches, psi);
criterion_main!(benches);
