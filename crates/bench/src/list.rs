//! ListOffline over a large store: `users × per_user` notifications seeded
//! through CreateNotifications (one call reaches 1,000 users), then random
//! users and pages read by 1 client, then by 16.

use std::time::{Duration, Instant};

use anyhow::Context;
use notify::contract::proto;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::report::Table;
use crate::stack::{Core, Programs};
use crate::stats::{Latency, Recorder};

/// The reader counts measured, one phase each.
pub const READERS: [usize; 2] = [1, 16];

/// One phase's readers and what they saw.
#[derive(Debug, Clone, Serialize)]
pub struct ListRow {
    /// Concurrent readers.
    pub clients: usize,
    /// Pages read per second.
    pub calls_per_second: f64,
    /// Per-call latency.
    pub latency: Latency,
}

/// The store read and each phase.
#[derive(Debug, Clone, Serialize)]
pub struct ListReport {
    /// Notifications stored.
    pub stored: u64,
    /// Users they are spread over.
    pub users: u64,
    /// How fast CreateNotifications seeded them.
    pub seed_per_second: f64,
    /// One row per reader count.
    pub rows: Vec<ListRow>,
}

/// Seeds the store, then reads it.
pub async fn run(
    programs: &Programs,
    users: u64,
    per_user: u64,
    seconds: f64,
) -> anyhow::Result<ListReport> {
    let core = Core::start(programs)?;
    let seed_per_second = seed(&core, users, per_user, |_| "bench:list").await?;
    let stored = users * per_user;
    eprintln!("list: seeded {stored} notifications ({seed_per_second:.0}/s)");
    let mut rows = Vec::new();
    for clients in READERS {
        let row = phase(&core, clients, users, per_user, seconds).await?;
        eprintln!(
            "list: {clients} readers: {:.0}/s p50 {:.2} ms p99 {:.2} ms",
            row.calls_per_second, row.latency.p50_ms, row.latency.p99_ms
        );
        rows.push(row);
    }
    Ok(ListReport {
        stored,
        users,
        seed_per_second,
        rows,
    })
}

/// Gives vendors `1..=users` `per_user` notifications each through
/// CreateNotifications (one call reaches 1,000 users) from 4 clients, round
/// `n` of type `kind(n)`; answers the notifications stored per second.
pub async fn seed(
    core: &Core,
    users: u64,
    per_user: u64,
    kind: fn(u64) -> &'static str,
) -> anyhow::Result<f64> {
    let seeding = Instant::now();
    let mut seeders = JoinSet::new();
    for worker in 0..4 {
        let mut client = core.client().await?;
        seeders.spawn(async move {
            for round in (worker..per_user).step_by(4) {
                for first in (1..=users).step_by(1000) {
                    let last = (first + 999).min(users);
                    client
                        .create_notifications(proto::CreateNotificationsRequest {
                            recipients: notify_testkit::requests::vendors(
                                first as i64..=last as i64,
                            ),
                            r#type: kind(round).into(),
                            content: Some(notify_testkit::requests::to_struct(
                                serde_json::json!({"message": "seed", "round": round}),
                            )),
                            ..Default::default()
                        })
                        .await
                        .context("seed")?;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(seeded) = seeders.join_next().await {
        seeded??;
    }
    Ok((users * per_user) as f64 / seeding.elapsed().as_secs_f64())
}

/// `clients` readers of random users and pages for `seconds`.
async fn phase(
    core: &Core,
    clients: usize,
    users: u64,
    per_user: u64,
    seconds: f64,
) -> anyhow::Result<ListRow> {
    let calls = Recorder::default();
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let pages = per_user.div_ceil(20).max(1);
    let mut readers = JoinSet::new();
    for worker in 0..clients as u64 {
        let mut client = core.client().await?;
        let calls = calls.clone();
        readers.spawn(async move {
            // xorshift: a cheap, repeatable choice of user and page.
            let mut state = (worker + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            while Instant::now() < until {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let sent = Instant::now();
                let page = client
                    .list_offline(proto::ListOfflineRequest {
                        vendor_id: Some((state % users) as i64 + 1),
                        page: Some(((state >> 32) % pages) as i32 + 1),
                        limit: Some(20),
                        ..Default::default()
                    })
                    .await
                    .context("ListOffline")?;
                calls.record(sent.elapsed().as_micros() as u64);
                anyhow::ensure!(!page.into_inner().items.is_empty(), "an empty page");
            }
            anyhow::Ok(())
        });
    }
    while let Some(read) = readers.join_next().await {
        read??;
    }
    let latency = calls.take();
    Ok(ListRow {
        clients,
        calls_per_second: latency.count as f64 / started.elapsed().as_secs_f64(),
        latency,
    })
}

/// One row per reader count.
pub fn table(report: &ListReport) -> Table {
    let mut table = Table::new(&["readers", "calls/s", "p50 ms", "p99 ms"]);
    for row in &report.rows {
        table.row(vec![
            row.clients.to_string(),
            format!("{:.0}", row.calls_per_second),
            format!("{:.2}", row.latency.p50_ms),
            format!("{:.2}", row.latency.p99_ms),
        ]);
    }
    table
}
