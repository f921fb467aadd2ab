//! Ed25519 verification in batches (ed25519-dalek) with exactly the accept
//! rule of one strict verification, and the check every directory signing key
//! passes before anything is verified against it.
//!
//! The rule (PROTOCOL.md 2.1, 9.3): a signature is accepted if and only if
//! ed25519-dalek's `verify_strict` accepts it, against a key that
//! [`check_signing_key`] accepted: `S` canonical (below the group order `L`),
//! `R` canonically encoded, `R` neither of small order nor with a small-order
//! component, and the cofactorless equation `[S]B = R + [k]A` holding exactly.
//!
//! A batch of n signatures costs one multiscalar multiplication instead of n
//! double-scalar ones. The batch equation alone is weaker than the rule: it
//! reduces the encodings it decompresses and, being a random linear
//! combination, lets a small-order part of `R` vanish when its coefficient is
//! a multiple of that part's order. So every signature first passes the cheap
//! per-signature checks of the rule (encodings, small order, torsion of `R`),
//! and only the equation is batched. With the key's small-order component
//! refused at directory load and `R`'s refused here, both sides of the batch
//! equation lie in the prime-order subgroup, where a random linear combination
//! that vanishes means (except with probability about 2^-128) that every
//! equation holds. When a batch fails it is split in halves until each failing
//! signature is checked alone with `verify_strict`, so the refusal names
//! exactly the envelopes whose signatures are bad.
//!
//! `tests/sigbatch_speccheck.rs` runs ring, dalek's single strict
//! verification and dalek's batch over the "Taming the many EdDSAs" edge cases
//! and holds that this module's answer is the strict one.

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use ed25519_dalek::Signature;

use crate::keys::{BadSignature, VerifyingKey};

/// Why a directory signing key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WeakKey {
    #[error("is not a point on the curve")]
    NotOnCurve,
    #[error("is not canonically encoded (a coordinate is not reduced, or a zero x carries a sign)")]
    NotCanonical,
    #[error("is a small-order point (signatures against it prove nothing)")]
    SmallOrder,
    #[error("has a small-order component (no honestly generated key has one)")]
    MixedOrder,
}

/// Checks that `key` is an honestly possible Ed25519 public key: a canonical
/// encoding of a point in the prime-order subgroup (other than the identity).
/// Every key generated as RFC 8032 says passes; the directory refuses the rest
/// when it is loaded.
pub fn check_signing_key(key: &VerifyingKey) -> Result<(), WeakKey> {
    let point = decompress_canonical(&key.0)?;
    if point.is_small_order() {
        return Err(WeakKey::SmallOrder);
    }
    if !torsion_free(&point) {
        return Err(WeakKey::MixedOrder);
    }
    Ok(())
}

/// Decompresses `bytes` if they are the one canonical encoding of a point.
fn decompress_canonical(bytes: &[u8; 32]) -> Result<EdwardsPoint, WeakKey> {
    if !canonical_encoding(bytes) {
        return Err(WeakKey::NotCanonical);
    }
    CompressedEdwardsY(*bytes).decompress().ok_or(WeakKey::NotOnCurve)
}

/// Whether `bytes` can be the canonical encoding of a point (RFC 8032 5.1.3):
/// y below p = 2^255 - 19, and no sign bit when x is zero, which it is exactly
/// for y = 1 and y = p - 1. Decompression accepts both other spellings and
/// reduces them, so this is checked on the bytes.
fn canonical_encoding(bytes: &[u8; 32]) -> bool {
    let sign = bytes[31] & 0x80 != 0;
    let mut y = *bytes;
    y[31] &= 0x7f;
    // p - 1 in little-endian: 0xec, then 30 bytes 0xff, then 0x7f.
    let high_all_ones = y[31] == 0x7f && y[1..31].iter().all(|&b| b == 0xff);
    if high_all_ones && y[0] >= 0xed {
        return false; // y >= p
    }
    let y_is_one = y[0] == 1 && y[1..].iter().all(|&b| b == 0);
    let y_is_minus_one = high_all_ones && y[0] == 0xec;
    !(sign && (y_is_one || y_is_minus_one))
}

/// Whether `point` lies in the prime-order subgroup: [L]P is the identity,
/// computed as [L - 1]P + P because a reduced scalar cannot hold L itself,
/// in variable time (points and signatures are public).
fn torsion_free(point: &EdwardsPoint) -> bool {
    use curve25519_dalek::traits::{IsIdentity as _, VartimeMultiscalarMul as _};
    let l_minus_one = -curve25519_dalek::Scalar::ONE;
    (EdwardsPoint::vartime_multiscalar_mul([l_minus_one], [*point]) + point).is_identity()
}

/// One signature to check: `signature` by `key` over `message`.
#[derive(Clone, Copy, Debug)]
pub struct Item<'a> {
    pub key: &'a VerifyingKey,
    pub message: &'a [u8],
    pub signature: &'a [u8],
}

/// One strict verification: ed25519-dalek's `verify_strict`, the rule this
/// module's batches answer exactly.
pub fn verify_strict(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> Result<(), BadSignature> {
    let key = decompressed(key).ok_or(BadSignature)?;
    let signature = Signature::from_slice(signature).map_err(|_| BadSignature)?;
    key.verify_strict(message, &signature).map_err(|_| BadSignature)
}

/// Keys remembered by [`decompressed`] before it starts again.
const KEY_CACHE: usize = 4096;

/// `ed25519_dalek::VerifyingKey::from_bytes(key)`, remembered: decoding a
/// key takes a square root in the field (about a sixth of a
/// verification), and a party verifies the same few keys (the directory's
/// agencies, the broker's log key) over and over. The decoded key is a
/// pure function of the 32 bytes, so a remembered one answers exactly as a
/// fresh one; keys that do not decode are not remembered.
fn decompressed(key: &VerifyingKey) -> Option<ed25519_dalek::VerifyingKey> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], ed25519_dalek::VerifyingKey>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(found) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key.0) {
        return Some(*found);
    }
    let decoded = ed25519_dalek::VerifyingKey::from_bytes(&key.0).ok()?;
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= KEY_CACHE {
        map.clear();
    }
    map.insert(key.0, decoded);
    Some(decoded)
}

/// A signature that passed the per-signature checks and waits for the batch
/// equation.
struct Prepared<'a> {
    index: usize,
    key: ed25519_dalek::VerifyingKey,
    message: &'a [u8],
    signature: Signature,
}

/// The per-signature part of the strict rule: lengths, `S` below `L`, `R`
/// canonical and in the prime-order subgroup (not the identity). Everything
/// but the equation.
fn prepare<'a>(index: usize, item: &Item<'a>) -> Option<Prepared<'a>> {
    let key = decompressed(item.key)?;
    let signature = Signature::from_slice(item.signature).ok()?;
    // S must be canonical; dalek's batch checks this too, but a refusal here
    // keeps the batch for signatures that can pass.
    let s: [u8; 32] = *signature.s_bytes();
    Option::<curve25519_dalek::Scalar>::from(curve25519_dalek::Scalar::from_canonical_bytes(s))?;
    let r = decompress_canonical(signature.r_bytes()).ok()?;
    if r.is_small_order() || !torsion_free(&r) {
        return None;
    }
    Some(Prepared { index, key, message: item.message, signature })
}

/// Verifies every item and answers one result per item, in order: `Ok` exactly
/// when [`verify_strict`] would accept it (see the module comment for why).
pub fn verify_batch(items: &[Item<'_>]) -> Vec<Result<(), BadSignature>> {
    let mut results = vec![Err(BadSignature); items.len()];
    let prepared: Vec<Prepared<'_>> = items.iter().enumerate().filter_map(|(i, item)| prepare(i, item)).collect();
    settle(&prepared, &mut results);
    results
}

/// Runs the batch equation over `group`; on failure splits it in halves until
/// each failing signature stands alone, where `verify_strict` decides.
fn settle(group: &[Prepared<'_>], results: &mut [Result<(), BadSignature>]) {
    match group {
        [] => {}
        [one] => {
            results[one.index] = one.key.verify_strict(one.message, &one.signature).map_err(|_| BadSignature);
        }
        _ => {
            let messages: Vec<&[u8]> = group.iter().map(|p| p.message).collect();
            let signatures: Vec<Signature> = group.iter().map(|p| p.signature).collect();
            let keys: Vec<ed25519_dalek::VerifyingKey> = group.iter().map(|p| p.key).collect();
            if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
                for p in group {
                    results[p.index] = Ok(());
                }
            } else {
                let (left, right) = group.split_at(group.len() / 2);
                settle(left, results);
                settle(right, results);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    fn signed(n: u8) -> (SigningKey, Vec<u8>, [u8; 64]) {
        let key = SigningKey::from_seed([n; 32]);
        let message = vec![n; 100 + n as usize];
        let signature = key.sign(&message);
        (key, message, signature)
    }

    #[test]
    fn a_batch_of_good_signatures_is_accepted() {
        let all: Vec<_> = (1..=20).map(signed).collect();
        let keys: Vec<VerifyingKey> = all.iter().map(|(k, _, _)| k.verifying_key()).collect();
        let items: Vec<Item<'_>> =
            all.iter().zip(&keys).map(|((_, m, s), key)| Item { key, message: m, signature: s }).collect();
        assert_eq!(verify_batch(&items), vec![Ok(()); 20]);
    }

    #[test]
    fn one_bad_signature_among_good_ones_is_refused_alone() {
        let mut all: Vec<_> = (1..=33).map(signed).collect();
        all[17].2[5] ^= 1; // a flipped bit in R
        all[30].2[40] ^= 1; // and one in S
        let keys: Vec<VerifyingKey> = all.iter().map(|(k, _, _)| k.verifying_key()).collect();
        let items: Vec<Item<'_>> =
            all.iter().zip(&keys).map(|((_, m, s), key)| Item { key, message: m, signature: s }).collect();
        let results = verify_batch(&items);
        for (i, r) in results.iter().enumerate() {
            let expected = if i == 17 || i == 30 { Err(BadSignature) } else { Ok(()) };
            assert_eq!(*r, expected, "signature {i}");
            assert_eq!(*r, verify_strict(items[i].key, items[i].message, items[i].signature), "signature {i}");
        }
    }

    #[test]
    fn a_remembered_key_answers_exactly_as_a_fresh_one() {
        let (key, message, signature) = signed(77);
        let key = key.verifying_key();
        let mut forged = signature;
        forged[50] ^= 1;
        for round in 0..3 {
            assert_eq!(verify_strict(&key, &message, &signature), Ok(()), "round {round}");
            assert_eq!(verify_strict(&key, &message, &forged), Err(BadSignature), "round {round}");
            assert_eq!(verify_strict(&key, b"another message", &signature), Err(BadSignature), "round {round}");
        }
        // 32 bytes that are no point on the curve (about half of all y have no x): refused every time, never
        // remembered.
        let not_a_point = (2u8..=255)
            .map(|y| {
                let mut b = [0u8; 32];
                b[0] = y;
                b
            })
            .find(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_err())
            .expect("some small y is not on the curve");
        for _ in 0..2 {
            assert_eq!(verify_strict(&VerifyingKey(not_a_point), &message, &signature), Err(BadSignature));
            assert!(decompressed(&VerifyingKey(not_a_point)).is_none());
        }
        // More keys than the cache holds: it starts again, and still answers rightly.
        for n in 0..(KEY_CACHE as u32 + 2) {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&n.to_be_bytes());
            assert!(decompressed(&SigningKey::from_seed(seed).verifying_key()).is_some());
        }
        assert_eq!(verify_strict(&key, &message, &signature), Ok(()));
        assert_eq!(verify_strict(&key, &message, &forged), Err(BadSignature));
    }

    #[test]
    fn a_signature_of_the_wrong_length_is_refused() {
        let (key, message, signature) = signed(1);
        let key = key.verifying_key();
        let short = &signature[..63];
        assert_eq!(verify_batch(&[Item { key: &key, message: &message, signature: short }]), vec![Err(BadSignature)]);
        assert_eq!(verify_strict(&key, &message, short), Err(BadSignature));
    }

    #[test]
    fn honest_keys_pass_the_key_check_and_edge_points_do_not() {
        for n in 1..=50 {
            assert_eq!(check_signing_key(&SigningKey::from_seed([n; 32]).verifying_key()), Ok(()));
        }
        // The identity (small order), and its non-canonical spelling with y = p + 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(check_signing_key(&VerifyingKey(identity)), Err(WeakKey::SmallOrder));
        let mut p_plus_1 = [0xffu8; 32];
        p_plus_1[0] = 0xee;
        p_plus_1[31] = 0x7f;
        assert_eq!(check_signing_key(&VerifyingKey(p_plus_1)), Err(WeakKey::NotCanonical));
        // y = 2 is not on the curve.
        let mut two = [0u8; 32];
        two[0] = 2;
        assert_eq!(check_signing_key(&VerifyingKey(two)), Err(WeakKey::NotOnCurve));
        // An honest key plus a point of order 2, (0, -1).
        let honest = CompressedEdwardsY(SigningKey::from_seed([7; 32]).verifying_key().0).decompress().unwrap();
        let mut minus_one = [0xffu8; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        let order_2 = CompressedEdwardsY(minus_one).decompress().unwrap();
        assert!(order_2.is_small_order());
        let mixed = VerifyingKey((honest + order_2).compress().0);
        assert_eq!(check_signing_key(&mixed), Err(WeakKey::MixedOrder));
        // The variable-time subgroup check agrees with dalek's own.
        for p in [honest, order_2, honest + order_2, EdwardsPoint::default()] {
            assert_eq!(torsion_free(&p), p.is_torsion_free());
        }
        // Identity with its sign bit set: x = 0 cannot carry a sign.
        let mut signed_identity = identity;
        signed_identity[31] |= 0x80;
        assert_eq!(check_signing_key(&VerifyingKey(signed_identity)), Err(WeakKey::NotCanonical));
    }
}
