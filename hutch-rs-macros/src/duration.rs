//! Durations written in the attribute, `"500ms"`, `"30s"`, `"1m 30s"`,
//! parsed with `humantime` when the user's crate compiles, so a typo fails
//! the build instead of the consumer's start.

use std::time::Duration;

use humantime::DurationError;

/// How a duration is written, shown in every error.
const EXAMPLES: &str = "\"500ms\", \"30s\", \"5m\" or \"1m 30s\"";

/// Parses the value of `name = "..."`. The error says what is wrong and how
/// to write it; it does not judge the length (zero, too long): `check.rs` does.
pub(crate) fn parse(name: &str, value: &str) -> Result<Duration, String> {
    let trimmed = value.trim();
    if trimmed.starts_with('-') {
        return Err(format!(
            "`{name}` cannot be negative; write a duration such as {EXAMPLES}"
        ));
    }
    humantime::parse_duration(value).map_err(|error| match error {
        DurationError::Empty => format!(
            "`{name}` is empty; write a number and a unit, such as {EXAMPLES}"
        ),
        DurationError::UnknownUnit { unit, .. } if unit.is_empty() => format!(
            "`{name} = \"{value}\"` has no unit; write \"{trimmed}s\" for seconds or \"{trimmed}ms\" for milliseconds"
        ),
        DurationError::UnknownUnit { unit, .. } => format!(
            "unknown unit \"{unit}\" in `{name} = \"{value}\"`; use ms, s, m, h or d, as in {EXAMPLES}"
        ),
        DurationError::NumberExpected(offset) => format!(
            "expected a number at \"{}\" in `{name} = \"{value}\"`; write a number before each unit, as in {EXAMPLES}",
            value.get(offset..).unwrap_or_default().trim_end()
        ),
        DurationError::InvalidCharacter(offset) => {
            match value.get(offset..).and_then(|rest| rest.chars().next()) {
                Some(character) => format!(
                    "unexpected {character:?} in `{name} = \"{value}\"`; write numbers and units only, as in {EXAMPLES}"
                ),
                // humantime points at a character; should it point past
                // the end, the value ended too early.
                None => format!(
                    "`{name} = \"{value}\"` ends in the middle of a number; write a number and a unit, as in {EXAMPLES}"
                ),
            }
        }
        DurationError::NumberOverflow => format!(
            "`{name} = \"{value}\"` is too long to be a duration, or more precise than a nanosecond; \
             write a duration such as {EXAMPLES}"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_durations() {
        for (text, expected) in [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("1m 30s", Duration::from_secs(90)),
            ("1m30s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3600)),
            (" 30s ", Duration::from_secs(30)),
            ("1.5s", Duration::from_millis(1500)),
            ("250us", Duration::from_micros(250)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse("timeout", text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn says_what_is_wrong() {
        let cases = [
            ("", "`timeout` is empty"),
            ("   ", "`timeout` is empty"),
            ("5", "has no unit; write \"5s\""),
            ("1m 30", "has no unit; write \"1m 30s\""),
            ("5 parsecs", "unknown unit \"parsecs\""),
            ("five seconds", "expected a number at \"five seconds\""),
            ("5s ms", "expected a number at \"ms\""),
            ("1,5s", "unexpected ','"),
            ("1.s", "unexpected '.'"),
            ("-1s", "cannot be negative"),
            ("99999999999999999999s", "too long"),
        ];
        for (text, expected) in cases {
            let problem = parse("timeout", text).unwrap_err();
            assert!(problem.contains(expected), "{text:?}: {problem}");
            // Each message shows how to write it: the examples, or the
            // value with a unit added.
            assert!(
                problem.contains("\"500ms\"") || problem.contains("ms\" for milliseconds"),
                "{text:?}: {problem}"
            );
        }
    }
}
