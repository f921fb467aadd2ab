//! Timestamps: Unix milliseconds (UTC), written as RFC 3339 for people.
//!
//! The protocol carries every time as signed 64-bit Unix milliseconds. This
//! module converts to and from RFC 3339 (`2026-11-29T08:15:00Z`) without a
//! calendar dependency; it never reads the clock (callers pass `now`).

use std::fmt;

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Timestamp(pub i64);

/// A timestamp text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 time such as 2026-11-29T08:15:00Z")]
pub struct TimeError(pub String);

impl Timestamp {
    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn plus_millis(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fff]` followed by `Z` or `±HH:MM`.
    pub fn parse_rfc3339(s: &str) -> Result<Self, TimeError> {
        parse(s).ok_or_else(|| TimeError(s.to_owned()))
    }
}

fn parse(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) { t.parse().ok() } else { None }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ => {
            let ob = rest.as_bytes();
            // Digits only: `str::parse` alone would also take "+1" or "-1".
            if ob.len() != 6
                || !matches!(ob[0], b'+' | b'-')
                || ob[3] != b':'
                || ![ob[1], ob[2], ob[4], ob[5]].iter().all(u8::is_ascii_digit)
            {
                return None;
            }
            let h: i64 = rest[1..3].parse().ok()?;
            let m: i64 = rest[4..6].parse().ok()?;
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if ob[0] == b'-' { -1 } else { 1 };
            sign * (h * 60 + m)
        }
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(Timestamp(secs * 1000 + millis))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Whether `y-m-d` is a real calendar date.
pub(crate) fn is_valid_date(y: i64, m: i64, d: i64) -> bool {
    (1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m)
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC; milliseconds only when not zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.rem_euclid(1000);
        let secs = self.0.div_euclid(1000);
        let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        write!(f, "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}", sod / 3600, sod % 3600 / 60, sod % 60)?;
        if ms != 0 {
            write!(f, ".{ms:03}")?;
        }
        f.write_str("Z")
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        // Never quote the text: a value in the wrong field can be personal data.
        Timestamp::parse_rfc3339(&s).map_err(|_| {
            serde::de::Error::invalid_value(
                serde::de::Unexpected::Other("text that is not an RFC 3339 time"),
                &"an RFC 3339 time such as 2026-11-29T08:15:00Z",
            )
        })
    }
}

/// On the wire (JSON) a time is what `Serialize` writes: an RFC 3339 string.
#[cfg(feature = "schema")]
impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "An RFC 3339 time such as 2026-11-29T08:15:00Z (a UTC offset such as +01:00 is accepted).",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_times() {
        assert_eq!(Timestamp::parse_rfc3339("1970-01-01T00:00:00Z"), Ok(Timestamp(0)));
        assert_eq!(Timestamp::parse_rfc3339("2026-11-29T08:15:00Z"), Ok(Timestamp(1_795_940_100_000)));
        assert_eq!(Timestamp::parse_rfc3339("2026-11-29T09:15:00.5+01:00"), Ok(Timestamp(1_795_940_100_500)));
        assert_eq!(Timestamp(1_795_940_100_500).to_string(), "2026-11-29T08:15:00.500Z");
        for bad in ["2026-02-29T00:00:00Z", "2026-11-29 08:15:00Z", "2026-11-29T08:15:00", "2026-13-01T00:00:00Z"] {
            assert_eq!(Timestamp::parse_rfc3339(bad), Err(TimeError(bad.into())), "{bad}");
        }
    }

    #[test]
    fn offset_must_be_digits() {
        // Found by fuzz/ (key_file): the offset's hours and minutes went
        // through `str::parse`, which takes a sign, so "++1:00" was +01:00
        // and "+-1:00" was -01:00.
        for bad in [
            "0726-11-29T09:07:00.5++1:00",
            "2026-11-29T08:15:00+-1:00",
            "2026-11-29T08:15:00-+1:00",
            "2026-11-29T08:15:00+01:+5",
            "2026-11-29T08:15:00+01:-5",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(bad), Err(TimeError(bad.into())), "{bad}");
        }
        assert_eq!(Timestamp::parse_rfc3339("2026-11-29T07:10:00-01:05"), Ok(Timestamp(1_795_940_100_000)));
    }

    proptest! {
        #[test]
        fn display_parses_back(ms in -62_135_596_800_000i64..253_402_300_799_999i64) {
            let t = Timestamp(ms);
            prop_assert_eq!(Timestamp::parse_rfc3339(&t.to_string()), Ok(t));
        }
    }
}
