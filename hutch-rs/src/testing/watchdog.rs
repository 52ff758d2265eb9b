//! A helper process that stops the node when the test process goes away.
//!
//! A `static` (the shared broker) is never dropped, and a test process can be
//! killed outright, so `Drop` alone cannot promise that no node outlives its
//! tests. The watchdog is a small shell that blocks reading a pipe whose
//! write end only the test process holds. However the test process ends
//! (return, `exit`, panic, SIGKILL), the kernel closes that end, `read`
//! returns, and the watchdog kills the node and removes its directory.

use std::{
    fs::File,
    io::Write,
    os::unix::process::CommandExt,
    process::{Child, ChildStdin, Command, Stdio},
};

use super::{BrokerError, layout::Layout};

/// What the watchdog runs. Positional parameters: $1 the node's directory,
/// $2 its pid file, $3 the node's directory as the node sees it (its path
/// inside the tree for a node run through chroot, else $1).
///
/// It reads lines: `server <pid>` names the `rabbitmq-server` script (whose
/// pid is the node's process group id); `stopped` means the owner stopped
/// the node itself and only the directory is left to remove. End of file
/// without `stopped` means the owner is gone.
///
/// Before killing anything it checks, through /proc, that the process still
/// belongs to this node (its command line or environment names the node's
/// directory): a pid file can outlive its process, and pids are reused.
const SCRIPT: &str = r#"
dir=$1 pid_file=$2 node_dir=$3 server= verdict=
while IFS= read -r line; do
    case $line in
        "server "*) server=${line#server } ;;
        stopped) verdict=stopped; break ;;
    esac
done
if [ "$verdict" != stopped ]; then
    echo "owner gone: killing the node in $dir"
    vm=$(cat "$pid_file" 2>/dev/null)
    if [ -n "$vm" ] && tr '\0' ' ' <"/proc/$vm/cmdline" 2>/dev/null | grep -qF -- "-home $node_dir "; then
        # Only the VM: the server script then reaps it and exits.
        echo "killing the Erlang VM $vm"
        kill -s KILL "$vm"
    elif [ -n "$server" ] && tr '\0' '\n' <"/proc/$server/environ" 2>/dev/null | grep -qxF -- "HOME=$node_dir"; then
        # Still booting, no pid file yet: the whole process group.
        echo "killing the process group $server"
        kill -s KILL -- "-$server"
    fi
fi
rm -rf -- "$dir"
"#;

/// The running watchdog of one node.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Child,
    /// The only write end of the watchdog's stdin. std creates it with
    /// close-on-exec, so no other program we start inherits it.
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts the watchdog for the node laid out in `layout`. It is started
    /// before the node, so that there is never a moment a node runs
    /// unwatched.
    pub(crate) fn spawn(layout: &Layout) -> Result<Self, BrokerError> {
        let setup = |source| BrokerError::Setup {
            what: "creating the watchdog's log".to_owned(),
            source,
        };
        let log = File::create(layout.watchdog_log()).map_err(setup)?;
        let log_err = log.try_clone().map_err(setup)?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(SCRIPT)
            .arg("hutch-rabbitmq-watchdog")
            .arg(layout.root())
            .arg(layout.pid_file())
            .arg(layout.node_root())
            // Not the node's directory, which it removes.
            .current_dir("/")
            // Its output goes to a file, so that it never holds the test's
            // stdout or stderr open (cargo would wait for them).
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log_err)
            // Its own process group, so that a Ctrl-C on the test run does
            // not kill it before it has cleaned up.
            .process_group(0);
        let mut child = command.spawn().map_err(|source| BrokerError::Spawn {
            program: "sh (the node's watchdog)".to_owned(),
            source,
        })?;
        let stdin = child.stdin.take();
        tracing::debug!(pid = child.id(), "started watchdog");
        Ok(Self { child, stdin })
    }

    /// Tells the watchdog which process group to kill if the owner goes.
    pub(crate) fn watch(&mut self, server_pid: u32) {
        if let Some(stdin) = self.stdin.as_mut() {
            if let Err(error) = writeln!(stdin, "server {server_pid}") {
                // It still kills the VM named in the pid file.
                tracing::warn!(%error, "could not tell the watchdog the server's pid");
            }
        }
    }

    /// Releases the watchdog and waits for it to finish. With
    /// `node_stopped`, it only removes the directory; otherwise it kills the
    /// node first.
    pub(crate) fn finish(mut self, node_stopped: bool) {
        if let (Some(stdin), true) = (self.stdin.as_mut(), node_stopped) {
            // If the write fails the watchdog is already gone; nothing is
            // left to tell it.
            let _ = stdin.write_all(b"stopped\n");
        }
        // Closing our end is what wakes it.
        drop(self.stdin.take());
        match self.child.wait() {
            Ok(status) => tracing::debug!(%status, "watchdog finished"),
            Err(error) => tracing::warn!(%error, "could not wait for the watchdog"),
        }
    }
}
