//! The fault schedule of a chaos run: which faults, when, for how long, against what, all drawn
//! from one seed so a run can be repeated (the *schedule* repeats; the machine's timing does
//! not).

use clap::ValueEnum;
use serde::Serialize;

use crate::workload::CUSTOMERS;

/// What the run can do to the system. Each is described in crates/bench/CHAOS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL an outbox-relay, start a new one a moment later.
    KillRelay,
    /// SIGKILL a sync-worker, start a new one a moment later.
    KillWorker,
    /// A second outbox-relay for a while (leader election, standby take-over), then SIGTERM one
    /// of the two.
    TwoRelays,
    /// A second sync-worker for a while (competing consumers), then SIGTERM one of the two.
    TwoWorkers,
    /// Close the services' broker connections (`rabbitmqctl close_connection`).
    BrokerClose,
    /// `pg_terminate_backend` on every service connection to the run's database.
    PgTerminate,
    /// The emulator answers 503 to everything, for a window.
    SfOutage,
    /// Every Salesforce access token becomes invalid (401 until the client logs in again).
    ExpireSessions,
    /// The daily API budget is spent (403 REQUEST_LIMIT_EXCEEDED) for a window.
    RequestLimit,
    /// Some customers' Accounts are locked (UNABLE_TO_LOCK_ROW on them and their orders) for a
    /// window, and the next two calls fail whole with UNABLE_TO_LOCK_ROW.
    LockRow,
    /// Salesforce calls take seconds instead of the configured latency, for a window.
    LatencySpike,
    /// SIGKILL sf-subscriber mid-stream, start a new one after a window (it resumes from its
    /// stored replay ids).
    SubscriberKill,
    /// SIGKILL fulfilment-worker while calls are in flight, start a new one a moment later.
    FulfilmentKill,
    /// The fulfilment receiver answers 500, 502, 503 or 429, or hangs (the worker's call times
    /// out), for a window.
    ReceiverFail,
    /// Only with `--rabbitmq-cluster`: the cluster node holding the work queue's quorum leader
    /// is killed (its Erlang VM, SIGKILL) or stopped (`rabbitmqctl stop`), by the fault's pick,
    /// and started again at the window's end. Not in the default set without the cluster.
    NodeKill,
}

impl FaultKind {
    pub const ALL: [FaultKind; 14] = [
        FaultKind::KillRelay,
        FaultKind::KillWorker,
        FaultKind::TwoRelays,
        FaultKind::TwoWorkers,
        FaultKind::BrokerClose,
        FaultKind::PgTerminate,
        FaultKind::SfOutage,
        FaultKind::ExpireSessions,
        FaultKind::RequestLimit,
        FaultKind::LockRow,
        FaultKind::LatencySpike,
        FaultKind::SubscriberKill,
        FaultKind::FulfilmentKill,
        FaultKind::ReceiverFail,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillRelay => "kill-relay",
            FaultKind::KillWorker => "kill-worker",
            FaultKind::TwoRelays => "two-relays",
            FaultKind::TwoWorkers => "two-workers",
            FaultKind::BrokerClose => "broker-close",
            FaultKind::PgTerminate => "pg-terminate",
            FaultKind::SfOutage => "sf-outage",
            FaultKind::ExpireSessions => "expire-sessions",
            FaultKind::RequestLimit => "request-limit",
            FaultKind::LockRow => "lock-row",
            FaultKind::LatencySpike => "latency-spike",
            FaultKind::SubscriberKill => "subscriber-kill",
            FaultKind::FulfilmentKill => "fulfilment-kill",
            FaultKind::ReceiverFail => "receiver-fail",
            FaultKind::NodeKill => "node-kill",
        }
    }

    /// Whether the fault lasts a window (begin … end) rather than happening at one instant.
    /// A kill's window is the time until the replacement starts.
    /// Every kind, for the timeline's lanes: [`Self::ALL`] and the cluster's `node-kill`.
    pub const LANES: [FaultKind; 15] = {
        let mut lanes = [FaultKind::NodeKill; 15];
        let mut i = 0;
        while i < Self::ALL.len() {
            lanes[i] = Self::ALL[i];
            i += 1;
        }
        lanes
    };

    pub fn has_window(self) -> bool {
        !matches!(
            self,
            FaultKind::BrokerClose | FaultKind::PgTerminate | FaultKind::ExpireSessions
        )
    }
}

/// One planned fault, or a poison message (`kind` None).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    pub id: usize,
    /// `None`: a poison message.
    pub kind: Option<FaultKind>,
    /// Seconds after posting starts.
    pub at_s: f64,
    /// Window length in seconds (0 for instant faults).
    pub duration_s: f64,
    /// A random number the fault uses for its choices (which instance, which customers, how slow).
    pub pick: u64,
}

impl Planned {
    pub fn label(&self) -> &'static str {
        self.kind.map_or("poison", FaultKind::name)
    }

    /// Customers whose Accounts a `lock-row` fault locks: 2–6 of them.
    pub fn locked_customers(&self) -> Vec<usize> {
        let mut rng = SplitMix64::new(self.pick);
        let n = 2 + rng.below(5) as usize;
        let mut out: Vec<usize> = (0..n)
            .map(|_| rng.below(CUSTOMERS as u64) as usize)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// How a `receiver-fail` fault makes the receiver answer: an HTTP status (retried like a
    /// 5xx) or `None` for a hang (the worker's call times out).
    pub fn receiver_status(&self) -> Option<u16> {
        match self.pick % 5 {
            0 => Some(500),
            1 => Some(502),
            2 => Some(503),
            3 => Some(429),
            _ => None,
        }
    }

    /// A `latency-spike`'s per-call latency: 1–5 s.
    /// `node-kill`: stop the node politely (`rabbitmqctl stop`) rather than kill its VM.
    pub fn graceful(&self) -> bool {
        self.pick.is_multiple_of(2)
    }

    pub fn spike_ms(&self) -> u64 {
        1000 + self.pick % 4001
    }

    /// Which of several instances the fault hits (an index into the running ones).
    pub fn instance(&self, running: usize) -> usize {
        if running == 0 {
            0
        } else {
            ((self.pick >> 32) % running as u64) as usize
        }
    }
}

/// What the schedule is drawn from.
#[derive(Debug, Clone)]
pub struct PlanInput {
    pub seed: u64,
    /// How long posting takes (orders ÷ rate), seconds.
    pub posting_s: f64,
    pub kinds: Vec<FaultKind>,
    /// Mean time between fault starts, seconds.
    pub gap_s: f64,
    /// Longest window, seconds.
    pub max_window_s: f64,
    pub poison: u32,
}

/// The schedule: faults in a random order that cycles through every selected kind (so each kind
/// happens about equally often), at jittered, evenly spread times over the posting period;
/// windows of one kind never overlap; the poison messages at random times.
pub fn plan(input: &PlanInput) -> Vec<Planned> {
    let mut rng = SplitMix64::new(input.seed);
    let span = input.posting_s.max(1.0);
    let start = (span * 0.05).min(2.0);
    let mut planned = Vec::new();
    if !input.kinds.is_empty() {
        let n = ((span / input.gap_s.max(0.1)).floor() as usize).max(1);
        let mut sequence = Vec::with_capacity(n);
        while sequence.len() < n {
            let mut cycle = input.kinds.clone();
            rng.shuffle(&mut cycle);
            sequence.extend(cycle);
        }
        sequence.truncate(n);
        let slot = (span - start) / n as f64;
        let mut busy_until: std::collections::HashMap<FaultKind, f64> = Default::default();
        for (i, kind) in sequence.into_iter().enumerate() {
            let mut at = start + slot * (i as f64 + rng.unit());
            let duration = if kind.has_window() {
                let max = input.max_window_s.max(0.5);
                let min = match kind {
                    // A killed process stays down briefly; the others' windows are longer.
                    FaultKind::KillRelay
                    | FaultKind::KillWorker
                    | FaultKind::FulfilmentKill
                    | FaultKind::SubscriberKill => 0.2,
                    _ => max.min(2.0),
                };
                let max = match kind {
                    FaultKind::KillRelay | FaultKind::KillWorker | FaultKind::FulfilmentKill => {
                        max.min(3.0)
                    }
                    // Down for up to a whole window: Salesforce's events pile up meanwhile and
                    // the new subscriber must read them from its stored replay ids.
                    _ => max,
                };
                min + (max - min) * rng.unit()
            } else {
                0.0
            };
            if let Some(until) = busy_until.get(&kind) {
                at = at.max(until + 0.5);
            }
            busy_until.insert(kind, at + duration);
            planned.push(Planned {
                id: 0,
                kind: Some(kind),
                at_s: round_ms(at),
                duration_s: round_ms(duration),
                pick: rng.next_u64(),
            });
        }
    }
    for _ in 0..input.poison {
        let at = start + (span - start) * rng.unit();
        planned.push(Planned {
            id: 0,
            kind: None,
            at_s: round_ms(at),
            duration_s: 0.0,
            pick: rng.next_u64(),
        });
    }
    planned.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    for (i, p) in planned.iter_mut().enumerate() {
        p.id = i + 1;
    }
    planned
}

fn round_ms(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

/// Whether a step starts or ends a planned fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Begin,
    End,
}

/// The plan as steps in time order: each fault's begin, and the end of those with a window.
pub fn steps(plan: &[Planned]) -> Vec<(f64, usize, Phase)> {
    let mut steps: Vec<(f64, usize, Phase)> = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        steps.push((p.at_s, i, Phase::Begin));
        if p.kind.is_some_and(FaultKind::has_window) {
            steps.push((p.at_s + p.duration_s, i, Phase::End));
        }
    }
    // Stable: at equal times a begin planned earlier stays first.
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));
    steps
}

/// SplitMix64 (Steele, Lea, Flood 2014): a small, well-mixed generator whose output depends
/// only on the seed, never on a library version, so a seed means the same schedule for good.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0; the modulo bias is irrelevant at these sizes).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// A seed when none was given: the clock and the process id, mixed.
pub fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    SplitMix64::new(nanos ^ (u64::from(std::process::id()) << 32)).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(seed: u64) -> PlanInput {
        PlanInput {
            seed,
            posting_s: 100.0,
            kinds: FaultKind::ALL.to_vec(),
            gap_s: 3.0,
            max_window_s: 8.0,
            poison: 3,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        assert_eq!(plan(&input(42)), plan(&input(42)));
        assert_ne!(plan(&input(42)), plan(&input(43)));
    }

    #[test]
    fn every_kind_happens_and_windows_of_a_kind_do_not_overlap() {
        let p = plan(&input(7));
        assert_eq!(p.len(), 33 + 3);
        assert_eq!(p.iter().filter(|f| f.kind.is_none()).count(), 3);
        for kind in FaultKind::ALL {
            let mut of_kind: Vec<&Planned> = p.iter().filter(|f| f.kind == Some(kind)).collect();
            assert!(of_kind.len() >= 2, "{kind:?}");
            of_kind.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
            for w in of_kind.windows(2) {
                assert!(
                    w[1].at_s >= w[0].at_s + w[0].duration_s,
                    "{kind:?} overlaps"
                );
            }
        }
        assert!(p.windows(2).all(|w| w[0].at_s <= w[1].at_s));
        assert!(p.iter().all(|f| f.at_s >= 0.0 && f.duration_s <= 8.0));
        let s = steps(&p);
        let windows = p
            .iter()
            .filter(|f| f.kind.is_some_and(FaultKind::has_window))
            .count();
        assert_eq!(s.len(), p.len() + windows);
    }

    #[test]
    fn picks_stay_in_range() {
        for f in plan(&input(1)) {
            assert!((1000..=5000).contains(&f.spike_ms()));
            let c = f.locked_customers();
            assert!(!c.is_empty() && c.len() <= 6 && c.iter().all(|&i| i < CUSTOMERS));
            assert!(f.instance(2) < 2);
            assert!(f.receiver_status().is_none_or(|s| s == 429 || s >= 500));
            assert_eq!(f.instance(0), 0);
        }
    }

    #[test]
    fn generator_is_stable() {
        // Fixed outputs: a seed must mean the same schedule in every build.
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let u = SplitMix64::new(5).unit();
        assert!((0.0..1.0).contains(&u));
    }
}
