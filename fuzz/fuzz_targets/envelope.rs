//! Envelope decoding, digests, signature verification and opening.
//!
//! Any byte string may reach `Envelope::decode` (the broker's Submit and every
//! recipient's Subscribe stream). Whatever decodes is digested, verified
//! against the test-vector directory and opened with the vector recipient's
//! keys; none of it may panic, and every decoded envelope must re-encode to
//! bytes that decode to the same envelope (the broker stores the re-encoding).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use referral_proto::envelope::Envelope;
use referral_proto::seal::{open, verify_envelope};
use referral_proto::test_vectors::{Vectors, build};

fn vectors() -> &'static Vectors {
    static V: OnceLock<Vectors> = OnceLock::new();
    V.get_or_init(build)
}

fuzz_target!(|data: &[u8]| {
    let Ok(e) = Envelope::decode(data) else {
        return;
    };
    let v = vectors();
    let _ = e.digest();
    let _ = e.signing_input();
    let _ = e.payload_digest();
    let _ = e.payload_len();
    let _ = verify_envelope(&e, &v.directory);
    let opened = open(&e, &v.directory, std::slice::from_ref(&v.recipient));

    // Every valid envelope round-trips; in particular every one that opens.
    let encoded = e.encode();
    assert_eq!(Envelope::decode(&encoded), Ok(e.clone()));

    if let Ok(notice) = opened {
        // An envelope that opens verifies, and its notice is valid and re-encodes.
        assert!(verify_envelope(&e, &v.directory).is_ok());
        assert_eq!(notice.validate(), Ok(()));
        assert_eq!(notice.urgency, e.header.urgency);
    }
});
