//! `sagaflow dev --data-dir` survives a kill -9 of the whole stack: the
//! broker's durable log keeps the triggers, commands, replies, saga states
//! and committed offsets, so a restart on the same directory finishes every
//! saga that was in flight, and each ends once.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Sagas per run: 200 of each of the three types. Enough that run 1 still
/// has sagas in flight at its first progress line after publishing them all
/// (every 2 s), even when sagas end fast.
const SAGAS: u64 = 600;

fn dev(data: &std::path::Path, rate: &str, log: &std::path::Path) -> Child {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    sagaflow_test_support::cli::command(&[])
        .args([
            "dev",
            "--sagas",
            &SAGAS.to_string(),
            "--rate",
            rate,
            "--verify-after",
            "100ms",
            "--http",
            "127.0.0.1:0",
            "--root",
            root,
        ])
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// A run's log file beside its data dir, removed when the test is done
/// with it, and kept when the test fails (an assertion shows only its
/// warnings and errors; the cause may be in what was logged at `info`).
struct Log(std::path::PathBuf);

impl Drop for Log {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the run's whole log is kept at {}", self.0.display());
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `published N  ended M` from a progress line.
fn progress(line: &str) -> Option<(u64, u64)> {
    let mut words = line.split_whitespace();
    let mut published = None;
    let mut ended = None;
    while let Some(w) = words.next() {
        match w {
            "published" => published = words.next().and_then(|n| n.parse().ok()),
            "ended" => ended = words.next().and_then(|n| n.parse().ok()),
            _ => {}
        }
    }
    Some((published?, ended?))
}

/// Run 1: a stack publishing every trigger, SIGKILLed at its first progress
/// line that shows all published while sagas are still in flight. None when
/// every saga ended before such a line (a fast machine): nothing to test.
fn run_and_kill(data: &std::path::Path) -> Option<(u64, u64)> {
    // Run 1: killed with SIGKILL at its first progress line that shows all
    // triggers and e-mail verifications published and not every saga
    // ended.
    let log = Log(data.with_extension("run1.log"));
    let mut first = dev(data, "400", &log.0);
    let (tx, rx) = mpsc::channel();
    let stdout = first.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    let killed_at = loop {
        assert!(
            Instant::now() < deadline,
            "run 1 showed no progress within 120 s:\n{}",
            seen.join("\n")
        );
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            if first.try_wait().unwrap().is_some() {
                eprintln!("run 1 ended before it could be killed; again");
                return None;
            }
            continue;
        };
        seen.push(line.clone());
        // Every trigger published, and every e-mail verification too: a
        // verification still due when the publisher dies is never sent
        // (run 2 publishes the triggers again one a second, too slowly to
        // reach the last sign-ups), and its saga waits for it for ever.
        if let Some((published, ended)) = progress(&line)
            && published == SAGAS
            && !line.contains("verifications due")
        {
            first.kill().unwrap(); // SIGKILL
            if ended >= SAGAS {
                // Every saga ended before a progress line could show it:
                // nothing was in flight to survive the kill. Try again.
                first.wait().unwrap();
                eprintln!("run 1 ended every saga before the kill; again");
                return None;
            }
            first.wait().unwrap();
            break (published, ended);
        }
    };
    Some(killed_at)
}

#[test]
fn a_killed_dev_stack_restarted_on_its_data_dir_ends_every_saga_once() {
    // Run 1, until it is killed with sagas in flight (at most 4 tries).
    let (data, killed_at) = (0..4)
        .find_map(|_| {
            let data = tempfile::tempdir().unwrap();
            run_and_kill(data.path()).map(|k| (data, k))
        })
        .expect("run 1 ended every saga before a kill could catch one in flight, 4 times");
    eprintln!(
        "killed run 1 at: published {}, ended {}",
        killed_at.0, killed_at.1
    );

    // Run 2 on the same directory publishes the same triggers again, but
    // only one a second (a trigger for a saga that exists starts nothing),
    // and counts every saga result in the topic from the start, both runs
    // included. The sagas of run 1 must end from what the broker kept, long
    // before run 2 could have published them all again.
    let log = Log(data.path().with_extension("run2.log"));
    let mut second = dev(data.path(), "1", &log.0);
    let stdout = second.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            let out = reader.join().unwrap_or_default();
            panic!(
                "the restarted stack did not end {SAGAS} sagas within 240 s\n\
                 --- its output, last lines:\n{}\n--- its log, last lines:\n{}",
                tail(&out, 15),
                tail(&std::fs::read_to_string(&log.0).unwrap_or_default(), 60)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap();
    // What a failed assertion shows: the stack's output and the last
    // warnings and errors of its log, which goes when the test ends (a
    // failure on 2026-12-04 left only the output, and its cause unknown).
    let logged = std::fs::read_to_string(&log.0).unwrap_or_default();
    let warnings: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    let shown = format!(
        "{out}\n--- its log's warnings and errors, last lines:\n{}",
        tail(&warnings.join("\n"), 80)
    );
    assert!(status.success(), "exit {status}\n{shown}");
    let summary = out
        .lines()
        .find(|l| l.starts_with(&format!("sagaflow dev: {SAGAS} sagas ended")))
        .unwrap_or_else(|| panic!("no summary line\n{shown}"));
    assert!(summary.ends_with(" 0 failed"), "{shown}");
    assert!(
        !out.contains("ended twice"),
        "a saga ended twice with different outcomes\n{shown}"
    );
    let last = out
        .lines()
        .rev()
        .find_map(progress)
        .unwrap_or_else(|| panic!("no progress line\n{shown}"));
    assert!(
        last.0 < 60,
        "run 2 published {} triggers again before every saga ended: the sagas of run 1 did not survive the kill\n{shown}",
        last.0
    );
    eprintln!(
        "run 2 ended all {SAGAS} sagas after publishing {} triggers",
        last.0
    );
    // Each type's sagas all ended, each once: `dev` counts a saga once by
    // its id (results are delivered at least once), reports a second result
    // with another outcome as a saga that ended twice, and a lost saga
    // would leave its type short.
    for name in ["order-checkout", "travel-booking", "customer-onboarding"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("  {name}: ")))
            .unwrap_or_else(|| panic!("no line for {name}\n{shown}"));
        let counts: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), SAGAS / 3, "{line}\n{shown}");
        assert_eq!(counts.last(), Some(&0), "failed sagas: {line}\n{shown}");
    }
}
