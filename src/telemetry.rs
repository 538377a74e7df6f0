//! Logs and metrics, set up once per process.

use std::future::Future;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Starts structured logging to stderr; the level comes from `RUST_LOG`
/// (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in files and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (its pipe closed) is lost, and
        // that is all: reporting it would write to stderr again, and a
        // failing `eprintln!` panics.
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Prints a line for whoever started the process (the ready line): to
/// stdout, flushed at once; a closed stdout is not an error worth stopping
/// for (`println!` would panic).
pub fn say(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ])
            .expect("static bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        handle
    })
}

/// Binds a process's `/metrics` listener. An explicit address that cannot
/// be bound is an error. Without one, `default` is tried, and if another
/// process (another core or bridge on this machine, say) holds it, the
/// process runs without `/metrics` and says so rather than refusing to
/// start.
pub async fn bind_metrics(
    explicit: Option<&str>,
    default: &str,
) -> anyhow::Result<Option<TcpListener>> {
    match explicit {
        Some(addr) => Ok(Some(TcpListener::bind(addr).await.map_err(|error| {
            anyhow::anyhow!("cannot listen on {addr} for metrics: {error}")
        })?)),
        None => match TcpListener::bind(default).await {
            Ok(listener) => Ok(Some(listener)),
            Err(error) => {
                tracing::warn!(addr = default, %error, "metrics port busy; serving without /metrics (set --metrics-listen)");
                Ok(None)
            }
        },
    }
}

/// What a ready line says of the metrics listener: its address, or `off`.
pub fn metrics_addr(listener: Option<&TcpListener>) -> String {
    listener
        .and_then(|l| l.local_addr().ok())
        .map_or_else(|| "off".to_owned(), |addr| addr.to_string())
}

/// Serves `GET /metrics` in Prometheus text format until `shutdown`. It
/// has a listener of its own, on loopback by default: what a process
/// measures is for its operators, not for whoever reaches its public port.
pub async fn serve_metrics(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let handle = metrics_handle();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            // Tasks alive in the process: a leak of per-socket or
            // per-stream work shows here.
            let tasks = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            metrics::gauge!("notify_tasks").set(tasks as f64);
            handle.render()
        }),
    );
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(%error, "metrics endpoint stopped");
    }
}
