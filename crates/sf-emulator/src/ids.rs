//! Salesforce record ids: 15 case-sensitive characters (3-character key prefix naming the object,
//! then a unique part) plus a 3-character checksum that makes the 18-character form safe for
//! case-insensitive tools. The APIs always return the 18-character form.

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SUFFIX: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// The 3-character checksum of a 15-character id: one character per 5-character chunk, whose
/// bits say which characters of the chunk are upper-case letters.
fn checksum(id15: &[u8]) -> String {
    id15.chunks(5)
        .map(|chunk| {
            let flags = chunk
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_ascii_uppercase())
                .fold(0usize, |acc, (i, _)| acc | (1 << i));
            char::from(SUFFIX[flags])
        })
        .collect()
}

/// Builds the 18-character id number `n` of the object with key prefix `prefix`.
///
/// The base-62 digits are in ASCII order, so ids of one object sort in creation order (the
/// emulator's default query order, as unordered SOQL usually looks in a fresh org).
pub fn make_id(prefix: &str, n: u64) -> String {
    let mut digits = [b'0'; 9];
    let mut rest = n;
    for slot in digits.iter_mut().rev() {
        // `rest % 62` is below 62, so the index is in range.
        *slot = BASE62[(rest % 62) as usize];
        rest /= 62;
    }
    let mut id15 = String::with_capacity(18);
    id15.push_str(prefix);
    // "5g0" stands where a real id carries its pod and a reserved character.
    id15.push_str("5g0");
    id15.push_str(std::str::from_utf8(&digits).unwrap_or("000000000"));
    let sum = checksum(id15.as_bytes());
    id15 + &sum
}

/// Parses a 15- or 18-character id into its canonical 18-character form; `None` when it is not
/// an id at all (wrong length, characters, or checksum).
pub fn normalize(id: &str) -> Option<String> {
    let bytes = id.as_bytes();
    if !(bytes.len() == 15 || bytes.len() == 18) || !bytes.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let id15 = &id[..15];
    let sum = checksum(id15.as_bytes());
    if bytes.len() == 18 && !id[15..].eq_ignore_ascii_case(&sum) {
        return None;
    }
    Some(format!("{id15}{sum}"))
}

/// The key prefix (first three characters) of an id.
pub fn prefix(id: &str) -> &str {
    id.get(..3).unwrap_or("")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn checksum_matches_a_known_salesforce_id() {
        // A widely published pair: 001A0000006Vm9r -> 001A0000006Vm9rIAC.
        assert_eq!(normalize("001A0000006Vm9r").unwrap(), "001A0000006Vm9rIAC");
        assert_eq!(
            normalize("001A0000006Vm9rIAC").unwrap(),
            "001A0000006Vm9rIAC"
        );
        assert_eq!(normalize("001a0000006vm9riac"), None);
        assert_eq!(normalize("001A0000006Vm9rXXX"), None);
        assert_eq!(normalize("not-an-id"), None);
    }

    #[test]
    fn ids_are_18_chars_and_sort_in_creation_order() {
        let a = make_id("001", 61);
        let b = make_id("001", 62);
        assert_eq!(a.len(), 18);
        assert!(a < b);
        assert_eq!(normalize(&a).unwrap(), a);
        assert_eq!(prefix(&a), "001");
    }
}
