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
        Some(&json!({
            "description": format!(
                "hutch-rs test virtual host of process {}, deleted when its test ends",
                std::process::id()
            ),
        })),
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
    fn names_are_encoded_as_path_segments() {
        assert_eq!(encode("/"), "%2f");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
        assert_eq!(encode("shop.orders-1_x~"), "shop.orders-1_x~");
    }
}
