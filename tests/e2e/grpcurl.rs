//! The core as people inspect it: the real `grpcurl` binary, through
//! reflection, with no proto file.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use crate::harness::{CoreProcess, grpcurl};
use crate::simple;

const SERVICE: &str = "notify.v1.NotificationService";

/// grpcurl calling `method` with `body`.
async fn run(core: &CoreProcess, method: &str, body: &str) -> std::process::Output {
    Command::new(grpcurl())
        .args(["-plaintext", "-d", body, &core.addr.to_string()])
        .arg(format!("{SERVICE}/{method}"))
        .output()
        .await
        .expect("run grpcurl")
}

async fn call(core: &CoreProcess, method: &str, body: &str) -> Value {
    let output = run(core, method, body).await;
    assert!(
        output.status.success(),
        "grpcurl {method} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("grpcurl prints JSON")
}

#[tokio::test]
async fn grpcurl_lists_creates_lists_offline_and_streams_after_seq() {
    let core = CoreProcess::start();
    let listed = Command::new(grpcurl())
        .args(["-plaintext", &core.addr.to_string(), "list"])
        .output()
        .await
        .expect("run grpcurl list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains(SERVICE), "{listed}");
    assert!(listed.contains("grpc.health.v1.Health"), "{listed}");

    let described = Command::new(grpcurl())
        .args(["-plaintext", &core.addr.to_string(), "describe", SERVICE])
        .output()
        .await
        .unwrap();
    let described = String::from_utf8_lossy(&described.stdout);
    for method in [
        "CreateNotifications",
        "ListOffline",
        "StreamUserEvents",
        "ListRoomMembers",
    ] {
        assert!(described.contains(method), "{described}");
    }

    let created = call(
        &core,
        "CreateNotification",
        r#"{"vendorId":5,"type":"product:upload","channel":"PUSH",
            "content":{"message":"Product has been uploaded successfully","data":{"id":63,"isAvailable":true}},
            "priority":1}"#,
    )
    .await;
    assert_eq!(created["vendorId"], "5");
    assert_eq!(created["seq"], "1");
    assert_eq!(created["channel"], "PUSH");
    assert_eq!(created["status"], "SENT");
    assert_eq!(created["content"]["data"]["id"].to_string(), "63");
    assert!(created.get("customerId").is_none());
    let second = call(
        &core,
        "CreateNotification",
        r#"{"vendorId":5,"type":"order:paid","content":{"orderId":881}}"#,
    )
    .await;
    assert_eq!(second["seq"], "2");

    let offline = call(
        &core,
        "ListOffline",
        r#"{"vendorId":5,"page":1,"limit":20}"#,
    )
    .await;
    assert_eq!(offline["items"].as_array().unwrap().len(), 2);
    assert_eq!(offline["items"][0]["id"], second["id"]);
    assert_eq!(offline["pagination"]["totalRecords"], "2");
    assert_eq!(offline["pagination"]["currentPage"], 1);
    assert!(offline["pagination"].get("nextPage").is_none());

    let empty = call(&core, "ListOffline", r#"{"customerId":5}"#).await;
    assert_eq!(empty["pagination"]["currentPage"], 1);
    assert!(empty.get("items").is_none());

    // Replay after seq 1, then a live one created while grpcurl listens.
    let stream = Command::new(grpcurl())
        .args([
            "-plaintext",
            "-max-time",
            "4",
            "-d",
            r#"{"vendorId":5,"afterSeq":"1"}"#,
        ])
        .arg(core.addr.to_string())
        .arg(format!("{SERVICE}/StreamUserEvents"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut client = core.client().await;
    let live = client
        .create_notification(simple(5, 3))
        .await
        .unwrap()
        .into_inner();
    let output = stream.wait_with_output().await.unwrap();
    let events: Vec<Value> = serde_json::Deserializer::from_slice(&output.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("grpcurl prints one JSON object per event");
    let seqs: Vec<&str> = events
        .iter()
        .filter_map(|e| e["notification"]["seq"].as_str())
        .collect();
    assert_eq!(seqs, ["2", "3"], "{events:?}");
    assert_eq!(events[1]["notification"]["id"], live.id.as_str());
}

/// The inbox lifecycle's RPCs as grpcurl sends and prints them: the JSON of
/// the contract, 64-bit counts as strings, default values left out.
#[tokio::test]
async fn grpcurl_drives_categories_archive_views_and_mark_all() {
    let core = CoreProcess::start();
    let placed = call(
        &core,
        "CreateNotification",
        r#"{"vendorId":7,"type":"order:placed","content":{"orderId":1}}"#,
    )
    .await;
    assert_eq!(placed["category"], "order", "the type's prefix");
    let upload = call(
        &core,
        "CreateNotification",
        r#"{"vendorId":7,"type":"upload","category":"product","content":{"id":63}}"#,
    )
    .await;
    assert_eq!(upload["category"], "product");
    call(
        &core,
        "CreateNotification",
        r#"{"vendorId":7,"type":"order:shipped","content":{"orderId":1}}"#,
    )
    .await;

    let counts = call(&core, "GetUnreadCounts", r#"{"vendorId":7}"#).await;
    assert_eq!(counts["count"], "3");
    assert_eq!(
        counts["byCategory"],
        serde_json::json!({"order": "2", "product": "1"})
    );

    let archived = call(
        &core,
        "ArchiveNotifications",
        &format!(
            r#"{{"vendorId":7,"ids":[{}],"archived":true}}"#,
            upload["id"]
        ),
    )
    .await;
    assert_eq!(archived["updated"], 1);
    let shelf = call(
        &core,
        "ListNotifications",
        r#"{"vendorId":7,"view":"ARCHIVED","page":1,"limit":20}"#,
    )
    .await;
    assert_eq!(shelf["items"].as_array().unwrap().len(), 1);
    assert_eq!(shelf["items"][0]["id"], upload["id"]);
    assert!(shelf["items"][0]["archivedAt"].is_string());
    assert_eq!(shelf["pagination"]["totalRecords"], "1");
    let orders = call(
        &core,
        "ListNotifications",
        r#"{"vendorId":7,"view":"ALL","category":"order"}"#,
    )
    .await;
    assert_eq!(orders["pagination"]["totalRecords"], "2");

    let marked = call(
        &core,
        "MarkAllNotifications",
        &format!(
            r#"{{"vendorId":7,"status":"READ","category":"order","upToSeq":"{}"}}"#,
            placed["seq"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        marked["updated"], 1,
        "up to the seq given, not the later one"
    );
    let counts = call(&core, "GetUnreadCounts", r#"{"vendorId":7}"#).await;
    assert_eq!(counts["count"], "1");
    assert_eq!(counts["byCategory"], serde_json::json!({"order": "1"}));
    let offline = call(&core, "ListOffline", r#"{"vendorId":7}"#).await;
    assert_eq!(
        offline["pagination"]["totalRecords"], "1",
        "ListOffline is the INBOX view"
    );
    let rest = call(
        &core,
        "MarkAllNotifications",
        r#"{"vendorId":7,"status":"READ"}"#,
    )
    .await;
    assert_eq!(rest["updated"], 1);
    let counts = call(&core, "GetUnreadCounts", r#"{"vendorId":7}"#).await;
    assert!(counts.get("count").is_none(), "0 is left out: {counts}");

    let erased = call(&core, "EraseUser", r#"{"vendorId":7}"#).await;
    assert_eq!(erased["deleted"], "3");
    let all = call(&core, "ListNotifications", r#"{"vendorId":7,"view":"ALL"}"#).await;
    assert!(all.get("items").is_none(), "{all}");
    let after = call(
        &core,
        "CreateNotification",
        r#"{"vendorId":7,"type":"sale:flash","content":{}}"#,
    )
    .await;
    assert_eq!(after["seq"], "4", "the seq goes on after an erasure");
}

/// A call grpcurl must fail: its stderr (the code and message it prints).
async fn call_refused(core: &CoreProcess, method: &str, body: &str) -> String {
    let output = run(core, method, body).await;
    assert!(
        !output.status.success(),
        "grpcurl {method} succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// An order's updates collapse into one unread notification, and a
/// return's buttons are pressed once, all through grpcurl's JSON.
#[tokio::test]
async fn grpcurl_collapses_updates_and_completes_an_action() {
    let core = CoreProcess::start();
    let update = |status: &str| {
        format!(
            r#"{{"customerId":12,"type":"order:{status}","content":{{"order":881}},"collapseKey":"order-881"}}"#
        )
    };
    let placed = call(&core, "CreateNotification", &update("placed")).await;
    assert_eq!(placed["collapseKey"], "order-881");
    let packed = call(&core, "CreateNotification", &update("packed")).await;
    assert_eq!(packed["replaces"], placed["id"]);
    let counts = call(&core, "GetUnreadCounts", r#"{"customerId":12}"#).await;
    assert_eq!(counts["count"], "1", "the count does not grow");
    let old = call(
        &core,
        "GetNotification",
        &format!(r#"{{"id":{}}}"#, placed["id"]),
    )
    .await;
    assert_eq!(old["replacedBy"], packed["id"]);
    let all = call(
        &core,
        "ListNotifications",
        r#"{"customerId":12,"view":"ALL"}"#,
    )
    .await;
    let listed: Vec<&Value> = all["items"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], packed["id"]);

    let request = call(
        &core,
        "CreateNotification",
        r#"{"vendorId":5,"type":"return:requested","content":{"order":881},
            "actions":[{"id":"accept","label":"Accept return"},
                       {"id":"view","label":"View order","url":"https://shop.example/orders/881"}]}"#,
    )
    .await;
    assert_eq!(
        request["actions"][1]["url"],
        "https://shop.example/orders/881"
    );
    let id = request["id"].as_str().unwrap();
    let unknown = call_refused(
        &core,
        "CompleteAction",
        &format!(r#"{{"vendorId":5,"id":"{id}","actionId":"refund"}}"#),
    )
    .await;
    assert!(
        unknown.contains("InvalidArgument") && unknown.contains("actionId"),
        "{unknown}"
    );
    let done = call(
        &core,
        "CompleteAction",
        &format!(r#"{{"vendorId":5,"id":"{id}","actionId":"accept"}}"#),
    )
    .await;
    assert_eq!(done["status"], "READ");
    assert_eq!(done["actionTaken"]["id"], "accept");
    assert!(done["actionTaken"]["at"].as_str().unwrap().ends_with('Z'));
    let again = call_refused(
        &core,
        "CompleteAction",
        &format!(r#"{{"vendorId":5,"id":"{id}","actionId":"view"}}"#),
    )
    .await;
    assert!(again.contains("FailedPrecondition"), "{again}");
    let bad = call_refused(
        &core,
        "CreateNotification",
        r#"{"vendorId":5,"type":"x","content":{},"actions":[{"id":"a","label":"A","url":"javascript:alert(1)"}]}"#,
    )
    .await;
    assert!(bad.contains("actions[0].url"), "{bad}");
}

/// A core on SQLite, and one on a fresh PostgreSQL database when there is
/// a server.
async fn on_both_stores() -> Vec<CoreProcess> {
    let mut cores = vec![CoreProcess::start()];
    if let Some(admin) = crate::harness::postgres_admin_url() {
        let url = crate::harness::create_database(&admin).await;
        cores.push(CoreProcess::start_on(
            &url,
            &[],
            tempfile::tempdir().unwrap(),
        ));
    }
    cores
}

/// Preferences through grpcurl's JSON, on both stores: a pair turned off,
/// a create of it answered `suppressed` with nothing stored, a critical one
/// sent anyway, a batch counting what it skipped, and a rule without
/// `enabled` refused naming it.
#[tokio::test]
async fn grpcurl_sets_preferences_and_creates_skip_the_muted() {
    let cores = on_both_stores().await;
    for core in &cores {
        let set = call(
            core,
            "SetPreferences",
            r#"{"customerId":12,"rules":[{"category":"marketing","channel":"PUSH","enabled":false}]}"#,
        )
        .await;
        let off = serde_json::json!({"rules":[{"category":"marketing","channel":"PUSH","enabled":false}]});
        assert_eq!(set, off);
        assert_eq!(
            call(core, "GetPreferences", r#"{"customerId":12}"#).await,
            off
        );
        assert_eq!(
            call(core, "GetPreferences", r#"{"customerId":13}"#).await,
            serde_json::json!({}),
            "nobody else's"
        );

        let sale =
            r#"{"customerId":12,"type":"marketing:sale","channel":"PUSH","content":{"off":20}}"#;
        let skipped = call(core, "CreateNotification", sale).await;
        assert_eq!(skipped["suppressed"], true);
        assert!(
            skipped.get("id").is_none() && skipped.get("seq").is_none(),
            "{skipped}"
        );
        let critical = call(
            core,
            "CreateNotification",
            r#"{"customerId":12,"type":"marketing:sale","channel":"PUSH","content":{"off":20},"critical":true}"#,
        )
        .await;
        assert_eq!(critical["seq"], "1", "{critical}");
        assert!(critical.get("suppressed").is_none());

        let batch = call(
            core,
            "CreateNotifications",
            r#"{"recipients":[{"customerId":12},{"customerId":13}],"type":"marketing:sale","content":{}}"#,
        )
        .await;
        assert_eq!(batch["suppressed"], "1", "{batch}");
        assert_eq!(batch["items"][0]["suppressed"], true);
        assert_eq!(batch["items"][1]["seq"], "1");
        let counts = call(core, "GetUnreadCounts", r#"{"customerId":12}"#).await;
        assert_eq!(counts["count"], "1", "only the critical one: {counts}");

        let refused = call_refused(
            core,
            "SetPreferences",
            r#"{"customerId":12,"rules":[{"category":"marketing","channel":"EMAIL"}]}"#,
        )
        .await;
        assert!(refused.contains("InvalidArgument"), "{refused}");
        assert!(refused.contains("rules[0].enabled: required"), "{refused}");
        assert_eq!(
            call(core, "GetPreferences", r#"{"customerId":12}"#).await,
            off
        );
    }
}

/// A scheduled send through grpcurl's JSON, on both stores: PENDING with
/// its `sendAt` and no seq, cancelled with the codes grpcurl prints, and one
/// left to go out read back SENT with its seq.
#[tokio::test]
async fn grpcurl_schedules_cancels_and_sends() {
    let cores = on_both_stores().await;
    for core in &cores {
        let soon = notify_store::format_millis(notify_store::now_millis() + 1_000);
        let body = format!(
            r#"{{"customerId":12,"type":"order:reminder","content":{{"order":881}},"sendAt":"{soon}"}}"#
        );
        let pending = call(core, "CreateNotification", &body).await;
        assert_eq!(pending["status"], "PENDING", "{pending}");
        assert_eq!(pending["sendAt"], soon.as_str());
        assert!(pending.get("seq").is_none(), "{pending}");
        let id = pending["id"].as_str().unwrap().to_owned();

        let cancel_me = call(core, "CreateNotification", &body).await;
        let cancel = format!(r#"{{"id":"{}"}}"#, cancel_me["id"].as_str().unwrap());
        let cancelled = call(core, "CancelNotification", &cancel).await;
        assert_eq!(cancelled["status"], "PENDING");
        let again = call_refused(core, "CancelNotification", &cancel).await;
        assert!(again.contains("NotFound"), "{again}");

        let get = format!(r#"{{"id":"{id}"}}"#);
        let mut sent = call(core, "GetNotification", &get).await;
        for _ in 0..100 {
            if sent["status"] == "SENT" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            sent = call(core, "GetNotification", &get).await;
        }
        assert_eq!(sent["status"], "SENT", "{sent}");
        assert_eq!(sent["seq"], "1", "the cancelled one took none");
        assert!(sent.get("sendAt").is_none());
        let late = call_refused(core, "CancelNotification", &get).await;
        assert!(late.contains("FailedPrecondition"), "{late}");
        assert!(late.contains("not pending"), "{late}");
        let bad = call_refused(
            core,
            "CreateNotification",
            r#"{"customerId":12,"type":"x","content":{},"sendAt":"tomorrow"}"#,
        )
        .await;
        assert!(
            bad.contains("InvalidArgument") && bad.contains("sendAt:"),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn grpcurl_follows_two_users_on_one_call() {
    let core = CoreProcess::start();
    for (vendor, n) in [(5, 1), (5, 2), (6, 1)] {
        let body = format!(r#"{{"vendorId":{vendor},"type":"order:paid","content":{{"n":{n}}}}}"#);
        call(&core, "CreateNotification", &body).await;
    }
    // Two follows and a refused one, as grpcurl sends a stream of messages;
    // grpcurl stops listening after 3 s (the follows would go on).
    let requests = r#"{"follow":{"id":"1","stream":{"vendorId":5,"afterSeq":"0"}}}
        {"follow":{"id":"2","stream":{"vendorId":6,"afterSeq":"0"}}}
        {"follow":{"id":"3","stream":{"vendorId":0}}}"#;
    let output = Command::new(grpcurl())
        .args(["-plaintext", "-max-time", "3", "-d", requests])
        .arg(core.addr.to_string())
        .arg(format!("{SERVICE}/FollowUsers"))
        .stderr(Stdio::null())
        .output()
        .await
        .unwrap();
    let messages: Vec<Value> = serde_json::Deserializer::from_slice(&output.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("grpcurl prints one JSON object per message");
    let events: Vec<Value> = messages
        .iter()
        .flat_map(|message| message["events"].as_array().cloned().unwrap_or_default())
        .collect();
    let replayed = |id: &str| -> Vec<(String, String)> {
        events
            .iter()
            .filter(|event| event["id"] == id)
            .filter_map(|event| {
                let n = &event["event"]["notification"];
                n.is_object().then(|| {
                    (
                        n["vendorId"].as_str().unwrap().to_owned(),
                        n["seq"].as_str().unwrap().to_owned(),
                    )
                })
            })
            .collect()
    };
    let pair = |vendor: &str, seq: &str| (vendor.to_owned(), seq.to_owned());
    assert_eq!(
        replayed("1"),
        vec![pair("5", "1"), pair("5", "2")],
        "{messages:?}"
    );
    assert_eq!(replayed("2"), vec![pair("6", "1")], "{messages:?}");
    let ended = events
        .iter()
        .find(|event| event["id"] == "3")
        .expect("follow 3 answered");
    assert_eq!(ended["ended"]["code"], 3, "INVALID_ARGUMENT: {ended}");
    let message = ended["ended"]["message"].as_str().unwrap();
    assert!(message.contains("vendorId"), "{message}");
}
