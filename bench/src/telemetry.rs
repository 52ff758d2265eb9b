//! What a hutch-rs client of the telemetry scenario installs to observe
//! itself, as an application exporting traces and metrics would: the
//! `tracing-opentelemetry` layer over an OpenTelemetry tracer with a batch
//! span processor, and a Prometheus recorder for the `metrics` facade.
//!
//! The span exporter counts and drops what it is given: the cost measured
//! is what tracing adds to the application's own path (creating, filling
//! and ending spans, the trace headers, handing spans to the batch
//! processor's thread), not a collector's network round trips. The
//! Prometheus recorder keeps every value as it would for a scrape; the
//! client renders them once, at the end.

use std::fmt;

use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::Error;

/// What the client installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Telemetry {
    /// Nothing beyond its WARN log: the other scenarios' setting.
    Off,
    /// Traces: every message span exported.
    Traces,
    /// Metrics: every counter, gauge and histogram into a Prometheus
    /// recorder.
    Metrics,
    /// Traces and metrics.
    Both,
}

impl Telemetry {
    /// Every setting, in the order of round 0.
    pub(crate) const ALL: [Telemetry; 4] = [
        Telemetry::Off,
        Telemetry::Traces,
        Telemetry::Metrics,
        Telemetry::Both,
    ];

    /// The settings in the order of `round`: each goes first in turn.
    pub(crate) fn rotation(round: usize) -> Vec<Telemetry> {
        let mut order = Self::ALL.to_vec();
        order.rotate_left(round % Self::ALL.len());
        order
    }

    pub(crate) fn arg(self) -> &'static str {
        match self {
            Telemetry::Off => "off",
            Telemetry::Traces => "traces",
            Telemetry::Metrics => "metrics",
            Telemetry::Both => "both",
        }
    }
}

impl fmt::Display for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.arg())
    }
}

impl std::str::FromStr for Telemetry {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|telemetry| telemetry.arg() == name)
            .ok_or_else(|| format!("unknown telemetry {name:?}").into())
    }
}

/// The WARN log every client writes, and `telemetry` beside it. Returns
/// what must be shut down when the client is done.
pub(crate) fn install(telemetry: Telemetry, writer: BoxMakeWriter) -> Result<Installed, Error> {
    use tracing_subscriber::{Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};

    let log = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "hutch_rs=warn".into()),
        );
    let registry = tracing_subscriber::registry().with(log);
    let mut installed = match telemetry {
        Telemetry::Off | Telemetry::Metrics => {
            registry.init();
            Installed::default()
        }
        Telemetry::Traces | Telemetry::Both => traces::install(registry)?,
    };
    if matches!(telemetry, Telemetry::Metrics | Telemetry::Both) {
        installed = metrics::install(installed)?;
    }
    Ok(installed)
}

/// What [`install`] set up.
#[derive(Debug, Default)]
pub(crate) struct Installed {
    #[cfg(feature = "telemetry")]
    provider: Option<hutch_rs::otel::opentelemetry_sdk::trace::SdkTracerProvider>,
    #[cfg(feature = "telemetry")]
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl Installed {
    /// Flushes and stops what was installed; says what it exported.
    pub(crate) fn finish(self) -> Result<String, Error> {
        // Without the feature nothing is ever installed, nor pushed here.
        #[cfg_attr(not(feature = "telemetry"), allow(unused_mut))]
        let mut exported: Vec<String> = Vec::new();
        #[cfg(feature = "telemetry")]
        if let Some(provider) = self.provider {
            provider.shutdown()?;
            exported.push(format!("{} spans exported", traces::exported()));
        }
        #[cfg(feature = "telemetry")]
        if let Some(prometheus) = self.prometheus {
            let scrape = prometheus.render();
            let series = scrape
                .lines()
                .filter(|line| line.starts_with("hutch_"))
                .count();
            exported.push(format!("{series} hutch_ series rendered"));
        }
        Ok(exported.join(", "))
    }
}

#[cfg(feature = "telemetry")]
mod metrics {
    use super::Installed;
    use crate::Error;

    /// A Prometheus recorder, as an application serving `/metrics`
    /// installs it (histograms with buckets, as the guide advises).
    pub(super) fn install(installed: Installed) -> Result<Installed, Error> {
        let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&[
                0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
            ])?
            .install_recorder()?;
        Ok(Installed {
            prometheus: Some(prometheus),
            ..installed
        })
    }
}

#[cfg(not(feature = "telemetry"))]
mod metrics {
    use super::Installed;
    use crate::Error;

    pub(super) fn install(_installed: Installed) -> Result<Installed, Error> {
        Err("metrics: build the benchmark with `--features telemetry`".into())
    }
}

#[cfg(feature = "telemetry")]
mod traces {
    use std::{
        sync::atomic::{AtomicU64, Ordering},
        time::Duration,
    };

    use hutch_rs::otel::{
        opentelemetry::trace::TracerProvider as _,
        opentelemetry_sdk::{
            error::OTelSdkResult,
            trace::{SdkTracerProvider, SpanData, SpanExporter},
        },
        tracing_opentelemetry,
    };
    use tracing_subscriber::{
        Layer as _, filter::LevelFilter, filter::Targets, layer::SubscriberExt as _,
        util::SubscriberInitExt as _,
    };

    use super::Installed;
    use crate::Error;

    /// Spans the exporter was given.
    static EXPORTED: AtomicU64 = AtomicU64::new(0);

    pub(super) fn exported() -> u64 {
        EXPORTED.load(Ordering::Relaxed)
    }

    /// Counts and drops.
    #[derive(Debug)]
    struct Counting;

    impl SpanExporter for Counting {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            EXPORTED.fetch_add(batch.len() as u64, Ordering::Relaxed);
            Ok(())
        }

        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    pub(super) fn install<S>(registry: S) -> Result<Installed, Error>
    where
        S: tracing::Subscriber
            + for<'span> tracing_subscriber::registry::LookupSpan<'span>
            + Send
            + Sync
            + 'static,
    {
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(Counting)
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("hutch-rs-bench"))
            .with_filter(Targets::new().with_target("hutch_rs::messaging", LevelFilter::INFO));
        registry.with(layer).try_init()?;
        Ok(Installed {
            provider: Some(provider),
            prometheus: None,
        })
    }
}

#[cfg(not(feature = "telemetry"))]
mod traces {
    use super::Installed;
    use crate::Error;

    pub(super) fn install<S>(_registry: S) -> Result<Installed, Error> {
        Err("traces: build the benchmark with `--features telemetry`".into())
    }
}
