//! The `dead` subcommands: list, show, replay and purge a consumer's
//! dead-letter queue, through [`Hutch::dead_letters`].

use std::{
    io::Write,
    time::{Duration, SystemTime},
};

use lapin::types::AMQPValue;

use super::{CliError, DeadCommand};
use crate::{DeadMessage, Hutch};

/// The longest error text `dead list` prints in its table.
const ERROR_COLUMN: usize = 60;

pub(super) async fn run(
    hutch: &Hutch,
    command: DeadCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        DeadCommand::List { consumer, limit } => {
            let dead = hutch.dead_letters(&consumer).await?;
            let total = dead.count().await?;
            let messages = dead.peek(limit).await?;
            dead.close().await?;
            list(&messages, total, out)?;
        }
        DeadCommand::Show {
            consumer,
            message_id,
            limit,
        } => {
            let dead = hutch.dead_letters(&consumer).await?;
            let messages = dead.peek(limit).await?;
            let queue = dead.dead_queue().to_owned();
            dead.close().await?;
            let Some(message) = messages
                .iter()
                .find(|message| message.message_id.as_deref() == Some(message_id.as_str()))
            else {
                return Err(CliError::Refused(format!(
                    "no message with id {message_id:?} among the first {} of {queue:?}",
                    messages.len()
                )));
            };
            show(message, out)?;
        }
        DeadCommand::Replay {
            consumer,
            limit,
            dry_run,
        } => {
            let dead = hutch.dead_letters(&consumer).await?;
            if dry_run {
                let total = dead.count().await?;
                let messages = dead.peek(limit.unwrap_or(usize::MAX)).await?;
                dead.close().await?;
                writeln!(
                    out,
                    "dry run: would replay {} message(s) to {}:",
                    messages.len(),
                    hutch_queue(hutch, &consumer)
                )?;
                list(&messages, total, out)?;
                return Ok(());
            }
            let replayed = dead.replay(limit).await;
            let queue = dead.queue().to_owned();
            dead.close().await?;
            let replayed = replayed?;
            writeln!(
                out,
                "replayed {} message(s) to {queue}; {} left in the dead-letter queue",
                replayed.replayed, replayed.remaining
            )?;
        }
        DeadCommand::Purge { consumer, yes } => {
            let dead = hutch.dead_letters(&consumer).await?;
            if !yes {
                let total = dead.count().await?;
                let queue = dead.dead_queue().to_owned();
                dead.close().await?;
                return Err(CliError::Refused(format!(
                    "{queue} holds {total} message(s); purging deletes them for good: \
                     add --yes to do it"
                )));
            }
            let purged = dead.purge().await;
            let queue = dead.dead_queue().to_owned();
            dead.close().await?;
            writeln!(out, "purged {} message(s) from {queue}", purged?)?;
        }
    }
    Ok(())
}

/// The consumer's queue, for the dry run's heading.
fn hutch_queue(hutch: &Hutch, consumer: &str) -> String {
    hutch
        .topology()
        .ok()
        .and_then(|topology| {
            topology
                .consumers
                .into_iter()
                .find(|described| {
                    described.name == consumer
                        || described.function == consumer
                        || described.queue.name == consumer
                })
                .map(|described| described.queue.name)
        })
        .unwrap_or_else(|| consumer.to_owned())
}

fn list(messages: &[DeadMessage], total: u32, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{total} message(s) in the dead-letter queue{}",
        if (messages.len() as u64) < u64::from(total) {
            format!(", the first {} listed", messages.len())
        } else {
            String::new()
        }
    )?;
    if messages.is_empty() {
        return Ok(());
    }
    let mut rows = vec![
        [
            "MESSAGE ID",
            "ROUTING KEY",
            "REASON",
            "ATTEMPTS",
            "FAILED",
            "ERROR",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for message in messages {
        rows.push(vec![
            message.message_id.clone().unwrap_or_else(|| "-".to_owned()),
            message
                .routing_key
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
            message
                .reason
                .clone()
                .unwrap_or_else(|| "(broker)".to_owned()),
            message
                .attempts
                .map_or_else(|| "-".to_owned(), |attempts| attempts.to_string()),
            message.failed_at.map_or_else(|| "-".to_owned(), ago),
            one_line(message.error.as_deref().unwrap_or("-"), ERROR_COLUMN),
        ]);
    }
    super::tables::aligned(&rows, out)
}

fn show(message: &DeadMessage, out: &mut dyn Write) -> std::io::Result<()> {
    let properties = &message.properties;
    let field = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    writeln!(out, "message id:     {}", field(message.message_id.clone()))?;
    writeln!(
        out,
        "routing key:    {}",
        field(message.routing_key.clone())
    )?;
    writeln!(out, "reason:         {}", field(message.reason.clone()))?;
    writeln!(
        out,
        "attempts:       {}",
        field(message.attempts.map(|n| n.to_string()))
    )?;
    writeln!(out, "failed:         {}", field(message.failed_at.map(ago)))?;
    writeln!(out, "replayed:       {} time(s)", message.replays)?;
    writeln!(out, "error:          {}", field(message.error.clone()))?;
    writeln!(
        out,
        "content type:   {}",
        field(
            properties
                .content_type()
                .as_ref()
                .map(|text| text.to_string())
        )
    )?;
    writeln!(
        out,
        "correlation id: {}",
        field(
            properties
                .correlation_id()
                .as_ref()
                .map(|text| text.to_string())
        )
    )?;
    writeln!(out, "headers:")?;
    if let Some(headers) = properties.headers() {
        for (name, value) in headers.inner() {
            writeln!(out, "  {name}: {}", header_value(value))?;
        }
    }
    writeln!(out, "body ({} bytes):", message.body.len())?;
    match serde_json::from_slice::<serde_json::Value>(&message.body) {
        Ok(json) => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        ),
        Err(_) => writeln!(out, "{}", String::from_utf8_lossy(&message.body)),
    }
}

/// A header's value as text: strings as they are, the rest as AMQP types.
fn header_value(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        AMQPValue::ShortString(text) => text.as_str().to_owned(),
        AMQPValue::Timestamp(seconds) => format!("{seconds} (unix seconds)"),
        other => format!("{other:?}"),
    }
}

/// How long ago `at` was, in whole seconds, and when.
fn ago(at: SystemTime) -> String {
    let elapsed = SystemTime::now()
        .duration_since(at)
        .unwrap_or(Duration::ZERO);
    let rounded = Duration::from_secs(elapsed.as_secs());
    format!("{} ago", humantime::format_duration(rounded))
}

/// `text` on one line, cut to `width` characters.
fn one_line(text: &str, width: usize) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().count() <= width {
        return line;
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}
