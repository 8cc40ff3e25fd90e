//! Cutting text to a byte limit without splitting a character, and showing what a worker
//! wrote without its control characters.

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

/// `text` with its control characters escaped (`\x1b`, `\x0d`, `\u{9b}`), tabs kept: what a
/// worker wrote (its output, its `STATUS=` text) shown in the supervisor's log, in text or
/// JSON, cannot drive the terminal it is read on. `text` itself when it has none.
pub(crate) fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let control = |c: char| c.is_control() && c != '\t';
    if !text.chars().any(control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !control(c) => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
