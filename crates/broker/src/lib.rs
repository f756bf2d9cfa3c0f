//! An embedded Kafka-protocol broker for Sagaflow's tests and local stack.
//!
//! This runs [tansu](https://github.com/tansu-io/tansu) 0.6.0 in-process on a
//! loopback port, on a thread with its own tokio runtime, so it outlives the
//! per-test runtimes of `#[tokio::test]` and dies with the process: a test that
//! panics leaks no broker process. It is a real broker speaking the Kafka wire
//! protocol; clients (librdkafka through `rdkafka`) cannot tell it from any
//! other. What it does not support is recorded in `docs/broker.md` and checked
//! by `tests/broker_contract.rs`.

mod log;
mod requests;
mod router;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use rama::Service as _;
use tansu_broker::coordinator::group::administrator::Controller;
use tansu_storage::{BrokerRegistrationRequest, StorageContainer};
use tokio::sync::oneshot;
use url::Url;

pub use log::{Durable, Fsync, LogStorage};
pub use requests::{RequestCounts, Requests};

/// Where the broker keeps its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    /// Sagaflow's own log engine ([`LogStorage`]) in memory: passes the log
    /// contract (no skipped records, an exact high watermark); gone when
    /// the broker stops. The default.
    Memory,
    /// Sagaflow's own log engine with an append-only segment log per
    /// partition and a metadata journal under a directory, fsynced by a
    /// policy: topics, records and committed offsets survive a restart.
    Durable(Durable),
    /// tansu 0.6.0's own memory engine (dynostore). Kept selectable so the
    /// contract suite can show its defects: a consumer racing a produce can
    /// skip a record, and ListOffsets lags after multi-record batches.
    TansuMemory,
    /// tansu 0.6.0's SQLite engine: survives a restart, consumes slowly.
    Sqlite(PathBuf),
}

impl Storage {
    /// The durable log under `dir` with the default fsync policy.
    pub fn durable(dir: impl AsRef<Path>) -> Self {
        Self::Durable(Durable::new(dir.as_ref()))
    }

    /// What this storage is, for start-up lines and benchmark reports.
    pub fn describe(&self) -> String {
        match self {
            Self::Memory => "sagaflow log, memory".to_owned(),
            Self::Durable(d) => format!(
                "sagaflow log, durable at {}, fsync {}",
                d.dir.display(),
                d.fsync
            ),
            Self::TansuMemory => "tansu 0.6.0 memory (dynostore)".to_owned(),
            Self::Sqlite(p) => format!("tansu 0.6.0 sqlite at {}", p.display()),
        }
    }

    /// The URL of the tansu engine behind this storage: tansu's memory
    /// engine also keeps the metadata of Sagaflow's log.
    fn url(&self) -> Result<Url, Error> {
        match self {
            Self::Memory | Self::Durable(_) | Self::TansuMemory => {
                Url::parse("memory://tansu/").map_err(|e| Error::Config(e.to_string()))
            }
            Self::Sqlite(path) => {
                // tansu resolves the file against the current directory
                // (`cwd/<host>/<path>`), so an absolute path must lie inside it.
                let cwd = std::env::current_dir()
                    .map_err(|e| Error::Config(format!("current directory: {e}")))?;
                let relative = if path.is_absolute() {
                    path.strip_prefix(&cwd).map_err(|_| {
                        Error::Config(format!(
                            "sqlite path {} must be inside the working directory {} \
                             (tansu resolves it relative to it)",
                            path.display(),
                            cwd.display()
                        ))
                    })?
                } else {
                    path.as_path()
                };
                let relative = relative.to_str().ok_or_else(|| {
                    Error::Config(format!("sqlite path {} is not UTF-8", path.display()))
                })?;
                Url::parse(&format!("sqlite://{relative}"))
                    .map_err(|e| Error::Config(e.to_string()))
            }
        }
    }
}

/// How to start an [`EmbeddedBroker`].
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Loopback address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    pub storage: Storage,
    pub cluster_id: String,
    pub node_id: i32,
    /// How long to wait for the listener to accept connections.
    pub ready_timeout: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
            storage: Storage::Memory,
            cluster_id: "sagaflow-local".to_owned(),
            node_id: 111,
            ready_timeout: Duration::from_secs(20),
        }
    }
}

impl BrokerConfig {
    /// A broker whose log lives in the SQLite file `path` (relative paths
    /// are resolved against the current directory).
    pub fn sqlite(path: impl AsRef<Path>) -> Self {
        Self {
            storage: Storage::Sqlite(path.as_ref().to_owned()),
            ..Self::default()
        }
    }

    /// A broker whose log, topics and committed offsets live under `dir`
    /// and survive a restart (Sagaflow's durable log, default fsync policy).
    pub fn durable(dir: impl AsRef<Path>) -> Self {
        Self {
            storage: Storage::durable(dir),
            ..Self::default()
        }
    }

    /// Listen on this exact address (for a restart on the same port).
    pub fn with_listen(mut self, listen: SocketAddr) -> Self {
        self.listen = listen;
        self
    }
}

/// Errors of the embedded broker; `code()` is its stable code
/// (docs/errors.md, `SF-BROKER`).
#[derive(Debug, thiserror::Error, sagaflow_codes::Coded)]
pub enum Error {
    #[error("SF-BROKER-001: broker configuration: {0}")]
    Config(String),
    #[error(
        "SF-BROKER-002: broker address {0} is not a loopback address; the embedded broker only serves loopback"
    )]
    NotLoopback(SocketAddr),
    #[error("SF-BROKER-003: could not listen on {addr}: {source}")]
    Port {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("SF-BROKER-004: broker failed to start: {0}")]
    Start(String),
    #[error("SF-BROKER-005: broker did not accept connections on {addr} within {waited:?}")]
    NotReady { addr: SocketAddr, waited: Duration },
}

/// A running in-process broker. Dropping it stops the broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    storage: Storage,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    requests: std::sync::Arc<Requests>,
}

fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // tansu links rustls; with more than one provider compiled in,
        // rustls needs the process-wide default chosen explicitly. Another
        // part of the process may have installed one already: that is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl EmbeddedBroker {
    /// Starts a broker and waits until it accepts connections.
    pub fn start(config: BrokerConfig) -> Result<Self, Error> {
        if !config.listen.ip().is_loopback() {
            return Err(Error::NotLoopback(config.listen));
        }
        install_crypto_provider();
        let storage_url = config.storage.url()?;
        // The listener is bound here, before the broker starts, so port 0
        // gives a port nobody else can take in between.
        let listener = TcpListener::bind(config.listen).map_err(|source| Error::Port {
            addr: config.listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| Error::Port {
            addr: config.listen,
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::Port { addr, source })?;
        let advertised =
            Url::parse(&format!("tcp://{addr}")).map_err(|e| Error::Config(e.to_string()))?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let cluster_id = config.cluster_id.clone();
        let node_id = config.node_id;
        let storage = config.storage.clone();
        let requests = std::sync::Arc::new(Requests::default());
        let counted = requests.clone();
        let thread = std::thread::Builder::new()
            .name(format!("tansu-{}", addr.port()))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("tansu-worker")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("tokio runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let node = Node {
                        cluster_id,
                        node_id,
                        advertised,
                        requests: counted,
                    };
                    let served = match open(&storage, storage_url, &node).await {
                        Err(e) => Err(e),
                        Ok(Opened::Log(s)) => {
                            let arrivals = Some(s.arrivals());
                            node.serve(listener, s, arrivals, ready_tx.clone(), stop_rx)
                                .await
                        }
                        Ok(Opened::Tansu(s)) => {
                            node.serve(listener, s, None, ready_tx.clone(), stop_rx)
                                .await
                        }
                    };
                    if let Err(msg) = served {
                        tracing::error!(error = %msg, "embedded broker stopped");
                        let _ = ready_tx.send(Err(msg));
                    }
                });
                // Connections still open are dropped with the runtime.
                runtime.shutdown_timeout(Duration::from_secs(2));
            })
            .map_err(|e| Error::Start(format!("spawning broker thread: {e}")))?;

        let mut broker = Self {
            addr,
            storage: config.storage.clone(),
            stop: Some(stop_tx),
            thread: Some(thread),
            requests,
        };
        match ready_rx.recv_timeout(config.ready_timeout) {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => {
                broker.stop();
                return Err(Error::Start(msg));
            }
            Err(_) => {
                broker.stop();
                return Err(Error::NotReady {
                    addr,
                    waited: config.ready_timeout,
                });
            }
        }
        if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
            broker.stop();
            return Err(Error::NotReady {
                addr,
                waited: config.ready_timeout,
            });
        }
        Ok(broker)
    }

    /// The `bootstrap.servers` value for clients.
    pub fn bootstrap_servers(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The requests served so far, per Kafka API.
    pub fn requests(&self) -> RequestCounts {
        self.requests.snapshot()
    }

    /// Stops the broker and waits for its thread to end.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Opened {
    Log(LogStorage),
    Tansu(StorageContainer),
}

/// Builds the storage `storage` names; tansu's engine at `url` keeps the
/// metadata (and, for tansu's storages, the records too).
async fn open(storage: &Storage, url: Url, node: &Node) -> Result<Opened, String> {
    let tansu = StorageContainer::builder()
        .cluster_id(node.cluster_id.clone())
        .node_id(node.node_id)
        .advertised_listener(node.advertised.clone())
        .storage(url)
        .silent(true)
        .build()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(match storage {
        Storage::Memory => Opened::Log(LogStorage::memory(tansu)),
        Storage::Durable(durable) => {
            let (log, repairs) = LogStorage::open(tansu, durable).await.map_err(|e| {
                format!(
                    "opening the durable log at {}: {e:?}",
                    durable.dir.display()
                )
            })?;
            for repair in repairs {
                tracing::warn!(repair = %repair, "durable log repaired at start");
            }
            Opened::Log(log)
        }
        Storage::TansuMemory | Storage::Sqlite(_) => Opened::Tansu(tansu),
    })
}

struct Node {
    cluster_id: String,
    node_id: i32,
    advertised: Url,
    requests: std::sync::Arc<Requests>,
}

impl Node {
    /// Serves the Kafka protocol on `listener` with tansu's request router,
    /// group coordinator and `storage`, until `stop` fires. tansu's own
    /// `Broker` is not used: it draws progress spinners on a terminal and
    /// binds its own listener.
    async fn serve<S: tansu_storage::Storage>(
        &self,
        listener: TcpListener,
        storage: S,
        arrivals: Option<std::sync::Arc<router::Arrivals>>,
        ready: std::sync::mpsc::Sender<Result<(), String>>,
        mut stop: oneshot::Receiver<()>,
    ) -> Result<(), String> {
        storage
            .register_broker(BrokerRegistrationRequest {
                broker_id: self.node_id,
                cluster_id: self.cluster_id.clone(),
                incarnation_id: uuid::Uuid::new_v4(),
                rack: None,
            })
            .await
            .map_err(|e| format!("registering the broker: {e:?}"))?;
        let groups =
            Controller::with_storage(storage.clone()).map_err(|e| format!("coordinator: {e:?}"))?;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| format!("listener: {e}"))?;
        let _ = ready.send(Ok(()));
        // tansu's engines compact and expire in `maintain`; tansu's broker
        // calls it every 10 minutes.
        let mut maintenance = tokio::time::interval(Duration::from_secs(600));
        maintenance.tick().await;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            tracing::warn!(error = %e, "embedded broker: accept failed");
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let service = router::router(
                        &self.cluster_id,
                        groups.clone(),
                        storage.clone(),
                        arrivals.clone(),
                        self.requests.clone(),
                    )
                    .map_err(|e| format!("request router: {e:?}"))?;
                    tokio::spawn(async move {
                        if let Err(e) = service.serve(rama::Context::default(), stream).await {
                            tracing::debug!(error = ?e, "embedded broker connection ended");
                        }
                    });
                }
                _ = maintenance.tick() => {
                    let storage = storage.clone();
                    tokio::spawn(async move {
                        let _ = storage.maintain(SystemTime::now()).await;
                    });
                }
                _ = &mut stop => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn refuses_non_loopback_addresses() {
        let cfg = BrokerConfig::default().with_listen("0.0.0.0:0".parse().unwrap());
        assert!(matches!(
            EmbeddedBroker::start(cfg),
            Err(Error::NotLoopback(_))
        ));
    }

    #[test]
    fn starts_accepts_and_stops() {
        let mut broker = EmbeddedBroker::start(BrokerConfig::default()).expect("broker starts");
        let addr = broker.addr();
        assert!(addr.ip().is_loopback());
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).expect("accepts connections");
        broker.stop();
        // After stop the port no longer accepts connections.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "broker still listening after stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn sqlite_url_is_built_from_the_path() {
        let s = Storage::Sqlite(PathBuf::from("data/broker.db"));
        assert_eq!(s.url().unwrap().as_str(), "sqlite://data/broker.db");
        let inside = std::env::current_dir().unwrap().join("x/broker.db");
        assert_eq!(
            Storage::Sqlite(inside).url().unwrap().as_str(),
            "sqlite://x/broker.db"
        );
        let outside = Storage::Sqlite(PathBuf::from("/definitely-not-cwd/broker.db"));
        assert!(
            matches!(outside.url(), Err(Error::Config(m)) if m.contains("inside the working directory"))
        );
    }
}
