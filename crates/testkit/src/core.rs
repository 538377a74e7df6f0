//! `notify core` on ephemeral loopback ports: its command line, stated
//! once for every test and benchmark, and clients for it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use notify::contract::proto::notification_service_client::NotificationServiceClient;
use tonic::transport::Channel;

use crate::Process;

/// A gRPC client for the core.
pub type Client = NotificationServiceClient<Channel>;

/// The ready line `notify core` prints once it listens.
pub const READY: &str = "notify core ready";

/// `notify core` on `database_url`, gRPC and `/metrics` on ports the
/// kernel picks, without an api token from the environment.
pub fn command(notify_bin: &Path, database_url: &str) -> Command {
    let mut command = Command::new(notify_bin);
    command
        .arg("core")
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--database-url", database_url])
        .env_remove("NOTIFY_API_TOKEN");
    command
}

/// Starts `command` (from [`command`], with any extra flags) and reads
/// its addresses from the ready line.
pub fn start(command: Command) -> anyhow::Result<(Process, SocketAddr, SocketAddr)> {
    let process = Process::start(command, READY)?;
    let grpc = process.addr("grpc")?;
    let metrics = process.addr("metrics")?;
    Ok((process, grpc, metrics))
}

/// A client on a connection of its own to the core at `addr`.
pub async fn client(addr: SocketAddr) -> anyhow::Result<Client> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connect to the core at {addr}"))?;
    Ok(NotificationServiceClient::new(channel))
}
