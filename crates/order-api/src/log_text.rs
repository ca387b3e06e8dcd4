//! Client-supplied text in log lines (the request path, a `client_ref`…): bounded in size, and
//! always recorded as a string value, never with `%` (Display).
//!
//! A string value is written quoted and escaped by the human format (`client_ref="a\" b=c\n"`)
//! and as a JSON string by the JSON format, so no client can add a field or a line; Display
//! would write it raw. The bound keeps a 60 KB path from making a 60 KB log line.

use std::borrow::Cow;

use orderbridge_domain::text::truncate_bytes;

/// The most bytes of one client-supplied value a log line carries.
pub const MAX_LOGGED_BYTES: usize = 256;

/// `s`, or its first [`MAX_LOGGED_BYTES`] bytes (on a character boundary) and `…`.
pub fn bounded(s: &str) -> Cow<'_, str> {
    if s.len() <= MAX_LOGGED_BYTES {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("{}…", truncate_bytes(s, MAX_LOGGED_BYTES)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_with_a_marker_short_text_is_kept() {
        assert_eq!(bounded("PO-1"), "PO-1");
        let long = "é".repeat(1000);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_LOGGED_BYTES + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert!(long.starts_with(cut.trim_end_matches('…')));
    }
}
