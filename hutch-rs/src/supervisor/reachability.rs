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

use std::time::Duration;

use tokio::{net::TcpStream, time::Instant};

use crate::config::BrokerUri;

/// How often a refusing port is probed.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How often a port that accepts is probed again, in case it is about to
/// refuse: seldom, since each probe is a connection in the broker's log.
const ACCEPTING_RECHECK: Duration = Duration::from_secs(1);

/// Waits `delay` before the next connection attempt to `uri`, or less: until
/// its port accepts TCP connections again, if it refused them when the wait
/// began.
pub(super) async fn wait_before_retry(uri: &BrokerUri, delay: Duration) {
    let deadline = Instant::now() + delay;
    let authority = &uri.expose().authority;
    let address = (authority.host.as_str(), authority.port);
    let mut refused_before = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let probe = tokio::time::timeout(PROBE_INTERVAL, TcpStream::connect(address)).await;
        match probe {
            // Dropping the stream closes it before any AMQP is spoken.
            Ok(Ok(_stream)) if refused_before => {
                tracing::debug!(broker = %uri, "the broker accepts connections again");
                return;
            }
            // Accepting, but the broker may be about to close its port (a
            // connection lost to a stopping broker can be noticed first).
            Ok(Ok(_stream)) => {
                tokio::time::sleep_until((now + ACCEPTING_RECHECK).min(deadline)).await;
                continue;
            }
            // Refused, unresolvable, or no answer within the interval.
            Ok(Err(_)) | Err(_) => refused_before = true,
        }
        tokio::time::sleep_until((now + PROBE_INTERVAL).min(deadline)).await;
    }
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
