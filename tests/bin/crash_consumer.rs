//! A consumer process that dies on every delivery, run as a child process by
//! `tests/queue_types.rs` (`a_message_that_kills_its_process_…`). Configured
//! from the environment alone (`HUTCH_URI`, `HUTCH_EXCHANGE`,
//! `HUTCH_NAMESPACE`, `HUTCH_GROUP`), as an operator would run it.

use hutch_rs::{BoxError, Message, consumer};
use hutch_rs_tests::Job;

/// Environment variable: the file where the handler writes each attempt
/// before it aborts the process.
const ATTEMPTS_FILE: &str = "HUTCH_TEST_ATTEMPTS_FILE";

#[consumer(
    routing_key = "crash.#",
    group = "crasher",
    queue_type = "quorum",
    delivery_limit = 2
)]
async fn crasher(msg: Message<Job>) -> Result<(), BoxError> {
    let file = std::env::var(ATTEMPTS_FILE).expect("the test names the attempts file");
    let mut attempts = std::fs::read_to_string(&file).unwrap_or_default();
    attempts.push_str(&format!("{}\n", msg.attempt()));
    std::fs::write(&file, attempts).expect("record the attempt");
    // What a segfault in a native library or an OOM kill does: no unwinding,
    // no ack, the connection drops with the process.
    std::process::abort();
}

#[tokio::main]
async fn main() -> hutch_rs::Result<()> {
    hutch_rs::run().await
}
