//! The few system calls the report needs: CPU affinity, `uname`, CPU time of
//! a process, and spawning this program again with a segment at fd 3.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// CPUs online (`sysconf(_SC_NPROCESSORS_ONLN)`).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(0)
}

/// CPUs this thread may run on (`sched_getaffinity(2)`).
pub fn allowed_cpus() -> usize {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t and we pass its exact size.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return 0;
    }
    // SAFETY: CPU_COUNT only reads the set.
    usize::try_from(unsafe { libc::CPU_COUNT(&set) }).unwrap_or(0)
}

/// Pins the calling thread to CPU 0 (`sched_setaffinity(2)`). Threads and
/// processes created afterwards inherit the mask, so call it first thing in
/// `main`, before any runtime starts.
pub fn pin_to_cpu0() -> std::io::Result<()> {
    pin_to(0)
}

/// Pins the calling thread to `cpu` (`sched_setaffinity(2)`).
pub fn pin_to(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::other(format!("no CPU {cpu}")));
    }
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE, checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set_affinity(&set)
}

/// The calling thread's CPU mask (`sched_getaffinity(2)`).
pub fn affinity() -> std::io::Result<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t and we pass its exact size.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r == 0 {
        Ok(set)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sets the calling thread's CPU mask (`sched_setaffinity(2)`).
pub fn set_affinity(set: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: `set` is a live cpu_set_t and we pass its exact size.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `uname -srm`: system name, release, machine.
pub fn uname() -> String {
    // SAFETY: an all-zero utsname is valid storage for uname to fill.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a live utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!(
        "{} {} {}",
        field(&u.sysname),
        field(&u.release),
        field(&u.machine)
    )
}

/// CPU time (user + system) process `pid` has used so far: the sum of its
/// threads' run time in nanoseconds from `/proc/<pid>/task/*/schedstat`,
/// or, where schedstat is missing, utime + stime from `/proc/<pid>/stat`
/// (clock ticks, usually 10 ms). `None` when neither can be read.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    let mut found = false;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            if let Some(ns) = s.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()) {
                total += ns;
                found = true;
            }
        }
    }
    if found {
        return Some(Duration::from_nanos(total));
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces), utime and stime are
    // the 12th and 13th fields.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    let ticks = f.get(10)? + f.get(11)?;
    Some(Duration::from_millis(ticks * 1000 / hz))
}

/// Starts this program again with `args`, the segment placed at fd 3.
pub fn spawn_self_with_segment(args: &[&str], segment: &osmos_shm::Segment) -> std::io::Result<Child> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(args).stdin(Stdio::null());
    segment.pass_to(&mut cmd, 3);
    cmd.spawn()
}
