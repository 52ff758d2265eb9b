//! A consumer process configured from the environment alone, as an operator
//! runs a service, started by `tests/cluster.rs` against a TLS-only
//! cluster. Nothing about the broker is in the code: the nodes, the TLS
//! files, the queue type, the exchange and namespace all come from
//! `HUTCH_*` variables. It prints `consumed <n>` for every message.

use std::io::Write;

use hutch_rs::{BoxError, Message, consumer};
use hutch_rs_tests::failover::Tick;

#[consumer(routing_key = "operator.#", group = "operator")]
async fn operator(msg: Message<Tick>) -> Result<(), BoxError> {
    // Written and flushed before the ack: a line printed is a message that
    // reached the handler.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "consumed {}", msg.seq)?;
    stdout.flush()?;
    Ok(())
}

#[tokio::main]
async fn main() -> hutch_rs::Result<()> {
    hutch_rs::run().await
}
