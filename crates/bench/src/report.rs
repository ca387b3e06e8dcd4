//! The human table (each figure beside its target, PASS/MISS) and the files of a run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// How a figure compares with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A performance target met.
    Pass,
    /// A performance target missed (the run still succeeds: timing is reported, not asserted).
    Miss,
    /// A correctness check that held.
    Ok,
    /// A correctness check that failed: the run fails.
    Fail,
    /// No target.
    Info,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Miss => "MISS",
            Self::Ok => "OK",
            Self::Fail => "FAIL",
            Self::Info => "",
        }
    }
}

/// Which side of the target is good.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    pub fn verdict(self, value: f64) -> Verdict {
        let met = match self {
            Goal::AtLeast(t) => value >= t,
            Goal::AtMost(t) => value <= t,
        };
        if met { Verdict::Pass } else { Verdict::Miss }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub metric: String,
    pub value: String,
    pub target: String,
    pub verdict: Verdict,
}

/// A titled table with context lines above it.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub title: String,
    pub context: Vec<String>,
    pub rows: Vec<Row>,
}

impl Table {
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            ..Self::default()
        }
    }

    pub fn context(&mut self, line: impl Into<String>) {
        self.context.push(line.into());
    }

    /// A figure without a target.
    pub fn info(&mut self, metric: impl Into<String>, value: impl Into<String>) {
        self.rows.push(Row {
            metric: metric.into(),
            value: value.into(),
            target: String::new(),
            verdict: Verdict::Info,
        });
    }

    /// A figure with a target; `target` is how the target reads in the table.
    pub fn target(
        &mut self,
        metric: impl Into<String>,
        value: f64,
        shown: impl Into<String>,
        goal: Goal,
        target: impl Into<String>,
    ) {
        self.rows.push(Row {
            metric: metric.into(),
            value: shown.into(),
            target: target.into(),
            verdict: goal.verdict(value),
        });
    }

    /// A correctness check whose target is zero.
    pub fn check(&mut self, metric: impl Into<String>, value: impl Into<String>, ok: bool) {
        self.check_target(metric, value, "= 0", ok);
    }

    /// A correctness check with its target spelled out (`all`, …).
    pub fn check_target(
        &mut self,
        metric: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        ok: bool,
    ) {
        self.rows.push(Row {
            metric: metric.into(),
            value: value.into(),
            target: target.into(),
            verdict: if ok { Verdict::Ok } else { Verdict::Fail },
        });
    }

    pub fn failed(&self) -> bool {
        self.rows.iter().any(|r| r.verdict == Verdict::Fail)
    }

    pub fn render(&self) -> String {
        let headers = ["metric", "measured", "target", ""];
        let cells: Vec<[&str; 4]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.metric.as_str(),
                    r.value.as_str(),
                    r.target.as_str(),
                    r.verdict.label(),
                ]
            })
            .collect();
        let mut widths = headers.map(str::len);
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cols: [&str; 4]| {
            let mut s = String::new();
            for (c, w) in cols.iter().zip(widths) {
                let pad = w.saturating_sub(c.chars().count());
                let _ = write!(s, "{c}{}  ", " ".repeat(pad));
            }
            s.trim_end().to_owned()
        };
        let mut out = format!("{}\n", self.title);
        for c in &self.context {
            let _ = writeln!(out, "  {c}");
        }
        out.push('\n');
        let _ = writeln!(out, "{}", line(headers));
        let _ = writeln!(out, "{}", "-".repeat(widths.iter().sum::<usize>() + 6));
        for row in cells {
            let _ = writeln!(out, "{}", line(row));
        }
        out
    }

    pub fn to_json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    json!({"metric": r.metric, "measured": r.value, "target": r.target,
                           "verdict": r.verdict.label()})
                })
                .collect(),
        )
    }
}

/// Writes `report.txt`, `report.json` and the charts into `out`; returns the paths written.
pub fn write(
    out: &Path,
    table: &Table,
    json: &Value,
    charts: &[(&str, String)],
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut save = |name: &str, body: &[u8]| -> Result<()> {
        let path = out.join(name);
        std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    save("report.txt", table.render().as_bytes())?;
    save(
        "report.json",
        serde_json::to_string_pretty(json)?.as_bytes(),
    )?;
    for (name, svg) in charts {
        save(name, svg.as_bytes())?;
    }
    Ok(written)
}

/// `12345.6` → `12,346`; for tables.
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_and_judges() {
        let mut t = Table::new("run");
        t.context("2 cores");
        t.target("orders/s", 900.0, "900", Goal::AtLeast(1000.0), ">= 1,000");
        t.target("p99", 0.5, "0.5 s", Goal::AtMost(1.0), "<= 1 s");
        t.check("lost", "0", true);
        t.info("note", "x");
        let text = t.render();
        assert!(text.contains("MISS"));
        assert!(text.contains("PASS"));
        assert!(text.contains("OK"));
        assert!(!t.failed());
        t.check("duplicated", "1", false);
        assert!(t.failed());
        assert_eq!(t.to_json().as_array().map(Vec::len), Some(5));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(-5000.0), "-5,000");
    }
}
