//! A throwaway `nats-server` (Debian's package) on a free loopback port,
//! for tests and benchmarks of the NATS bus.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where Debian puts the server; `NATS_SERVER` overrides it.
fn binary() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| "/usr/sbin/nats-server".to_owned())
}

/// A running `nats-server`, killed when dropped.
pub struct OwnNats {
    child: Child,
    port: u16,
}

impl OwnNats {
    /// Starts one on a port the kernel picks and waits until it listens.
    pub fn start() -> anyhow::Result<OwnNats> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {} (Debian package nats-server)", binary()))?;
        let mut nats = OwnNats { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = nats.child.try_wait()? {
                bail!("nats-server exited with {status}");
            }
            if Instant::now() > deadline {
                bail!("nats-server did not listen on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nats)
    }

    /// Its `nats://` URL, for `--bus`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OwnNats {
    /// One for a test, or `None` when Debian's `nats-server` is not
    /// installed (the test then passes without running). With
    /// `NOTIFY_REQUIRE_NATS` set (`scripts/test` sets it), a missing server
    /// is a failure, so CI cannot pass without the NATS cases.
    pub fn for_test() -> Option<OwnNats> {
        if !std::path::Path::new(&binary()).exists() {
            assert!(
                std::env::var_os("NOTIFY_REQUIRE_NATS").is_none(),
                "NOTIFY_REQUIRE_NATS is set but there is no {}",
                binary()
            );
            eprintln!("NATS case not run: install Debian's nats-server (scripts/test does)");
            return None;
        }
        Some(OwnNats::start().expect("a nats-server of the test's own"))
    }
}
