use hutch_rs::{Message, consumer};

#[consumer(routing_key = "a", queue_type = "stream")]
async fn unknown_type(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

#[consumer(routing_key = "b", overflow = "drop-tail")]
async fn unknown_overflow(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

#[consumer(routing_key = "c", queue_type = "quorum", max_priority = 5)]
async fn priorities_on_quorum(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

#[consumer(routing_key = "d", queue_type = "classic", delivery_limit = 5)]
async fn delivery_limit_on_classic(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

#[consumer(routing_key = "e", arguments = [("max-age", "7D"), ("x-max-length", 5)])]
async fn bad_escape_hatch(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

#[consumer(routing_key = "f", single_active_consumer = "yes", max_priority = 0, arguments = "x")]
async fn bad_shapes(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {}
