//! Durations written as text in the environment (`HUTCH_REQUEST_TIMEOUT=30s`),
//! in the syntax of the `#[consumer]` attribute's durations: `humantime`'s.

use std::time::Duration;

use humantime::DurationError;

/// How a duration is written, shown in every error.
const EXAMPLES: &str = "\"500ms\", \"30s\", \"5m\" or \"1m 30s\"";

/// Parses `value`; the error says what is wrong and how to write it. The
/// length (zero, too long) is judged by the setting.
pub(crate) fn parse(value: &str) -> Result<Duration, String> {
    let trimmed = value.trim();
    if trimmed.starts_with('-') {
        return Err(format!(
            "{value:?} is negative; write a duration such as {EXAMPLES}"
        ));
    }
    humantime::parse_duration(trimmed).map_err(|error| match error {
        DurationError::Empty => {
            format!("the value is empty; write a number and a unit, such as {EXAMPLES}")
        }
        DurationError::UnknownUnit { unit, .. } if unit.is_empty() => format!(
            "{value:?} has no unit; write \"{trimmed}s\" for seconds or \"{trimmed}ms\" for milliseconds"
        ),
        DurationError::UnknownUnit { unit, .. } => format!(
            "unknown unit {unit:?} in {value:?}; use ms, s, m, h or d, as in {EXAMPLES}"
        ),
        DurationError::NumberExpected(_) | DurationError::InvalidCharacter(_) => {
            format!("{value:?} is not a duration; write one such as {EXAMPLES}")
        }
        DurationError::NumberOverflow => format!(
            "{value:?} is too long to be a duration, or more precise than a nanosecond; \
             write one such as {EXAMPLES}"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_attribute_accepts() {
        for (text, expected) in [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("1m 30s", Duration::from_secs(90)),
            (" 30s ", Duration::from_secs(30)),
            ("1.5s", Duration::from_millis(1500)),
        ] {
            assert_eq!(parse(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn says_how_to_write_what_it_cannot_read() {
        for (text, hint) in [
            ("", "empty"),
            ("30", "\"30s\""),
            ("30 parsecs", "unknown unit"),
            ("-1s", "negative"),
            ("soon", "not a duration"),
            ("99999999999999999999s", "too long"),
        ] {
            let reason = parse(text).unwrap_err();
            assert!(reason.contains(hint), "{text:?}: {reason}");
        }
    }
}
