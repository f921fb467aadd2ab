//! Text from elsewhere made safe to print: the one place the CLI passes
//! every remote string through before it reaches a terminal.
//!
//! The protocol already forbids controls and bidirectional overrides in
//! notices and acknowledgements (`referral_proto::text`), but a terminal must
//! not depend on every other party having checked: directory names, receipt
//! details and the broker's error messages are written by others too. So
//! whatever is left is shown as a visible escape (`\u{1b}`), never obeyed.

use std::borrow::Cow;

use referral_proto::text::{self, forbidden_in_line};

/// `s` for one line of output: every control character (newline included)
/// and bidirectional formatting character becomes `\u{..}`.
pub fn safe(s: &str) -> Cow<'_, str> {
    text::escape_line(s)
}

/// `s` for a free-text block: like [`safe`], but a newline is kept and the
/// next line indented by `indent`, so that a line of the text can never
/// pass for a line the CLI printed itself (a fake "Address:").
pub fn safe_block<'a>(s: &'a str, indent: &str) -> Cow<'a, str> {
    text::escape_block(s, indent)
}

/// One line of JSON for a terminal or a pipe: serde_json already escapes
/// C0 controls inside strings; this escapes the C1 controls and the
/// bidirectional formatting characters it leaves raw, as `\uXXXX` (still
/// the same JSON value, since they can only occur inside strings).
pub fn json_line(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if !s.chars().any(forbidden_in_line) {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if forbidden_in_line(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_shown_not_obeyed() {
        assert_eq!(safe("plain åäö"), "plain åäö");
        assert_eq!(safe("a\u{1b}[2Kb\nc"), "a\\u{1b}[2Kb\\u{a}c");
        assert_eq!(safe("\u{1b}]52;c;aGk=\u{7}"), "\\u{1b}]52;c;aGk=\\u{7}");
        assert_eq!(safe("x\u{202e}y\u{9b}"), "x\\u{202e}y\\u{9b}");
        assert_eq!(safe_block("one\ntwo\u{1b}", "   "), "one\n   | two\\u{1b}");
        assert_eq!(safe_block("a\rb", ""), "a\\u{d}b");
    }

    #[test]
    fn json_stays_the_same_value_without_raw_controls() {
        let v = serde_json::json!({"name": "a\u{1b}b\u{9b}c\u{202e}d"});
        let line = json_line(&v);
        assert!(!line.chars().any(forbidden_in_line), "{line}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&line).unwrap(), v);
    }
}
