//! Several cores on one PostgreSQL database, over each bus (LISTEN/NOTIFY
//! and NATS): creates/s flat out, create→receive at a steady rate, and the
//! share of all changes each core receives when each holds the streams of
//! a disjoint part of the users (user `u` on core `u % cores`).
//!
//! Receivers are gRPC `StreamUserEvents` calls (what a bridge holds per
//! user), so the numbers are the cores' own, without a bridge in the path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt;
use notify::contract::proto;
use notify_testkit::nats::OwnNats;
use notify_testkit::postgres::OwnPostgres;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::load::{self, Offer};
use crate::report::Table;
use crate::stack::{Core, Programs};
use crate::stats::{Latency, Recorder};

/// How changes travel between cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bus {
    /// PostgreSQL's LISTEN/NOTIFY (the default).
    Listen,
    /// NATS (`--bus`), a server of the run's own.
    Nats,
}

impl Bus {
    fn name(self) -> &'static str {
        match self {
            Bus::Listen => "listen",
            Bus::Nats => "nats",
        }
    }
}

/// One bus × core count.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRow {
    /// Which bus.
    pub bus: Bus,
    /// How many cores.
    pub cores: usize,
    /// Creates/s with every client flat out.
    pub creates_per_second: f64,
    /// Create→receive at the steady rate.
    pub receive: Latency,
    /// Notifications created in the steady phase.
    pub created: u64,
    /// Created-notices each core received in the steady phase, ÷ created.
    pub shares: Vec<f64>,
}

/// What one run measures.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Users with a stream open (vendors 1 ..= users).
    pub users: u64,
    /// Clients in the flat-out phase.
    pub clients: usize,
    /// Seconds per phase.
    pub seconds: f64,
    /// Notifications per second in the steady phase.
    pub rate: u64,
}

/// Each bus with each core count, one after the other.
pub async fn run(
    programs: &Programs,
    buses: &[Bus],
    core_counts: &[usize],
    plan: Plan,
) -> anyhow::Result<Vec<ScaleRow>> {
    let server = OwnPostgres::start()?;
    let mut rows = Vec::new();
    for &bus in buses {
        for &count in core_counts {
            let row = one(programs, &server, bus, count.max(1), plan).await?;
            eprintln!(
                "scaleout {} × {}: {:.0} creates/s; receive p50 {:.2} ms p99 {:.2} ms; shares {:?}",
                bus.name(),
                row.cores,
                row.creates_per_second,
                row.receive.p50_ms,
                row.receive.p99_ms,
                row.shares
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

async fn one(
    programs: &Programs,
    server: &OwnPostgres,
    bus: Bus,
    count: usize,
    plan: Plan,
) -> anyhow::Result<ScaleRow> {
    let url = server.database().await?;
    let nats = match bus {
        Bus::Nats => Some(OwnNats::start()?),
        Bus::Listen => None,
    };
    let bus_url = nats.as_ref().map(OwnNats::url);
    let flags: Vec<&str> = match &bus_url {
        Some(bus_url) => vec!["--bus", bus_url],
        None => Vec::new(),
    };
    let mut cores = Vec::with_capacity(count);
    for _ in 0..count {
        cores.push(Core::start_with_flags(programs, &url, &flags)?);
    }
    let cores_ref: Vec<&Core> = cores.iter().collect();
    let receivers = Receivers::open(&cores_ref, plan.users).await?;

    // Flat out: what the cores take.
    let offer = Offer {
        clients: plan.clients,
        rate: 0,
        batch: 1,
        users: plan.users,
        seconds: plan.seconds,
    };
    let flat = load::create(&cores_ref, offer).await?;
    if flat.errors > 0 {
        bail!("{} create calls failed", flat.errors);
    }
    receivers.wait_for(flat.created).await?;
    receivers.latency.take();

    // Steady: how long a notification takes to reach its stream, and what
    // each core receives.
    let before = received_notices(&cores_ref).await?;
    let steady = load::create(
        &cores_ref,
        Offer {
            clients: 16,
            rate: plan.rate,
            ..offer
        },
    )
    .await?;
    if steady.errors > 0 {
        bail!("{} create calls failed", steady.errors);
    }
    receivers.wait_for(flat.created + steady.created).await?;
    let after = received_notices(&cores_ref).await?;
    let shares = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a - b) / steady.created.max(1) as f64)
        .collect();
    let receive = receivers.latency.take();
    receivers.close().await;
    Ok(ScaleRow {
        bus,
        cores: count,
        creates_per_second: flat.per_second,
        receive,
        created: steady.created,
        shares,
    })
}

/// Each core's count of created-notices received (over `bus`: on NATS
/// they come only by NATS, on LISTEN/NOTIFY only by it).
async fn received_notices(cores: &[&Core]) -> anyhow::Result<Vec<f64>> {
    let mut counts = Vec::with_capacity(cores.len());
    for core in cores {
        counts.push(
            core.counter("notify_fanout_notices_received_total", r#"kind="created""#)
                .await?,
        );
    }
    Ok(counts)
}

/// One live stream per user, on the user's core, counting and timing what
/// arrives (since the `sentAt` its content carries).
pub(crate) struct Receivers {
    tasks: JoinSet<()>,
    received: Arc<AtomicU64>,
    pub(crate) latency: Recorder,
}

impl Receivers {
    async fn open(cores: &[&Core], users: u64) -> anyhow::Result<Receivers> {
        Self::open_for(cores, 1..=users).await
    }

    /// Streams of vendors `ids`, user `u` on core `u % cores`.
    pub(crate) async fn open_for(
        cores: &[&Core],
        ids: impl IntoIterator<Item = u64>,
    ) -> anyhow::Result<Receivers> {
        let received = Arc::new(AtomicU64::new(0));
        let latency = Recorder::default();
        let ready = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        // One connection per core: a bridge multiplexes its users so too.
        let mut clients = Vec::with_capacity(cores.len());
        for core in cores {
            clients.push(core.client().await?);
        }
        let mut users = 0;
        for user in ids {
            users += 1;
            let mut client = clients[(user % cores.len() as u64) as usize].clone();
            let (received, latency, ready) = (received.clone(), latency.clone(), ready.clone());
            tasks.spawn(async move {
                let request = proto::StreamUserEventsRequest {
                    vendor_id: Some(user as i64),
                    sync: true,
                    ..Default::default()
                };
                let Ok(reply) = client.stream_user_events(request).await else {
                    return;
                };
                let mut events = reply.into_inner();
                while let Some(Ok(event)) = events.next().await {
                    match event.event {
                        Some(proto::user_event::Event::State(_)) => {
                            ready.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(proto::user_event::Event::Notification(n)) => {
                            received.fetch_add(1, Ordering::Relaxed);
                            if let Some(sent_at) = sent_at(&n) {
                                latency.record_since(sent_at);
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while ready.load(Ordering::Relaxed) < users {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {users} streams ready",
                    ready.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Receivers {
            tasks,
            received,
            latency,
        })
    }

    /// Waits until `total` notifications arrived in all (60 s at most).
    pub(crate) async fn wait_for(&self, total: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.received.load(Ordering::Relaxed) < total {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {total} notifications reached their streams",
                    self.received.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    pub(crate) async fn close(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

fn sent_at(notification: &proto::Notification) -> Option<u64> {
    use prost_types::value::Kind;
    match notification.content.as_ref()?.fields.get("sentAt")?.kind {
        Some(Kind::NumberValue(micros)) => Some(micros as u64),
        _ => None,
    }
}

/// Creates/s, receive latency and per-core shares, with each row's
/// creates/s against the same bus's one core.
pub fn table(rows: &[ScaleRow]) -> Table {
    let mut table = Table::new(&[
        "bus",
        "cores",
        "creates/s",
        "÷ 1 core",
        "receive p50 ms",
        "receive p99 ms",
        "share per core",
    ]);
    for row in rows {
        let one = rows
            .iter()
            .find(|r| r.bus == row.bus && r.cores == 1)
            .map_or(row.creates_per_second, |r| r.creates_per_second);
        let shares: Vec<String> = row.shares.iter().map(|s| format!("{s:.2}")).collect();
        table.row(vec![
            row.bus.name().into(),
            row.cores.to_string(),
            format!("{:.0}", row.creates_per_second),
            format!("{:.2}", row.creates_per_second / one.max(1.0)),
            format!("{:.2}", row.receive.p50_ms),
            format!("{:.2}", row.receive.p99_ms),
            shares.join(" "),
        ]);
    }
    table
}
