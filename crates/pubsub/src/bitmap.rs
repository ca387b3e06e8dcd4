//! The field bitmaps of Change Data Capture headers (`changedFields`, `nulledFields`,
//! `diffFields`).
//!
//! A plain `"0x…"` string is a hex number whose bit *i*, counted from the least-significant bit
//! (the last hex digit), marks top-level schema field *i* (field 0 is `ChangeEventHeader`).
//! `"P-0x…"` does the same for the fields of the nested record at top-level position P (compound
//! fields such as addresses). Schemas can have hundreds of fields, so the number is handled as a
//! digit string of any length (up to [`MAX_HEX_DIGITS`]), never as a machine integer.
//!
//! These strings arrive from outside, so parsing returns an error for anything malformed and
//! never panics.

use std::fmt;
use std::str::FromStr;

/// The longest hex number accepted: 16,384 fields, far beyond Salesforce's per-object limits;
/// anything longer is hostile or garbage.
pub const MAX_HEX_DIGITS: usize = 4096;

/// Longest decimal parent position accepted in `"P-0x…"`.
const MAX_PARENT_DIGITS: usize = 5;

/// One decoded bitmap string. Positions are sorted ascending, without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bitmap {
    /// `"0x…"`: positions of top-level schema fields.
    TopLevel(Vec<usize>),
    /// `"P-0x…"`: positions of fields inside the nested record at top-level position `parent`.
    Nested { parent: usize, fields: Vec<usize> },
}

/// Why a bitmap string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    #[error("empty bitmap string")]
    Empty,
    #[error("bitmap string has {0} hex digits, more than the {MAX_HEX_DIGITS} accepted")]
    TooLong(usize),
    #[error("bitmap string does not start with `0x` or `<position>-0x`")]
    MissingPrefix,
    #[error("bitmap string has no hex digits after `0x`")]
    NoDigits,
    #[error("bitmap string has a character that is not a hex digit")]
    NotHex,
    #[error("bitmap parent position is not a small decimal number")]
    BadParent,
    #[error("bitmap marks field {position}, but the schema has only {len} fields")]
    OutOfRange { position: usize, len: usize },
}

impl Bitmap {
    /// A top-level bitmap of these positions (sorted and deduplicated here).
    pub fn top_level(positions: impl IntoIterator<Item = usize>) -> Self {
        Bitmap::TopLevel(normalise(positions))
    }

    /// A nested bitmap of these field positions inside the record at top-level `parent`.
    pub fn nested(parent: usize, positions: impl IntoIterator<Item = usize>) -> Self {
        Bitmap::Nested {
            parent,
            fields: normalise(positions),
        }
    }

    /// The positions marked (top-level or inside the parent, depending on the variant).
    pub fn positions(&self) -> &[usize] {
        match self {
            Bitmap::TopLevel(p) => p,
            Bitmap::Nested { fields, .. } => fields,
        }
    }

    /// The string form: `"0x…"` or `"P-0x…"`, upper-case hex, whole bytes (two digits per byte),
    /// the way Salesforce writes them (`"0x650004E0"`, `"3-0x01"`).
    pub fn encode(&self) -> String {
        match self {
            Bitmap::TopLevel(p) => encode_hex(p),
            Bitmap::Nested { parent, fields } => format!("{parent}-{}", encode_hex(fields)),
        }
    }

    /// Parses `"0x…"` or `"P-0x…"` (hex digits in either case).
    pub fn parse(s: &str) -> Result<Self, BitmapError> {
        if s.is_empty() {
            return Err(BitmapError::Empty);
        }
        if let Some(hex) = strip_hex_prefix(s) {
            return Ok(Bitmap::TopLevel(decode_hex(hex)?));
        }
        let (parent, rest) = s.split_once('-').ok_or(BitmapError::MissingPrefix)?;
        if parent.is_empty()
            || parent.len() > MAX_PARENT_DIGITS
            || !parent.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(BitmapError::BadParent);
        }
        let parent: usize = parent.parse().map_err(|_| BitmapError::BadParent)?;
        let hex = strip_hex_prefix(rest).ok_or(BitmapError::MissingPrefix)?;
        Ok(Bitmap::Nested {
            parent,
            fields: decode_hex(hex)?,
        })
    }

    /// The names of the marked fields, given the field names at each position (of the top-level
    /// record, or of the nested record for [`Bitmap::Nested`]). A position past the end is an
    /// error: the bitmap was written with another schema.
    pub fn names<'a, S: AsRef<str>>(&self, fields: &'a [S]) -> Result<Vec<&'a str>, BitmapError> {
        self.positions()
            .iter()
            .map(|&position| {
                fields
                    .get(position)
                    .map(AsRef::as_ref)
                    .ok_or(BitmapError::OutOfRange {
                        position,
                        len: fields.len(),
                    })
            })
            .collect()
    }
}

impl fmt::Display for Bitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl FromStr for Bitmap {
    type Err = BitmapError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Bitmap::parse(s)
    }
}

fn normalise(positions: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut v: Vec<usize> = positions.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn strip_hex_prefix(s: &str) -> Option<&str> {
    s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))
}

fn encode_hex(positions: &[usize]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let bytes_needed = positions.iter().max().map_or(1, |max| max / 8 + 1);
    // Big-endian: the last byte holds bits 0..=7.
    let mut bytes = vec![0u8; bytes_needed];
    for &p in positions {
        bytes[bytes_needed - 1 - p / 8] |= 1 << (p % 8);
    }
    let mut out = String::with_capacity(2 + 2 * bytes_needed);
    out.push_str("0x");
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn decode_hex(hex: &str) -> Result<Vec<usize>, BitmapError> {
    if hex.is_empty() {
        return Err(BitmapError::NoDigits);
    }
    if hex.len() > MAX_HEX_DIGITS {
        return Err(BitmapError::TooLong(hex.len()));
    }
    let mut positions = Vec::new();
    // Walk from the last digit (bits 0..=3) towards the first.
    for (k, c) in hex.bytes().rev().enumerate() {
        let nibble = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return Err(BitmapError::NotHex),
        };
        for bit in 0..4 {
            if nibble & (1 << bit) != 0 {
                positions.push(4 * k + bit);
            }
        }
    }
    Ok(positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_examples() {
        assert_eq!(
            Bitmap::parse("0x650004E0"),
            Ok(Bitmap::TopLevel(vec![5, 6, 7, 10, 24, 26, 29, 30]))
        );
        assert_eq!(
            Bitmap::parse("3-0x01"),
            Ok(Bitmap::Nested {
                parent: 3,
                fields: vec![0]
            })
        );
        assert_eq!(
            Bitmap::top_level([5, 6, 7, 10, 24, 26, 29, 30]).encode(),
            "0x650004E0"
        );
        assert_eq!(Bitmap::nested(3, [0]).encode(), "3-0x01");
    }

    #[test]
    fn round_trips_including_more_than_64_fields() {
        let cases = [
            Bitmap::top_level([]),
            Bitmap::top_level([0]),
            Bitmap::top_level([1, 2, 3]),
            Bitmap::top_level([7, 8]),
            Bitmap::top_level([63, 64, 65, 200, 511]),
            Bitmap::nested(12, [0, 9, 70]),
        ];
        for b in cases {
            let s = b.encode();
            assert_eq!(Bitmap::parse(&s), Ok(b.clone()), "{s}");
            assert_eq!(s.parse::<Bitmap>(), Ok(b));
        }
        assert_eq!(Bitmap::top_level([200]).encode().len(), 2 + 2 * 26);
    }

    #[test]
    fn leading_zeros_and_lower_case_are_accepted() {
        assert_eq!(Bitmap::parse("0x0004e0"), Bitmap::parse("0x4E0"));
        assert_eq!(Bitmap::parse("0X2"), Ok(Bitmap::TopLevel(vec![1])));
        assert_eq!(Bitmap::parse("0x00"), Ok(Bitmap::TopLevel(vec![])));
    }

    #[test]
    fn names_follow_positions() {
        let fields = ["ChangeEventHeader", "Name", "Status", "Amount"];
        assert_eq!(
            Bitmap::parse("0x4").and_then(|b| b.names(&fields).map(|v| v.join(","))),
            Ok("Status".into())
        );
        assert_eq!(
            Bitmap::parse("0x10").and_then(|b| b.names(&fields).map(|v| v.len())),
            Err(BitmapError::OutOfRange {
                position: 4,
                len: 4
            })
        );
    }

    #[test]
    fn hostile_strings_are_errors() {
        let huge = format!("0x{}", "F".repeat(MAX_HEX_DIGITS + 1));
        let huge_parent = format!("{}-0x01", "9".repeat(40));
        let cases: &[(&str, BitmapError)] = &[
            ("", BitmapError::Empty),
            ("0x", BitmapError::NoDigits),
            ("3-0x", BitmapError::NoDigits),
            ("650004E0", BitmapError::MissingPrefix),
            ("x01", BitmapError::MissingPrefix),
            ("3-01", BitmapError::MissingPrefix),
            ("0xG1", BitmapError::NotHex),
            ("0x 1", BitmapError::NotHex),
            ("0x-1", BitmapError::NotHex),
            ("0x1é", BitmapError::NotHex),
            ("-0x01", BitmapError::BadParent),
            ("+3-0x01", BitmapError::BadParent),
            ("a-0x01", BitmapError::BadParent),
            ("3-3-0x01", BitmapError::MissingPrefix),
            (&huge, BitmapError::TooLong(MAX_HEX_DIGITS + 1)),
            (&huge_parent, BitmapError::BadParent),
        ];
        for (s, want) in cases {
            assert_eq!(Bitmap::parse(s).as_ref(), Err(want), "{s:?}");
        }
        // The largest accepted string decodes without trouble.
        let max = format!("0x{}", "F".repeat(MAX_HEX_DIGITS));
        assert_eq!(
            Bitmap::parse(&max).map(|b| b.positions().len()),
            Ok(4 * MAX_HEX_DIGITS)
        );
    }
}
