//! The AMQP properties hutch-rs sets on everything it publishes.

use std::time::{SystemTime, UNIX_EPOCH};

/// AMQP delivery mode 2: the broker writes the message to disk in a durable
/// queue.
pub(crate) const PERSISTENT: u8 = 2;

/// `time` in seconds since the Unix epoch, as AMQP timestamps are.
pub(crate) fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}
