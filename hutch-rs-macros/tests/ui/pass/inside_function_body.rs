// A consumer can be declared in a function body (as tests do); it is
// registered when the program starts, whether or not the function runs.
use hutch_rs::{Message, consumer};

fn never_called() {
    #[consumer(routing_key = "orders.placed")]
    async fn in_fn(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
        Ok(())
    }
}

async fn never_awaited() {
    #[consumer(routing_key = "orders.paid")]
    async fn in_async_fn(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
        Ok(())
    }
}

fn main() {
    let _ = never_called;
    let _ = never_awaited;

    #[consumer(routing_key = "orders.*")]
    async fn in_main(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
        Ok(())
    }

    let consumers = hutch_rs::consumers();
    let mut names: Vec<_> = consumers.iter().map(|c| c.function()).collect();
    names.sort_unstable();
    assert_eq!(names, ["in_async_fn", "in_fn", "in_main"]);
    assert!(consumers.iter().all(|c| c.module_path() == module_path!()));
}
