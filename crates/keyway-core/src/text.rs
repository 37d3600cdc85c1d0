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
    }
}
