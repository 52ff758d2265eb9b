//! Waiting between connection attempts without missing the broker's return.
//!
//! The reconnect backoff grows through a long outage (up to 30 s by
//! default), so that a broker that is down is not hammered with AMQP
//! handshakes. But when it comes back, waiting out the rest of a long delay
//! is pure loss: messages sit unconsumed. While the broker's port refuses
//! TCP connections, a refused connect costs it nothing, so the wait probes
//! the port and ends as soon as it accepts again.
//!
//! A port that accepts is another matter: each probe is a connection in the
//! broker's log, or in the log of a load balancer in front of it (whose
//! port accepts all through the outage, so the probes would never learn
//! anything). The wait ends early only after the port was seen refusing, so
//! an accepting port needs looking at again only when it may be about to
//! refuse: just after the connection was lost, which can be noticed before
//! a stopping broker closes its port. So it is probed again once a second
//! for the first [`ACCEPTING_WINDOW`] of an outage, and after that once per
//! wait at most: a wait that finds the port accepting then sleeps its
//! delay out, as a plain backoff would.

use std::{io::ErrorKind, time::Duration};

use tokio::{net::TcpStream, time::Instant};

use crate::config::BrokerUri;

/// How often a refusing port is probed.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How often a port that accepts is probed again, in case it is about to
/// refuse: seldom, since each probe is a connection in the broker's log.
const ACCEPTING_RECHECK: Duration = Duration::from_secs(1);
/// For how long after the connection was lost a port that accepts is
/// probed again: long enough for a stopping broker to close its port after
/// its connections.
pub(super) const ACCEPTING_WINDOW: Duration = Duration::from_secs(5);

/// How long one probe may take; a probe without an answer says nothing.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Waits `delay` before the next connection attempt to `uri`, or less: until
/// its port accepts TCP connections again, once it was seen refusing them.
/// Never longer than `delay`. `outage_began` is when the connection was
/// lost (or first tried): the port is probed once when the wait begins, and
/// if it accepts, probed again only within [`ACCEPTING_WINDOW`] of that.
pub(super) async fn wait_before_retry(uri: &BrokerUri, delay: Duration, outage_began: Instant) {
    let deadline = Instant::now() + delay;
    let recheck_accepting_until = outage_began + ACCEPTING_WINDOW;
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
                // first): look again, seldom, and only early in the outage.
                let recheck = now + ACCEPTING_RECHECK;
                if recheck >= recheck_accepting_until {
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
                tokio::time::sleep_until(recheck.min(deadline)).await;
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
    use std::{
        net::TcpListener,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use super::*;

    /// A port that accepts every connection and closes it at once (as a
    /// load balancer without a backend would), counting them.
    async fn counting_listener() -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counting = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counting.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        (port, accepted, task)
    }

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
        wait_before_retry(&uri, Duration::from_millis(400), Instant::now()).await;
        assert!(started.elapsed() >= Duration::from_millis(400));
    }

    #[tokio::test]
    async fn a_refusing_port_waits_the_full_delay() {
        let uri = uri_of_port(closed_port());
        let started = std::time::Instant::now();
        wait_before_retry(&uri, Duration::from_millis(400), Instant::now()).await;
        assert!(started.elapsed() >= Duration::from_millis(400));
    }

    #[tokio::test]
    async fn a_port_that_starts_accepting_ends_the_wait_early() {
        let port = closed_port();
        let uri = uri_of_port(port);
        let started = std::time::Instant::now();
        let waiting = tokio::spawn(async move {
            wait_before_retry(&uri, Duration::from_secs(30), Instant::now()).await;
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

    #[tokio::test]
    async fn an_accepting_port_is_probed_once_per_wait_later_in_an_outage() {
        let (port, accepted, listening) = counting_listener().await;
        let uri = uri_of_port(port);
        let outage_began = Instant::now() - Duration::from_secs(60);
        let started = std::time::Instant::now();
        wait_before_retry(&uri, Duration::from_secs(3), outage_began).await;
        assert!(started.elapsed() >= Duration::from_secs(3));
        // Once a second would be three connections in the broker's log.
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        listening.abort();
    }

    #[tokio::test]
    async fn an_accepting_port_is_probed_again_only_early_in_an_outage() {
        let (port, accepted, listening) = counting_listener().await;
        let uri = uri_of_port(port);
        let started = std::time::Instant::now();
        wait_before_retry(
            &uri,
            ACCEPTING_WINDOW + Duration::from_secs(3),
            Instant::now(),
        )
        .await;
        assert!(started.elapsed() >= ACCEPTING_WINDOW + Duration::from_secs(3));
        // Once a second within the window, then no more: not eight.
        let probes = accepted.load(Ordering::SeqCst);
        assert!(
            (1..=5).contains(&probes),
            "{probes} probes of an accepting port"
        );
        listening.abort();
    }

    #[tokio::test]
    async fn a_port_that_closes_early_in_the_outage_ends_the_wait_when_it_reopens() {
        // The connection loss is noticed before the broker closes its port:
        // the first probe finds it accepting.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let uri = uri_of_port(port);
        let waiting = tokio::spawn(async move {
            wait_before_retry(&uri, Duration::from_secs(30), Instant::now()).await;
            std::time::Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(listener);
        // The recheck a second in sees it refusing.
        tokio::time::sleep(ACCEPTING_RECHECK * 2).await;
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let reopened = std::time::Instant::now();
        let ended = waiting.await.unwrap();
        assert!(ended >= reopened);
        assert!(
            ended - reopened <= PROBE_INTERVAL * 3,
            "noticed {:?} after the port reopened",
            ended - reopened
        );
        drop(listener);
    }
}
