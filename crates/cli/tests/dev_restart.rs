//! `sagaflow dev --data-dir` survives a kill -9 of the whole stack: the
//! broker's durable log keeps the triggers, commands, replies, saga states
//! and committed offsets, so a restart on the same directory finishes every
//! saga that was in flight, and each ends once.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Sagas per run: 90 of each of the three types.
const SAGAS: u64 = 270;

fn dev(data: &std::path::Path, rate: &str) -> Child {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    Command::new(env!("CARGO_BIN_EXE_sagaflow"))
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
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
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

#[test]
fn a_killed_dev_stack_restarted_on_its_data_dir_ends_every_saga_once() {
    let data = tempfile::tempdir().unwrap();

    // Run 1: killed with SIGKILL at its first progress line that shows all
    // triggers published (and, 100 ms later, the e-mail verifications) and
    // not every saga ended.
    let mut first = dev(data.path(), "200");
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
            assert!(
                first.try_wait().unwrap().is_none(),
                "run 1 ended before it could be killed:\n{}",
                seen.join("\n")
            );
            continue;
        };
        seen.push(line.clone());
        if let Some((published, ended)) = progress(&line)
            && published == SAGAS
        {
            assert!(
                ended < SAGAS,
                "run 1 had ended every saga before the kill:\n{}",
                seen.join("\n")
            );
            first.kill().unwrap(); // SIGKILL
            first.wait().unwrap();
            break (published, ended);
        }
    };
    eprintln!(
        "killed run 1 at: published {}, ended {}",
        killed_at.0, killed_at.1
    );

    // Run 2 on the same directory publishes the same triggers again, but
    // only one a second (a trigger for a saga that exists starts nothing),
    // and counts every saga result in the topic from the start, both runs
    // included. The sagas of run 1 must end from what the broker kept, long
    // before run 2 could have published them all again.
    let mut second = dev(data.path(), "1");
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("the restarted stack did not end {SAGAS} sagas within 240 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::io::read_to_string(second.stdout.take().unwrap()).unwrap();
    assert!(status.success(), "exit {status}\n{out}");
    let summary = out
        .lines()
        .find(|l| l.starts_with(&format!("sagaflow dev: {SAGAS} sagas ended")))
        .unwrap_or_else(|| panic!("no summary line\n{out}"));
    assert!(summary.ends_with(" 0 failed"), "{out}");
    let last = out
        .lines()
        .rev()
        .find_map(progress)
        .unwrap_or_else(|| panic!("no progress line\n{out}"));
    assert!(
        last.0 < 60,
        "run 2 published {} triggers again before every saga ended: the sagas of run 1 did not survive the kill\n{out}",
        last.0
    );
    eprintln!(
        "run 2 ended all {SAGAS} sagas after publishing {} triggers",
        last.0
    );
    // Each type's sagas all ended, none twice: a saga ending twice or lost
    // would change a type's count (ended is counted per result).
    for name in ["order-checkout", "travel-booking", "customer-onboarding"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("  {name}: ")))
            .unwrap_or_else(|| panic!("no line for {name}\n{out}"));
        let counts: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), SAGAS / 3, "{line}\n{out}");
        assert_eq!(counts.last(), Some(&0), "failed sagas: {line}\n{out}");
    }
}
