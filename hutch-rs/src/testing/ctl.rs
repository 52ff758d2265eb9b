//! Running `rabbitmqctl` against one node.

use std::{process::Command, time::Duration};

use serde::de::DeserializeOwned;

use super::{
    BrokerError,
    command::{self, Finished, TimedOut},
    layout::NodeEnv,
    runtime::{Program, Runtime},
};

/// How long an ordinary `rabbitmqctl` call may take. Each call starts an
/// Erlang VM (about a second); anything near this limit means the node hangs.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// `rabbitmqctl -n <node>` with the node's environment.
#[derive(Debug, Clone)]
pub(crate) struct Ctl {
    runtime: Runtime,
    node: String,
    env: NodeEnv,
}

impl Ctl {
    pub(crate) fn new(runtime: Runtime, node: String, env: NodeEnv) -> Self {
        Self { runtime, node, env }
    }

    /// The command, ready to spawn.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = self.runtime.command(Program::Ctl, &self.env);
        command.arg("-n").arg(&self.node).args(args);
        command
    }

    /// Runs `rabbitmqctl -n <node> <args>` within `timeout` and returns what
    /// it did, successful or not.
    pub(crate) fn run_raw(
        &self,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Finished, BrokerError> {
        let command = self.command(args);
        let line = command::describe(&command);
        match command::run_bounded(command, timeout) {
            Ok(Ok(finished)) => Ok(finished),
            Ok(Err(TimedOut)) => Err(BrokerError::Timeout {
                command: line,
                timeout,
            }),
            Err(source) => Err(BrokerError::Spawn {
                program: self.runtime.describe(Program::Ctl),
                source,
            }),
        }
    }

    /// Runs `rabbitmqctl -n <node> <args>` and returns its stdout, or an
    /// error with its stderr if it fails.
    pub(crate) fn run(&self, args: &[&str]) -> Result<String, BrokerError> {
        let finished = self.run_raw(args, CALL_TIMEOUT)?;
        if finished.status.success() {
            Ok(finished.stdout)
        } else {
            Err(self.failure(args, &finished))
        }
    }

    /// The error for a failed call.
    pub(crate) fn failure(&self, args: &[&str], finished: &Finished) -> BrokerError {
        let output = if finished.stderr.trim().is_empty() {
            &finished.stdout
        } else {
            &finished.stderr
        };
        BrokerError::Rabbitmqctl {
            node: self.node.clone(),
            args: args.join(" "),
            status: finished.status.to_string(),
            stderr: output.trim().to_owned(),
        }
    }

    /// Runs a `list_*` command with the JSON formatter, one `T` per row.
    ///
    /// The JSON formatter is used because it is unambiguous where the
    /// tab-separated one is not (names may contain tabs, arguments are
    /// Erlang terms).
    pub(crate) fn list<T: DeserializeOwned>(
        &self,
        command: &str,
        columns: &[&str],
    ) -> Result<Vec<T>, BrokerError> {
        self.list_with(command, &[], columns)
    }

    /// [`Ctl::list`] of the virtual host `vhost` (`-p`), for the commands
    /// that take one.
    pub(crate) fn list_in<T: DeserializeOwned>(
        &self,
        command: &str,
        vhost: &str,
        columns: &[&str],
    ) -> Result<Vec<T>, BrokerError> {
        self.list_with(command, &["-p", vhost], columns)
    }

    fn list_with<T: DeserializeOwned>(
        &self,
        command: &str,
        options: &[&str],
        columns: &[&str],
    ) -> Result<Vec<T>, BrokerError> {
        let mut args = vec!["-q", command];
        args.extend_from_slice(options);
        args.extend_from_slice(&["--formatter", "json"]);
        args.extend_from_slice(columns);
        let stdout = self.run(&args)?;
        parse_json_rows(&stdout).map_err(|detail| BrokerError::Parse {
            command: format!("rabbitmqctl {}", args.join(" ")),
            detail,
        })
    }
}

/// Parses the JSON array `rabbitmqctl --formatter json` prints, skipping any
/// warning lines printed before it (the CLI warns about non-UTF-8 locales).
pub(crate) fn parse_json_rows<T: DeserializeOwned>(stdout: &str) -> Result<Vec<T>, String> {
    let mut start = 0;
    for line in stdout.split_inclusive('\n') {
        if line.trim_start().starts_with('[') {
            return serde_json::from_str(&stdout[start..])
                .map_err(|error| format!("{error} in {stdout:?}"));
        }
        start += line.len();
    }
    Err(format!("no JSON array in {stdout:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_after_noise() {
        let rows: Vec<serde_json::Value> =
            parse_json_rows("warning: [latin1]\n[\n{\"name\":\"a\"}\n,{\"name\":\"b\"}\n]\n")
                .unwrap();
        assert_eq!(rows.len(), 2);
        let empty: Vec<serde_json::Value> = parse_json_rows("[\n]\n").unwrap();
        assert!(empty.is_empty());
        assert!(parse_json_rows::<serde_json::Value>("Error: nope").is_err());
    }
}
