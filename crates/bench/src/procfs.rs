//! What Linux's /proc says about memory and CPU: peak resident set of a process, CPU time per
//! process and for the machine. On this 2-core machine "where did the CPU go" explains most
//! figures, so every run records it.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Instant;

/// Processes of the shared servers, summed by command name: their CPU is part of every order's
/// cost, but other users of the same servers are included.
pub const SERVER_PROCESSES: [(&str, &str); 2] =
    [("postgres", "postgres"), ("rabbitmq", "beam.smp")];

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux almost everywhere).
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Peak resident set size (`VmHWM`) in KiB; `None` if the process is gone.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets the process's peak resident set size (`VmHWM`) to its current one (Linux's
/// `clear_refs` value 5), so a later [`peak_rss_kib`] is the peak since; `false` if refused.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Current resident set size (`VmRSS`) in KiB; `None` if the process is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// (command name, user + system CPU ticks) from a `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    // The name is in parentheses and may itself contain spaces or parentheses.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // Fields after the name start at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

fn process_ticks(pid: u32) -> Option<u64> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).map(|(_, t)| t)
}

/// CPU ticks of all processes, summed by command name, for the names asked.
fn ticks_by_comm(names: &[&str]) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return sums;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Some((comm, ticks)) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
            && names.contains(&comm.as_str())
        {
            *sums.entry(comm).or_insert(0) += ticks;
        }
    }
    sums
}

/// (busy, total) ticks of the whole machine, from the first line of /proc/stat.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let values: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle and iowait are the 4th and 5th values.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().filter_map(|v| v.parse().ok());
    Some([it.next()?, it.next()?, it.next()?])
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// CPU counters at one instant.
pub struct CpuSnapshot {
    at: Instant,
    processes: BTreeMap<String, u64>,
    machine: Option<(u64, u64)>,
}

/// CPU used between two snapshots.
#[derive(Debug, Clone)]
pub struct CpuUsage {
    pub wall_s: f64,
    /// CPU seconds per process (the services, the bench itself, the servers).
    pub seconds: BTreeMap<String, f64>,
    /// Share of all cores busy (anyone's work), 0..1.
    pub machine_busy: Option<f64>,
}

impl CpuSnapshot {
    /// Counters of the given services, of the bench itself and of the servers.
    pub fn take(services: &[(String, u32)]) -> Self {
        let mut processes = BTreeMap::new();
        for (name, pid) in services {
            if let Some(t) = process_ticks(*pid) {
                processes.insert(name.clone(), t);
            }
        }
        if let Some(t) = process_ticks(std::process::id()) {
            processes.insert("bench (load + observer)".to_owned(), t);
        }
        let comms: Vec<&str> = SERVER_PROCESSES.iter().map(|(_, c)| *c).collect();
        let by_comm = ticks_by_comm(&comms);
        for (label, comm) in SERVER_PROCESSES {
            if let Some(t) = by_comm.get(comm) {
                processes.insert(format!("{label} (server-wide)"), *t);
            }
        }
        Self {
            at: Instant::now(),
            processes,
            machine: machine_ticks(),
        }
    }

    /// Counts services started after this snapshot from zero, i.e. all of their CPU time.
    pub fn with_new_processes(mut self, services: &[(String, u32)]) -> Self {
        for (name, _) in services {
            self.processes.entry(name.clone()).or_insert(0);
        }
        self
    }

    /// What was used from `self` to `later`. A process missing from either is left out.
    pub fn usage_until(&self, later: &CpuSnapshot) -> CpuUsage {
        let hz = ticks_per_second();
        let seconds = later
            .processes
            .iter()
            .filter_map(|(name, t)| {
                let before = self.processes.get(name)?;
                Some((name.clone(), t.saturating_sub(*before) as f64 / hz))
            })
            .collect();
        let machine_busy = match (self.machine, later.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some(b1.saturating_sub(b0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        CpuUsage {
            wall_s: later.at.duration_since(self.at).as_secs_f64(),
            seconds,
            machine_busy,
        }
    }
}

/// Local ports of the TCP connections that processes `pids` hold to `remote_port` (their
/// sockets in `/proc/<pid>/fd`, looked up by inode in `/proc/net/tcp` and `tcp6`). This is how
/// the chaos run finds *its own* broker connections among everyone's: RabbitMQ lists each
/// connection's `peer_port`, which is this local port.
pub fn tcp_ports_to(pids: &[u32], remote_port: u16) -> std::collections::HashSet<u16> {
    let mut inodes = std::collections::HashSet::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse::<u64>().ok())
            {
                inodes.insert(inode);
            }
        }
    }
    let mut ports = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            if let Some((local, remote, inode)) = parse_tcp_line(line)
                && remote == remote_port
                && inodes.contains(&inode)
            {
                ports.insert(local);
            }
        }
    }
    ports
}

/// (local port, remote port, inode) of a `/proc/net/tcp` line.
fn parse_tcp_line(line: &str) -> Option<(u16, u16, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = |addr: &str| u16::from_str_radix(addr.rsplit_once(':')?.1, 16).ok();
    Some((
        port(fields.get(1)?)?,
        port(fields.get(2)?)?,
        fields.get(9)?.parse().ok()?,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let line =
            "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(line), Some(("my (odd) proc".to_owned(), 300)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(peak_rss_kib(std::process::id()).unwrap() > 0);
        assert!(process_ticks(std::process::id()).is_some());
        let (busy, total) = machine_ticks().unwrap();
        assert!(busy <= total);
    }

    #[test]
    fn tcp_lines_parse() {
        let line = "   3: 0100007F:D431 0100007F:1628 01 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(parse_tcp_line(line), Some((0xD431, 5672, 123456)));
        assert_eq!(parse_tcp_line("garbage"), None);
    }
}
