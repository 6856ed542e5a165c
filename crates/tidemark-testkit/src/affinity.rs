//! CPU affinity for benchmarks: which cores a process (and every thread and
//! child it starts later) may run on, set with `sched_setaffinity`.
//!
//! A benchmark that pins its servers to one core and its load generator to
//! the others measures the servers per core, and no server is slowed by its
//! own client. The set is applied in the child between `fork` and `exec`
//! (`pre_exec`), so a server is pinned before it starts any thread, and a
//! forking server (PostgreSQL) passes it on to every backend.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// The cores this process may run on now, in ascending order.
pub fn allowed() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    set
}

/// Pins one thread (a tid, or 0 for the calling thread) to `cpus`.
pub fn pin_thread(tid: i32, cpus: &[usize]) -> std::io::Result<()> {
    let set = cpu_set(cpus);
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pins every thread this process has now to `cpus`; threads started
/// later inherit the set of the thread that starts them.
pub fn pin_self(cpus: &[usize]) -> std::io::Result<()> {
    for e in std::fs::read_dir("/proc/self/task")?.flatten() {
        if let Ok(tid) = e.file_name().to_string_lossy().parse::<i32>() {
            pin_thread(tid, cpus)?;
        }
    }
    Ok(())
}

/// Makes `cmd` start pinned to `cpus` (set in the child before `exec`).
pub fn pin_command(cmd: &mut Command, cpus: &[usize]) {
    let set = cpu_set(cpus);
    // SAFETY: the closure only calls sched_setaffinity, which is
    // async-signal-safe, on a set built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// CPU time (user + system) a process has used, with its reaped children,
/// in seconds; `None` once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that closes the command name: state is the 1st,
    // utime the 12th, stime 13th, cutime 14th, cstime 15th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f
        .get(11..15)?
        .iter()
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_child_runs_only_on_its_core() {
        let cpus = allowed();
        assert!(!cpus.is_empty());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "grep Cpus_allowed_list /proc/self/status"]);
        pin_command(&mut cmd, &cpus[..1]);
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.split(':').nth(1).map(str::trim),
            Some(cpus[0].to_string().as_str()),
            "{text}"
        );
    }
}
