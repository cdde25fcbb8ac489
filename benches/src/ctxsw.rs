//! Context switches per call, from `/proc/<pid>/task/*/status`.
//!
//! The kernel counts, per thread, `voluntary_ctxt_switches` (the thread
//! blocked: a futex wait, a blocking read, `epoll_wait`, a sleep) and
//! `nonvoluntary_ctxt_switches` (it was preempted). `/proc/<pid>/status`
//! holds only the main thread's counters, so a [`Snapshot`] reads every
//! task of the process and keeps them per thread id. [`per_call`] diffs two
//! snapshots of the host and two of the peer over the same calls:
//!
//! - a thread present in both snapshots counts its difference;
//! - a thread started in between counts all its switches;
//! - a thread that exited in between is lost (its counters go with it);
//!   the runtimes measured here keep their threads for the whole case.

use std::collections::HashMap;

/// Context switches per call, split by process and kind.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CtxSwitches {
    /// Voluntary switches of the host (this process, all threads) per call.
    pub host_voluntary: f64,
    /// Involuntary switches of the host per call.
    pub host_involuntary: f64,
    /// Voluntary switches of the peer (the cell or floor peer) per call.
    pub peer_voluntary: f64,
    /// Involuntary switches of the peer per call.
    pub peer_involuntary: f64,
}

impl CtxSwitches {
    /// All four together: what one call costs in context switches.
    pub fn total(&self) -> f64 {
        self.host_voluntary + self.host_involuntary + self.peer_voluntary + self.peer_involuntary
    }

    /// The readable breakdown, e.g. `host 2.00+0.01, peer 2.00+0.00`
    /// (voluntary + involuntary per call).
    pub fn breakdown(&self) -> String {
        format!(
            "ctx switches per call: host {:.2}+{:.2}, peer {:.2}+{:.2} (voluntary+involuntary, all threads)",
            self.host_voluntary, self.host_involuntary, self.peer_voluntary, self.peer_involuntary
        )
    }

    /// `a,b,c,d` for the pinned pass's row lines.
    pub fn to_field(&self) -> String {
        format!(
            "{},{},{},{}",
            self.host_voluntary, self.host_involuntary, self.peer_voluntary, self.peer_involuntary
        )
    }

    /// Parses [`CtxSwitches::to_field`]'s output.
    pub fn from_field(field: &str) -> Option<CtxSwitches> {
        let v: Vec<f64> = field.split(',').map(str::parse).collect::<Result<_, _>>().ok()?;
        match v[..] {
            [a, b, c, d] => Some(CtxSwitches {
                host_voluntary: a,
                host_involuntary: b,
                peer_voluntary: c,
                peer_involuntary: d,
            }),
            _ => None,
        }
    }
}

/// The switch counters of every thread of one process at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Thread id → (voluntary, involuntary).
    tasks: HashMap<u32, (u64, u64)>,
}

impl Snapshot {
    /// Reads `/proc/<pid>/task/*/status`. `None` when the process is gone
    /// or no task's counters could be read.
    pub fn take(pid: u32) -> Option<Snapshot> {
        let mut tasks = HashMap::new();
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            // The thread may exit between the listing and the read.
            let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
                continue;
            };
            if let Some(counts) = parse_status(&status) {
                tasks.insert(tid, counts);
            }
        }
        (!tasks.is_empty()).then_some(Snapshot { tasks })
    }

    /// Switches since `earlier` (see the module doc for threads that come
    /// and go): (voluntary, involuntary).
    pub fn since(&self, earlier: &Snapshot) -> (u64, u64) {
        self.tasks.iter().fold((0, 0), |(v, n), (tid, &(v1, n1))| {
            let (v0, n0) = earlier.tasks.get(tid).copied().unwrap_or((0, 0));
            (v + v1.saturating_sub(v0), n + n1.saturating_sub(n0))
        })
    }
}

/// (voluntary, involuntary) from the text of a `status` file.
fn parse_status(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim_start_matches(':').trim().parse::<u64>().ok())
    };
    Some((
        field("voluntary_ctxt_switches")?,
        field("nonvoluntary_ctxt_switches")?,
    ))
}

/// Counters of the host (this process) and a peer, taken together.
#[derive(Clone, Debug)]
pub struct Pair {
    host: Snapshot,
    peer: Snapshot,
    peer_pid: u32,
}

impl Pair {
    /// Snapshots this process and `peer_pid`; `None` if either cannot be
    /// read.
    pub fn take(peer_pid: u32) -> Option<Pair> {
        Some(Pair {
            host: Snapshot::take(std::process::id())?,
            peer: Snapshot::take(peer_pid)?,
            peer_pid,
        })
    }

    /// Snapshots the same two processes again and divides the difference
    /// by `calls`.
    pub fn per_call(&self, calls: usize) -> Option<CtxSwitches> {
        let later = Pair::take(self.peer_pid)?;
        Some(per_call(self, &later, calls))
    }
}

/// The switches between two snapshot pairs of the same processes, per call.
pub fn per_call(before: &Pair, after: &Pair, calls: usize) -> CtxSwitches {
    let n = calls.max(1) as f64;
    let (hv, hn) = after.host.since(&before.host);
    let (pv, pn) = after.peer.since(&before.peer);
    CtxSwitches {
        host_voluntary: hv as f64 / n,
        host_involuntary: hn as f64 / n,
        peer_voluntary: pv as f64 / n,
        peer_involuntary: pn as f64 / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_counts_this_process() {
        let text = "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_status(text), Some((12, 3)));
        let before = Snapshot::take(std::process::id()).expect("our own counters");
        // Blocking in a sleep is a voluntary switch of this thread.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after = Snapshot::take(std::process::id()).expect("our own counters");
        assert!(after.since(&before).0 >= 1);
        let c = CtxSwitches {
            host_voluntary: 1.5,
            host_involuntary: 0.0,
            peer_voluntary: 2.0,
            peer_involuntary: 0.25,
        };
        assert_eq!(CtxSwitches::from_field(&c.to_field()), Some(c));
        assert_eq!(c.total(), 3.75);
    }
}
