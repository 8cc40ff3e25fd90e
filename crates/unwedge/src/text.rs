//! Cutting text to a byte limit without splitting a character.

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
    fn cuts_between_characters_and_marks_the_cut() {
        assert_eq!(floor_char_boundary("aé", 2), 1);
        assert_eq!(floor_char_boundary("aé", 9), 3);
        assert_eq!(cut_marked("short", 5), "short");
        let cut = cut_marked("ab日本", 7);
        assert_eq!(cut, "ab…");
        assert!(cut.len() <= 7);
    }
}
