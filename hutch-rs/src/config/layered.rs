//! A setting's value with where it came from, so that every error names
//! the variable, file key or setter to fix.

use std::{fmt, str::FromStr, time::Duration};

use super::sources::{RawSetting, Source};
use crate::{Error, Result};

/// A raw value and where it came from, validated in `build()`.
#[derive(Debug, Clone)]
pub(super) struct Layered<T> {
    pub(super) value: T,
    pub(super) source: Source,
    /// Set when the environment or the file held text that is not a value
    /// of this setting: the reason, reported by `build()` unless a later
    /// layer replaces the value.
    unparsed: Option<String>,
}

impl<T> Layered<T> {
    pub(super) fn new(value: T, source: Source) -> Self {
        Self {
            value,
            source,
            unparsed: None,
        }
    }

    pub(super) fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::Config {
            setting: self.source.to_string(),
            reason: reason.into(),
        }
    }

    /// Takes the text of `raw`, parsed: the new value, or the reason it is
    /// not one, reported by `build()`.
    pub(super) fn parse_from(
        &mut self,
        raw: &RawSetting,
        parse: impl FnOnce(&str) -> std::result::Result<T, String>,
    ) {
        match parse(&raw.text) {
            Ok(value) => *self = Layered::new(value, raw.source.clone()),
            Err(reason) => {
                self.source = raw.source.clone();
                self.unparsed = Some(reason);
            }
        }
    }

    /// The value, unless the text it came from did not parse.
    pub(super) fn parsed(&self) -> Result<&T> {
        match &self.unparsed {
            Some(reason) => Err(self.invalid(reason.clone())),
            None => Ok(&self.value),
        }
    }
}

/// Parses a whole number of the setting's type; the reason says what was
/// expected.
pub(super) fn number<N: FromStr + fmt::Display + Bounded>(
    text: &str,
) -> std::result::Result<N, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number from 0 to {}", N::MAX))
}

/// Parses a boolean: `true` or `false` (as TOML writes them; any case), or
/// `1` or `0`.
pub(super) fn boolean(text: &str) -> std::result::Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("{text:?} is not a boolean; write true or false")),
    }
}

/// The largest value of a setting's number type, for error messages.
pub(super) trait Bounded {
    const MAX: Self;
}

impl Bounded for u16 {
    const MAX: Self = u16::MAX;
}

impl Bounded for u32 {
    const MAX: Self = u32::MAX;
}

/// A minimum above its maximum: the error names both sources when they
/// differ (`HUTCH_RETRY_MIN_DELAY` from the environment, the maximum from a
/// setter, say).
pub(super) fn range_error(min: &Layered<Duration>, max: &Layered<Duration>, reason: &str) -> Error {
    let setting = if min.source == max.source {
        min.source.to_string()
    } else {
        format!("{} and {}", min.source, max.source)
    };
    Error::Config {
        setting,
        reason: format!("{reason} ({:?} > {:?})", min.value, max.value),
    }
}
