//! The `notify` command line: parses flags and hands over to the library.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use notify::telemetry::{self, LogFormat};
use notify_store::{Synchronous, User};
use tokio_util::sync::CancellationToken;

/// The secret `notify dev` signs tokens with. Development only.
const DEV_JWT_SECRET: &str = "notify-dev-secret-do-not-use-in-production";

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
    /// Run the Socket.IO bridge in front of a core.
    Bridge(BridgeArgs),
    /// Run core and bridge in one process on the embedded SQLite default,
    /// with a development secret; prints a ready token and the page's URL.
    Dev(DevArgs),
    /// Print a signed token for one user.
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct CoreArgs {
    /// Address for gRPC (port 0 picks a free one).
    #[arg(long, env = "NOTIFY_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,
    #[command(flatten)]
    store: StoreArgs,
    /// Require `authorization: Bearer <token>` on every NotificationService call.
    #[arg(long, env = "NOTIFY_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Address for Prometheus `GET /metrics` [default: 127.0.0.1:9464, skipped if busy].
    #[arg(long, env = "NOTIFY_METRICS_LISTEN")]
    metrics_listen: Option<String>,
}

#[derive(clap::Args)]
struct StoreArgs {
    /// `sqlite://FILE` (created if missing).
    #[arg(
        long,
        env = "NOTIFY_DATABASE_URL",
        default_value = "sqlite://notify.db"
    )]
    database_url: String,
    /// SQLite durability: `full` survives power loss, `normal` only a process crash.
    #[arg(
        long,
        env = "NOTIFY_SQLITE_SYNCHRONOUS",
        value_enum,
        default_value = "full"
    )]
    sqlite_synchronous: SyncArg,
    /// How long a core's presence entries outlive it if it dies without a
    /// goodbye; then its users go offline.
    #[arg(long, env = "NOTIFY_PRESENCE_TTL", default_value = "15s", value_parser = humantime::parse_duration)]
    presence_ttl: Duration,
    /// PostgreSQL: most connections in this core's pool.
    #[arg(long, env = "NOTIFY_DB_MAX_CONNECTIONS", default_value_t = 16)]
    db_max_connections: u32,
    /// PostgreSQL: how long a call waits for a connection before it fails
    /// with UNAVAILABLE.
    #[arg(long, env = "NOTIFY_DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    db_acquire_timeout: Duration,
}

#[derive(clap::Args)]
struct BridgeArgs {
    /// Address for HTTP and Socket.IO (port 0 picks a free one).
    #[arg(long, env = "NOTIFY_LISTEN", default_value = "127.0.0.1:3000")]
    listen: String,
    /// The core's gRPC URL.
    #[arg(
        long,
        env = "NOTIFY_CORE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    core_url: String,
    /// HS256 secret that client tokens are signed with (32 random bytes or more).
    #[arg(long, env = "NOTIFY_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Sent to the core as `authorization: Bearer <token>`.
    #[arg(long, env = "NOTIFY_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// HTTP/2 connections to the core; users' streams are spread over them.
    #[arg(long, env = "NOTIFY_CORE_CONNECTIONS", default_value_t = 4)]
    core_connections: usize,
    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(clap::Args)]
struct LimitArgs {
    /// Sockets one user may have open on this bridge; more are refused (429).
    #[arg(long, env = "NOTIFY_MAX_SOCKETS_PER_USER", default_value_t = 10)]
    max_sockets_per_user: usize,
    /// Client requests one user may have waiting on the core at once, across
    /// all their sockets on this bridge; more get 429.
    #[arg(
        long,
        env = "NOTIFY_MAX_REQUESTS_IN_FLIGHT_PER_USER",
        default_value_t = 4
    )]
    max_requests_in_flight_per_user: usize,
    /// Client events per second per socket (bursts of twice that pass); a
    /// socket that keeps flooding gets 429 and is disconnected.
    #[arg(long, env = "NOTIFY_EVENTS_PER_SECOND", default_value_t = 20)]
    events_per_second: u32,
    /// Largest incoming Socket.IO packet, in bytes.
    #[arg(long, env = "NOTIFY_MAX_PAYLOAD", default_value_t = 100_000)]
    max_payload: u64,
    /// Browser origins besides the bridge's own allowed to open the page and
    /// connect, comma-separated (`https://shop.example`); `*` allows any.
    #[arg(long, env = "NOTIFY_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// How long a connection may refuse to read (its TCP window full) before
    /// it is closed, e.g. 30s.
    #[arg(long, env = "NOTIFY_WRITE_STALL_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    write_stall_timeout: Duration,
}

impl From<LimitArgs> for notify::bridge::limits::Limits {
    fn from(args: LimitArgs) -> Self {
        notify::bridge::limits::Limits {
            sockets_per_user: args.max_sockets_per_user.max(1),
            requests_in_flight_per_user: args.max_requests_in_flight_per_user.max(1),
            events_per_second: args.events_per_second.max(1),
            max_payload: args.max_payload,
            allowed_origins: args.allowed_origins,
            write_stall_timeout: args.write_stall_timeout,
        }
    }
}

#[derive(clap::Args)]
struct DevArgs {
    /// Address of the bridge (HTTP and Socket.IO).
    #[arg(long, env = "NOTIFY_LISTEN", default_value = "127.0.0.1:3000")]
    listen: String,
    /// Address of the core's gRPC.
    #[arg(long, env = "NOTIFY_CORE_LISTEN", default_value = "127.0.0.1:50051")]
    core_listen: String,
    /// Address for the core's Prometheus `GET /metrics` [default: 127.0.0.1:9464, skipped if busy].
    #[arg(long, env = "NOTIFY_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// The vendor whose token is printed.
    #[arg(long, default_value_t = 1)]
    vendor: i64,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("user").required(true).args(["vendor", "customer"])))]
struct TokenArgs {
    /// A vendor id.
    #[arg(long)]
    vendor: Option<i64>,
    /// A customer id.
    #[arg(long)]
    customer: Option<i64>,
    /// HS256 secret (the bridge's --jwt-secret).
    #[arg(long, env = "NOTIFY_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// How long the token is valid, e.g. 24h, 30m, 7d.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ttl: Duration,
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
        Command::Bridge(args) => run_bridge(args).await,
        Command::Dev(args) => run_dev(args).await,
        Command::Token(args) => print_token(args),
    };
    if let Err(error) = result {
        eprintln!("notify: {error:#}");
        std::process::exit(2);
    }
}

fn core_config(store: StoreArgs, api_token: Option<String>) -> notify::core::CoreConfig {
    notify::core::CoreConfig {
        database_url: store.database_url,
        api_token,
        synchronous: store.sqlite_synchronous.into(),
        presence_ttl: store.presence_ttl,
        postgres: notify_store::PgOptions {
            max_connections: store.db_max_connections,
            acquire_timeout: store.db_acquire_timeout,
        },
    }
}

async fn run_core(args: CoreArgs) -> anyhow::Result<()> {
    if args.api_token.as_deref() == Some("") {
        anyhow::bail!("--api-token must not be empty");
    }
    let config = core_config(args.store, args.api_token);
    config.check()?;
    telemetry::metrics_handle();
    let (grpc, metrics) = notify::core::bind(&args.listen, args.metrics_listen.as_deref()).await?;
    notify::core::run(config, grpc, metrics, notify::shutdown::signal()).await
}

async fn run_bridge(args: BridgeArgs) -> anyhow::Result<()> {
    if args.jwt_secret.is_empty() {
        anyhow::bail!("--jwt-secret must not be empty");
    }
    if args.jwt_secret.len() < 32 {
        tracing::warn!(
            "--jwt-secret is shorter than 32 bytes; use a long random secret in production"
        );
    }
    telemetry::metrics_handle();
    let listener = notify::bridge::bind(&args.listen).await?;
    let config = notify::bridge::BridgeConfig {
        core_url: args.core_url,
        jwt_secret: args.jwt_secret,
        api_token: args.api_token.filter(|t| !t.is_empty()),
        core_connections: args.core_connections,
        limits: args.limits.into(),
    };
    notify::bridge::run(config, listener, notify::shutdown::signal()).await
}

async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    let config = core_config(args.store, None);
    config.check()?;
    telemetry::metrics_handle();
    let (grpc, metrics) =
        notify::core::bind(&args.core_listen, args.metrics_listen.as_deref()).await?;
    let core_url = format!("http://{}", grpc.local_addr()?);
    let listener = notify::bridge::bind(&args.listen).await?;
    let page = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let token = notify::bridge::auth::Jwt::new(DEV_JWT_SECRET.as_bytes())
        .issue(User::vendor(args.vendor), Duration::from_secs(24 * 3600));
    println!("development secret: {DEV_JWT_SECRET}");
    println!("token for vendor {}: {token}", args.vendor);
    println!("open {page}/#token={token}");
    // Either half failing stops the other; so does a signal.
    let core = async {
        let result = notify::core::run(config, grpc, metrics, stop.clone().cancelled_owned()).await;
        stop.cancel();
        result
    };
    let bridge = async {
        let result = notify::bridge::run(
            notify::bridge::BridgeConfig {
                core_url,
                jwt_secret: DEV_JWT_SECRET.into(),
                api_token: None,
                core_connections: 1,
                limits: Default::default(),
            },
            listener,
            stop.clone().cancelled_owned(),
        )
        .await;
        stop.cancel();
        result
    };
    let signal = async {
        tokio::select! {
            _ = notify::shutdown::signal() => stop.cancel(),
            _ = stop.cancelled() => {}
        }
    };
    let (core, bridge, ()) = tokio::join!(core, bridge, signal);
    bridge.and(core)
}

fn print_token(args: TokenArgs) -> anyhow::Result<()> {
    let user = match (args.vendor, args.customer) {
        (Some(id), None) => User::vendor(id),
        (None, Some(id)) => User::customer(id),
        _ => anyhow::bail!("give exactly one of --vendor and --customer"),
    };
    if user.id <= 0 {
        anyhow::bail!("the user id must be a positive integer");
    }
    let jwt = notify::bridge::auth::Jwt::new(args.jwt_secret.as_bytes());
    println!("{}", jwt.issue(user, args.ttl));
    Ok(())
}
