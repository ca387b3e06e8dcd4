//! How many batches are written at once: a window that finds what Salesforce (and the machine)
//! can take, between 1 and `WORKER_MAX_IN_FLIGHT`.
//!
//! A fixed window caps a backlog at window × batch ÷ call time, whether Salesforce could take
//! more or is already saturated and only answers later. This one climbs the throughput curve
//! while there is a backlog (full batches waiting for a slot):
//!
//! ```text
//!   measure orders/s at w ──► try w+1 ──► gained ≥ half of one more batch's share (1/2w)? ── yes ──► keep, try w+2 …
//!                                 │                                                       no
//!                                 ▼                                                        ▼
//!   hold a few epochs ◄── back to w ◄───────────────────────────────────────────────────────┘
//!        │
//!        └──► try w−1 ──► lost less than half its share? ── yes ──► keep (it only added latency), try w−2 …
//!                                    no ──► back to w, hold, then try w+1 again
//! ```
//!
//! While held, an epoch whose rate moved by more than a quarter from the one before ends the
//! hold (Salesforce got slower or faster: look again now, first towards fewer if slower).
//! Only full Composite batches sent into a full window count (Bulk batches and batches sent
//! on their deadline end a measurement), and only orders written and synced count: a
//! saturated org that answers quickly with errors is no throughput.
//! An epoch skips the completions of batches sent under the previous size, then counts orders
//! written over at least [`MIN_EPOCH`] and three windows' worth of batches. Without a backlog
//! nothing is measured and the window holds: at a modest rate the window is not what limits,
//! and a measurement there would say nothing about it. Deciding on throughput rather than on
//! call latency is deliberate: an earlier attempt grew while calls stayed within 1.5× the
//! fastest recent one, and its reference drifted up with the slow calls it caused itself
//! (BENCHMARKS.md, "The drain and the worker's window").

use std::time::{Duration, Instant};

/// The shortest measurement at one size: long enough that a few slow calls do not decide it.
pub(super) const MIN_EPOCH: Duration = Duration::from_secs(1);

/// Epochs at a size after a probe did not pay off, before the next probe.
pub(super) const HOLD_EPOCHS: u32 = 6;

/// The size a window starts at (today's fixed default), or the ceiling if that is lower.
pub(super) const START: usize = 4;

/// A held epoch whose rate moved this far (either way) from the one before it ends the hold:
/// Salesforce changed (slower, faster), so the size found before says little.
const CHANGED: f64 = 0.25;

/// Which way the next probe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// At a size found good; the next probe after `hold` more epochs.
    Steady { hold: u32, next: Direction },
    /// Trying one batch more or less than `from`, whose rate was `rate`.
    Probe {
        from: usize,
        rate: f64,
        direction: Direction,
    },
}

/// One measurement at the current size.
#[derive(Debug, Clone, Copy)]
struct Epoch {
    /// Completions still to skip (batches sent under an earlier size).
    skip: usize,
    /// From the last skipped completion: the start of the measurement.
    since: Option<Instant>,
    batches: usize,
    orders: u64,
}

/// The adaptive window (or a fixed one: `WORKER_ADAPTIVE_WINDOW=false`).
#[derive(Debug)]
pub struct Window {
    size: usize,
    max: usize,
    adaptive: bool,
    phase: Phase,
    epoch: Option<Epoch>,
    /// The rate of the last epoch held at this size.
    held_rate: Option<f64>,
}

impl Window {
    /// `max` is WORKER_MAX_IN_FLIGHT; a fixed window is always `max`.
    pub fn new(max: usize, adaptive: bool) -> Self {
        let max = max.max(1);
        Self {
            size: if adaptive { START.min(max) } else { max },
            max,
            adaptive,
            phase: Phase::Steady {
                hold: 0,
                next: Direction::Up,
            },
            epoch: None,
            held_rate: None,
        }
    }

    /// Batches that may be in flight now.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A batch finished, `orders` of it written. `backlog`: it was a full batch sent into a
    /// full window, i.e. the window was what held the work back.
    pub fn completed(&mut self, now: Instant, orders: usize, backlog: bool) {
        if !self.adaptive {
            return;
        }
        if !backlog {
            self.interrupted();
            return;
        }
        let size = self.size;
        let epoch = self.epoch.get_or_insert(Epoch {
            skip: size,
            since: None,
            batches: 0,
            orders: 0,
        });
        if epoch.skip > 0 {
            epoch.skip -= 1;
            if epoch.skip == 0 {
                epoch.since = Some(now);
            }
            return;
        }
        let Some(since) = epoch.since else {
            return;
        };
        epoch.batches += 1;
        epoch.orders += orders as u64;
        let elapsed = now.saturating_duration_since(since);
        if elapsed < MIN_EPOCH || epoch.batches < 3 * size {
            return;
        }
        let rate = epoch.orders as f64 / elapsed.as_secs_f64();
        self.epoch = None;
        self.decide(rate);
    }

    /// No backlog, or consumption resumes after a pause or a lost session: nothing to
    /// measure, and an epoch under way would count the gap. A probe under way is abandoned
    /// (back to where it started, since nothing showed the new size is better).
    pub fn interrupted(&mut self) {
        self.epoch = None;
        self.held_rate = None;
        if let Phase::Probe {
            from, direction, ..
        } = self.phase
        {
            self.set_size(from);
            self.phase = Phase::Steady {
                hold: 0,
                next: direction,
            };
        }
    }

    /// An epoch at the current size ended with `rate` orders/s.
    fn decide(&mut self, rate: f64) {
        let held = self.held_rate.replace(rate);
        match self.phase {
            Phase::Steady { hold, .. }
                if hold > 0 && held.is_some_and(|h| (rate - h).abs() > h * CHANGED) =>
            {
                // Salesforce changed under a size found for what it was: look again now,
                // first the way the change points (slower → fewer may do as well).
                let direction = match held {
                    Some(h) if rate < h => Direction::Down,
                    _ => Direction::Up,
                };
                self.probe(rate, direction);
            }
            Phase::Steady { hold, next } if hold > 0 => {
                self.phase = Phase::Steady {
                    hold: hold - 1,
                    next,
                };
            }
            Phase::Steady { next, .. } => self.probe(rate, next),
            Phase::Probe {
                from,
                rate: before,
                direction,
            } => {
                // One batch's share of the rate at `from`, were nothing saturated.
                let share = before / from as f64;
                let kept = match direction {
                    Direction::Up => rate >= before + share / 2.0,
                    Direction::Down => rate >= before - share / 2.0,
                };
                if kept {
                    tracing::info!(
                        window = self.size,
                        from,
                        rate_before = before as u64,
                        rate = rate as u64,
                        "worker window changed"
                    );
                    self.probe(rate, direction);
                } else {
                    tracing::debug!(
                        tried = self.size,
                        back_to = from,
                        rate_before = before as u64,
                        rate = rate as u64,
                        "worker window probe did not pay off"
                    );
                    self.set_size(from);
                    // Back at `from`: its rate is what the hold compares with.
                    self.held_rate = Some(before);
                    let next = match direction {
                        Direction::Up => Direction::Down,
                        Direction::Down => Direction::Up,
                    };
                    self.phase = Phase::Steady {
                        hold: HOLD_EPOCHS,
                        next,
                    };
                }
            }
        }
    }

    /// Tries one batch more or less than now; where that is out of bounds, the other way.
    fn probe(&mut self, rate: f64, direction: Direction) {
        let from = self.size;
        let direction = match direction {
            Direction::Up if from >= self.max => Direction::Down,
            Direction::Down if from <= 1 => Direction::Up,
            d => d,
        };
        let to = match direction {
            Direction::Up => from + 1,
            Direction::Down => from - 1,
        };
        if to == 0 || to > self.max {
            // A window of one with a ceiling of one: nothing to try.
            self.phase = Phase::Steady {
                hold: HOLD_EPOCHS,
                next: Direction::Up,
            };
            return;
        }
        tracing::debug!(from, to, rate = rate as u64, "worker window probe");
        self.set_size(to);
        self.phase = Phase::Probe {
            from,
            rate,
            direction,
        };
    }

    fn set_size(&mut self, size: usize) {
        if size != self.size {
            self.size = size;
            // The next epoch must not count batches sent under the old size.
            self.epoch = None;
            self.held_rate = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backlog written through a Salesforce that takes `call` per batch while it has a
    /// free slot and queues calls beyond `capacity`: a batch finishes every `call / min(size,
    /// capacity)`. Drives `window` for `seconds` and returns the sizes it took, one per batch.
    fn drive(
        window: &mut Window,
        clock: &mut Instant,
        seconds: u64,
        capacity: impl Fn(Instant) -> usize,
    ) -> Vec<usize> {
        let call = Duration::from_millis(200);
        let end = *clock + Duration::from_secs(seconds);
        let mut sizes = Vec::new();
        while *clock < end {
            let parallel = window.size().min(capacity(*clock)).max(1) as u32;
            *clock += call / parallel;
            window.completed(*clock, 200, true);
            sizes.push(window.size());
        }
        sizes
    }

    fn settled(sizes: &[usize]) -> (usize, usize) {
        let tail = &sizes[sizes.len() * 3 / 4..];
        let min = tail.iter().copied().min().unwrap_or_default();
        let max = tail.iter().copied().max().unwrap_or_default();
        (min, max)
    }

    #[test]
    fn grows_to_the_ceiling_while_salesforce_keeps_up() {
        let mut w = Window::new(12, true);
        assert_eq!(w.size(), START);
        let mut clock = Instant::now();
        let sizes = drive(&mut w, &mut clock, 120, |_| usize::MAX);
        // At the ceiling, with an occasional probe one below it.
        assert_eq!(settled(&sizes), (11, 12), "{sizes:?}");
    }

    #[test]
    fn settles_at_what_a_saturated_salesforce_takes() {
        let mut w = Window::new(16, true);
        let mut clock = Instant::now();
        let sizes = drive(&mut w, &mut clock, 180, |_| 7);
        let (low, high) = settled(&sizes);
        // Around the knee (a probe one above or below it at times), far from the ceiling.
        assert!(low >= 6 && high <= 8, "{low}..{high}: {sizes:?}");
    }

    #[test]
    fn comes_down_when_salesforce_can_take_less() {
        let mut w = Window::new(16, true);
        let mut clock = Instant::now();
        let before = drive(&mut w, &mut clock, 100, |_| 12);
        assert!(before.iter().any(|s| *s >= 12), "{before:?}");
        // Salesforce now takes 3 calls at a time: within a minute the window is back around 3.
        let after = drive(&mut w, &mut clock, 60, |_| 3);
        let (low, high) = settled(&after);
        assert!(low >= 2 && high <= 4, "{low}..{high}: {after:?}");
    }

    #[test]
    fn without_a_backlog_it_holds_and_abandons_a_probe() {
        let mut w = Window::new(8, true);
        let mut clock = Instant::now();
        for _ in 0..1000 {
            clock += Duration::from_millis(50);
            w.completed(clock, 20, false);
        }
        assert_eq!(w.size(), START);
        // A probe under way when the backlog ends goes back to where it started.
        drive(&mut w, &mut clock, 2, |_| usize::MAX);
        assert_eq!(w.size(), START + 1, "probing one more");
        w.completed(clock, 200, false);
        assert_eq!(w.size(), START);
    }

    #[test]
    fn a_fixed_window_never_moves() {
        let mut w = Window::new(6, false);
        let mut clock = Instant::now();
        let sizes = drive(&mut w, &mut clock, 60, |_| 2);
        assert!(sizes.iter().all(|s| *s == 6));
        let mut one = Window::new(1, true);
        let sizes = drive(&mut one, &mut clock, 30, |_| usize::MAX);
        assert!(sizes.iter().all(|s| *s == 1));
    }
}
