use hutch_rs::{Message, QueueType, consumer};

#[consumer(routing_key = "orders.placed", queue_type = "quorum", delivery_limit = 5)]
async fn replicated(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

#[consumer(
    routing_key = "orders.audit",
    queue_type = "classic",
    max_length = 100000,
    max_length_bytes = 1000000000,
    overflow = "reject-publish",
    single_active_consumer = true,
    max_priority = 10,
    message_ttl = "24h",
    arguments = [("x-queue-version", 2), ("x-custom", "text"), ("x-flag", true)]
)]
async fn audited(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {
    let registered = hutch_rs::consumers();
    let replicated = registered
        .iter()
        .find(|registration| registration.function() == "replicated")
        .unwrap();
    let arguments = replicated.queue_arguments();
    assert_eq!(
        arguments,
        &hutch_rs::QueueArguments::new()
            .queue_type(QueueType::Quorum)
            .delivery_limit(5)
    );
}
