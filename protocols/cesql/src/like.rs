//! `LIKE` patterns, compiled once at parse time and matched without allocating.

/// One element of a compiled `LIKE` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// A character that must match exactly (case-sensitive).
    Char(char),
    /// `_`: exactly one character.
    One,
    /// `%`: any run of characters, including none.
    Many,
}

/// A compiled `LIKE` pattern.
///
/// `%` matches any run of characters and `_` exactly one; `\%`, `\_` and `\\` stand for
/// a literal `%`, `_` and `\`. A backslash before anything else is a literal backslash,
/// so `'ab\c'` matches the text `ab\c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LikePattern {
    pieces: Vec<Piece>,
}

impl LikePattern {
    /// Compiles the text of a pattern literal.
    pub(crate) fn compile(pattern: &str) -> Self {
        let mut pieces = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            let piece = match c {
                '%' => {
                    // Consecutive `%` are one run; keeping one avoids needless backtracking.
                    if pieces.last() == Some(&Piece::Many) {
                        continue;
                    }
                    Piece::Many
                }
                '_' => Piece::One,
                '\\' => match chars.peek() {
                    Some(&next @ ('%' | '_' | '\\')) => {
                        chars.next();
                        Piece::Char(next)
                    }
                    _ => Piece::Char('\\'),
                },
                other => Piece::Char(other),
            };
            pieces.push(piece);
        }
        Self { pieces }
    }

    /// Whether `text` matches the whole pattern.
    ///
    /// Greedy matching that remembers only the last `%`: O(len(text) × len(pattern)) in the
    /// worst case, no recursion, no allocation.
    pub(crate) fn matches(&self, text: &str) -> bool {
        let pieces = &self.pieces;
        let (mut p, mut t) = (0usize, 0usize); // piece index, byte offset in text
        let mut resume: Option<(usize, usize)> = None; // (piece after last `%`, text offset)
        loop {
            let next_char = text[t..].chars().next();
            let advanced = match (pieces.get(p), next_char) {
                (None, None) => return true,
                (Some(Piece::Many), _) => {
                    p += 1;
                    resume = Some((p, t));
                    continue;
                }
                (Some(Piece::One), Some(c)) => Some(c),
                (Some(Piece::Char(want)), Some(c)) if *want == c => Some(c),
                _ => None,
            };
            if let Some(c) = advanced {
                p += 1;
                t += c.len_utf8();
                continue;
            }
            // Mismatch: let the last `%` swallow one more character, or give up.
            let Some((resume_p, resume_t)) = resume else {
                return false;
            };
            let Some(c) = text[resume_t..].chars().next() else {
                return false;
            };
            let resume_t = resume_t + c.len_utf8();
            resume = Some((resume_p, resume_t));
            p = resume_p;
            t = resume_t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_table() {
        let cases = [
            ("abc", "abc", true),
            ("abc", "abd", false),
            ("abc", "ab", false),
            ("ab", "abc", false),
            ("", "", true),
            ("", "%", true),
            ("", "_", false),
            ("abc", "%", true),
            ("abc", "%%%", true),
            ("abc", "a%", true),
            ("abc", "%c", true),
            ("abc", "%b%", true),
            ("abc", "%d%", false),
            ("azzzbzzzc", "a%b%c", true),
            ("ab.cde", ".%.%.", false),
            (".ab.cde.", ".%.%.", true),
            ("abc", "a_c", true),
            ("ac", "a_c", false),
            ("aéc", "a_c", true),
            ("ééé", "%é", true),
            ("a_b", "a\\_b", true),
            ("axb", "a\\_b", false),
            ("a%b", "a\\%b", true),
            ("axxb", "a\\%b", false),
            ("a\\b", "a\\\\b", true),
            ("ab\\c", "ab\\c", true),
            ("abc", "ab\\c", false),
            ("ab\\", "ab\\", true),
            ("ABC", "abc", false),
            ("mississippi", "%iss%ppi", true),
            ("mississippi", "%iss%ppix", false),
            ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaab", "%a%a%a%a%a%a%c", false),
        ];
        for (text, pattern, expected) in cases {
            let compiled = LikePattern::compile(pattern);
            assert_eq!(
                compiled.matches(text),
                expected,
                "{text:?} LIKE {pattern:?}"
            );
        }
    }

    #[test]
    fn consecutive_percent_signs_collapse() {
        assert_eq!(LikePattern::compile("a%%%b").pieces.len(), 3);
    }
}
