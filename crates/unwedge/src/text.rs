//! Cutting text to a byte limit without splitting a character, and showing text from a
//! panic in a log line.

/// The largest index at most `i` (and at most `s.len()`) that is a character boundary of `s`:
/// where `s` may be cut to at most `i` bytes (std's `str::floor_char_boundary` is not stable).
pub(crate) fn floor_char_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// `s` cut to at most `max` bytes, the `…` marking a cut included (`s` itself when it fits).
pub(crate) fn cut_marked(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let end = floor_char_boundary(s, max.saturating_sub('…'.len_utf8()));
    format!("{}…", &s[..end]).into()
}

/// Shows `self.0` with its control characters, the Unicode line and paragraph separators
/// (`U+2028`, `U+2029`) and the marks that reorder text (`U+202A`–`U+202E`,
/// `U+2066`–`U+2069`) escaped as Rust escapes them (`\n`, `\u{1b}`), and a backslash shown
/// `\\` (so that the two characters `\` `n` are not read as an escaped line break): a
/// panic message (often built from a request) written to a log can then neither start a line
/// of its own (a forged log entry) nor drive the reader's terminal.
pub(crate) struct Escaped<'a>(pub(crate) &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        let mut rest = self.0;
        while let Some(i) = rest.find(needs_escape) {
            f.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().expect("found at i");
            for e in c.escape_default() {
                f.write_char(e)?;
            }
            rest = &rest[i + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\\' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{85}'
        )
}

/// For property tests: `cases` cases, drawn with XorShift (ChaCha, the default, is slow
/// unoptimized and took most of a dev build's run).
#[cfg(test)]
pub(crate) fn proptest_config(cases: u32) -> proptest::prelude::ProptestConfig {
    proptest::prelude::ProptestConfig {
        cases,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..proptest::prelude::ProptestConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_would_break_a_log_line() {
        let shown =
            Escaped("a\nb\r\x1b[31mred\u{7}\0 \u{202e}rtl\u{2028} naïve 日本 \"q\" \\").to_string();
        assert_eq!(
            shown,
            r#"a\nb\r\u{1b}[31mred\u{7}\u{0} \u{202e}rtl\u{2028} naïve 日本 "q" \\"#
        );
        assert_eq!(Escaped("plain").to_string(), "plain");
    }

    /// Found by review: a backslash was left as is, so a message holding the two characters
    /// `\` `n` was logged exactly as one holding a line break.
    #[test]
    fn a_backslash_is_escaped_so_it_reads_apart_from_an_escape() {
        let (typed, broken) = (Escaped("a\\nb").to_string(), Escaped("a\nb").to_string());
        assert_eq!(typed, r"a\\nb");
        assert_eq!(broken, r"a\nb");
        assert_ne!(typed, broken);
        assert_eq!(Escaped(r"C:\x\u{1b}").to_string(), r"C:\\x\\u{1b}");
        assert_ne!(
            Escaped(r"\u{1b}").to_string(),
            Escaped("\u{1b}").to_string()
        );
    }

    #[test]
    fn cuts_between_characters_and_marks_the_cut() {
        assert_eq!(floor_char_boundary("aé", 2), 1);
        assert_eq!(floor_char_boundary("aé", 9), 3);
        assert_eq!(cut_marked("short", 5), "short");
        let cut = cut_marked("ab日本", 7);
        assert_eq!(cut, "ab…");
        assert!(cut.len() <= 7);
    }
}
