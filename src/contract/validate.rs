//! Request checks. Each failure names the field as the contract's JSON
//! spells it, so `INVALID_ARGUMENT: type: must not be empty` tells the
//! caller what to fix.

use notify_store::{
    Action, Channel, PageStart, Rule, Status, User, View, is_category, parse_object_id,
};
use prost_types::Struct;

use super::convert::{ContentError, struct_to_json};

/// Longest `type`, in characters.
pub const MAX_TYPE_CHARS: usize = 128;
/// Largest `content`, in bytes of JSON text.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;
/// Lowest and highest `priority`.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = 0..=10;
/// Largest `limit` of a page.
pub const MAX_PAGE_LIMIT: i32 = 100;
/// Page size when `limit` is unset.
pub const DEFAULT_PAGE_LIMIT: u32 = 20;
/// Most recipients of one CreateNotifications call and most ids of one mark.
pub const MAX_BULK: usize = 1000;
/// Longest room name and idempotency key, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// A bad field: turned into INVALID_ARGUMENT at the gRPC edge and into
/// `appError` 400 at the Socket.IO edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field, as spelled in JSON (`vendorId`, `ids[2]`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    /// A reason the field named is bad.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error for a field inside an entry of a list
    /// (`ids[0]` within `receipts[3]` is `receipts[3].ids[0]`).
    pub fn within(self, entry: &str) -> FieldError {
        FieldError {
            field: format!("{entry}.{}", self.field),
            reason: self.reason,
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Exactly one of `vendorId`, `customerId`, a positive id.
pub fn recipient(vendor_id: Option<i64>, customer_id: Option<i64>) -> Result<User, FieldError> {
    match (vendor_id, customer_id) {
        (Some(_), Some(_)) => Err(FieldError::new(
            "vendorId",
            "set exactly one of vendorId and customerId, not both",
        )),
        (None, None) => Err(FieldError::new(
            "vendorId",
            "one of vendorId or customerId is required",
        )),
        (Some(id), None) if id > 0 => Ok(User::vendor(id)),
        (Some(_), None) => Err(FieldError::new("vendorId", "must be a positive integer")),
        (None, Some(id)) if id > 0 => Ok(User::customer(id)),
        (None, Some(_)) => Err(FieldError::new("customerId", "must be a positive integer")),
    }
}

/// The users of a list field such as `recipients` or `receipts`: 1 ..=
/// [`MAX_BULK`] entries, each a valid recipient, none named twice. Errors
/// name the entry as JSON spells it (`recipients[3].vendorId`).
pub fn users(
    field: &str,
    entries: impl ExactSizeIterator<Item = (Option<i64>, Option<i64>)>,
) -> Result<Vec<User>, FieldError> {
    let count = entries.len();
    if count == 0 || count > MAX_BULK {
        return Err(FieldError::new(
            field,
            format!("must list 1 to {MAX_BULK} users, got {count}"),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut users = Vec::with_capacity(count);
    for (index, (vendor_id, customer_id)) in entries.enumerate() {
        let user = recipient(vendor_id, customer_id)
            .map_err(|e| e.within(&format!("{field}[{index}]")))?;
        if !seen.insert(user) {
            return Err(FieldError::new(
                format!("{field}[{index}]"),
                format!("{user} is listed twice"),
            ));
        }
        users.push(user);
    }
    Ok(users)
}

/// Non-empty, at most 128 characters, no control characters.
pub fn kind(text: &str) -> Result<String, FieldError> {
    if text.trim().is_empty() {
        return Err(FieldError::new("type", "must not be empty"));
    }
    name("type", text, MAX_TYPE_CHARS)
}

/// The one check of a name-like text: at most `max` characters (not
/// bytes) and no control characters (PostgreSQL cannot store a NUL in
/// text, and a name is something a person may need to read back).
fn name(field: &str, text: &str, max: usize) -> Result<String, FieldError> {
    if text.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(text.to_owned())
}

/// A known channel; unset means PUSH.
pub fn channel(value: i32) -> Result<Channel, FieldError> {
    if value == 0 {
        return Ok(Channel::Push);
    }
    Channel::from_code(i64::from(value)).ok_or_else(|| {
        FieldError::new(
            "channel",
            format!("unknown value {value}; use PUSH, IN_APP, EMAIL or SMS"),
        )
    })
}

/// A JSON object of at most 64 KiB, as the text to store.
pub fn content(value: Option<&Struct>) -> Result<String, FieldError> {
    let Some(value) = value else {
        return Err(FieldError::new("content", "required: a JSON object"));
    };
    let json = struct_to_json(value).map_err(|error| match error {
        ContentError::NonFinite => FieldError::new("content", "numbers must be finite"),
    })?;
    let text = serde_json::to_string(&json)
        .map_err(|e| FieldError::new("content", format!("not serializable: {e}")))?;
    if text.len() > MAX_CONTENT_BYTES {
        return Err(FieldError::new(
            "content",
            format!(
                "must be at most {MAX_CONTENT_BYTES} bytes of JSON, got {}",
                text.len()
            ),
        ));
    }
    Ok(text)
}

/// 0 ..= 10.
pub fn priority(value: i32) -> Result<i32, FieldError> {
    if PRIORITY_RANGE.contains(&value) {
        Ok(value)
    } else {
        Err(FieldError::new(
            "priority",
            format!(
                "must be between {} and {}, got {value}",
                PRIORITY_RANGE.start(),
                PRIORITY_RANGE.end()
            ),
        ))
    }
}

/// Empty means none; otherwise at most 128 characters, no control
/// characters.
pub fn idempotency_key(text: &str) -> Result<Option<String>, FieldError> {
    if text.is_empty() {
        return Ok(None);
    }
    name("idempotencyKey", text, MAX_NAME_CHARS).map(Some)
}

/// A 24-hex-digit id, in canonical lowercase.
pub fn id(field: &str, text: &str) -> Result<String, FieldError> {
    parse_object_id(text).ok_or_else(|| {
        let shown: String = text.chars().take(32).collect();
        FieldError::new(
            field,
            format!("{shown:?} is not a valid id (24 hexadecimal characters)"),
        )
    })
}

/// 1 ..= 1,000 valid ids, duplicates removed.
pub fn ids(list: &[String]) -> Result<Vec<String>, FieldError> {
    if list.is_empty() {
        return Err(FieldError::new("ids", "must list at least one id"));
    }
    if list.len() > MAX_BULK {
        return Err(FieldError::new(
            "ids",
            format!("must list at most {MAX_BULK} ids, got {}", list.len()),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (index, text) in list.iter().enumerate() {
        let id = id(&format!("ids[{index}]"), text)?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

/// 1-based page; unset means 1.
pub fn page(value: Option<i32>) -> Result<u32, FieldError> {
    match value {
        None => Ok(1),
        Some(page) if page >= 1 => Ok(page as u32),
        Some(page) => Err(FieldError::new(
            "page",
            format!("must be 1 or more, got {page}"),
        )),
    }
}

/// Where a page starts: after `before_seq` (1 or more) when given,
/// otherwise the `page`-th page.
pub fn page_start(page: u32, before_seq: Option<i64>) -> Result<PageStart, FieldError> {
    match before_seq {
        None => Ok(PageStart::Page(page)),
        Some(seq) if seq >= 1 => Ok(PageStart::BeforeSeq(seq)),
        Some(seq) => Err(FieldError::new(
            "beforeSeq",
            format!("must be 1 or more, got {seq}"),
        )),
    }
}

/// 1 ..= 100; unset means 20.
pub fn limit(value: Option<i32>) -> Result<u32, FieldError> {
    match value {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(limit) if (1..=MAX_PAGE_LIMIT).contains(&limit) => Ok(limit as u32),
        Some(limit) => Err(FieldError::new(
            "limit",
            format!("must be between 1 and {MAX_PAGE_LIMIT}, got {limit}"),
        )),
    }
}

/// The statuses a client may set: DELIVERED or READ.
pub fn mark_status(value: i32) -> Result<Status, FieldError> {
    match Status::from_code(i64::from(value)) {
        Some(status @ (Status::Delivered | Status::Read)) => Ok(status),
        _ => Err(FieldError::new(
            "status",
            format!("must be DELIVERED or READ, got {value}"),
        )),
    }
}

/// A replay start: 0 or more.
pub fn after_seq(value: Option<i64>) -> Result<Option<i64>, FieldError> {
    match value {
        Some(seq) if seq < 0 => Err(FieldError::new(
            "afterSeq",
            format!("must be 0 or more, got {seq}"),
        )),
        other => Ok(other),
    }
}

/// A resume position's version: 0 or more, and only with `afterSeq`
/// (the reader's seq says which notifications it already has).
pub fn after_version(
    value: Option<i64>,
    after_seq: Option<i64>,
) -> Result<Option<i64>, FieldError> {
    match value {
        Some(version) if version < 0 => Err(FieldError::new(
            "afterVersion",
            format!("must be 0 or more, got {version}"),
        )),
        Some(_) if after_seq.is_none() => Err(FieldError::new(
            "afterVersion",
            "needs afterSeq (the last seq the reader has)",
        )),
        other => Ok(other),
    }
}

/// The id at `afterSeq`, if given (empty means not given); only with `afterSeq`.
pub fn after_id(text: &str, after_seq: Option<i64>) -> Result<Option<String>, FieldError> {
    if text.is_empty() {
        return Ok(None);
    }
    let id = id("afterId", text)?;
    if after_seq.is_none() {
        return Err(FieldError::new(
            "afterId",
            "needs afterSeq (the seq of that id)",
        ));
    }
    Ok(Some(id))
}

/// An epoch as a list or stream reported it (empty means not given).
pub fn epoch(text: &str) -> Result<Option<String>, FieldError> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > 64 || !text.bytes().all(|b| b.is_ascii_alphanumeric()) {
        let shown: String = text.chars().take(32).collect();
        return Err(FieldError::new(
            "epoch",
            format!("{shown:?} is not an epoch (as ListOffline or a stream's state reports it)"),
        ));
    }
    Ok(Some(text.to_owned()))
}

/// 1 ..= 128 characters, no control characters.
pub fn room(text: &str) -> Result<String, FieldError> {
    if text.is_empty() {
        return Err(FieldError::new("room", "must not be empty"));
    }
    name("room", text, MAX_NAME_CHARS)
}

/// A topic's name: as a room's, 1-128 characters, no control characters.
pub fn topic(text: &str) -> Result<String, FieldError> {
    if text.is_empty() {
        return Err(FieldError::new("topic", "must not be empty"));
    }
    name("topic", text, MAX_NAME_CHARS)
}

/// A category: 1-64 of `[a-z0-9_-]`; empty means none was named.
pub fn category(text: &str) -> Result<Option<String>, FieldError> {
    if text.is_empty() {
        return Ok(None);
    }
    if !is_category(text) {
        return Err(FieldError::new(
            "category",
            "must be 1 to 64 of a-z, 0-9, '_' and '-'",
        ));
    }
    Ok(Some(text.to_owned()))
}

/// Most rules of one SetPreferences call.
pub const MAX_RULES: usize = 100;

/// `rules` of SetPreferences: 1 ..= [`MAX_RULES`], each a category, a
/// channel named (no default here: a switch must say which) and `enabled`
/// given.
pub fn rules(rules: &[crate::contract::proto::PreferenceRule]) -> Result<Vec<Rule>, FieldError> {
    if rules.is_empty() || rules.len() > MAX_RULES {
        return Err(FieldError::new(
            "rules",
            format!("must list 1 to {MAX_RULES} rules, got {}", rules.len()),
        ));
    }
    rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let entry = format!("rules[{index}]");
            let category = category(&rule.category)
                .map_err(|e| e.within(&entry))?
                .ok_or_else(|| FieldError::new(format!("{entry}.category"), "required"))?;
            if rule.channel == 0 {
                return Err(FieldError::new(
                    format!("{entry}.channel"),
                    "required: PUSH, IN_APP, EMAIL or SMS",
                ));
            }
            let channel = channel(rule.channel).map_err(|e| e.within(&entry))?;
            let enabled = rule.enabled.ok_or_else(|| {
                FieldError::new(format!("{entry}.enabled"), "required: true or false")
            })?;
            Ok(Rule {
                category,
                channel,
                enabled,
            })
        })
        .collect()
}

/// The longest an `expiresAt` may lie ahead.
pub const MAX_EXPIRY_AHEAD_MS: i64 = 366 * 24 * 3600 * 1000;

/// `expiresAt`: ISO 8601 UTC (RFC 3339, `Z` or `+00:00`), after `now` and
/// at most a year ahead; empty means never. Answers ms since the epoch.
pub fn expires_at(text: &str, now: i64) -> Result<Option<i64>, FieldError> {
    future_time("expiresAt", text, now)
}

/// `sendAt`: as [`expires_at`] (UTC, in the future, at most a year
/// ahead); empty means now.
pub fn send_at(text: &str, now: i64) -> Result<Option<i64>, FieldError> {
    future_time("sendAt", text, now)
}

/// An ISO 8601 UTC time after `now` and at most a year ahead, in ms since
/// the epoch; empty is `None`.
fn future_time(field: &str, text: &str, now: i64) -> Result<Option<i64>, FieldError> {
    if text.is_empty() {
        return Ok(None);
    }
    let bad = |reason: String| FieldError::new(field, reason);
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            bad(format!(
                "must be ISO 8601 UTC like 2026-06-20T10:27:34.307Z, got {text:?}"
            ))
        })?;
    if !at.offset().is_utc() {
        return Err(bad(format!("must be in UTC (Z), got {text:?}")));
    }
    let ms = i64::try_from(at.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| bad("is out of range".into()))?;
    if ms <= now {
        return Err(bad(format!("must be in the future, got {text}")));
    }
    if ms - now > MAX_EXPIRY_AHEAD_MS {
        return Err(bad(format!("must be at most a year ahead, got {text}")));
    }
    Ok(Some(ms))
}

/// `collapseKey`: empty means none; otherwise at most 128 characters, no
/// control characters.
pub fn collapse_key(text: &str) -> Result<Option<String>, FieldError> {
    if text.is_empty() {
        return Ok(None);
    }
    name("collapseKey", text, MAX_NAME_CHARS).map(Some)
}

/// The most buttons a notification has.
pub const MAX_ACTIONS: usize = 3;
/// The longest action URL.
const MAX_URL_BYTES: usize = 2048;

/// `actions`: up to 3, each with a unique id of 1-32 characters, a label
/// of 1-64 and an optional absolute `https:` or `http:` URL (anything a
/// browser would run, such as `javascript:`, is refused).
pub fn actions(list: &[crate::contract::proto::Action]) -> Result<Vec<Action>, FieldError> {
    if list.len() > MAX_ACTIONS {
        return Err(FieldError::new(
            "actions",
            format!(
                "must list at most {MAX_ACTIONS} actions, got {}",
                list.len()
            ),
        ));
    }
    let mut out: Vec<Action> = Vec::with_capacity(list.len());
    for (index, action) in list.iter().enumerate() {
        let field = |name: &str| format!("actions[{index}].{name}");
        let id = action_id(&field("id"), &action.id)?;
        if out.iter().any(|a| a.id == id) {
            return Err(FieldError::new(
                field("id"),
                format!("{id:?} is used by another action"),
            ));
        }
        let label = name(&field("label"), &action.label, 64)?;
        if label.trim().is_empty() {
            return Err(FieldError::new(field("label"), "must not be empty"));
        }
        let url = match action.url.as_str() {
            "" => None,
            text => Some(action_url(&field("url"), text)?),
        };
        out.push(Action { id, label, url });
    }
    Ok(out)
}

/// An action's id: 1-32 characters, no control characters.
pub fn action_id(field: &str, text: &str) -> Result<String, FieldError> {
    if text.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    name(field, text, 32)
}

/// An absolute `https:` or `http:` URL with a host.
fn action_url(field: &str, text: &str) -> Result<String, FieldError> {
    let bad = |reason: &str| {
        let shown: String = text.chars().take(64).collect();
        FieldError::new(field, format!("{reason}, got {shown:?}"))
    };
    if text.len() > MAX_URL_BYTES {
        return Err(bad(&format!("must be at most {MAX_URL_BYTES} bytes")));
    }
    let parsed = url::Url::parse(text).map_err(|_| bad("must be an absolute URL"))?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host_str().is_none() {
        return Err(bad("must be an https: or http: URL"));
    }
    Ok(text.to_owned())
}

/// A list's view; unset means INBOX.
pub fn view(value: i32) -> Result<View, FieldError> {
    use crate::contract::proto::View as Wire;
    match Wire::try_from(value) {
        Ok(Wire::Unspecified | Wire::Inbox) => Ok(View::Inbox),
        Ok(Wire::Archived) => Ok(View::Archived),
        Ok(Wire::All) => Ok(View::All),
        Err(_) => Err(FieldError::new(
            "view",
            format!("must be INBOX, ARCHIVED or ALL, got {value}"),
        )),
    }
}

/// The last seq a mark-all covers: 1 or more.
pub fn up_to_seq(value: Option<i64>) -> Result<Option<i64>, FieldError> {
    match value {
        Some(seq) if seq < 1 => Err(FieldError::new(
            "upToSeq",
            format!("must be 1 or more, got {seq}"),
        )),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_counted_checked_and_named_once() {
        let entry = |v: i64| (Some(v), None);
        assert_eq!(
            users("recipients", [entry(5), (None, Some(5))].into_iter()).unwrap(),
            vec![User::vendor(5), User::customer(5)]
        );
        let error = users("receipts", std::iter::empty()).unwrap_err();
        assert_eq!(error.field, "receipts");
        let error = users("receipts", (1..1002i32).map(|v| entry(v.into()))).unwrap_err();
        assert_eq!(
            (error.field.as_str(), error.reason.contains("1001")),
            ("receipts", true)
        );
        let error = users("recipients", [entry(5), entry(-1)].into_iter()).unwrap_err();
        assert_eq!(error.field, "recipients[1].vendorId");
        let error = users("recipients", [entry(5), entry(5)].into_iter()).unwrap_err();
        assert_eq!(error.field, "recipients[1]");
    }

    #[test]
    fn recipient_needs_exactly_one_positive_id() {
        assert_eq!(recipient(Some(5), None), Ok(User::vendor(5)));
        assert_eq!(recipient(None, Some(12)), Ok(User::customer(12)));
        assert_eq!(recipient(Some(5), Some(12)).unwrap_err().field, "vendorId");
        assert_eq!(recipient(None, None).unwrap_err().field, "vendorId");
        assert_eq!(recipient(None, Some(-1)).unwrap_err().field, "customerId");
    }

    #[test]
    fn type_length_counts_characters_not_bytes() {
        assert!(kind(&"é".repeat(128)).is_ok());
        assert!(kind(&"é".repeat(129)).is_err());
        assert!(kind("   ").is_err());
        assert!(kind("a\u{0}b").is_err());
    }

    #[test]
    fn idempotency_key_refuses_control_characters() {
        assert_eq!(idempotency_key(""), Ok(None));
        assert_eq!(idempotency_key("order-881"), Ok(Some("order-881".into())));
        for bad in ["key\0", "a\nb", "\u{1b}x", "x\u{7f}"] {
            assert_eq!(
                idempotency_key(bad).unwrap_err().field,
                "idempotencyKey",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn categories_are_short_lowercase_names() {
        assert_eq!(category(""), Ok(None));
        assert_eq!(category("order_2-b"), Ok(Some("order_2-b".into())));
        for bad in ["Order", "a b", "é", "a:b", &"a".repeat(65)] {
            assert_eq!(category(bad).unwrap_err().field, "category", "{bad:?}");
        }
        assert!(category(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn expiry_is_utc_in_the_future_within_a_year() {
        let now = 1_750_415_254_307;
        assert_eq!(expires_at("", now), Ok(None));
        assert_eq!(
            expires_at("2025-06-20T10:27:35.307Z", now),
            Ok(Some(now + 1000))
        );
        for bad in [
            "2025-06-20T10:27:34.307Z",
            "2025-06-20T12:27:35+02:00",
            "tomorrow",
            "2027-06-20T10:27:35Z",
            "2025-06-20 10:27:35",
        ] {
            assert_eq!(
                expires_at(bad, now).unwrap_err().field,
                "expiresAt",
                "{bad}"
            );
        }
    }

    #[test]
    fn actions_need_unique_ids_labels_and_web_urls() {
        let action = |id: &str, label: &str, url: &str| crate::contract::proto::Action {
            id: id.into(),
            label: label.into(),
            url: url.into(),
        };
        let ok = actions(&[
            action("accept", "Accept return", "https://shop.example/returns/7"),
            action("later", "Later", ""),
        ])
        .unwrap();
        assert_eq!(ok[1].url, None);
        let field = |list: &[crate::contract::proto::Action]| actions(list).unwrap_err().field;
        assert_eq!(
            field(&[action("a", "A", "javascript:alert(1)")]),
            "actions[0].url"
        );
        assert_eq!(field(&[action("a", "A", "/relative")]), "actions[0].url");
        assert_eq!(
            field(&[action("a", "A", "data:text/html,x")]),
            "actions[0].url"
        );
        assert_eq!(
            field(&[action("a", "A", ""), action("a", "B", "")]),
            "actions[1].id"
        );
        assert_eq!(field(&[action("", "A", "")]), "actions[0].id");
        assert_eq!(field(&[action(&"x".repeat(33), "A", "")]), "actions[0].id");
        assert_eq!(field(&[action("a", "", "")]), "actions[0].label");
        assert_eq!(
            field(&[action("a", &"y".repeat(65), "")]),
            "actions[0].label"
        );
        let four = vec![action("a", "A", ""); 4];
        assert_eq!(field(&four), "actions");
        assert_eq!(
            collapse_key(&"k".repeat(129)).unwrap_err().field,
            "collapseKey"
        );
        assert_eq!(collapse_key(""), Ok(None));
    }

    #[test]
    fn page_and_limit_edges() {
        assert_eq!(page(None), Ok(1));
        assert!(page(Some(0)).is_err());
        assert_eq!(limit(None), Ok(20));
        assert_eq!(limit(Some(100)), Ok(100));
        assert!(limit(Some(101)).is_err());
        assert!(limit(Some(0)).is_err());
    }
}
