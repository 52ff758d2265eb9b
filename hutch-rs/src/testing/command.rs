//! Running a short-lived program with a deadline.
//!
//! `rabbitmqctl` can hang (for instance `stop <pidfile>` waits forever for a
//! pid file that a stopped node has already removed), and a test harness that
//! hangs is worse than one that fails, so every call is bounded.

use std::{
    io::{self, Read},
    os::unix::process::CommandExt,
    process::{Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// What a finished program printed.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// The program ran past its deadline and was killed.
#[derive(Debug)]
pub(crate) struct TimedOut;

/// Runs `command` to completion, capturing stdout and stderr, and kills it
/// (with everything it started in its process group) if it runs longer than
/// `timeout`.
pub(crate) fn run_bounded(
    mut command: Command,
    timeout: Duration,
) -> io::Result<Result<Finished, TimedOut>> {
    // Its own process group, so that a kill reaches the Erlang VM that the
    // script starts as well as the script, and so that a Ctrl-C meant for the
    // test does not cut a `rabbitmqctl shutdown` short.
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn()?;
    let deadline = Instant::now() + timeout;

    // The pipes are read on threads so that the deadline can be awaited on a
    // channel instead of polled, and so that a chatty program never blocks
    // on a full pipe.
    let (sender, receiver) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    for (index, mut pipe) in [
        (0, Box::new(stdout) as Box<dyn Read + Send>),
        (1, Box::new(stderr)),
    ] {
        let sender = sender.clone();
        thread::spawn(move || {
            let mut bytes = Vec::new();
            // A read error ends the capture early; what was read is kept.
            let _ = pipe.read_to_end(&mut bytes);
            let _ = sender.send((index, bytes));
        });
    }
    drop(sender);

    let mut captured: [Option<Vec<u8>>; 2] = [None, None];
    while captured.iter().any(Option::is_none) {
        match receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((index, bytes)) => captured[index] = Some(bytes),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // The child is not reaped yet, so its pid (= its process
                // group id) cannot have been reused: the kill reaches only it
                // and its own descendants.
                kill_process_group(child.id());
                let _ = child.wait();
                return Ok(Err(TimedOut));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    let [stdout, stderr] =
        captured.map(|bytes| String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned());
    Ok(Ok(Finished {
        status,
        stdout,
        stderr,
    }))
}

/// Sends SIGKILL to the process group `pgid`.
///
/// Callers pass only the id of a group whose leader is their own unreaped
/// child (or that they otherwise know still exists), so the id cannot belong
/// to anybody else. The shell's `kill` is used because the crate forbids
/// `unsafe` and so cannot call `libc::kill`.
pub(crate) fn kill_process_group(pgid: u32) {
    let result = Command::new("sh")
        .args(["-c", "kill -s KILL -- \"-$1\"", "sh", &pgid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    tracing::debug!(pgid, ?result, "killed process group");
}

/// Sends SIGKILL to the process `pid`, which the caller knows to be its own.
pub(crate) fn kill_process(pid: u32) {
    let result = Command::new("sh")
        .args(["-c", "kill -s KILL \"$1\"", "sh", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    tracing::debug!(pid, ?result, "killed process");
}

/// The command line, for error messages.
pub(crate) fn describe(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2; exit 3"]);
        let finished = run_bounded(command, Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert_eq!(finished.status.code(), Some(3));
        assert_eq!(finished.stdout, "out\n");
        assert_eq!(finished.stderr, "err\n");
    }

    #[test]
    fn kills_what_outlives_its_deadline() {
        let mut command = Command::new("sh");
        // The grandchild `sleep` holds the pipes too: the group kill must
        // reach it, or the capture would wait for it.
        command.args(["-c", "sleep 60; echo never"]);
        let started = Instant::now();
        let outcome = run_bounded(command, Duration::from_millis(300)).unwrap();
        assert!(outcome.is_err(), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
