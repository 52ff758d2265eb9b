//! A RabbitMQ the developer or the CI runs (`HUTCH_TEST_URI`), used instead
//! of a private node: tests get virtual hosts of it, never the node.

use std::{fmt, str::FromStr};

use lapin::uri::AMQPUri;

use super::{BrokerError, management::Management};

/// The environment variable with the AMQP URI of an existing broker; set,
/// [`Broker::start`](super::Broker::start) and
/// [`Broker::shared`](super::Broker::shared) start no node.
pub(crate) const URI_VAR: &str = "HUTCH_TEST_URI";

/// The environment variable with the existing broker's management API URL,
/// when it is not `http://<host of HUTCH_TEST_URI>:15672`.
pub(crate) const MANAGEMENT_URL_VAR: &str = "HUTCH_TEST_MANAGEMENT_URL";

/// The management plugin's default port.
const DEFAULT_MANAGEMENT_PORT: u16 = 15672;

/// Where an existing broker is: its AMQP URI and its management API.
pub(crate) struct Existing {
    /// `scheme://userinfo@host:port` as given: holds the password.
    authority: String,
    /// `?…` as given, or empty.
    query: String,
    /// The URI with the password masked, for messages.
    masked: String,
    username: String,
    amqp_port: u16,
    management: Management,
    management_port: u16,
    node_name: String,
    version: String,
}

impl fmt::Debug for Existing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Existing")
            .field("uri", &self.masked)
            .field("management_url", &self.management.base_url())
            .field("node_name", &self.node_name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Existing {
    /// The broker `HUTCH_TEST_URI` names, if it is set (and not empty).
    pub(crate) fn from_env() -> Result<Option<Self>, BrokerError> {
        let Some(uri) = std::env::var_os(URI_VAR).filter(|uri| !uri.is_empty()) else {
            return Ok(None);
        };
        let uri = uri.into_string().map_err(|_| BrokerError::Existing {
            broker: URI_VAR.to_owned(),
            reason: format!("{URI_VAR} is not valid UTF-8"),
        })?;
        let management_url = std::env::var(MANAGEMENT_URL_VAR)
            .ok()
            .filter(|url| !url.is_empty());
        Self::connect(&uri, management_url.as_deref()).map(Some)
    }

    /// Checks `uri` and asks the management API (at `management_url`, or
    /// port 15672 of the URI's host) who the broker is, as the URI's user.
    pub(crate) fn connect(uri: &str, management_url: Option<&str>) -> Result<Self, BrokerError> {
        let parts = UriParts::split(uri)?;
        let parsed = AMQPUri::from_str(uri).map_err(|reason| BrokerError::Existing {
            broker: parts.masked_hint(),
            // lapin's message may quote the URI, password and all.
            reason: format!(
                "not an AMQP URI ({}); expected e.g. amqp://guest:guest@localhost:5672/",
                reason.replace(uri, "<uri>")
            ),
        })?;
        let userinfo = &parsed.authority.userinfo;
        let host = &parsed.authority.host;
        let masked = format!(
            "{}://{}:***@{}:{}",
            parts.scheme, userinfo.username, host, parsed.authority.port
        );
        let management_base = match management_url {
            Some(url) => check_management_url(url)?,
            None => default_management_url(host),
        };
        let management_port = management_base
            .parse::<ureq::http::Uri>()
            .ok()
            .and_then(|parsed| parsed.port_u16())
            .unwrap_or(80);
        let management = Management::new(
            management_base.clone(),
            &userinfo.username,
            &userinfo.password,
        );
        let overview = management
            .request("GET", "overview", None)
            .map_err(|error| explain_refusal(&management_base, &userinfo.username, error))?
            .unwrap_or_default();
        let field = |name: &str| {
            overview[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| BrokerError::Existing {
                    broker: management_base.clone(),
                    reason: format!(
                        "/api/overview names no {name}; is this RabbitMQ's management API?"
                    ),
                })
        };
        Ok(Self {
            node_name: field("node")?,
            version: field("rabbitmq_version")?,
            authority: parts.authority,
            query: parts.query,
            masked,
            username: userinfo.username.clone(),
            amqp_port: parsed.authority.port,
            management,
            management_port,
        })
    }

    /// The URI as given, on the virtual host `encoded_vhost` instead of its
    /// own.
    pub(crate) fn amqp_uri(&self, encoded_vhost: &str) -> String {
        format!("{}/{encoded_vhost}{}", self.authority, self.query)
    }

    /// The URI's port.
    pub(crate) fn amqp_port(&self) -> u16 {
        self.amqp_port
    }

    /// The user of the URI, who gets the permissions on test virtual hosts.
    pub(crate) fn username(&self) -> &str {
        &self.username
    }

    /// The management API, as the URI's user.
    pub(crate) fn management(&self) -> &Management {
        &self.management
    }

    /// The management API's port.
    pub(crate) fn management_port(&self) -> u16 {
        self.management_port
    }

    /// The broker's Erlang node name, e.g. `rabbit@3f2a…`.
    pub(crate) fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The broker's RabbitMQ version.
    pub(crate) fn version(&self) -> &str {
        &self.version
    }
}

/// An AMQP URI cut where its virtual host goes.
struct UriParts {
    scheme: String,
    /// `scheme://userinfo@host:port`.
    authority: String,
    /// `?…`, or empty.
    query: String,
}

impl UriParts {
    fn split(uri: &str) -> Result<Self, BrokerError> {
        let malformed = |reason: &str| BrokerError::Existing {
            broker: URI_VAR.to_owned(),
            reason: format!("{reason}; expected e.g. amqp://guest:guest@localhost:5672/"),
        };
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| malformed("the AMQP URI has no scheme (amqp://)"))?;
        if scheme != "amqp" && scheme != "amqps" {
            return Err(malformed(&format!(
                "the URI's scheme is {scheme:?}, not amqp or amqps"
            )));
        }
        let without_fragment = rest.split('#').next().unwrap_or_default();
        let authority_end = without_fragment
            .find(['/', '?'])
            .unwrap_or(without_fragment.len());
        let query = without_fragment[authority_end..]
            .find('?')
            .map(|start| without_fragment[authority_end + start..].to_owned())
            .unwrap_or_default();
        Ok(Self {
            scheme: scheme.to_owned(),
            authority: format!("{scheme}://{}", &without_fragment[..authority_end]),
            query,
        })
    }

    /// The URI's host and port, without credentials, for an error about it.
    fn masked_hint(&self) -> String {
        let host = self
            .authority
            .rsplit_once('@')
            .map_or(&self.authority[self.scheme.len() + 3..], |(_, host)| host);
        format!("{}://{host} ({URI_VAR})", self.scheme)
    }
}

/// The management plugin's default listener on `host`.
fn default_management_url(host: &str) -> String {
    if host.contains(':') {
        format!("http://[{host}]:{DEFAULT_MANAGEMENT_PORT}")
    } else {
        format!("http://{host}:{DEFAULT_MANAGEMENT_PORT}")
    }
}

/// `url` without its trailing slash, if the harness can use it.
fn check_management_url(url: &str) -> Result<String, BrokerError> {
    let refuse = |reason: &str| BrokerError::Existing {
        broker: MANAGEMENT_URL_VAR.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(refuse(
            "the management URL must start with http:// (the harness speaks plain HTTP; \
             https is not supported), e.g. http://localhost:15672",
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(refuse(
            "the management URL holds credentials; leave them out: the harness logs in with \
             the user and password of HUTCH_TEST_URI",
        ));
    }
    if url.parse::<ureq::http::Uri>().is_err() || authority.is_empty() {
        return Err(refuse(&format!(
            "{url:?} is not a URL, e.g. http://localhost:15672"
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The error for a virtual host the broker would not create or set up for
/// `username`, saying what to check.
pub(crate) fn explain_vhost_refusal(
    base_url: &str,
    username: &str,
    error: BrokerError,
) -> BrokerError {
    match &error {
        BrokerError::Management {
            status: Some(401 | 403),
            ..
        } => BrokerError::Existing {
            broker: base_url.to_owned(),
            reason: format!(
                "user {username:?} may not create test virtual hosts ({error}); give the user \
                 of {URI_VAR} the tag `administrator`"
            ),
        },
        _ => error,
    }
}

/// The error for a management API that did not let `username` in, saying
/// what to check.
fn explain_refusal(base_url: &str, username: &str, error: BrokerError) -> BrokerError {
    let reason = match &error {
        BrokerError::Management {
            status: Some(401), ..
        } => format!(
            "the management API refused the credentials of user {username:?} (HTTP 401): check \
             the user and password in {URI_VAR}; the user must be allowed to use the \
             management API and to create virtual hosts (tag `administrator`)"
        ),
        BrokerError::Management { status: None, .. } => format!(
            "its management API does not answer ({error}); is the management plugin enabled \
             (the docker image `rabbitmq:3-management`) and its port published? Set \
             {MANAGEMENT_URL_VAR} if it is not on port {DEFAULT_MANAGEMENT_PORT} of the \
             {URI_VAR} host"
        ),
        _ => format!("its management API answered /api/overview with an error: {error}"),
    };
    BrokerError::Existing {
        broker: base_url.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vhost_is_replaced_and_the_rest_kept() {
        let parts = UriParts::split("amqp://u:p%40ss@rabbit:5673/orders?heartbeat=5#x").unwrap();
        assert_eq!(parts.authority, "amqp://u:p%40ss@rabbit:5673");
        assert_eq!(parts.query, "?heartbeat=5");
        let parts = UriParts::split("amqps://host?frame_max=8192").unwrap();
        assert_eq!(parts.authority, "amqps://host");
        assert_eq!(parts.query, "?frame_max=8192");
        assert_eq!(parts.masked_hint(), "amqps://host (HUTCH_TEST_URI)");
    }

    #[test]
    fn malformed_uris_are_refused_without_their_password() {
        for (uri, expected) in [
            ("localhost:5672", "no scheme"),
            ("http://guest:secret@localhost/", "not amqp or amqps"),
            ("amqp://guest:secret@localhost:notaport/", "not an AMQP URI"),
        ] {
            let error = Existing::connect(uri, None).unwrap_err().to_string();
            assert!(error.contains(expected), "{uri}: {error}");
            assert!(!error.contains("secret"), "{uri}: {error}");
        }
    }

    #[test]
    fn the_management_api_is_on_port_15672_of_the_amqp_host_by_default() {
        assert_eq!(default_management_url("rabbit"), "http://rabbit:15672");
        assert_eq!(default_management_url("::1"), "http://[::1]:15672");
    }

    #[test]
    fn management_urls_are_checked() {
        assert_eq!(
            check_management_url("http://localhost:15672/").unwrap(),
            "http://localhost:15672"
        );
        for (url, expected) in [
            ("https://localhost:15671", "http://"),
            ("http://guest:secret@localhost:15672", "credentials"),
            ("http://", "not a URL"),
        ] {
            let error = check_management_url(url).unwrap_err().to_string();
            assert!(error.contains(expected), "{url}: {error}");
            assert!(!error.contains("secret"), "{url}: {error}");
        }
    }
}
