//! Text from libvirt shown on a terminal. A domain defined with virsh may
//! have any name: control characters (C0, C1, DEL), tabs and bidirectional
//! overrides in it would move the cursor, recolour the terminal or reorder
//! what follows. They are shown escaped (`\u{202e}`), the rest as it is.

use std::borrow::Cow;

fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every character that could change how a terminal shows the
/// rest escaped as `\u{XXXX}`.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`printable`] line by line: the line breaks stay, everything else that could
/// change how a terminal shows the rest is escaped (a document built from text
/// that came from elsewhere, such as a bundle's domain XML).
pub fn printable_lines(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c != '\n' && unsafe_char(c)) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.split('\n').map(printable).collect::<Vec<_>>().join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_tabs_and_bidi_overrides_are_escaped() {
        assert_eq!(printable("web-1"), "web-1");
        assert_eq!(printable("a\tb"), "a\\u{9}b");
        assert_eq!(printable("x\u{1b}[31m"), "x\\u{1b}[31m");
        assert_eq!(printable("c1\u{9b}2J"), "c1\\u{9b}2J");
        assert_eq!(printable("evil\u{202e}gpj.exe"), "evil\\u{202e}gpj.exe");
        assert_eq!(printable("\u{2067}x\u{2069}"), "\\u{2067}x\\u{2069}");
        assert_eq!(printable("日本語-ok"), "日本語-ok");
        assert_eq!(printable_lines("<a>\n  <b>x</b>\n</a>\n"), "<a>\n  <b>x</b>\n</a>\n");
        assert_eq!(printable_lines("a\u{1b}[2J\nb\tc\n"), "a\\u{1b}[2J\nb\\u{9}c\n");
    }
}
