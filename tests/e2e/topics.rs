//! Topics: a fan-out to 100,000 subscribers survives `kill -9` of the core
//! in its middle and, once the core is started again, ends with exactly one
//! notification per subscriber, on both stores; open streams of a few
//! subscribers receive theirs live, once.

use std::time::{Duration, Instant};

use notify::contract::proto::{self, StreamUserEventsRequest};
use sqlx::Connection;

use crate::harness::{Client, CoreProcess, create_database, postgres_admin_url};
use crate::{read_notifications, to_struct};

/// Subscribers of the big fan-out.
const SUBSCRIBERS: i64 = 100_000;
const TOPIC: &str = "store:7:followers";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_killed_in_its_middle_resumes_with_exactly_one_each_on_sqlite() {
    fanout_survives_kill9(CoreProcess::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_killed_in_its_middle_resumes_with_exactly_one_each_on_postgres() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let url = create_database(&admin).await;
    let core = CoreProcess::start_on(&url, &[], tempfile::tempdir().unwrap());
    fanout_survives_kill9(core).await;
}

async fn subscribe_all(client: &mut Client) {
    let ids: Vec<i64> = (1..=SUBSCRIBERS).collect();
    for chunk in ids.chunks(1000) {
        let added = client
            .subscribe(proto::SubscribeRequest {
                topic: TOPIC.into(),
                recipients: chunk
                    .iter()
                    .map(|&id| proto::Recipient {
                        vendor_id: None,
                        customer_id: Some(id),
                    })
                    .collect(),
            })
            .await
            .expect("subscribe")
            .into_inner()
            .added;
        assert_eq!(added as usize, chunk.len());
    }
}

async fn fanout_of(client: &mut Client, id: &str) -> proto::GetFanoutResponse {
    client
        .get_fanout(proto::GetFanoutRequest {
            fanout_id: id.into(),
        })
        .await
        .expect("get fanout")
        .into_inner()
}

/// Watched subscribers: at both ends of the key order and in the middle,
/// so some get theirs before the kill and some after.
const WATCHED: [i64; 4] = [1, 2, 50_000, SUBSCRIBERS];

/// A stream from seq 0 for each watched subscriber.
async fn watch(client: &mut Client) -> Vec<tonic::Streaming<proto::UserEvent>> {
    let mut watchers = Vec::new();
    for id in WATCHED {
        let request = StreamUserEventsRequest {
            customer_id: Some(id),
            after_seq: Some(0),
            ..Default::default()
        };
        watchers.push(
            client
                .stream_user_events(request)
                .await
                .unwrap()
                .into_inner(),
        );
    }
    watchers
}

async fn fanout_survives_kill9(mut core: CoreProcess) {
    let mut client = core.client().await;
    subscribe_all(&mut client).await;
    let subscribers = client
        .get_topic(proto::GetTopicRequest {
            topic: TOPIC.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .subscribers;
    assert_eq!(subscribers, SUBSCRIBERS);
    let watchers = watch(&mut client).await;
    let published = client
        .publish_to_topic(proto::PublishToTopicRequest {
            topic: TOPIC.into(),
            r#type: "store:sale".into(),
            content: Some(to_struct(
                serde_json::json!({"message": "20% off everything"}),
            )),
            ..Default::default()
        })
        .await
        .expect("publish")
        .into_inner();
    assert_eq!(published.recipients, SUBSCRIBERS);
    // Killed once it has started and before it ends.
    let patience = Instant::now() + Duration::from_secs(120);
    loop {
        let state = fanout_of(&mut client, &published.fanout_id).await;
        assert!(
            !state.done,
            "the fan-out ended before the kill: make it bigger"
        );
        if state.created > 0 {
            break;
        }
        assert!(Instant::now() < patience, "the fan-out did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    core.kill9();
    drop(watchers);
    core.start_again();
    let mut client = core.client().await;
    let mut watchers = watch(&mut client).await;
    let patience = Instant::now() + Duration::from_secs(300);
    let state = loop {
        let state = fanout_of(&mut client, &published.fanout_id).await;
        if state.done {
            break state;
        }
        assert!(
            Instant::now() < patience,
            "the fan-out did not finish: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((state.created, state.suppressed), (SUBSCRIBERS, 0));
    // Each watcher: its one notification, seq 1, and nothing after it.
    for stream in &mut watchers {
        let got = read_notifications(stream, 1).await;
        assert_eq!((got[0].seq, got[0].r#type.as_str()), (1, "store:sale"));
        let more = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
        assert!(more.is_err(), "a second event: {more:?}");
    }
    // Every subscriber exactly one, counted in the database itself.
    let sql = "SELECT COUNT(*), COUNT(DISTINCT recipient_id), MIN(recipient_id), \
               MAX(recipient_id), MAX(seq) FROM notifications WHERE type = 'store:sale'";
    let counts: (i64, i64, i64, i64, i64) = if core.database_url().starts_with("sqlite:") {
        let mut db = sqlx::SqliteConnection::connect(core.database_url())
            .await
            .unwrap();
        sqlx::query_as(sql).fetch_one(&mut db).await.unwrap()
    } else {
        let mut db = sqlx::PgConnection::connect(core.database_url())
            .await
            .unwrap();
        sqlx::query_as(sql).fetch_one(&mut db).await.unwrap()
    };
    assert_eq!(counts, (SUBSCRIBERS, SUBSCRIBERS, 1, SUBSCRIBERS, 1));
}
