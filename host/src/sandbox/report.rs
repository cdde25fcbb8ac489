//! What preparing a sandbox reports: the steps it applies
//! ([`SandboxReport`]) and why it failed ([`SandboxError`]).

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::policy::{CpuPriority, Rlimit, Step};

/// What [`prepare`](super::prepare) decided: the steps that will be
/// applied, in order, and those skipped under
/// [`Enforcement::BestEffort`](super::Enforcement::BestEffort) with the
/// reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SandboxReport {
    /// The steps applied in the child, in order (names from [`Step`]).
    pub applied: Vec<Step>,
    /// The steps skipped, with why.
    pub skipped: Vec<(Step, String)>,
    /// The Landlock allow-list: each path with the access granted beneath it
    /// (`"read"`, `"read+execute"`, `"read+write"`).
    pub landlock_paths: Vec<(PathBuf, &'static str)>,
    /// The resource limits set, as applied (already lowered to the host's
    /// own hard limits).
    pub rlimits: Vec<Rlimit>,
    /// The uid and gid the cell runs as, when not the host's.
    pub cell_ids: Option<(u32, u32)>,
    /// The CPU priority set: the cell's nice value (and `SCHED_BATCH`), or
    /// `SCHED_IDLE`.
    pub cpu_priority: Option<CpuPriority>,
    /// The cgroup the cell joins, created by the host.
    pub cgroup: Option<PathBuf>,
}

impl SandboxReport {
    /// Whether `step` will be applied.
    pub fn is_applied(&self, step: Step) -> bool {
        self.applied.contains(&step)
    }
}

impl fmt::Display for SandboxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("applied: ")?;
        for (i, step) in self.applied.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{step}")?;
        }
        if !self.skipped.is_empty() {
            f.write_str("; skipped: ")?;
            for (i, (step, why)) in self.skipped.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{step} ({why})")?;
            }
        }
        if let Some((uid, gid)) = self.cell_ids {
            write!(f, "; runs as uid {uid} gid {gid}")?;
        }
        if let Some(cgroup) = &self.cgroup {
            write!(f, "; cgroup {}", cgroup.display())?;
        }
        match self.cpu_priority {
            Some(CpuPriority::Nice(nice)) => write!(f, "; nice {nice}")?,
            Some(CpuPriority::Batch(nice)) => write!(f, "; nice {nice}, SCHED_BATCH")?,
            Some(CpuPriority::Idle) => f.write_str("; SCHED_IDLE")?,
            Some(CpuPriority::Inherit) | None => {}
        }
        if !self.rlimits.is_empty() {
            f.write_str("; limits:")?;
            for l in &self.rlimits {
                let bytes = l.resource.counts_bytes();
                write!(f, " {}={}", l.resource.name(), RlimitValue(l.soft, bytes))?;
                if l.hard != l.soft {
                    write!(f, "/{}", RlimitValue(l.hard, bytes))?;
                }
            }
        }
        Ok(())
    }
}

/// Formats an rlimit value: `unlimited`, or for a limit in bytes (the
/// flag) with a binary unit when exact.
struct RlimitValue(u64, bool);

impl fmt::Display for RlimitValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            u64::MAX => f.write_str("unlimited"),
            v if !self.1 => write!(f, "{v}"),
            v if v >= 1 << 30 && v % (1 << 30) == 0 => write!(f, "{}GiB", v >> 30),
            v if v >= 1 << 20 && v % (1 << 20) == 0 => write!(f, "{}MiB", v >> 20),
            v if v >= 1 << 10 && v % (1 << 10) == 0 => write!(f, "{}KiB", v >> 10),
            v => write!(f, "{v}"),
        }
    }
}

/// Why [`prepare`](super::prepare) failed, and what to do about it.
#[derive(Debug)]
#[non_exhaustive]
pub enum SandboxError {
    /// Under [`Enforcement::Required`](super::Enforcement::Required), the
    /// kernel cannot provide a step.
    Unavailable {
        /// The step, from [`Step`].
        feature: Step,
        /// What is missing.
        reason: String,
    },
    /// The cell program cannot be inspected (to find its interpreter and
    /// library directories for the Landlock rules).
    Program {
        /// The program.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A path of the policy (or a system path the program needs) cannot be
    /// used in a Landlock rule.
    Path {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// No uid of [`CellIds::Range`](super::CellIds::Range) is free: as many
    /// cells run as the range holds.
    CellIdsExhausted {
        /// The first id of the range.
        first: u32,
        /// Its size.
        count: u32,
    },
    /// The kernel refused the Landlock ruleset although it reported the ABI.
    Landlock(String),
    /// seccompiler refused the filter.
    Seccomp(String),
    /// The child process probing namespace support could not be run.
    Probe(io::Error),
}

impl fmt::Display for SandboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable { feature, reason } => write!(
                f,
                "the cell sandbox needs `{feature}`, which this system does not provide: {reason}; \
                 run the host where it is available, turn it off in the SandboxPolicy, or use \
                 Enforcement::BestEffort to run without it (it is then listed in \
                 SandboxReport::skipped)"
            ),
            Self::Program { path, reason } => write!(
                f,
                "cannot inspect the cell program {}: {reason}; the sandbox must read its ELF \
                 interpreter and library paths to allow executing it",
                path.display()
            ),
            Self::Path { path, reason } => write!(
                f,
                "cannot use {} in the sandbox's filesystem rules: {reason}; check that it exists \
                 and that the host can open it",
                path.display()
            ),
            Self::CellIdsExhausted { first, count } => write!(
                f,
                "every uid of the cell id range {first}..{} is taken by a live cell; stop a cell \
                 or give SandboxPolicy::cell_ids a larger range",
                u64::from(*first) + u64::from(*count)
            ),
            Self::Landlock(e) => write!(f, "the kernel refused the Landlock ruleset: {e}"),
            Self::Seccomp(e) => write!(f, "compiling the seccomp filter failed: {e}"),
            Self::Probe(e) => write!(
                f,
                "probing namespace support in a child process failed: {e}; use \
                 Enforcement::BestEffort or turn namespaces off"
            ),
        }
    }
}

impl std::error::Error for SandboxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Probe(e) => Some(e),
            _ => None,
        }
    }
}
