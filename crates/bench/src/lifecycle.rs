//! The inbox lifecycle at size, on one core over SQLite, every number from
//! one run:
//!
//! 1. `users × per_user` notifications seeded in three categories (order,
//!    product, payment); each user's payments marked READ and their ten
//!    newest archived, so every view has rows.
//! 2. One reader per view (ListNotifications INBOX, ARCHIVED, ALL, with and
//!    without a category) on random users and pages, side by side with
//!    ListOffline.
//! 3. MarkAllNotifications on one user with `big_inbox` unread: its time,
//!    and the count after it.
//! 4. The expiry sweep: `expiring` notifications over 1,000 users due at one
//!    moment; the time until the sweep took them all, and the core's CPU
//!    for it beyond its idle rate.
//! 5. The retention sweep: every user's inbox marked READ, then the core
//!    restarted with `--retention 1s`; the time until it deleted every row,
//!    and its CPU.

use std::time::{Duration, Instant};

use anyhow::Context;
use notify::contract::proto;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::list::seed;
use crate::report::Table;
use crate::stack::{Core, Programs, usage};
use crate::stats::{Latency, Recorder};

/// Users the expiring notifications are spread over.
const EXPIRING_USERS: u64 = 1000;
/// Clients for the bulk steps (marks, archives, the big inbox's creates).
const WORKERS: u64 = 16;

/// One read measured: its label and latency.
#[derive(Debug, Clone, Serialize)]
pub struct ReadRow {
    /// `ListOffline`, or the view and category read.
    pub read: String,
    /// Calls per second from one reader.
    pub calls_per_second: f64,
    /// Per-call latency.
    pub latency: Latency,
}

/// What the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleReport {
    /// Notifications seeded for the reads.
    pub stored: u64,
    /// Users they are spread over.
    pub users: u64,
    /// One row per read.
    pub reads: Vec<ReadRow>,
    /// Unread notifications of the one user marked all READ.
    pub mark_all_unread: u64,
    /// How long MarkAllNotifications took on them.
    pub mark_all_ms: f64,
    /// What it answered as updated.
    pub mark_all_updated: i32,
    /// That user's unread count after it.
    pub count_after_mark_all: i64,
    /// Notifications due at one moment.
    pub expiring: u64,
    /// From their `expiresAt` until the sweep had taken them all.
    pub expiry_seconds: f64,
    /// The core's CPU for that sweep beyond its idle rate, per 1,000.
    pub expiry_cpu_ms_per_1000: f64,
    /// Rows the retention sweep deleted.
    pub retained_deleted: u64,
    /// From the restart until it had deleted them all.
    pub retention_seconds: f64,
    /// The core's CPU over that time.
    pub retention_cpu_seconds: f64,
}

/// Runs every step on one core.
pub async fn run(
    programs: &Programs,
    users: u64,
    per_user: u64,
    big_inbox: u64,
    expiring: u64,
    seconds: f64,
) -> anyhow::Result<LifecycleReport> {
    let core = Core::start(programs)?;
    let kinds =
        |round: u64| ["order:placed", "product:upload", "payment:received"][round as usize % 3];
    let per_second = seed(&core, users, per_user, kinds).await?;
    let stored = users * per_user;
    eprintln!("lifecycle: seeded {stored} notifications ({per_second:.0}/s)");
    shelve(&core, users).await?;
    eprintln!("lifecycle: payments read and ten archived per user");

    let mut reads = Vec::new();
    for read in Read::ALL {
        let row = measure_read(&core, read, users, seconds).await?;
        eprintln!(
            "lifecycle: {}: p50 {:.2} ms p99 {:.2} ms",
            row.read, row.latency.p50_ms, row.latency.p99_ms
        );
        reads.push(row);
    }

    let big = users as i64 + 1;
    fill(&core, big, big_inbox).await?;
    let mut client = core.client().await?;
    let started = Instant::now();
    let updated = client
        .mark_all_notifications(proto::MarkAllNotificationsRequest {
            vendor_id: Some(big),
            status: proto::Status::Read as i32,
            ..Default::default()
        })
        .await
        .context("MarkAllNotifications")?
        .into_inner()
        .updated;
    let mark_all_ms = started.elapsed().as_secs_f64() * 1000.0;
    let count_after_mark_all = client
        .get_unread_counts(proto::GetUnreadCountsRequest {
            vendor_id: Some(big),
            customer_id: None,
        })
        .await?
        .into_inner()
        .count;
    eprintln!(
        "lifecycle: MarkAll of {big_inbox} unread: {mark_all_ms:.0} ms, {updated} updated, count after {count_after_mark_all}"
    );

    let (expiry_seconds, expiry_cpu_ms_per_1000) = expire(&core, expiring).await?;
    eprintln!(
        "lifecycle: {expiring} expired in {expiry_seconds:.2} s after their expiresAt, {expiry_cpu_ms_per_1000:.1} ms CPU per 1,000"
    );

    // Everything READ, then a core that keeps one second.
    mark_everyone_read(&core, users).await?;
    let total = stored + big_inbox + expiring;
    let core = core.reopen(programs, &["--retention", "1s"])?;
    let started = Instant::now();
    let cpu_before = usage(&core.process).cpu_seconds;
    let deadline = started + Duration::from_secs(1800);
    let deleted = loop {
        let deleted = core
            .counter("notify_swept_total", r#"sweep="retention""#)
            .await? as u64;
        if deleted >= total {
            break deleted;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "retention deleted {deleted} of {total} in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let retention_seconds = started.elapsed().as_secs_f64();
    let retention_cpu_seconds = usage(&core.process).cpu_seconds - cpu_before;
    eprintln!(
        "lifecycle: retention deleted {deleted} rows in {retention_seconds:.1} s ({retention_cpu_seconds:.1} CPU-s)"
    );
    Ok(LifecycleReport {
        stored,
        users,
        reads,
        mark_all_unread: big_inbox,
        mark_all_ms,
        mark_all_updated: updated,
        count_after_mark_all,
        expiring,
        expiry_seconds,
        expiry_cpu_ms_per_1000,
        retained_deleted: deleted,
        retention_seconds,
        retention_cpu_seconds,
    })
}

/// A read the run measures.
#[derive(Clone, Copy)]
enum Read {
    Offline,
    View(proto::View, Option<&'static str>),
}

impl Read {
    const ALL: [Read; 6] = [
        Read::Offline,
        Read::View(proto::View::Inbox, None),
        Read::View(proto::View::Inbox, Some("order")),
        Read::View(proto::View::Archived, None),
        Read::View(proto::View::All, None),
        Read::View(proto::View::All, Some("order")),
    ];

    fn label(self) -> String {
        match self {
            Read::Offline => "ListOffline".into(),
            Read::View(view, category) => {
                let view = view.as_str_name();
                match category {
                    Some(category) => format!("ListNotifications {view} of {category}"),
                    None => format!("ListNotifications {view}"),
                }
            }
        }
    }
}

/// Each user's payments READ and their ten newest archived, by 16 clients.
async fn shelve(core: &Core, users: u64) -> anyhow::Result<()> {
    for_users(core, 1..=users, |mut client, user| async move {
        client
            .mark_all_notifications(proto::MarkAllNotificationsRequest {
                vendor_id: Some(user),
                status: proto::Status::Read as i32,
                category: "payment".into(),
                ..Default::default()
            })
            .await?;
        let newest = client
            .list_notifications(proto::ListNotificationsRequest {
                vendor_id: Some(user),
                view: proto::View::All as i32,
                limit: Some(10),
                ..Default::default()
            })
            .await?
            .into_inner();
        client
            .archive_notifications(proto::ArchiveNotificationsRequest {
                vendor_id: Some(user),
                ids: newest.items.into_iter().map(|n| n.id).collect(),
                archived: Some(true),
                ..Default::default()
            })
            .await?;
        anyhow::Ok(client)
    })
    .await
}

/// Every user's whole inbox READ, by 16 clients.
async fn mark_everyone_read(core: &Core, users: u64) -> anyhow::Result<()> {
    for_users(core, 1..=users, |mut client, user| async move {
        client
            .mark_all_notifications(proto::MarkAllNotificationsRequest {
                vendor_id: Some(user),
                status: proto::Status::Read as i32,
                ..Default::default()
            })
            .await?;
        anyhow::Ok(client)
    })
    .await
}

/// Runs `step` for each user of `users`, spread over 16 clients.
async fn for_users<F, Fut>(
    core: &Core,
    users: std::ops::RangeInclusive<u64>,
    step: F,
) -> anyhow::Result<()>
where
    F: Fn(notify_testkit::core::Client, i64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<notify_testkit::core::Client>> + Send,
{
    let mut workers = JoinSet::new();
    for worker in 0..WORKERS {
        let mut client = core.client().await?;
        let step = step.clone();
        let mine: Vec<u64> = users.clone().filter(|u| u % WORKERS == worker).collect();
        workers.spawn(async move {
            for user in mine {
                client = step(client, user as i64).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(())
}

/// `count` unread notifications for one vendor, by 16 clients.
async fn fill(core: &Core, vendor: i64, count: u64) -> anyhow::Result<()> {
    let mut workers = JoinSet::new();
    for worker in 0..WORKERS {
        let mut client = core.client().await?;
        workers.spawn(async move {
            for n in (worker..count).step_by(WORKERS as usize) {
                client
                    .create_notification(notify_testkit::requests::simple(vendor, n as i64))
                    .await
                    .context("create")?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(())
}

/// `count` notifications over 1,000 users, all due 5 s from now; answers
/// the seconds from then until the sweep had taken them all, and the
/// core's CPU for it beyond its idle rate, in ms per 1,000.
async fn expire(core: &Core, count: u64) -> anyhow::Result<(f64, f64)> {
    let due = notify_store::now_millis() + 5000;
    let mut client = core.client().await?;
    for round in 0..count.div_ceil(EXPIRING_USERS) {
        client
            .create_notifications(proto::CreateNotificationsRequest {
                recipients: notify_testkit::requests::vendors(1..=EXPIRING_USERS as i64),
                r#type: "sale:flash".into(),
                content: Some(notify_testkit::requests::to_struct(
                    serde_json::json!({"message": "flash sale", "round": round}),
                )),
                expires_at: notify_store::format_millis(due),
                ..Default::default()
            })
            .await
            .context("create expiring")?;
    }
    let count = count.div_ceil(EXPIRING_USERS) * EXPIRING_USERS;
    let before = core
        .counter("notify_swept_total", r#"sweep="expiry""#)
        .await? as u64;
    // The idle rate (the sweep looking and finding nothing) until just
    // before they are due.
    let idle_from = (Instant::now(), usage(&core.process).cpu_seconds);
    let until_due = Duration::from_millis((due - notify_store::now_millis() - 100).max(0) as u64);
    tokio::time::sleep(until_due).await;
    let idle_rate =
        (usage(&core.process).cpu_seconds - idle_from.1) / idle_from.0.elapsed().as_secs_f64();
    let cpu_at_due = usage(&core.process).cpu_seconds;
    let at_due = Instant::now();
    let deadline = at_due + Duration::from_secs(120);
    loop {
        let swept = core
            .counter("notify_swept_total", r#"sweep="expiry""#)
            .await? as u64;
        if swept - before >= count {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {count} expired in 2 minutes",
            swept - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = at_due.elapsed().as_secs_f64();
    let cpu = usage(&core.process).cpu_seconds - cpu_at_due - idle_rate * took;
    let seconds = (took - 0.1).max(0.0);
    Ok((seconds, cpu.max(0.0) * 1000.0 / (count as f64 / 1000.0)))
}

/// One reader of `read` on random users and pages 1-2 (page 1 of the
/// archive, which holds ten) for `seconds`.
async fn measure_read(
    core: &Core,
    read: Read,
    users: u64,
    seconds: f64,
) -> anyhow::Result<ReadRow> {
    let calls = Recorder::default();
    let mut client = core.client().await?;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    // xorshift: a cheap, repeatable choice of user and page.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    while Instant::now() < until {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let user = (state % users) as i64 + 1;
        let page = ((state >> 32) % 2) as i32 + 1;
        let sent = Instant::now();
        let items = match read {
            Read::Offline => client
                .list_offline(proto::ListOfflineRequest {
                    vendor_id: Some(user),
                    page: Some(page),
                    limit: Some(20),
                    ..Default::default()
                })
                .await
                .context("ListOffline")?
                .into_inner()
                .items
                .len(),
            Read::View(view, category) => client
                .list_notifications(proto::ListNotificationsRequest {
                    vendor_id: Some(user),
                    view: view as i32,
                    category: category.unwrap_or_default().into(),
                    page: Some(if view == proto::View::Archived {
                        1
                    } else {
                        page
                    }),
                    limit: Some(20),
                    ..Default::default()
                })
                .await
                .context("ListNotifications")?
                .into_inner()
                .items
                .len(),
        };
        calls.record(sent.elapsed().as_micros() as u64);
        anyhow::ensure!(
            items > 0 || page > 1,
            "{}: an empty first page for vendor {user}",
            read.label()
        );
    }
    let latency = calls.take();
    Ok(ReadRow {
        read: read.label(),
        calls_per_second: latency.count as f64 / started.elapsed().as_secs_f64(),
        latency,
    })
}

/// The reads, one row each.
pub fn reads_table(report: &LifecycleReport) -> Table {
    let mut table = Table::new(&["read", "calls/s", "p50 ms", "p99 ms"]);
    for row in &report.reads {
        table.row(vec![
            row.read.clone(),
            format!("{:.0}", row.calls_per_second),
            format!("{:.2}", row.latency.p50_ms),
            format!("{:.2}", row.latency.p99_ms),
        ]);
    }
    table
}

/// The bulk operations and the sweeps.
pub fn bulk_table(report: &LifecycleReport) -> Table {
    let mut table = Table::new(&["operation", "rows", "time", "cost"]);
    table.row(vec![
        "MarkAllNotifications, one user".into(),
        report.mark_all_unread.to_string(),
        format!("{:.0} ms", report.mark_all_ms),
        format!(
            "{} updated, count after: {}",
            report.mark_all_updated, report.count_after_mark_all
        ),
    ]);
    table.row(vec![
        "expiry sweep, due at once over 1,000 users".into(),
        report.expiring.to_string(),
        format!("{:.2} s after expiresAt", report.expiry_seconds),
        format!("{:.1} ms core CPU per 1,000", report.expiry_cpu_ms_per_1000),
    ]);
    table.row(vec![
        "retention sweep (--retention 1s after a restart)".into(),
        report.retained_deleted.to_string(),
        format!("{:.1} s", report.retention_seconds),
        format!("{:.1} core CPU-s", report.retention_cpu_seconds),
    ]);
    table
}
