//! A child process that printed its ready line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a process may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running child whose ready line was read; killed when dropped.
pub struct Process {
    child: Child,
    fields: Vec<(String, String)>,
}

impl Process {
    /// Spawns `command` with stdout piped and waits for a stdout line that
    /// starts with `ready` (such as `notify core ready`), keeping its
    /// `key=value` words. stdout is drained afterwards, so the child never
    /// blocks on a full pipe; stderr is left as the command has it.
    pub fn start(mut command: Command, ready: &str) -> anyhow::Result<Process> {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {command:?}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (sender, receiver) = std::sync::mpsc::channel();
        let prefix = ready.to_owned();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && let Some(rest) = line.strip_prefix(&prefix) {
                    let _ = sender.send(rest.to_owned());
                    sent = true;
                }
            }
        });
        let mut process = Process {
            child,
            fields: Vec::new(),
        };
        let line = receiver.recv_timeout(READY_TIMEOUT).with_context(|| {
            format!(
                "the process exited or did not print {ready:?} within {} s",
                READY_TIMEOUT.as_secs()
            )
        })?;
        process.fields = line
            .split_whitespace()
            .filter_map(|word| word.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(process)
    }

    /// A `key=value` word of the ready line.
    pub fn field(&self, name: &str) -> anyhow::Result<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .with_context(|| format!("no {name}= in the ready line"))
    }

    /// A `key=ADDR` word of the ready line as an address.
    pub fn addr(&self, name: &str) -> anyhow::Result<SocketAddr> {
        let text = self.field(name)?;
        text.parse()
            .with_context(|| format!("{name}={text} is not an address"))
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child, for its stderr or exit status.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends a signal by name (`TERM`, `STOP`, `CONT`, …).
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .context("run kill")?;
        if !status.success() {
            bail!("kill -{name} {} failed", self.child.id());
        }
        Ok(())
    }

    /// SIGKILL: no goodbye, no flush.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status, once the process has exited within `patience`.
    /// Polls without blocking, so an async caller's runtime keeps serving
    /// the connections the process may be draining.
    pub async fn exit_within(&mut self, patience: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "still running {} s after it was told to stop",
                    patience.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}
