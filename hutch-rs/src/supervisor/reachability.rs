//! Waiting between connection attempts without missing the broker's return.
//!
//! The reconnect backoff grows through a long outage (up to 30 s by
//! default), so that a broker that is down is not hammered with AMQP
//! handshakes. But when it comes back, waiting out the rest of a long delay
//! is pure loss: messages sit unconsumed. While the broker's port refuses
//! TCP connections, a refused connect costs it nothing, so the wait probes
//! the port and ends as soon as it accepts again. A port that already
//! accepts (the broker is up but refused the handshake, say) is probed only
//! once a second, so that the broker's log is not filled with half-open
//! connections; the wait ends early only after the port was seen refusing.

use std::{io::ErrorKind, time::Duration};

use tokio::{net::TcpStream, time::Instant};

use crate::config::BrokerUri;

/// How often a refusing port is probed.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How often a port that accepts is probed again, in case it is about to
/// refuse: seldom, since each probe is a connection in the broker's log.
const ACCEPTING_RECHECK: Duration = Duration::from_secs(1);

/// How long one probe may take; a probe without an answer says nothing.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Waits `delay` before the next connection attempt to `uri`, or less: until
/// its port accepts TCP connections again, if it refused them when the wait
/// began. Never longer than `delay`.
pub(super) async fn wait_before_retry(uri: &BrokerUri, delay: Duration) {
    let deadline = Instant::now() + delay;
    let authority = &uri.expose().authority;
    // Resolved once per wait: a resolver that hangs during an outage must
    // not pile up blocking lookups, one per probe.
    let resolved = tokio::time::timeout_at(
        deadline.min(Instant::now() + PROBE_TIMEOUT),
        tokio::net::lookup_host((authority.host.as_str(), authority.port)),
    )
    .await;
    let Some(address) = resolved
        .ok()
        .and_then(Result::ok)
        .and_then(|mut found| found.next())
    else {
        tokio::time::sleep_until(deadline).await;
        return;
    };
    let mut refused_before = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let probe = tokio::time::timeout_at(
            (now + PROBE_TIMEOUT).min(deadline),
            TcpStream::connect(address),
        )
        .await;
        match probe {
            Ok(Ok(stream)) => {
                // Closed before any AMQP is spoken.
                drop(stream);
                if refused_before {
                    tracing::debug!(broker = %uri, "the broker accepts connections again");
                    return;
                }
                // Accepting, but the broker may be about to close its port
                // (a connection lost to a stopping broker can be noticed
                // first): look again, seldom.
                tokio::time::sleep_until((now + ACCEPTING_RECHECK).min(deadline)).await;
                continue;
            }
            Ok(Err(error)) if says_nobody_listens(&error) => refused_before = true,
            // No answer in time, or another failure: no news of the port.
            Ok(Err(_)) | Err(_) => {}
        }
        tokio::time::sleep_until((now + PROBE_INTERVAL).min(deadline)).await;
    }
}

/// Whether a failed connect shows that nothing accepts there now (as
/// opposed to a slow or lossy path, which says nothing either way).
fn says_nobody_listens(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable
    )
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn uri_of_port(port: u16) -> BrokerUri {
        BrokerUri::parse(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).unwrap()
    }

    /// A port nothing listens on: bound, then released.
    fn closed_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn a_port_that_accepts_from_the_start_waits_the_full_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = uri_of_port(listener.local_addr().unwrap().port());
        let started = std::time::Instant::now();
        wait_before_retry(&uri, Duration::from_millis(400)).await;
        assert!(started.elapsed() >= Duration::from_millis(400));
    }

    #[tokio::test]
    async fn a_refusing_port_waits_the_full_delay() {
        let uri = uri_of_port(closed_port());
        let started = std::time::Instant::now();
        wait_before_retry(&uri, Duration::from_millis(400)).await;
        assert!(started.elapsed() >= Duration::from_millis(400));
    }

    #[tokio::test]
    async fn a_port_that_starts_accepting_ends_the_wait_early() {
        let port = closed_port();
        let uri = uri_of_port(port);
        let started = std::time::Instant::now();
        let waiting = tokio::spawn(async move {
            wait_before_retry(&uri, Duration::from_secs(30)).await;
            std::time::Instant::now()
        });
        // Let the wait see the port refuse, then open it.
        tokio::time::sleep(PROBE_INTERVAL * 3).await;
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let opened = std::time::Instant::now();
        let ended = waiting.await.unwrap();
        assert!(ended >= opened);
        assert!(
            ended - opened <= PROBE_INTERVAL * 3,
            "noticed {:?} after the port opened",
            ended - opened
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(listener);
    }
}
