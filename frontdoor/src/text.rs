//! Text from the wire is Unicode: these helpers look at and cut text by characters, never at a
//! byte index that may fall inside one (a subject in Russian, Chinese or Japanese, an emoji).

/// `s` after `prefix`, compared ignoring ASCII case (`Re:`, `FWD:`, `cid:`), or `None` when `s`
/// does not start with it. Safe for any text: a prefix that would end inside a character is
/// simply not there.
pub fn strip_prefix_ignore_ascii_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// Whether `s` starts with `prefix`, ignoring ASCII case.
pub fn starts_with_ignore_ascii_case(s: &str, prefix: &str) -> bool {
    strip_prefix_ignore_ascii_case(s, prefix).is_some()
}

/// At most the first `max` characters of `s` (whole characters: never a cut inside one).
pub fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Text that starts with characters of more than one byte, as mail brings it.
    pub(crate) const WORLD: [&str; 7] = [
        "Привет, как дела?",
        "会议记录：第三季度",
        "お知らせ：メンテナンス",
        "مرحبا بالعالم",
        "🎉📎 party",
        "ab日",
        "日",
    ];

    #[test]
    fn prefixes_are_compared_on_characters() {
        for s in WORLD {
            assert!(!starts_with_ignore_ascii_case(s, "re:"), "{s}");
            assert!(!starts_with_ignore_ascii_case(s, "fwd:"), "{s}");
            assert_eq!(
                strip_prefix_ignore_ascii_case(s, "ab日"),
                s.strip_prefix("ab日")
            );
        }
        assert_eq!(
            strip_prefix_ignore_ascii_case("RE: Привет", "re:"),
            Some(" Привет")
        );
        assert_eq!(strip_prefix_ignore_ascii_case("Fwd:日", "fwd:"), Some("日"));
        assert_eq!(strip_prefix_ignore_ascii_case("Re", "re:"), None);
        assert_eq!(strip_prefix_ignore_ascii_case("", "re:"), None);
        assert_eq!(strip_prefix_ignore_ascii_case("ab", ""), Some("ab"));
        // A non-ASCII look-alike is not the ASCII prefix (U+212A KELVIN SIGN is not `k`).
        assert_eq!(strip_prefix_ignore_ascii_case("\u{212A}ey", "key"), None);
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_chars("ab日", 2), "ab");
        assert_eq!(truncate_chars("ab日", 3), "ab日");
        assert_eq!(truncate_chars("ab日", 99), "ab日");
        assert_eq!(truncate_chars("Привет", 3), "При");
        assert_eq!(truncate_chars("会议记录", 1), "会");
        assert_eq!(truncate_chars("お知らせ", 2), "お知");
        assert_eq!(truncate_chars("مرحبا", 4), "مرحب");
        assert_eq!(truncate_chars("🎉📎x", 1), "🎉");
        assert_eq!(truncate_chars("anything", 0), "");
        for s in WORLD {
            for n in 0..=s.chars().count() {
                let t = truncate_chars(s, n);
                assert_eq!(t.chars().count(), n, "{s} at {n}");
                assert!(s.starts_with(t));
            }
        }
    }
}
