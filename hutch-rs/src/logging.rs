//! A plain log output for applications that have not chosen one.
//!
//! hutch-rs reports through `tracing`. A library must not pick where logs
//! go, but an application that set up nothing would otherwise hear nothing
//! at all: not that the broker cannot be reached, not why. So the
//! application-level entry point [`run`](crate::run) installs this plain
//! output when no subscriber is installed, and [`init_logging`] lets an
//! application ask for it first thing in `main`.

use tracing_subscriber::{EnvFilter, fmt};

/// What is logged when `RUST_LOG` is not set: hutch-rs's own progress at
/// `info` (connections, consumers, failures), everything else's warnings.
const DEFAULT_FILTER: &str = "warn,hutch_rs=info";

/// Installs a plain log output to standard error, filtered by `RUST_LOG`
/// (default: `warn,hutch_rs=info`), unless the application has installed a
/// `tracing` subscriber already. Returns whether it installed one.
///
/// Call it first thing in `main` if you have no logging set up of your own:
/// an unreachable broker, a refused declaration or a failing handler is then
/// on screen at once.
///
/// ```no_run
/// #[tokio::main]
/// async fn main() -> hutch_rs::Result<()> {
///     hutch_rs::init_logging();
///     hutch_rs::run().await
/// }
/// ```
pub fn init_logging() -> bool {
    if tracing::dispatcher::has_been_set() {
        return false;
    }
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
        .is_ok()
}
