//! The processes under load: one `notify core` (on a fresh SQLite file, or
//! a PostgreSQL database) and
//! one bridge in front of it — ours (`notify bridge`) or the Node peer
//! (`crates/bench/peer/server.js`) — on loopback ports the kernel picks.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The signing secret every token of a run is made with.
pub const SECRET: &str = "bench-secret-of-at-least-16-bytes";

/// Which bridge a run loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// `notify bridge`.
    Ours,
    /// The Node.js peer: socket.io 4.8 + @grpc/grpc-js.
    Peer,
}

impl Target {
    /// The name used in tables, file names and charts.
    pub fn name(self) -> &'static str {
        match self {
            Target::Ours => "ours",
            Target::Peer => "peer",
        }
    }
}

/// Where to find the programs the stack runs.
#[derive(Debug, Clone, clap::Args)]
pub struct Programs {
    /// The `notify` binary (default: next to this tool, as `cargo build`
    /// puts it).
    #[arg(long)]
    pub notify_bin: Option<PathBuf>,
    /// The Node peer's entry point.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/peer/server.js"))]
    pub peer_script: PathBuf,
    /// SQLite `synchronous` for the core (full or normal).
    #[arg(long, default_value = "full")]
    pub synchronous: String,
    /// Directory for the core's database (default: the system temp dir).
    /// Put it on the disk you mean to measure.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl Programs {
    fn notify_bin(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.notify_bin {
            return Ok(path.clone());
        }
        let me = std::env::current_exe().context("find this tool's path")?;
        let sibling = me.with_file_name("notify");
        if !sibling.exists() {
            bail!(
                "{} not found: build it first (`cargo build --release`), or pass --notify-bin",
                sibling.display()
            );
        }
        Ok(sibling)
    }

    /// A fresh directory for one core's database.
    pub fn temp_dir(&self) -> anyhow::Result<tempfile::TempDir> {
        let dir = match &self.data_dir {
            Some(dir) => tempfile::tempdir_in(dir),
            None => tempfile::tempdir(),
        };
        dir.context("create a temporary data directory")
    }
}

pub use notify_testkit::Process;

/// Resident memory and CPU time of a process so far, from /proc.
pub fn usage(process: &Process) -> Usage {
    Usage::of(process.id())
}

/// A process's resident memory and CPU seconds (user + system).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// VmRSS in bytes.
    pub rss_bytes: u64,
    /// utime + stime in seconds.
    pub cpu_seconds: f64,
}

impl Usage {
    /// Reads /proc for `pid`; zeros when it is gone.
    pub fn of(pid: u32) -> Usage {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        Usage {
            rss_bytes: rss_from_status(&status).unwrap_or(0),
            cpu_seconds: cpu_from_stat(&stat, clock_ticks()).unwrap_or(0.0),
        }
    }
}

/// VmRSS from the text of /proc/PID/status, in bytes.
pub fn rss_from_status(status: &str) -> Option<u64> {
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// utime + stime from the text of /proc/PID/stat, in seconds. The command
/// name in parentheses may hold spaces, so fields count from its `)`.
pub fn cpu_from_stat(stat: &str, ticks_per_second: f64) -> Option<f64> {
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second)
}

/// USER_HZ: 100 on every Linux this runs on (the kernel ABI fixes it for
/// /proc), read from `getconf` in case a system differs.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A core on a fresh SQLite file.
pub struct Core {
    /// The core process.
    pub process: Process,
    /// `host:port` of its gRPC listener.
    pub grpc: String,
    /// `host:port` of its `/metrics`.
    pub metrics: String,
    dir: tempfile::TempDir,
}

impl Core {
    /// Starts a core on a fresh SQLite file with the programs'
    /// `synchronous` setting.
    pub fn start(programs: &Programs) -> anyhow::Result<Core> {
        Self::start_with(programs, None, &programs.synchronous)
    }

    /// Starts a core on `database_url` (`None`: a fresh SQLite file) with
    /// SQLite's `synchronous` (ignored on PostgreSQL).
    pub fn start_with(
        programs: &Programs,
        database_url: Option<&str>,
        synchronous: &str,
    ) -> anyhow::Result<Core> {
        Self::start_in(
            programs,
            programs.temp_dir()?,
            database_url,
            synchronous,
            &[],
        )
    }

    /// Starts a core on `database_url` with `extra` flags (such as `--bus`).
    pub fn start_with_flags(
        programs: &Programs,
        database_url: &str,
        extra: &[&str],
    ) -> anyhow::Result<Core> {
        Self::start_in(
            programs,
            programs.temp_dir()?,
            Some(database_url),
            &programs.synchronous,
            extra,
        )
    }

    /// Stops this core (kill -9) and starts another on the same SQLite
    /// file with `extra` flags.
    pub fn reopen(self, programs: &Programs, extra: &[&str]) -> anyhow::Result<Core> {
        let Core { process, dir, .. } = self;
        drop(process);
        Self::start_in(programs, dir, None, &programs.synchronous, extra)
    }

    fn start_in(
        programs: &Programs,
        dir: tempfile::TempDir,
        database_url: Option<&str>,
        synchronous: &str,
        extra: &[&str],
    ) -> anyhow::Result<Core> {
        let sqlite = format!("sqlite://{}", dir.path().join("notify.db").display());
        let url = database_url.unwrap_or(&sqlite);
        let mut command = notify_testkit::core::command(&programs.notify_bin()?, url);
        command
            .args(["--sqlite-synchronous", synchronous])
            .args(extra)
            .env("RUST_LOG", "warn");
        let (process, grpc, metrics) = notify_testkit::core::start(command)?;
        Ok(Core {
            process,
            grpc: grpc.to_string(),
            metrics: metrics.to_string(),
            dir,
        })
    }

    /// One counter of its `/metrics` (the sum over its labels matching
    /// `labels`, e.g. `sweep="expiry"`), read with a bare HTTP/1.0 GET.
    pub async fn counter(&self, name: &str, labels: &str) -> anyhow::Result<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.metrics).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: core\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        Ok(text
            .lines()
            .filter(|line| line.starts_with(name) && line.contains(labels))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// The directory holding the database (for the SQLite ceiling run).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A gRPC client on a connection of its own.
    pub async fn client(&self) -> anyhow::Result<notify_testkit::core::Client> {
        notify_testkit::core::client(self.grpc.parse()?).await
    }
}

/// A core and a bridge in front of it.
pub struct Stack {
    /// The bridge under test (declared first: dropped, so stopped, first).
    pub bridge: Process,
    /// The core.
    pub core: Core,
    /// `host:port` of the bridge's HTTP listener.
    pub http: String,
}

impl Stack {
    /// Starts a core, then `target`'s bridge on it.
    pub fn start(programs: &Programs, target: Target) -> anyhow::Result<Stack> {
        let core = Core::start(programs)?;
        let core_url = format!("http://{}", core.grpc);
        let (mut command, ready) = match target {
            Target::Ours => {
                let mut command = Command::new(programs.notify_bin()?);
                command
                    .args(["bridge", "--metrics-listen", "127.0.0.1:0"])
                    .env("RUST_LOG", "warn");
                (command, "notify bridge ready")
            }
            Target::Peer => {
                let mut command = Command::new("node");
                command.arg(&programs.peer_script);
                (command, "peer bridge ready")
            }
        };
        command
            .args(["--listen", "127.0.0.1:0", "--core-url", &core_url])
            .args(["--jwt-secret", SECRET]);
        let bridge = Process::start(command, ready)?;
        let http = bridge.field("http")?.to_owned();
        Ok(Stack { core, bridge, http })
    }

    /// Both processes' usage now: (core, bridge).
    pub fn usage(&self) -> (Usage, Usage) {
        (usage(&self.core.process), usage(&self.bridge))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_in_bytes() {
        let status = "Name:\tnotify\nVmPeak:\t  9000 kB\nVmRSS:\t  2048 kB\nThreads:\t4\n";
        assert_eq!(rss_from_status(status), Some(2048 * 1024));
        assert_eq!(rss_from_status("Name:\tx\n"), None);
    }

    #[test]
    fn cpu_counts_fields_after_a_name_with_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime ...
        let stat = "42 (node peer) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 11";
        assert_eq!(cpu_from_stat(stat, 100.0), Some(3.0));
        assert_eq!(cpu_from_stat("garbage", 100.0), None);
    }

    #[test]
    fn reads_our_own_usage() {
        let usage = Usage::of(std::process::id());
        assert!(usage.rss_bytes > 0);
    }
}
