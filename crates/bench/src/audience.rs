//! Audience and timing on one core (SQLite, or PostgreSQL of the run's
//! own): how long a topic's fan-out to N subscribers takes, what ordinary
//! creates running beside it at a steady rate see (their p99, against the
//! same rate with no fan-out), how long a connected subset of subscribers
//! waits for theirs; and how late scheduled notifications go out when many
//! fall due in the same second.
//!
//! Receivers are gRPC `StreamUserEvents` calls, so the numbers are the
//! core's own, without a bridge in the path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use notify::contract::proto;
use notify_testkit::postgres::OwnPostgres;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::report::Table;
use crate::scaleout::Receivers;
use crate::stack::{Core, Programs};
use crate::stats::{Latency, Recorder, now_micros};

/// Where the core keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Store {
    /// The embedded default.
    Sqlite,
    /// A PostgreSQL server of the run's own.
    Postgres,
}

/// One fan-out.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutRow {
    pub store: Store,
    pub subscribers: u64,
    /// From the publish call to GetFanout saying done.
    pub fanout_seconds: f64,
    /// The publish call itself (recording the recipients).
    pub publish_ms: f64,
    /// Publish → a connected subscriber's stream, over `streams` of them.
    pub live: Latency,
    pub streams: u64,
    /// Ordinary creates at `rate`/s with no fan-out, then beside it.
    pub creates_alone: Latency,
    pub creates_beside: Latency,
    pub rate: u64,
}

/// Scheduled sends falling due together.
#[derive(Debug, Clone, Serialize)]
pub struct DueRow {
    pub store: Store,
    /// Notifications with the same `sendAt`.
    pub due: u64,
    /// Arrival on the recipient's stream − `sendAt`.
    pub late: Latency,
}

/// What one run measures.
#[derive(Debug, Clone)]
pub struct Plan {
    pub stores: Vec<Store>,
    pub subscribers: Vec<u64>,
    pub streams: u64,
    pub rate: u64,
    pub due: u64,
}

const TOPIC: &str = "store:7:followers";

/// Every store × subscriber count, then the due batch on each store.
pub async fn run(
    programs: &Programs,
    plan: &Plan,
) -> anyhow::Result<(Vec<FanoutRow>, Vec<DueRow>)> {
    let server = if plan.stores.contains(&Store::Postgres) {
        Some(OwnPostgres::start()?)
    } else {
        None
    };
    let mut fanouts = Vec::new();
    let mut dues = Vec::new();
    for &store in &plan.stores {
        for &subscribers in &plan.subscribers {
            let core = start(programs, store, server.as_ref()).await?;
            let row = fanout(&core, store, subscribers, plan).await?;
            eprintln!(
                "audience {store:?} {subscribers}: fan-out {:.2} s; live p50 {:.0} ms p99 {:.0} ms; creates p99 {:.2} ms alone, {:.2} ms beside",
                row.fanout_seconds,
                row.live.p50_ms,
                row.live.p99_ms,
                row.creates_alone.p99_ms,
                row.creates_beside.p99_ms
            );
            fanouts.push(row);
        }
        let core = start(programs, store, server.as_ref()).await?;
        let row = due(&core, store, plan.due).await?;
        eprintln!(
            "audience {store:?}: {} due at once, late p50 {:.0} ms p99 {:.0} ms max {:.0} ms",
            row.due, row.late.p50_ms, row.late.p99_ms, row.late.max_ms
        );
        dues.push(row);
    }
    Ok((fanouts, dues))
}

async fn start(
    programs: &Programs,
    store: Store,
    server: Option<&OwnPostgres>,
) -> anyhow::Result<Core> {
    match store {
        Store::Sqlite => Core::start(programs),
        Store::Postgres => {
            let server = server.context("no PostgreSQL server")?;
            Core::start_with_flags(programs, &server.database().await?, &[])
        }
    }
}

/// Subscribers are vendors 1 ..= `subscribers`; `streams` of them, spread
/// evenly, have a stream open; ordinary creates go to customers.
async fn fanout(
    core: &Core,
    store: Store,
    subscribers: u64,
    plan: &Plan,
) -> anyhow::Result<FanoutRow> {
    let mut client = core.client().await?;
    let ids: Vec<u64> = (1..=subscribers).collect();
    for chunk in ids.chunks(1000) {
        client
            .subscribe(proto::SubscribeRequest {
                topic: TOPIC.into(),
                recipients: chunk
                    .iter()
                    .map(|&id| proto::Recipient {
                        vendor_id: Some(id as i64),
                        customer_id: None,
                    })
                    .collect(),
            })
            .await?;
    }
    let streams = plan.streams.min(subscribers).max(1);
    let step = subscribers / streams;
    let receivers = Receivers::open_for(&[core], (0..streams).map(|n| 1 + n * step)).await?;

    let creates_alone = paced(
        core.client().await?,
        plan.rate,
        Some(Duration::from_secs(3)),
        None,
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (core_grpc, stop, rate) = (core.client().await?, stop.clone(), plan.rate);
        tokio::spawn(async move { paced(core_grpc, rate, None, Some(stop)).await })
    };
    let started = Instant::now();
    let published = client
        .publish_to_topic(proto::PublishToTopicRequest {
            topic: TOPIC.into(),
            r#type: "store:sale".into(),
            content: Some(notify_testkit::requests::to_struct(serde_json::json!({
                "message": "20% off everything today",
                "sentAt": now_micros(),
            }))),
            ..Default::default()
        })
        .await?
        .into_inner();
    let publish_ms = started.elapsed().as_secs_f64() * 1000.0;
    let deadline = started + Duration::from_secs(600);
    loop {
        let state = client
            .get_fanout(proto::GetFanoutRequest {
                fanout_id: published.fanout_id.clone(),
            })
            .await?
            .into_inner();
        if state.done {
            if state.created as u64 != subscribers {
                bail!("the fan-out created {} for {subscribers}", state.created);
            }
            break;
        }
        if Instant::now() > deadline {
            bail!("the fan-out did not finish in 600 s: {state:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fanout_seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let creates_beside = load.await??;
    receivers.wait_for(streams).await?;
    let live = receivers.latency.take();
    receivers.close().await;
    Ok(FanoutRow {
        store,
        subscribers,
        fanout_seconds,
        publish_ms,
        live,
        streams,
        creates_alone,
        creates_beside,
        rate: plan.rate,
    })
}

/// `count` notifications for vendors 1 ..= `count`, each with a stream
/// open, all with one `sendAt` 3 s ahead; how late each arrives.
async fn due(core: &Core, store: Store, count: u64) -> anyhow::Result<DueRow> {
    let receivers = Receivers::open_for(&[core], 1..=count).await?;
    let send_at_ms = (now_micros() / 1000 + 3_000) as i64;
    let send_at = notify_store::format_millis(send_at_ms);
    let mut client = core.client().await?;
    for vendor in 1..=count {
        client
            .create_notification(proto::CreateNotificationRequest {
                vendor_id: Some(vendor as i64),
                r#type: "order:reminder".into(),
                // Receivers time from `sentAt`: here the time it is due.
                content: Some(notify_testkit::requests::to_struct(serde_json::json!({
                    "message": "Your order ships today",
                    "sentAt": send_at_ms * 1000,
                }))),
                send_at: send_at.clone(),
                ..Default::default()
            })
            .await?;
    }
    if now_micros() / 1000 >= send_at_ms as u64 {
        bail!("scheduling {count} took longer than the 3 s ahead they were due");
    }
    receivers.wait_for(count).await?;
    let late = receivers.latency.take();
    receivers.close().await;
    Ok(DueRow {
        store,
        due: count,
        late,
    })
}

/// CreateNotification to customers at `rate`/s, for `seconds` or until
/// `stop`: their call latency. One client, calls spawned on the pace, so a
/// slow call does not slow the offer.
async fn paced(
    client: notify_testkit::core::Client,
    rate: u64,
    seconds: Option<Duration>,
    stop: Option<Arc<AtomicBool>>,
) -> anyhow::Result<Latency> {
    let calls = Recorder::default();
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut inflight = JoinSet::new();
    let mut n = 0u64;
    loop {
        pace.tick().await;
        if seconds.is_some_and(|s| started.elapsed() >= s)
            || stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed))
        {
            break;
        }
        n += 1;
        let (mut client, calls) = (client.clone(), calls.clone());
        inflight.spawn(async move {
            let call_started = Instant::now();
            let result = client
                .create_notification(proto::CreateNotificationRequest {
                    customer_id: Some((n % 1000 + 1) as i64),
                    r#type: "order:paid".into(),
                    content: Some(notify_testkit::requests::to_struct(
                        serde_json::json!({"n": n}),
                    )),
                    ..Default::default()
                })
                .await;
            calls.record(call_started.elapsed().as_micros() as u64);
            result.is_ok()
        });
    }
    let mut failed = 0;
    while let Some(ok) = inflight.join_next().await {
        if !ok.context("a create task failed")? {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} ordinary creates failed");
    }
    Ok(calls.take())
}

/// Fan-out time, live delivery and the creates beside it; the ratio is the
/// p99 beside ÷ alone.
pub fn fanout_table(rows: &[FanoutRow]) -> Table {
    let mut table = Table::new(&[
        "store",
        "subscribers",
        "fan-out s",
        "publish ms",
        "live p50 ms",
        "live p99 ms",
        "creates p99 alone ms",
        "creates p99 beside ms",
        "beside ÷ alone",
    ]);
    for row in rows {
        table.row(vec![
            format!("{:?}", row.store).to_lowercase(),
            row.subscribers.to_string(),
            format!("{:.2}", row.fanout_seconds),
            format!("{:.1}", row.publish_ms),
            format!("{:.0}", row.live.p50_ms),
            format!("{:.0}", row.live.p99_ms),
            format!("{:.2}", row.creates_alone.p99_ms),
            format!("{:.2}", row.creates_beside.p99_ms),
            format!(
                "{:.2}",
                row.creates_beside.p99_ms / row.creates_alone.p99_ms.max(0.001)
            ),
        ]);
    }
    table
}

/// How late scheduled ones went out.
pub fn due_table(rows: &[DueRow]) -> Table {
    let mut table = Table::new(&[
        "store",
        "due at once",
        "late p50 ms",
        "late p99 ms",
        "late max ms",
    ]);
    for row in rows {
        table.row(vec![
            format!("{:?}", row.store).to_lowercase(),
            row.due.to_string(),
            format!("{:.0}", row.late.p50_ms),
            format!("{:.0}", row.late.p99_ms),
            format!("{:.0}", row.late.max_ms),
        ]);
    }
    table
}
