//! An embedded Kafka-protocol broker for Sagaflow's tests and local stack.
//!
//! This runs [tansu](https://github.com/tansu-io/tansu) 0.6.0 in-process on a
//! loopback port, on a thread with its own tokio runtime, so it outlives the
//! per-test runtimes of `#[tokio::test]` and dies with the process: a test that
//! panics leaks no broker process. It is a real broker speaking the Kafka wire
//! protocol; clients (librdkafka through `rdkafka`) cannot tell it from any
//! other. What it does not support is recorded in `docs/broker.md` and checked
//! by `tests/broker_contract.rs`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tansu_broker::broker::Broker;
use tansu_broker::coordinator::group::administrator::Controller;
use tansu_storage::StorageContainer;
use tokio::sync::oneshot;
use url::Url;

/// Where the broker keeps its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    /// In memory: fast (tens of thousands of messages per second), gone
    /// when the broker stops.
    Memory,
    /// A SQLite database file: survives a broker restart, consumes slowly.
    Sqlite(PathBuf),
}

impl Storage {
    fn url(&self) -> Result<Url, Error> {
        match self {
            Self::Memory => Url::parse("memory://tansu/").map_err(|e| Error::Config(e.to_string())),
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

    /// Listen on this exact address (for a restart on the same port).
    pub fn with_listen(mut self, listen: SocketAddr) -> Self {
        self.listen = listen;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("broker configuration: {0}")]
    Config(String),
    #[error(
        "broker address {0} is not a loopback address; the embedded broker only serves loopback"
    )]
    NotLoopback(SocketAddr),
    #[error("could not reserve a port on {addr}: {source}")]
    Port {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("broker failed to start: {0}")]
    Start(String),
    #[error("broker did not accept connections on {addr} within {waited:?}")]
    NotReady { addr: SocketAddr, waited: Duration },
}

/// A running in-process broker. Dropping it stops the broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    storage: Storage,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
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
        // tansu binds its own listener, so a free port is found by binding
        // and releasing it. Another process could take the port in between;
        // that shows up as a start failure and we try another port.
        let attempts = if config.listen.port() == 0 { 5 } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            let addr = reserve(config.listen)?;
            match Self::start_on(addr, &config, storage_url.clone()) {
                Ok(broker) => return Ok(broker),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Start("no attempt made".to_owned())))
    }

    fn start_on(addr: SocketAddr, config: &BrokerConfig, storage: Url) -> Result<Self, Error> {
        let url = Url::parse(&format!("tcp://{addr}")).map_err(|e| Error::Config(e.to_string()))?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (failed_tx, mut failed_rx) = oneshot::channel::<String>();
        let cluster_id = config.cluster_id.clone();
        let node_id = config.node_id;
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
                        let _ = failed_tx.send(format!("tokio runtime: {e}"));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let built = Broker::<Controller<StorageContainer>, StorageContainer>::builder()
                        .node_id(node_id)
                        .cluster_id(cluster_id)
                        .incarnation_id(uuid::Uuid::new_v4())
                        .advertised_listener(url.clone())
                        .storage(storage)
                        .listener(url)
                        .silent(true)
                        .build()
                        .await;
                    let mut broker = match built {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = failed_tx.send(format!("{e:?}"));
                            return;
                        }
                    };
                    tokio::select! {
                        served = broker.serve(tokio::time::Instant::now()) => {
                            let msg = match served {
                                Ok(()) => "broker stopped serving".to_owned(),
                                Err(e) => format!("{e:?}"),
                            };
                            tracing::error!(error = %msg, "embedded broker stopped");
                            let _ = failed_tx.send(msg);
                        }
                        _ = stop_rx => {}
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
        };
        let started = Instant::now();
        loop {
            if let Ok(msg) = failed_rx.try_recv() {
                broker.stop();
                return Err(Error::Start(msg));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(broker);
            }
            if started.elapsed() > config.ready_timeout {
                broker.stop();
                return Err(Error::NotReady {
                    addr,
                    waited: config.ready_timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

fn reserve(addr: SocketAddr) -> Result<SocketAddr, Error> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let listener = TcpListener::bind(addr).map_err(|source| Error::Port { addr, source })?;
    listener
        .local_addr()
        .map_err(|source| Error::Port { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

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
