//! The API as a backend uses it: create, read, page, mark, idempotency, rooms.

use notify::contract::proto::{self, ListOfflineRequest, MarkNotificationsRequest};
use serde_json::json;

use crate::harness::CoreProcess;
use crate::{create_for_vendor, simple, to_json, to_struct};

#[tokio::test]
async fn content_round_trips_exactly_and_fields_match_the_contract() {
    let core = CoreProcess::start();
    let mut client = core.client().await;
    let content = json!({
        "error": false,
        "message": "Product has been uploaded successfully",
        "data": {"id": 63, "price": "22", "discountPrice": "3244.9", "averageRating": 0,
                 "rating": 4.5, "isAvailable": true, "tags": ["a", 1, null, {"x": []}],
                 "name": "Größe ✓", "none": null, "negative": -7}
    });
    let created = client
        .create_notification(create_for_vendor(5, content.clone()))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.id.len(), 24);
    assert!(
        created
            .id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(created.vendor_id, Some(5));
    assert_eq!(created.customer_id, None);
    assert_eq!(created.status, proto::Status::Sent as i32);
    assert_eq!(created.channel, proto::Channel::Push as i32);
    assert_eq!(created.seq, 1);
    assert_eq!(created.created_at.len(), "2025-06-20T10:27:34.307Z".len());
    assert!(created.created_at.ends_with('Z'));

    let fetched = client
        .get_notification(proto::GetNotificationRequest {
            id: created.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    let back = to_json(fetched.content.as_ref().expect("content"));
    assert_eq!(back, content);
    // Integers stay integers in the JSON text, not 63.0.
    assert_eq!(back["data"]["id"].to_string(), "63");
    assert_eq!(fetched, created);
}

#[tokio::test]
async fn offline_pages_newest_first_and_marking_read_empties_the_inbox() {
    let core = CoreProcess::start();
    let mut client = core.client().await;
    let mut ids = Vec::new();
    for n in 1..=45 {
        ids.push(
            client
                .create_notification(simple(5, n))
                .await
                .unwrap()
                .into_inner()
                .id,
        );
    }
    let page = |page: i32| ListOfflineRequest {
        vendor_id: Some(5),
        page: Some(page),
        limit: Some(20),
        ..Default::default()
    };
    let first = client.list_offline(page(1)).await.unwrap().into_inner();
    let pagination = first.pagination.unwrap();
    assert_eq!(first.items.len(), 20);
    assert_eq!(first.items[0].id, ids[44], "newest first");
    assert_eq!(
        (
            pagination.current_page,
            pagination.next_page,
            pagination.prev_page
        ),
        (1, Some(2), None)
    );
    assert!(pagination.has_next && !pagination.has_prev);
    assert_eq!((pagination.total_pages, pagination.total_records), (3, 45));
    assert_eq!(first.last_seq, 45);

    let third = client.list_offline(page(3)).await.unwrap().into_inner();
    let pagination = third.pagination.unwrap();
    assert_eq!(third.items.len(), 5);
    assert_eq!(third.items.last().unwrap().id, ids[0]);
    assert_eq!(
        (pagination.next_page, pagination.prev_page),
        (None, Some(2))
    );
    assert!(!pagination.has_next && pagination.has_prev);

    // Customer 5 is somebody else: nothing of vendor 5's shows or changes.
    let other = client
        .list_offline(ListOfflineRequest {
            customer_id: Some(5),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let pagination = other.pagination.unwrap();
    assert!(other.items.is_empty());
    assert_eq!((pagination.total_records, pagination.total_pages), (0, 0));
    assert_eq!((pagination.current_page, pagination.next_page), (1, None));
    let stolen = client
        .mark_notifications(MarkNotificationsRequest {
            customer_id: Some(5),
            ids: ids.clone(),
            status: proto::Status::Read as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stolen.updated, 0);

    let delivered = client
        .mark_notifications(MarkNotificationsRequest {
            vendor_id: Some(5),
            ids: ids[..10].to_vec(),
            status: proto::Status::Delivered as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(delivered.updated, 10);
    let read = client
        .mark_notifications(MarkNotificationsRequest {
            vendor_id: Some(5),
            ids: ids[..30].to_vec(),
            status: proto::Status::Read as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.updated, 30);
    // Already READ: counts 0. DELIVERED after READ does not move it back.
    let again = client
        .mark_notifications(MarkNotificationsRequest {
            vendor_id: Some(5),
            ids: ids[..30].to_vec(),
            status: proto::Status::Delivered as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.updated, 0);
    let left = client.list_offline(page(1)).await.unwrap().into_inner();
    assert_eq!(left.pagination.unwrap().total_records, 15);
    assert_eq!(left.items.len(), 15);
    let first_read = client
        .get_notification(proto::GetNotificationRequest { id: ids[0].clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first_read.status, proto::Status::Read as i32);
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_first_notification() {
    let core = CoreProcess::start();
    let mut client = core.client().await;
    let request = proto::CreateNotificationRequest {
        idempotency_key: "order-881-shipped".into(),
        ..simple(5, 1)
    };
    let first = client
        .create_notification(request.clone())
        .await
        .unwrap()
        .into_inner();
    let second = client
        .create_notification(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second);
    // Unique per recipient: the same key for another user is a new one.
    let other = client
        .create_notification(proto::CreateNotificationRequest {
            vendor_id: Some(6),
            ..request
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(other.id, first.id);
    let listed = client
        .list_offline(ListOfflineRequest {
            vendor_id: Some(5),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.pagination.unwrap().total_records, 1);
}

#[tokio::test]
async fn one_call_creates_for_many_recipients_each_with_its_own_id_and_seq() {
    let core = CoreProcess::start();
    let mut client = core.client().await;
    client.create_notification(simple(2, 0)).await.unwrap();
    let recipients: Vec<proto::Recipient> = (1..=1000)
        .map(|id| proto::Recipient {
            vendor_id: (id % 2 == 0).then_some(id),
            customer_id: (id % 2 == 1).then_some(id),
        })
        .collect();
    let response = client
        .create_notifications(proto::CreateNotificationsRequest {
            recipients,
            r#type: "sale:started".into(),
            content: Some(to_struct(json!({"message": "Black Friday"}))),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.items.len(), 1000);
    let mut ids: Vec<_> = response.items.iter().map(|n| n.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1000);
    // Seqs are per recipient: vendor 2 had one already, everyone else none.
    assert_eq!(response.items[1].vendor_id, Some(2));
    assert_eq!(response.items[1].seq, 2);
    assert_eq!(response.items[0].customer_id, Some(1));
    assert!(
        response
            .items
            .iter()
            .enumerate()
            .all(|(i, n)| i == 1 || n.seq == 1)
    );
}

#[tokio::test]
async fn rooms_are_stored_and_listed() {
    let core = CoreProcess::start();
    let mut client = core.client().await;
    let join = |vendor: Option<i64>, customer: Option<i64>| proto::RoomRequest {
        room: "order:881".into(),
        vendor_id: vendor,
        customer_id: customer,
    };
    client.join_room(join(Some(5), None)).await.unwrap();
    client.join_room(join(None, Some(12))).await.unwrap();
    client.join_room(join(None, Some(12))).await.unwrap();
    client.join_room(join(None, Some(13))).await.unwrap();
    client.leave_room(join(None, Some(13))).await.unwrap();
    let members = client
        .list_room_members(proto::ListRoomMembersRequest {
            room: "order:881".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    let who: Vec<_> = members
        .iter()
        .map(|m| (m.vendor_id, m.customer_id, m.online))
        .collect();
    assert_eq!(who, vec![(Some(5), None, false), (None, Some(12), false)]);
}

#[tokio::test]
async fn an_api_token_guards_the_service_but_not_health() {
    let core = CoreProcess::start_with(&["--api-token", "s3cret-token"]);
    let mut client = core.client().await;
    let denied = client.create_notification(simple(5, 1)).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    assert!(!denied.message().contains("s3cret"));

    let mut wrong = tonic::Request::new(simple(5, 1));
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer s3cret-tokeN".parse().unwrap());
    let denied = client.create_notification(wrong).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);

    let mut right = tonic::Request::new(simple(5, 1));
    right
        .metadata_mut()
        .insert("authorization", "Bearer s3cret-token".parse().unwrap());
    let created = client
        .create_notification(right)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.seq, 1);

    let channel = tonic::transport::Channel::from_shared(core.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "notify.v1.NotificationService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let metrics = reqwest_metrics(core.metrics_addr).await;
    assert!(
        metrics.contains("notify_commit_batch_notifications"),
        "{metrics}"
    );
    assert!(!metrics.contains("s3cret"));
}

/// `GET /metrics` over a plain TCP connection.
pub async fn reqwest_metrics(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    socket.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

#[tokio::test]
async fn record_deliveries_marks_each_users_own_notifications_delivered() {
    let core = CoreProcess::start();
    let mut client = core.client().await;
    let create = |vendor| {
        let mut client = client.clone();
        async move {
            client
                .create_notification(simple(vendor, 1))
                .await
                .expect("create")
                .into_inner()
        }
    };
    let (a1, a2, b1) = (create(31).await, create(31).await, create(32).await);
    let receipts = |vendor, ids: Vec<String>| proto::DeliveryReceipts {
        vendor_id: Some(vendor),
        customer_id: None,
        ids,
    };
    let reply = client
        .record_deliveries(proto::RecordDeliveriesRequest {
            receipts: vec![
                receipts(31, vec![a1.id.clone(), a2.id.clone()]),
                // Vendor 32 names vendor 31's notification too: not theirs,
                // so it counts for nothing.
                receipts(32, vec![b1.id.clone(), a1.id.clone()]),
            ],
        })
        .await
        .expect("record deliveries")
        .into_inner();
    assert_eq!(reply.updated, 3);
    for id in [&a1.id, &a2.id, &b1.id] {
        let status = client
            .get_notification(proto::GetNotificationRequest { id: id.clone() })
            .await
            .expect("get")
            .into_inner()
            .status;
        assert_eq!(status, proto::Status::Delivered as i32, "{id}");
    }
    // Again: nothing left to change, and READ never goes back.
    client
        .mark_notifications(MarkNotificationsRequest {
            vendor_id: Some(31),
            ids: vec![a1.id.clone()],
            status: proto::Status::Read as i32,
            ..Default::default()
        })
        .await
        .expect("mark read");
    let again = client
        .record_deliveries(proto::RecordDeliveriesRequest {
            receipts: vec![receipts(31, vec![a1.id.clone(), a2.id.clone()])],
        })
        .await
        .expect("again")
        .into_inner();
    assert_eq!(again.updated, 0);

    // Bad input names the field and changes nothing.
    let refused = |request| {
        let mut client = client.clone();
        async move {
            let status = client
                .record_deliveries(request)
                .await
                .expect_err("refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            status.message().to_owned()
        }
    };
    let empty = refused(proto::RecordDeliveriesRequest { receipts: vec![] }).await;
    assert!(empty.starts_with("receipts:"), "{empty}");
    let twice = refused(proto::RecordDeliveriesRequest {
        receipts: vec![
            receipts(32, vec![b1.id.clone()]),
            receipts(32, vec![b1.id.clone()]),
        ],
    })
    .await;
    assert!(twice.starts_with("receipts[1]"), "{twice}");
    let bad_id = refused(proto::RecordDeliveriesRequest {
        receipts: vec![receipts(32, vec!["nope".into()])],
    })
    .await;
    assert!(bad_id.starts_with("receipts[0].ids[0]"), "{bad_id}");
    let nobody = refused(proto::RecordDeliveriesRequest {
        receipts: vec![proto::DeliveryReceipts {
            vendor_id: None,
            customer_id: None,
            ids: vec![b1.id.clone()],
        }],
    })
    .await;
    assert!(nobody.starts_with("receipts[0]."), "{nobody}");
}

/// Secrets given on the command line never reach the logs, even at debug
/// level and through refused calls: the core's API token, and the bridge's
/// JWT secret and API token.
#[tokio::test]
async fn secrets_never_appear_in_logs() {
    use notify_testkit::{Process, core};
    use std::io::Read;
    use std::process::{Command, Stdio};

    const TOKEN: &str = "api-token-do-not-log-4f1c";
    const SECRET: &str = "jwt-secret-do-not-log-9a7e2b";
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("n.db").display());
    let bin: &std::path::Path = env!("CARGO_BIN_EXE_notify").as_ref();
    let start = |mut command: Command, ready: &str| {
        command.env("RUST_LOG", "debug").stderr(Stdio::piped());
        Process::start(command, ready).expect("ready line")
    };
    let mut core = core::command(bin, &url);
    core.args(["--api-token", TOKEN]);
    let core = start(core, core::READY);
    let grpc = core.field("grpc").unwrap().to_owned();
    let mut bridge = Command::new(bin);
    bridge
        .args(["bridge", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--core-url", &format!("http://{grpc}")])
        .args(["--jwt-secret", SECRET, "--api-token", TOKEN]);
    let bridge = start(bridge, "notify bridge ready");
    let http = bridge.field("http").unwrap().to_owned();
    let bridge_metrics = bridge.field("metrics").unwrap().to_owned();

    // A refused call with a wrong token, and a good one.
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut wrong = proto::notification_service_client::NotificationServiceClient::with_interceptor(
        channel.clone(),
        |mut request: tonic::Request<()>| {
            request.metadata_mut().insert(
                "authorization",
                "Bearer api-token-do-not-log-4f1X".parse().unwrap(),
            );
            Ok(request)
        },
    );
    let refused = wrong.create_notification(simple(5, 1)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    // The bridge talks to the core with its token (health checks for
    // /readyz): without it getting through, the logs below would hold no
    // authenticated calls worth checking.
    let mut ready = false;
    for _ in 0..300 {
        if http_get(&http, "/readyz").await.starts_with("HTTP/1.1 200") {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        ready,
        "the bridge never reached the core with its api token"
    );
    let metrics = http_get(&bridge_metrics, "/metrics").await;
    assert!(metrics.contains("notify_bridge"), "{metrics}");
    assert!(!metrics.contains(SECRET) && !metrics.contains(TOKEN));

    let mut logs = String::new();
    // SIGTERM, so each process flushes its logs as it stops.
    for mut process in [bridge, core] {
        process.signal("TERM").unwrap();
        process.child_mut().wait().unwrap();
        let mut text = String::new();
        process
            .child_mut()
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        logs.push_str(&text);
    }
    assert!(
        logs.contains("DEBUG") || logs.contains("debug"),
        "debug logging was on: {logs}"
    );
    assert!(!logs.contains(SECRET), "the JWT secret was logged");
    assert!(!logs.contains(TOKEN), "the API token was logged");
    assert!(!logs.contains("4f1X"), "a presented token was logged");
}

/// `GET path` over a plain HTTP/1.1 connection; the whole response.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
}
