//! Telemetry: the decision log (SPEC §9) and the operational log.
//!
//! The two never mix: decisions go to their own sink (stdout by default) as one JSON object
//! per line; operational events go to stderr through `tracing`.

pub mod decision_log;
pub mod h2_errors;
pub mod metrics;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the operational log on stderr. `TOLLGATE_LOG` (or `RUST_LOG`) sets the filter.
pub fn init_logging(format: LogFormat) {
    let filter = std::env::var("TOLLGATE_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
