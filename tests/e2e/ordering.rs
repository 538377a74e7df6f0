//! Seqs are gapless under concurrency; streams replay then continue live
//! with no gap and no duplicate, even while creates race the subscription.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use notify::contract::proto::{ListOfflineRequest, StreamUserEventsRequest};

use crate::harness::CoreProcess;
use crate::{read_notifications, simple};

fn stream_request(vendor_id: i64, after_seq: Option<i64>) -> StreamUserEventsRequest {
    StreamUserEventsRequest {
        vendor_id: Some(vendor_id),
        after_seq,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_tasks_times_two_hundred_creates_give_seqs_one_to_ten_thousand() {
    let core = CoreProcess::start();
    let client = core.client().await;
    let mut tasks = Vec::new();
    for task in 0..50 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(200);
            for n in 0..200 {
                let created = client
                    .create_notification(simple(7, task * 1000 + n))
                    .await
                    .expect("create");
                seqs.push(created.into_inner().seq);
            }
            seqs
        }));
    }
    let mut seqs = Vec::with_capacity(10_000);
    for task in tasks {
        seqs.extend(task.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=10_000).collect::<Vec<i64>>());

    // The stored rows agree with what the creates returned.
    let mut client = client.clone();
    let mut stream = client
        .stream_user_events(stream_request(7, Some(0)))
        .await
        .unwrap()
        .into_inner();
    let replayed = read_notifications(&mut stream, 10_000).await;
    let stored: Vec<i64> = replayed.iter().map(|n| n.seq).collect();
    assert_eq!(stored, (1..=10_000).collect::<Vec<i64>>());
    let ids: HashSet<_> = replayed.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids.len(), 10_000);
    let total = client
        .list_offline(ListOfflineRequest {
            vendor_id: Some(7),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .pagination
        .unwrap()
        .total_records;
    assert_eq!(total, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_while_creates_race_see_every_seq_once_in_order() {
    const TOTAL: i64 = 3_000;
    let core = CoreProcess::start();
    let client = core.client().await;
    let created = Arc::new(AtomicI64::new(0));
    let mut writers = Vec::new();
    for writer in 0..8 {
        let mut client = client.clone();
        let created = created.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..TOTAL / 8 {
                client
                    .create_notification(simple(9, writer * 10_000 + n))
                    .await
                    .expect("create");
                created.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Open streams at different moments of the race: from the start, from
    // the current seq, and live-only.
    let mut readers = Vec::new();
    for round in 0..6 {
        while created.load(Ordering::Relaxed) < round * TOTAL / 8 {
            tokio::task::yield_now().await;
        }
        let mut client = client.clone();
        let after = match round % 3 {
            0 => Some(0),
            1 => Some(created.load(Ordering::Relaxed) / 2),
            _ => None,
        };
        let mut stream = client
            .stream_user_events(stream_request(9, after))
            .await
            .unwrap()
            .into_inner();
        readers.push(tokio::spawn(async move {
            let first = read_notifications(&mut stream, 1).await.remove(0);
            let expected = (TOTAL - first.seq + 1) as usize;
            let mut seqs = vec![first.seq];
            seqs.extend(
                read_notifications(&mut stream, expected - 1)
                    .await
                    .iter()
                    .map(|n| n.seq),
            );
            (after, seqs)
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    for reader in readers {
        let (after, seqs) = reader.await.unwrap();
        let start = seqs[0];
        if let Some(after) = after {
            assert_eq!(start, after + 1, "replay starts right after afterSeq");
        }
        assert_eq!(
            seqs,
            (start..=TOTAL).collect::<Vec<i64>>(),
            "afterSeq {after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stalls_catches_up_from_the_store_without_loss() {
    const TOTAL: i64 = 1_200;
    let core = CoreProcess::start();
    // The stalled reader gets a connection of its own, as a slow client would.
    let mut stalled_client = core.client().await;
    let mut stalled = stalled_client
        .stream_user_events(stream_request(11, None))
        .await
        .unwrap()
        .into_inner();
    let client = core.client().await;
    let mut brisk = client
        .clone()
        .stream_user_events(stream_request(11, None))
        .await
        .unwrap()
        .into_inner();
    let brisk_reader =
        tokio::spawn(async move { read_notifications(&mut brisk, TOTAL as usize).await });
    // 4 KB each: far more than the stream's queue and HTTP/2 windows hold.
    let padding = "x".repeat(4096);
    let mut writers = Vec::new();
    for writer in 0..4 {
        let mut client = client.clone();
        let padding = padding.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..TOTAL / 4 {
                let content = serde_json::json!({"n": writer * 10_000 + n, "padding": padding});
                client
                    .create_notification(crate::create_for_vendor(11, content))
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let brisk: Vec<i64> = brisk_reader.await.unwrap().iter().map(|n| n.seq).collect();
    assert_eq!(brisk, (1..=TOTAL).collect::<Vec<_>>());
    let metrics = crate::api::reqwest_metrics(core.metrics_addr).await;
    assert!(
        metrics.contains("notify_stream_lagged_total"),
        "the stalled stream should have overflowed its queue"
    );
    let stalled: Vec<i64> = read_notifications(&mut stalled, TOTAL as usize)
        .await
        .iter()
        .map(|n| n.seq)
        .collect();
    assert_eq!(stalled, (1..=TOTAL).collect::<Vec<_>>());
}
