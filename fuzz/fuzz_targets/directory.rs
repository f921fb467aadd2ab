//! The federation directory: the signed transport form and, past the
//! signature, the validation of the directory itself.
//!
//! Random bytes never carry a valid federation signature, so the second half
//! decodes the data directly as `pb::Directory` and runs the conversion that
//! `SignedDirectory::verify` runs after checking the signature.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use referral_proto::directory::{Directory, SignedDirectory};
use referral_proto::pb;
use referral_proto::test_vectors::{Vectors, build};
use referral_proto::time::Timestamp;

fn vectors() -> &'static Vectors {
    static V: OnceLock<Vectors> = OnceLock::new();
    V.get_or_init(build)
}

fuzz_target!(|data: &[u8]| {
    let v = vectors();
    let key = v.federation.verifying_key();

    if let Ok(sd) = SignedDirectory::decode(data) {
        let first = sd.verify(&key, None, Timestamp(i64::MIN));
        if let Ok(d) = &first {
            // Rollback protection only ever refuses older versions, and
            // freshness only ever refuses from valid_until on.
            assert_eq!(sd.verify(&key, Some(d.version), d.issued_at).as_ref(), Ok(d));
            assert!(sd.verify(&key, None, d.valid_until).is_err());
        }
        let _ = sd.verify(&key, Some(u64::MAX), Timestamp(0));
        assert_eq!(SignedDirectory::decode(&sd.encode()), Ok(sd));
    }

    if let Ok(p) = pb::Directory::decode(data)
        && let Ok(d) = Directory::try_from(p)
    {
        // Anything that validates can be signed, shipped and read back unchanged.
        let signed = d.sign(&v.federation);
        let back = SignedDirectory::decode(&signed.encode()).expect("own encoding decodes");
        assert_eq!(back.verify(&key, Some(d.version), d.issued_at), Ok(d.clone()));
        for a in d.agencies.values() {
            for k in &a.keys {
                let _ = a.current_key(k.not_before);
                assert!(a.key(&k.key_id).is_some());
            }
        }
    }
});
