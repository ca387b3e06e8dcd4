//! Percentiles of a sample.

use serde_json::{Value, json};

/// Order statistics of a sample (nearest rank: p99 is a value that was measured).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// `None` for an empty sample. NaNs are dropped.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[percentile_index(v.len(), p)];
        Some(Self {
            n: v.len(),
            min: v[0],
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        })
    }

    pub fn to_json(self) -> Value {
        json!({"n": self.n, "min": round(self.min), "p50": round(self.p50), "p90": round(self.p90),
               "p99": round(self.p99), "max": round(self.max), "mean": round(self.mean)})
    }
}

/// Nearest-rank index of percentile `p` (0..=1) in a sorted sample of `len` > 0 values.
pub fn percentile_index(len: usize, p: f64) -> usize {
    let rank = (p * len as f64).ceil() as usize;
    rank.clamp(1, len) - 1
}

/// Rounds to 0.1 for JSON output: the measurements are not finer than that.
pub fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn summary_json(values: &[f64]) -> Value {
    Summary::of(values).map_or(Value::Null, Summary::to_json)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!(
            (s.p50, s.p90, s.p99, s.max, s.min),
            (50.0, 90.0, 99.0, 100.0, 1.0)
        );
        let one = Summary::of(&[7.0]).unwrap();
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[f64::NAN]).is_none());
    }
}
