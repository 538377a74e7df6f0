//! Starts real `notify core` processes on ephemeral loopback ports, each on
//! its own database in a temporary directory, and gives typed clients.
//! Set `TEST_LOG=1` to see the processes' logs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use notify::contract::proto::notification_service_client::NotificationServiceClient;
use tonic::transport::Channel;

/// A gRPC client for the core.
pub type Client = NotificationServiceClient<Channel>;

/// A running core process.
pub struct CoreProcess {
    child: Child,
    /// The gRPC address.
    pub addr: SocketAddr,
    /// The `/metrics` address.
    pub metrics_addr: SocketAddr,
    database_url: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    _dir: std::sync::Arc<tempfile::TempDir>,
}

impl CoreProcess {
    /// A core on a fresh SQLite database.
    pub fn start() -> CoreProcess {
        Self::start_with(&[])
    }

    /// A core on a fresh SQLite database with extra flags.
    pub fn start_with(extra: &[&str]) -> CoreProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let database_url = format!("sqlite://{}", dir.path().join("notify.db").display());
        Self::start_on(&database_url, extra, dir)
    }

    /// A core on `database_url` (several cores may share a PostgreSQL one).
    pub fn start_on(database_url: &str, extra: &[&str], dir: tempfile::TempDir) -> CoreProcess {
        Self::start_with_env(database_url, extra, &[], dir)
    }

    /// A core with extra environment variables (such as `LD_PRELOAD` for
    /// libfaketime).
    pub fn start_with_env(
        database_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        dir: tempfile::TempDir,
    ) -> CoreProcess {
        let dir = std::sync::Arc::new(dir);
        let database_url = database_url.to_owned();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, addr, metrics_addr) = spawn(&database_url, &extra, &env);
        CoreProcess {
            child,
            addr,
            metrics_addr,
            database_url,
            extra,
            env,
            _dir: dir,
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name}");
    }

    /// `http://addr` for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        let channel = Channel::from_shared(self.url())
            .expect("valid url")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to core");
        NotificationServiceClient::new(channel)
    }

    /// SIGKILL: no goodbye, no flush, no checkpoint.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status, without blocking the test's runtime:
    /// the clients' connections keep being served (the core drains them).
    pub async fn shut_down(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("core did not exit within 15 s of SIGTERM");
    }

    /// Starts the core again on the same database (on a new port).
    pub fn restart(&mut self) {
        self.kill9();
        self.start_again();
    }

    /// Starts the core again after [`Self::kill9`] or [`Self::terminate`],
    /// on the same database (on a new port).
    pub fn start_again(&mut self) {
        let (child, addr, metrics_addr) = spawn(&self.database_url, &self.extra, &self.env);
        self.child = child;
        self.addr = addr;
        self.metrics_addr = metrics_addr;
    }

    /// The SQLite file and its write-ahead log, for a core on SQLite: with
    /// the core stopped, copying both is a backup.
    pub fn sqlite_files(&self) -> [std::path::PathBuf; 2] {
        let path = self
            .database_url
            .strip_prefix("sqlite://")
            .expect("a core on SQLite");
        [path.into(), format!("{path}-wal").into()]
    }
}

impl Drop for CoreProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(
    database_url: &str,
    extra: &[String],
    env: &[(String, String)],
) -> (Child, SocketAddr, SocketAddr) {
    let log = std::env::var_os("TEST_LOG").is_some();
    let mut child = Command::new(env!("CARGO_BIN_EXE_notify"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("core")
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--database-url", database_url])
        .args(extra)
        .env_remove("NOTIFY_API_TOKEN")
        .stdout(Stdio::piped())
        .stderr(if log { Stdio::inherit() } else { Stdio::null() })
        .spawn()
        .expect("spawn notify core");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("notify core ready") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("core printed its ready line (run with TEST_LOG=1 to see why not)");
    let field = |name: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|part| part.strip_prefix(name))
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    (child, field("grpc="), field("metrics="))
}

/// libfaketime (Debian's `faketime` package; `scripts/test` installs it),
/// preloaded to move a process's wall clock and not its monotonic one.
pub fn libfaketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|path| path.exists())
}

/// The grpcurl binary: `$GRPCURL`, then `.venv/bin/grpcurl` (installed by
/// `scripts/test`), then `PATH`.
pub fn grpcurl() -> PathBuf {
    if let Some(path) = std::env::var_os("GRPCURL") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/grpcurl");
    if venv.exists() {
        return venv;
    }
    let found = Command::new("sh")
        .args(["-c", "command -v grpcurl"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    found.expect("grpcurl not found: run scripts/test, which installs it into .venv")
}

/// The test PostgreSQL server's admin URL (`scripts/test` starts one), or
/// `None` when there is none and none is required.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("NOTIFY_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("NOTIFY_REQUIRE_POSTGRES").is_none(),
                "NOTIFY_REQUIRE_POSTGRES is set but NOTIFY_TEST_POSTGRES_URL is not"
            );
            eprintln!("PostgreSQL test not run: set NOTIFY_TEST_POSTGRES_URL (scripts/test does)");
            None
        }
    }
}

/// A fresh, empty database on the server at `admin_url`.
pub async fn create_database(admin_url: &str) -> String {
    use sqlx::Connection;
    let name = format!("t_{}", notify_store::new_object_id());
    let mut connection = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut connection)
        .await
        .expect("create a test database");
    let base = admin_url.rsplit_once('/').expect("url has a path").0;
    format!("{base}/{name}")
}

/// A PostgreSQL server of the test's own (for tests that restart it),
/// through `scripts/postgres`; stopped when dropped.
pub struct OwnPostgres {
    /// Admin URL.
    pub url: String,
    dir: tempfile::TempDir,
}

impl OwnPostgres {
    /// Starts one on a free loopback port.
    pub fn start() -> OwnPostgres {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        // The server runs as `postgres`, which must reach its data directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let url = postgres_script("start", &dir);
        OwnPostgres { url, dir }
    }

    /// Restarts it (fast shutdown: open connections are cut).
    pub fn restart(&self) {
        postgres_script("restart", &self.dir);
    }

    /// Stops it (fast shutdown: open connections are cut).
    pub fn stop(&self) {
        postgres_script("stop", &self.dir);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        postgres_script("stop", &self.dir);
    }
}

fn postgres_script(action: &str, dir: &tempfile::TempDir) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres");
    let output = Command::new(script)
        .args([action, &dir.path().join("pg").display().to_string()])
        .output()
        .expect("run scripts/postgres");
    assert!(
        output.status.success(),
        "scripts/postgres {action}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
