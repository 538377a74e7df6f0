//! The `notify` command line: parses flags and hands over to the library.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use notify::bridge::auth::Verifier;
use notify::bridge::limits::Limits;
use notify::core::presence;
use notify::telemetry::{self, LogFormat};
use notify_store::{PgOptions, SqliteOptions, Synchronous, User};
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
    #[arg(long, env = "NOTIFY_LISTEN", default_value = notify::core::DEFAULT_LISTEN)]
    listen: String,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    api_token: ApiTokenArgs,
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
        default_value_t = SqliteOptions::DEFAULT.synchronous.into()
    )]
    sqlite_synchronous: SyncArg,
    /// How long a core's presence entries outlive it if it dies without a
    /// goodbye; then its users go offline.
    #[arg(long, env = "NOTIFY_PRESENCE_TTL", default_value_t = presence::DEFAULT_TTL.into())]
    presence_ttl: humantime::Duration,
    /// PostgreSQL: most connections in this core's pool.
    #[arg(long, env = "NOTIFY_DB_MAX_CONNECTIONS", default_value_t = PgOptions::DEFAULT.max_connections)]
    db_max_connections: u32,
    /// PostgreSQL: how long a call waits for a connection before it fails
    /// with UNAVAILABLE.
    #[arg(long, env = "NOTIFY_DB_ACQUIRE_TIMEOUT", default_value_t = PgOptions::DEFAULT.acquire_timeout.into())]
    db_acquire_timeout: humantime::Duration,
    /// READ, archived, replaced and expired notifications older than this
    /// are deleted in the background; unread ones never are.
    #[arg(long, env = "NOTIFY_RETENTION", default_value_t = notify::core::sweeps::DEFAULT_RETENTION.into())]
    retention: humantime::Duration,
    /// `nats://host:port`: cross-core fan-out over NATS instead of
    /// PostgreSQL's LISTEN/NOTIFY (PostgreSQL only).
    #[arg(long, env = "NOTIFY_BUS")]
    bus: Option<String>,
}

#[derive(clap::Args)]
struct BridgeArgs {
    /// Address for HTTP and Socket.IO (port 0 picks a free one).
    #[arg(long, env = "NOTIFY_LISTEN", default_value = notify::bridge::DEFAULT_LISTEN)]
    listen: String,
    /// The core's gRPC URL.
    #[arg(
        long,
        env = "NOTIFY_CORE_URL",
        default_value = notify::bridge::DEFAULT_CORE_URL
    )]
    core_url: String,
    #[command(flatten)]
    jwt_secret: BridgeSecretArgs,
    #[command(flatten)]
    provider: ProviderArgs,
    #[command(flatten)]
    api_token: ApiTokenArgs,
    /// HTTP/2 connections to the core; users' streams are spread over them.
    #[arg(long, env = "NOTIFY_CORE_CONNECTIONS", default_value_t = 4)]
    core_connections: usize,
    /// Address for Prometheus `GET /metrics`, apart from the public listener
    /// [default: 127.0.0.1:9465, skipped if busy].
    #[arg(long, env = "NOTIFY_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(clap::Args)]
struct LimitArgs {
    /// Sockets one user may have open on this bridge; more are refused (429).
    #[arg(long, env = "NOTIFY_MAX_SOCKETS_PER_USER", default_value_t = Limits::DEFAULT.sockets_per_user)]
    max_sockets_per_user: usize,
    /// Client requests one user may have waiting on the core at once, across
    /// all their sockets on this bridge; more get 429.
    #[arg(
        long,
        env = "NOTIFY_MAX_REQUESTS_IN_FLIGHT_PER_USER",
        default_value_t = Limits::DEFAULT.requests_in_flight_per_user
    )]
    max_requests_in_flight_per_user: usize,
    /// Client events per second per socket (bursts of twice that pass); a
    /// socket that keeps flooding gets 429 and is disconnected.
    #[arg(long, env = "NOTIFY_EVENTS_PER_SECOND", default_value_t = Limits::DEFAULT.events_per_second)]
    events_per_second: u32,
    /// Largest incoming Socket.IO packet, in bytes.
    #[arg(long, env = "NOTIFY_MAX_PAYLOAD", default_value_t = Limits::DEFAULT.max_payload)]
    max_payload: u64,
    /// Browser origins besides the bridge's own allowed to open the page and
    /// connect, comma-separated (`https://shop.example`); `*` allows any.
    #[arg(long, env = "NOTIFY_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// How long a connection may refuse to read (its TCP window full) before
    /// it is closed, e.g. 30s.
    #[arg(long, env = "NOTIFY_WRITE_STALL_TIMEOUT", default_value_t = Limits::DEFAULT.write_stall_timeout.into())]
    write_stall_timeout: humantime::Duration,
    /// Open connections (HTTP and WebSocket) at most; more are closed as
    /// they are accepted [default: the open-files limit, raised to the
    /// system's most, less 100].
    #[arg(long, env = "NOTIFY_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// How long a connection may take to send its request headers, and may
    /// stay idle between requests.
    #[arg(long, env = "NOTIFY_HEADER_READ_TIMEOUT", default_value_t = Limits::DEFAULT.header_read_timeout.into())]
    header_read_timeout: humantime::Duration,
    /// Socket.IO sessions opened but not yet authenticated, at most; more
    /// handshakes get 503 until some finish.
    #[arg(long, env = "NOTIFY_MAX_PENDING_HANDSHAKES", default_value_t = Limits::DEFAULT.max_pending_handshakes)]
    max_pending_handshakes: usize,
    /// How long a session may stay open without sending its token (the
    /// namespace CONNECT) before it is closed.
    #[arg(long, env = "NOTIFY_HANDSHAKE_TIMEOUT", default_value_t = Limits::DEFAULT.handshake_timeout.into())]
    handshake_timeout: humantime::Duration,
}

/// The open-files limit, raised first to the most the system allows (as
/// servers holding many sockets do; the soft default is often 1,024).
fn open_files_limit() -> Option<usize> {
    let raised = rlimit::increase_nofile_limit(u64::MAX).ok()?;
    usize::try_from(raised).ok()
}

impl From<LimitArgs> for Limits {
    fn from(args: LimitArgs) -> Self {
        Limits {
            sockets_per_user: args.max_sockets_per_user.max(1),
            requests_in_flight_per_user: args.max_requests_in_flight_per_user.max(1),
            events_per_second: args.events_per_second.max(1),
            max_payload: args.max_payload,
            allowed_origins: args.allowed_origins,
            write_stall_timeout: args.write_stall_timeout.into(),
            // Descriptors left over for the core connections, the metrics
            // listener and files.
            max_connections: {
                let files = open_files_limit();
                args.max_connections
                    .unwrap_or_else(|| {
                        files.map_or(Limits::DEFAULT.max_connections, |n| n.saturating_sub(100))
                    })
                    .max(1)
            },
            header_read_timeout: Duration::from(args.header_read_timeout)
                .max(Duration::from_millis(100)),
            max_pending_handshakes: args.max_pending_handshakes.max(1),
            handshake_timeout: Duration::from(args.handshake_timeout)
                .max(Duration::from_millis(100)),
        }
    }
}

#[derive(clap::Args)]
struct DevArgs {
    /// Address of the bridge (HTTP and Socket.IO).
    #[arg(long, env = "NOTIFY_LISTEN", default_value = notify::bridge::DEFAULT_LISTEN)]
    listen: String,
    /// Address of the core's gRPC.
    #[arg(long, env = "NOTIFY_CORE_LISTEN", default_value = notify::core::DEFAULT_LISTEN)]
    core_listen: String,
    /// Address for the core's Prometheus `GET /metrics` [default: 127.0.0.1:9464, skipped if busy].
    #[arg(long, env = "NOTIFY_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// The vendor whose token is printed (5, the vendor of the README's
    /// grpcurl examples, so what they create shows in the page it opens).
    #[arg(long, default_value_t = 5)]
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
    #[command(flatten)]
    jwt_secret: JwtSecretArgs,
    /// How long the token is valid, e.g. 24h, 30m, 7d.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

/// The HS256 secret client tokens are signed with: given in the
/// environment or a file, it stays out of `ps` and `/proc/*/cmdline`.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct JwtSecretArgs {
    /// HS256 secret that client tokens are signed with (32 random bytes or
    /// more). Prefer the environment variable or --jwt-secret-file: every
    /// local user can read a process's command line.
    #[arg(long, env = "NOTIFY_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// A file holding the HS256 secret (a trailing newline is ignored).
    #[arg(long, env = "NOTIFY_JWT_SECRET_FILE")]
    jwt_secret_file: Option<PathBuf>,
}

/// The bridge's HS256 secret: optional when the identity provider's keys
/// are given.
#[derive(clap::Args)]
#[group(multiple = false)]
struct BridgeSecretArgs {
    /// HS256 secret that client tokens are signed with (32 random bytes or
    /// more); needed unless --jwt-public-key or --jwks-file is given. Prefer
    /// the environment variable or --jwt-secret-file: every local user can
    /// read a process's command line.
    #[arg(long, env = "NOTIFY_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// A file holding the HS256 secret (a trailing newline is ignored).
    #[arg(long, env = "NOTIFY_JWT_SECRET_FILE")]
    jwt_secret_file: Option<PathBuf>,
}

/// The platform's identity provider, whose tokens the bridge trusts besides
/// (or instead of) its own.
#[derive(clap::Args)]
struct ProviderArgs {
    /// The identity provider's public key, PEM: RSA (RS256), P-256 (ES256)
    /// or Ed25519 (EdDSA).
    #[arg(long, env = "NOTIFY_JWT_PUBLIC_KEY", conflicts_with = "jwks_file")]
    jwt_public_key: Option<PathBuf>,
    /// The identity provider's keys as a JWKS document; re-read when the
    /// file changes, the token's `kid` choosing the key.
    #[arg(long, env = "NOTIFY_JWKS_FILE")]
    jwks_file: Option<PathBuf>,
    /// The `iss` the provider's tokens must carry.
    #[arg(long, env = "NOTIFY_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// An `aud` the provider's tokens must carry.
    #[arg(long, env = "NOTIFY_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
}

impl From<ProviderArgs> for notify::bridge::auth::ProviderConfig {
    fn from(args: ProviderArgs) -> Self {
        notify::bridge::auth::ProviderConfig {
            public_key: args.jwt_public_key,
            jwks_file: args.jwks_file,
            issuer: args.jwt_issuer,
            audience: args.jwt_audience,
        }
    }
}

impl JwtSecretArgs {
    fn read(self) -> anyhow::Result<String> {
        read_secret("--jwt-secret", self.jwt_secret, self.jwt_secret_file)?
            .ok_or_else(|| anyhow::anyhow!("give --jwt-secret or --jwt-secret-file"))
    }
}

/// The api token between bridges (and backends) and the core.
#[derive(clap::Args)]
#[group(multiple = false)]
struct ApiTokenArgs {
    /// Core: required as `authorization: Bearer <token>` on every
    /// NotificationService call. Bridge: sent so. Prefer the environment
    /// variable or --api-token-file: every local user can read a process's
    /// command line.
    #[arg(long, env = "NOTIFY_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// A file holding the api token (a trailing newline is ignored).
    #[arg(long, env = "NOTIFY_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
}

impl ApiTokenArgs {
    fn read(self) -> anyhow::Result<Option<String>> {
        read_secret("--api-token", self.api_token, self.api_token_file)
    }
}

/// A secret given inline or in a file; empty is an error either way.
fn read_secret(
    flag: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
) -> anyhow::Result<Option<String>> {
    let secret = match (inline, file) {
        (Some(secret), _) => secret,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|error| anyhow::anyhow!("{flag}-file {}: {error}", path.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if secret.is_empty() {
        anyhow::bail!("{flag} must not be empty");
    }
    Ok(Some(secret))
}

#[derive(Clone, Copy, ValueEnum)]
enum SyncArg {
    Full,
    Normal,
}

impl From<Synchronous> for SyncArg {
    fn from(value: Synchronous) -> Self {
        match value {
            Synchronous::Full => SyncArg::Full,
            Synchronous::Normal => SyncArg::Normal,
        }
    }
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
        // stderr may be gone; the exit code still says it.
        let _ = writeln!(std::io::stderr(), "notify: {error:#}");
        std::process::exit(2);
    }
}

fn core_config(store: StoreArgs, api_token: Option<String>) -> notify::core::CoreConfig {
    notify::core::CoreConfig {
        database_url: store.database_url,
        api_token,
        synchronous: store.sqlite_synchronous.into(),
        presence_ttl: store.presence_ttl.into(),
        retention: store.retention.into(),
        bus: store.bus,
        postgres: notify_store::PgOptions {
            max_connections: store.db_max_connections,
            acquire_timeout: store.db_acquire_timeout.into(),
        },
    }
}

async fn run_core(args: CoreArgs) -> anyhow::Result<()> {
    let stop = notify::shutdown::signal();
    let config = core_config(args.store, args.api_token.read()?);
    config.check()?;
    telemetry::metrics_handle();
    let (grpc, metrics) = notify::core::bind(&args.listen, args.metrics_listen.as_deref()).await?;
    if config.api_token.is_none() && !grpc.local_addr()?.ip().is_loopback() {
        tracing::warn!(
            addr = %grpc.local_addr()?,
            "the core listens beyond loopback without --api-token: anyone who reaches it can \
             create and read every user's notifications"
        );
    }
    notify::core::run(config, grpc, metrics, stop).await
}

async fn run_bridge(args: BridgeArgs) -> anyhow::Result<()> {
    let stop = notify::shutdown::signal();
    let jwt_secret = read_secret(
        "--jwt-secret",
        args.jwt_secret.jwt_secret,
        args.jwt_secret.jwt_secret_file,
    )?;
    if let Some(jwt_secret) = &jwt_secret {
        if jwt_secret == DEV_JWT_SECRET {
            anyhow::bail!(
                "--jwt-secret is the public development secret of `notify dev`: anyone can sign \
                 tokens with it; use a long random secret (openssl rand -hex 32)"
            );
        }
        if jwt_secret.len() < 32 {
            tracing::warn!(
                "--jwt-secret is shorter than 32 bytes; use a long random secret in production"
            );
        }
    }
    let jwt = Verifier::new(
        jwt_secret.as_deref().map(str::as_bytes),
        &args.provider.into(),
    )?;
    telemetry::metrics_handle();
    let (listener, metrics) =
        notify::bridge::bind(&args.listen, Some(args.metrics_listen.as_deref())).await?;
    let config = notify::bridge::BridgeConfig {
        core_url: args.core_url,
        jwt: std::sync::Arc::new(jwt),
        api_token: args.api_token.read()?,
        core_connections: args.core_connections,
        limits: args.limits.into(),
    };
    notify::bridge::run(config, listener, metrics, stop).await
}

async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    let signalled = notify::shutdown::signal();
    // Its secret is public: what it serves must not be reachable from
    // elsewhere.
    for (flag, addr) in [
        ("--listen", Some(&args.listen)),
        ("--core-listen", Some(&args.core_listen)),
        ("--metrics-listen", args.metrics_listen.as_ref()),
    ] {
        if let Some(addr) = addr {
            only_loopback(flag, addr).await?;
        }
    }
    let config = core_config(args.store, None);
    config.check()?;
    telemetry::metrics_handle();
    let (grpc, metrics) =
        notify::core::bind(&args.core_listen, args.metrics_listen.as_deref()).await?;
    let core_url = format!("http://{}", grpc.local_addr()?);
    // One process, one set of metrics: the core's listener serves them.
    let (listener, _) = notify::bridge::bind(&args.listen, None).await?;
    let page = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let token = notify::bridge::auth::Jwt::new(DEV_JWT_SECRET.as_bytes())
        .issue(User::vendor(args.vendor), Duration::from_secs(24 * 3600));
    telemetry::say(&format!(
        "development secret: {DEV_JWT_SECRET}\ntoken for vendor {}: {token}\nopen {page}/#token={token}",
        args.vendor
    ));
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
                jwt: std::sync::Arc::new(Verifier::new(
                    Some(DEV_JWT_SECRET.as_bytes()),
                    &Default::default(),
                )?),
                api_token: None,
                core_connections: 1,
                limits: Default::default(),
            },
            listener,
            None,
            stop.clone().cancelled_owned(),
        )
        .await;
        stop.cancel();
        result
    };
    let signal = async {
        tokio::select! {
            _ = signalled => stop.cancel(),
            _ = stop.cancelled() => {}
        }
    };
    let (core, bridge, ()) = tokio::join!(core, bridge, signal);
    bridge.and(core)
}

/// Refuses an address that is not (or does not resolve only to) loopback.
async fn only_loopback(flag: &str, addr: &str) -> anyhow::Result<()> {
    let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|error| anyhow::anyhow!("{flag} {addr}: {error}"))?
        .collect();
    if resolved.is_empty() || resolved.iter().any(|a| !a.ip().is_loopback()) {
        anyhow::bail!(
            "{flag} {addr}: `notify dev` signs tokens with a public secret, so it listens on \
             loopback only (127.0.0.1); run `notify core` and `notify bridge` to serve others"
        );
    }
    Ok(())
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
    let jwt = notify::bridge::auth::Jwt::new(args.jwt_secret.read()?.as_bytes());
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", jwt.issue(user, args.ttl))
        .and_then(|()| stdout.flush())
        .map_err(|error| anyhow::anyhow!("cannot print the token: {error}"))
}
