//! The settings' layering, parsing and error naming.

use super::*;

fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    }
}

fn config_error(builder: HutchBuilder) -> (String, String) {
    match builder.validate() {
        Err(Error::Config { setting, reason }) => (setting, reason),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn defaults_apply_without_environment() {
    let settings = HutchBuilder::defaults().validate().unwrap();
    assert_eq!(settings.exchange, "hutch");
    assert_eq!(settings.namespace, None);
    assert_eq!(settings.group, None);
    assert_eq!(settings.uris.len(), 1);
    assert_eq!(
        settings.uris[0].to_string(),
        "amqp://guest:***@127.0.0.1:5672/%2f"
    );
    assert_eq!(settings.heartbeat, DEFAULT_HEARTBEAT);
}

#[test]
fn environment_overrides_defaults_and_setters_override_environment() {
    let from_env = HutchBuilder::defaults().overlay_env(env(&[
        ("HUTCH_EXCHANGE", "events"),
        ("HUTCH_NAMESPACE", "shop"),
        ("HUTCH_GROUP", "billing"),
    ]));
    let settings = from_env.clone().validate().unwrap();
    assert_eq!(settings.exchange, "events");
    assert_eq!(settings.namespace.as_deref(), Some("shop"));
    assert_eq!(settings.group.as_deref(), Some("billing"));

    let settings = from_env
        .exchange("orders")
        .namespace("crm")
        .validate()
        .unwrap();
    assert_eq!(settings.exchange, "orders");
    assert_eq!(settings.namespace.as_deref(), Some("crm"));
    assert_eq!(settings.group.as_deref(), Some("billing"));
}

#[test]
fn empty_namespace_and_group_in_environment_mean_unset() {
    let settings = HutchBuilder::defaults()
        .overlay_env(env(&[("HUTCH_NAMESPACE", ""), ("HUTCH_GROUP", "")]))
        .validate()
        .unwrap();
    assert_eq!(settings.namespace, None);
    assert_eq!(settings.group, None);
}

#[test]
fn bad_uri_names_its_source_and_hides_the_password() {
    let (setting, reason) = config_error(
        HutchBuilder::defaults().overlay_env(env(&[("HUTCH_URI", "http://u:s3cret@host")])),
    );
    assert_eq!(setting, "HUTCH_URI (environment)");
    assert!(!reason.contains("s3cret"), "{reason}");

    let (setting, _) = config_error(HutchBuilder::defaults().uri("not a uri at all"));
    assert_eq!(setting, "HutchBuilder::uri");
}

#[test]
fn a_setter_can_repair_a_bad_environment_value() {
    let settings = HutchBuilder::defaults()
        .overlay_env(env(&[("HUTCH_URI", "garbage")]))
        .uri("amqp://localhost")
        .validate();
    assert!(settings.is_ok());
}

#[test]
fn empty_exchange_is_refused() {
    let (setting, reason) = config_error(HutchBuilder::defaults().exchange(""));
    assert_eq!(setting, "HutchBuilder::exchange");
    assert!(reason.contains("empty"), "{reason}");
    let (setting, _) =
        config_error(HutchBuilder::defaults().overlay_env(env(&[("HUTCH_EXCHANGE", "")])));
    assert_eq!(setting, "HUTCH_EXCHANGE (environment)");
}

#[test]
fn invalid_namespace_is_refused() {
    for bad in ["", "has space", "slash/ed", "amq.x"] {
        let (setting, _) = config_error(HutchBuilder::defaults().namespace(bad));
        assert_eq!(setting, "HutchBuilder::namespace", "{bad:?}");
    }
}

#[test]
fn zero_prefetch_is_refused() {
    let (setting, _) = config_error(HutchBuilder::defaults().prefetch(0));
    assert_eq!(setting, "HutchBuilder::prefetch");
}

#[test]
fn debug_output_masks_the_password() {
    let builder = HutchBuilder::defaults().uri("amqp://user:s3cret@broker:5672/%2f");
    let debug = format!("{builder:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
    assert!(debug.contains("user:***@broker:5672"), "{debug}");
    let settings = builder.validate().unwrap();
    assert!(!format!("{settings:?}").contains("s3cret"));
    assert_eq!(
        settings.uris[0].to_string(),
        "amqp://user:***@broker:5672/%2f"
    );
}

#[test]
fn several_uris_come_from_a_comma_separated_environment_variable() {
    let settings = HutchBuilder::defaults()
        .overlay_env(env(&[(
            "HUTCH_URI",
            "amqp://a:1@node1, amqp://a:1@node2:5673",
        )]))
        .validate()
        .unwrap();
    let shown: Vec<_> = settings.uris.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        ["amqp://a:***@node1:5672/%2f", "amqp://a:***@node2:5673/%2f"]
    );
}

#[test]
fn the_request_timeout_comes_from_the_environment_or_the_builder() {
    let settings = HutchBuilder::defaults().validate().unwrap();
    assert_eq!(settings.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    let from_env =
        HutchBuilder::defaults().overlay_env(env(&[("HUTCH_REQUEST_TIMEOUT", "1m 30s")]));
    let settings = from_env.clone().validate().unwrap();
    assert_eq!(settings.request_timeout, Duration::from_secs(90));
    let settings = from_env
        .request_timeout(Duration::from_millis(250))
        .validate()
        .unwrap();
    assert_eq!(settings.request_timeout, Duration::from_millis(250));
}

#[test]
fn a_bad_request_timeout_names_where_it_came_from() {
    for bad in ["", "30", "soon", "-5s", "0s"] {
        let (setting, reason) =
            config_error(HutchBuilder::defaults().overlay_env(move |name| {
                (name == "HUTCH_REQUEST_TIMEOUT").then(|| bad.to_owned())
            }));
        assert_eq!(setting, "HUTCH_REQUEST_TIMEOUT (environment)", "{bad:?}");
        assert!(!reason.is_empty(), "{bad:?}");
    }
    let (setting, reason) = config_error(HutchBuilder::defaults().request_timeout(Duration::ZERO));
    assert_eq!(setting, "HutchBuilder::request_timeout");
    assert!(reason.contains("zero"), "{reason}");
    // A setter repairs a bad environment value, as for every setting.
    let settings = HutchBuilder::defaults()
        .overlay_env(env(&[("HUTCH_REQUEST_TIMEOUT", "soon")]))
        .request_timeout(Duration::from_secs(5))
        .validate()
        .unwrap();
    assert_eq!(settings.request_timeout, Duration::from_secs(5));
}

#[test]
fn tls_settings_from_the_environment_are_named_in_errors() {
    let (setting, reason) = config_error(
        HutchBuilder::defaults().overlay_env(env(&[("HUTCH_TLS_CA_CERT", "/nonexistent/ca.pem")])),
    );
    assert_eq!(setting, "HUTCH_TLS_CA_CERT (environment)");
    assert!(reason.contains("/nonexistent/ca.pem"), "{reason}");
    let (setting, reason) = config_error(
        HutchBuilder::defaults()
            .overlay_env(env(&[("HUTCH_TLS_CLIENT_CERT", "/nonexistent/client.pem")])),
    );
    assert_eq!(setting, "HUTCH_TLS_CLIENT_CERT (environment)");
    assert!(reason.contains("needs its key"), "{reason}");
    let (setting, reason) = config_error(
        HutchBuilder::defaults()
            .overlay_env(env(&[("HUTCH_TLS_CLIENT_KEY", "/nonexistent/client.key")])),
    );
    assert_eq!(setting, "HUTCH_TLS_CLIENT_KEY (environment)");
    assert!(reason.contains("needs its certificate"), "{reason}");
    let (setting, _) = config_error(HutchBuilder::defaults().overlay_env(env(&[
        ("HUTCH_TLS_CLIENT_CERT", "/nonexistent/client.pem"),
        ("HUTCH_TLS_CLIENT_KEY", "/nonexistent/client.key"),
    ])));
    assert_eq!(setting, "HUTCH_TLS_CLIENT_CERT (environment)");
    let (setting, _) = config_error(
        HutchBuilder::defaults().overlay_env(env(&[("HUTCH_TLS_SERVER_NAME", "not a name!")])),
    );
    assert_eq!(setting, "HUTCH_TLS_SERVER_NAME (environment)");
    // A setter wins over the environment here too.
    let (setting, _) = config_error(
        HutchBuilder::defaults()
            .overlay_env(env(&[("HUTCH_TLS_CA_CERT", "/nonexistent/ca.pem")]))
            .tls_ca_cert("/nonexistent/other.pem"),
    );
    assert_eq!(setting, "HutchBuilder::tls_ca_cert");
}

#[test]
fn tls_settings_from_the_file_are_named_by_key_and_file() {
    let (_dir, path) = config_file("tls_client_key = \"/nonexistent/client.key\"\n");
    let (setting, reason) = config_error(
        HutchBuilder::defaults().overlay_env(env_owned(vec![("HUTCH_CONFIG", path.clone())])),
    );
    assert_eq!(setting, format!("tls_client_key in {path} (HUTCH_CONFIG)"));
    assert!(reason.contains("needs its certificate"), "{reason}");
    // An empty variable clears what the file sets.
    let settings = HutchBuilder::defaults()
        .overlay_env(env_owned(vec![
            ("HUTCH_CONFIG", path),
            ("HUTCH_TLS_CLIENT_KEY", String::new()),
        ]))
        .validate()
        .unwrap();
    assert!(settings.tls.is_none());
}

#[test]
fn plain_uris_without_tls_settings_read_no_certificates() {
    let settings = HutchBuilder::defaults()
        .overlay_env(env(&[
            ("HUTCH_TLS_CA_CERT", ""),
            ("HUTCH_TLS_CLIENT_CERT", ""),
            ("HUTCH_TLS_CLIENT_KEY", ""),
            ("HUTCH_TLS_SERVER_NAME", ""),
        ]))
        .validate()
        .unwrap();
    assert!(settings.tls.is_none());
}

#[test]
fn supervision_settings_are_checked() {
    let (setting, _) =
        config_error(HutchBuilder::defaults().heartbeat(Duration::from_millis(1500)));
    assert_eq!(setting, "HutchBuilder::heartbeat");
    let (setting, _) = config_error(
        HutchBuilder::defaults().reconnect_delay(Duration::from_secs(5), Duration::from_secs(1)),
    );
    assert_eq!(setting, "HutchBuilder::reconnect_delay");
    let (setting, _) = config_error(HutchBuilder::defaults().restart_intensity(3, Duration::ZERO));
    assert_eq!(setting, "HutchBuilder::restart_intensity");
    let (setting, _) = config_error(HutchBuilder::defaults().uris(Vec::<String>::new()));
    assert_eq!(setting, "HutchBuilder::uris");
}

/// A settings file for one test, removed with the directory.
fn config_file(contents: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hutch.toml");
    std::fs::write(&path, contents).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

fn env_owned(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
    }
}

#[test]
fn file_overrides_defaults_environment_overrides_file_setters_override_environment() {
    let (_dir, path) = config_file(
        "exchange = \"from-file\"\nnamespace = \"file\"\nprefetch = 7\nheartbeat = \"12s\"\nqueue_type = \"quorum\"\nuri = [\"amqp://a:p@node1\", \"amqp://a:p@node2\"]\n",
    );
    let builder = HutchBuilder::defaults().overlay_env(env_owned(vec![
        ("HUTCH_CONFIG", path),
        ("HUTCH_NAMESPACE", "env".to_owned()),
        ("HUTCH_PREFETCH", "9".to_owned()),
    ]));
    let settings = builder.clone().validate().unwrap();
    assert_eq!(settings.exchange, "from-file");
    assert_eq!(settings.namespace.as_deref(), Some("env"));
    assert_eq!(settings.prefetch, Some(9));
    assert_eq!(settings.heartbeat, Duration::from_secs(12));
    assert_eq!(settings.queue_arguments.queue_type, Some(QueueType::Quorum));
    assert_eq!(settings.uris.len(), 2);
    let settings = builder
        .prefetch(11)
        .queue_type(QueueType::Classic)
        .validate()
        .unwrap();
    assert_eq!(settings.prefetch, Some(11));
    assert_eq!(
        settings.queue_arguments.queue_type,
        Some(QueueType::Classic)
    );
    assert_eq!(settings.exchange, "from-file");
}

#[test]
fn every_setting_is_read_from_the_environment() {
    let settings = HutchBuilder::defaults()
        .overlay_env(env(&[
            ("HUTCH_PREFETCH", "64"),
            ("HUTCH_CONCURRENCY", "4"),
            ("HUTCH_CONFIRM_TIMEOUT", "3s"),
            ("HUTCH_REQUEST_TIMEOUT", "4s"),
            ("HUTCH_SHUTDOWN_TIMEOUT", "5s"),
            ("HUTCH_HANDLER_TIMEOUT", "6s"),
            ("HUTCH_HEARTBEAT", "7s"),
            ("HUTCH_CONNECTION_TIMEOUT", "8s"),
            ("HUTCH_RECONNECT_MIN_DELAY", "100ms"),
            ("HUTCH_RECONNECT_MAX_DELAY", "9s"),
            ("HUTCH_MAX_RESTARTS", "2"),
            ("HUTCH_RESTART_PERIOD", "10s"),
            ("HUTCH_MAX_ATTEMPTS", "5"),
            ("HUTCH_RETRY_MIN_DELAY", "200ms"),
            ("HUTCH_RETRY_MAX_DELAY", "11s"),
            ("HUTCH_QUEUE_TYPE", "quorum"),
            ("HUTCH_DELIVERY_LIMIT", "4"),
        ]))
        .validate()
        .unwrap();
    let secs = Duration::from_secs;
    assert_eq!(settings.prefetch, Some(64));
    assert_eq!(settings.concurrency, 4);
    assert_eq!(settings.confirm_timeout, secs(3));
    assert_eq!(settings.request_timeout, secs(4));
    assert_eq!(settings.shutdown_timeout, secs(5));
    assert_eq!(settings.handler_timeout, secs(6));
    assert_eq!(settings.heartbeat, secs(7));
    assert_eq!(settings.connection_timeout, secs(8));
    assert_eq!(settings.reconnect_min_delay, Duration::from_millis(100));
    assert_eq!(settings.reconnect_max_delay, secs(9));
    assert_eq!(
        (settings.max_restarts, settings.restart_period),
        (2, secs(10))
    );
    assert_eq!(settings.retry.max_attempts, 5);
    assert_eq!(settings.retry.min_delay, Duration::from_millis(200));
    assert_eq!(settings.retry.max_delay, secs(11));
    assert_eq!(settings.queue_arguments.queue_type, Some(QueueType::Quorum));
    assert_eq!(settings.queue_arguments.delivery_limit, Some(4));
}

#[test]
fn a_bad_value_names_the_variable_or_the_key_it_came_from() {
    for (var, bad) in [
        ("HUTCH_PREFETCH", "many"),
        ("HUTCH_PREFETCH", "70000"),
        ("HUTCH_MAX_ATTEMPTS", "-1"),
        ("HUTCH_HEARTBEAT", "30"),
        ("HUTCH_QUEUE_TYPE", "stream"),
        ("HUTCH_RETRY_MIN_DELAY", "soon"),
    ] {
        let (setting, reason) = config_error(
            HutchBuilder::defaults().overlay_env(env_owned(vec![(var, bad.to_owned())])),
        );
        assert_eq!(setting, format!("{var} (environment)"), "{var}={bad}");
        assert!(!reason.is_empty());
    }
    let (_dir, path) = config_file("max_attempts = \"three\"\n");
    let (setting, reason) = config_error(
        HutchBuilder::defaults().overlay_env(env_owned(vec![("HUTCH_CONFIG", path.clone())])),
    );
    assert_eq!(setting, format!("max_attempts in {path} (HUTCH_CONFIG)"));
    assert!(reason.contains("three"), "{reason}");
    // The environment repairs a bad file value, as a setter repairs both.
    assert!(
        HutchBuilder::defaults()
            .overlay_env(env_owned(vec![
                ("HUTCH_CONFIG", path),
                ("HUTCH_MAX_ATTEMPTS", "2".to_owned())
            ]))
            .validate()
            .is_ok()
    );
}

#[test]
fn a_missing_or_misspelt_file_is_an_error_naming_hutch_config() {
    let (setting, reason) = config_error(
        HutchBuilder::defaults().overlay_env(env(&[("HUTCH_CONFIG", "/nonexistent/hutch.toml")])),
    );
    assert_eq!(setting, "HUTCH_CONFIG (environment)");
    assert!(reason.contains("/nonexistent/hutch.toml"), "{reason}");
    let (_dir, path) = config_file("prefech = 3\n");
    let (_, reason) =
        config_error(HutchBuilder::defaults().overlay_env(env_owned(vec![("HUTCH_CONFIG", path)])));
    assert!(reason.contains("unknown key \"prefech\""), "{reason}");
}

#[test]
fn min_and_max_from_different_places_are_named_together() {
    let (setting, _) = config_error(
        HutchBuilder::defaults()
            .overlay_env(env(&[("HUTCH_RETRY_MIN_DELAY", "2m")]))
            .retry_delay(Duration::from_secs(1), Duration::from_secs(30))
            .overlay_env(env(&[("HUTCH_RETRY_MIN_DELAY", "2m")])),
    );
    assert_eq!(
        setting,
        "HUTCH_RETRY_MIN_DELAY (environment) and HutchBuilder::retry_delay"
    );
}

#[test]
fn builder_wide_queue_arguments_that_do_not_fit_are_refused_at_build() {
    let (setting, reason) = config_error(
        HutchBuilder::defaults()
            .queue_type(QueueType::Quorum)
            .queue_arguments(QueueArguments::new().max_priority(5)),
    );
    assert_eq!(setting, "HutchBuilder::queue_type");
    assert!(reason.contains("classic"), "{reason}");
}

fn management_endpoint(settings: &Settings) -> Option<(String, String, String)> {
    settings.stale_bindings.as_ref().map(|api| {
        let (base_url, user, vhost) = api.endpoint();
        (base_url.to_owned(), user.to_owned(), vhost.to_owned())
    })
}

fn endpoint(base_url: &str, user: &str, vhost: &str) -> Option<(String, String, String)> {
    Some((base_url.to_owned(), user.to_owned(), vhost.to_owned()))
}

#[test]
fn stale_binding_removal_is_off_unless_asked() {
    let settings = HutchBuilder::defaults().validate().unwrap();
    assert_eq!(management_endpoint(&settings), None);
    // A management URI alone turns nothing on.
    let settings = HutchBuilder::defaults()
        .management_uri("http://mgmt:15672")
        .validate()
        .unwrap();
    assert_eq!(management_endpoint(&settings), None);
}

#[test]
fn stale_binding_removal_comes_from_the_environment_the_file_or_the_builder() {
    // The environment, with the management URI derived from the broker URI.
    let from_env = HutchBuilder::defaults().overlay_env(env(&[
        ("HUTCH_URI", "amqp://app:pw@rabbit.internal:5672/shop"),
        ("HUTCH_REMOVE_STALE_BINDINGS", "true"),
    ]));
    assert_eq!(
        management_endpoint(&from_env.clone().validate().unwrap()),
        endpoint("http://rabbit.internal:15672", "app", "shop")
    );
    // The builder wins.
    let settings = from_env.remove_stale_bindings(false).validate().unwrap();
    assert_eq!(management_endpoint(&settings), None);

    // The file, a TOML boolean and a management URI of its own, which the
    // environment overrides.
    let (_dir, path) = config_file(
        "remove_stale_bindings = true\nmanagement_uri = \"http://admin:pw@mgmt.internal:8080/rabbitmq\"\n",
    );
    let settings = HutchBuilder::defaults()
        .overlay_env(env_owned(vec![("HUTCH_CONFIG", path.clone())]))
        .validate()
        .unwrap();
    assert_eq!(
        management_endpoint(&settings),
        endpoint("http://mgmt.internal:8080/rabbitmq", "admin", "/")
    );
    let settings = HutchBuilder::defaults()
        .overlay_env(env_owned(vec![
            ("HUTCH_CONFIG", path.clone()),
            ("HUTCH_MANAGEMENT_URI", "http://other:15672".to_owned()),
        ]))
        .validate()
        .unwrap();
    // No credentials in it: the broker URI's.
    assert_eq!(
        management_endpoint(&settings),
        endpoint("http://other:15672", "guest", "/")
    );
    // An empty variable unsets the file's URI: derived again.
    let settings = HutchBuilder::defaults()
        .overlay_env(env_owned(vec![
            ("HUTCH_CONFIG", path),
            ("HUTCH_MANAGEMENT_URI", String::new()),
        ]))
        .validate()
        .unwrap();
    assert_eq!(
        management_endpoint(&settings),
        endpoint("http://127.0.0.1:15672", "guest", "/")
    );
}

#[test]
fn bad_stale_binding_settings_name_where_they_came_from() {
    let (setting, reason) = config_error(
        HutchBuilder::defaults().overlay_env(env(&[("HUTCH_REMOVE_STALE_BINDINGS", "maybe")])),
    );
    assert_eq!(setting, "HUTCH_REMOVE_STALE_BINDINGS (environment)");
    assert!(reason.contains("true or false"), "{reason}");

    let (_dir, path) = config_file("remove_stale_bindings = \"yes please\"\n");
    let (setting, _) = config_error(
        HutchBuilder::defaults().overlay_env(env_owned(vec![("HUTCH_CONFIG", path.clone())])),
    );
    assert_eq!(
        setting,
        format!("remove_stale_bindings in {path} (HUTCH_CONFIG)")
    );

    // Checked even while removal is off, and never quoting the password.
    let (setting, reason) = config_error(HutchBuilder::defaults().overlay_env(env(&[(
        "HUTCH_MANAGEMENT_URI",
        "https://admin:hunter2@mgmt:15671",
    )])));
    assert_eq!(setting, "HUTCH_MANAGEMENT_URI (environment)");
    assert!(reason.contains("https is not supported"), "{reason}");
    assert!(!reason.contains("hunter2"), "{reason}");
    let (setting, _) = config_error(HutchBuilder::defaults().management_uri("mgmt:15672"));
    assert_eq!(setting, "HutchBuilder::management_uri");
}

#[test]
fn an_amqps_broker_needs_a_management_uri_given() {
    let (setting, reason) = config_error(
        HutchBuilder::defaults()
            .uri("amqps://app:pw@rabbit.internal/%2f")
            .remove_stale_bindings(true),
    );
    assert_eq!(
        setting,
        "HutchBuilder::remove_stale_bindings without a management URI"
    );
    assert!(reason.contains("HUTCH_MANAGEMENT_URI"), "{reason}");
    let settings = HutchBuilder::defaults()
        .uri("amqps://app:pw@rabbit.internal/%2f")
        .remove_stale_bindings(true)
        .management_uri("http://127.0.0.1:15672")
        .validate()
        .unwrap();
    assert_eq!(
        management_endpoint(&settings),
        endpoint("http://127.0.0.1:15672", "app", "/")
    );
}

#[test]
fn debug_output_hides_the_management_uri() {
    let shown = format!(
        "{:?}",
        HutchBuilder::defaults().management_uri("http://admin:hunter2@mgmt:15672")
    );
    assert!(!shown.contains("hunter2"), "{shown}");
}
