//! The greedy cell: serves [`osmos_tests::Greedy`], whose calls attack the
//! host's resources (memory, tasks) or a sibling cell (signals, ptrace), to
//! show what the default sandbox stops.

use std::sync::Mutex;

use osmos_tests::{Greedy, GreedyDispatcher};

/// Memory the cell holds on to after `hog_memory` returns.
static HELD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// The size of each allocation of `hog_memory`.
const CHUNK: usize = 16 << 20;
/// The stack of each thread of `spawn_threads`: small, so that the task
/// limit and not memory is what stops them.
const THREAD_STACK: usize = 64 << 10;

struct Cell;

fn os_result(ret: libc::c_long) -> Result<(), String> {
    if ret == -1 {
        Err(std::io::Error::last_os_error().to_string())
    } else {
        Ok(())
    }
}

impl Greedy for Cell {
    async fn add(&self, a: u32, b: u32) -> Result<u32, String> {
        Ok(a.wrapping_add(b))
    }

    async fn hog_memory(&self, max_mib: u32) -> Result<u64, String> {
        let max = u64::from(max_mib) << 20;
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = held.iter().map(|c| c.len() as u64).sum::<u64>();
        while total < max {
            let mut chunk: Vec<u8> = Vec::new();
            if chunk.try_reserve_exact(CHUNK).is_err() {
                return Ok(total);
            }
            // Touch every page so that the memory is resident, not only reserved.
            chunk.resize(CHUNK, 1);
            total += CHUNK as u64;
            held.push(chunk);
        }
        Err(format!("allocated {max_mib} MiB and nothing stopped it"))
    }

    async fn spawn_threads(&self, max: u32) -> Result<(u32, String), String> {
        let mut started = 0;
        while started < max {
            let spawned = std::thread::Builder::new().stack_size(THREAD_STACK).spawn(|| {
                loop {
                    std::thread::park();
                }
            });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => return Ok((started, e.to_string())),
            }
        }
        Err(format!("started {max} threads and nothing stopped it"))
    }

    async fn spin(&self, seconds: u32) -> Result<u32, String> {
        let cpu_time = || {
            let mut t = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes one timespec into a live local.
            unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
            t.tv_sec as u64
        };
        let start = cpu_time();
        let mut x = 0u64;
        while cpu_time() - start < u64::from(seconds) {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        Ok(seconds)
    }

    async fn identity(&self) -> Result<(u32, u32, i32), String> {
        // SAFETY: getuid and getgid cannot fail; getpriority returns the nice
        // value (errno tells a -1 result from a failure, not needed here).
        unsafe {
            Ok((
                libc::getuid(),
                libc::getgid(),
                libc::getpriority(libc::PRIO_PROCESS, 0),
            ))
        }
    }

    async fn signal(&self, pid: u32, signal: i32) -> Result<(), String> {
        // SAFETY: integer arguments only.
        os_result(unsafe { libc::kill(pid as libc::pid_t, signal) }.into())
    }

    async fn ptrace(&self, pid: u32) -> Result<(), String> {
        // SAFETY: integer arguments only; a seized tracee is released at once.
        unsafe {
            let ret = libc::ptrace(libc::PTRACE_SEIZE, pid as libc::pid_t, 0, 0);
            os_result(ret)?;
            libc::ptrace(libc::PTRACE_DETACH, pid as libc::pid_t, 0, 0);
        }
        Ok(())
    }
}

fn main() {
    osmos_plugin_sdk::run_with(
        "greedy-cell: the osmos test suite's cell that attacks the host's resources",
        GreedyDispatcher::new(Cell),
        |cell| async move { cell.serve().await },
    );
}
