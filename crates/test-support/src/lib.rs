//! Helpers for Sagaflow's tests.
//!
//! * [`kafka`] gives a test a real Kafka-protocol broker: the one named by
//!   `SAGAFLOW_TEST_BOOTSTRAP` if set (e.g. a real Kafka cluster), otherwise
//!   one embedded broker per test process, started on first use on a free
//!   loopback port. It runs in-process, so it cannot outlive the test
//!   process, whether the test passes or panics.
//! * [`unique`] gives topic and group names that never collide between
//!   tests, test processes or reruns against a long-lived broker.
//! * [`consume`] reads with a deadline, so no test waits forever.
//! * [`cli`] runs the built `sagaflow` binary and checks what it printed
//!   and how it exited; [`process`] starts and stops long-running ones.
//! * [`backend`] is a recording fake HTTP backend: scripted answers, and
//!   every request kept for the test to count.
//! * [`metrics`] reads `/metrics`: sums a series by name and labels, and
//!   waits (bounded) until one reaches a value.
//! * [`petstore`] is a small Swagger Petstore on that fake backend, for
//!   the scaffolding tests (`sagaflow adapter scaffold --openapi`).
//!
//! This crate links the embedded broker: it is for tests only, never a
//! production crate's `[dependencies]`. The virtual clock that drives a
//! saga without waiting is `sagaflow_engine::virtual_clock`, since the
//! production `sagaflow test` command uses it too.

pub mod backend;
pub mod cli;
pub mod metrics;
pub mod petstore;
pub mod process;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
pub use sagaflow_broker::{BrokerConfig, Durable, EmbeddedBroker, Fsync, Storage};
use sagaflow_bus::{KafkaConfig, TopicSpec, ensure_topics};

/// Environment variable naming an external broker to test against.
pub const BOOTSTRAP_ENV: &str = "SAGAFLOW_TEST_BOOTSTRAP";

static SHARED: OnceLock<String> = OnceLock::new();
static BROKER: OnceLock<EmbeddedBroker> = OnceLock::new();

/// `bootstrap.servers` of the broker shared by this test process.
pub fn bootstrap_servers() -> &'static str {
    SHARED.get_or_init(|| {
        if let Ok(external) = std::env::var(BOOTSTRAP_ENV)
            && !external.trim().is_empty()
        {
            return external;
        }
        let broker = BROKER.get_or_init(|| {
            EmbeddedBroker::start(BrokerConfig::default())
                .unwrap_or_else(|e| panic!("starting the embedded test broker: {e}"))
        });
        broker.bootstrap_servers()
    })
}

/// Client settings for the shared broker, tuned for tests: a 1 ms fetch
/// wait, since the embedded broker holds every fetch for the full wait.
pub fn kafka() -> KafkaConfig {
    KafkaConfig::new(bootstrap_servers()).with("fetch.wait.max.ms", "1")
}

/// A name unique to this call: `<prefix>-<pid>-<time>-<counter>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default();
    format!("{prefix}-{}-{micros}-{n}", std::process::id())
}

/// Creates a fresh uniquely named topic on the shared broker.
pub async fn topic(prefix: &str, partitions: i32) -> String {
    let name = unique(prefix);
    create(TopicSpec::new(name.clone(), partitions)).await;
    name
}

/// Creates `spec` on the shared broker, panicking with the reason if it fails.
pub async fn create(spec: TopicSpec) {
    let name = spec.name.clone();
    ensure_topics(&kafka(), &[spec])
        .await
        .unwrap_or_else(|e| panic!("creating test topic {name}: {e}"));
}

/// Reads until `n` messages arrived or `timeout` passed; returns what came.
pub async fn consume(consumer: &StreamConsumer, n: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => panic!("consumer error while reading: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// Waits until the consumer has an assignment of `n` partitions, polling it
/// so the group protocol makes progress; messages that arrive meanwhile are
/// returned.
pub async fn await_assignment(
    consumer: &StreamConsumer,
    n: usize,
    timeout: Duration,
) -> Result<Vec<OwnedMessage>, String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        if assigned == n {
            return Ok(seen);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{assigned} partitions assigned after {timeout:?}, expected {n}"
            ));
        }
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
            seen.push(m.detach());
        }
    }
}

/// The payload of `m` as UTF-8 (empty for a tombstone).
pub fn text(m: &OwnedMessage) -> String {
    m.payload()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default()
}

/// Chooses rustls' process-wide crypto provider (ring, as the embedded
/// broker does) if none is yet, so an HTTP client can be built in a test
/// process that has not started a broker.
pub(crate) fn install_crypto_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The value of header `name` of `m` as UTF-8, if it has one.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_are_valid_topics() {
        let a = unique("t");
        let b = unique("t");
        assert_ne!(a, b);
        TopicSpec::new(a, 1).validate().unwrap();
    }

    #[test]
    fn a_free_port_takes_a_listener() {
        let port = free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("nothing else listens there");
    }

    #[test]
    fn headers_are_read_by_name() {
        use rdkafka::message::{Header, OwnedHeaders, Timestamp};
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "a",
                value: Some("x"),
            })
            .insert(Header {
                key: "b",
                value: None::<&str>,
            });
        let m = OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        );
        assert_eq!(header(&m, "a").as_deref(), Some("x"));
        assert_eq!(header(&m, "b"), None);
        assert_eq!(header(&m, "c"), None);
    }
}
