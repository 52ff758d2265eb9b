use hutch_rs::{Message, consumer};

// Like `anyhow::Error`: not `std::error::Error` itself, but convertible into `BoxError`.
#[derive(Debug)]
struct AnyError(String);

impl From<AnyError> for hutch_rs::BoxError {
    fn from(error: AnyError) -> Self {
        error.0.into()
    }
}

#[consumer(routing_key = "orders.placed")]
async fn with_any_error(_msg: Message<u64>) -> Result<(), AnyError> {
    Err(AnyError("failed".into()))
}

#[derive(Debug)]
struct ReceiptError;

impl std::fmt::Display for ReceiptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("receipt failed")
    }
}

impl std::error::Error for ReceiptError {}

#[consumer(routing_key = "orders.placed")]
async fn with_own_error(_msg: Message<u64>) -> Result<(), ReceiptError> {
    Ok(())
}

#[consumer(routing_key = "orders.placed")]
async fn with_io_error(_msg: Message<u64>) -> std::io::Result<()> {
    Ok(())
}

type HandlerResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[consumer(routing_key = "orders.placed")]
async fn with_alias(_msg: Message<u64>) -> HandlerResult {
    Ok(())
}

fn main() {
    assert_eq!(hutch_rs::consumers().len(), 4);
}
