//! The Socket.IO JSON, exactly as the seed documents it: camelCase,
//! `vendorId`/`customerId` numbers or null, ISO 8601 UTC with milliseconds.

use notify_store::{Channel, ListQuery, Status, View};
use serde::Serialize;
use serde_json::Value;
use tonic::Code;

use crate::contract::convert::struct_to_json;
use crate::contract::paging::Pagination;
use crate::contract::proto;
use crate::contract::validate::{self, FieldError};

/// A notification as browsers see it (the seed's shape, plus `seq`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationJson {
    /// 24 hex characters.
    pub id: String,
    /// Set for a vendor's notification, null otherwise.
    pub vendor_id: Option<i64>,
    /// Set for a customer's notification, null otherwise.
    pub customer_id: Option<i64>,
    /// e.g. `product:upload`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `PUSH`, `IN_APP`, `EMAIL` or `SMS`.
    pub channel: &'static str,
    /// Exactly as created.
    pub content: Value,
    /// `SENT`, `DELIVERED`, `READ` (or `PENDING`).
    pub status: &'static str,
    /// Higher is more urgent.
    pub priority: i32,
    /// ISO 8601 UTC with milliseconds.
    pub created_at: String,
    /// ISO 8601 UTC with milliseconds.
    pub updated_at: String,
    /// Per-user sequence number; `id` is the key to drop a repeat.
    pub seq: i64,
    /// The inbox tab it belongs to, e.g. `order`.
    pub category: String,
    /// When it was archived, or null.
    pub archived_at: Option<String>,
    /// When it expires, or null.
    pub expires_at: Option<String>,
    /// A newer notification with this key replaces this one while unread;
    /// null when none.
    pub collapse_key: Option<String>,
    /// The id of the unread one this one replaced, or null.
    pub replaces: Option<String>,
    /// The id of the one that replaced this one, or null.
    pub replaced_by: Option<String>,
    /// Its buttons, `[]` when none.
    pub actions: Vec<ActionJson>,
    /// The action taken, or null.
    pub action_taken: Option<ActionTakenJson>,
}

/// A button: `{"id":"accept","label":"Accept order","url":"…"}` (`url` left
/// out when there is none).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ActionJson {
    /// Unique within the notification.
    pub id: String,
    /// What the button says.
    pub label: String,
    /// An absolute https: or http: URL to open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// `{"id":"accept","at":"2026-…Z"}`: which action was taken, and when.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ActionTakenJson {
    /// The action's id.
    pub id: String,
    /// ISO 8601 UTC with milliseconds.
    pub at: String,
}

impl From<&proto::ActionTaken> for ActionTakenJson {
    fn from(taken: &proto::ActionTaken) -> Self {
        ActionTakenJson {
            id: taken.id.clone(),
            at: taken.at.clone(),
        }
    }
}

/// An empty proto string is an unset field: null in JSON.
fn set(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

impl From<&proto::Notification> for NotificationJson {
    fn from(n: &proto::Notification) -> Self {
        NotificationJson {
            id: n.id.clone(),
            vendor_id: n.vendor_id,
            customer_id: n.customer_id,
            kind: n.r#type.clone(),
            channel: Channel::from_code(i64::from(n.channel))
                .unwrap_or(Channel::Push)
                .name(),
            content: n
                .content
                .as_ref()
                .and_then(|c| struct_to_json(c).ok())
                .map(Value::Object)
                .unwrap_or_else(|| Value::Object(Default::default())),
            status: Status::from_code(i64::from(n.status))
                .unwrap_or(Status::Sent)
                .name(),
            priority: n.priority,
            created_at: n.created_at.clone(),
            updated_at: n.updated_at.clone(),
            seq: n.seq,
            category: n.category.clone(),
            archived_at: set(&n.archived_at),
            expires_at: set(&n.expires_at),
            collapse_key: set(&n.collapse_key),
            replaces: set(&n.replaces),
            replaced_by: set(&n.replaced_by),
            actions: n
                .actions
                .iter()
                .map(|a| ActionJson {
                    id: a.id.clone(),
                    label: a.label.clone(),
                    url: set(&a.url),
                })
                .collect(),
            action_taken: n.action_taken.as_ref().map(ActionTakenJson::from),
        }
    }
}

/// The success envelope: `{"statusCode":200,"error":false,"message":…,"data":…}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<T> {
    /// Always 200.
    pub status_code: u16,
    /// Always false.
    pub error: bool,
    /// null, or a sentence for presence events.
    pub message: Option<&'static str>,
    /// The payload.
    pub data: T,
}

impl<T> Envelope<T> {
    /// A 200 envelope with no message.
    pub fn ok(data: T) -> Envelope<T> {
        Envelope {
            status_code: 200,
            error: false,
            message: None,
            data,
        }
    }

    /// A 200 envelope with a message.
    pub fn with_message(message: &'static str, data: T) -> Envelope<T> {
        Envelope {
            message: Some(message),
            ..Envelope::ok(data)
        }
    }
}

/// The error envelope, for `appError`, refused connections and failed acks.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AppError {
    /// Always true.
    pub error: bool,
    /// What went wrong, for a person.
    pub message: String,
    /// An HTTP status: 400, 401, 403, 404, 429, 500 or 503.
    pub status_code: u16,
}

impl AppError {
    fn new(status_code: u16, message: impl Into<String>) -> AppError {
        AppError {
            error: true,
            message: message.into(),
            status_code,
        }
    }

    /// 400: the input is wrong; the message names the field.
    pub fn bad_input(message: impl Into<String>) -> AppError {
        AppError::new(400, message)
    }

    /// 401: no valid token (or it expired).
    pub fn unauthenticated(message: impl Into<String>) -> AppError {
        AppError::new(401, message)
    }

    /// 403: not allowed (an origin, say).
    pub fn forbidden(message: impl Into<String>) -> AppError {
        AppError::new(403, message)
    }

    /// 404: nothing there.
    pub fn not_found(message: impl Into<String>) -> AppError {
        AppError::new(404, message)
    }

    /// 414: a request line too long.
    pub fn uri_too_long(message: impl Into<String>) -> AppError {
        AppError::new(414, message)
    }

    /// 429: past a limit; slow down or wait.
    pub fn too_many(message: impl Into<String>) -> AppError {
        AppError::new(429, message)
    }

    /// 500: something went wrong inside; the detail is in the log.
    pub fn internal() -> AppError {
        AppError::new(500, "internal error")
    }

    /// 503: busy; retry shortly.
    pub fn busy(message: impl Into<String>) -> AppError {
        AppError::new(503, message)
    }

    /// 503: the core is unreachable.
    pub fn core_unavailable() -> AppError {
        AppError::busy("notification service unavailable; reconnecting, nothing is lost")
    }
}

impl std::fmt::Display for AppError {
    /// The JSON text, so a refused connection's `message` parses as the envelope.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_string(self) {
            Ok(json) => f.write_str(&json),
            Err(_) => f.write_str(&self.message),
        }
    }
}

impl From<FieldError> for AppError {
    fn from(error: FieldError) -> Self {
        AppError::bad_input(error.to_string())
    }
}

impl From<tonic::Status> for AppError {
    /// The one mapping from core status codes to `appError` codes.
    fn from(status: tonic::Status) -> Self {
        let message = status.message();
        match status.code() {
            // A request the data refuses for good (an action taken already)
            // is bad input too: the contract's codes have no 409.
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                AppError::bad_input(message)
            }
            Code::PermissionDenied => AppError::forbidden(message),
            Code::NotFound => AppError::not_found(message),
            Code::ResourceExhausted => AppError::too_many(message),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                AppError::core_unavailable()
            }
            _ => {
                // What went wrong inside is for the logs, not for browsers.
                tracing::warn!(code = ?status.code(), error = message, "the core failed a call");
                AppError::internal()
            }
        }
    }
}

/// What an `offlineNotifications` request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// 1-based.
    pub page: u32,
    /// Rows per page.
    pub limit: u32,
    /// Which list: the unread inbox of every category unless asked.
    pub query: ListQuery,
}

/// The `offlineNotifications` payload: `{"page":2,"limit":20}`, both
/// optional (1 and 20), and optionally `"view"` (`INBOX`, `ARCHIVED`,
/// `ALL`) and `"category"`. Pure, apart from the socket, so the checks are
/// unit tested and fuzzed without a connection; every error is a 400.
pub fn page_request(
    payload: Result<Value, impl std::fmt::Display>,
) -> Result<PageRequest, AppError> {
    let payload = object(payload)?;
    let page = validate::page(optional_int(&payload, "page")?)?;
    let limit = validate::limit(optional_int(&payload, "limit")?)?;
    let view = match optional_str(&payload, "view")? {
        None | Some("INBOX") => View::Inbox,
        Some("ARCHIVED") => View::Archived,
        Some("ALL") => View::All,
        Some(other) => {
            return Err(AppError::bad_input(format!(
                "view: must be INBOX, ARCHIVED or ALL, got {other:?}"
            )));
        }
    };
    let category = category_field(&payload)?;
    Ok(PageRequest {
        page,
        limit,
        query: ListQuery { view, category },
    })
}

/// The `markAllAsRead` payload: `{"category":"order","upToSeq":120}`, both
/// optional. Every error is a 400.
pub fn mark_all_request(
    payload: Result<Value, impl std::fmt::Display>,
) -> Result<(Option<String>, Option<i64>), AppError> {
    let payload = object(payload)?;
    let category = category_field(&payload)?;
    let up_to_seq = match payload.get("upToSeq") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_i64().ok_or_else(|| FieldError {
            field: "upToSeq".into(),
            reason: format!("must be an integer, got {value}"),
        })?),
    };
    Ok((category, validate::up_to_seq(up_to_seq)?))
}

/// The `archive` payload: `{"ids":["…"],"archived":true}`; `archived`
/// unset archives, false brings them back. Every error is a 400.
pub fn archive_request(
    payload: Result<Value, impl std::fmt::Display>,
) -> Result<(Vec<String>, bool), AppError> {
    let payload = object(payload)?;
    let archived = match payload.get("archived") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(archived)) => *archived,
        Some(other) => {
            return Err(AppError::bad_input(format!(
                "archived: must be true or false, got {other}"
            )));
        }
    };
    Ok((ids_field(&payload)?, archived))
}

/// The `completeAction` payload: `{"id":"…","actionId":"accept"}`, both
/// required. Every error is a 400.
pub fn complete_action_request(
    payload: Result<Value, impl std::fmt::Display>,
) -> Result<(String, String), AppError> {
    let payload = object(payload)?;
    let required = |field: &str| -> Result<&str, AppError> {
        optional_str(&payload, field)?.ok_or_else(|| {
            AppError::from(FieldError {
                field: field.into(),
                reason: "is required".into(),
            })
        })
    };
    let id = validate::id("id", required("id")?)?;
    let action_id = validate::action_id("actionId", required("actionId")?)?;
    Ok((id, action_id))
}

/// One preference rule as the socket spells it:
/// `{"category":"marketing","channel":"PUSH","enabled":false}`.
#[derive(Debug, Serialize)]
pub struct RuleJson {
    /// The category.
    pub category: String,
    /// `PUSH`, `IN_APP`, `EMAIL` or `SMS`.
    pub channel: &'static str,
    /// False: that pair is off.
    pub enabled: bool,
}

/// What `getPreferences` and `setPreferences` answer: the pairs off now.
#[derive(Debug, Serialize)]
pub struct PreferencesJson {
    /// By category, then channel.
    pub rules: Vec<RuleJson>,
}

impl From<&proto::PreferencesResponse> for PreferencesJson {
    fn from(response: &proto::PreferencesResponse) -> Self {
        PreferencesJson {
            rules: response
                .rules
                .iter()
                .map(|rule| RuleJson {
                    category: rule.category.clone(),
                    channel: Channel::from_code(i64::from(rule.channel))
                        .unwrap_or(Channel::Push)
                        .name(),
                    enabled: rule.enabled.unwrap_or(false),
                })
                .collect(),
        }
    }
}

/// The `setPreferences` payload: `{"rules":[{"category":"marketing",
/// "channel":"PUSH","enabled":false}]}`, the user being the socket's. The
/// shapes are checked here, the rules themselves by the core (its errors
/// name `rules[i].…` alike). Every error is a 400.
pub fn preferences_request(
    payload: Result<Value, impl std::fmt::Display>,
) -> Result<Vec<proto::PreferenceRule>, AppError> {
    let payload = object(payload)?;
    let Some(Value::Array(rules)) = payload.get("rules") else {
        return Err(AppError::bad_input("rules: required, a list of rules"));
    };
    if rules.is_empty() || rules.len() > validate::MAX_RULES {
        return Err(AppError::bad_input(format!(
            "rules: must list 1 to {} rules, got {}",
            validate::MAX_RULES,
            rules.len()
        )));
    }
    rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let bad = |field: &str, reason: String| {
                AppError::bad_input(format!("rules[{index}].{field}: {reason}"))
            };
            if !rule.is_object() {
                return Err(AppError::bad_input(format!(
                    "rules[{index}]: must be an object, got {rule}"
                )));
            }
            let category = match rule.get("category") {
                Some(Value::String(text)) => text.clone(),
                None | Some(Value::Null) => return Err(bad("category", "required".into())),
                Some(other) => {
                    return Err(bad("category", format!("must be a string, got {other}")));
                }
            };
            let channel = match rule.get("channel").and_then(Value::as_str) {
                Some(name) => [Channel::Push, Channel::InApp, Channel::Email, Channel::Sms]
                    .into_iter()
                    .find(|c| c.name() == name)
                    .ok_or_else(|| {
                        bad(
                            "channel",
                            format!("unknown {name:?}; use PUSH, IN_APP, EMAIL or SMS"),
                        )
                    })?,
                None => {
                    return Err(bad(
                        "channel",
                        "required: PUSH, IN_APP, EMAIL or SMS".into(),
                    ));
                }
            };
            let enabled = match rule.get("enabled") {
                Some(Value::Bool(enabled)) => *enabled,
                None | Some(Value::Null) => {
                    return Err(bad("enabled", "required: true or false".into()));
                }
                Some(other) => {
                    return Err(bad(
                        "enabled",
                        format!("must be true or false, got {other}"),
                    ));
                }
            };
            Ok(proto::PreferenceRule {
                category,
                channel: channel.code() as i32,
                enabled: Some(enabled),
            })
        })
        .collect()
}

/// An optional `category` field, checked.
fn category_field(payload: &Value) -> Result<Option<String>, AppError> {
    Ok(match optional_str(payload, "category")? {
        None => None,
        Some(text) => Some(validate::category(text)?.ok_or_else(|| FieldError {
            field: "category".into(),
            reason: "must not be empty".into(),
        })?),
    })
}

/// An optional string field of a client payload.
fn optional_str<'a>(payload: &'a Value, field: &str) -> Result<Option<&'a str>, FieldError> {
    match payload.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(FieldError {
            field: field.into(),
            reason: format!("must be a string, got {other}"),
        }),
    }
}

/// The `markAsRead` payload as the ids to mark: `{"ids":["…"]}`, 1–1,000
/// valid ids, in canonical lowercase with duplicates removed. Pure for the
/// same reason as [`page_request`]; every error is a 400.
pub fn mark_request(
    payload: Result<Value, impl std::fmt::Display>,
) -> Result<Vec<String>, AppError> {
    ids_field(&object(payload)?)
}

/// The `ids` field: 1–1,000 valid ids, canonical, each once.
fn ids_field(payload: &Value) -> Result<Vec<String>, AppError> {
    let ids: Vec<String> = match payload.get("ids") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                item.as_str().map(str::to_owned).ok_or_else(|| FieldError {
                    field: format!("ids[{index}]"),
                    reason: format!("must be a string, got {item}"),
                })
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(AppError::bad_input(format!(
                "ids: must be an array of ids, got {other}"
            )));
        }
        None => return Err(AppError::bad_input("ids: required")),
    };
    Ok(validate::ids(&ids)?)
}

/// An optional integer field of a client payload.
fn optional_int(payload: &Value, field: &str) -> Result<Option<i32>, FieldError> {
    match payload.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| FieldError {
                field: field.into(),
                reason: format!("must be an integer, got {value}"),
            }),
    }
}

/// A client payload that must be a JSON object (absent means `{}`).
fn object(payload: Result<Value, impl std::fmt::Display>) -> Result<Value, AppError> {
    match payload {
        Ok(Value::Null) => Ok(Value::Object(Default::default())),
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(other) => Err(AppError::bad_input(format!(
            "payload must be a JSON object, got {other}"
        ))),
        Err(error) => Err(AppError::bad_input(format!("unreadable payload: {error}"))),
    }
}

/// A page of the unread inbox.
#[derive(Debug, Serialize)]
pub struct Page {
    /// Newest first.
    pub items: Vec<NotificationJson>,
    /// Where this page sits.
    pub pagination: PaginationJson,
}

/// The seed's pagination block.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaginationJson {
    /// 1-based.
    pub current_page: u32,
    /// null on the last page.
    pub next_page: Option<u32>,
    /// null on the first page.
    pub prev_page: Option<u32>,
    /// Whether a next page exists.
    pub has_next: bool,
    /// Whether a previous page exists.
    pub has_prev: bool,
    /// ceil(totalRecords / limit).
    pub total_pages: i64,
    /// Every unread notification of the user.
    pub total_records: i64,
}

impl From<Pagination> for PaginationJson {
    fn from(p: Pagination) -> Self {
        PaginationJson {
            current_page: p.current_page,
            next_page: p.next_page,
            prev_page: p.prev_page,
            has_next: p.next_page.is_some(),
            has_prev: p.prev_page.is_some(),
            total_pages: p.total_pages,
            total_records: p.total_records,
        }
    }
}

/// `unreadCount`'s data.
#[derive(Debug, Serialize)]
pub struct UnreadCount {
    /// Exact, never capped.
    pub count: i64,
    /// The same by category; categories with none are left out.
    #[serde(rename = "byCategory")]
    pub by_category: std::collections::BTreeMap<String, i64>,
}

/// `markAsRead`'s data.
#[derive(Debug, Serialize)]
pub struct Updated {
    /// Status changes made.
    pub updated: i32,
}

/// `notificationUpdated`'s data: which of the user's notifications changed,
/// and what they now are.
#[derive(Debug, Serialize)]
pub struct NotificationsUpdatedJson {
    /// The notifications that changed.
    pub ids: Vec<String>,
    /// Their new status (`DELIVERED`, `READ`), when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    /// Archived (true) or brought back (false), when that changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived: Option<bool>,
    /// They expired: gone from every list and count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired: Option<bool>,
    /// They were replaced by this notification (their collapse key's
    /// newer one): gone from every list and count.
    #[serde(rename = "replacedBy", skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    /// This action was taken on them.
    #[serde(rename = "actionTaken", skip_serializing_if = "Option::is_none")]
    pub action_taken: Option<ActionTakenJson>,
    /// When, ISO 8601 UTC with milliseconds.
    #[serde(rename = "updatedAt")]
    pub updated_at: String,
}

impl From<proto::NotificationsUpdated> for NotificationsUpdatedJson {
    fn from(update: proto::NotificationsUpdated) -> Self {
        NotificationsUpdatedJson {
            ids: update.ids,
            status: Status::from_code(i64::from(update.status)).map(Status::name),
            archived: update.archived,
            expired: update.expired,
            replaced_by: set(&update.replaced_by),
            action_taken: update.action_taken.as_ref().map(ActionTakenJson::from),
            updated_at: update.updated_at,
        }
    }
}

/// `userIsOffline` / `userIsOnline` data.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceJson {
    /// The peer, if a vendor.
    pub vendor_id: Option<i64>,
    /// The peer, if a customer.
    pub customer_id: Option<i64>,
    /// When the peer was last connected (offline events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<String>,
}

/// The envelope order of the seed's `userIsOffline` example.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEnvelope {
    /// Always false.
    pub error: bool,
    /// "User has gone offline" / "User is online".
    pub message: &'static str,
    /// Who.
    pub data: PresenceJson,
    /// Always 200.
    pub status_code: u16,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn app_error_displays_as_its_json() {
        let error = AppError::unauthenticated("token expired");
        let parsed: Value = serde_json::from_str(&error.to_string()).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"error": true, "message": "token expired", "statusCode": 401})
        );
    }

    #[test]
    fn core_failures_reach_browsers_without_their_inner_text() {
        for status in [
            tonic::Status::internal("stored data is inconsistent: row 7"),
            tonic::Status::unauthenticated("missing or wrong api token"),
            tonic::Status::data_loss("disk"),
        ] {
            let error = AppError::from(status);
            assert_eq!(error.to_string(), AppError::internal().to_string());
        }
        let bad = AppError::from(tonic::Status::invalid_argument("ids[0]: not an id"));
        assert!(bad.to_string().contains("ids[0]: not an id"));
    }

    #[test]
    fn notification_json_has_the_seed_shape() {
        let n = proto::Notification {
            id: "68553796000745d4620985bc".into(),
            vendor_id: Some(5),
            customer_id: None,
            r#type: "product:upload".into(),
            channel: 1,
            content: Some(crate::contract::convert::map_to_struct(
                serde_json::json!({"id": 63}).as_object().unwrap().clone(),
            )),
            status: 2,
            priority: 1,
            created_at: "2025-06-20T10:27:34.307Z".into(),
            updated_at: "2025-06-20T10:27:34.307Z".into(),
            seq: 1,
            category: "product".into(),
            archived_at: String::new(),
            expires_at: String::new(),
            collapse_key: "order-7".into(),
            replaces: String::new(),
            replaced_by: String::new(),
            actions: vec![
                proto::Action {
                    id: "accept".into(),
                    label: "Accept".into(),
                    url: String::new(),
                },
                proto::Action {
                    id: "view".into(),
                    label: "View".into(),
                    url: "https://shop.example/o/7".into(),
                },
            ],
            action_taken: Some(proto::ActionTaken {
                id: "accept".into(),
                at: "2025-06-20T10:28:00.000Z".into(),
            }),
            suppressed: false,
            send_at: String::new(),
        };
        let json = serde_json::to_value(NotificationJson::from(&n)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "68553796000745d4620985bc", "vendorId": 5, "customerId": null,
                "type": "product:upload", "channel": "PUSH", "content": {"id": 63},
                "status": "SENT", "priority": 1, "createdAt": "2025-06-20T10:27:34.307Z",
                "updatedAt": "2025-06-20T10:27:34.307Z", "seq": 1,
                "category": "product", "archivedAt": null, "expiresAt": null,
                "collapseKey": "order-7", "replaces": null, "replacedBy": null,
                "actions": [
                    {"id": "accept", "label": "Accept"},
                    {"id": "view", "label": "View", "url": "https://shop.example/o/7"}
                ],
                "actionTaken": {"id": "accept", "at": "2025-06-20T10:28:00.000Z"}
            })
        );
    }

    fn bad(message: &str) -> AppError {
        AppError::bad_input(message)
    }

    #[test]
    fn complete_action_request_needs_an_id_and_an_action_id() {
        let of = |v: Value| complete_action_request(Ok::<_, String>(v));
        assert_eq!(
            of(json!({"id": "68553796000745D4620985BC", "actionId": "accept"})),
            Ok(("68553796000745d4620985bc".into(), "accept".into()))
        );
        assert_eq!(
            of(json!({"actionId": "accept"})),
            Err(bad("id: is required"))
        );
        let missing = of(json!({"id": "68553796000745d4620985bc"})).unwrap_err();
        assert!(missing.message.starts_with("actionId:"), "{missing:?}");
        let long = of(json!({"id": "68553796000745d4620985bc", "actionId": "x".repeat(33)}));
        assert!(long.unwrap_err().message.starts_with("actionId:"));
        assert!(
            of(json!({"id": 5, "actionId": "a"}))
                .unwrap_err()
                .message
                .starts_with("id:")
        );
    }

    fn page_of(payload: Value) -> Result<(u32, u32), AppError> {
        page_request(Ok::<_, String>(payload)).map(|r| (r.page, r.limit))
    }

    fn mark_of(payload: Value) -> Result<Vec<String>, AppError> {
        mark_request(Ok::<_, String>(payload))
    }

    #[test]
    fn page_request_defaults_and_reads_both_fields() {
        assert_eq!(page_of(Value::Null), Ok((1, 20)));
        assert_eq!(page_of(json!({})), Ok((1, 20)));
        assert_eq!(page_of(json!({"page": null, "limit": null})), Ok((1, 20)));
        assert_eq!(page_of(json!({"page": 2, "limit": 100})), Ok((2, 100)));
        assert_eq!(page_of(json!({"limit": 1, "other": "x"})), Ok((1, 1)));
    }

    #[test]
    fn page_request_reads_the_view_and_category() {
        let request = page_request(Ok::<_, String>(
            json!({"view": "ARCHIVED", "category": "order"}),
        ))
        .unwrap();
        assert_eq!(
            request.query,
            ListQuery {
                view: View::Archived,
                category: Some("order".into())
            }
        );
        let default = page_request(Ok::<_, String>(json!({}))).unwrap();
        assert_eq!(default.query, ListQuery::inbox());
        assert_eq!(
            page_request(Ok::<_, String>(json!({"view": "TRASH"}))).map(|r| r.page),
            Err(bad("view: must be INBOX, ARCHIVED or ALL, got \"TRASH\""))
        );
        assert_eq!(
            page_request(Ok::<_, String>(json!({"category": "Order"}))).map(|r| r.page),
            Err(bad("category: must be 1 to 64 of a-z, 0-9, '_' and '-'"))
        );
    }

    #[test]
    fn mark_all_and_archive_requests_name_their_bad_fields() {
        let of = |v: Value| mark_all_request(Ok::<_, String>(v));
        assert_eq!(of(Value::Null), Ok((None, None)));
        assert_eq!(
            of(json!({"category": "order", "upToSeq": 120})),
            Ok((Some("order".into()), Some(120)))
        );
        assert_eq!(
            of(json!({"upToSeq": 0})).unwrap_err().message,
            "upToSeq: must be 1 or more, got 0"
        );
        assert_eq!(
            of(json!({"upToSeq": "5"})).unwrap_err().message,
            "upToSeq: must be an integer, got \"5\""
        );
        assert_eq!(
            of(json!({"category": 5})).unwrap_err().message,
            "category: must be a string, got 5"
        );
        let id = "68553796000745d4620985bc";
        let archive = |v: Value| archive_request(Ok::<_, String>(v));
        assert_eq!(
            archive(json!({"ids": [id]})),
            Ok((vec![id.to_owned()], true))
        );
        assert_eq!(
            archive(json!({"ids": [id], "archived": false})),
            Ok((vec![id.to_owned()], false))
        );
        assert_eq!(
            archive(json!({"ids": [id], "archived": "yes"}))
                .unwrap_err()
                .message,
            "archived: must be true or false, got \"yes\""
        );
        assert_eq!(archive(json!({})).unwrap_err().message, "ids: required");
    }

    #[test]
    fn page_request_errors_are_400_naming_the_field() {
        assert_eq!(
            page_of(json!({"page": 0})),
            Err(bad("page: must be 1 or more, got 0"))
        );
        assert_eq!(
            page_of(json!({"page": "2"})),
            Err(bad("page: must be an integer, got \"2\""))
        );
        assert_eq!(
            page_of(json!({"page": 1.5})),
            Err(bad("page: must be an integer, got 1.5"))
        );
        assert_eq!(
            page_of(json!({"page": 2147483648i64})),
            Err(bad("page: must be an integer, got 2147483648"))
        );
        assert_eq!(
            page_of(json!({"page": 1, "limit": 101})),
            Err(bad("limit: must be between 1 and 100, got 101"))
        );
        assert_eq!(
            page_of(json!({"limit": -1})),
            Err(bad("limit: must be between 1 and 100, got -1"))
        );
        assert_eq!(
            page_of(json!([1, 2])),
            Err(bad("payload must be a JSON object, got [1,2]"))
        );
        assert_eq!(
            page_request(Err::<Value, _>("expected value")),
            Err(bad("unreadable payload: expected value"))
        );
    }

    #[test]
    fn mark_request_gives_canonical_distinct_ids() {
        let id = "68553796000745d4620985bc";
        assert_eq!(
            mark_of(json!({"ids": [id, id.to_uppercase(), "68553796000745d4620985bd"]})),
            Ok(vec![id.to_owned(), "68553796000745d4620985bd".to_owned()])
        );
    }

    #[test]
    fn mark_request_errors_are_400_naming_the_field() {
        assert_eq!(mark_of(Value::Null), Err(bad("ids: required")));
        assert_eq!(
            mark_of(json!({"ids": null})),
            Err(bad("ids: must be an array of ids, got null"))
        );
        assert_eq!(
            mark_of(json!({"ids": "68553796000745d4620985bc"})),
            Err(bad(
                "ids: must be an array of ids, got \"68553796000745d4620985bc\""
            ))
        );
        assert_eq!(
            mark_of(json!({"ids": []})),
            Err(bad("ids: must list at least one id"))
        );
        assert_eq!(
            mark_of(json!({"ids": ["68553796000745d4620985bc", 7]})),
            Err(bad("ids[1]: must be a string, got 7"))
        );
        assert_eq!(
            mark_of(json!({"ids": ["nope"]})),
            Err(bad(
                "ids[0]: \"nope\" is not a valid id (24 hexadecimal characters)"
            ))
        );
        let many = vec!["68553796000745d4620985bc"; 1001];
        assert_eq!(
            mark_of(json!({ "ids": many })),
            Err(bad("ids: must list at most 1000 ids, got 1001"))
        );
        assert_eq!(
            mark_of(json!("ids")),
            Err(bad("payload must be a JSON object, got \"ids\""))
        );
        assert_eq!(
            mark_request(Err::<Value, _>("eof")),
            Err(bad("unreadable payload: eof"))
        );
    }
}
