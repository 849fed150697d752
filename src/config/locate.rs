//! Where in the file an error is: line and column of a byte offset, the
//! span of the value at a dotted key, and the key a syntax error belongs to.

use std::collections::HashMap;
use std::ops::Range;

/// 1-based line and column of a byte offset; 1:1 when unknown.
pub(super) fn line_col(text: &str, span: Option<Range<usize>>) -> (usize, usize) {
    let Some(span) = span else { return (1, 1) };
    let offset = char_floor(text, span.start);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The nearest char boundary at or before `offset`, within the text.
fn char_floor(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Byte span of the value at a dotted key path (`a.b[2].c`) in the document.
pub(super) fn key_span(text: &str, key: &str) -> Option<Range<usize>> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut span: Option<Range<usize>> = None;
    let mut segments = key.split('.').peekable();
    while let Some(seg) = segments.next() {
        let (name, index) = match seg.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let value = table.get(name)?;
        let mut value_ref = value;
        span = Some(value.span());
        if let Some(i) = index {
            let item = value.get_ref().as_array()?.get(i)?;
            span = Some(item.span());
            value_ref = item;
        }
        if segments.peek().is_some() {
            table = value_ref.get_ref().as_table()?;
        }
    }
    span
}

/// The dotted key a TOML syntax error at byte `offset` belongs to, read off
/// the lines as a person would: the key whose multi-line value is still open
/// there, else the key (or table header) on the error's line, else the table
/// that line is in. `None` when the line is at the top level and names
/// nothing.
///
/// toml's own recovering parser was tried first; on a broken line it drops
/// or misattributes exactly the key wanted here (`[redis` followed by
/// `url = 1` came back as a table named `url`), so lines are scanned instead.
pub(super) fn syntax_key(text: &str, offset: usize) -> Option<String> {
    let offset = char_floor(text, offset);
    let error_line = text[..offset].matches('\n').count();
    let mut table = String::new();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    let mut open: Option<(String, Value)> = None;
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = line.trim_start_matches('\u{feff}').trim_start();
        if let Some((key, value)) = &mut open {
            if n == error_line {
                return Some(key.clone());
            }
            value.feed(line);
            if value.is_closed() {
                open = None;
            }
            continue;
        }
        if line.starts_with('[') {
            let (name, is_array) = header(line);
            if n == error_line {
                return (!name.is_empty()).then_some(name);
            }
            table = if is_array {
                let count = arrays.entry(name.clone()).or_default();
                let indexed = format!("{name}[{count}]");
                *count += 1;
                indexed
            } else {
                name
            };
            continue;
        }
        let (key, rest) = split_key(line);
        let full = match (table.is_empty(), key.is_empty()) {
            (_, true) => table.clone(),
            (true, false) => key,
            (false, false) => format!("{table}.{key}"),
        };
        if n == error_line {
            return (!full.is_empty()).then_some(full);
        }
        if let Some(rest) = rest {
            let mut value = Value::default();
            value.feed(rest);
            if !value.is_closed() {
                open = Some((full, value));
            }
        }
    }
    None
}

/// `[a . "b"]` -> (`a.b`, false); `[[listeners]]` -> (`listeners`, true).
/// Whatever follows the name (a missing `]`, junk) is ignored.
fn header(line: &str) -> (String, bool) {
    let (inner, is_array) = match line.strip_prefix("[[") {
        Some(inner) => (inner, true),
        None => (line.strip_prefix('[').unwrap_or(line), false),
    };
    let end = inner.find([']', '#']).unwrap_or(inner.len());
    (dotted(&inner[..end]), is_array)
}

/// The key of a `key = value` line, dotted, and the text after its `=`.
/// A line with no `=` (`send_queue 3`) names its first word if that is a
/// bare key.
fn split_key(line: &str) -> (String, Option<&str>) {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '=') => return (dotted(&line[..i]), Some(&line[i + 1..])),
            (None, '#') => break,
            _ => {}
        }
    }
    let word = line.split([' ', '\t', '#']).next().unwrap_or("");
    let bare = word
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    (if bare { dotted(word) } else { String::new() }, None)
}

/// `a . "b c"` -> `a.b c`: segments trimmed, quotes dropped.
fn dotted(key: &str) -> String {
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut quote = None;
    for c in key.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '.') => segments.push(std::mem::take(&mut current)),
            (Some(_), c) => current.push(c),
            (None, c) if !c.is_whitespace() => current.push(c),
            _ => {}
        }
    }
    segments.push(current);
    if segments.iter().all(String::is_empty) {
        return String::new();
    }
    segments.join(".")
}

/// Just enough of TOML's value lexing to tell when a value spills onto the
/// next lines: open brackets and braces, multi-line strings.
#[derive(Default)]
struct Value {
    depth: usize,
    string: Option<Str>,
}

#[derive(Clone, Copy, PartialEq)]
enum Str {
    Basic,
    Literal,
    MultiBasic,
    MultiLiteral,
}

impl Value {
    fn feed(&mut self, line: &str) {
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            let triple = |q: u8| bytes.get(i..i + 3) == Some(&[q, q, q][..]);
            match self.string {
                None => match b {
                    b'#' => break,
                    b'[' | b'{' => self.depth += 1,
                    b']' | b'}' => self.depth = self.depth.saturating_sub(1),
                    b'"' if triple(b'"') => {
                        self.string = Some(Str::MultiBasic);
                        i += 2;
                    }
                    b'\'' if triple(b'\'') => {
                        self.string = Some(Str::MultiLiteral);
                        i += 2;
                    }
                    b'"' => self.string = Some(Str::Basic),
                    b'\'' => self.string = Some(Str::Literal),
                    _ => {}
                },
                Some(Str::Basic | Str::MultiBasic) if b == b'\\' => i += 1,
                Some(Str::Basic) if b == b'"' => self.string = None,
                Some(Str::Literal) if b == b'\'' => self.string = None,
                Some(Str::MultiBasic) if triple(b'"') => {
                    self.string = None;
                    i += 2;
                }
                Some(Str::MultiLiteral) if triple(b'\'') => {
                    self.string = None;
                    i += 2;
                }
                Some(_) => {}
            }
            i += 1;
        }
        // A one-line string cannot continue on the next line.
        if matches!(self.string, Some(Str::Basic | Str::Literal)) {
            self.string = None;
        }
    }

    fn is_closed(&self) -> bool {
        self.depth == 0 && matches!(self.string, None | Some(Str::Basic | Str::Literal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key for the syntax error toml itself reports in `text`.
    fn key_of(text: &str) -> Option<String> {
        let e = toml::de::DeTable::parse(text).expect_err(text);
        syntax_key(text, e.span().map_or(0, |s| s.start))
    }

    #[test]
    fn syntax_errors_name_the_broken_line() {
        for (text, key) in [
            ("[limits]\nsend_queue = = 3\n", "limits.send_queue"),
            ("[redis\nurl = 1\n", "redis"),
            ("[[listeners\nbind = \"a\"\n", "listeners"),
            ("[redis]]\nurl = \"x\"\n", "redis"),
            ("[ redis . x\n", "redis.x"),
            ("x = \n", "x"),
            ("[log]\nlevel = info\n", "log.level"),
            ("[limits]\nsend_queue 3\n", "limits.send_queue"),
            ("[redis]\nurl = \"redis://x\n", "redis.url"),
            ("[redis]\nurl = \"a\"\nurl = \"b\"\n", "redis.url"),
            ("[redis]\n[redis]\n", "redis"),
            ("[limits.x]\na . b = =\n", "limits.x.a.b"),
            ("[redis]\n\"pat terns\" = =\n", "redis.pat terns"),
            ("[limits]\n= 3\n", "limits"),
            (
                "[[listeners]]\nbind = \"a\"\n[[listeners]]\nbind = = 1\n",
                "listeners[1].bind",
            ),
            (
                "[redis]\npatterns = [\n  \"a:*\", # a comment with ] in it\n  \"b:*\"\n  \"c:*\"\n]\n",
                "redis.patterns",
            ),
            ("[redis]\npatterns = [\n  \"a:*\",\n", "redis.patterns"),
            (
                "[redis]\nurl = \"\"\"\n[not a header]\nx = 1\n",
                "redis.url",
            ),
            (
                "[redis]\npatterns = [\"a]\", 'b[']\nurl = = 1\n",
                "redis.url",
            ),
            (
                "[routing]\nfields = [\n \"a\",\n]\n[limits]\nsend_queue = = 3\n",
                "limits.send_queue",
            ),
            ("\u{feff}[log\n", "log"),
            ("[limits]\r\nsend_queue = = 3\r\n", "limits.send_queue"),
        ] {
            assert_eq!(key_of(text).as_deref(), Some(key), "{text:?}");
        }
    }

    #[test]
    fn nothing_to_name_at_the_top_level() {
        for text in ["= 3\n", "[]\n", "\"unterminated\n"] {
            assert_eq!(key_of(text), None, "{text:?}");
        }
    }

    #[test]
    fn line_col_counts_chars_and_survives_odd_offsets() {
        assert_eq!(line_col("ab\ncé = 1", Some(7..8)), (2, 4));
        // Inside the two bytes of `é`: the column of `é` itself.
        assert_eq!(line_col("ab\ncé = 1", Some(5..6)), (2, 2));
        assert_eq!(line_col("ab", Some(99..100)), (1, 3));
        assert_eq!(line_col("ab", None), (1, 1));
    }
}
