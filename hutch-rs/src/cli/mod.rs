//! The application's own command line (feature `cli`).
//!
//! The consumers are registered in the application's binary, so that is
//! where the command line lives: one call in `main` gives the binary
//! `run` (the default) and the tools to look at and repair what it
//! declares.
//!
//! ```no_run
//! # #[cfg(feature = "cli")]
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     hutch_rs::cli::main(hutch_rs::Hutch::builder()).await
//! }
//! # #[cfg(not(feature = "cli"))]
//! # fn main() {}
//! ```
//!
//! ```text
//! $ shop                                   # run the consumers (as `shop run`)
//! $ shop consumers                         # what runs: queues, keys, settings
//! $ shop topology                          # everything it declares (--json)
//! $ shop asyncapi > asyncapi.json          # the AsyncAPI 3.0 document
//! $ shop dead list send_receipt            # what is in send_receipt's <queue>:dead
//! $ shop dead show send_receipt <message-id>
//! $ shop dead replay send_receipt --limit 10
//! $ shop dead purge send_receipt --yes
//! $ shop publish orders.placed '{"order_id": 7}'
//! ```
//!
//! Settings come from the builder given to [`main`], so from the
//! environment (`HUTCH_URI`, `HUTCH_NAMESPACE`...) as for `run`, and from
//! whatever the application set on it (state, middleware).

mod dead;
mod tables;

use std::{ffi::OsString, io::Write, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{Error, HutchBuilder};

/// The command line's arguments.
#[derive(Debug, Parser)]
#[command(
    about = "A hutch-rs application: runs its consumers, or looks at and repairs what they declare",
    long_about = None,
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the consumers until SIGINT or SIGTERM (the default).
    Run,
    /// List the consumers this binary runs: queue, routing keys, settings.
    Consumers,
    /// Everything this binary declares: the exchange, each consumer's
    /// queue, dead-letter queue and delay queues with their arguments, and
    /// the bindings.
    Topology {
        /// As JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The AsyncAPI 3.0 document of the exchange, the consumers and their
    /// message types, as JSON (needs hutch-rs's `asyncapi` feature).
    Asyncapi,
    /// Look at, replay or purge a consumer's dead-letter queue.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// Publish a JSON message to the exchange, confirmed.
    Publish {
        /// The routing key.
        routing_key: String,
        /// The message, as JSON.
        json: String,
    },
}

#[derive(Debug, Subcommand)]
enum DeadCommand {
    /// List the messages in the consumer's dead-letter queue, oldest
    /// first, leaving them there.
    List {
        /// The consumer: its function's name, `module::function`, or its
        /// queue.
        consumer: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead message in full: properties, headers and body.
    Show {
        /// The consumer.
        consumer: String,
        /// The message id (as `dead list` shows it).
        message_id: String,
        /// How far into the queue to look for it.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Put dead messages back in front of the consumer, oldest first:
    /// each moves in one transaction, so an interruption loses and
    /// duplicates nothing.
    Replay {
        /// The consumer.
        consumer: String,
        /// At most this many (all by default).
        #[arg(long)]
        limit: Option<usize>,
        /// Only list what would be replayed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete every message of the consumer's dead-letter queue.
    Purge {
        /// The consumer.
        consumer: String,
        /// Yes, delete them.
        #[arg(long)]
        yes: bool,
    },
}

/// What the command line ends with, besides success.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The arguments were not understood, or help or the version was
    /// asked for (clap's error, with its exit code and text).
    #[error("{0}")]
    Usage(#[from] clap::Error),
    /// The command failed.
    #[error(transparent)]
    Hutch(#[from] Error),
    /// The output could not be written.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// The command was understood but cannot be carried out as asked.
    #[error("{0}")]
    Refused(String),
}

/// Runs the command line of the process's arguments with `builder`'s
/// settings, prints what it has to say on standard output (errors on
/// standard error), and returns the exit code: 0, 1 for a failure, 2 for
/// arguments not understood.
pub async fn main(builder: HutchBuilder) -> ExitCode {
    let mut out = std::io::stdout();
    match run_with_args(std::env::args_os(), builder, &mut out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(error)) => {
            // Help and the version go to standard output with code 0.
            let _ = error.print();
            ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
        }
        Err(error) => {
            let _ = out.flush();
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command line of `args` (the program's name first) with
/// `builder`'s settings, writing its output to `out`: what [`main`] does,
/// for tests and for applications that parse part of their command line
/// themselves.
///
/// # Errors
///
/// [`CliError`]: arguments not understood, the command's failure, output
/// that cannot be written.
pub async fn run_with_args<I, T>(
    args: I,
    builder: HutchBuilder,
    out: &mut dyn Write,
) -> Result<(), CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    let command = cli.command.unwrap_or(Command::Run);
    let hutch = builder.build()?;
    match command {
        Command::Run => {
            crate::init_logging();
            let signal = crate::shutdown_signal()?;
            let outcome = hutch.run_until(signal).await;
            let closed = hutch.close().await;
            outcome.and(closed)?;
        }
        Command::Consumers => tables::consumers(&hutch.topology()?, out)?,
        Command::Topology { json } => {
            let topology = hutch.topology()?;
            if json {
                serde_json::to_writer_pretty(&mut *out, &topology)
                    .map_err(std::io::Error::other)?;
                writeln!(out)?;
            } else {
                tables::topology(&topology, out)?;
            }
        }
        Command::Asyncapi => asyncapi(&hutch, out)?,
        Command::Dead { command } => dead::run(&hutch, command, out).await?,
        Command::Publish { routing_key, json } => {
            let value: serde_json::Value = serde_json::from_str(&json)
                .map_err(|error| CliError::Refused(format!("the message is not JSON: {error}")))?;
            let published = hutch
                .publish_with(&routing_key, &value, crate::PublishOptions::new())
                .await;
            hutch.close().await?;
            writeln!(
                out,
                "published {} to {:?} with routing key {routing_key:?} (confirmed)",
                published?.message_id(),
                hutch.exchange()
            )?;
        }
    }
    Ok(())
}

#[cfg(feature = "asyncapi")]
fn asyncapi(hutch: &crate::Hutch, out: &mut dyn Write) -> Result<(), CliError> {
    let document = hutch.asyncapi()?;
    serde_json::to_writer_pretty(&mut *out, &document).map_err(std::io::Error::other)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(not(feature = "asyncapi"))]
fn asyncapi(_hutch: &crate::Hutch, _out: &mut dyn Write) -> Result<(), CliError> {
    Err(CliError::Refused(
        "this binary was built without hutch-rs's `asyncapi` feature: add it to the \
         hutch-rs dependency (features = [\"cli\", \"asyncapi\"]) and derive \
         schemars::JsonSchema for the message types"
            .to_owned(),
    ))
}
