//! Free TCP ports for a new node.
//!
//! Ports are chosen at random *below* the kernel's ephemeral range. A port
//! from the ephemeral range (what binding port 0 returns) is free only until
//! the kernel hands it to somebody's outgoing connection, and a test run makes
//! many: every `rabbitmqctl` call connects to epmd and to the node, every
//! client to the broker. Below that range only explicit binds compete.

use std::{
    io,
    net::{Ipv4Addr, TcpListener},
};

/// Where the search starts when the ephemeral range is unknown or leaves too
/// little room below it.
const LOWEST: u16 = 20_000;

/// Linux's default start of the ephemeral range.
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

/// The three ports a node listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ports {
    /// AMQP 0-9-1 clients.
    pub(crate) amqp: u16,
    /// Erlang distribution (how `rabbitmqctl` talks to the node). Set
    /// explicitly because the default, AMQP + 20000, collides across nodes.
    pub(crate) dist: u16,
    /// The management plugin's HTTP API.
    pub(crate) management: u16,
}

impl Ports {
    /// Finds three distinct ports that are free on 127.0.0.1 right now.
    ///
    /// The probes are closed before the node binds the ports, so another
    /// process can still take one in between; the caller retries a start that
    /// fails with "address in use".
    pub(crate) fn pick() -> io::Result<Self> {
        let range = candidate_range();
        // All three probes are held open at once so the ports differ.
        let mut held = Vec::with_capacity(3);
        let mut attempts = 0;
        while held.len() < 3 {
            attempts += 1;
            if attempts > 200 {
                // Crowded or unusual machine: let the kernel choose.
                held.push(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?);
                continue;
            }
            let port = random_in(range);
            if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                held.push(listener);
            }
        }
        let port = |i: usize| held[i].local_addr().map(|addr| addr.port());
        Ok(Self {
            amqp: port(0)?,
            dist: port(1)?,
            management: port(2)?,
        })
    }
}

/// The ports to choose from: `LOWEST` up to the start of the ephemeral range.
fn candidate_range() -> (u16, u16) {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START);
    if ephemeral_start > LOWEST + 1_000 {
        (LOWEST, ephemeral_start - 1)
    } else {
        (LOWEST, DEFAULT_EPHEMERAL_START - 1)
    }
}

/// A random port in the inclusive range; `uuid` is the randomness at hand.
fn random_in((low, high): (u16, u16)) -> u16 {
    let span = u128::from(high - low) + 1;
    let offset = uuid::Uuid::new_v4().as_u128() % span;
    low + u16::try_from(offset).expect("offset is below a u16 span")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_below_the_ephemeral_range() {
        let (low, high) = candidate_range();
        let ports = Ports::pick().unwrap();
        for port in [ports.amqp, ports.dist, ports.management] {
            assert!((low..=high).contains(&port), "{port} not in {low}..={high}");
        }
        assert_ne!(ports.amqp, ports.dist);
        assert_ne!(ports.amqp, ports.management);
        assert_ne!(ports.dist, ports.management);
    }

    #[test]
    fn random_ports_stay_in_range() {
        for _ in 0..1000 {
            let port = random_in((20_000, 20_002));
            assert!((20_000..=20_002).contains(&port));
        }
    }
}
