//! Sagaflow's logs and traces.
//!
//! * Logs: [`init`] installs the `tracing` subscriber every process uses —
//!   pretty or JSON lines on stderr, level from `RUST_LOG` (default `info`),
//!   written by a thread of their own: a process never waits for a stderr
//!   that is not taking lines (a stopped log shipper, a full pipe); lines
//!   that do not fit its buffer are dropped and counted
//!   (`sagaflow_log_lines_dropped_total`).
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

/// Log lines held for a stderr that is not taking them before new ones
/// are dropped: a few MiB of lines. Writing to a pipe nobody reads would
/// otherwise block the thread that logs — a runtime worker, and with it
/// every saga that worker drives.
const LOG_LINES_BUFFERED: usize = 8_192;

/// Counts the log lines [`init`]'s writer dropped.
static DROPPED_LOG_LINES: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Log lines dropped so far because stderr was not taking them.
pub fn dropped_log_lines() -> u64 {
    DROPPED_LOG_LINES
        .get()
        .map_or(0, |c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX))
}

/// Flushes exported spans and buffered log lines when dropped (keep it
/// alive in `main`).
#[must_use = "dropping the guard flushes and stops span export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Writes what is still buffered when dropped (waiting at most a
    /// second for a stderr that does not take it).
    _logs: tracing_appender::non_blocking::WorkerGuard,
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
/// fetch, and its connections open `info` spans for every request (2.3 %
/// of the stack's CPU at 10 sagas in flight, with nothing logged). Quiet
/// unless `RUST_LOG` names them (`tansu=info`, `tansu_storage=debug`).
const QUIET: &str = "tansu=warn,libsql=warn,object_store=warn";

/// The log filter's directives: `RUST_LOG` after the quiet libraries, so
/// that a level alone (`RUST_LOG=debug`) leaves them quiet and a directive
/// naming one of them wins; `default_level` without `RUST_LOG`.
fn directives(default_level: &str, rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim) {
        Some(v) if !v.is_empty() => format!("{QUIET},{v}"),
        _ => format!("{default_level},{QUIET}"),
    }
}

/// Registers, in a process's metrics `registry`, the metrics every
/// Sagaflow process serves: `sagaflow_build_info{version, git_sha}` (always
/// 1; `git_sha` is `SAGAFLOW_GIT_SHA` at build time, `unknown` without it),
/// `sagaflow_log_lines_dropped_total` and, on Linux, the standard
/// `process_*` metrics (CPU seconds, resident and virtual memory, open and
/// max file descriptors, start time, threads). Registering twice in one
/// registry is harmless.
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
    let _ = registry.register(Box::new(DroppedLogLines::new(dropped_log_lines)));
    #[cfg(target_os = "linux")]
    {
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
    }
}

/// `sagaflow_log_lines_dropped_total`, brought up to `read()` at each
/// scrape.
struct DroppedLogLines {
    counter: prometheus::IntCounter,
    read: fn() -> u64,
    /// One scrape at a time catches the counter up.
    catching_up: std::sync::Mutex<()>,
}

impl DroppedLogLines {
    fn new(read: fn() -> u64) -> Self {
        Self {
            counter: prometheus::IntCounter::new(
                "sagaflow_log_lines_dropped_total",
                "Log lines dropped because stderr was not taking them (the process never waits for its logs)",
            )
            .expect("valid metric"),
            read,
            catching_up: std::sync::Mutex::new(()),
        }
    }
}

impl prometheus::core::Collector for DroppedLogLines {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let _one = self.catching_up.lock().unwrap_or_else(|e| e.into_inner());
        let (now, had) = ((self.read)(), self.counter.get());
        if now > had {
            self.counter.inc_by(now - had);
        }
        self.counter.collect()
    }
}

/// Writes lines to `out` on a thread of its own; a line that finds
/// `buffered` lines waiting is dropped (and counted), never waited for.
fn log_writer<W: std::io::Write + Send + 'static>(
    out: W,
    buffered: usize,
) -> (
    tracing_appender::non_blocking::NonBlocking,
    tracing_appender::non_blocking::WorkerGuard,
) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(buffered)
        .thread_name("sf-log")
        .finish(out)
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
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter =
        tracing_subscriber::EnvFilter::try_new(directives(default_level, rust_log.as_deref()))
            .unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(directives(default_level, None))
            });
    let (writer, guard) = log_writer(std::io::stderr(), LOG_LINES_BUFFERED);
    let _ = DROPPED_LOG_LINES.set(writer.error_counter());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(use_colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR"),
        ));
    match format {
        LogFormat::Pretty => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    if !export_requested() {
        return Telemetry {
            provider: None,
            _logs: guard,
        };
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
            return Telemetry {
                provider: None,
                _logs: guard,
            };
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
        _logs: guard,
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
    #[test]
    fn libraries_logging_per_request_stay_quiet_unless_named() {
        use tracing::Level;
        use tracing_subscriber::EnvFilter;
        let enabled = |rust_log: Option<&str>, target_level: &str| {
            let filter = EnvFilter::try_new(super::directives("info", rust_log)).unwrap();
            let subscriber = tracing_subscriber::fmt().with_env_filter(filter).finish();
            tracing::subscriber::with_default(subscriber, || match target_level {
                "tansu_service info" => {
                    tracing::enabled!(target: "tansu_service::stream", Level::INFO)
                }
                "tansu_storage debug" => {
                    tracing::enabled!(target: "tansu_storage::service", Level::DEBUG)
                }
                "tansu_storage warn" => {
                    tracing::enabled!(target: "tansu_storage::service", Level::WARN)
                }
                "sagaflow info" => {
                    tracing::enabled!(target: "sagaflow_adapter::runtime", Level::INFO)
                }
                "sagaflow debug" => {
                    tracing::enabled!(target: "sagaflow_adapter::runtime", Level::DEBUG)
                }
                other => unreachable!("{other}"),
            })
        };
        for rust_log in [None, Some("info"), Some(" "), Some("debug")] {
            assert!(!enabled(rust_log, "tansu_service info"), "{rust_log:?}");
            assert!(enabled(rust_log, "tansu_storage warn"), "{rust_log:?}");
            assert!(enabled(rust_log, "sagaflow info"), "{rust_log:?}");
        }
        assert!(enabled(Some("debug"), "sagaflow debug"));
        assert!(!enabled(None, "sagaflow debug"));
        assert!(enabled(
            Some("info,sagaflow_adapter=debug"),
            "sagaflow debug"
        ));
        assert!(enabled(Some("info,tansu=info"), "tansu_service info"));
        assert!(enabled(Some("tansu_storage=debug"), "tansu_storage debug"));
        assert!(!enabled(Some("tansu_storage=debug"), "tansu_service info"));
    }

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
        for name in ["sagaflow_build_info", "sagaflow_log_lines_dropped_total"] {
            assert!(names.contains(&name.to_owned()), "{name} in {names:?}");
        }
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

    /// A stderr that takes nothing (a pipe nobody reads) costs the logging
    /// thread nothing: lines beyond the buffer are dropped and counted.
    #[test]
    fn logging_to_a_stuck_stderr_never_blocks_and_counts_what_it_drops() {
        use std::io::Write as _;
        use tracing_subscriber::fmt::MakeWriter as _;

        /// Blocks every write until the test ends.
        struct Stuck(std::sync::mpsc::Receiver<()>);
        impl std::io::Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.recv();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (release, stuck) = std::sync::mpsc::channel();
        let (writer, guard) = log_writer(Stuck(stuck), 16);
        let (done_tx, done) = std::sync::mpsc::channel();
        let logging = std::thread::spawn(move || {
            for i in 0..1_000 {
                writeln!(writer.make_writer(), "line {i}").unwrap();
            }
            done_tx
                .send(writer.error_counter().dropped_lines())
                .unwrap();
        });
        let dropped = done
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("1,000 lines logged without waiting for the writer");
        // One line is in the stuck write, at most 16 wait behind it.
        assert!(dropped >= 1_000 - 17, "{dropped} dropped");
        logging.join().unwrap();
        drop(release);
        drop(guard);
    }

    #[test]
    fn dropped_log_lines_are_a_counter_caught_up_at_each_scrape() {
        static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        fn read() -> u64 {
            DROPPED.load(std::sync::atomic::Ordering::Relaxed)
        }
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(DroppedLogLines::new(read)))
            .unwrap();
        let value = || {
            let families = registry.gather();
            let family = families
                .iter()
                .find(|f| f.name() == "sagaflow_log_lines_dropped_total")
                .unwrap();
            assert_eq!(
                family.get_field_type(),
                prometheus::proto::MetricType::COUNTER
            );
            family.get_metric()[0].get_counter().get_value()
        };
        assert_eq!(value(), 0.0);
        DROPPED.store(5, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(value(), 5.0);
        assert_eq!(value(), 5.0, "a second scrape adds nothing");
        DROPPED.store(7, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(value(), 7.0);
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
