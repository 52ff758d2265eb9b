use hutch_rs::consumer;

#[consumer(routing_key = "orders.placed")]
struct SendReceipt;

fn main() {}
