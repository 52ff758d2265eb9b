//! RabbitMQ's management HTTP API, for the one thing hutch-rs needs that
//! AMQP cannot do: list the bindings of a queue (stale-binding removal).
//!
//! A blocking client (ureq), called from tokio's blocking pool: a handful of
//! requests once per start do not justify an async HTTP stack.

use std::{fmt, time::Duration};

use base64::Engine;
use lapin::uri::{AMQPScheme, AMQPUri};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::Deserialize;
use ureq::http::Uri;

/// The management plugin's HTTP port, which a management URI derived from
/// the broker URI uses.
pub const DEFAULT_MANAGEMENT_PORT: u16 = 15672;

/// How much of an error answer's body an error message quotes.
const QUOTED_BODY_CHARS: usize = 300;

/// What a name keeps unencoded as a path segment: letters, digits, `-`,
/// `_`, `~`. The `.` is encoded, so that no name reads as `..`.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// An example for error messages.
const EXAMPLE: &str = "http://user:password@rabbitmq.internal:15672";

/// Where the management API listens, who logs in, and on which vhost the
/// application's queues are. The password is never shown.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ManagementApi {
    /// `http://host[:port][/prefix]`, without credentials or a trailing
    /// slash; the API is under `<base_url>/api/`.
    base_url: String,
    username: String,
    password: String,
    /// The broker URI's vhost: the application's queues are there.
    vhost: String,
    /// Where this came from, for error messages: what to change.
    origin: String,
}

/// One binding as the management API lists it. Every field comes from the
/// network: unexpected shapes are errors, never panics.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ListedBinding {
    /// The exchange.
    pub(crate) source: String,
    /// The queue (or exchange) bound.
    pub(crate) destination: String,
    /// `"queue"` or `"exchange"`.
    pub(crate) destination_type: String,
    pub(crate) routing_key: String,
    /// The binding's arguments: part of its identity.
    #[serde(default)]
    pub(crate) arguments: serde_json::Map<String, serde_json::Value>,
}

impl ManagementApi {
    /// From a management URI as given, `http://[user:password@]host[:port][/prefix]`;
    /// without credentials, the broker URI's are used. `origin` names the
    /// setting it came from.
    pub(crate) fn from_uri(
        text: &str,
        broker: &AMQPUri,
        origin: String,
    ) -> std::result::Result<Self, String> {
        // The http crate's parse errors never quote the text, which may hold
        // a password.
        let uri: Uri = text
            .trim()
            .parse()
            .map_err(|error| format!("not a URI ({error}); expected e.g. {EXAMPLE}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "https is not supported yet: give the management API's plain http listener (e.g. on the broker's own network or through a local proxy), e.g. {EXAMPLE}"
                ));
            }
            _ => return Err(format!("expected an http:// URI, e.g. {EXAMPLE}")),
        }
        let Some(authority) = uri.authority() else {
            return Err(format!("has no host; expected e.g. {EXAMPLE}"));
        };
        if authority.host().is_empty() {
            return Err(format!("has no host; expected e.g. {EXAMPLE}"));
        }
        if uri.query().is_some() {
            return Err(format!(
                "must not have a query (`?…`); expected e.g. {EXAMPLE}"
            ));
        }
        let (userinfo, host_and_port) = match authority.as_str().rsplit_once('@') {
            Some((userinfo, host_and_port)) => (Some(userinfo), host_and_port),
            None => (None, authority.as_str()),
        };
        let (username, password) = match userinfo {
            Some(userinfo) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (decode(user, "user")?, decode(password, "password")?)
            }
            None => (
                broker.authority.userinfo.username.clone(),
                broker.authority.userinfo.password.clone(),
            ),
        };
        let prefix = uri.path().trim_end_matches('/');
        Ok(Self {
            base_url: format!("http://{host_and_port}{prefix}"),
            username,
            password,
            vhost: broker.vhost.clone(),
            origin,
        })
    }

    /// Derived from the broker URI `text` (parsed as `broker`): the same
    /// host, port [`DEFAULT_MANAGEMENT_PORT`], http, the same credentials.
    /// Refused for an `amqps` broker: the credentials would cross the
    /// network in clear where the application asked for TLS.
    pub(crate) fn derived(
        text: &str,
        broker: &AMQPUri,
        origin: String,
    ) -> std::result::Result<Self, String> {
        if broker.scheme == AMQPScheme::AMQPS {
            return Err(format!(
                "the broker URI is amqps, and hutch-rs does not send its credentials to the management API over plain http unasked: set the management URI (HUTCH_MANAGEMENT_URI, management_uri, HutchBuilder::management_uri), e.g. {EXAMPLE}"
            ));
        }
        // lapin's parse keeps only a host that is a domain name; the text
        // has the address as written (IPv6 in brackets).
        let host = text
            .trim()
            .parse::<Uri>()
            .ok()
            .and_then(|uri| uri.host().map(str::to_owned))
            .filter(|host| !host.is_empty())
            .unwrap_or_else(|| broker.authority.host.clone());
        Ok(Self {
            base_url: format!("http://{host}:{DEFAULT_MANAGEMENT_PORT}"),
            username: broker.authority.userinfo.username.clone(),
            password: broker.authority.userinfo.password.clone(),
            vhost: broker.vhost.clone(),
            origin,
        })
    }

    /// The base URL, user and vhost, for tests.
    #[cfg(test)]
    pub(crate) fn endpoint(&self) -> (&str, &str, &str) {
        (&self.base_url, &self.username, &self.vhost)
    }

    /// A client whose every request is bounded by `timeout`.
    pub(crate) fn client(&self, timeout: Duration) -> ManagementClient<'_> {
        let agent = ureq::Agent::config_builder()
            // Error statuses are answers: each gets its own advice.
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .new_agent();
        let credentials = format!("{}:{}", self.username, self.password);
        ManagementClient {
            api: self,
            agent,
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ),
        }
    }
}

impl fmt::Debug for ManagementApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagementApi")
            .field("base_url", &self.base_url)
            .field("username", &self.username)
            .field("password", &"***")
            .field("vhost", &self.vhost)
            .field("origin", &self.origin)
            .finish()
    }
}

/// Percent-decodes one part of a URI's credentials.
fn decode(text: &str, part: &str) -> std::result::Result<String, String> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| format!("its {part} is not UTF-8 once percent-decoded"))
}

/// Requests to one management API.
pub(crate) struct ManagementClient<'a> {
    api: &'a ManagementApi,
    agent: ureq::Agent,
    authorization: String,
}

impl fmt::Debug for ManagementClient<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagementClient")
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

impl ManagementClient<'_> {
    /// The bindings from `exchange` to `queue` on the vhost, both of which
    /// must exist. Blocking. The error says what to change.
    pub(crate) fn bindings(
        &self,
        exchange: &str,
        queue: &str,
    ) -> std::result::Result<Vec<ListedBinding>, String> {
        let segment = |text: &str| utf8_percent_encode(text, PATH_SEGMENT).to_string();
        let url = format!(
            "{}/api/bindings/{}/e/{}/q/{}",
            self.api.base_url,
            segment(&self.api.vhost),
            segment(exchange),
            segment(queue)
        );
        let origin = &self.api.origin;
        let response = self
            .agent
            .get(&url)
            .header("authorization", &self.authorization)
            .header("accept", "application/json")
            .call()
            .map_err(|error| {
                format!(
                    "could not reach the RabbitMQ management API at {url} ({error}): enable the rabbitmq_management plugin, or point the management URI (HUTCH_MANAGEMENT_URI, management_uri, HutchBuilder::management_uri; now {origin}) where it listens"
                )
            })?;
        let status = response.status().as_u16();
        let body = response.into_body().read_to_string().map_err(|error| {
            format!("could not read the management API's answer to GET {url} ({status}): {error}")
        })?;
        match status {
            200..=299 => serde_json::from_str(&body).map_err(|error| {
                format!(
                    "the answer to GET {url} is not a list of bindings ({error}): is the management URI ({origin}) a RabbitMQ management API?"
                )
            }),
            401 | 403 => Err(format!(
                "the RabbitMQ management API at {} refused user {:?} on vhost {:?} ({status}: {}): give, in the management URI (HUTCH_MANAGEMENT_URI, management_uri, HutchBuilder::management_uri; now {origin}), a user with the \"management\" tag and access to the vhost",
                self.api.base_url,
                self.api.username,
                self.api.vhost,
                quote(&body)
            )),
            // The queue and the exchange exist (their consumers declared
            // them): 404 (or RabbitMQ's 400 for a path it does not route)
            // means the URI does not lead to the API.
            _ => Err(format!(
                "the management API answered GET {url} with {status} ({}): check the management URI's host, port and path (HUTCH_MANAGEMENT_URI, management_uri, HutchBuilder::management_uri; now {origin})",
                quote(&body)
            )),
        }
    }
}

/// The start of an answer's body, for an error message.
fn quote(body: &str) -> String {
    if body.trim().is_empty() {
        return "no body".to_owned();
    }
    let mut quoted: String = body.trim().chars().take(QUOTED_BODY_CHARS).collect();
    if body.trim().chars().count() > QUOTED_BODY_CHARS {
        quoted.push('…');
    }
    quoted
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn broker(text: &str) -> AMQPUri {
        AMQPUri::from_str(text).unwrap()
    }

    #[test]
    fn a_derived_uri_takes_the_broker_s_host_credentials_and_vhost() {
        let text = "amqp://app:s%40cret@10.1.2.3:5673/shop%2Feu";
        let api = ManagementApi::derived(text, &broker(text), "derived".into()).unwrap();
        assert_eq!(api.base_url, "http://10.1.2.3:15672");
        assert_eq!(api.username, "app");
        assert_eq!(api.password, "s@cret");
        assert_eq!(api.vhost, "shop/eu");
        let text = "amqp://guest:guest@rabbit.internal/%2f";
        let api = ManagementApi::derived(text, &broker(text), "derived".into()).unwrap();
        assert_eq!(api.base_url, "http://rabbit.internal:15672");
        assert_eq!(api.vhost, "/");
        let text = "amqp://guest:guest@[::1]:5672/%2f";
        let api = ManagementApi::derived(text, &broker(text), "derived".into()).unwrap();
        assert_eq!(api.base_url, "http://[::1]:15672");
    }

    #[test]
    fn an_amqps_broker_gives_no_plain_http_default() {
        let text = "amqps://guest:guest@rabbit.internal/%2f";
        let error = ManagementApi::derived(text, &broker(text), "derived".into()).unwrap_err();
        assert!(error.contains("HUTCH_MANAGEMENT_URI"), "{error}");
    }

    #[test]
    fn a_given_uri_keeps_its_path_and_credentials_or_takes_the_broker_s() {
        let amqp = broker("amqp://app:secret@rabbit/%2f");
        let api = ManagementApi::from_uri(
            "http://admin:p%3Ass@mgmt.internal:8080/rabbitmq/",
            &amqp,
            "given".into(),
        )
        .unwrap();
        assert_eq!(api.base_url, "http://mgmt.internal:8080/rabbitmq");
        assert_eq!(api.username, "admin");
        assert_eq!(api.password, "p:ss");
        let api = ManagementApi::from_uri("http://mgmt.internal", &amqp, "given".into()).unwrap();
        assert_eq!(api.base_url, "http://mgmt.internal");
        assert_eq!(
            (api.username.as_str(), api.password.as_str()),
            ("app", "secret")
        );
    }

    #[test]
    fn bad_management_uris_are_refused_without_quoting_the_password() {
        let amqp = broker("amqp://app:secret@rabbit/%2f");
        for bad in [
            "https://u:hunter2@mgmt:15671",
            "ftp://u:hunter2@mgmt",
            "mgmt:15672",
            "http://u:hunter2@mgmt:15672/?x=1",
            "http://u:hunter2@",
            "not a uri hunter2",
            "http://u:%FF%FE@mgmt",
        ] {
            let error = ManagementApi::from_uri(bad, &amqp, "given".into()).unwrap_err();
            assert!(!error.contains("hunter2"), "{bad}: {error}");
            assert!(!error.is_empty());
        }
    }

    #[test]
    fn debug_masks_the_password() {
        let amqp = broker("amqp://app:secret@rabbit/%2f");
        let api = ManagementApi::from_uri("http://mgmt", &amqp, "given".into()).unwrap();
        let shown = format!("{api:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(format!("{:?}", api.client(Duration::from_secs(1))).contains("***"));
    }

    #[test]
    fn listed_bindings_parse_and_odd_answers_are_errors() {
        let listed: Vec<ListedBinding> = serde_json::from_str(
            r#"[{"source":"hutch","vhost":"/","destination":"q","destination_type":"queue","routing_key":"a","arguments":{"x-hutch-rs":"1"},"properties_key":"a~x"}]"#,
        )
        .unwrap();
        assert_eq!(listed[0].routing_key, "a");
        assert_eq!(listed[0].arguments["x-hutch-rs"], "1");
        for odd in [r#"{"error":"x"}"#, r#"[{"source":1}]"#, "[", r#"[null]"#] {
            assert!(
                serde_json::from_str::<Vec<ListedBinding>>(odd).is_err(),
                "{odd}"
            );
        }
    }
}
