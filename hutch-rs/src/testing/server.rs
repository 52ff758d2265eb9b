//! The `rabbitmq-server` process and the events it produces.

use std::{
    fs::File,
    io,
    os::unix::process::CommandExt,
    process::{ExitStatus, Stdio},
    sync::mpsc::Sender,
    thread,
};

use super::{
    BrokerError,
    command::{Finished, TimedOut},
    layout::Layout,
    runtime::{Program, Runtime},
};

/// Something that happened to a starting or running node, delivered on one
/// channel so that startup can await whichever comes first.
#[derive(Debug)]
pub(crate) enum NodeEvent {
    /// The `rabbitmq-server` script exited (and with it the Erlang VM: the
    /// script waits for the VM).
    Exited(io::Result<ExitStatus>),
    /// `rabbitmqctl wait` returned.
    Ready(io::Result<Result<Finished, TimedOut>>),
}

/// The running `rabbitmq-server` script.
#[derive(Debug)]
pub(crate) struct Server {
    /// The script's pid, which is also its process group id: the Erlang VM
    /// and its helpers are in that group.
    pid: u32,
}

impl Server {
    /// Starts the node and a thread that reports its exit on `events`.
    pub(crate) fn spawn(
        runtime: &Runtime,
        layout: &Layout,
        events: Sender<NodeEvent>,
    ) -> Result<Self, BrokerError> {
        let log = |path: std::path::PathBuf| {
            File::create(path).map_err(|source| BrokerError::Setup {
                what: "creating the node's output files".to_owned(),
                source,
            })
        };
        let mut command = runtime.command(Program::Server, layout.env());
        // Output to files, never the test's own stdout/stderr (cargo would
        // wait for those pipes to close). Its own process group, so that the
        // watchdog, not a Ctrl-C on the test, decides when it stops, and so
        // that a last-resort kill reaches the Erlang VM too.
        command
            .stdin(Stdio::null())
            .stdout(log(layout.stdout_log())?)
            .stderr(log(layout.stderr_log())?)
            .process_group(0);
        let program = runtime.describe(Program::Server);
        let mut child = command.spawn().map_err(|source| BrokerError::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = child.id();
        tracing::debug!(pid, program, "started rabbitmq-server");
        thread::Builder::new()
            .name(format!("rabbitmq-server-{pid}"))
            .spawn(move || {
                let status = child.wait();
                tracing::debug!(pid, ?status, "rabbitmq-server exited");
                // Nobody listening means the broker is gone; nothing to tell.
                let _ = events.send(NodeEvent::Exited(status));
            })
            .map_err(|source| BrokerError::Spawn {
                program: "a thread to watch rabbitmq-server".to_owned(),
                source,
            })?;
        Ok(Self { pid })
    }

    /// The script's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }
}
