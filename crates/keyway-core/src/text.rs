//! Text cut to a size, for what is kept of outside input (an audited path, a
//! statement, a tool's definition).

/// The longest start of `text` that is at most `max_bytes` long and ends at a
/// character's edge: a cut that never splits UTF-8 (slicing at a byte count does, and
/// panics).
pub fn prefix(text: &str, max_bytes: usize) -> &str {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The first `max_chars` characters of `text` (all of it when it has no more).
pub fn first_chars(text: &str, max_chars: usize) -> &str {
    if text.len() <= max_chars {
        // No more bytes than that, so no more characters.
        return text;
    }
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_character_across_the_cut_is_left_out_whole() {
        assert_eq!(prefix("abé", 3), "ab");
        assert_eq!(prefix("abé", 4), "abé");
        assert_eq!(prefix("🔑x", 3), "");
        assert_eq!(prefix("short", 512), "short");
        assert_eq!(prefix("", 0), "");
    }

    #[test]
    fn characters_are_counted_not_bytes() {
        assert_eq!(first_chars("abé", 2), "ab");
        assert_eq!(first_chars("ééé", 2), "éé");
        assert_eq!(first_chars("ééé", 3), "ééé");
        assert_eq!(first_chars("short", 200), "short");
        assert_eq!(first_chars("abc", 0), "");
    }

    proptest! {
        /// A start of the text, within the size, and shorter than it by less than one
        /// character (UTF-8's longest is four bytes).
        #[test]
        fn it_is_the_longest_start_within_the_size(text in "\\PC*", max in 0usize..64) {
            let p = prefix(&text, max);
            prop_assert!(text.starts_with(p));
            prop_assert!(p.len() <= max);
            prop_assert!(p.len() == text.len() || max - p.len() < 4);
        }

        /// What `chars().take(n)` gives, without building it a character at a time.
        #[test]
        fn it_is_the_first_characters(text in "\\PC*", max in 0usize..64) {
            let taken: String = text.chars().take(max).collect();
            prop_assert_eq!(first_chars(&text, max), taken.as_str());
        }
    }
}
