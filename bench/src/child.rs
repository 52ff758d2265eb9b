//! Client runs as child processes (this binary, re-executed with `client
//! ...`), so that each one's CPU time and memory are its own; and the line
//! protocol between them: the child writes `READY`, `MARKER <unix nanos>`,
//! `CONFIRMED <count>` and `RESULT <json>` lines on its stdout, the
//! orchestrator writes `MEASURE`, `GO` and `FAILURE <unix nanos> <unix nanos>` on its
//! stdin and closes stdin to stop it.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, cli::ClientArgs, procfs, report::Idle};

/// The child says it consumes.
pub(crate) const READY: &str = "READY";
/// The child saw a recovery marker: `MARKER <unix nanos>`.
pub(crate) const MARKER: &str = "MARKER";
/// The child's measurement: `RESULT <json>`.
pub(crate) const RESULT: &str = "RESULT";
/// Asks an idle child to read its memory now.
pub(crate) const MEASURE: &str = "MEASURE";
/// Tells a failover child to start its stream, once the orchestrator has
/// checked where its connections and its queue are.
pub(crate) const GO: &str = "GO";
/// The failover child's progress: `CONFIRMED <count>`, once, when
/// [`FAILOVER_AT`](crate::workload::FAILOVER_AT) publishes were confirmed.
pub(crate) const CONFIRMED: &str = "CONFIRMED";
/// The orchestrator's answer to `CONFIRMED`, once the node is stopped:
/// `FAILURE <began> <cut>`, when it began stopping the node (the time from
/// which the child measures the longest pause in consuming) and when the
/// node's AMQP listener closed, about when its connections were cut. Without
/// a stop, both are when the orchestrator heard `CONFIRMED`.
pub(crate) const FAILURE: &str = "FAILURE";

/// How long a child may take to exit once asked to.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// A running client child, seen from the orchestrator.
#[derive(Debug)]
pub(crate) struct ClientProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl ClientProcess {
    /// Starts `hutch-rs-bench client ...`; its stderr goes to ours.
    ///
    /// With `HUTCH_BENCH_STRACE=<dir>` set, the child runs under
    /// `strace -f -c`, its system-call counts written to
    /// `<dir>/<implementation>-<scenario>.txt`: how many wake-ups (`futex`)
    /// and socket calls each implementation makes per message. Timings of
    /// such a run mean nothing.
    ///
    /// With `HUTCH_BENCH_PERF=<dir>`, the child runs under `perf record`
    /// instead, its profile written to
    /// `<dir>/<implementation>-<scenario>.data`: where the client's CPU
    /// time goes (`perf report -i …`). With `HUTCH_BENCH_CALLGRIND=<dir>`,
    /// under valgrind's callgrind, which counts the instructions each
    /// function executes (`callgrind_annotate …`): unlike CPU time on a
    /// shared machine, the same from one run to the next, so that small
    /// changes to a client's path can be compared. Timings of such a run
    /// mean nothing.
    pub(crate) fn spawn(args: &ClientArgs) -> Result<Self, Error> {
        let program = std::env::current_exe()?;
        let output = |dir: &std::ffi::OsStr, extension: &str| {
            std::path::Path::new(dir).join(format!(
                "{}-{}.{extension}",
                args.implementation, args.scenario
            ))
        };
        let mut command = if let Some(dir) = std::env::var_os("HUTCH_BENCH_STRACE") {
            let mut strace = Command::new("strace");
            strace
                .args(["-f", "-c", "-o"])
                .arg(output(&dir, "txt"))
                .arg(program);
            strace
        } else if let Some(dir) = std::env::var_os("HUTCH_BENCH_PERF") {
            let mut perf = Command::new("perf");
            perf.args(["record", "--quiet", "-F", "20000", "-o"])
                .arg(output(&dir, "data"))
                .arg("--")
                .arg(program);
            perf
        } else if let Some(dir) = std::env::var_os("HUTCH_BENCH_CALLGRIND") {
            let mut valgrind = Command::new("valgrind");
            valgrind
                .args(["--tool=callgrind", "--quiet"])
                .arg({
                    let mut flag = std::ffi::OsString::from("--callgrind-out-file=");
                    flag.push(output(&dir, "callgrind"));
                    flag
                })
                .arg(program);
            valgrind
        } else {
            Command::new(program)
        };
        let mut child = command
            .args(args.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("the child's stdout is piped")?;
        let (sender, lines) = mpsc::channel();
        // A thread of its own, so that the orchestrator can wait for a line
        // with a timeout (and the child never blocks on a full pipe).
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            name: format!("{} {}", args.implementation, args.scenario),
            stdin: child.stdin.take(),
            child,
            lines,
        })
    }

    /// Waits up to `timeout` for the next line starting with `word` and
    /// returns what follows it; other lines are passed on to stderr.
    pub(crate) fn expect(&mut self, word: &str, timeout: Duration) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match line.strip_prefix(word) {
                    Some(rest) => return Ok(rest.trim().to_owned()),
                    None => eprintln!("  [{}] {line}", self.name),
                },
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("{}: no {word} within {timeout:?}", self.name).into());
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    return Err(format!("{}: exited ({status}) before {word}", self.name).into());
                }
            }
        }
    }

    /// Runs a client to its end: starts it, waits up to `timeout` for its
    /// result, and for it to exit successfully.
    pub(crate) fn run<T: DeserializeOwned>(
        args: &ClientArgs,
        timeout: Duration,
    ) -> Result<T, Error> {
        let mut client = Self::spawn(args)?;
        let result = client.result(timeout)?;
        client.finish()?;
        Ok(result)
    }

    /// Waits for the child's `RESULT` line and parses it.
    pub(crate) fn result<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<T, Error> {
        let json = self.expect(RESULT, timeout)?;
        Ok(serde_json::from_str(&json)?)
    }

    /// Writes `line` to the child's stdin.
    pub(crate) fn send(&mut self, line: &str) -> Result<(), Error> {
        let stdin = self.stdin.as_mut().ok_or("the child's stdin is closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes the child's stdin (which tells it to stop) and waits for it to
    /// exit successfully; kills it if it takes too long.
    pub(crate) fn finish(mut self) -> Result<(), Error> {
        drop(self.stdin.take());
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return match status.success() {
                    true => Ok(()),
                    false => Err(format!("{} failed: {status}", self.name).into()),
                };
            }
            if Instant::now() >= deadline {
                self.child.kill()?;
                self.child.wait()?;
                return Err(format!("{} did not exit within {EXIT_TIMEOUT:?}", self.name).into());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ClientProcess {
    /// A child left behind by an error would keep consuming: it goes too.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// In the child: writes one protocol line (stdout is line-buffered, so it
/// leaves at once).
pub(crate) fn emit(word: &str, rest: impl std::fmt::Display) {
    println!("{word} {rest}");
}

/// In the child: writes the `RESULT` line.
pub(crate) fn emit_result(result: &impl Serialize) -> Result<(), Error> {
    emit(RESULT, serde_json::to_string(result)?);
    Ok(())
}

/// In the child: resolves with the next line from the orchestrator, or
/// `None` once it closed our stdin.
pub(crate) async fn from_orchestrator() -> Option<String> {
    // Blocking stdin on a thread of its own: tokio's stdin would need a
    // feature just for this.
    let (sender, receiver) = tokio::sync::oneshot::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let read = std::io::stdin().lock().read_line(&mut line);
        let _ = sender.send(match read {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim().to_owned()),
        });
    });
    receiver.await.ok().flatten()
}

/// In the child, idle scenario: waits for `MEASURE`, then reports this
/// process's resident memory.
pub(crate) async fn report_memory_when_asked(consumers: usize) -> Result<(), Error> {
    match from_orchestrator().await.as_deref() {
        Some(MEASURE) => emit_result(&Idle {
            consumers: consumers as u64,
            rss_kib: procfs::own_rss_kib()?,
        }),
        other => Err(format!("expected {MEASURE}, got {other:?}").into()),
    }
}
