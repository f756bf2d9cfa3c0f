//! Running the built `sagaflow` binary as a user would: one command, its
//! output captured, its exit code checked.
//!
//! The binary is [`crate::process::sagaflow_bin`]: `SAGAFLOW_BIN`, else
//! `CARGO_BIN_EXE_sagaflow` when cargo set it at run time, else the one in
//! this build's target directory (`$CARGO_TARGET_DIR/<profile>/sagaflow`,
//! which is where cargo puts it for the CLI crate's own tests too). After
//! changing the product, `cargo build -p sagaflow-cli` before running a
//! test from another package.

use std::process::{Command, Output};

use crate::process::sagaflow_bin;

/// A `sagaflow` command with `args`, not yet run.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(sagaflow_bin());
    cmd.args(args);
    cmd
}

/// A `sagaflow` command with `args` that inherits none of the caller's
/// `SAGAFLOW_*` settings nor `XDG_STATE_HOME`, so what the test runs in
/// does not change what the command does.
pub fn clean_command(args: &[&str]) -> Command {
    let mut cmd = command(args);
    cmd.env_remove("XDG_STATE_HOME");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SAGAFLOW_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// The same command for tokio (`kill_on_drop`, `.output().await`).
pub fn tokio_command(args: &[&str]) -> tokio::process::Command {
    tokio::process::Command::from(command(args))
}

/// Runs `sagaflow args…` to the end and returns what it printed.
pub fn run(args: &[&str]) -> Output {
    output(&mut command(args))
}

/// Runs `cmd` to the end, panicking with the command if it cannot start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Standard output followed by standard error.
pub fn all_output(o: &Output) -> String {
    stdout(o) + stderr(o).as_str()
}

/// Asserts the exit code, showing both streams when it is not `code`.
#[track_caller]
pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "expected exit {code}\n--- stdout\n{}\n--- stderr\n{}",
        stdout(o),
        stderr(o)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_helpers_split_and_join_the_streams() {
        let o = Command::new("sh")
            .args(["-c", "printf out; printf err >&2; exit 3"])
            .output()
            .unwrap();
        assert_eq!(stdout(&o), "out");
        assert_eq!(stderr(&o), "err");
        assert_eq!(all_output(&o), "outerr");
        assert_exit(&o, 3);
        let wrong = std::panic::catch_unwind(|| assert_exit(&o, 0));
        assert!(wrong.is_err(), "exit 3 is not exit 0");
    }
}
