//! Request validation: structured input from `arbitrary` goes through every
//! check of `notify::contract::validate`.
//!
//! Checked, besides "no panic": every error names its field (the field the
//! check is about, as the JSON spells it) and displays as `field: reason`;
//! every accepted value keeps the promise of its check (a positive id, 1–128
//! characters, a priority in 0–10, canonical distinct ids, content that is
//! a JSON object of at most 64 KiB, …).

#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use notify::contract::convert::struct_to_json;
use notify::contract::validate::{
    self, DEFAULT_PAGE_LIMIT, FieldError, MAX_BULK, MAX_CONTENT_BYTES, MAX_NAME_CHARS,
    MAX_PAGE_LIMIT, MAX_TYPE_CHARS, PRIORITY_RANGE,
};
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

#[derive(Debug, Arbitrary)]
struct Input {
    vendor_id: Option<i64>,
    customer_id: Option<i64>,
    kind: String,
    channel: i32,
    content: Option<Content>,
    priority: i32,
    idempotency_key: String,
    id_field: String,
    id: IdText,
    ids: Vec<IdText>,
    page: Option<i32>,
    limit: Option<i32>,
    status: i32,
    after_seq: Option<i64>,
    room: String,
}

/// An id as sent: mostly arbitrary text, sometimes 12 bytes in hex (either
/// case), so the valid paths and duplicates are reached too.
#[derive(Debug, Arbitrary)]
enum IdText {
    Text(String),
    Hex([u8; 12], bool),
    Repeat(u8),
}

impl IdText {
    fn text(&self) -> String {
        match self {
            IdText::Text(text) => text.clone(),
            IdText::Hex(bytes, upper) => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                if *upper { hex.to_uppercase() } else { hex }
            }
            IdText::Repeat(n) => "ab".repeat(12 + usize::from(*n % 3)),
        }
    }
}

/// A `google.protobuf.Struct`, nested at most `MAX_DEPTH` deep, with
/// non-finite numbers and, now and then, a long string to pass 64 KiB.
#[derive(Debug)]
struct Content(Struct);

const MAX_DEPTH: u32 = 12;

impl<'a> Arbitrary<'a> for Content {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Content(arbitrary_struct(u, 0)?))
    }
}

fn arbitrary_struct(u: &mut Unstructured<'_>, depth: u32) -> Result<Struct> {
    let mut fields = std::collections::BTreeMap::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let key: String = u.arbitrary()?;
        fields.insert(key, arbitrary_value(u, depth + 1)?);
    }
    Ok(Struct { fields })
}

fn arbitrary_value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let choices = if depth >= MAX_DEPTH { 5 } else { 7 };
    let kind = match u.choose_index(choices)? {
        0 => None,
        1 => Some(Kind::NullValue(u.arbitrary()?)),
        2 => Some(Kind::BoolValue(u.arbitrary()?)),
        3 => Some(Kind::NumberValue(u.arbitrary()?)),
        4 => {
            let text: String = u.arbitrary()?;
            let times = if u.ratio(1, 8)? {
                u.int_in_range(1..=70_000usize)? / text.len().max(1)
            } else {
                1
            };
            Some(Kind::StringValue(text.repeat(times.max(1))))
        }
        5 => {
            let mut values = Vec::new();
            for _ in 0..u.int_in_range(0..=6)? {
                values.push(arbitrary_value(u, depth + 1)?);
            }
            Some(Kind::ListValue(ListValue { values }))
        }
        _ => Some(Kind::StructValue(arbitrary_struct(u, depth)?)),
    };
    Ok(Value { kind })
}

fuzz_target!(|input: Input| {
    let fields = |expected: &[&str], error: &FieldError| {
        assert!(
            expected.contains(&error.field.as_str()),
            "error names {:?}, expected one of {expected:?}: {error}",
            error.field
        );
        assert!(!error.reason.is_empty(), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!("{}: {}", error.field, error.reason)
        );
    };
    let chars = |text: &str| text.chars().count();
    let controls = |text: &str| text.chars().any(char::is_control);

    match validate::recipient(input.vendor_id, input.customer_id) {
        Ok(user) => {
            let id = user.vendor_id().or(user.customer_id()).unwrap();
            assert!(id > 0);
            assert_eq!(user.vendor_id().is_some(), input.vendor_id.is_some());
            assert_eq!(
                (user.vendor_id(), user.customer_id()),
                (input.vendor_id, input.customer_id)
            );
        }
        Err(error) => fields(&["vendorId", "customerId"], &error),
    }

    match validate::kind(&input.kind) {
        Ok(kind) => {
            assert_eq!(kind, input.kind);
            assert!((1..=MAX_TYPE_CHARS).contains(&chars(&kind)));
            assert!(!kind.trim().is_empty() && !controls(&kind));
        }
        Err(error) => fields(&["type"], &error),
    }

    match validate::channel(input.channel) {
        Ok(channel) => assert!(input.channel == 0 || channel.code() == i64::from(input.channel)),
        Err(error) => fields(&["channel"], &error),
    }

    let content = input.content.as_ref().map(|c| &c.0);
    match validate::content(content) {
        Ok(text) => {
            assert!(text.len() <= MAX_CONTENT_BYTES);
            let json: serde_json::Value = serde_json::from_str(&text).expect("stored text is JSON");
            assert!(json.is_object());
            let expected = struct_to_json(content.unwrap()).unwrap();
            assert_eq!(text, serde_json::to_string(&expected).unwrap());
        }
        Err(error) => fields(&["content"], &error),
    }

    match validate::priority(input.priority) {
        Ok(priority) => assert!(PRIORITY_RANGE.contains(&priority) && priority == input.priority),
        Err(error) => fields(&["priority"], &error),
    }

    match validate::idempotency_key(&input.idempotency_key) {
        Ok(None) => assert!(input.idempotency_key.is_empty()),
        Ok(Some(key)) => {
            assert_eq!(key, input.idempotency_key);
            assert!((1..=MAX_NAME_CHARS).contains(&chars(&key)) && !controls(&key));
        }
        Err(error) => fields(&["idempotencyKey"], &error),
    }

    let id_text = input.id.text();
    match validate::id(&input.id_field, &id_text) {
        Ok(id) => {
            assert_canonical(&id);
            assert_eq!(id, id_text.to_ascii_lowercase());
        }
        Err(error) => fields(&[input.id_field.as_str()], &error),
    }

    let ids: Vec<String> = input.ids.iter().map(IdText::text).collect();
    match validate::ids(&ids) {
        Ok(out) => {
            assert!((1..=MAX_BULK).contains(&ids.len()));
            assert!(!out.is_empty() && out.len() <= ids.len());
            for (index, id) in out.iter().enumerate() {
                assert_canonical(id);
                assert!(!out[..index].contains(id), "duplicate {id}");
            }
            assert!(ids.iter().all(|id| out.contains(&id.to_ascii_lowercase())));
        }
        Err(error) => {
            let index = error
                .field
                .strip_prefix("ids[")
                .and_then(|rest| rest.strip_suffix(']'));
            match index {
                Some(index) => {
                    let index: usize = index.parse().expect("ids[N] with a number");
                    assert!(index < ids.len(), "{error}");
                    fields(&[error.field.as_str()], &error);
                }
                None => fields(&["ids"], &error),
            }
        }
    }

    match validate::page(input.page) {
        Ok(page) => {
            assert!(page >= 1);
            assert_eq!(i64::from(page), input.page.map_or(1, i64::from));
        }
        Err(error) => fields(&["page"], &error),
    }

    match validate::limit(input.limit) {
        Ok(limit) => {
            assert!((1..=MAX_PAGE_LIMIT as u32).contains(&limit));
            assert_eq!(limit, input.limit.map_or(DEFAULT_PAGE_LIMIT, |l| l as u32));
        }
        Err(error) => fields(&["limit"], &error),
    }

    match validate::mark_status(input.status) {
        Ok(status) => assert_eq!(status.code(), i64::from(input.status)),
        Err(error) => fields(&["status"], &error),
    }

    match validate::after_seq(input.after_seq) {
        Ok(seq) => {
            assert_eq!(seq, input.after_seq);
            assert!(seq.is_none_or(|s| s >= 0));
        }
        Err(error) => fields(&["afterSeq"], &error),
    }

    match validate::room(&input.room) {
        Ok(room) => {
            assert_eq!(room, input.room);
            assert!((1..=MAX_NAME_CHARS).contains(&chars(&room)) && !controls(&room));
        }
        Err(error) => fields(&["room"], &error),
    }
});

fn assert_canonical(id: &str) {
    assert_eq!(id.len(), 24, "{id:?}");
    assert!(
        id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{id:?}"
    );
}
