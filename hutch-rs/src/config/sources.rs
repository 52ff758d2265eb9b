//! Where settings come from besides the builder's setters: the environment
//! (`HUTCH_<KEY>`) and an optional TOML file (`HUTCH_CONFIG=path`) with the
//! same keys in lower case. Both give text, which the builder parses per
//! setting, so a value means the same wherever it is written.

use std::{fmt, path::Path, sync::Arc};

/// Every setting the environment and the file may hold: its key in the
/// file, and its environment variable.
pub(super) const KEYS: &[(&str, &str)] = &[
    ("uri", "HUTCH_URI"),
    ("exchange", "HUTCH_EXCHANGE"),
    ("namespace", "HUTCH_NAMESPACE"),
    ("group", "HUTCH_GROUP"),
    ("prefetch", "HUTCH_PREFETCH"),
    ("concurrency", "HUTCH_CONCURRENCY"),
    ("confirm_timeout", "HUTCH_CONFIRM_TIMEOUT"),
    ("request_timeout", "HUTCH_REQUEST_TIMEOUT"),
    ("shutdown_timeout", "HUTCH_SHUTDOWN_TIMEOUT"),
    ("handler_timeout", "HUTCH_HANDLER_TIMEOUT"),
    ("heartbeat", "HUTCH_HEARTBEAT"),
    ("connection_timeout", "HUTCH_CONNECTION_TIMEOUT"),
    ("reconnect_min_delay", "HUTCH_RECONNECT_MIN_DELAY"),
    ("reconnect_max_delay", "HUTCH_RECONNECT_MAX_DELAY"),
    ("max_restarts", "HUTCH_MAX_RESTARTS"),
    ("restart_period", "HUTCH_RESTART_PERIOD"),
    ("max_attempts", "HUTCH_MAX_ATTEMPTS"),
    ("retry_min_delay", "HUTCH_RETRY_MIN_DELAY"),
    ("retry_max_delay", "HUTCH_RETRY_MAX_DELAY"),
    ("queue_type", "HUTCH_QUEUE_TYPE"),
    ("delivery_limit", "HUTCH_DELIVERY_LIMIT"),
    ("tls_ca_cert", "HUTCH_TLS_CA_CERT"),
    ("tls_client_cert", "HUTCH_TLS_CLIENT_CERT"),
    ("tls_client_key", "HUTCH_TLS_CLIENT_KEY"),
    ("tls_server_name", "HUTCH_TLS_SERVER_NAME"),
    ("remove_stale_bindings", "HUTCH_REMOVE_STALE_BINDINGS"),
    ("management_uri", "HUTCH_MANAGEMENT_URI"),
];

/// The environment variable naming the TOML file.
pub(super) const CONFIG_FILE_VAR: &str = "HUTCH_CONFIG";

/// Where a setting's value came from; errors name it so the user knows
/// what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    Default,
    Env(&'static str),
    File { key: &'static str, path: Arc<Path> },
    Setter(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Env(var) => write!(f, "{var} (environment)"),
            Source::File { key, path } => {
                write!(f, "{key} in {} ({CONFIG_FILE_VAR})", path.display())
            }
            Source::Setter(method) => write!(f, "HutchBuilder::{method}"),
        }
    }
}

/// One setting's text and where it came from.
#[derive(Debug)]
pub(super) struct RawSetting {
    pub(super) key: &'static str,
    pub(super) text: String,
    pub(super) source: Source,
}

/// The settings of the TOML file at `path`, in [`KEYS`] order. A file that
/// cannot be read or parsed, a key hutch-rs does not know (a typo would
/// otherwise be silently ignored) and a value that is neither text, a
/// number, a boolean nor (for `uri`) a list of text are errors naming the
/// file and the key.
pub(super) fn read_file(path: &Path) -> Result<Vec<RawSetting>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    parse_file(&text, path)
}

fn parse_file(text: &str, path: &Path) -> Result<Vec<RawSetting>, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|error| format!("{} is not valid TOML: {error}", path.display()))?;
    let path: Arc<Path> = Arc::from(path);
    if let Some(unknown) = table.keys().find(|key| !KEYS.iter().any(|(k, _)| k == key)) {
        let known: Vec<&str> = KEYS.iter().map(|(key, _)| *key).collect();
        return Err(format!(
            "{} has an unknown key {unknown:?}; the keys are {}",
            path.display(),
            known.join(", ")
        ));
    }
    let mut settings = Vec::new();
    for (key, _) in KEYS {
        let Some(value) = table.get(*key) else {
            continue;
        };
        let text = as_text(key, value).map_err(|reason| {
            format!("{key} in {} ({CONFIG_FILE_VAR}): {reason}", path.display())
        })?;
        settings.push(RawSetting {
            key,
            text,
            source: Source::File {
                key,
                path: path.clone(),
            },
        });
    }
    Ok(settings)
}

/// A TOML value as the text the environment would hold.
fn as_text(key: &str, value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Float(number) => Ok(number.to_string()),
        toml::Value::Boolean(flag) => Ok(flag.to_string()),
        toml::Value::Array(items) if key == "uri" => items
            .iter()
            .map(|item| match item {
                toml::Value::String(uri) => Ok(uri.clone()),
                _ => Err("a list of URIs holds strings only".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|uris| uris.join(",")),
        _ => {
            Err("expected a string, a number or a boolean (durations are strings: \"30s\")".into())
        }
    }
}

/// The settings the environment holds, read through `var`, in [`KEYS`]
/// order.
pub(super) fn read_env(var: &impl Fn(&str) -> Option<String>) -> Vec<RawSetting> {
    KEYS.iter()
        .filter_map(|(key, name)| {
            var(name).map(|text| RawSetting {
                key,
                text,
                source: Source::Env(name),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<(&'static str, String)>, String> {
        parse_file(text, Path::new("/etc/app/hutch.toml")).map(|settings| {
            settings
                .into_iter()
                .map(|setting| (setting.key, setting.text))
                .collect()
        })
    }

    #[test]
    fn a_file_gives_text_as_the_environment_would() {
        let settings = parse(
            "uri = [\"amqp://a\", \"amqp://b\"]\nprefetch = 20\nheartbeat = \"10s\"\nqueue_type = \"quorum\"\n",
        )
        .unwrap();
        assert_eq!(
            settings,
            [
                ("uri", "amqp://a,amqp://b".to_owned()),
                ("prefetch", "20".to_owned()),
                ("heartbeat", "10s".to_owned()),
                ("queue_type", "quorum".to_owned()),
            ]
        );
    }

    #[test]
    fn unknown_keys_bad_values_and_bad_toml_name_the_file() {
        let error = parse("prefech = 20\n").unwrap_err();
        assert!(error.contains("unknown key \"prefech\""), "{error}");
        assert!(error.contains("/etc/app/hutch.toml"), "{error}");
        let error = parse("heartbeat = { seconds = 3 }\n").unwrap_err();
        assert!(
            error.starts_with("heartbeat in /etc/app/hutch.toml"),
            "{error}"
        );
        let error = parse("prefetch = \n").unwrap_err();
        assert!(error.contains("not valid TOML"), "{error}");
    }

    #[test]
    fn every_key_has_its_variable() {
        for (key, var) in KEYS {
            assert_eq!(*var, format!("HUTCH_{}", key.to_ascii_uppercase()));
        }
    }
}
