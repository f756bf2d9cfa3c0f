//! The orchestrator benchmark (see `sagaflow_bench`): completed
//! order-checkout sagas/s and end-to-end latency against the raw broker
//! baseline measured in the same run, and restore time and memory per
//! in-flight saga.
//!
//! `cargo build --release -p sagaflow-cli && cargo bench --bench orchestrator`
//! (the restore phase runs `target/release/sagaflow`, or `SAGAFLOW_BIN`).
//! `sagaflow bench --help` runs the same with flags.

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = std::env::var_os("SAGAFLOW_BIN")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            Some(target.join("release/sagaflow")).filter(|p| p.exists())
        });
    if binary.is_none() {
        eprintln!(
            "no sagaflow binary (cargo build --release -p sagaflow-cli, or SAGAFLOW_BIN): the restore phase is skipped"
        );
    }
    let options = sagaflow_bench::Options {
        root: root.to_path_buf(),
        binary,
        ..sagaflow_bench::Options::default()
    };
    let report = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(sagaflow_bench::run(options))?;
    print!("{report}");
    Ok(())
}
