//! The `wake` binary: parses arguments, builds the configuration, and runs a component of the
//! library crates. Everything else lives in `storage/`, `query/` and `collector/`.

mod check;
mod cli;
mod config;
mod containers;
mod rules;
mod server;
mod standalone;
mod tenancy;
mod tls;
mod token;
mod traces;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// See the dependency's comment in Cargo.toml: freed memory goes back to the system.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (`_RJEM_MALLOC_CONF` in the environment
/// overrides them). Flushes and merges free hundreds of MB a second; jemalloc's default keeps
/// freed pages for 10 s, which put the day-long remote-write backfill at 1,387 MiB of RSS,
/// against 991 MiB when they go back after 1 s (and at once from the "muzzy" state).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
// The one exported symbol of the binary, a C string jemalloc looks up by name.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_OPTIONS: &u8 = &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

#[derive(Parser)]
#[command(name = "wake", version, about = "Keeps container logs, metrics and traces after the containers are gone")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "WAKE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the store and the node agent in one process with local storage (./wake-data),
    /// collecting this machine's containers: the quickest start.
    Standalone(Box<standalone::StandaloneArgs>),
    /// Run the store: OTLP receivers, durable Parquet + tantivy storage, SQL query API.
    Server(Box<config::ServerArgs>),
    /// Run the node agent: tail container logs, read cgroup metrics, forward them as OTLP.
    Agent(Box<config::AgentArgs>),
    /// Run a SQL query against a Wake server and print the result as a table.
    Sql(cli::SqlArgs),
    /// Print container logs from a Wake server (LogQL, or plain words to search for).
    Logs(cli::LogsArgs),
    /// Check rule files or run rule unit tests, as promtool does.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// Check a stopped store's manifest, files, indexes and logs against each other.
    Check(check::CheckArgs),
    /// List container instances: where an image runs or ran, what ran on a node, and how each ended.
    Containers(containers::ContainersArgs),
    /// Make a token for the server's `auth:` configuration, or hash one.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Print a trace as a tree, or search traces with TraceQL, from a Wake server.
    #[command(subcommand)]
    Traces(traces::TracesCommand),
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

async fn run_agent(config: wake_collector::AgentConfig) -> anyhow::Result<()> {
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let mut agent = tokio::spawn(wake_collector::run(config, stop));
    tokio::select! {
        // The agent stopped on its own: an error at start-up (say, its port is taken).
        finished = &mut agent => finished??,
        () = server::shutdown_signal() => {
            let _ = stop_sender.send(true);
            agent.await??;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Server(args) => config::ServerConfig::load(&args).and_then(|config| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("wake")
                .build()?
                .block_on(server::run(config))
        }),
        Command::Standalone(args) => standalone::load(&args).and_then(|(server, agent)| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("wake")
                .build()?
                .block_on(standalone::run(server, agent))
        }),
        Command::Agent(args) => config::load_agent_config(&args).and_then(|config| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("wake-agent")
                .build()?
                .block_on(run_agent(config))
        }),
        Command::Sql(args) => client_runtime().and_then(|runtime| runtime.block_on(cli::sql(args))),
        Command::Logs(args) => client_runtime().and_then(|runtime| runtime.block_on(cli::logs(args))),
        Command::Check(args) => match check::run(&args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(error) => Err(error),
        },
        Command::Token(command) => token::run(&command),
        Command::Containers(args) => client_runtime().and_then(|runtime| runtime.block_on(containers::run(args))),
        Command::Traces(command) => client_runtime().and_then(|runtime| runtime.block_on(traces::run(command))),
        Command::Rules(command) => match rules::run(command) {
            Ok(true) => Ok(()),
            // The files' problems are printed already; promtool's exit status.
            Ok(false) => return ExitCode::FAILURE,
            Err(error) => Err(error),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wake: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
