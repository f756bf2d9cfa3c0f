//! `sagaflow`: the Sagaflow command line.
//!
//! Exit codes (also in `--help`): 0 ok; 1 a check found a problem (e.g. an
//! incompatible schema); 2 usage or configuration error; 3 a service
//! (schema registry, broker) could not be reached.

// mimalloc, not glibc's malloc: under load the stack spent a fifth of its
// CPU in malloc, free and malloc_consolidate (perf of `sagaflow bench`'s
// closed loop at 100 in flight); the broker, codecs and clients allocate
// per record. Four runs of each, alternated: 3,000 sagas at once 841–1,006
// sagas/s against 659–767; 100 in flight 559–640 against 408–492, at
// 2.69–2.99 CPU s per 1,000 sagas against 3.43–4.08 (docs/orchestrator.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc asks for
/// them on its arenas (`madvise(MADV_HUGEPAGE)`), and with the kernel's
/// usual `defrag=madvise` each first touch of a 2 MiB region then zeroes
/// it, compacting memory first if it must, inside the allocating call:
/// `perf` of `sagaflow bench`'s closed loop at 100 in flight put 12 % of
/// the stack's CPU in those faults (`do_huge_pmd_anonymous_page`,
/// `clear_page_erms`), most of it in the orchestrator's batch flush. With
/// them off, system CPU fell in every run and the closed loop at 100 in
/// flight run alone was faster in all six (684–812 against 600–660
/// sagas/s); inside the whole bench it did not separate
/// (docs/orchestrator.md). Best effort: a kernel without the flag keeps its
/// default.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

mod adapter;
mod asyncapi;
#[cfg(feature = "bench")]
mod bench;
mod console;
mod console_client;
#[cfg(feature = "demo")]
mod demo_events;
#[cfg(feature = "demo")]
mod demo_services;
#[cfg(feature = "dev")]
mod dev;
mod dlq;
mod exit;
mod orchestrator;
mod publish;
mod registry;
mod registry_client;
mod saga;
mod scaffold;
mod scenario;
mod schemas;
mod signals;
mod topology;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::exit::Failure;

const AFTER_HELP: &str = "Exit codes: 0 ok, 1 a check failed (e.g. incompatible schema), 2 usage or configuration error, 3 a service could not be reached.";

/// Sagaflow: Kafka-native saga orchestrator.
#[derive(Debug, Parser)]
#[command(name = "sagaflow", version, about, after_help = AFTER_HELP, propagate_version = true)]
struct Cli {
    /// Log format on stderr; the level comes from RUST_LOG (default info;
    /// warn for `dev`, whose progress is on stdout).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register and check the Avro schemas of a schemas/ directory.
    #[command(subcommand, after_help = AFTER_HELP)]
    Schemas(schemas::SchemasCommand),
    /// Run the local schema registry.
    #[command(subcommand, after_help = AFTER_HELP)]
    Registry(registry::RegistryCommand),
    /// Run a local stack on loopback: the live demo (broker, schema
    /// registry, orchestrator, adapters, demo services, sample events), your
    /// own sagas and adapters (--topology), or just the broker and the
    /// registry (--broker-only).
    #[cfg(feature = "dev")]
    #[command(after_help = AFTER_HELP)]
    Dev(dev::DevArgs),
    /// Run an orchestrator instance (any number join one consumer group).
    #[command(after_help = AFTER_HELP)]
    Orchestrator(orchestrator::OrchestratorArgs),
    /// Run a service adapter: commands from Kafka, calls to the backend,
    /// replies to Kafka. Stops gracefully on SIGINT/SIGTERM.
    #[command(after_help = AFTER_HELP)]
    Adapter(adapter::AdapterArgs),
    /// Benchmark the orchestrator on this machine: sagas/s and latency
    /// against the raw broker baseline, restore time, memory per saga.
    #[cfg(feature = "bench")]
    #[command(after_help = AFTER_HELP)]
    Bench(bench::BenchArgs),
    /// Serve the demo backend services (REST and SOAP) the local stack and
    /// docker-compose use.
    #[cfg(feature = "demo")]
    #[command(after_help = AFTER_HELP)]
    DemoServices(demo_services::DemoServicesArgs),
    /// Publish the demo's sample domain events (orders, bookings, sign-ups
    /// and e-mail verifications) to a cluster at a steady rate.
    #[cfg(feature = "demo")]
    #[command(after_help = AFTER_HELP)]
    DemoEvents(demo_events::DemoEventsArgs),
    /// Run the saga console: a durable, searchable history of sagas and
    /// dead letters (SQLite) and its web UI; `console bench` measures it.
    #[command(after_help = AFTER_HELP)]
    Console(console::ConsoleArgs),
    /// Dead letters through the console: list, show, redrive to their
    /// source topics.
    #[command(subcommand, after_help = AFTER_HELP)]
    Dlq(dlq::DlqCommand),
    /// Operate on sagas through the orchestrator's HTTP API: list, show,
    /// retry a failed one, abort a running one.
    #[command(subcommand, after_help = AFTER_HELP)]
    Saga(saga::SagaCommand),
    /// Publish domain events (JSON lines from a file or stdin) to a topic,
    /// encoded with the topic's schema.
    #[command(after_help = AFTER_HELP)]
    Publish(publish::PublishArgs),
    /// Check saga definitions and draw them as Mermaid flowcharts.
    #[command(subcommand, after_help = AFTER_HELP)]
    Topology(topology::TopologyCommand),
    /// Run a saga offline against scripted service replies on a virtual
    /// clock and print the path taken; exit 1 if it differs from `expect:`.
    #[command(after_help = AFTER_HELP)]
    Test(scenario::TestArgs),
    /// Print a shell completion script on stdout, e.g.
    /// `sagaflow completions bash > ~/.local/share/bash-completion/completions/sagaflow`.
    #[command(after_help = AFTER_HELP)]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "sagaflow",
            &mut std::io::stdout(),
        );
        return std::process::ExitCode::SUCCESS;
    }
    let role = match &cli.command {
        Command::Schemas(_) => "schemas",
        Command::Registry(_) => "registry",
        #[cfg(feature = "dev")]
        Command::Dev(_) => "dev",
        Command::Orchestrator(_) => "orchestrator",
        Command::Adapter(_) => "adapter",
        #[cfg(feature = "bench")]
        Command::Bench(_) => "bench",
        #[cfg(feature = "demo")]
        Command::DemoServices(_) => "demo-services",
        #[cfg(feature = "demo")]
        Command::DemoEvents(_) => "demo-events",
        Command::Saga(_) => "saga",
        Command::Console(_) => "console",
        Command::Dlq(_) => "dlq",
        Command::Publish(_) => "publish",
        Command::Test(_) => "test",
        Command::Topology(_) => "topology",
        Command::Completions { .. } => "completions",
    };
    // Logs on stderr, and OTLP span export when OTEL_* asks for it; the
    // guard flushes exported spans when main returns.
    // `dev` shows its progress on the terminal: only warnings interleave.
    let default_level = if role == "dev" { "warn" } else { "info" };
    let _telemetry = sagaflow_telemetry::init(
        role,
        match cli.log_format {
            LogFormat::Pretty => sagaflow_telemetry::LogFormat::Pretty,
            LogFormat::Json => sagaflow_telemetry::LogFormat::Json,
        },
        default_level,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return Failure::Usage(format!("cannot start the async runtime: {e}")).report(),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Schemas(command) => schemas::run(command).await,
            Command::Registry(command) => registry::run(command).await,
            Command::Orchestrator(args) => orchestrator::run(args).await,
            #[cfg(feature = "dev")]
            Command::Dev(args) => dev::run(args).await,
            Command::Adapter(args) => adapter::run(args).await,
            #[cfg(feature = "bench")]
            Command::Bench(args) => bench::run(args).await,
            #[cfg(feature = "demo")]
            Command::DemoServices(args) => demo_services::run(args).await,
            #[cfg(feature = "demo")]
            Command::DemoEvents(args) => demo_events::run(args).await,
            Command::Topology(command) => topology::run(command).await,
            Command::Saga(command) => saga::run(command).await,
            Command::Console(args) => console::run(args).await,
            Command::Dlq(command) => dlq::run(command).await,
            Command::Publish(args) => publish::run(args).await,
            Command::Test(args) => scenario::run_test(args).await,
            Command::Completions { .. } => Ok(()),
        }
    });
    // A task stuck in a blocking call must not keep the process alive
    // (an orchestrator whose driver stalled has to exit for a supervisor
    // to restart it).
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}
