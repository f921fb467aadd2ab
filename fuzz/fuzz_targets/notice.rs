//! Referral notice decoding and validation, from protobuf (what a recipient
//! decrypts) and from JSON (what `agency-client send` reads).
#![no_main]

use libfuzzer_sys::fuzz_target;
use referral_proto::notice::ReferralNotice;

fuzz_target!(|data: &[u8]| {
    // The wire: decode + validate; whatever passes must survive re-encoding.
    if let Ok(n) = ReferralNotice::decode(data) {
        let again = ReferralNotice::decode(&n.encode());
        assert_eq!(again, Ok(n), "a valid notice did not round-trip");
    }

    // JSON: never panics; a notice that validates must be one the recipient
    // accepts after sealing (the sender validates, then seals `encode()`).
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(n) = serde_json::from_str::<ReferralNotice>(text)
        && n.validate().is_ok()
    {
        let wire = ReferralNotice::decode(&n.encode());
        assert!(wire.is_ok(), "a notice valid at the sender is refused by the recipient: {wire:?}");
        // And the JSON form of what the recipient sees reads back the same.
        let wire = wire.unwrap();
        let json = serde_json::to_string(&wire).expect("a notice serializes");
        assert_eq!(serde_json::from_str::<ReferralNotice>(&json).ok().as_ref(), Some(&wire));
    }
});
