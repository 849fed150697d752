//! Redis glob patterns: matching a channel the way Redis does (fred's
//! `Message` does not say which pattern matched) and the literal prefix that
//! is stripped to form the event name.

/// One PSUBSCRIBE pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    raw: String,
    prefix_len: usize,
}

impl Pattern {
    /// Wraps a pattern; any string is a valid Redis pattern.
    pub fn new(raw: &str) -> Self {
        let prefix_len = raw.find(['*', '?', '[', '\\']).unwrap_or(raw.len());
        Pattern {
            raw: raw.to_owned(),
            prefix_len,
        }
    }

    /// The pattern as configured.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Text before the first glob character (`*`, `?`, `[`, `\`).
    pub fn prefix(&self) -> &str {
        self.raw.get(..self.prefix_len).unwrap_or("")
    }

    /// Whether `channel` matches, with Redis' `stringmatchlen` rules.
    pub fn matches(&self, channel: &[u8]) -> bool {
        // Cheap reject before the glob walk: most channels share the prefix anyway.
        channel.starts_with(self.prefix().as_bytes()) && glob_match(self.raw.as_bytes(), channel)
    }
}

/// Redis glob match: `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\x`.
/// Iterative with single-star backtracking, so it is linear-ish and cannot
/// overflow the stack on hostile patterns.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if let Some(&c) = pattern.get(p) {
            match c {
                b'*' => {
                    // Collapse runs of stars.
                    while pattern.get(p) == Some(&b'*') {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, t));
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = match_class(pattern, p + 1, text[t]) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                _ => {
                    if c == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// Matches `byte` against the class starting after `[` at `start`.
/// Returns whether it matched and the index after the closing `]`
/// (an unterminated class runs to the end, as in Redis).
fn match_class(pattern: &[u8], start: usize, byte: u8) -> Option<(bool, usize)> {
    let mut i = start;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    loop {
        match pattern.get(i) {
            None => break,
            Some(b']') => {
                i += 1;
                break;
            }
            Some(b'\\') if i + 1 < pattern.len() => {
                if pattern[i + 1] == byte {
                    matched = true;
                }
                i += 2;
            }
            Some(&lo)
                if pattern.get(i + 1) == Some(&b'-')
                    && i + 2 < pattern.len()
                    && pattern[i + 2] != b']' =>
            {
                let hi = pattern[i + 2];
                let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                if (lo..=hi).contains(&byte) {
                    matched = true;
                }
                i += 3;
            }
            Some(&c) => {
                if c == byte {
                    matched = true;
                }
                i += 1;
            }
        }
    }
    Some((matched != negate, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Pattern::new(p).matches(t.as_bytes())
    }

    #[test]
    fn prefixes() {
        assert_eq!(Pattern::new("claude-studio:*").prefix(), "claude-studio:");
        assert_eq!(Pattern::new("a?b").prefix(), "a");
        assert_eq!(Pattern::new("x[ab]").prefix(), "x");
        assert_eq!(Pattern::new("x\\*y").prefix(), "x");
        assert_eq!(Pattern::new("exact").prefix(), "exact");
        assert_eq!(Pattern::new("*").prefix(), "");
    }

    #[test]
    fn glob_rules_match_redis() {
        assert!(m("claude-studio:*", "claude-studio:agent:status"));
        assert!(m("claude-studio:*", "claude-studio:"));
        assert!(!m("claude-studio:*", "claude-studio"));
        assert!(m("*", "a/b/c"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("h[ae]llo", "hello"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-c]llo", "hbllo"));
        assert!(m("h[c-a]llo", "hbllo"));
        assert!(!m("h[a-c]llo", "hdllo"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("**x", "abx"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exactly"));
    }

    #[test]
    fn hostile_patterns_terminate() {
        let p = "*a".repeat(50) + "b";
        let t = "a".repeat(200);
        assert!(!m(&p, &t));
        assert!(!m("[", "x"));
        assert!(m("[x", "x"));
        assert!(!m("\\", "x"));
    }
}
