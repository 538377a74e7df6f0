//! Delivery receipts: a client's ack of a `notification` (or of its
//! connect-time page) moves those notifications to DELIVERED.
//!
//! Acks are gathered for [`LINGER`], grouped per user and sent as
//! RecordDeliveries calls, so one call carries every user's receipts of
//! that moment instead of one MarkNotifications call per ack. A receipt is
//! a status for backends to see, so a few milliseconds of delay cost
//! nothing. On shutdown, [`Receipts::flush`] records every ack received
//! before the sockets closed.

use std::collections::HashMap;
use std::time::Duration;

use notify_store::User;
use serde_json::Value;
use socketioxide::AckError;
use socketioxide::ack::AckStream;
use tokio::sync::{Mutex, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::core_client::{CoreClient, unary};
use crate::contract::proto;
use crate::contract::validate::MAX_BULK;

/// How long acks gather before they go to the core.
const LINGER: Duration = Duration::from_millis(20);

/// RecordDeliveries calls in flight at once.
const IN_FLIGHT: usize = 4;

/// Receipts waiting for the sender task; acks wait (not drop) when it is full.
const QUEUE: usize = 16 * 1024;

/// Turns acks into DELIVERED marks. Shared by every socket of the bridge.
pub struct Receipts {
    queue: mpsc::Sender<(User, Vec<String>)>,
    /// Tasks waiting for a client's ack.
    acks: TaskTracker,
    stop: CancellationToken,
    sender: Mutex<Option<JoinHandle<()>>>,
}

impl Receipts {
    /// Starts the task that sends receipts to `core`.
    pub fn start(core: CoreClient) -> Receipts {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let sender = tokio::spawn(send(core, receiver, stop.clone()));
        Receipts {
            queue,
            acks: TaskTracker::new(),
            stop,
            sender: Mutex::new(Some(sender)),
        }
    }

    /// Waits in the background for the client's answer to an emit that asked
    /// for an ack; an answer makes `ids` (the user's notifications in that
    /// emit) DELIVERED.
    pub fn on_ack(&self, user: User, ids: Vec<String>, ack: AckStream<Value>) {
        let queue = self.queue.clone();
        self.acks.spawn(async move {
            if acked(&ack.await) && !ids.is_empty() && queue.send((user, ids)).await.is_ok() {
                metrics::counter!("notify_bridge_acks_total").increment(1);
            }
        });
    }

    /// Once the sockets are closed: waits for the acks still awaited (they
    /// resolve as their sockets close) and for every receipt to be sent,
    /// until `deadline` at the latest.
    pub async fn flush(&self, deadline: Instant) {
        self.acks.close();
        if tokio::time::timeout_at(deadline, self.acks.wait())
            .await
            .is_err()
        {
            tracing::warn!("acks still awaited at the end of the drain period");
        }
        self.stop.cancel();
        let Some(sender) = self.sender.lock().await.take() else {
            return;
        };
        match tokio::time::timeout_at(deadline, sender).await {
            Ok(_) => tracing::info!("delivery receipts flushed"),
            Err(_) => tracing::warn!("delivery receipts not all recorded within the drain period"),
        }
    }
}

/// Whether the client answered an ack request. `ack()` with no arguments,
/// what most clients send, does not decode as a value, but it is an answer
/// all the same; only a timeout or a lost socket is not.
pub fn acked<T>(result: &Result<T, AckError>) -> bool {
    matches!(result, Ok(_) | Err(AckError::Decode(_)))
}

/// Sends receipts as they come, gathered for [`LINGER`]; once `stop` is
/// cancelled, sends what is queued and waits for the calls in flight.
async fn send(
    core: CoreClient,
    mut queue: mpsc::Receiver<(User, Vec<String>)>,
    stop: CancellationToken,
) {
    let mut batch = Vec::new();
    let mut in_flight = JoinSet::new();
    loop {
        let stopping = tokio::select! {
            received = queue.recv_many(&mut batch, QUEUE) => received == 0,
            _ = stop.cancelled() => true,
        };
        if !stopping {
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = stop.cancelled() => {}
            }
        }
        while let Ok(receipt) = queue.try_recv() {
            batch.push(receipt);
        }
        let mut by_user: HashMap<User, Vec<String>> = HashMap::new();
        for (user, ids) in batch.drain(..) {
            by_user.entry(user).or_default().extend(ids);
        }
        for request in calls(by_user) {
            while in_flight.len() >= IN_FLIGHT {
                in_flight.join_next().await;
            }
            let mut client = core.any();
            in_flight.spawn(async move {
                let users = request.receipts.len();
                if let Err(status) = client.record_deliveries(unary(request)).await {
                    // The notifications stay SENT: still delivered, and in
                    // the offline list until read.
                    tracing::warn!(users, error = %status.message(), "delivery receipts not recorded");
                }
            });
        }
        while in_flight.try_join_next().is_some() {}
        if stopping {
            while in_flight.join_next().await.is_some() {}
            return;
        }
    }
}

/// Ids per RecordDeliveries call: about 600 KB of message, well under the
/// 4 MiB a gRPC message may hold (1,000 users of 1,000 ids would be 26 MB).
const IDS_PER_CALL: usize = 20_000;

/// Splits receipts into RecordDeliveries calls the core accepts: at most
/// [`MAX_BULK`] users per call, each named once with at most [`MAX_BULK`]
/// ids, and at most [`IDS_PER_CALL`] ids in all.
pub fn calls(by_user: HashMap<User, Vec<String>>) -> Vec<proto::RecordDeliveriesRequest> {
    // Layer k holds every user's k-th chunk of ids, so a call cut from one
    // layer names each user at most once.
    let mut layers: Vec<Vec<proto::DeliveryReceipts>> = Vec::new();
    for (user, ids) in by_user {
        for (layer, chunk) in ids.chunks(MAX_BULK).enumerate() {
            if layers.len() <= layer {
                layers.push(Vec::new());
            }
            layers[layer].push(proto::DeliveryReceipts {
                vendor_id: user.vendor_id(),
                customer_id: user.customer_id(),
                ids: chunk.to_vec(),
            });
        }
    }
    let mut calls = Vec::new();
    for layer in layers {
        let mut call: Vec<proto::DeliveryReceipts> = Vec::new();
        let mut ids = 0;
        for receipts in layer {
            if call.len() == MAX_BULK || ids + receipts.ids.len() > IDS_PER_CALL {
                calls.push(proto::RecordDeliveriesRequest {
                    receipts: std::mem::take(&mut call),
                });
                ids = 0;
            }
            ids += receipts.ids.len();
            call.push(receipts);
        }
        if !call.is_empty() {
            calls.push(proto::RecordDeliveriesRequest { receipts: call });
        }
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify_store::new_object_id;
    use prost::Message;

    /// tonic's default limit for a message the core decodes.
    const MAX_MESSAGE: usize = 4 * 1024 * 1024;

    #[test]
    fn every_call_fits_the_cores_limits_and_every_receipt_is_in_one() {
        let mut by_user = HashMap::new();
        for id in 1..=1_500 {
            let ids = (0..if id % 3 == 0 { 2_500 } else { 700 })
                .map(|_| new_object_id())
                .collect::<Vec<_>>();
            by_user.insert(User::customer(id), ids);
        }
        let mut expected: Vec<String> = by_user.values().flatten().cloned().collect();
        let calls = calls(by_user);
        let mut sent = Vec::new();
        for call in &calls {
            assert!(
                call.encoded_len() <= MAX_MESSAGE,
                "a call of {} bytes",
                call.encoded_len()
            );
            assert!(!call.receipts.is_empty() && call.receipts.len() <= MAX_BULK);
            let mut users: Vec<_> = call
                .receipts
                .iter()
                .map(|r| (r.vendor_id, r.customer_id))
                .collect();
            users.sort_unstable();
            users.dedup();
            assert_eq!(users.len(), call.receipts.len(), "a user named twice");
            for receipts in &call.receipts {
                assert!(!receipts.ids.is_empty() && receipts.ids.len() <= MAX_BULK);
                sent.extend(receipts.ids.iter().cloned());
            }
        }
        sent.sort_unstable();
        expected.sort_unstable();
        assert_eq!(sent, expected);
    }
}
