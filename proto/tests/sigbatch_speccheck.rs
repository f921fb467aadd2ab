//! A differential test of the three Ed25519 verifiers in the tree over the
//! twelve edge cases of "Taming the many EdDSAs" (Chalkias, Garillot,
//! Nikolaenko, SSR 2020; the ed25519-speccheck repository's `cases.json`):
//! ring's `verify` (what every party used before issue 14), ed25519-dalek's
//! single `verify_strict`, and ed25519-dalek's `verify_batch` on its own;
//! then our rule: the directory's key check followed by
//! `sigbatch::verify_batch`, which must answer exactly like the key check
//! followed by `verify_strict`, alone and in a batch among good signatures.

use referral_proto::keys::{SigningKey, VerifyingKey};
use referral_proto::sigbatch::{self, Item, WeakKey};

/// (message, public key, signature), hex, as published.
const CASES: [(&str, &str, &str); 12] = [
    // 0: S = 0, small-order A and R; both equations hold.
    (
        "8c93255d71dcab10e8f379c26200f3c7bd5f09d9bc3068d3ef4edeb4853022b6",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a0000000000000000000000000000000000000000000000000000000000000000",
    ),
    // 1: 0 < S < L, small-order A, mixed-order R; both equations hold.
    (
        "9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04",
    ),
    // 2: mixed-order A, small-order R; both equations hold.
    (
        "aebf3f2601a0c8c5d39cc7d8911642f740b78168218da8471772b35f9d35b9ab",
        "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa8c4bd45aecaca5b24fb97bc10ac27ac8751a7dfe1baff8b953ec9f5833ca260e",
    ),
    // 3: mixed-order A and R; both equations hold.
    (
        "9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
        "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
        "9046a64750444938de19f227bb80485e92b83fdb4b6506c160484c016cc1852f87909e14428a7a1d62e9f22f3d3ad7802db02eb2e688b6c52fcd6648a98bd009",
    ),
    // 4: mixed-order A and R; only the cofactored equation holds.
    (
        "e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
        "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
        "160a1cb0dc9c0258cd0a7d23e94d8fa878bcb1925f2c64246b2dee1796bed5125ec6bc982a269b723e0668e540911a9a6a58921d6925e434ab10aa7940551a09",
    ),
    // 5: mixed-order A, R of order L; only the cofactored equation holds
    //    (unless 8h is reduced modulo L first).
    (
        "e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
        "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
        "21122a84e0b5fca4052f5b1235c80a537878b38f3142356b2c2384ebad4668b7e40bc836dac0f71076f9abe3a53f9c03c1ceeeddb658d0030494ace586687405",
    ),
    // 6: S > L, A and R of order L; both equations hold for S mod L.
    (
        "85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
        "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
        "e96f66be976d82e60150baecff9906684aebb1ef181f67a7189ac78ea23b6c0e547f7690a0e2ddcd04d87dbc3490dc19b3b3052f7ff0538cb68afb369ba3a514",
    ),
    // 7: S >> L (its top bits set), A and R of order L.
    (
        "85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
        "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
        "8ce5b96c8f26d0ab6c47958c9e68b937104cd36e13c33566acd2fe8d38aa19427e71f98a473474f2f13f06f97c20d58cc3f54b8bd0d272f42b695dd7e89a8c22",
    ),
    // 8: non-canonical R (x = 0 with its sign bit set), mixed-order A; passes
    //    when R is reduced before hashing.
    (
        "9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
        "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff03be9678ac102edcd92b0210bb34d7428d12ffc5df5f37e359941266a4e35f0f",
    ),
    // 9: the same R; passes when R is hashed as sent.
    (
        "9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
        "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffca8c5b64cd208982aa38d4936621a4775aa233aa0505711d8fdcfdaa943d4908",
    ),
    // 10: non-canonical small-order A; passes when A is reduced before hashing.
    (
        "e96b7021eb39c1a163b6da4e3093dcd3f21387da4cc4572be588fafae23c155b",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dca5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04",
    ),
    // 11: the same A; passes when A is hashed as sent.
    (
        "39a591f5321bbe07fd5a23dc2f39d025d74526615746727ceefd6e82ae65c06f",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dca5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04",
    ),
];

struct Case {
    message: Vec<u8>,
    key: VerifyingKey,
    signature: Vec<u8>,
}

fn cases() -> Vec<Case> {
    CASES
        .iter()
        .map(|(m, k, s)| Case {
            message: hex::decode(m).expect("hex"),
            key: VerifyingKey::from_slice(&hex::decode(k).expect("hex")).expect("32 bytes"),
            signature: hex::decode(s).expect("hex"),
        })
        .collect()
}

/// ring's Ed25519 verification, what every party used before issue 14.
fn ring(c: &Case) -> bool {
    use ring::signature::{ED25519, UnparsedPublicKey};
    UnparsedPublicKey::new(&ED25519, &c.key.0).verify(&c.message, &c.signature).is_ok()
}

/// `VerifyingKey::verify`, what every party uses now.
fn protocol_verify(c: &Case) -> bool {
    c.key.verify(&c.message, &c.signature).is_ok()
}

fn dalek_strict(c: &Case) -> bool {
    sigbatch::verify_strict(&c.key, &c.message, &c.signature).is_ok()
}

/// ed25519-dalek's batch equation on its own, over this one signature.
fn dalek_batch(c: &Case) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&c.key.0) else { return false };
    let Ok(signature) = ed25519_dalek::Signature::from_slice(&c.signature) else { return false };
    ed25519_dalek::verify_batch(&[c.message.as_slice()], &[signature], &[key]).is_ok()
}

fn key_check(c: &Case) -> Result<(), WeakKey> {
    sigbatch::check_signing_key(&c.key)
}

/// Our batch, with the case alone.
fn ours_alone(c: &Case) -> bool {
    let item = Item { key: &c.key, message: &c.message, signature: &c.signature };
    sigbatch::verify_batch(&[item])[0].is_ok()
}

/// Our batch, with the case in the middle of eight good signatures by honest
/// keys: only the case may be refused.
fn ours_among_good(c: &Case) -> bool {
    let honest: Vec<(VerifyingKey, Vec<u8>, [u8; 64])> = (1..=8u8)
        .map(|n| {
            let key = SigningKey::from_seed([n; 32]);
            let message = vec![n; 64];
            let signature = key.sign(&message);
            (key.verifying_key(), message, signature)
        })
        .collect();
    let mut items: Vec<Item<'_>> =
        honest.iter().map(|(key, message, signature)| Item { key, message, signature }).collect();
    items.insert(4, Item { key: &c.key, message: &c.message, signature: &c.signature });
    let results = sigbatch::verify_batch(&items);
    for (i, r) in results.iter().enumerate() {
        if i != 4 {
            assert_eq!(*r, Ok(()), "an honest signature beside the case was refused");
        }
    }
    results[4].is_ok()
}

/// What each verifier says about each case, as measured (`true` = accepted).
/// Each row: ring, dalek `verify_strict`, dalek `verify_batch` alone, and our
/// directory key check.
const OBSERVED: [(bool, bool, bool, Result<(), WeakKey>); 12] = [
    // Small-order or mixed-order keys: ring accepts all four (it checks
    // neither the key nor R for small order), strict only case 3 (its
    // cofactorless equation holds), dalek's batch none; the directory refuses
    // every one of these keys, so no verification reaches them.
    (true, false, false, Err(WeakKey::SmallOrder)),
    (true, false, false, Err(WeakKey::SmallOrder)),
    (true, false, false, Err(WeakKey::MixedOrder)),
    (true, true, false, Err(WeakKey::MixedOrder)),
    // Only the cofactored equation holds: all three refuse.
    (false, false, false, Err(WeakKey::MixedOrder)),
    (false, false, false, Err(WeakKey::MixedOrder)),
    // S not below L, honest keys: all three refuse.
    (false, false, false, Ok(())),
    (false, false, false, Ok(())),
    // Non-canonical R: all three refuse.
    (false, false, false, Err(WeakKey::MixedOrder)),
    (false, false, false, Err(WeakKey::MixedOrder)),
    // Non-canonical small-order A: ring and dalek's batch accept case 11
    // (A hashed as sent), strict refuses both (small-order A).
    (false, false, false, Err(WeakKey::NotCanonical)),
    (true, false, true, Err(WeakKey::NotCanonical)),
];

#[test]
fn ring_dalek_strict_and_dalek_batch_over_the_speccheck_cases() {
    let cases = cases();
    let mut table = String::from("case  ring   strict batch  key check\n");
    let mut observed = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let row = (ring(c), dalek_strict(c), dalek_batch(c), key_check(c));
        table.push_str(&format!("{i:>4}  {:<6} {:<6} {:<6} {:?}\n", row.0, row.1, row.2, row.3));
        observed.push(row);
    }
    assert_eq!(observed, OBSERVED.to_vec(), "the verifiers' answers changed:\n{table}");
}

#[test]
fn our_rule_is_exactly_the_strict_one_over_the_speccheck_cases() {
    for (i, c) in cases().iter().enumerate() {
        // A key refused at directory load never reaches a verification; for
        // the rest our answer is verify_strict's, alone or in a batch.
        let strict = key_check(c).is_ok() && dalek_strict(c);
        let ours_alone = key_check(c).is_ok() && ours_alone(c);
        let ours_batched = key_check(c).is_ok() && ours_among_good(c);
        assert_eq!(ours_alone, strict, "case {i} alone");
        assert_eq!(ours_batched, strict, "case {i} among good signatures");
        // The single verification every party runs is the strict one.
        assert_eq!(protocol_verify(c), dalek_strict(c), "case {i}: VerifyingKey::verify");
    }
}
