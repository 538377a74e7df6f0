//! Between the store's values and the wire: `google.protobuf.Struct` to the
//! JSON text we store, and stored notifications to proto messages.
//!
//! A Struct carries every number as a double, so an integral double within
//! ±2^53 is written back as a JSON integer: 63 stays 63, not 63.0.

use notify_store::{ActionTaken, NewNotification, Notification, Rule, User, format_millis};
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::{Map, Number, Value as Json};

use crate::contract::proto;

/// Largest integer a double holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

/// Why a Struct is not storable JSON.
#[derive(Debug, PartialEq, Eq)]
pub enum ContentError {
    /// NaN or ±infinity, which JSON cannot carry.
    NonFinite,
}

/// A Struct as a JSON object.
pub fn struct_to_json(content: &Struct) -> Result<Map<String, Json>, ContentError> {
    content
        .fields
        .iter()
        .map(|(key, value)| Ok((key.clone(), value_to_json(value)?)))
        .collect()
}

fn value_to_json(value: &Value) -> Result<Json, ContentError> {
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::NumberValue(n)) => number_to_json(*n)?,
        Some(Kind::StructValue(s)) => Json::Object(struct_to_json(s)?),
        Some(Kind::ListValue(list)) => Json::Array(
            list.values
                .iter()
                .map(value_to_json)
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn number_to_json(n: f64) -> Result<Json, ContentError> {
    if !n.is_finite() {
        return Err(ContentError::NonFinite);
    }
    if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER {
        return Ok(Json::Number(Number::from(n as i64)));
    }
    Number::from_f64(n)
        .map(Json::Number)
        .ok_or(ContentError::NonFinite)
}

/// Stored JSON text back as a Struct. The text was written by us from a
/// Struct, so anything but an object means the row is damaged: that gives
/// an empty Struct and a log line rather than a failed read.
pub fn json_text_to_struct(text: &str) -> Struct {
    match serde_json::from_str::<Json>(text) {
        Ok(Json::Object(map)) => map_to_struct(map),
        _ => {
            tracing::error!("stored content is not a JSON object");
            Struct::default()
        }
    }
}

/// A JSON object as a Struct.
pub fn map_to_struct(map: Map<String, Json>) -> Struct {
    Struct {
        fields: map
            .into_iter()
            .map(|(key, value)| (key, json_to_value(value)))
            .collect(),
    }
}

fn json_to_value(json: Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        Json::Object(map) => Kind::StructValue(map_to_struct(map)),
    };
    Value { kind: Some(kind) }
}

/// A stored notification as the proto message.
pub fn notification(n: &Notification) -> proto::Notification {
    proto::Notification {
        id: n.id.clone(),
        vendor_id: n.recipient.vendor_id(),
        customer_id: n.recipient.customer_id(),
        r#type: n.kind.clone(),
        channel: n.channel.code() as i32,
        content: Some(json_text_to_struct(&n.content)),
        status: n.status.code() as i32,
        priority: n.priority,
        created_at: format_millis(n.created_at),
        updated_at: format_millis(n.updated_at),
        seq: n.seq,
        category: n.category.clone(),
        archived_at: n.archived_at.map(format_millis).unwrap_or_default(),
        expires_at: n.expires_at.map(format_millis).unwrap_or_default(),
        collapse_key: n.collapse_key.clone().unwrap_or_default(),
        replaces: n.replaces.clone().unwrap_or_default(),
        replaced_by: n.replaced_by.clone().unwrap_or_default(),
        actions: n
            .actions
            .iter()
            .map(|a| proto::Action {
                id: a.id.clone(),
                label: a.label.clone(),
                url: a.url.clone().unwrap_or_default(),
            })
            .collect(),
        action_taken: n.action_taken.as_ref().map(action_taken),
        suppressed: false,
        send_at: n.send_at.map(format_millis).unwrap_or_default(),
    }
}

/// A notification not stored because its recipient turned its category off
/// on its channel: the request's fields, marked suppressed (no id, no seq,
/// no status).
pub fn suppressed(n: &NewNotification) -> proto::Notification {
    proto::Notification {
        vendor_id: n.recipient.vendor_id(),
        customer_id: n.recipient.customer_id(),
        r#type: n.kind.clone(),
        channel: n.channel.code() as i32,
        content: Some(json_text_to_struct(&n.content)),
        priority: n.priority,
        category: n.category.clone(),
        suppressed: true,
        ..Default::default()
    }
}

/// A user's preferences: the pairs turned off.
pub fn preferences(rules: &[Rule]) -> proto::PreferencesResponse {
    proto::PreferencesResponse {
        rules: rules
            .iter()
            .map(|rule| proto::PreferenceRule {
                category: rule.category.clone(),
                channel: rule.channel.code() as i32,
                enabled: Some(rule.enabled),
            })
            .collect(),
    }
}

/// A taken action as the proto message.
pub fn action_taken(taken: &ActionTaken) -> proto::ActionTaken {
    proto::ActionTaken {
        id: taken.id.clone(),
        at: format_millis(taken.at),
    }
}

/// A user as the presence message's recipient fields.
pub fn presence_change(user: User, last_seen_at: Option<i64>) -> proto::PresenceChange {
    proto::PresenceChange {
        vendor_id: user.vendor_id(),
        customer_id: user.customer_id(),
        last_seen_at: last_seen_at.map(format_millis).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(json: Json) -> Json {
        let Json::Object(map) = json else {
            panic!("test input must be an object")
        };
        let text = serde_json::to_string(&struct_to_json(&map_to_struct(map)).unwrap()).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn content_round_trips_exactly() {
        let original = serde_json::json!({
            "id": 63, "price": "22", "discount": 3244.9, "isAvailable": true,
            "none": null, "nested": {"list": [1, -2, 0.5, "x", {"deep": []}]},
            "unicode": "Größe ✓ 日本", "big": 9007199254740992i64, "negative": -17
        });
        let back = roundtrip(original.clone());
        assert_eq!(back, original);
        assert_eq!(back["id"].to_string(), "63");
    }

    /// Found by the `content` fuzz target: a double that needs all its
    /// significant digits came back from the stored text one unit in the
    /// last place off, because serde_json's default parser is not correctly
    /// rounded (its `float_roundtrip` feature is).
    #[test]
    fn full_precision_doubles_come_back_bit_for_bit() {
        for n in [
            378614.58032486675,
            2.90319988366631e-306,
            -1.81996730402717e-179,
        ] {
            let sent = Struct {
                fields: [(
                    "x".to_owned(),
                    Value {
                        kind: Some(Kind::NumberValue(n)),
                    },
                )]
                .into(),
            };
            let text = serde_json::to_string(&struct_to_json(&sent).unwrap()).unwrap();
            let back = json_text_to_struct(&text);
            let Some(Kind::NumberValue(got)) = back.fields["x"].kind else {
                panic!("{text} came back as {back:?}")
            };
            assert_eq!(got.to_bits(), n.to_bits(), "{text} came back as {got:e}");
        }
    }

    #[test]
    fn non_finite_numbers_are_refused() {
        let content = Struct {
            fields: [(
                "x".to_owned(),
                Value {
                    kind: Some(Kind::NumberValue(f64::NAN)),
                },
            )]
            .into(),
        };
        assert_eq!(struct_to_json(&content), Err(ContentError::NonFinite));
    }
}
