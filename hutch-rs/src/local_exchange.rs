//! Where a `Hutch` publishes when it has no broker: the in-memory test
//! broker (`testing::TestBroker`, feature `testing`) plugs in here, below
//! everything a publish checks and builds (routing key, properties, message
//! id, timestamp, trace headers), so that what it receives is exactly what
//! a broker would.

use std::fmt::Debug;

use lapin::BasicProperties;
use tokio::sync::oneshot;

use crate::Result;

/// An exchange in this process that takes a `Hutch`'s publishes instead of
/// a broker.
pub(crate) trait LocalExchange: Debug + Send + Sync {
    /// Routes one message as a broker would and answers as its confirm
    /// would: `Ok` once it is queued, [`Error::Unroutable`](crate::Error)
    /// for a mandatory message no queue is bound for.
    fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        properties: BasicProperties,
        body: &[u8],
    ) -> Result<()>;

    /// Routes a request (mandatory, its `correlation_id` and `reply_to` set
    /// in `properties`) and returns where its reply will come:
    /// [`Error::Unroutable`](crate::Error) if no queue is bound for it.
    fn request(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        body: &[u8],
    ) -> Result<oneshot::Receiver<Vec<u8>>>;
}
