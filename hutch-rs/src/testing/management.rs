//! The node's management HTTP API.

use std::time::Duration;

use serde_json::Value;

use super::BrokerError;

/// `Authorization` for the default `guest`/`guest` user, which a node
/// accepts from the loopback interface; precomputed because it never
/// changes and the crate has no base64 dependency.
const GUEST_AUTHORIZATION: &str = "Basic Z3Vlc3Q6Z3Vlc3Q=";

/// How long one HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for `http://127.0.0.1:<port>/api/`.
#[derive(Debug)]
pub(crate) struct Management {
    agent: ureq::Agent,
    base_url: String,
}

impl Management {
    pub(crate) fn new(port: u16) -> Self {
        let agent = ureq::Agent::config_builder()
            // Error statuses are answers, whose bodies say what is wrong.
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .new_agent();
        Self {
            agent,
            base_url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// `http://127.0.0.1:<port>`.
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
        let url = format!("{}/api/{}", self.base_url, path.trim_start_matches('/'));
        let fail = |status: Option<u16>, detail: String| BrokerError::Management {
            method: method.to_owned(),
            url: url.clone(),
            status,
            detail,
        };
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", GUEST_AUTHORIZATION)
            .header("accept", "application/json");
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
