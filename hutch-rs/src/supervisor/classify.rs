//! Which failures hutch-rs retries and which it hands to the user.
//!
//! AMQP reports a user's mistake by closing the channel or connection with a
//! reply code. Retrying those would hide the mistake behind a restart loop,
//! so they end `start`/`run` with an error; everything that is about the
//! network or the broker being away is retried with backoff.

use lapin::{Error, ErrorKind};

/// 402 INVALID_PATH: the vhost in the URI is not a valid path.
const INVALID_PATH: u16 = 402;
/// 403 ACCESS_REFUSED: refused credentials, or no permission on a resource.
const ACCESS_REFUSED: u16 = 403;
/// 405 RESOURCE_LOCKED: an exclusive queue of another connection.
const RESOURCE_LOCKED: u16 = 405;
/// 406 PRECONDITION_FAILED: a declaration inequivalent to what exists.
const PRECONDITION_FAILED: u16 = 406;
/// 530 NOT_ALLOWED: the vhost does not exist or the user may not use it.
const NOT_ALLOWED: u16 = 530;
/// 541 INTERNAL_ERROR: a process of the broker crashed on what it was sent.
const INTERNAL_ERROR: u16 = 541;

fn reply_code(error: &Error) -> Option<u16> {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// A failure to open a connection that retrying cannot fix: refused
/// credentials, an unknown or forbidden vhost, a broker speaking another
/// protocol. A connection limit (also 530 NOT_ALLOWED) passes, so it is
/// retried.
pub(crate) fn is_fatal_connect_error(error: &Error) -> bool {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => match reply_code(error) {
            Some(ACCESS_REFUSED | INVALID_PATH) => true,
            Some(NOT_ALLOWED) => !amqp.get_message().as_str().contains("limit"),
            _ => false,
        },
        ErrorKind::AuthProviderError(_)
        | ErrorKind::InvalidProtocolVersion(_)
        | ErrorKind::ParsingError(_)
        | ErrorKind::SerialisationError(_)
        | ErrorKind::NoDefaultRuntime => true,
        _ => false,
    }
}

/// What is wrong, when `error` is TLS failing with the broker: a rustls
/// error, from the handshake or (with TLS 1.3, where the broker judges our
/// client certificate after the handshake) from the first read after it.
/// Retrying cannot fix any of them, so they are fatal; network failures
/// during the handshake are plain I/O errors and stay retried.
pub(crate) fn tls_problem(
    error: &Error,
    tls: Option<&crate::transport::tls::TlsSettings>,
) -> Option<String> {
    use rustls::{AlertDescription as Alert, Error as Tls};
    let ErrorKind::IOError(io) = error.kind() else {
        return None;
    };
    let tls_error = io.get_ref()?.downcast_ref::<Tls>()?;
    let has_client_certificate = tls.is_some_and(|tls| tls.has_client_certificate());
    let refused_client = |alert: &Alert| {
        let given = if has_client_certificate {
            "the client certificate given (HUTCH_TLS_CLIENT_CERT / tls_client_cert) is not one it trusts"
        } else {
            "it requires a client certificate and none was given (HUTCH_TLS_CLIENT_CERT and HUTCH_TLS_CLIENT_KEY, or tls_client_cert and tls_client_key)"
        };
        format!(
            "certificate problem: the broker refused the client certificate (TLS alert {alert:?}): {given}"
        )
    };
    Some(match tls_error {
        Tls::InvalidCertificate(why) => format!(
            "certificate problem: the broker's certificate is not trusted ({why}); check the CA file \
             (HUTCH_TLS_CA_CERT / tls_ca_cert) and the name checked in it (the URI's host, \
             or HUTCH_TLS_SERVER_NAME / tls_server_name)"
        ),
        Tls::AlertReceived(
            alert @ (Alert::CertificateRequired
            | Alert::BadCertificate
            | Alert::UnsupportedCertificate
            | Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::CertificateUnknown
            | Alert::UnknownCA
            | Alert::AccessDenied),
        ) => refused_client(alert),
        // What TLS 1.2 brokers (Erlang's ssl among them) answer a missing
        // client certificate with; also a version or cipher mismatch.
        Tls::AlertReceived(Alert::HandshakeFailure) => format!(
            "certificate problem or TLS mismatch: the broker ended the handshake (handshake_failure); {}",
            if has_client_certificate {
                "it may not trust the client certificate, or shares no TLS version or cipher with hutch-rs"
            } else {
                "most often it requires a client certificate and none was given (HUTCH_TLS_CLIENT_CERT and HUTCH_TLS_CLIENT_KEY)"
            }
        ),
        Tls::InvalidMessage(_) | Tls::InappropriateMessage { .. } => format!(
            "the broker did not answer with TLS ({tls_error}): is the port its amqps listener?"
        ),
        other => format!("TLS failed: {other}"),
    })
}

/// A refused declaration, binding or `basic.consume` that the user must fix
/// (it would fail the same way on every retry).
///
/// 404 NOT_FOUND is not among them: hutch-rs declares the exchange and the
/// queue right before binding and consuming, so a 404 there means a race (a
/// queue still recovering after a broker restart, or deleted meanwhile),
/// which a restart resolves.
pub(crate) fn is_fatal_channel_error(error: &Error) -> bool {
    error.is_amqp_soft_error()
        && matches!(
            reply_code(error),
            Some(ACCESS_REFUSED | RESOURCE_LOCKED | PRECONDITION_FAILED)
        )
}

/// The broker closed the connection because one of its processes crashed
/// (541 INTERNAL_ERROR): on what a publish in flight carried, if nothing
/// else explains it.
pub(crate) fn is_internal_error(error: &Error) -> bool {
    reply_code(error) == Some(INTERNAL_ERROR)
}

/// A hutch-rs error that retrying cannot fix: what the user must see.
pub(crate) fn is_fatal(error: &crate::Error) -> bool {
    use crate::Error as E;
    match error {
        E::Config { .. } | E::DuplicateQueue { .. } | E::Tls { .. } => true,
        E::Connect { source, .. } => is_fatal_connect_error(source),
        E::Declare { source, .. } | E::Publish { source, .. } => is_fatal_channel_error(source),
        _ => false,
    }
}

/// The channel alone was closed by the broker (e.g. 406 on a delivery
/// acknowledgement timeout) while the connection lives on.
pub(crate) fn is_channel_only(error: &Error) -> bool {
    error.is_amqp_soft_error()
}

/// The broker's refusal of a message over its size limit, as it names both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RefusedSize {
    /// The size of the message it refused.
    pub(crate) size: usize,
    /// Its limit (`max_message_size`).
    pub(crate) max: usize,
}

/// The size refusal `error` is, if it is one: RabbitMQ closes the channel
/// with 406 PRECONDITION_FAILED, "message size 2000 is larger than
/// configured max size 1024" (or "than max size" at its hard limit).
pub(crate) fn refused_message_size(error: &Error) -> Option<RefusedSize> {
    if reply_code(error) != Some(PRECONDITION_FAILED) {
        return None;
    }
    let ErrorKind::ProtocolError(amqp) = error.kind() else {
        return None;
    };
    let text = amqp.get_message().as_str();
    let (_, rest) = text.split_once("message size ")?;
    let (size, rest) = rest.split_once(" is larger than ")?;
    let (_, max) = rest.split_once("max size ")?;
    let number = |digits: &str| digits.trim().trim_end_matches('.').parse::<usize>().ok();
    Some(RefusedSize {
        size: number(size)?,
        max: number(max)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPHardError, AMQPSoftError};

    fn amqp(kind: AMQPErrorKind) -> Error {
        Error::from(ErrorKind::ProtocolError(AMQPError::new(
            kind,
            "text".into(),
        )))
    }

    #[test]
    fn refused_credentials_and_vhosts_are_fatal_at_connect() {
        assert!(is_fatal_connect_error(&amqp(AMQPErrorKind::Soft(
            AMQPSoftError::ACCESSREFUSED
        ))));
        assert!(is_fatal_connect_error(&amqp(AMQPErrorKind::Hard(
            AMQPHardError::NOTALLOWED
        ))));
        assert!(!is_fatal_connect_error(&amqp(AMQPErrorKind::Hard(
            AMQPHardError::CONNECTIONFORCED
        ))));
        let io = Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(!is_fatal_connect_error(&io));
        assert!(!is_fatal_connect_error(&Error::from(
            ErrorKind::MissingHeartbeatError
        )));
    }

    #[test]
    fn tls_errors_are_fatal_certificate_problems_network_errors_are_not() {
        let tls = |error: rustls::Error| {
            Error::from(std::io::Error::new(std::io::ErrorKind::InvalidData, error))
        };
        let untrusted = tls_problem(
            &tls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
            None,
        )
        .unwrap();
        assert!(untrusted.starts_with("certificate problem"), "{untrusted}");
        assert!(untrusted.contains("HUTCH_TLS_CA_CERT"), "{untrusted}");
        let no_client_cert = tls_problem(
            &tls(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRequired,
            )),
            None,
        )
        .unwrap();
        assert!(
            no_client_cert.starts_with("certificate problem")
                && no_client_cert.contains("none was given"),
            "{no_client_cert}"
        );
        let reset = Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(tls_problem(&reset, None), None);
        assert!(is_fatal(&crate::Error::Tls {
            uri: "amqps://u:***@h:5671/%2f".to_owned(),
            reason: untrusted,
        }));
    }

    #[test]
    fn inequivalent_declarations_are_fatal_connection_losses_are_not() {
        assert!(is_fatal_channel_error(&amqp(AMQPErrorKind::Soft(
            AMQPSoftError::PRECONDITIONFAILED
        ))));
        assert!(is_fatal_channel_error(&amqp(AMQPErrorKind::Soft(
            AMQPSoftError::ACCESSREFUSED
        ))));
        assert!(!is_fatal_channel_error(&amqp(AMQPErrorKind::Soft(
            AMQPSoftError::NOTFOUND
        ))));
        assert!(!is_fatal_channel_error(&amqp(AMQPErrorKind::Hard(
            AMQPHardError::CONNECTIONFORCED
        ))));
        let io = Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!is_fatal_channel_error(&io));
        assert!(!is_channel_only(&io));
    }

    #[test]
    fn a_size_refusal_names_the_size_and_the_limit() {
        let refused = |text: &str| {
            refused_message_size(&Error::from(ErrorKind::ProtocolError(AMQPError::new(
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
                text.into(),
            ))))
        };
        assert_eq!(
            refused(
                "PRECONDITION_FAILED - message size 2000 is larger than configured max size 1024"
            ),
            Some(RefusedSize {
                size: 2000,
                max: 1024
            })
        );
        assert_eq!(
            refused(
                "PRECONDITION_FAILED - message size 600000000 is larger than max size 536870912"
            ),
            Some(RefusedSize {
                size: 600_000_000,
                max: 536_870_912
            })
        );
        assert_eq!(
            refused("PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'x'"),
            None
        );
        assert_eq!(
            refused_message_size(&amqp(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))),
            None
        );
    }
}
