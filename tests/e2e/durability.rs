//! What was acknowledged survives `kill -9`; SIGTERM stops cleanly.

use std::time::Duration;

use notify::proto::{self, StreamUserEventsRequest};

use crate::harness::CoreProcess;
use crate::{read_notifications, simple};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_create_survives_kill_9() {
    let mut core = CoreProcess::start();
    let client = core.client().await;
    let mut tasks = Vec::new();
    for task in 0..20 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..50 {
                let created = client
                    .create_notification(simple(3, task * 100 + n))
                    .await
                    .unwrap();
                acked.push(created.into_inner());
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    core.kill9();
    core.restart();

    let mut client = core.client().await;
    for notification in &acked {
        let stored = client
            .get_notification(proto::GetNotificationRequest {
                id: notification.id.clone(),
            })
            .await
            .expect("acknowledged notification is stored after kill -9")
            .into_inner();
        assert_eq!(&stored, notification);
    }
    let mut stream = client
        .stream_user_events(StreamUserEventsRequest {
            vendor_id: Some(3),
            after_seq: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let seqs: Vec<i64> = read_notifications(&mut stream, acked.len())
        .await
        .iter()
        .map(|n| n.seq)
        .collect();
    assert_eq!(seqs, (1..=acked.len() as i64).collect::<Vec<_>>());
    // Numbering continues after the restart without a gap.
    let next = client
        .create_notification(simple(3, 9_999))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.seq, acked.len() as i64 + 1);
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_exits_zero() {
    let mut core = CoreProcess::start();
    let mut client = core.client().await;
    let mut stream = client
        .stream_user_events(StreamUserEventsRequest {
            vendor_id: Some(1),
            presence: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = core.terminate();
    assert!(status.success(), "exit status {status:?}");
    // The stream ended instead of hanging.
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("stream closed by the shutdown");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}
