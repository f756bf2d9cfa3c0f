//! Our own processes under test: find the `sagaflow` binary, start it,
//! kill it (also with SIGKILL, for crash tests), and never leak it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `sagaflow` binary: `SAGAFLOW_BIN` if set, else `CARGO_BIN_EXE_sagaflow`
/// if cargo set it for this run, else the one built by this workspace (`target/<profile>/sagaflow`, next to the test executable's
/// `deps/` directory; `cargo test --workspace` builds it), built on demand
/// if missing. A targeted `cargo test --test x` does not rebuild it: run
/// `cargo build -p sagaflow-cli` first after changing the product.
pub fn sagaflow_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SAGAFLOW_BIN") {
        return PathBuf::from(bin);
    }
    if let Some(bin) = std::env::var_os("CARGO_BIN_EXE_sagaflow") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join(format!("sagaflow{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let status = Command::new(env_or("CARGO", "cargo"))
            .args(["build", "-p", "sagaflow-cli", "--bin", "sagaflow"])
            .status()
            .expect("running cargo build for the sagaflow binary");
        assert!(status.success(), "cargo build -p sagaflow-cli failed");
    }
    assert!(
        bin.exists(),
        "sagaflow binary not found at {}",
        bin.display()
    );
    bin
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

/// A child process that is killed when dropped, so a failing test leaves
/// nothing running. Its output goes to `log` (inspect it on failure).
pub struct ChildGuard {
    child: Option<Child>,
    pub name: String,
    pub log: PathBuf,
}

impl ChildGuard {
    /// Starts `sagaflow <args>` with stdout and stderr appended to `log`.
    pub fn sagaflow(name: &str, args: &[&str], log: PathBuf, envs: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(sagaflow_bin());
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        Self::command(name, cmd, log)
    }

    /// The `http=ADDR` a Sagaflow process logs when its HTTP server is up,
    /// waiting for it up to `timeout`.
    pub fn http_addr(&self, timeout: Duration) -> String {
        wait_until(
            &format!("{}'s HTTP address in its log", self.name),
            timeout,
            || {
                self.output().lines().find_map(|l| {
                    l.split("http=")
                        .nth(1)
                        .map(|a| a.split_whitespace().next().unwrap_or("").to_owned())
                })
            },
        )
    }

    /// Starts any program (e.g. a real Prometheus) with stdout and stderr
    /// appended to `log`, killed when dropped like our own processes.
    pub fn command(name: &str, mut cmd: Command, log: PathBuf) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("opening the process log");
        let err = out.try_clone().expect("cloning the log handle");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            child: Some(child),
            name: name.to_owned(),
            log,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the process gets no chance to flush or commit anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the process to exit on its own; its exit
    /// status, or None if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, …) to the process.
    pub fn signal(&self, name: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process log so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with
/// `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A blocking `GET url` (plain `http://host:port/path`) for tests without
/// a runtime: the raw response, status line and headers included.
pub fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(host).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    out
}
