//! The node's management HTTP API.

use std::{fmt, time::Duration};

use base64::Engine as _;
use serde_json::Value;

use super::BrokerError;

/// How long one HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for a management API (`<base_url>/api/`), logged in as one user.
pub(crate) struct Management {
    agent: ureq::Agent,
    base_url: String,
    /// The `Authorization` header: holds the password, so never shown.
    authorization: String,
}

impl fmt::Debug for Management {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Management")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Management {
    /// The API of a private node on `127.0.0.1:<port>`, as `guest`, whom a
    /// node accepts from the loopback interface.
    pub(crate) fn local(port: u16) -> Self {
        Self::new(format!("http://127.0.0.1:{port}"), "guest", "guest")
    }

    /// The API at `base_url` (`http://host:port`, no trailing slash) as
    /// `username`.
    pub(crate) fn new(base_url: String, username: &str, password: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            // Error statuses are answers, whose bodies say what is wrong.
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .new_agent();
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        Self {
            agent,
            base_url,
            authorization: format!("Basic {credentials}"),
        }
    }

    /// `http://host:port`.
    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Sends `method /api/<path>` with an optional JSON body and returns the
    /// JSON answer, `None` for an empty one.
    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, BrokerError> {
        self.request_with(method, path, body, &[])
    }

    /// [`Management::request`] with extra headers (such as `X-Reason`).
    pub(crate) fn request_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Option<Value>, BrokerError> {
        let url = format!("{}/api/{}", self.base_url, path.trim_start_matches('/'));
        let fail = |status: Option<u16>, detail: String| BrokerError::Management {
            method: method.to_owned(),
            url: url.clone(),
            status,
            detail,
        };
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", &self.authorization)
            .header("accept", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = match body {
            Some(body) => {
                let bytes = serde_json::to_vec(body)
                    .map_err(|error| fail(None, format!("could not encode the body: {error}")))?;
                let request = request
                    .header("content-type", "application/json")
                    .body(bytes)
                    .map_err(|error| fail(None, format!("invalid request: {error}")))?;
                self.agent.run(request)
            }
            None => {
                let request = request
                    .body(())
                    .map_err(|error| fail(None, format!("invalid request: {error}")))?;
                self.agent.run(request)
            }
        }
        .map_err(|error| fail(None, error.to_string()))?;

        let status = response.status().as_u16();
        let text = response
            .into_body()
            .read_to_string()
            .map_err(|error| fail(Some(status), format!("could not read the answer: {error}")))?;
        if !(200..300).contains(&status) {
            return Err(fail(Some(status), text));
        }
        if text.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|error| BrokerError::Parse {
                command: format!("{method} {url}"),
                detail: format!("{error} in {text:?}"),
            })
    }
}
