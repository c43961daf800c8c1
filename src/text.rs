//! Text that came from an input file, made safe to show a person: control characters are
//! written as escapes, so a layer name can neither clear the terminal nor split a one-line
//! error, and text echoed in an error is clipped, so a megabyte-long CSV cell does not become
//! a megabyte-long message. JSON and CSV carry names as they are (their own quoting keeps
//! them intact); tables, charts and errors go through here.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The most bytes of input an error message echoes; longer text ends in an ellipsis.
pub const ECHO_BYTES: usize = 200;

/// `text` with each control character, and each character that reorders the text around it
/// (the bidirectional overrides), written as the escape a RON string would use: `\n`, `\r`,
/// `\t`, `\0`, or `\u{1b}`.
///
/// ```
/// assert_eq!(opcount::text::escape("a\nb\u{1b}[2J"), "a\\nb\\u{1b}[2J");
/// ```
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// `text` escaped as [`escape`] does and clipped to about [`ECHO_BYTES`] bytes, for echoing
/// input in an error message. Clipped text ends in `…` and says how long it was.
///
/// ```
/// let cell = "9".repeat(1_000_000);
/// assert!(opcount::text::echo(&cell).len() < 300);
/// ```
pub fn echo(text: &str) -> Cow<'_, str> {
    clip(text, ECHO_BYTES)
}

/// `text` escaped as [`escape`] does and clipped to about `max` bytes (see [`echo`]).
pub fn clip(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return escape(text);
    }
    let mut out = String::with_capacity(max + 32);
    for c in text.chars() {
        if out.len() >= max {
            break;
        }
        push_escaped(&mut out, c);
    }
    let _ = write!(out, "… ({} bytes)", text.len());
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\0' => out.push_str("\\0"),
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_characters_only() {
        assert_eq!(escape("dense1.relu"), "dense1.relu");
        assert!(matches!(escape("plain ünïcode"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\tb\r\0\u{7}\u{7f}\u{9b}"),
            "a\\tb\\r\\0\\u{7}\\u{7f}\\u{9b}"
        );
        assert_eq!(escape("x\u{202e}y"), "x\\u{202e}y");
    }

    #[test]
    fn echo_clips_long_text_at_a_character_boundary() {
        assert_eq!(echo("short"), "short");
        let long = "é".repeat(1000);
        let shown = echo(&long);
        assert!(shown.len() <= ECHO_BYTES + 32, "{shown}");
        assert!(shown.ends_with("… (2000 bytes)"), "{shown}");
        // Escapes count toward the limit.
        assert!(echo(&"\u{1b}".repeat(1000)).len() <= ECHO_BYTES + 32);
    }
}
