//! Room names: the rules a name must follow, and memorable random suggestions.
//!
//! A suggestion is four words, adjective, plural noun, verb and adverb, each
//! drawn from a list of 1024 that ships with the crate (`src/words/`): 40 bits
//! of entropy, so a name nobody shared cannot be guessed. Randomness comes
//! from the caller; the core has none of its own.

use std::sync::LazyLock;

use crate::ErrorCode;

/// Shortest and longest room name accepted.
pub const MIN_LEN: usize = 3;
pub const MAX_LEN: usize = 64;

/// Words per list: 10 bits each.
pub const LIST_LEN: usize = 1024;

struct Lists {
    adjectives: Vec<&'static str>,
    nouns: Vec<&'static str>,
    verbs: Vec<&'static str>,
    adverbs: Vec<&'static str>,
}

static LISTS: LazyLock<Lists> = LazyLock::new(|| Lists {
    adjectives: words(include_str!("words/adjectives.txt")),
    nouns: words(include_str!("words/nouns.txt")),
    verbs: words(include_str!("words/verbs.txt")),
    adverbs: words(include_str!("words/adverbs.txt")),
});

fn words(text: &'static str) -> Vec<&'static str> {
    text.lines()
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect()
}

/// A random name from 40 bits of `random` (the rest is ignored).
pub fn suggest(random: u64) -> String {
    let lists = &*LISTS;
    let pick = |list: &[&'static str], shift: u32| {
        // The lists have LIST_LEN words (checked by a test); `%` keeps a
        // shorter list from panicking.
        list[(random >> shift) as usize % LIST_LEN % list.len().max(1)]
    };
    format!(
        "{}-{}-{}-{}",
        pick(&lists.adjectives, 0),
        pick(&lists.nouns, 10),
        pick(&lists.verbs, 20),
        pick(&lists.adverbs, 30)
    )
}

/// Trims and lower-cases a room name and checks it: `MIN_LEN` to `MAX_LEN`
/// characters of `a`-`z`, `0`-`9` and `-`, not starting or ending with `-`.
pub fn normalize(raw: &str) -> Result<String, ErrorCode> {
    let name = raw.trim().to_ascii_lowercase();
    let valid = (MIN_LEN..=MAX_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(name)
    } else {
        Err(ErrorCode::BadRoomName)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_list_has_1024_distinct_safe_words() {
        let lists = &*LISTS;
        let mut all = HashSet::new();
        for list in [
            &lists.adjectives,
            &lists.nouns,
            &lists.verbs,
            &lists.adverbs,
        ] {
            assert_eq!(list.len(), LIST_LEN);
            for w in list {
                assert!(
                    w.bytes().all(|b| b.is_ascii_lowercase()),
                    "{w:?} is not plain a-z"
                );
                assert!(all.insert(*w), "{w:?} appears twice");
            }
        }
    }

    #[test]
    fn suggestions_use_all_forty_bits_and_are_valid_names() {
        let a = suggest(0);
        assert_eq!(normalize(&a), Ok(a.clone()));
        assert_eq!(a.split('-').count(), 4);
        // Each 10-bit field changes a different word.
        for shift in [0, 10, 20, 30] {
            let b = suggest(1 << shift);
            assert_ne!(a, b);
            let differing = a
                .split('-')
                .zip(b.split('-'))
                .filter(|(x, y)| x != y)
                .count();
            assert_eq!(differing, 1, "{a} vs {b}");
        }
        assert_eq!(suggest(1 << 40), a, "bits past 40 are ignored");
    }

    #[test]
    fn names_follow_the_rules() {
        assert_eq!(normalize("  Quiet-Otters "), Ok("quiet-otters".into()));
        assert_eq!(normalize("abc"), Ok("abc".into()));
        for bad in [
            "ab",
            "-abc",
            "abc-",
            "a b c",
            "räume",
            "abc/def",
            "",
            &"a".repeat(65),
        ] {
            assert_eq!(normalize(bad), Err(ErrorCode::BadRoomName), "{bad:?}");
        }
    }
}
