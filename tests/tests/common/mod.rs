//! Helpers shared by the chaos and hostile-cell tests: a seeded generator,
//! the host process's resource counts, and a panic counter.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A small seeded generator (SplitMix64): the same seed gives the same run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// A `u64` from the environment variable `key` (decimal or `0x` hex), or `default`.
pub fn env_u64(key: &str, default: u64) -> u64 {
    match std::env::var(key) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{key}={v} is not a number"))
        }
        Err(_) => default,
    }
}

/// What the host process holds that a cell's life must give back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    /// Open file descriptors (`/proc/self/fd`).
    pub fds: usize,
    /// Threads (`/proc/self/task`).
    pub threads: usize,
    /// Memory mappings (`/proc/self/maps` lines).
    pub maps: usize,
    /// Mappings of osmos segments (`memfd:osmos-segment`).
    pub segment_maps: usize,
    /// Child processes, zombies included (`/proc/self/task/*/children`).
    pub children: BTreeSet<u32>,
}

impl Resources {
    /// The counts now.
    pub fn now() -> Resources {
        let count = |dir: &str| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        // The directory handle used to list /proc/self/fd is one of its entries.
        let fds = count("/proc/self/fd").saturating_sub(1);
        let threads = count("/proc/self/task");
        let maps_text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let maps = maps_text.lines().count();
        let segment_maps = maps_text
            .lines()
            .filter(|l| l.contains("memfd:osmos-segment"))
            .count();
        let mut children = BTreeSet::new();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for t in tasks.flatten() {
                let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                children.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
        Resources {
            fds,
            threads,
            maps,
            segment_maps,
            children,
        }
    }

    /// Whether these counts are back to `base`. Memory mappings may stay a
    /// few above it (the allocator keeps arenas and thread stacks cached), so
    /// they must be within `map_slack` of it; segment mappings must be gone.
    pub fn back_to(&self, base: &Resources, map_slack: usize) -> bool {
        self.fds <= base.fds
            && self.threads <= base.threads
            && self.segment_maps <= base.segment_maps
            && self.maps <= base.maps + map_slack
            && self.children.is_subset(&base.children)
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} fds, {} threads, {} mappings ({} of segments), {} child processes",
            self.fds,
            self.threads,
            self.maps,
            self.segment_maps,
            self.children.len()
        )
    }
}

/// Polls until the host's resources are back to `base` (see
/// [`Resources::back_to`]), at most `bound`; returns the last counts and
/// whether they got there.
pub async fn wait_back_to(base: &Resources, map_slack: usize, bound: Duration) -> (Resources, bool) {
    let deadline = Instant::now() + bound;
    loop {
        let now = Resources::now();
        if now.back_to(base, map_slack) {
            return (now, true);
        }
        if Instant::now() >= deadline {
            return (now, false);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The host's resources once no cell is left and they stopped moving (two
/// readings 50 ms apart agree), polled for at most `bound`.
pub async fn settled(bound: Duration) -> Resources {
    let deadline = Instant::now() + bound;
    let mut last = Resources::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Resources::now();
        let quiet = now.segment_maps == 0 && now.children.is_empty();
        if (quiet && now == last) || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts every panic in this process from now on (a panic in a host task
/// is caught by the runtime; this still sees it), keeping the default report.
pub fn count_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// Panics counted since [`count_panics`].
pub fn panics() -> usize {
    PANICS.load(Ordering::SeqCst)
}

/// The `p`-th percentile (0..=100) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let i = ((samples.len() - 1) as f64 * p / 100.0).round() as usize;
    samples[i.min(samples.len() - 1)]
}
