//! Bad requests get INVALID_ARGUMENT (or NOT_FOUND) naming the field, and
//! change nothing.

use notify::proto::{self, ListOfflineRequest, MarkNotificationsRequest};
use serde_json::json;
use tonic::Code;

use crate::harness::CoreProcess;
use crate::{simple, to_struct};

fn create(
    edit: impl FnOnce(&mut proto::CreateNotificationRequest),
) -> proto::CreateNotificationRequest {
    let mut request = simple(5, 1);
    edit(&mut request);
    request
}

#[tokio::test]
async fn each_bad_input_names_its_field_and_nothing_is_stored() {
    let core = CoreProcess::start();
    let mut client = core.client().await;
    let existing = client
        .create_notification(simple(5, 0))
        .await
        .unwrap()
        .into_inner();

    let big = "x".repeat(64 * 1024);
    let creates: Vec<(&str, proto::CreateNotificationRequest, &str)> = vec![
        ("no recipient", create(|r| r.vendor_id = None), "vendorId"),
        (
            "two recipients",
            create(|r| r.customer_id = Some(12)),
            "vendorId",
        ),
        (
            "zero vendor id",
            create(|r| r.vendor_id = Some(0)),
            "vendorId",
        ),
        (
            "negative vendor id",
            create(|r| r.vendor_id = Some(-5)),
            "vendorId",
        ),
        (
            "negative customer id",
            create(|r| {
                r.vendor_id = None;
                r.customer_id = Some(i64::MIN)
            }),
            "customerId",
        ),
        ("empty type", create(|r| r.r#type = String::new()), "type"),
        ("blank type", create(|r| r.r#type = "   ".into()), "type"),
        (
            "type of 129 characters",
            create(|r| r.r#type = "t".repeat(129)),
            "type",
        ),
        (
            "control character in type",
            create(|r| r.r#type = "a\u{7}b".into()),
            "type",
        ),
        ("unknown channel", create(|r| r.channel = 99), "channel"),
        ("negative channel", create(|r| r.channel = -1), "channel"),
        ("missing content", create(|r| r.content = None), "content"),
        (
            "content over 64 KiB",
            create(|r| r.content = Some(to_struct(json!({"blob": big})))),
            "content",
        ),
        (
            "priority above range",
            create(|r| r.priority = 11),
            "priority",
        ),
        ("negative priority", create(|r| r.priority = -1), "priority"),
        (
            "huge priority",
            create(|r| r.priority = i32::MAX),
            "priority",
        ),
        (
            "idempotency key of 129 characters",
            create(|r| r.idempotency_key = "k".repeat(129)),
            "idempotencyKey",
        ),
    ];
    for (case, request, field) in creates {
        let status = client.create_notification(request).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "{case}: {:?} should name {field}",
            status.message()
        );
    }

    let bulk = |recipients: Vec<proto::Recipient>| proto::CreateNotificationsRequest {
        recipients,
        r#type: "sale".into(),
        content: Some(to_struct(json!({}))),
        ..Default::default()
    };
    let vendor = |id| proto::Recipient {
        vendor_id: Some(id),
        customer_id: None,
    };
    let bulks = vec![
        ("no recipients", bulk(vec![]), "recipients"),
        (
            "1001 recipients",
            bulk((1..=1001).map(vendor).collect()),
            "recipients",
        ),
        (
            "duplicate recipient",
            bulk(vec![vendor(1), vendor(2), vendor(1)]),
            "recipients[2]",
        ),
        (
            "recipient with both ids",
            bulk(vec![proto::Recipient {
                vendor_id: Some(1),
                customer_id: Some(1),
            }]),
            "recipients[0].vendorId",
        ),
        (
            "empty type",
            proto::CreateNotificationsRequest {
                r#type: String::new(),
                ..bulk(vec![vendor(1)])
            },
            "type",
        ),
    ];
    for (case, request, field) in bulks {
        let status = client.create_notifications(request).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "{case}: {:?} should name {field}",
            status.message()
        );
    }

    let list = |page: Option<i32>, limit: Option<i32>| ListOfflineRequest {
        vendor_id: Some(5),
        page,
        limit,
        ..Default::default()
    };
    let lists = vec![
        ("page 0", list(Some(0), None), "page"),
        ("negative page", list(Some(-1), None), "page"),
        ("limit 0", list(None, Some(0)), "limit"),
        ("limit 101", list(None, Some(101)), "limit"),
        ("negative limit", list(None, Some(-20)), "limit"),
        ("no recipient", ListOfflineRequest::default(), "vendorId"),
    ];
    for (case, request, field) in lists {
        let status = client.list_offline(request).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "{case}: {:?} should name {field}",
            status.message()
        );
    }
    // The far edge of paging is not an error: an empty page.
    let far = client
        .list_offline(list(Some(i32::MAX), Some(100)))
        .await
        .unwrap()
        .into_inner();
    assert!(far.items.is_empty());

    for (case, id) in [
        ("empty id", String::new()),
        ("short id", "68553796000745d4620985b".to_owned()),
        ("non-hex id", "zz553796000745d4620985bc".to_owned()),
        ("enormous id", "a".repeat(100_000)),
    ] {
        let status = client
            .get_notification(proto::GetNotificationRequest { id })
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}");
        assert!(
            status.message().starts_with("id:"),
            "{case}: {}",
            status.message()
        );
    }
    let missing = client
        .get_notification(proto::GetNotificationRequest {
            id: "68553796000745d4620985bc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let mark = |ids: Vec<String>, status: proto::Status| MarkNotificationsRequest {
        vendor_id: Some(5),
        ids,
        status: status as i32,
        ..Default::default()
    };
    let marks = vec![
        ("no ids", mark(vec![], proto::Status::Read), "ids"),
        (
            "malformed id",
            mark(
                vec![existing.id.clone(), "nope".into()],
                proto::Status::Read,
            ),
            "ids[1]",
        ),
        (
            "1001 ids",
            mark(vec![existing.id.clone(); 1001], proto::Status::Read),
            "ids",
        ),
        (
            "status SENT",
            mark(vec![existing.id.clone()], proto::Status::Sent),
            "status",
        ),
        (
            "status unset",
            mark(vec![existing.id.clone()], proto::Status::Unspecified),
            "status",
        ),
    ];
    for (case, request, field) in marks {
        let status = client.mark_notifications(request).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "{case}: {:?} should name {field}",
            status.message()
        );
    }

    for (case, room, field) in [
        ("empty room", String::new(), "room"),
        ("room of 129 characters", "r".repeat(129), "room"),
    ] {
        let status = client
            .join_room(proto::RoomRequest {
                room,
                vendor_id: Some(5),
                customer_id: None,
            })
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}");
        assert!(
            status.message().starts_with(field),
            "{case}: {}",
            status.message()
        );
    }
    let status = client
        .stream_user_events(proto::StreamUserEventsRequest {
            vendor_id: Some(5),
            after_seq: Some(-1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("afterSeq"));

    // Nothing above changed what is stored.
    let inbox = client
        .list_offline(list(None, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inbox.items, vec![existing]);
    assert_eq!(inbox.last_seq, 1);
}

#[tokio::test]
async fn undecodable_and_oversized_requests_are_refused_cleanly() {
    use tokio::io::AsyncWriteExt;
    let core = CoreProcess::start();
    // Content nested 5,000 deep, sent by grpcurl: past the decoder's
    // recursion limit, refused as bad input naming the field.
    let depth = 5_000;
    let body = format!(
        r#"{{"vendorId":5,"type":"deep","content":{}{{}}{}}}"#,
        r#"{"a":"#.repeat(depth),
        "}".repeat(depth)
    );
    let mut child = tokio::process::Command::new(crate::harness::grpcurl())
        .args(["-plaintext", "-d", "@", &core.addr.to_string()])
        .arg("notify.v1.NotificationService/CreateNotification")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .await
        .unwrap();
    let output = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("InvalidArgument"), "{stderr}");
    assert!(stderr.contains("content: malformed"), "{stderr}");

    // A message over the 4 MiB limit.
    let mut client = core.client().await;
    let huge = create(|r| r.r#type = "t".repeat(5 * 1024 * 1024));
    let status = client.create_notification(huge).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );
    // Still serving, nothing stored.
    let inbox = client
        .list_offline(ListOfflineRequest {
            vendor_id: Some(5),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(inbox.items.is_empty());
}
