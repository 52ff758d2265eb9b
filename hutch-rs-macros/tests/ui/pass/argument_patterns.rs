use hutch_rs::{Message, consumer};

#[consumer(routing_key = "a")]
async fn named(msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    let _ = msg;
    Ok(())
}

#[consumer(routing_key = "b")]
async fn underscored(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

#[consumer(routing_key = "c")]
async fn wildcard(_: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

#[consumer(routing_key = "d")]
async fn mutable(mut msg: Message<Vec<u64>>) -> Result<(), hutch_rs::BoxError> {
    let first = std::mem::take(&mut msg.into_body());
    msg = Message::new(first);
    let _ = msg;
    Ok(())
}

// A raw identifier is registered (and its queue named) without `r#`.
#[consumer(routing_key = "e")]
async fn r#match(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

fn main() {
    let names: Vec<_> = hutch_rs::consumers()
        .iter()
        .map(|registration| registration.function())
        .collect();
    assert_eq!(names, ["match", "mutable", "named", "underscored", "wildcard"]);
}
