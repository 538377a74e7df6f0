//! PostgreSQL for tests: the shared test server, throwaway databases on
//! it, and servers of a test's own.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use sqlx::Connection;

/// The test server's admin URL (`NOTIFY_TEST_POSTGRES_URL`, set by
/// `scripts/test`), or `None` when there is none. With
/// `NOTIFY_REQUIRE_POSTGRES` set, a missing server is a failure rather
/// than a skip, so CI cannot pass without the PostgreSQL cases.
pub fn admin_url() -> Option<String> {
    match std::env::var("NOTIFY_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("NOTIFY_REQUIRE_POSTGRES").is_none(),
                "NOTIFY_REQUIRE_POSTGRES is set but NOTIFY_TEST_POSTGRES_URL is not"
            );
            eprintln!("PostgreSQL case not run: set NOTIFY_TEST_POSTGRES_URL (scripts/test does)");
            None
        }
    }
}

/// A fresh, empty database on the server at `admin_url`; its URL.
pub async fn create_database(admin_url: &str) -> anyhow::Result<String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!(
        "t_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut connection = sqlx::PgConnection::connect(admin_url)
        .await
        .context("connect to the test PostgreSQL")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut connection)
        .await
        .context("create a test database")?;
    let base = admin_url
        .rsplit_once('/')
        .context("the admin url has no database path")?
        .0;
    Ok(format!("{base}/{name}"))
}

/// A fresh database on the test server, or `None` when there is none.
pub async fn database() -> Option<String> {
    let admin = admin_url()?;
    Some(create_database(&admin).await.expect("a test database"))
}

/// A PostgreSQL server of the caller's own on a free loopback port (for
/// tests and benchmarks that restart or measure it), through
/// `scripts/postgres`; stopped when dropped.
pub struct OwnPostgres {
    /// Its admin URL.
    pub url: String,
    dir: tempfile::TempDir,
}

impl OwnPostgres {
    /// Starts one (`initdb` on first use of the directory).
    pub fn start() -> anyhow::Result<OwnPostgres> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().context("temp dir")?;
        // The server runs as `postgres`, which must reach its data directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .context("chmod temp dir")?;
        let url = script("start", dir.path())?;
        Ok(OwnPostgres { url, dir })
    }

    /// Restarts it (fast shutdown: open connections are cut).
    pub fn restart(&self) -> anyhow::Result<()> {
        script("restart", self.dir.path()).map(drop)
    }

    /// Stops it (fast shutdown: open connections are cut).
    pub fn stop(&self) -> anyhow::Result<()> {
        script("stop", self.dir.path()).map(drop)
    }

    /// A fresh database on it.
    pub async fn database(&self) -> anyhow::Result<String> {
        create_database(&self.url).await
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = script("stop", self.dir.path());
    }
}

fn script(action: &str, dir: &Path) -> anyhow::Result<String> {
    let script = crate::workspace_root().join("scripts/postgres");
    let output = Command::new(&script)
        .args([action, &dir.join("pg").display().to_string()])
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "scripts/postgres {action}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
