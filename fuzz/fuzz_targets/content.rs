//! Content conversion: any bytes that prost decodes as a
//! `google.protobuf.Struct` go through `struct_to_json`, the stored JSON
//! text and `json_text_to_struct`, as a created notification's content does
//! on its way into the store and back out.
//!
//! Checked, besides "no panic":
//! - `struct_to_json` refuses exactly the Structs holding NaN or ±infinity;
//! - what comes back equals what went in, up to what JSON cannot say (an
//!   unset kind or any null code is `null`, -0 is 0): so every finite double
//!   comes back bit for bit;
//! - the stored text is a fixed point: converting the Struct read back
//!   gives the same text again;
//! - `validate::content` stores that same text, or refuses it naming
//!   `content` because it is over 64 KiB.

#![no_main]

use libfuzzer_sys::fuzz_target;
use notify::contract::convert::{ContentError, json_text_to_struct, map_to_struct, struct_to_json};
use notify::contract::validate::{self, MAX_CONTENT_BYTES};
use prost::Message;
use prost_types::value::Kind;
use prost_types::{Struct, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(original) = Struct::decode(data) else {
        return;
    };
    let json = match struct_to_json(&original) {
        Ok(json) => json,
        Err(ContentError::NonFinite) => {
            assert!(
                has_non_finite(&original),
                "refused a Struct of finite numbers"
            );
            let error = validate::content(Some(&original)).unwrap_err();
            assert_eq!(error.field, "content");
            return;
        }
    };
    assert!(!has_non_finite(&original), "accepted a non-finite number");

    let text = serde_json::to_string(&json).expect("a JSON object always serializes");
    let back = json_text_to_struct(&text);
    same_struct(&original, &back, "$");
    assert_eq!(map_to_struct(json), back);

    let again = serde_json::to_string(&struct_to_json(&back).expect("read back is finite"))
        .expect("a JSON object always serializes");
    assert_eq!(text, again, "stored text is not a fixed point");

    match validate::content(Some(&original)) {
        Ok(stored) => {
            assert_eq!(stored, text);
            assert!(stored.len() <= MAX_CONTENT_BYTES);
        }
        Err(error) => {
            assert_eq!(error.field, "content");
            assert!(text.len() > MAX_CONTENT_BYTES, "refused: {error}");
        }
    }
});

fn has_non_finite(s: &Struct) -> bool {
    s.fields.values().any(value_has_non_finite)
}

fn value_has_non_finite(value: &Value) -> bool {
    match &value.kind {
        Some(Kind::NumberValue(n)) => !n.is_finite(),
        Some(Kind::StructValue(s)) => has_non_finite(s),
        Some(Kind::ListValue(list)) => list.values.iter().any(value_has_non_finite),
        _ => false,
    }
}

fn same_struct(sent: &Struct, back: &Struct, path: &str) {
    assert_eq!(
        sent.fields.keys().collect::<Vec<_>>(),
        back.fields.keys().collect::<Vec<_>>(),
        "keys differ at {path}"
    );
    for (key, value) in &sent.fields {
        same_value(value, &back.fields[key], &format!("{path}.{key:?}"));
    }
}

fn same_value(sent: &Value, back: &Value, path: &str) {
    match (&sent.kind, &back.kind) {
        (None | Some(Kind::NullValue(_)), Some(Kind::NullValue(0))) => {}
        (Some(Kind::BoolValue(a)), Some(Kind::BoolValue(b))) => assert_eq!(a, b, "at {path}"),
        (Some(Kind::StringValue(a)), Some(Kind::StringValue(b))) => {
            assert_eq!(a, b, "at {path}")
        }
        (Some(Kind::NumberValue(a)), Some(Kind::NumberValue(b))) => assert!(
            a.to_bits() == b.to_bits() || (*a == 0.0 && b.to_bits() == 0),
            "number at {path}: sent {a:e} ({:#018x}), got back {b:e} ({:#018x})",
            a.to_bits(),
            b.to_bits()
        ),
        (Some(Kind::StructValue(a)), Some(Kind::StructValue(b))) => same_struct(a, b, path),
        (Some(Kind::ListValue(a)), Some(Kind::ListValue(b))) => {
            assert_eq!(a.values.len(), b.values.len(), "list length at {path}");
            for (index, (a, b)) in a.values.iter().zip(&b.values).enumerate() {
                same_value(a, b, &format!("{path}[{index}]"));
            }
        }
        (sent, back) => panic!("at {path}: sent {sent:?}, got back {back:?}"),
    }
}
