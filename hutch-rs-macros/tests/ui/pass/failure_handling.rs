use std::time::Duration;

use hutch_rs::{Message, consumer};

#[consumer(
    routing_key = "payments.charge",
    max_attempts = 5,
    retry_min_delay = "500ms",
    retry_max_delay = "1m 30s",
    timeout = "30s"
)]
async fn charge(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

// One attempt, no retries; a typed literal and a long delay at RabbitMQ's limit.
#[consumer(routing_key = "payments.refund", max_attempts = 1u32, retry_max_delay = "4294967295ms")]
async fn refund(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

// Values forwarded by a user's macro are checked like values written out.
macro_rules! with_retries {
    ($name:ident, $attempts:expr, $timeout:literal) => {
        #[consumer(routing_key = "payments.#", max_attempts = $attempts, timeout = $timeout)]
        async fn $name(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
            Ok(())
        }
    };
}

with_retries!(watch, 7, "2m");

fn main() {
    let consumers = hutch_rs::consumers();
    assert_eq!(consumers.len(), 3);
    let charge = consumers[0];
    assert_eq!(charge.function(), "charge");
    assert_eq!(charge.max_attempts(), Some(5));
    assert_eq!(charge.retry_min_delay(), Some(Duration::from_millis(500)));
    assert_eq!(charge.retry_max_delay(), Some(Duration::from_secs(90)));
    assert_eq!(charge.timeout(), Some(Duration::from_secs(30)));
    let refund = consumers[1];
    assert_eq!(refund.max_attempts(), Some(1));
    assert_eq!(refund.retry_min_delay(), None);
    assert_eq!(refund.retry_max_delay(), Some(Duration::from_millis(u32::MAX.into())));
    assert_eq!(refund.timeout(), None);
    let watch = consumers[2];
    assert_eq!(watch.max_attempts(), Some(7));
    assert_eq!(watch.timeout(), Some(Duration::from_secs(120)));
}
