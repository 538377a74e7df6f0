//! The core's background sweeps: scheduled sends (five times a second, so
//! a notification goes out well within 1 s of its `sendAt`, and right after
//! a start for those that fell due while the core was down), expiry (a few
//! times a second, so an open inbox hears of an expired notification well
//! within 2 s of its `expiresAt`) and retention (old READ, archived, replaced and expired
//! notifications deleted). Both read by their own index, due or old rows
//! first, in bounded batches, so neither scans anybody's history nor holds
//! the writer long. With several cores each sweeps; the store makes a row
//! expire once whichever core gets it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use notify_store::{Channel, NewNotification, Store, StoreError, User, now_millis};
use tokio_util::sync::CancellationToken;

/// How often the send sweep looks for scheduled notifications due.
pub const SEND_PERIOD: Duration = Duration::from_millis(200);
/// How often the fan-out worker looks for open fan-outs; it works through
/// one batch after another while there are.
pub const FANOUT_PERIOD: Duration = Duration::from_millis(100);
/// How often the expiry sweep looks for due notifications.
pub const EXPIRY_PERIOD: Duration = Duration::from_millis(250);
/// Rows one sweep statement takes; a full batch is followed at once by the next.
pub const BATCH: u32 = 1000;
/// The default `--retention`.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// Starts both sweeps; they end with `shutdown`.
pub fn start(store: Arc<dyn Store>, retention: Duration, shutdown: CancellationToken) {
    let fanouts = store.clone();
    tokio::spawn(every(FANOUT_PERIOD, shutdown.clone(), move || {
        let store = fanouts.clone();
        async move { fan_out(store.as_ref()).await }
    }));
    let sender = store.clone();
    tokio::spawn(every(SEND_PERIOD, shutdown.clone(), move || {
        let store = sender.clone();
        async move { drain("send", || send_due(store.as_ref())).await }
    }));
    let expiry = store.clone();
    tokio::spawn(every(EXPIRY_PERIOD, shutdown.clone(), move || {
        let store = expiry.clone();
        async move { drain("expiry", || store.expire_due(BATCH)).await }
    }));
    // Checked a few times per retention period, at most once a minute.
    let period = (retention / 4).clamp(Duration::from_millis(250), Duration::from_secs(60));
    tokio::spawn(every(period, shutdown, move || {
        let store = store.clone();
        async move {
            let before = now_millis() - retention.as_millis() as i64;
            drain("retention", || store.delete_old(before, BATCH)).await
        }
    }));
}

/// Runs `sweep` every `period` until `shutdown`.
async fn every<F, Fut>(period: Duration, shutdown: CancellationToken, sweep: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => sweep().await,
        }
    }
}

/// Repeats one batch while batches come back full; a failure waits for the
/// next tick.
async fn drain<F, Fut>(what: &'static str, batch: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<usize, notify_store::StoreError>>,
{
    loop {
        match batch().await {
            Ok(done) => {
                metrics::counter!("notify_swept_total", "sweep" => what).increment(done as u64);
                if done < BATCH as usize {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(sweep = what, %error, "sweep failed; trying again later");
                return;
            }
        }
    }
}

/// Sends one batch of the scheduled notifications due: each recipient's
/// preferences as they are now decide (one read per category and channel
/// among them), and the store creates the rest and drops the muted in one
/// transaction. Answers how many were due.
async fn send_due(store: &dyn Store) -> Result<usize, StoreError> {
    let due = store.due(now_millis(), BATCH).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut groups: HashMap<(&str, Channel), Vec<User>> = HashMap::new();
    for n in &due {
        groups
            .entry((n.category.as_str(), n.channel))
            .or_default()
            .push(n.recipient);
    }
    let mut muted: HashSet<(User, &str, Channel)> = HashSet::new();
    for ((category, channel), users) in &groups {
        for user in store.muted(users, category, *channel).await? {
            muted.insert((user, category, *channel));
        }
    }
    let count = due.len();
    let (drop, send): (Vec<NewNotification>, Vec<NewNotification>) = due
        .iter()
        .cloned()
        .partition(|n| muted.contains(&(n.recipient, n.category.as_str(), n.channel)));
    let drop: Vec<String> = drop.into_iter().filter_map(|n| n.id).collect();
    metrics::counter!("notify_notifications_suppressed_total").increment(drop.len() as u64);
    let created = store.send_due(send, drop).await?;
    let fresh = created.iter().filter(|c| c.fresh).count();
    metrics::counter!("notify_notifications_created_total").increment(fresh as u64);
    Ok(count)
}

/// Works through open fan-outs, one batch (one transaction) at a time,
/// until none is left. Other writes queue between batches, so they wait
/// one batch at most.
async fn fan_out(store: &dyn Store) {
    loop {
        match store.fanout_step(notify_store::FANOUT_BATCH).await {
            Ok(true) => metrics::counter!("notify_fanout_batches_total").increment(1),
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(%error, "fan-out batch failed; trying again later");
                return;
            }
        }
    }
}
