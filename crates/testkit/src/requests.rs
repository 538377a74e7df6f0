//! Typed requests the tests and the load tool send, and Struct ⇄ JSON.

use notify::contract::proto;
use serde_json::{Value, json};

/// A CreateNotification request for `vendor_id` with JSON `content`.
pub fn create_for_vendor(vendor_id: i64, content: Value) -> proto::CreateNotificationRequest {
    proto::CreateNotificationRequest {
        vendor_id: Some(vendor_id),
        r#type: "product:upload".into(),
        channel: proto::Channel::Push as i32,
        content: Some(to_struct(content)),
        priority: 1,
        ..Default::default()
    }
}

/// A small valid request, numbered `n`.
pub fn simple(vendor_id: i64, n: i64) -> proto::CreateNotificationRequest {
    create_for_vendor(
        vendor_id,
        json!({"message": format!("notification {n}"), "n": n}),
    )
}

/// Vendors as CreateNotifications recipients.
pub fn vendors(ids: impl IntoIterator<Item = i64>) -> Vec<proto::Recipient> {
    ids.into_iter()
        .map(|id| proto::Recipient {
            vendor_id: Some(id),
            customer_id: None,
        })
        .collect()
}

/// JSON object → Struct.
pub fn to_struct(value: Value) -> prost_types::Struct {
    let Value::Object(map) = value else {
        panic!("content must be a JSON object")
    };
    notify::contract::convert::map_to_struct(map)
}

/// Struct → JSON object.
pub fn to_json(content: &prost_types::Struct) -> Value {
    Value::Object(notify::contract::convert::struct_to_json(content).expect("finite numbers"))
}
