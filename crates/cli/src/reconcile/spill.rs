//! An external sort for what a Bulk query returns: Salesforce gives a query job's rows in no
//! order, and the merge with Postgres needs each range's records sorted by the order id their
//! external id names. Rows are buffered up to [`SORT_BUFFER_BYTES`], sorted, and written to an
//! anonymous temporary file (a *run*), noting where each range's rows start and end; a range
//! is then read as a k-way merge of its segment of every run.
//!
//! ```text
//!  result pages ─► Sorter::push ─► buffer ─(full)─► sort ─► run file: [range 0 | range 1 | …]
//!                                                              │ one segment per range
//!  Sorted::reader(range) ◄── k-way merge of that range's segments (one per run) ◄──┘
//! ```
//!
//! Memory is the buffer plus a read buffer per run, whatever the org's size; disk is about the
//! rows' text. The files are unlinked as soon as they are created, so nothing is left behind,
//! whatever ends the process. Rows whose external id is not one of ours sort first, in the
//! first range, where the merge counts them as ignored.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use uuid::Uuid;

use super::salesforce::{Kind, Range, Row};

/// Rows buffered before a run is written: the memory a sort holds.
pub(crate) const SORT_BUFFER_BYTES: usize = 32 * 1024 * 1024;
/// What a buffered row costs beyond its text (three `String`s, a `Vec`, the key).
const ROW_OVERHEAD: usize = 120;
/// Bytes read from a run file at a time, per run being merged.
const READ_CHUNK: usize = 64 * 1024;
/// What a value is, before its text (none for null).
const NULL_TAG: u8 = 0;
const TEXT_TAG: u8 = 1;
const NUMBER_TAG: u8 = 2;

/// Rows of one object, sorted into runs as they come.
pub(crate) struct Sorter {
    kind: Kind,
    ranges: Vec<Range>,
    limit: usize,
    buffer: Vec<(Option<Uuid>, Row)>,
    buffered: usize,
    runs: Vec<Run>,
}

/// One sorted file and where each range's rows are in it.
struct Run {
    file: Arc<File>,
    /// Per range: byte offsets `[start, end)` and the row count.
    segments: Vec<(u64, u64, u64)>,
}

/// Every run of an object, ready to be read range by range.
pub(crate) struct Sorted {
    kind: Kind,
    runs: Vec<Run>,
}

impl Sorter {
    /// A sorter for `kind`'s rows, split into `ranges` (in ascending order, covering all ids).
    pub(crate) fn new(kind: Kind, ranges: Vec<Range>) -> Self {
        Self::with_limit(kind, ranges, SORT_BUFFER_BYTES)
    }

    pub(crate) fn with_limit(kind: Kind, ranges: Vec<Range>, limit: usize) -> Self {
        Self {
            kind,
            ranges,
            limit,
            buffer: Vec::new(),
            buffered: 0,
            runs: Vec::new(),
        }
    }

    /// Adds rows; writes a run when the buffer is full.
    pub(crate) fn push(&mut self, rows: Vec<Row>) -> io::Result<()> {
        for row in rows {
            self.buffered += ROW_OVERHEAD
                + row.0.len()
                + row.1.len()
                + row.2.iter().map(cell_len).sum::<usize>();
            self.buffer.push((self.kind.order_of(&row.0), row));
            if self.buffered >= self.limit {
                self.spill()?;
            }
        }
        Ok(())
    }

    /// Writes what is buffered as the last run.
    pub(crate) fn finish(mut self) -> io::Result<Sorted> {
        if !self.buffer.is_empty() {
            self.spill()?;
        }
        Ok(Sorted {
            kind: self.kind,
            runs: self.runs,
        })
    }

    fn spill(&mut self) -> io::Result<()> {
        // `None` (not ours) sorts first: it belongs to the first range.
        self.buffer.sort_unstable_by_key(|(key, _)| *key);
        let file = anonymous_file()?;
        let mut out = BufWriter::with_capacity(READ_CHUNK, &file);
        let mut offset = 0_u64;
        let mut segments = Vec::with_capacity(self.ranges.len());
        let mut rows = std::mem::take(&mut self.buffer).into_iter().peekable();
        for (n, range) in self.ranges.iter().enumerate() {
            let last = n + 1 == self.ranges.len();
            let (start, mut count) = (offset, 0);
            while let Some((key, _)) = rows.peek() {
                let below_end = match (key, range.1) {
                    (_, None) => true,
                    (None, Some(_)) => true,
                    (Some(k), Some(end)) => *k < end,
                };
                if !below_end && !last {
                    break;
                }
                let Some((_, row)) = rows.next() else { break };
                offset += write_row(&mut out, &row)?;
                count += 1;
            }
            segments.push((start, offset, count));
        }
        out.flush()?;
        drop(out);
        self.runs.push(Run {
            file: Arc::new(file),
            segments,
        });
        self.buffered = 0;
        Ok(())
    }
}

impl Sorted {
    /// How many rows range `range` holds.
    pub(crate) fn count(&self, range: usize) -> u64 {
        self.runs
            .iter()
            .filter_map(|r| r.segments.get(range))
            .map(|s| s.2)
            .sum()
    }

    /// Range `range`'s rows in order.
    pub(crate) fn reader(&self, range: usize) -> Merged {
        let mut segments: Vec<Segment> = self
            .runs
            .iter()
            .filter_map(|run| {
                let &(start, end, _) = run.segments.get(range)?;
                Some(Segment {
                    file: Arc::clone(&run.file),
                    next: start,
                    end,
                    buf: Vec::new(),
                    at: 0,
                })
            })
            .collect();
        segments.retain(|s| s.next < s.end);
        Merged {
            kind: self.kind,
            segments,
            heads: Vec::new(),
            heap: BinaryHeap::new(),
            started: false,
        }
    }
}

/// A k-way merge of a range's segments.
pub(crate) struct Merged {
    kind: Kind,
    segments: Vec<Segment>,
    heads: Vec<Option<Row>>,
    heap: BinaryHeap<Reverse<(Option<Uuid>, usize)>>,
    started: bool,
}

impl Merged {
    /// The next row, in order; `None` at the end.
    pub(crate) fn next_row(&mut self) -> io::Result<Option<Row>> {
        if !self.started {
            self.started = true;
            for n in 0..self.segments.len() {
                let head = self.segments[n].next_row()?;
                if let Some(row) = &head {
                    self.heap.push(Reverse((self.kind.order_of(&row.0), n)));
                }
                self.heads.push(head);
            }
        }
        let Some(Reverse((_, n))) = self.heap.pop() else {
            return Ok(None);
        };
        let row = self.heads[n].take();
        let next = self.segments[n].next_row()?;
        if let Some(r) = &next {
            self.heap.push(Reverse((self.kind.order_of(&r.0), n)));
        }
        self.heads[n] = next;
        Ok(row)
    }
}

/// Part of a run file, read from `next` to `end` through its own buffer (positioned reads, so
/// several ranges read one file at once).
struct Segment {
    file: Arc<File>,
    next: u64,
    end: u64,
    buf: Vec<u8>,
    at: usize,
}

impl Segment {
    fn next_row(&mut self) -> io::Result<Option<Row>> {
        if self.at == self.buf.len() && self.next >= self.end {
            return Ok(None);
        }
        let ext = self.string()?;
        let id = self.string()?;
        let n = self.u32()?;
        let mut values = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let tag = self.bytes(1)?[0];
            values.push(match tag {
                NULL_TAG => Value::Null,
                TEXT_TAG => Value::String(self.string()?),
                NUMBER_TAG => {
                    let text = self.string()?;
                    text.parse::<serde_json::Number>()
                        .map_or(Value::String(text), Value::Number)
                }
                _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "bad value tag")),
            });
        }
        Ok(Some((ext, id, values)))
    }

    fn string(&mut self) -> io::Result<String> {
        let len = self.u32()?;
        let bytes = self.bytes(len as usize)?;
        String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn u32(&mut self) -> io::Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bytes(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.at == self.buf.len() {
                self.refill()?;
            }
            let take = (n - out.len()).min(self.buf.len() - self.at);
            out.extend_from_slice(&self.buf[self.at..self.at + take]);
            self.at += take;
        }
        Ok(out)
    }

    fn refill(&mut self) -> io::Result<()> {
        let left = self.end.saturating_sub(self.next);
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a sorted run ends inside a row",
            ));
        }
        let want = usize::try_from(left).unwrap_or(READ_CHUNK).min(READ_CHUNK);
        self.buf.resize(want, 0);
        self.file.read_exact_at(&mut self.buf, self.next)?;
        self.next += want as u64;
        self.at = 0;
        Ok(())
    }
}

fn cell_len(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        _ => 8,
    }
}

/// Writes a row: external id, record id, the number of values, each value tagged (null, text,
/// or a number kept as its JSON text so that it reads back as the same number).
fn write_row(out: &mut impl Write, (ext, id, values): &Row) -> io::Result<u64> {
    let mut written = write_str(out, ext)? + write_str(out, id)?;
    let n = u32::try_from(values.len()).map_err(|_| too_long())?;
    out.write_all(&n.to_le_bytes())?;
    written += 4;
    for value in values {
        let (tag, text) = match value {
            Value::Null => (NULL_TAG, None),
            Value::Number(n) => (NUMBER_TAG, Some(n.to_string())),
            Value::String(s) => (TEXT_TAG, Some(s.clone())),
            other => (TEXT_TAG, Some(other.to_string())),
        };
        out.write_all(&[tag])?;
        written += 1;
        if let Some(text) = text {
            written += write_str(out, &text)?;
        }
    }
    Ok(written)
}

fn write_str(out: &mut impl Write, s: &str) -> io::Result<u64> {
    let len = u32::try_from(s.len()).map_err(|_| too_long())?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(s.as_bytes())?;
    Ok(4 + u64::from(len))
}

fn too_long() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "a cell is too long to sort")
}

/// A new file in the temporary directory (`TMPDIR`), unlinked at once: it lives as long as
/// its handle, and no crash leaves it behind.
fn anonymous_file() -> io::Result<File> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir();
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path: PathBuf = dir.join(format!(
            "orderbridge-reconcile-{}-{n}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => {
                std::fs::remove_file(&path)?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + n)
    }

    fn row(ext: String, n: usize) -> Row {
        let value = match n % 3 {
            0 => Value::Null,
            1 => serde_json::json!(n as f64 + 0.25),
            _ => Value::String(format!("v{n}")),
        };
        (
            ext,
            format!("rec{n}"),
            vec![value, Value::String(String::new())],
        )
    }

    fn read_all(sorted: &Sorted, range: usize) -> Vec<Row> {
        let mut out = Vec::new();
        let mut merged = sorted.reader(range);
        while let Some(row) = merged.next_row().unwrap() {
            out.push(row);
        }
        out
    }

    #[test]
    fn rows_come_back_sorted_by_range_across_many_runs() {
        let ranges = vec![
            (None, Some(id(300))),
            (Some(id(300)), Some(id(700))),
            (Some(id(700)), None),
        ];
        // A tiny buffer: a run every few rows.
        let mut sorter = Sorter::with_limit(Kind::Item, ranges, 2_000);
        let mut want = Vec::new();
        for n in 0..1_000_usize {
            // A scrambled order, two items per order, and rows not ours.
            let order = id(((n * 7_919) % 1_000) as u128);
            let ext = match n % 10 {
                9 => format!("not-ours-{n}"),
                _ => format!("{order}-{}", n % 2 + 1),
            };
            want.push(row(ext, n));
        }
        for chunk in want.chunks(37) {
            sorter.push(chunk.to_vec()).unwrap();
        }
        let sorted = sorter.finish().unwrap();
        assert!(sorted.runs.len() > 10, "{} runs", sorted.runs.len());

        let mut seen = Vec::new();
        for (n, (from, to)) in [
            (None, Some(id(300))),
            (Some(id(300)), Some(id(700))),
            (Some(id(700)), None),
        ]
        .into_iter()
        .enumerate()
        {
            let rows = read_all(&sorted, n);
            assert_eq!(rows.len() as u64, sorted.count(n));
            let keys: Vec<_> = rows.iter().map(|r| Kind::Item.order_of(&r.0)).collect();
            assert!(
                keys.windows(2).all(|w| w[0] <= w[1]),
                "range {n} out of order"
            );
            for key in keys.iter().flatten() {
                assert!(from.is_none_or(|f| *key >= f) && to.is_none_or(|t| *key < t));
            }
            // Rows not ours are all in the first range.
            assert_eq!(keys.iter().any(Option::is_none), n == 0);
            seen.extend(rows);
        }
        let key = |r: &Row| (r.0.clone(), r.1.clone());
        seen.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(seen, want, "every row exactly once, values intact");
    }

    #[test]
    fn an_empty_sort_reads_nothing() {
        let sorted = Sorter::new(Kind::Order, vec![(None, None)])
            .finish()
            .unwrap();
        assert_eq!(sorted.count(0), 0);
        assert!(read_all(&sorted, 0).is_empty());
    }
}
