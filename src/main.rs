//! The `notify` command line: parses flags and hands over to the library.

use clap::{Parser, Subcommand, ValueEnum};
use notify::telemetry::{self, LogFormat};
use notify_store::Synchronous;

#[derive(Parser)]
#[command(
    name = "notify",
    version,
    about = "Real-time notifications: a gRPC core and a Socket.IO bridge"
)]
struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "NOTIFY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC notification core.
    Core(CoreArgs),
}

#[derive(clap::Args)]
struct CoreArgs {
    /// Address for gRPC (port 0 picks a free one).
    #[arg(long, env = "NOTIFY_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,
    /// `sqlite://FILE` (created if missing).
    #[arg(
        long,
        env = "NOTIFY_DATABASE_URL",
        default_value = "sqlite://notify.db"
    )]
    database_url: String,
    /// Require `authorization: Bearer <token>` on every NotificationService call.
    #[arg(long, env = "NOTIFY_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Address for Prometheus `GET /metrics`.
    #[arg(long, env = "NOTIFY_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    metrics_listen: String,
    /// SQLite durability: `full` survives power loss, `normal` only a process crash.
    #[arg(
        long,
        env = "NOTIFY_SQLITE_SYNCHRONOUS",
        value_enum,
        default_value = "full"
    )]
    sqlite_synchronous: SyncArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum SyncArg {
    Full,
    Normal,
}

impl From<SyncArg> for Synchronous {
    fn from(arg: SyncArg) -> Self {
        match arg {
            SyncArg::Full => Synchronous::Full,
            SyncArg::Normal => Synchronous::Normal,
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    let result = match cli.command {
        Command::Core(args) => run_core(args).await,
    };
    if let Err(error) = result {
        eprintln!("notify: {error:#}");
        std::process::exit(2);
    }
}

async fn run_core(args: CoreArgs) -> anyhow::Result<()> {
    if args.api_token.as_deref() == Some("") {
        anyhow::bail!("--api-token must not be empty");
    }
    telemetry::metrics_handle();
    let (grpc, metrics) = notify::core::bind(&args.listen, &args.metrics_listen).await?;
    let config = notify::core::CoreConfig {
        database_url: args.database_url,
        api_token: args.api_token,
        synchronous: args.sqlite_synchronous.into(),
    };
    notify::core::run(config, grpc, Some(metrics), notify::shutdown::signal()).await
}
