//! Client-event parsing: any bytes, read as the JSON text of a Socket.IO
//! event's payload, go through `page_request` (`offlineNotifications`),
//! `mark_request` (`markAsRead`), `mark_all_request` (`markAllAsRead`) and
//! `archive_request` (`archive`), as the bridge's handlers call them.
//!
//! Checked, besides "no panic": every refusal is a 400 error envelope with
//! a message; an accepted page has `page` ≥ 1 and `limit` 1–100, equal to
//! the payload's fields when set (1 and 20 when not); accepted ids are 1–1,000
//! distinct canonical ids, one for each distinct id of the payload.

#![no_main]

use libfuzzer_sys::fuzz_target;
use notify::bridge::payload::{
    AppError, archive_request, mark_all_request, mark_request, page_request,
};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let parsed = serde_json::from_slice::<Value>(data);
    let payload = parsed.as_ref().ok().cloned();
    let read = || serde_json::from_slice::<Value>(data);

    match page_request(read()) {
        Ok(request) => {
            let (page, limit) = (request.page, request.limit);
            let payload = payload.clone().expect("accepted an unreadable payload");
            assert!(page >= 1);
            assert!((1..=100).contains(&limit));
            assert_eq!(field(&payload, "page").unwrap_or(1), i64::from(page));
            assert_eq!(field(&payload, "limit").unwrap_or(20), i64::from(limit));
        }
        Err(error) => refused(&error),
    }

    match mark_all_request(read()) {
        Ok((category, up_to_seq)) => {
            assert!(category.is_none_or(|c| notify_store::is_category(&c)));
            assert!(up_to_seq.is_none_or(|seq| seq >= 1));
        }
        Err(error) => refused(&error),
    }
    if let Err(error) = archive_request(read()) {
        refused(&error);
    }

    match mark_request(read()) {
        Ok(ids) => {
            let payload = payload.expect("accepted an unreadable payload");
            assert!(!ids.is_empty() && ids.len() <= 1000);
            for (index, id) in ids.iter().enumerate() {
                assert_eq!(id.len(), 24);
                assert!(id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
                assert!(!ids[..index].contains(id), "duplicate id {id}");
            }
            let sent = payload["ids"].as_array().expect("ids was an array");
            let mut distinct: Vec<String> = sent
                .iter()
                .map(|v| v.as_str().expect("ids were strings").to_ascii_lowercase())
                .collect();
            distinct.sort();
            distinct.dedup();
            let mut got = ids.clone();
            got.sort();
            assert_eq!(got, distinct);
        }
        Err(error) => refused(&error),
    }
});

/// A set integer field of an object payload (null counts as unset).
fn field(payload: &Value, name: &str) -> Option<i64> {
    match payload.get(name) {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_i64().expect("accepted a non-integer")),
    }
}

fn refused(error: &AppError) {
    assert!(error.error);
    assert_eq!(error.status_code, 400, "{error:?}");
    assert!(!error.message.is_empty());
}
