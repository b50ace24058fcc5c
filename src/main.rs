//! The `reelay` command: parses the command line and runs a subcommand.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use reelay::config::{MigrateConfig, ServeConfig};
use reelay::store::StoreOptions;

// glibc's allocator took a sixth of the server's CPU under load (perf); mimalloc's
// thread-local free lists suit the many small, short-lived allocations of HTTP and JSON.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// SQLite allocates with the C library's `malloc`, not the allocator above. The log
/// writer's commits free and take again a few MB each time; glibc gave every such free
/// at the top of the thread's heap back to the kernel (past its 128 KB trim threshold),
/// and each `madvise` flushed both cores' TLBs: 19 % of the writer's time when publishing
/// batches that change videos (perf), and those ran 25-29k events/s against 36-40k/s
/// with the threshold raised. 16 MB is what a heap keeps free at most.
fn keep_freed_sqlite_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of glibc's allocator; any value is valid.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

#[derive(Parser)]
#[command(
    name = "reelay",
    version,
    about = "Event stream and webhook notifications for video platforms"
)]
struct Cli {
    /// How log lines are written to standard error: `text` for people, `json` (one
    /// object a line, the ids a line concerns as fields) for log shippers. Which lines:
    /// `REELAY_LOG` (`info` by default, e.g. `reelay=debug,info`).
    #[arg(long, global = true, env = "REELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Installs the log subscriber. A registry of layers, so others (an OpenTelemetry
/// layer) can be added beside the formatter.
fn init_logs(format: LogFormat) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = EnvFilter::try_from_env("REELAY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        // One flat object a line: the event's fields (account, subscription, event…)
        // beside `timestamp`, `level`, `target` and `message`; the spans' fields too.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // The filter is the registry's, not the formatter's own (a per-layer filter lost
    // lines of the log writer's thread on PostgreSQL): it applies to every layer.
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .init();
}

// Parsed once at start: the size of the largest settings does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeConfig>),
    /// Create or update the database schema, then exit (`serve` also does it at start).
    Migrate(MigrateConfig),
    /// Follow an account's events as they are committed (one JSON line each).
    Tail(reelay::tail::TailConfig),
    /// Measure throughput, latency and memory on this machine (runs the `reelay-bench`
    /// binary built beside this one; `reelay bench --help` lists its options).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Internal: runs subscriptions' transforms for a server, over standard input and
    /// output (the server starts these itself).
    #[command(hide = true)]
    TransformWorker,
}

/// `reelay bench …` runs `reelay-bench …` from the same directory in this process's place,
/// so the load generator lives outside the server binary and library.
fn run_bench(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    let bench = std::env::current_exe()?
        .with_file_name(format!("reelay-bench{}", std::env::consts::EXE_SUFFIX));
    if !bench.exists() {
        anyhow::bail!(
            "`reelay bench` runs the reelay-bench binary, and there is none at {}: build both \
             binaries with `cargo build --release` (not `cargo run`, which builds one)",
            bench.display()
        );
    }
    let mut command = std::process::Command::new(&bench);
    command.args(args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // exec returns only on failure.
        let error = command.exec();
        Err(anyhow::Error::new(error).context(format!("starting {}", bench.display())))
    }
    #[cfg(not(unix))]
    {
        let status = command.status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    keep_freed_sqlite_memory();
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Serve(config) => {
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            reelay::server::run(*config, listener, shutdown_signal()).await?;
        }
        Command::Bench { args } => run_bench(args)?,
        Command::Tail(config) => reelay::tail::run(config).await?,
        Command::TransformWorker => reelay::sinks::transform::worker_main()?,
        Command::Migrate(config) => {
            // The schema only: no secret is read or written, so no key is needed.
            let options = StoreOptions {
                secret_key: reelay::store::SecretKey::Unused,
                ..StoreOptions::default()
            };
            let db = reelay::store::Database::open(&config.database_url, &options).await?;
            if db.use_incremental_vacuum().await? {
                println!("the SQLite database now gives the space of removed events back");
            }
            println!("the database schema is up to date");
        }
    }
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
