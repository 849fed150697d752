//! Where in the file an error is: line and column of a byte offset and the
//! span of the value at a dotted key.

use std::ops::Range;

/// 1-based line and column of a byte offset; 1:1 when unknown.
pub(super) fn line_col(text: &str, span: Option<Range<usize>>) -> (usize, usize) {
    let Some(span) = span else { return (1, 1) };
    let offset = span.start.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
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
