//! The `consumers` and `topology` subcommands' text: aligned columns, one
//! row per consumer, as `kubectl get` or `rabbitmqctl list_queues` print.

use std::io::{self, Write};

use crate::{Topology, topology_description::QueueDescription};

/// Writes `rows` (the first is the header) with each column as wide as its
/// widest cell.
pub(super) fn aligned(rows: &[Vec<String>], out: &mut dyn Write) -> io::Result<()> {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == columns {
                line.push_str(cell);
            } else {
                let pad = widths[column] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `consumers`: consumer, queue, routing keys, group, queue type, prefetch,
/// concurrency, max attempts.
pub(super) fn consumers(topology: &Topology, out: &mut dyn Write) -> io::Result<()> {
    if topology.consumers.is_empty() {
        writeln!(out, "no consumers selected (group {:?})", topology.group)?;
        return Ok(());
    }
    let mut rows = vec![
        [
            "CONSUMER",
            "QUEUE",
            "ROUTING KEYS",
            "GROUP",
            "TYPE",
            "PREFETCH",
            "CONCURRENCY",
            "MAX ATTEMPTS",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for consumer in &topology.consumers {
        rows.push(vec![
            consumer.name.clone(),
            consumer.queue.name.clone(),
            consumer.routing_keys.join(", "),
            consumer.group.clone().unwrap_or_else(|| "-".to_owned()),
            consumer.queue.queue_type.as_str().to_owned(),
            consumer.prefetch.to_string(),
            consumer.concurrency.to_string(),
            consumer.max_attempts.to_string(),
        ]);
    }
    aligned(&rows, out)
}

/// `topology`: the exchange, then per consumer its queues with their
/// arguments and its bindings.
pub(super) fn topology(topology: &Topology, out: &mut dyn Write) -> io::Result<()> {
    let exchange = &topology.exchange;
    writeln!(
        out,
        "exchange {} ({}, {})",
        exchange.name,
        exchange.kind,
        if exchange.durable {
            "durable"
        } else {
            "transient"
        }
    )?;
    for consumer in &topology.consumers {
        writeln!(out)?;
        writeln!(out, "consumer {}", consumer.name)?;
        queue_line(out, "queue", &consumer.queue)?;
        queue_line(out, "dead-letter queue", &consumer.dead_letter_queue)?;
        for delay in &consumer.delay_queues {
            queue_line(out, "delay queue", &delay.queue)?;
        }
        for binding in &consumer.bindings {
            writeln!(
                out,
                "  binding    {} -> {} with {:?}{}",
                binding.source,
                binding.destination,
                binding.routing_key,
                arguments(&binding.arguments)
            )?;
        }
    }
    Ok(())
}

fn queue_line(out: &mut dyn Write, what: &str, queue: &QueueDescription) -> io::Result<()> {
    writeln!(
        out,
        "  {what:<17} {} ({}{}){}",
        queue.name,
        queue.queue_type.as_str(),
        if queue.durable { ", durable" } else { "" },
        arguments(&queue.arguments)
    )
}

fn arguments(arguments: &std::collections::BTreeMap<String, serde_json::Value>) -> String {
    if arguments.is_empty() {
        return String::new();
    }
    let listed: Vec<String> = arguments
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    format!(" [{}]", listed.join(", "))
}
