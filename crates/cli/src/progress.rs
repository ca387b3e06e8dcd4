//! Progress display: the library reports phases through [`Progress`]; the binary shows them as
//! bars on stderr ([`TerminalProgress`]), hidden when stderr is not a terminal, so a pipe or a
//! log file gets no control characters.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Receives the phases of a run.
pub trait Progress: Send + Sync {
    /// A phase starts (`Salesforce Order`, `Postgres orders`…); its total may come later.
    fn phase(&self, name: &str) -> Box<dyn PhaseProgress>;
}

/// One phase's counter.
pub trait PhaseProgress: Send + Sync {
    fn set_total(&self, total: u64);
    fn inc(&self, n: u64);
    fn finish(&self);
}

/// Shows nothing (library use, tests, benchmarks).
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _name: &str) -> Box<dyn PhaseProgress> {
        Box::new(NoProgress)
    }
}

impl PhaseProgress for NoProgress {
    fn set_total(&self, _total: u64) {}
    fn inc(&self, _n: u64) {}
    fn finish(&self) {}
}

/// One bar per phase on stderr; phases running at once (the two Salesforce reads) each get
/// their own line.
pub struct TerminalProgress {
    multi: MultiProgress,
}

impl TerminalProgress {
    /// Bars on stderr, or nothing when stderr is not a terminal.
    pub fn stderr() -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
        }
    }
}

impl Progress for TerminalProgress {
    fn phase(&self, name: &str) -> Box<dyn PhaseProgress> {
        let bar = self.multi.add(ProgressBar::new(0));
        if let Ok(style) =
            ProgressStyle::with_template("{prefix:>22} {bar:30} {pos:>7}/{len:7} {elapsed:>4}")
        {
            bar.set_style(style);
        }
        bar.set_prefix(name.to_owned());
        Box::new(Bar(bar))
    }
}

struct Bar(ProgressBar);

impl PhaseProgress for Bar {
    fn set_total(&self, total: u64) {
        self.0.set_length(total);
    }

    fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    fn finish(&self) {
        self.0.finish();
    }
}
