//! Core benchmarks against real `notify core` processes on loopback.
//!
//! `cargo bench --bench core` runs both scenarios; name one to run only it:
//!
//! - `creates`: 64 concurrent clients (one connection each) creating flat
//!   out, `synchronous=FULL` and `NORMAL` alternated round by round in one
//!   run, so the machine's noise falls on both alike. Reports creates/s and
//!   call latency, medians over rounds.
//! - `list`: 1,000,000 stored notifications over 10,000 users, then
//!   ListOffline on random users and pages from 1 client, then 16: p50/p99.
//! - `postgres` (only when named): the same 64-client creates on SQLite
//!   (FULL), on PostgreSQL with one core and with two cores sharing the
//!   database, round by round; it starts its own server with
//!   `scripts/postgres`.
//!
//! Knobs (environment): `BENCH_SECONDS` per round (default 5), `BENCH_ROUNDS`
//! (default 3), `BENCH_LIST_USERS` (10,000), `BENCH_LIST_PER_USER` (100).
//! Results: a Markdown table on stdout and `target/bench-results/core.json`.

#![allow(missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use notify::contract::proto::{self, notification_service_client::NotificationServiceClient};
use serde_json::json;
use tonic::transport::Channel;

type Client = NotificationServiceClient<Channel>;

struct Core {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Core {
    fn start(synchronous: &str) -> Core {
        Core::start_on(None, synchronous)
    }

    /// A core on `url`, or on a fresh SQLite file when `None`.
    fn start_on(url: Option<&str>, synchronous: &str) -> Core {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let url = url
            .map(str::to_owned)
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_notify"))
            .args([
                "core",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(["--database-url", &url, "--sqlite-synchronous", synchronous])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn notify core");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().expect("core exited").expect("read");
            if let Some(rest) = line.strip_prefix("notify core ready grpc=") {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        Core {
            child,
            addr,
            _dir: dir,
        }
    }

    async fn client(&self) -> Client {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        NotificationServiceClient::new(channel)
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn request(vendor_id: i64, n: u64) -> proto::CreateNotificationRequest {
    let content = json!({"message": "Product has been uploaded successfully", "data": {"id": n, "price": "22"}});
    let serde_json::Value::Object(map) = content else {
        unreachable!()
    };
    proto::CreateNotificationRequest {
        vendor_id: Some(vendor_id),
        r#type: "product:upload".into(),
        channel: proto::Channel::Push as i32,
        content: Some(notify::contract::convert::map_to_struct(map)),
        priority: 1,
        ..Default::default()
    }
}

struct CreatesRound {
    per_second: f64,
    p50_us: u64,
    p99_us: u64,
}

/// 64 clients, each on its own connection, creating flat out for `seconds`.
async fn creates_round(synchronous: &str, seconds: u64) -> CreatesRound {
    creates_on(&[Core::start(synchronous)], seconds).await
}

/// 64 clients spread over `cores`, creating flat out for `seconds`.
async fn creates_on(cores: &[Core], seconds: u64) -> CreatesRound {
    const CLIENTS: usize = 64;
    let mut clients = Vec::with_capacity(CLIENTS);
    for index in 0..CLIENTS {
        clients.push(cores[index % cores.len()].client().await);
    }
    let warmup = Duration::from_secs(1);
    let started = Instant::now();
    let measure_from = started + warmup;
    let until = measure_from + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (index, mut client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).unwrap();
            let mut n = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= until {
                    break;
                }
                // Spread over 1,000 recipients, as a shop's traffic would be.
                let vendor = (index as i64 * 7919 + n as i64) % 1000 + 1;
                client
                    .create_notification(request(vendor, n))
                    .await
                    .expect("create");
                n += 1;
                if sent >= measure_from {
                    histogram.record(micros(sent.elapsed())).unwrap();
                }
            }
            histogram
        }));
    }
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    for task in tasks {
        histogram.add(task.await.unwrap()).unwrap();
    }
    CreatesRound {
        per_second: histogram.len() as f64 / seconds as f64,
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
    }
}

async fn creates(seconds: u64, rounds: u64) -> serde_json::Value {
    let mut results = serde_json::Map::new();
    let mut table = Vec::new();
    let mut per_mode: Vec<(&str, Vec<CreatesRound>)> = vec![("full", vec![]), ("normal", vec![])];
    for round in 0..rounds {
        for (mode, collected) in per_mode.iter_mut() {
            let result = creates_round(mode, seconds).await;
            eprintln!(
                "creates round {round} synchronous={mode}: {:.0}/s p50 {} µs p99 {} µs",
                result.per_second, result.p50_us, result.p99_us
            );
            collected.push(result);
        }
    }
    let mut medians = Vec::new();
    for (mode, collected) in &per_mode {
        let rate = median(&mut collected.iter().map(|r| r.per_second).collect::<Vec<_>>());
        let p50 = median(
            &mut collected
                .iter()
                .map(|r| r.p50_us as f64)
                .collect::<Vec<_>>(),
        );
        let p99 = median(
            &mut collected
                .iter()
                .map(|r| r.p99_us as f64)
                .collect::<Vec<_>>(),
        );
        medians.push(rate);
        table.push(format!(
            "| {} | {rate:.0} | {:.2} | {:.2} |",
            mode.to_uppercase(),
            p50 / 1000.0,
            p99 / 1000.0
        ));
        results.insert(
            mode.to_string(),
            json!({"creates_per_second": rate, "p50_ms": p50 / 1000.0, "p99_ms": p99 / 1000.0,
                   "rounds": collected.iter().map(|r| r.per_second).collect::<Vec<_>>()}),
        );
    }
    println!("\n### creates, 64 concurrent clients ({rounds} rounds of {seconds} s, medians)\n");
    println!("| synchronous | creates/s | p50 ms | p99 ms |\n| --- | --- | --- | --- |");
    for row in table {
        println!("{row}");
    }
    println!("\nNORMAL / FULL = {:.2}", medians[1] / medians[0]);
    serde_json::Value::Object(results)
}

async fn list(seconds: u64) -> serde_json::Value {
    let users = env_number("BENCH_LIST_USERS", 10_000) as i64;
    let per_user = env_number("BENCH_LIST_PER_USER", 100);
    let core = Core::start("full");
    let client = core.client().await;

    // Seed with CreateNotifications: one call reaches 1,000 users.
    let seeding = Instant::now();
    let recipients: Vec<Vec<proto::Recipient>> = (1..=users)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&id| proto::Recipient {
                    vendor_id: Some(id),
                    customer_id: None,
                })
                .collect()
        })
        .collect();
    let mut seeders = Vec::new();
    for worker in 0..4u64 {
        let mut client = client.clone();
        let recipients = recipients.clone();
        seeders.push(tokio::spawn(async move {
            for round in (worker..per_user).step_by(4) {
                for chunk in &recipients {
                    let template = request(1, round);
                    client
                        .create_notifications(proto::CreateNotificationsRequest {
                            recipients: chunk.clone(),
                            r#type: template.r#type,
                            channel: template.channel,
                            content: template.content,
                            priority: template.priority,
                            idempotency_key: String::new(),
                        })
                        .await
                        .expect("seed");
                }
            }
        }));
    }
    for seeder in seeders {
        seeder.await.unwrap();
    }
    let stored = users as u64 * per_user;
    let seed_seconds = seeding.elapsed().as_secs_f64();
    eprintln!(
        "seeded {stored} notifications in {seed_seconds:.1} s ({:.0}/s through CreateNotifications)",
        stored as f64 / seed_seconds
    );

    let mut phases = serde_json::Map::new();
    println!("\n### ListOffline, {stored} stored over {users} users, {seconds} s per phase\n");
    println!("| clients | calls/s | p50 ms | p99 ms |\n| --- | --- | --- | --- |");
    for clients in [1u64, 16] {
        let (rate, p50, p99) = list_phase(&client, clients, users, per_user, seconds).await;
        println!("| {clients} | {rate:.0} | {p50:.2} | {p99:.2} |");
        phases.insert(
            format!("clients_{clients}"),
            json!({"calls_per_second": rate, "p50_ms": p50, "p99_ms": p99}),
        );
    }
    json!({"stored": stored, "users": users, "seed_per_second": stored as f64 / seed_seconds,
           "phases": phases})
}

/// `clients` concurrent callers reading random users and pages.
async fn list_phase(
    client: &Client,
    clients: u64,
    users: i64,
    per_user: u64,
    seconds: u64,
) -> (f64, f64, f64) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).unwrap();
            let mut state = (worker + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            while Instant::now() < until {
                // xorshift: cheap, repeatable user and page choice.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let user = (state % users as u64) as i64 + 1;
                let pages = per_user.div_ceil(20).max(1);
                let page = ((state >> 32) % pages) as i32 + 1;
                let sent = Instant::now();
                let response = client
                    .list_offline(proto::ListOfflineRequest {
                        vendor_id: Some(user),
                        page: Some(page),
                        limit: Some(20),
                        ..Default::default()
                    })
                    .await
                    .expect("list");
                histogram.record(micros(sent.elapsed())).unwrap();
                assert!(!response.into_inner().items.is_empty());
            }
            histogram
        }));
    }
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    for task in tasks {
        histogram.add(task.await.unwrap()).unwrap();
    }
    (
        histogram.len() as f64 / seconds as f64,
        histogram.value_at_quantile(0.5) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
    )
}

/// A throwaway PostgreSQL server (scripts/postgres), stopped on drop.
struct Postgres {
    url: String,
    dir: tempfile::TempDir,
}

impl Postgres {
    fn start() -> Postgres {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let url = Self::script("start", &dir);
        Postgres { url, dir }
    }

    fn script(action: &str, dir: &tempfile::TempDir) -> String {
        let output = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres"))
            .args([action, &dir.path().join("pg").display().to_string()])
            .output()
            .expect("scripts/postgres");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    async fn database(&self) -> String {
        use sqlx::Connection;
        let name = format!("bench_{}", notify_store::new_object_id());
        let mut connection = sqlx::PgConnection::connect(&self.url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut connection)
            .await
            .unwrap();
        format!("{}/{name}", self.url.rsplit_once('/').unwrap().0)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        Self::script("stop", &self.dir);
    }
}

/// SQLite (FULL) against PostgreSQL with one and two cores, round by round.
async fn postgres(seconds: u64, rounds: u64) -> serde_json::Value {
    let server = Postgres::start();
    let setups = [
        "sqlite FULL, 1 core",
        "postgres, 1 core",
        "postgres, 2 cores",
    ];
    let mut collected: Vec<Vec<CreatesRound>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (index, setup) in setups.iter().enumerate() {
            let result = match index {
                0 => creates_round("full", seconds).await,
                1 => {
                    let url = server.database().await;
                    creates_on(&[Core::start_on(Some(&url), "full")], seconds).await
                }
                _ => {
                    let url = server.database().await;
                    let cores = [
                        Core::start_on(Some(&url), "full"),
                        Core::start_on(Some(&url), "full"),
                    ];
                    creates_on(&cores, seconds).await
                }
            };
            eprintln!(
                "backends round {round} {setup}: {:.0}/s p50 {} µs p99 {} µs",
                result.per_second, result.p50_us, result.p99_us
            );
            collected[index].push(result);
        }
    }
    println!("\n### creates by backend, 64 clients ({rounds} rounds of {seconds} s, medians)\n");
    println!("| setup | creates/s | p50 ms | p99 ms |\n| --- | --- | --- | --- |");
    let mut results = serde_json::Map::new();
    let mut rates = Vec::new();
    for (setup, rounds) in setups.iter().zip(&collected) {
        let rate = median(&mut rounds.iter().map(|r| r.per_second).collect::<Vec<_>>());
        let p50 = median(&mut rounds.iter().map(|r| r.p50_us as f64).collect::<Vec<_>>()) / 1000.0;
        let p99 = median(&mut rounds.iter().map(|r| r.p99_us as f64).collect::<Vec<_>>()) / 1000.0;
        rates.push(rate);
        println!("| {setup} | {rate:.0} | {p50:.2} | {p99:.2} |");
        results.insert(
            setup.to_string(),
            json!({"creates_per_second": rate, "p50_ms": p50, "p99_ms": p99}),
        );
    }
    println!(
        "\npostgres 1 core / sqlite = {:.2}; postgres 2 cores / 1 core = {:.2}",
        rates[1] / rates[0],
        rates[2] / rates[1]
    );
    serde_json::Value::Object(results)
}

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |name: &str| only.is_empty() || only.iter().any(|a| a == name);
    let seconds = env_number("BENCH_SECONDS", 5);
    let rounds = env_number("BENCH_ROUNDS", 3);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut results = serde_json::Map::new();
    runtime.block_on(async {
        if wants("creates") {
            results.insert("creates".into(), creates(seconds, rounds).await);
        }
        if wants("list") {
            results.insert("list".into(), list(seconds * 2).await);
        }
        // Needs Debian's postgresql (scripts/test installs it): only on request.
        if only.iter().any(|a| a == "postgres") {
            results.insert("postgres".into(), postgres(seconds, rounds).await);
        }
    });
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("bench-results");
    std::fs::create_dir_all(&dir).expect("results dir");
    let path = dir.join("core.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap()).expect("write results");
    println!("\nresults written to {}", path.display());
}
