//! Key file text and RFC 3339 timestamps: the text a person can hand-edit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use referral_proto::keys::{AgencyKeyBundle, KeyPurpose, parse_signing_key_file, signing_key_file};
use referral_proto::time::Timestamp;

/// The grammar `Timestamp::parse_rfc3339` documents:
/// `YYYY-MM-DDTHH:MM:SS[.fff]` (1 to 9 fraction digits) then `Z` or `±HH:MM`.
fn rfc3339_shaped(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&n) {
            return false;
        }
        rest = &frac[n..];
    }
    match rest {
        b"Z" | b"z" => true,
        [sign, h1, h2, b':', m1, m2] => {
            matches!(sign, b'+' | b'-') && [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit())
        }
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    if let Ok(b) = AgencyKeyBundle::from_key_file(&text) {
        // What we parsed, we can write back and read again.
        let again = AgencyKeyBundle::from_key_file(&b.to_key_file()).expect("a bundle's own key file parses");
        assert_eq!(again.public(), b.public());
        assert_eq!(again.agency(), b.agency());
    }
    for purpose in [KeyPurpose::FederationDirectory, KeyPurpose::BrokerLog] {
        if let Ok(k) = parse_signing_key_file(&text, purpose) {
            let again = parse_signing_key_file(&signing_key_file(&k, purpose), purpose)
                .expect("a signing key's own key file parses");
            assert_eq!(again.verifying_key(), k.verifying_key());
        }
    }

    // Whole input as a timestamp, and each line (key files hold them per line).
    for candidate in std::iter::once(&*text).chain(text.lines().map(|l| l.split_once(':').map_or(l, |(_, v)| v).trim()))
    {
        if let Ok(t) = Timestamp::parse_rfc3339(candidate) {
            assert!(rfc3339_shaped(candidate), "accepted {candidate:?} as {t:?}");
            // Years 0000..=9999 print as they parse.
            if (-62_135_596_800_000..=253_402_300_799_999).contains(&t.0) {
                assert_eq!(Timestamp::parse_rfc3339(&t.to_string()), Ok(t));
            }
        }
    }
});
