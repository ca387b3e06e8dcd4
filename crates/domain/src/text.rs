//! Cutting text to a length, on a character boundary: error messages into headers and status
//! reports, outside text into logs and mapped Salesforce fields. One home, so every place cuts
//! the same way and none can split a UTF-8 sequence (slicing `&s[..n]` can, and panics).

/// The first `max_chars` characters of `s` (all of it when shorter), without copying.
pub fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// The longest prefix of `s` of at most `max_bytes` bytes that ends on a character boundary:
/// for fields limited in bytes (an AMQP short string holds 255).
pub fn truncate_bytes(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let end = (0..=max_bytes)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_by_characters_never_inside_one() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("héllo", 5), "héllo");
        assert_eq!(truncate("héllo", 50), "héllo");
        assert_eq!(truncate("", 3), "");
        assert_eq!(truncate("abc", 0), "");
    }

    #[test]
    fn cuts_by_bytes_on_a_boundary() {
        // "é" is two bytes: a cut through it backs off to before it.
        assert_eq!(truncate_bytes("aé", 2), "a");
        assert_eq!(truncate_bytes("aé", 3), "aé");
        assert_eq!(truncate_bytes("abc", 2), "ab");
        assert_eq!(truncate_bytes("€", 1), "");
    }
}
