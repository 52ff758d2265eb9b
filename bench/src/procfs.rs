//! Readings of the kernel's accounting: CPU time and resident memory.

use std::{fs, io, time::Duration};

use rustix::time::{ClockId, clock_gettime};

/// The CPU time (user and system, every thread, exited ones included) this
/// process has used so far, to the nanosecond.
pub(crate) fn own_cpu() -> Duration {
    let spent = clock_gettime(ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(spent.tv_sec).unwrap_or(0),
        u32::try_from(spent.tv_nsec).unwrap_or(0),
    )
}

/// The CPU time process `pid` (the broker's Erlang VM) has used so far: the
/// sum of its threads' on-CPU nanoseconds from `/proc/<pid>/task/*/schedstat`.
///
/// `/proc/<pid>/stat` counts in clock ticks (10 ms here), too coarse for a
/// phase of a second; the VM's scheduler threads live as long as the VM, so
/// summing the threads loses nothing.
pub(crate) fn process_cpu(pid: u32) -> io::Result<Duration> {
    let mut total = 0u64;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let schedstat = match fs::read_to_string(task?.path().join("schedstat")) {
            Ok(schedstat) => schedstat,
            // The thread ended between listing and reading.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        let on_cpu = schedstat
            .split_whitespace()
            .next()
            .and_then(|field| field.parse::<u64>().ok())
            .ok_or_else(|| io::Error::other(format!("unexpected schedstat {schedstat:?}")))?;
        total += on_cpu;
    }
    Ok(Duration::from_nanos(total))
}

/// This process's resident set size in KiB (`VmRSS` of `/proc/self/status`).
pub(crate) fn own_rss_kib() -> io::Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS line in /proc/self/status"))
}
