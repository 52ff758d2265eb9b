//! The measurements of every round, and the markdown table of them.

use std::{collections::BTreeMap, fmt::Write};

use crate::cli::Impl;

/// Which way a metric improves; part of its name in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Better {
    /// More is better (throughput).
    Higher,
    /// Less is better (CPU, latency, memory, time).
    Lower,
}

/// Every value measured, by metric (in the order first recorded) and
/// implementation, one per round.
#[derive(Debug, Default)]
pub(crate) struct Results {
    metrics: Vec<(String, Better)>,
    values: BTreeMap<(String, Impl), Vec<f64>>,
    /// Targets on hutch-rs's medians: the metric and its lowest passing value.
    targets: Vec<(String, f64)>,
}

impl Results {
    /// Records one round's `value` of `metric` for `implementation`.
    pub(crate) fn record(
        &mut self,
        metric: &str,
        better: Better,
        implementation: Impl,
        value: f64,
    ) {
        if !self.metrics.iter().any(|(name, _)| name == metric) {
            self.metrics.push((metric.to_owned(), better));
        }
        self.values
            .entry((metric.to_owned(), implementation))
            .or_default()
            .push(value);
    }

    /// Sets the target of a hutch-rs metric: its median must be at least
    /// `at_least`. Set once, however many rounds record the metric.
    pub(crate) fn target(&mut self, metric: &str, at_least: f64) {
        if !self.targets.iter().any(|(name, _)| name == metric) {
            self.targets.push((metric.to_owned(), at_least));
        }
    }

    /// One line per target: the median, the target, pass or fail. Empty
    /// when no scenario run set a target.
    pub(crate) fn verdicts(&self) -> String {
        let mut lines = String::new();
        for (metric, at_least) in &self.targets {
            let Some(values) = self.values.get(&(metric.clone(), Impl::Hutch)) else {
                continue;
            };
            let measured = median(values);
            let verdict = if measured >= *at_least {
                "PASS"
            } else {
                "FAIL"
            };
            let _ = writeln!(
                lines,
                "- {verdict}: {metric}: median {} over {} round(s), target ≥ {}",
                number(measured),
                values.len(),
                number(*at_least),
            );
        }
        lines
    }

    /// The table: one row per metric and implementation; median and range
    /// over the rounds; on hutch-rs's rows, its median over each raw
    /// client's.
    pub(crate) fn table(&self) -> String {
        let mut table = String::from(
            "| metric | implementation | median | min–max | hutch-rs / raw-current_thread | hutch-rs / raw-multi_thread |\n\
             |---|---|---:|---:|---:|---:|\n",
        );
        for (metric, better) in &self.metrics {
            let direction = match better {
                Better::Higher => "higher is better",
                Better::Lower => "lower is better",
            };
            let median_of = |implementation| {
                self.values
                    .get(&(metric.clone(), implementation))
                    .map(|values| median(values))
            };
            for implementation in Impl::ALL {
                let Some(values) = self.values.get(&(metric.clone(), implementation)) else {
                    continue;
                };
                let (min, max) = values
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(min, max), &value| {
                        (min.min(value), max.max(value))
                    });
                let ratio = |raw: Impl| match (implementation, median_of(raw)) {
                    (Impl::Hutch, Some(raw)) if raw != 0.0 => {
                        format!("{:.2}×", median(values) / raw)
                    }
                    _ => String::new(),
                };
                let _ = writeln!(
                    table,
                    "| {metric} ({direction}) | {implementation} | {} | {}–{} | {} | {} |",
                    number(median(values)),
                    number(min),
                    number(max),
                    ratio(Impl::RawCurrentThread),
                    ratio(Impl::RawMultiThread),
                );
            }
        }
        table
    }
}

/// The median (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() % 2 {
        0 if middle > 0 => (sorted[middle - 1] + sorted[middle]) / 2.0,
        _ => sorted.get(middle).copied().unwrap_or(f64::NAN),
    }
}

/// Three significant digits or so, without exponents.
pub(crate) fn number(value: f64) -> String {
    match value.abs() {
        magnitude if magnitude >= 100.0 => format!("{value:.0}"),
        magnitude if magnitude >= 10.0 => format!("{value:.1}"),
        _ => format!("{value:.2}"),
    }
}
