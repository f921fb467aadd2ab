//! The protocol's rules for text fields: what counts as whitespace, and which
//! characters no text field may hold (PROTOCOL.md 6.3, "Text rules").
//!
//! Text in a notice or an acknowledgement ends up on someone's screen. A
//! terminal obeys control characters (ESC starts sequences that move the
//! cursor, rewrite lines or, with OSC 52, write the clipboard) and renders
//! bidirectional overrides by reordering what follows, so a sender could make
//! the on-call person read an address that is not the one it sent. The rule
//! is therefore a property of the protocol, checked by the sender before
//! sealing and by the recipient after opening, not a concern of one display.

use std::borrow::Cow;

/// Whitespace in the protocol's sense: the Unicode `White_Space` property
/// (what Rust's `char::is_whitespace` and `str::trim` implement). Of these
/// only the space, the newline (in free-text fields) and the Unicode spaces
/// such as U+00A0 can appear in valid text, since the others are controls.
pub fn is_whitespace(c: char) -> bool {
    c.is_whitespace()
}

/// Whether `c` is a bidirectional formatting character: the embeddings and
/// overrides U+202A..=U+202E, the isolates U+2066..=U+2069, and the marks
/// U+200E, U+200F and U+061C.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Whether `c` is a C0 or C1 control character (U+0000..=U+001F,
/// U+007F..=U+009F), newline included.
pub fn is_control(c: char) -> bool {
    c.is_control()
}

/// Whether `c` may never appear in a one-line text field: a control
/// character (newline included) or a bidirectional formatting character.
pub fn forbidden_in_line(c: char) -> bool {
    is_control(c) || is_bidi_control(c)
}

/// Whether `c` may never appear in a free-text field: like
/// [`forbidden_in_line`], except that a newline (U+000A) is allowed. A
/// carriage return is not: it moves the cursor back over what was printed.
pub fn forbidden_in_free_text(c: char) -> bool {
    c != '\n' && forbidden_in_line(c)
}

/// Whether `s` is acceptable as a one-line text field.
pub fn line_ok(s: &str) -> bool {
    !s.chars().any(forbidden_in_line)
}

/// Whether `s` is acceptable as a free-text field.
pub fn free_text_ok(s: &str) -> bool {
    !s.chars().any(forbidden_in_free_text)
}

/// The rule a one-line field breaks, as validation errors word it.
pub const LINE_RULE: &str = "contains a control character or a bidirectional formatting character";
/// The rule a free-text field breaks, as validation errors word it.
pub const FREE_TEXT_RULE: &str =
    "contains a control character other than newline, or a bidirectional formatting character";

/// `s` made safe for one line of a terminal: every control character
/// (newline included) and bidirectional formatting character becomes a
/// visible `\u{..}`, shown rather than obeyed. For text from elsewhere that
/// a program prints (the client's display, the tools' error messages).
pub fn escape_line(s: &str) -> Cow<'_, str> {
    escape(s, forbidden_in_line, "")
}

/// `s` made safe for a block of a terminal: like [`escape_line`], but a
/// newline is kept and the next line indented by `indent` and a bar, so that
/// a line of the text can never pass for a line the program printed itself.
pub fn escape_block<'a>(s: &'a str, indent: &str) -> Cow<'a, str> {
    escape(s, forbidden_in_free_text, &format!("\n{indent}| "))
}

fn escape<'a>(s: &'a str, forbidden: impl Fn(char) -> bool, newline: &str) -> Cow<'a, str> {
    if !s.chars().any(|c| c == '\n' || forbidden(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\n' && !forbidden(c) {
            out.push_str(newline);
        } else if forbidden(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A serde data error's `message` without the value it quotes (a value in
/// the wrong field, of a referral or a configuration, can be personal data or
/// a secret): the kind of value found and what was expected. Serde's own
/// messages have fixed shapes ("invalid type: {found}, expected {what}");
/// any other (a custom one) is replaced whole, since it might quote.
pub fn serde_problem_without_value(message: &str) -> String {
    // What was expected comes last and is written by our types, never by
    // the input: the last ", expected " starts it even if the value holds one.
    let expected = message.rfind(", expected ").map(|i| &message[i + ", expected ".len()..]);
    if let Some(found) = message.strip_prefix("invalid type: ") {
        // "string \"…\"", "integer `5`", "boolean `true`", "map", "sequence", "null".
        let kind = found.split([' ', ',']).next().unwrap_or("value");
        let kind = if found.starts_with("floating point") { "floating point number" } else { kind };
        let a = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
        return match expected {
            Some(what) => format!("wrong type: expected {what}, found {a} {kind} (not shown)"),
            None => format!("wrong type: found {a} {kind} (not shown)"),
        };
    }
    if message.starts_with("invalid value: ") {
        return match expected {
            Some(what) => format!("invalid value (not shown): expected {what}"),
            None => "invalid value (not shown)".into(),
        };
    }
    if message.starts_with("unknown variant ") {
        return match expected {
            Some(what) => format!("not one of the choices (value not shown): expected {what}"),
            None => "not one of the choices (value not shown)".into(),
        };
    }
    // The input's keys are the form's field names, or a misspelling of one.
    for quotes_a_field_name in ["missing field `", "unknown field `", "duplicate field `", "invalid length "] {
        if message.starts_with(quotes_a_field_name) {
            return message.to_owned();
        }
    }
    "invalid value (not shown)".into()
}

/// A TOML syntax error by line and column (from its byte `span` in
/// `text`), with the parser's `message` but without the quoted line that
/// the toml crate's own display adds (the line can hold a secret or a
/// personal identity number typed into the wrong place).
pub fn toml_syntax_problem(text: &str, span: Option<std::ops::Range<usize>>, message: &str) -> String {
    match span {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("TOML syntax error at line {line}, column {column}: {}", message.trim_end())
        }
        None => format!("TOML syntax error: {}", message.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_shown_not_obeyed() {
        assert_eq!(escape_line("plain åäö"), "plain åäö");
        assert_eq!(escape_line("a\u{1b}[2Kb\nc"), "a\\u{1b}[2Kb\\u{a}c");
        assert_eq!(escape_line("x\u{202e}y\u{9b}"), "x\\u{202e}y\\u{9b}");
        assert_eq!(escape_block("one\ntwo\u{1b}", "   "), "one\n   | two\\u{1b}");
        assert_eq!(escape_block("a\rb", ""), "a\\u{d}b");
    }

    #[test]
    fn escapes_and_overrides_are_refused_everywhere() {
        for bad in [
            "a\u{1b}[2Kb",
            "\u{1b}]52;c;aGk=\u{7}",
            "x\u{9b}31m",
            "r\u{202E}evil",
            "i\u{2066}x",
            "m\u{200F}",
            "\u{61C}",
        ] {
            assert!(!line_ok(bad), "{bad:?}");
            assert!(!free_text_ok(bad), "{bad:?}");
        }
        for bad in ["a\rb", "tab\there", "nul\0"] {
            assert!(!free_text_ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn newline_only_in_free_text() {
        assert!(free_text_ok("line one\nline two"));
        assert!(!line_ok("line one\nline two"));
        assert!(line_ok("Storgatan 1, 141 00 Huddinge — ÅÄÖ عربى"));
        assert!(is_whitespace('\u{A0}') && is_whitespace(' ') && !is_whitespace('x'));
    }
}
