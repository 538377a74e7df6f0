//! Bridge benchmarks against real `notify core` and `notify bridge`
//! processes on loopback, with a minimal Socket.IO v5 client over WebSocket
//! (it answers pings and server-requested acks, as browsers do).
//!
//! `cargo bench --bench bridge` runs both scenarios; name one to run only it:
//!
//! - `idle`: connect 1,000 then 10,000 sockets, each its own user (so each
//!   holds its own core stream: the costly case), and read the bridge's
//!   resident memory per socket at each step.
//! - `fanout`: 1,000 connected sockets, 1,000 notifications/s spread over
//!   them for `BENCH_SECONDS` (default 10): create→receive latency
//!   p50/p99/max, as measured by the receiving client.
//!
//! Results: a Markdown table on stdout and `target/bench-results/bridge.json`.

#![allow(missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use notify::proto::{self, notification_service_client::NotificationServiceClient};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "bench-secret-of-at-least-16-bytes";

struct Process {
    child: Child,
    fields: Vec<(String, String)>,
}

impl Process {
    fn start(args: &[&str], ready: &str) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_notify"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn notify");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let fields = loop {
            let line = lines.next().expect("process exited").expect("read");
            if let Some(rest) = line.strip_prefix(ready) {
                break rest
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
            }
        };
        Process { child, fields }
    }

    fn field(&self, name: &str) -> String {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .expect("field in ready line")
    }

    /// Resident memory in bytes, from /proc.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmRSS")
    }

    /// User + system CPU seconds, from /proc.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("read /proc stat");
        let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Stack {
    core: Process,
    bridge: Process,
    _dir: tempfile::TempDir,
}

impl Stack {
    fn start() -> Stack {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let core = Process::start(
            &[
                "core",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--database-url",
                &url,
            ],
            "notify core ready",
        );
        let core_url = format!("http://{}", core.field("grpc"));
        let bridge = Process::start(
            &[
                "bridge",
                "--listen",
                "127.0.0.1:0",
                "--core-url",
                &core_url,
                "--jwt-secret",
                SECRET,
            ],
            "notify bridge ready",
        );
        Stack {
            core,
            bridge,
            _dir: dir,
        }
    }
}

fn token(vendor: i64) -> String {
    notify::bridge::auth::Jwt::new(SECRET.as_bytes()).issue(
        notify_store::User::vendor(vendor),
        Duration::from_secs(3600),
    )
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Splits `42/notification,17["event",data]` into (ack id, event, data).
fn parse_event(text: &str) -> Option<(Option<u64>, String, Value)> {
    let rest = text.strip_prefix("42/notification,")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack = rest[..digits].parse().ok();
    let Value::Array(mut parts) = serde_json::from_str(&rest[digits..]).ok()? else {
        return None;
    };
    let data = if parts.len() > 1 {
        parts.remove(1)
    } else {
        Value::Null
    };
    let event = parts.first()?.as_str()?.to_owned();
    Some((ack, event, data))
}

/// One Socket.IO client: connects, answers pings and acks, records the
/// latency of each `notification` from its `content.sentAt`.
async fn socket_client(
    url: String,
    token: String,
    ready: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> Histogram<u64> {
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket");
    let mut counted = false;
    loop {
        let message = tokio::select! {
            _ = stop.changed() => break,
            message = ws.next() => message,
        };
        let Some(Ok(message)) = message else { break };
        let Message::Text(text) = message else {
            continue;
        };
        let text = text.as_str();
        if text.starts_with('0') {
            let auth = json!({"token": token}).to_string();
            ws.send(Message::text(format!("40/notification,{auth}")))
                .await
                .ok();
        } else if text == "2" {
            ws.send(Message::text("3")).await.ok();
        } else if text.starts_with("44/notification") {
            panic!("connection refused: {text}");
        } else if let Some((ack, event, data)) = parse_event(text) {
            if event == "notification"
                && let Some(sent) = data["content"]["sentAt"].as_u64()
            {
                histogram
                    .record(now_micros().saturating_sub(sent).max(1))
                    .unwrap();
            }
            if event == "unreadCount" && !counted {
                counted = true;
                ready.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(id) = ack {
                ws.send(Message::text(format!("43/notification,{id}[]")))
                    .await
                    .ok();
            }
        }
    }
    let _ = ws.close(None).await;
    histogram
}

struct Sockets {
    tasks: Vec<tokio::task::JoinHandle<Histogram<u64>>>,
    ready: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
}

impl Sockets {
    fn new() -> Sockets {
        Sockets {
            tasks: Vec::new(),
            ready: Arc::new(AtomicUsize::new(0)),
            stop: watch::Sender::new(false),
        }
    }

    /// Opens sockets for vendors `from..to`, with at most 200 handshakes
    /// in flight, and waits until each has had its connect-time payloads.
    async fn open(&mut self, addr: &str, from: i64, to: i64) {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let deadline = Instant::now() + Duration::from_secs(180);
        let wait_for = |count: usize| {
            let ready = self.ready.clone();
            async move {
                while ready.load(Ordering::Relaxed) < count && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        for vendor in from..to {
            let opened = (vendor - 1) as usize;
            wait_for(opened.saturating_sub(200)).await;
            self.tasks.push(tokio::spawn(socket_client(
                url.clone(),
                token(vendor),
                self.ready.clone(),
                self.stop.subscribe(),
            )));
        }
        wait_for((to - 1) as usize).await;
    }

    async fn close(self) -> Histogram<u64> {
        let _ = self.stop.send(true);
        let mut histogram = Histogram::<u64>::new(3).unwrap();
        for task in self.tasks {
            if let Ok(h) = task.await {
                histogram.add(h).unwrap();
            }
        }
        histogram
    }
}

async fn idle() -> Value {
    let stack = Stack::start();
    let addr = stack.bridge.field("http");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = stack.bridge.rss();
    let mut sockets = Sockets::new();
    let mut rows = Vec::new();
    let mut previous = 1;
    for target in [1_000i64, 10_000] {
        let started = Instant::now();
        sockets.open(&addr, previous, target + 1).await;
        let connected = sockets.ready.load(Ordering::Relaxed);
        let ramp = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = stack.bridge.rss();
        let per_socket = (rss.saturating_sub(baseline)) as f64 / connected as f64;
        eprintln!(
            "idle: {connected} sockets in {ramp:.1} s, bridge RSS {} MiB, {:.1} KiB per socket, core RSS {} MiB",
            rss >> 20,
            per_socket / 1024.0,
            stack.core.rss() >> 20
        );
        rows.push(
            json!({"sockets": connected, "bridge_rss_bytes": rss, "bridge_baseline_bytes": baseline,
                         "bytes_per_socket": per_socket, "core_rss_bytes": stack.core.rss(),
                         "ramp_seconds": ramp}),
        );
        previous = target + 1;
    }
    sockets.close().await;
    println!("\n### idle sockets (each its own user)\n");
    println!(
        "| sockets | bridge RSS MiB | KiB per socket | core RSS MiB |\n| --- | --- | --- | --- |"
    );
    for row in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} |",
            row["sockets"],
            row["bridge_rss_bytes"].as_f64().unwrap() / 1048576.0,
            row["bytes_per_socket"].as_f64().unwrap() / 1024.0,
            row["core_rss_bytes"].as_f64().unwrap() / 1048576.0
        );
    }
    Value::Array(rows)
}

async fn fanout(seconds: u64) -> Value {
    const SOCKETS: i64 = 1_000;
    const RATE: u64 = 1_000;
    let stack = Stack::start();
    let addr = stack.bridge.field("http");
    let mut sockets = Sockets::new();
    sockets.open(&addr, 1, SOCKETS + 1).await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", stack.core.field("grpc")))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let client = NotificationServiceClient::new(channel);
    let cpu_before = (stack.core.cpu_seconds(), stack.bridge.cpu_seconds());
    let started = Instant::now();
    // 10 senders, each ticking at RATE / 10.
    let mut senders = Vec::new();
    for sender in 0..10u64 {
        let mut client = client.clone();
        senders.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(10_000_000 / RATE));
            let mut sent = 0u64;
            let until = Instant::now() + Duration::from_secs(seconds);
            let mut n = sender;
            while Instant::now() < until {
                tick.tick().await;
                let vendor = (n % SOCKETS as u64) as i64 + 1;
                n += 10;
                let content = json!({"message": "bench", "sentAt": now_micros()});
                let Value::Object(map) = content else {
                    unreachable!()
                };
                client
                    .create_notification(proto::CreateNotificationRequest {
                        vendor_id: Some(vendor),
                        r#type: "bench:fanout".into(),
                        content: Some(notify::core::convert::map_to_struct(map)),
                        ..Default::default()
                    })
                    .await
                    .expect("create");
                sent += 1;
            }
            sent
        }));
    }
    let mut created = 0;
    for sender in senders {
        created += sender.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_after = (stack.core.cpu_seconds(), stack.bridge.cpu_seconds());
    let histogram = sockets.close().await;
    let (p50, p99, max) = (
        histogram.value_at_quantile(0.5) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        histogram.max() as f64 / 1000.0,
    );
    println!("\n### fanout: {SOCKETS} sockets, {RATE} notifications/s for {seconds} s\n");
    println!(
        "| created | received | created/s | p50 ms | p99 ms | max ms | core CPU s | bridge CPU s |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let core_cpu = cpu_after.0 - cpu_before.0;
    let bridge_cpu = cpu_after.1 - cpu_before.1;
    println!(
        "| {created} | {} | {:.0} | {p50:.2} | {p99:.2} | {max:.2} | {core_cpu:.2} | {bridge_cpu:.2} |",
        histogram.len(),
        created as f64 / elapsed
    );
    json!({"sockets": SOCKETS, "target_rate": RATE, "created": created, "received": histogram.len(),
           "p50_ms": p50, "p99_ms": p99, "max_ms": max, "core_cpu_seconds": core_cpu,
           "bridge_cpu_seconds": bridge_cpu})
}

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |name: &str| only.is_empty() || only.iter().any(|a| a == name);
    // 10,000 sockets need more descriptors than the usual 1,024; the
    // bridge and core inherit the raised limit.
    let limit = rlimit::increase_nofile_limit(65_536).expect("raise the open-file limit");
    assert!(
        limit >= 12_000,
        "open-file limit {limit} is too low for 10,000 sockets"
    );
    let seconds = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut results = serde_json::Map::new();
    runtime.block_on(async {
        if wants("idle") {
            results.insert("idle".into(), idle().await);
        }
        if wants("fanout") {
            results.insert("fanout".into(), fanout(seconds).await);
        }
    });
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("bench-results");
    std::fs::create_dir_all(&dir).expect("results dir");
    let path = dir.join("bridge.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap()).expect("write results");
    println!("\nresults written to {}", path.display());
}
