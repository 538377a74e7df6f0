//! Real `notify core` processes on ephemeral loopback ports, each on its
//! own database in a temporary directory (spawning and the ready line are
//! the test kit's), with what the tests do to them: signals, restarts.
//! Set `TEST_LOG=1` to see the processes' logs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use notify_testkit::{Process, core};

/// A gRPC client for the core.
pub type Client = core::Client;

/// A running core process.
pub struct CoreProcess {
    process: Process,
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
        let (process, addr, metrics_addr) = spawn(&database_url, &extra, &env);
        CoreProcess {
            process,
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
        self.process.signal(name).expect("signal the core");
    }

    /// The database it runs on.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// `http://addr` for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        core::client(self.addr).await.expect("connect to core")
    }

    /// SIGKILL: no goodbye, no flush, no checkpoint.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// SIGTERM, then the exit status, without blocking the test's runtime:
    /// the clients' connections keep being served (the core drains them).
    pub async fn shut_down(&mut self) -> std::process::ExitStatus {
        self.process.signal("TERM").expect("SIGTERM the core");
        self.process
            .exit_within(Duration::from_secs(15))
            .await
            .expect("core exits within 15 s of SIGTERM")
    }

    /// Starts the core again on the same database (on a new port).
    pub fn restart(&mut self) {
        self.kill9();
        self.start_again();
    }

    /// Starts the core again after [`Self::kill9`] or [`Self::terminate`],
    /// on the same database (on a new port).
    pub fn start_again(&mut self) {
        let (process, addr, metrics_addr) = spawn(&self.database_url, &self.extra, &self.env);
        self.process = process;
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

fn spawn(
    database_url: &str,
    extra: &[String],
    env: &[(String, String)],
) -> (Process, SocketAddr, SocketAddr) {
    let log = std::env::var_os("TEST_LOG").is_some();
    let mut command = core::command(env!("CARGO_BIN_EXE_notify").as_ref(), database_url);
    command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(extra)
        .stderr(if log { Stdio::inherit() } else { Stdio::null() });
    core::start(command).expect("core printed its ready line (run with TEST_LOG=1 to see why not)")
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

pub use notify_testkit::postgres::{OwnPostgres, admin_url as postgres_admin_url};

/// A fresh, empty database on the server at `admin_url`.
pub async fn create_database(admin_url: &str) -> String {
    notify_testkit::postgres::create_database(admin_url)
        .await
        .expect("a test database")
}
