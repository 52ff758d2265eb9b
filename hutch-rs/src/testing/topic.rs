//! Topic exchange routing, as RabbitMQ does it: whether a binding pattern
//! matches a routing key. What the in-memory test broker routes with; a
//! differential test checks it against a real node (tests/integration/
//! topic_matching.rs).
//!
//! Both are split on `.` into words, and words may be empty (`"a..b"` is
//! three words, the middle one empty). The empty string is no words at
//! all, so `"*"` does not match `""` while `"#"` does. In a pattern, a word
//! that is exactly `*` matches exactly one word and a word that is exactly
//! `#` matches any number of words, none included; `*` or `#` inside a
//! longer word is an ordinary character.

/// Whether a queue bound to a topic exchange with `pattern` receives a
/// message published with `routing_key`.
///
/// ```
/// use hutch_rs::testing::topic_matches;
///
/// assert!(topic_matches("orders.*", "orders.placed"));
/// assert!(topic_matches("orders.#", "orders"));
/// assert!(!topic_matches("orders.*", "orders.placed.eu"));
/// assert!(topic_matches("#", ""));
/// assert!(!topic_matches("*", ""));
/// ```
#[must_use]
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let pattern = words(pattern);
    let key = words(routing_key);
    // matched[j]: whether the pattern's words so far match the key's first
    // j words. One row per pattern word: O(pattern × key) time, no
    // backtracking whatever `#`s a pattern holds.
    let mut matched = vec![false; key.len() + 1];
    matched[0] = true;
    for word in &pattern {
        let mut next = vec![false; key.len() + 1];
        match *word {
            "#" => {
                // Zero or more words: reachable from any earlier match.
                let mut reachable = false;
                for j in 0..=key.len() {
                    reachable |= matched[j];
                    next[j] = reachable;
                }
            }
            "*" => {
                // One word: a match of j words becomes one of j + 1.
                next[1..].copy_from_slice(&matched[..key.len()]);
            }
            literal => {
                for j in 1..=key.len() {
                    next[j] = matched[j - 1] && key[j - 1] == literal;
                }
            }
        }
        matched = next;
    }
    matched[key.len()]
}

/// The words of a routing key or pattern: none for the empty string.
fn words(text: &str) -> Vec<&str> {
    if text.is_empty() {
        Vec::new()
    } else {
        text.split('.').collect()
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn words_wildcards_and_empty_words_match_as_rabbitmq_documents() {
        let cases = [
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.*", "a.b", true),
            ("a.*", "a", false),
            ("a.*", "a.b.c", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("#.c", "c", true),
            ("#.c", "a.b.c", true),
            ("#", "", true),
            ("*", "", false),
            ("", "", true),
            ("", "a", false),
            ("*", "a..b", false),
            ("a.*.b", "a..b", true),
            ("a.#.#.b", "a.b", true),
            ("a*", "ab", false),
            ("a*", "a*", true),
            ("#.#", "a.b.c.d", true),
            ("*.#.*", "a", false),
            ("*.#.*", "a.b", true),
            ("a.", "a.", true),
            ("a.", "a", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(
                topic_matches(pattern, key),
                expected,
                "{pattern:?} ~ {key:?}"
            );
        }
    }
}
