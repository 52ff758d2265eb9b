use hutch_rs::{Message, consumer};

#[consumer(routing_key = "images.resize", prefetch = 64, concurrency = 8)]
async fn resize(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

// Equal is allowed; typed literals; one given alone.
#[consumer(routing_key = "images.thumbnail", prefetch = 16u16, concurrency = 16u16)]
async fn thumbnail(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

#[consumer(routing_key = "images.upload", prefetch = 65535)]
async fn upload(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
    Ok(())
}

// Values forwarded by a user's macro are checked like values written out.
macro_rules! with_flow {
    ($name:ident, $prefetch:expr, $concurrency:expr) => {
        #[consumer(routing_key = "images.#", prefetch = $prefetch, concurrency = $concurrency)]
        async fn $name(_msg: Message<u64>) -> Result<(), hutch_rs::BoxError> {
            Ok(())
        }
    };
}

with_flow!(watch, 10, 1);

fn main() {
    let consumers = hutch_rs::consumers();
    assert_eq!(consumers.len(), 4);
    let resize = consumers[0];
    assert_eq!(resize.function(), "resize");
    assert_eq!(resize.prefetch(), Some(64));
    assert_eq!(resize.concurrency(), Some(8));
    let thumbnail = consumers[1];
    assert_eq!(thumbnail.function(), "thumbnail");
    assert_eq!(thumbnail.prefetch(), Some(16));
    assert_eq!(thumbnail.concurrency(), Some(16));
    let upload = consumers[2];
    assert_eq!(upload.function(), "upload");
    assert_eq!(upload.prefetch(), Some(u16::MAX));
    assert_eq!(upload.concurrency(), None);
    let watch = consumers[3];
    assert_eq!(watch.function(), "watch");
    assert_eq!(watch.prefetch(), Some(10));
    assert_eq!(watch.concurrency(), Some(1));
    let debug = format!("{resize:?}");
    assert!(debug.contains("prefetch: Some(64)"), "{debug}");
    assert!(debug.contains("concurrency: Some(8)"), "{debug}");
}
