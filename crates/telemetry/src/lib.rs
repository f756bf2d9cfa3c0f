//! Sagaflow's logs and traces.
//!
//! * Logs: [`init`] installs the `tracing` subscriber every process uses —
//!   pretty or JSON lines on stderr, level from `RUST_LOG` (default `info`).
//! * Traces: each hop of a saga (the saga itself, every command, lifecycle
//!   event and result the orchestrator sends, an adapter's handling of a
//!   command, each HTTP call to a backend) is a span in the W3C trace
//!   context the Kafka headers carry ([`sagaflow_trace`]). When the
//!   standard OpenTelemetry variables ask for it, [`hop`] exports those
//!   spans over OTLP/HTTP; otherwise it costs one atomic load.
//!
//! Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, `OTEL_TRACES_EXPORTER` is
//! not `none` and `OTEL_SDK_DISABLED` is not `true`.
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (or `…_TRACES_PROTOCOL`) picks
//! `http/protobuf` (default) or `http/json`; `grpc` is not built in and
//! falls back to `http/protobuf` with a warning. `OTEL_SERVICE_NAME` names
//! the service (default: the process's role, e.g. `sagaflow-orchestrator`);
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*` and the timeouts work as the
//! OpenTelemetry SDK documents.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use sagaflow_trace::TraceContext;

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Flushes exported spans when dropped (keep it alive in `main`).
#[must_use = "dropping the guard flushes and stops span export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("sagaflow: flushing OTLP spans: {e}");
        }
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether the environment asks for OTLP export of traces.
fn export_requested() -> bool {
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let none = var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    let endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    endpoint && !disabled && !none
}

fn protocol() -> (Protocol, Option<String>) {
    let asked =
        var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match asked.as_deref().map(str::trim) {
        None | Some("http/protobuf") => (Protocol::HttpBinary, None),
        Some("http/json") => (Protocol::HttpJson, None),
        Some(other) => (
            Protocol::HttpBinary,
            Some(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL `{other}` is not supported (grpc is not built in); using http/protobuf"
            )),
        ),
    }
}

/// Libraries whose `info` is per request: the embedded broker logs every
/// fetch. Quiet unless `RUST_LOG` asks for them.
const QUIET: &str = "tansu_storage=warn,tansu_broker=warn,tansu_sans_io=warn,tansu_schema=warn,libsql=warn,object_store=warn";

/// Registers, in a process's metrics `registry`, the metrics every
/// Sagaflow process serves: `sagaflow_build_info{version, git_sha}` (always
/// 1; `git_sha` is `SAGAFLOW_GIT_SHA` at build time, `unknown` without it)
/// and, on Linux, the standard `process_*` metrics (CPU seconds, resident
/// and virtual memory, open and max file descriptors, start time, threads).
/// Registering twice in one registry is harmless.
pub fn register_process_metrics(registry: &prometheus::Registry) {
    let build = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "sagaflow_build_info",
            "Always 1: the version and git commit this process was built from",
        ),
        &["version", "git_sha"],
    )
    .expect("valid metric");
    build
        .with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            option_env!("SAGAFLOW_GIT_SHA").unwrap_or("unknown"),
        ])
        .set(1);
    // AlreadyReg: a second runtime sharing the registry registered them.
    let _ = registry.register(Box::new(build));
    #[cfg(target_os = "linux")]
    {
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
    }
}

/// Colour in logs only on a terminal, and never when `NO_COLOR` is set to
/// anything but the empty string (<https://no-color.org>).
fn use_colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the log subscriber and, when the environment asks for it, the
/// OTLP span exporter. `role` names the service when `OTEL_SERVICE_NAME`
/// is not set; `default_level` applies when `RUST_LOG` is not set.
pub fn init(role: &str, format: LogFormat, default_level: &str) -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default_level},{QUIET}")));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(use_colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR"),
        ));
    match format {
        LogFormat::Pretty => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    if !export_requested() {
        return Telemetry { provider: None };
    }
    let (protocol, warning) = protocol();
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "OTLP span export is configured but cannot start; traces stay in Kafka headers only");
            return Telemetry { provider: None };
        }
    };
    let service = var("OTEL_SERVICE_NAME").unwrap_or_else(|| format!("sagaflow-{role}"));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.clone())
                .build(),
        )
        .build();
    let _ = TRACER.set(provider.tracer("sagaflow"));
    tracing::info!(service = %service, ?protocol, "exporting saga spans over OTLP");
    Telemetry {
        provider: Some(provider),
    }
}

/// Whether spans are exported (so callers can skip building attributes).
pub fn exporting() -> bool {
    TRACER.get().is_some()
}

/// What a hop is, in OpenTelemetry's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HopKind {
    /// A whole saga, or work inside one process.
    Internal,
    /// A record sent to Kafka.
    Producer,
    /// A record handled from Kafka.
    Consumer,
    /// An outgoing HTTP call.
    Client,
}

/// Exports one finished span with the ids Sagaflow put in the headers:
/// `span` is the hop's own context, `parent` the span it continues (none for
/// the root of a new trace). A no-op unless export is on.
pub fn hop(
    name: impl Into<Cow<'static, str>>,
    kind: HopKind,
    span: &TraceContext,
    parent: Option<&TraceContext>,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
) {
    let Some(tracer) = TRACER.get() else {
        return;
    };
    let parent_cx = match parent {
        Some(p) => Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(p.trace_id),
            SpanId::from_bytes(p.span_id),
            TraceFlags::new(p.flags),
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    };
    let mut s = tracer
        .span_builder(name)
        .with_kind(match kind {
            HopKind::Internal => SpanKind::Internal,
            HopKind::Producer => SpanKind::Producer,
            HopKind::Consumer => SpanKind::Consumer,
            HopKind::Client => SpanKind::Client,
        })
        .with_trace_id(TraceId::from_bytes(span.trace_id))
        .with_span_id(SpanId::from_bytes(span.span_id))
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent_cx);
    s.end_with_timestamp(end.max(start));
}

pub use opentelemetry::KeyValue as Attribute;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_and_process_metrics_are_registered_once() {
        let registry = prometheus::Registry::new();
        register_process_metrics(&registry);
        register_process_metrics(&registry);
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert!(
            names.contains(&"sagaflow_build_info".to_owned()),
            "{names:?}"
        );
        #[cfg(target_os = "linux")]
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(names.contains(&name.to_owned()), "{name} in {names:?}");
        }
        let build = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "sagaflow_build_info")
            .unwrap();
        assert_eq!(build.get_metric().len(), 1);
        assert_eq!(build.get_metric()[0].get_gauge().get_value(), 1.0);
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        assert!(use_colour(true, None));
        assert!(!use_colour(false, None));
        assert!(!use_colour(true, Some("1".into())));
        assert!(!use_colour(true, Some("0".into())), "any non-empty value");
        assert!(use_colour(true, Some("".into())), "empty means unset");
    }
}
