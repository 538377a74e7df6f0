//! The scenarios, each one command: `idle`, `fanout`, `broadcast`,
//! `creates`, and `sweep`, which runs idle and fanout over growing sockets
//! and rates for both bridges and draws the charts.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::ceiling;
use crate::load::{self, Created, Offer, Ramp, Sockets};
use crate::report::Table;
use crate::stack::{Core, Programs, Stack, Target, Usage, usage};
use crate::stats::{Latency, median};

/// Memory after `sockets` idle sockets, each its own user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleRow {
    /// Which bridge.
    pub target: Target,
    /// Sockets connected and ready.
    pub sockets: usize,
    /// Seconds to open them (from the previous step).
    pub ramp_seconds: f64,
    /// Bridge RSS with no sockets.
    pub bridge_baseline_bytes: u64,
    /// Bridge RSS now.
    pub bridge_rss_bytes: u64,
    /// (RSS − baseline) / sockets.
    pub bytes_per_socket: f64,
    /// Core RSS now (it holds one stream per user).
    pub core_rss_bytes: u64,
    /// Core RSS with no sockets.
    #[serde(default)]
    pub core_baseline_bytes: u64,
    /// What a connected user costs the whole system: (bridge + core RSS −
    /// both baselines) / sockets.
    #[serde(default)]
    pub all_in_bytes_per_user: f64,
}

/// Connects `steps` sockets in turn (cumulative) and reads memory at each.
pub async fn idle(
    programs: &Programs,
    target: Target,
    steps: &[usize],
    ramp: Ramp,
) -> anyhow::Result<Vec<IdleRow>> {
    let stack = Stack::start(programs, target)?;
    let mut sockets = Sockets::default();
    let rows = idle_steps(&stack, &mut sockets, target, steps, ramp).await;
    sockets.close().await;
    rows
}

async fn idle_steps(
    stack: &Stack,
    sockets: &mut Sockets,
    target: Target,
    steps: &[usize],
    ramp: Ramp,
) -> anyhow::Result<Vec<IdleRow>> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (core_baseline, bridge_baseline) = stack.usage();
    let (core_baseline, baseline) = (core_baseline.rss_bytes, bridge_baseline.rss_bytes);
    let mut rows = Vec::new();
    for &total in steps {
        let started = Instant::now();
        sockets.open_until(&stack.http, total, ramp).await?;
        let ramp_seconds = started.elapsed().as_secs_f64();
        // Let allocations settle (buffers shrink, presence writes land).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (core, bridge) = stack.usage();
        let ready = sockets.ready().max(1) as f64;
        let grown = bridge.rss_bytes.saturating_sub(baseline)
            + core.rss_bytes.saturating_sub(core_baseline);
        let row = IdleRow {
            target,
            sockets: sockets.ready(),
            ramp_seconds,
            bridge_baseline_bytes: baseline,
            bridge_rss_bytes: bridge.rss_bytes,
            bytes_per_socket: bridge.rss_bytes.saturating_sub(baseline) as f64 / ready,
            core_rss_bytes: core.rss_bytes,
            core_baseline_bytes: core_baseline,
            all_in_bytes_per_user: grown as f64 / ready,
        };
        eprintln!(
            "idle {}: {} sockets in {:.1} s, bridge {} MiB ({:.1} KiB/socket), core {} MiB, all in {:.1} KiB/user",
            target.name(),
            row.sockets,
            row.ramp_seconds,
            row.bridge_rss_bytes >> 20,
            row.bytes_per_socket / 1024.0,
            row.core_rss_bytes >> 20,
            row.all_in_bytes_per_user / 1024.0
        );
        rows.push(row);
    }
    Ok(rows)
}

/// The idle table.
pub fn idle_table(rows: &[IdleRow]) -> Table {
    let mut table = Table::new(&[
        "bridge",
        "sockets",
        "ramp s",
        "bridge RSS MiB",
        "KiB per socket",
        "core RSS MiB",
        "all-in KiB per user",
    ]);
    for row in rows {
        table.row(vec![
            row.target.name().into(),
            row.sockets.to_string(),
            format!("{:.1}", row.ramp_seconds),
            mib(row.bridge_rss_bytes),
            format!("{:.1}", row.bytes_per_socket / 1024.0),
            mib(row.core_rss_bytes),
            format!("{:.1}", row.all_in_bytes_per_user / 1024.0),
        ]);
    }
    table
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1_048_576.0)
}

/// One measured phase of steady load over connected sockets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutRow {
    /// Which bridge.
    pub target: Target,
    /// Sockets connected (one per user).
    pub sockets: usize,
    /// Notifications per second offered.
    pub offered_rate: u64,
    /// What the gRPC side created.
    pub created: Created,
    /// Notifications the sockets received.
    pub delivered: u64,
    /// Delivered ÷ (sending time + time to drain).
    pub delivered_per_second: f64,
    /// Create→receive, as the receiving socket measured it.
    pub latency: Latency,
    /// CPU seconds the bridge spent in the phase.
    pub bridge_cpu_seconds: f64,
    /// CPU seconds the core spent in the phase.
    pub core_cpu_seconds: f64,
    /// Bridge CPU microseconds per delivered notification.
    pub bridge_cpu_us_per_delivered: f64,
    /// Core CPU microseconds per delivered notification.
    #[serde(default)]
    pub core_cpu_us_per_delivered: f64,
    /// Bridge RSS at the end of the phase.
    pub bridge_rss_bytes: u64,
    /// Core RSS at the end of the phase.
    pub core_rss_bytes: u64,
}

/// Offers `rate` notifications/s for `seconds` over the connected sockets,
/// then waits for the stragglers (up to 10 s without progress).
async fn fanout_phase(
    stack: &Stack,
    sockets: &Sockets,
    target: Target,
    offer: Offer,
) -> anyhow::Result<FanoutRow> {
    sockets.latency().take();
    let (core_before, bridge_before) = stack.usage();
    let started = Instant::now();
    let created = load::create(&[&stack.core], offer).await?;
    let mut last = (sockets.latency().count(), Instant::now());
    while sockets.latency().count() < created.created && last.1.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let count = sockets.latency().count();
        if count != last.0 {
            last = (count, Instant::now());
        }
    }
    let drained = started.elapsed().as_secs_f64();
    let latency = sockets.latency().take();
    let (core_after, bridge_after) = stack.usage();
    let cpu = |after: Usage, before: Usage| after.cpu_seconds - before.cpu_seconds;
    let bridge_cpu = cpu(bridge_after, bridge_before);
    let core_cpu = cpu(core_after, core_before);
    let row = FanoutRow {
        target,
        sockets: sockets.ready(),
        offered_rate: offer.rate,
        created,
        delivered: latency.count,
        delivered_per_second: latency.count as f64 / drained,
        latency,
        bridge_cpu_seconds: bridge_cpu,
        core_cpu_seconds: core_cpu,
        bridge_cpu_us_per_delivered: bridge_cpu * 1e6 / latency.count.max(1) as f64,
        core_cpu_us_per_delivered: core_cpu * 1e6 / latency.count.max(1) as f64,
        bridge_rss_bytes: bridge_after.rss_bytes,
        core_rss_bytes: core_after.rss_bytes,
    };
    eprintln!(
        "fanout {} {} sockets @{}/s: created {} ({:.0}/s), delivered {} ({:.0}/s), p50 {:.2} p99 {:.2} max {:.2} ms, bridge {:.1} µs and core {:.1} µs CPU/notification",
        target.name(),
        row.sockets,
        offer.rate,
        row.created.created,
        row.created.per_second,
        row.delivered,
        row.delivered_per_second,
        latency.p50_ms,
        latency.p99_ms,
        latency.max_ms,
        row.bridge_cpu_us_per_delivered,
        row.core_cpu_us_per_delivered
    );
    Ok(row)
}

/// Fails when a phase lost notifications: every created notification must
/// reach its one connected socket.
pub fn check_delivery(row: &FanoutRow) -> anyhow::Result<()> {
    if row.delivered < row.created.created {
        bail!(
            "{}: {} created but only {} delivered",
            row.target.name(),
            row.created.created,
            row.delivered
        );
    }
    Ok(())
}

/// Steady load at each of `rates` over `sockets` sockets; stops early once
/// p99 passes `stop_p99_ms` or delivery falls under 90 % of the offer.
pub async fn fanout(
    programs: &Programs,
    target: Target,
    sockets_wanted: usize,
    rates: &[u64],
    offer: Offer,
    ramp: Ramp,
    stop_p99_ms: f64,
) -> anyhow::Result<(Option<IdleRow>, Vec<FanoutRow>)> {
    let stack = Stack::start(programs, target)?;
    let mut sockets = Sockets::default();
    let result = async {
        let idle = idle_steps(&stack, &mut sockets, target, &[sockets_wanted], ramp)
            .await?
            .pop();
        let mut rows = Vec::new();
        for &rate in rates {
            let offer = Offer {
                rate,
                users: sockets_wanted as u64,
                ..offer
            };
            let row = fanout_phase(&stack, &sockets, target, offer).await?;
            let saturated = row.latency.p99_ms > stop_p99_ms
                || (rate > 0 && row.delivered_per_second < 0.9 * rate as f64);
            rows.push(row);
            if saturated {
                break;
            }
        }
        anyhow::Ok((idle, rows))
    }
    .await;
    sockets.close().await;
    result
}

/// The fanout table.
pub fn fanout_table(rows: &[FanoutRow]) -> Table {
    let mut table = Table::new(&[
        "bridge",
        "sockets",
        "offered/s",
        "created/s",
        "delivered/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "bridge CPU µs/notification",
        "core CPU µs/notification",
        "bridge CPU s",
        "core CPU s",
        "bridge RSS MiB",
    ]);
    for row in rows {
        table.row(vec![
            row.target.name().into(),
            row.sockets.to_string(),
            if row.offered_rate == 0 {
                "max".into()
            } else {
                row.offered_rate.to_string()
            },
            format!("{:.0}", row.created.per_second),
            format!("{:.0}", row.delivered_per_second),
            format!("{:.2}", row.latency.p50_ms),
            format!("{:.2}", row.latency.p90_ms),
            format!("{:.2}", row.latency.p99_ms),
            format!("{:.2}", row.latency.max_ms),
            format!("{:.1}", row.bridge_cpu_us_per_delivered),
            format!("{:.1}", row.core_cpu_us_per_delivered),
            format!("{:.2}", row.bridge_cpu_seconds),
            format!("{:.2}", row.core_cpu_seconds),
            mib(row.bridge_rss_bytes),
        ]);
    }
    table
}

/// One broadcast: CreateNotifications calls (1,000 recipients each, all
/// sent at once) covering every connected socket.
#[derive(Debug, Clone, Serialize)]
pub struct BroadcastRow {
    /// Which bridge.
    pub target: Target,
    /// Recipients, one socket each.
    pub recipients: usize,
    /// Round number.
    pub round: usize,
    /// Sockets that got it.
    pub delivered: u64,
    /// From the first call to the last socket having it (= max latency).
    pub complete_ms: f64,
    /// Receipt latency over the sockets.
    pub latency: Latency,
}

/// `rounds` broadcasts to `recipients` connected sockets.
pub async fn broadcast(
    programs: &Programs,
    target: Target,
    recipients: usize,
    rounds: usize,
    ramp: Ramp,
) -> anyhow::Result<Vec<BroadcastRow>> {
    let stack = Stack::start(programs, target)?;
    let mut sockets = Sockets::default();
    let result = async {
        sockets.open_until(&stack.http, recipients, ramp).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut rows = Vec::new();
        for round in 1..=rounds {
            sockets.latency().take();
            let calls = recipients.div_ceil(1000);
            let offer = Offer {
                clients: calls,
                rate: 0,
                batch: recipients.div_ceil(calls),
                users: recipients as u64,
                seconds: 0.0,
            };
            let created = one_call_each(&stack.core, offer).await?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while sockets.latency().count() < created && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let latency = sockets.latency().take();
            let row = BroadcastRow {
                target,
                recipients,
                round,
                delivered: latency.count,
                complete_ms: latency.max_ms,
                latency,
            };
            eprintln!(
                "broadcast {} to {}: {} delivered, complete in {:.1} ms (p50 {:.1} ms)",
                target.name(),
                recipients,
                row.delivered,
                row.complete_ms,
                latency.p50_ms
            );
            if row.delivered < created {
                bail!(
                    "broadcast {round}: {created} created, {} delivered",
                    row.delivered
                );
            }
            rows.push(row);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        anyhow::Ok(rows)
    }
    .await;
    sockets.close().await;
    result
}

/// Makes exactly one call per client, all at once: the broadcast itself.
async fn one_call_each(core: &Core, offer: Offer) -> anyhow::Result<u64> {
    let created = load::create_once(core, offer).await?;
    if created.errors > 0 {
        bail!("{} broadcast calls failed", created.errors);
    }
    Ok(created.created)
}

/// The broadcast table, with the median over rounds.
pub fn broadcast_table(rows: &[BroadcastRow]) -> Table {
    let mut table = Table::new(&[
        "bridge",
        "recipients",
        "round",
        "delivered",
        "complete ms",
        "p50 ms",
        "p99 ms",
    ]);
    for row in rows {
        table.row(vec![
            row.target.name().into(),
            row.recipients.to_string(),
            row.round.to_string(),
            row.delivered.to_string(),
            format!("{:.1}", row.complete_ms),
            format!("{:.1}", row.latency.p50_ms),
            format!("{:.1}", row.latency.p99_ms),
        ]);
    }
    for target in [Target::Ours, Target::Peer] {
        let times: Vec<f64> = rows
            .iter()
            .filter(|r| r.target == target)
            .map(|r| r.complete_ms)
            .collect();
        if let Some(m) = median(times) {
            table.row(vec![
                target.name().into(),
                String::new(),
                "median".into(),
                String::new(),
                format!("{m:.1}"),
                String::new(),
                String::new(),
            ]);
        }
    }
    table
}

/// Creates/s at one gRPC concurrency, against the core alone.
#[derive(Debug, Clone, Serialize)]
pub struct CreatesRow {
    /// Concurrent clients.
    pub clients: usize,
    /// What they created.
    pub created: Created,
    /// Core CPU seconds in the phase.
    pub core_cpu_seconds: f64,
}

/// The concurrency sweep and the raw SQLite ceiling on the same disk.
#[derive(Debug, Clone, Serialize)]
pub struct CreatesReport {
    /// SQLite `synchronous` for both.
    pub synchronous: String,
    /// One row per concurrency.
    pub rows: Vec<CreatesRow>,
    /// Raw batched inserts, one row per batch size.
    pub ceiling: Vec<ceiling::CeilingRow>,
    /// Best core creates/s ÷ best ceiling inserts/s.
    pub fraction_of_ceiling: f64,
}

/// Flat-out creates at each concurrency, then the ceiling.
pub async fn creates(
    programs: &Programs,
    concurrency: &[usize],
    seconds: f64,
    batch: usize,
) -> anyhow::Result<CreatesReport> {
    let core = Core::start(programs)?;
    let mut rows = Vec::new();
    for &clients in concurrency {
        let before = usage(&core.process);
        let created = load::create(
            &[&core],
            Offer {
                clients,
                rate: 0,
                batch: batch.max(1),
                users: 10_000,
                seconds,
            },
        )
        .await?;
        let after = usage(&core.process);
        eprintln!(
            "creates: {clients} clients: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
            created.per_second,
            created.call_latency.p50_ms,
            created.call_latency.p99_ms,
            created.errors
        );
        if created.errors > 0 {
            bail!("{} create calls failed", created.errors);
        }
        rows.push(CreatesRow {
            clients,
            created,
            core_cpu_seconds: after.cpu_seconds - before.cpu_seconds,
        });
    }
    let ceiling = ceiling::run(core.dir(), &programs.synchronous, &[64, 1000], seconds).await?;
    drop(core);
    let best_core = rows
        .iter()
        .map(|r| r.created.per_second)
        .fold(0.0, f64::max);
    let best_ceiling = ceiling
        .iter()
        .map(|r| r.rows_per_second)
        .fold(0.0, f64::max);
    Ok(CreatesReport {
        synchronous: programs.synchronous.clone(),
        rows,
        ceiling,
        fraction_of_ceiling: best_core / best_ceiling.max(1.0),
    })
}

/// The creates tables: the sweep, then the ceiling.
pub fn creates_tables(report: &CreatesReport) -> (Table, Table) {
    let mut sweep = Table::new(&[
        "clients",
        "creates/s",
        "p50 ms",
        "p99 ms",
        "core CPU s",
        "of ceiling",
    ]);
    let best_ceiling = report
        .ceiling
        .iter()
        .map(|r| r.rows_per_second)
        .fold(0.0, f64::max);
    for row in &report.rows {
        sweep.row(vec![
            row.clients.to_string(),
            format!("{:.0}", row.created.per_second),
            format!("{:.2}", row.created.call_latency.p50_ms),
            format!("{:.2}", row.created.call_latency.p99_ms),
            format!("{:.2}", row.core_cpu_seconds),
            format!("{:.2}", row.created.per_second / best_ceiling.max(1.0)),
        ]);
    }
    let mut ceiling = Table::new(&["rows per transaction", "rows/s", "transactions/s"]);
    for row in &report.ceiling {
        ceiling.row(vec![
            row.batch.to_string(),
            format!("{:.0}", row.rows_per_second),
            format!("{:.0}", row.transactions_per_second),
        ]);
    }
    (sweep, ceiling)
}
