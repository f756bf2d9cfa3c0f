//! Measures (does not assert) what an idle producer costs in CPU: rdkafka's
//! `FutureProducer` against `sagaflow_bus::Producer`, in the same run,
//! against the embedded broker (or `SAGAFLOW_TEST_BOOTSTRAP`).
//!
//! ```text
//! cargo run --release -p sagaflow-bus --example idle_cost -- [seconds] [producers]
//! ```
//!
//! Three phases of `seconds` (default 20) each: no producer (what the broker
//! and runtime cost on their own), `producers` (default 1) idle
//! `FutureProducer`s, then as many idle `Producer`s. Each producer first
//! delivers one record, so it is connected, then sits idle. For each phase
//! it prints the process's CPU time (utime+stime of /proc/self/stat) and
//! that of the producers' polling threads (/proc/self/task/*/stat), as a
//! share of one core.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sagaflow_bus::{ClientRole, Producer};
use sagaflow_test_support as ts;

/// rdkafka's thread name, as the kernel keeps it (15 bytes).
const RDKAFKA_POLL_THREAD: &str = "producer pollin";

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(20, |a| a.parse().expect("seconds"));
    let producers: usize = args.next().map_or(1, |a| a.parse().expect("producers"));
    let window = Duration::from_secs(seconds);
    let ticks = clock_ticks();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let kafka = ts::kafka();
    let topic = rt.block_on(ts::topic("idle-cost", 1));
    println!("idle cost over {seconds} s, {producers} producer(s), {ticks} ticks/s");

    report("no producer", measure(window, None, ticks));

    let config: ClientConfig = kafka.client_config(ClientRole::Producer);
    let theirs: Vec<FutureProducer> = (0..producers)
        .map(|_| config.create().expect("FutureProducer"))
        .collect();
    rt.block_on(async {
        for p in &theirs {
            let record = FutureRecord::<str, str>::to(&topic).payload("warm");
            p.send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .expect("FutureProducer delivers");
        }
    });
    report(
        "rdkafka FutureProducer",
        measure(window, Some(RDKAFKA_POLL_THREAD), ticks),
    );
    drop(theirs);

    let ours: Vec<Producer> = (0..producers)
        .map(|_| kafka.producer().expect("Producer"))
        .collect();
    rt.block_on(async {
        for p in &ours {
            let record = FutureRecord::<str, str>::to(&topic).payload("warm");
            p.send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .expect("Producer delivers");
        }
    });
    report(
        "sagaflow_bus::Producer",
        measure(
            window,
            Some(sagaflow_bus::producer::POLL_THREAD_NAME),
            ticks,
        ),
    );
    drop(ours);
}

struct Cost {
    process: f64,
    poll_threads: Option<f64>,
}

fn report(what: &str, cost: Cost) {
    match cost.poll_threads {
        Some(threads) => println!(
            "{what:<24} process {:>6.2} % of a core, polling threads {:>6.2} %",
            cost.process * 100.0,
            threads * 100.0
        ),
        None => println!(
            "{what:<24} process {:>6.2} % of a core",
            cost.process * 100.0
        ),
    }
}

/// CPU used over `window`, as a share of one core.
fn measure(window: Duration, thread: Option<&str>, ticks: f64) -> Cost {
    let process_before = process_ticks();
    let threads_before = thread.map(threads_ticks);
    let started = Instant::now();
    std::thread::sleep(window);
    let secs = started.elapsed().as_secs_f64();
    let process = (process_ticks() - process_before) as f64 / ticks / secs;
    let poll_threads = thread
        .zip(threads_before)
        .map(|(name, before)| (threads_ticks(name).saturating_sub(before)) as f64 / ticks / secs);
    Cost {
        process,
        poll_threads,
    }
}

/// utime+stime of a /proc stat line (fields 14 and 15; the command name,
/// in parentheses, may hold spaces, so count from its closing parenthesis).
fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

fn process_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    stat_ticks(&stat).expect("parse /proc/self/stat").1
}

/// Total ticks of this process's threads named `name`.
fn threads_ticks(name: &str) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = entry.expect("task").path().join("stat");
        if let Ok(stat) = std::fs::read_to_string(path)
            && let Some((n, t)) = stat_ticks(&stat)
            && n == name
        {
            total += t;
        }
    }
    total
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux if unknown).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
