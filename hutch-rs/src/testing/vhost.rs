//! Virtual hosts of their own for tests, made and removed through the
//! management API.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::json;

use super::{BrokerError, management::Management};

/// What stays unencoded in a path segment: RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// How long a new virtual host may take to run on every node; it is started
/// during the `PUT` on RabbitMQ 3.10, so this is a margin only.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Numbers the virtual hosts of this process, for unique names.
static VHOST_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test's virtual host has: the process id, a counter and
/// random digits (processes of other machines can share a broker).
pub(crate) fn unique_name() -> String {
    format!(
        "hutch-test-{}-{}-{}",
        std::process::id(),
        VHOST_COUNTER.fetch_add(1, Ordering::Relaxed),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// `name` as one segment of a management API path or of an AMQP URI's
/// path; the default virtual host is `%2f`, as RabbitMQ's docs write it.
pub(crate) fn encode(name: &str) -> String {
    if name == "/" {
        return "%2f".to_owned();
    }
    utf8_percent_encode(name, SEGMENT).to_string()
}

/// Creates the virtual host `name`, gives `user` every permission on it and
/// waits until it runs.
pub(crate) fn create(management: &Management, name: &str, user: &str) -> Result<(), BrokerError> {
    let vhost = encode(name);
    management.request(
        "PUT",
        &format!("vhosts/{vhost}"),
        Some(&json!({"description": description(std::process::id(), &machine())})),
    )?;
    // The creator may already have them; set anyway, as the user of the
    // URI is what the tests connect as.
    let permissions = management.request(
        "PUT",
        &format!("permissions/{vhost}/{}", encode(user)),
        Some(&json!({"configure": ".*", "write": ".*", "read": ".*"})),
    );
    if let Err(error) = permissions {
        // Not left behind half made.
        let _ = delete(management, name);
        return Err(error);
    }
    await_running(management, name)
}

/// What a test virtual host's description starts with, before the process
/// id.
const DESCRIPTION_PREFIX: &str = "hutch-rs test virtual host of process ";

/// The description of the virtual hosts process `pid` of `machine` makes:
/// [`sweep_leftovers`] reads them back.
fn description(pid: u32, machine: &str) -> String {
    format!("{DESCRIPTION_PREFIX}{pid} on {machine}")
}

/// This machine, as the descriptions of its test virtual hosts name it:
/// the host name, and on Linux the boot id (process ids of one boot only
/// mean something within it).
fn machine() -> String {
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy().into_owned();
    match std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        Ok(boot) => format!("{host} (boot {})", boot.trim()),
        Err(_) => host,
    }
}

/// Whether process `pid` of this machine still runs: a process that cannot
/// be signalled (another user's) runs too.
fn running(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return true;
    };
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

/// The process of this machine that made the virtual host described by
/// `description`, if it was one of this machine's.
fn maker(description: &str, machine: &str) -> Option<u32> {
    description
        .strip_prefix(DESCRIPTION_PREFIX)?
        .strip_suffix(machine)?
        .strip_suffix(" on ")?
        .parse()
        .ok()
}

/// Deletes the test virtual hosts that processes of this machine left on
/// the broker when they ended: [`Broker::shared`](super::Broker::shared)'s
/// (never dropped) and those of killed tests. Virtual hosts of running
/// processes and of other machines are left alone. Returns how many went.
pub(crate) fn sweep_leftovers(management: &Management) -> Result<usize, BrokerError> {
    let machine = machine();
    let listed = management
        .request("GET", "vhosts", None)?
        .unwrap_or_default();
    let mut deleted = 0;
    for vhost in listed.as_array().into_iter().flatten() {
        let (Some(name), Some(description)) =
            (vhost["name"].as_str(), vhost["description"].as_str())
        else {
            continue;
        };
        let Some(pid) = maker(description, &machine) else {
            continue;
        };
        if name.starts_with("hutch-test-") && !running(pid) {
            delete(management, name)?;
            tracing::debug!(vhost = name, pid, "deleted a leftover test virtual host");
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Deletes the virtual host `name` and with it everything in it (queues,
/// exchanges, connections); one already gone counts as deleted.
pub(crate) fn delete(management: &Management, name: &str) -> Result<(), BrokerError> {
    match management.request("DELETE", &format!("vhosts/{}", encode(name)), None) {
        Ok(_)
        | Err(BrokerError::Management {
            status: Some(404), ..
        }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Waits until every node runs the virtual host (`cluster_state`), so that
/// the first connection to it is not refused as "vhost is down". There is
/// no event to await over HTTP; each look is one request.
fn await_running(management: &Management, name: &str) -> Result<(), BrokerError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let answer = management
            .request("GET", &format!("vhosts/{}", encode(name)), None)?
            .unwrap_or_default();
        let states = answer["cluster_state"].as_object();
        // Versions without `cluster_state` start it during the PUT.
        let running = states.is_none_or(|states| states.values().all(|state| state == "running"));
        if running {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BrokerError::Management {
                method: "GET".to_owned(),
                url: format!("{}/api/vhosts/{}", management.base_url(), encode(name)),
                status: None,
                detail: format!(
                    "the new virtual host did not run on every node within {START_TIMEOUT:?}: \
                     {}",
                    answer["cluster_state"]
                ),
            });
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_need_no_encoding() {
        let (first, second) = (unique_name(), unique_name());
        assert_ne!(first, second);
        assert_eq!(encode(&first), first);
        assert!(first.starts_with(&format!("hutch-test-{}-", std::process::id())));
    }

    #[test]
    fn leftovers_are_known_by_their_maker_on_this_machine() {
        let here = machine();
        assert_eq!(maker(&description(42, &here), &here), Some(42));
        assert_eq!(maker(&description(42, "elsewhere"), &here), None);
        assert_eq!(maker("a virtual host of someone else", &here), None);
        assert!(running(std::process::id()));
        // A child that has exited and been reaped runs no more.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!running(pid));
    }

    #[test]
    fn names_are_encoded_as_path_segments() {
        assert_eq!(encode("/"), "%2f");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
        assert_eq!(encode("shop.orders-1_x~"), "shop.orders-1_x~");
    }
}
