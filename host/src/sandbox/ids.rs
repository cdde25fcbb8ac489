//! The uids and gids of cells under a root host: a process-wide allocator
//! over [`CellIds::Range`], each id leased to one prepared sandbox (one cell
//! incarnation) until that is dropped.
//!
//! Ids are handed out round robin from where the last lease started, so an
//! id comes back into use as late as possible: a cell whose lease was
//! dropped a moment before its last task was reaped does not share its
//! `RLIMIT_NPROC` count with the next cell.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::policy::CellIds;
use super::report::SandboxError;

/// The ids in use, and the offset in the range the next search starts from.
struct Leases {
    in_use: BTreeSet<u32>,
    next: u32,
}

static LEASES: Mutex<Leases> = Mutex::new(Leases {
    in_use: BTreeSet::new(),
    next: 0,
});

/// A uid (and gid of the same number) reserved for one cell while it lives.
/// Released on drop.
#[derive(Debug)]
pub struct CellIdLease {
    uid: u32,
    gid: u32,
    /// Whether the id came from the allocator (and goes back on drop).
    leased: bool,
}

impl CellIdLease {
    /// The cell's uid.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The cell's gid.
    pub fn gid(&self) -> u32 {
        self.gid
    }
}

impl Drop for CellIdLease {
    fn drop(&mut self) {
        if self.leased {
            let mut leases = LEASES.lock().unwrap_or_else(|p| p.into_inner());
            leases.in_use.remove(&self.uid);
        }
    }
}

/// The ids a cell of a host whose euid is `host_euid` runs as, or `None`
/// when it keeps the host's (a host that is not root, or [`CellIds::Host`]).
pub(super) fn lease(ids: CellIds, host_euid: u32) -> Result<Option<CellIdLease>, SandboxError> {
    if host_euid != 0 {
        return Ok(None);
    }
    match ids {
        CellIds::Host => Ok(None),
        CellIds::Fixed { uid, gid } => Ok(Some(CellIdLease {
            uid,
            gid,
            leased: false,
        })),
        CellIds::Range { first, count } => {
            // Never uid 0 nor the invalid id (u32::MAX, "-1").
            let first = first.max(1);
            let count = count.min(u32::MAX - first);
            let mut leases = LEASES.lock().unwrap_or_else(|p| p.into_inner());
            for i in 0..count {
                let offset = (leases.next.wrapping_add(i)) % count;
                let uid = first + offset;
                if leases.in_use.insert(uid) {
                    leases.next = offset.wrapping_add(1) % count;
                    return Ok(Some(CellIdLease {
                        uid,
                        gid: uid,
                        leased: true,
                    }));
                }
            }
            Err(SandboxError::CellIdsExhausted { first, count })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_distinct_reused_late_and_only_for_root() {
        assert!(lease(CellIds::default(), 1000).unwrap().is_none());
        assert!(lease(CellIds::Host, 0).unwrap().is_none());
        let fixed = lease(CellIds::Fixed { uid: 7, gid: 8 }, 0).unwrap().unwrap();
        assert_eq!((fixed.uid(), fixed.gid()), (7, 8));

        // A range of its own, so that other tests' leases do not interfere.
        let range = CellIds::Range {
            first: 3_000_000_000,
            count: 3,
        };
        let a = lease(range, 0).unwrap().unwrap();
        let b = lease(range, 0).unwrap().unwrap();
        let c = lease(range, 0).unwrap().unwrap();
        let mut uids = [a.uid(), b.uid(), c.uid()];
        uids.sort();
        assert_eq!(uids, [3_000_000_000, 3_000_000_001, 3_000_000_002]);
        assert_eq!(a.gid(), a.uid());
        let err = lease(range, 0).unwrap_err();
        assert!(err.to_string().contains("3000000000..3000000003"), "{err}");
        // The freed id is the one handed out next.
        let freed = b.uid();
        drop(b);
        assert_eq!(lease(range, 0).unwrap().unwrap().uid(), freed);
    }
}
