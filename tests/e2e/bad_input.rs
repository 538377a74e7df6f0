//! Bad input over gRPC as one table. Each case is a request to one of the
//! ten RPCs (a prost message, or hand-encoded protobuf bytes where prost
//! cannot produce it: invalid UTF-8, broken varints, content nested 10,000
//! deep), the status code it must get and the field its message must name.
//! One core answers them all, after notifications, read states and room
//! memberships are stored for a few users; afterwards it must still be
//! serving and everything it stores must read back exactly as before.
//!
//! A refused case (INVALID_ARGUMENT) must have a message starting with
//! `field:`; other codes must mention the text in the field column. An
//! accepted edge (OK) must change nothing either.
//!
//! A message over tonic's 4 MiB limit is refused by tonic's framing, before
//! our code sees it, with OUT_OF_RANGE ("decoded message length too large").
//! tonic has no setting for that code, so those rows expect OUT_OF_RANGE.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use notify::contract::proto;
use prost::Message;
use prost::bytes::{Buf, BufMut};
use serde_json::json;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

use crate::harness::{Client, CoreProcess};
use crate::{simple, to_json, to_struct};

/// tonic's default limit on a received message.
const MESSAGE_LIMIT: usize = 4 * 1024 * 1024;

/// The nineteen RPCs of `notify.v1.NotificationService`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rpc {
    CreateNotification,
    CreateNotifications,
    GetNotification,
    ListOffline,
    ListNotifications,
    GetUnreadCounts,
    MarkNotifications,
    MarkAllNotifications,
    ArchiveNotifications,
    EraseUser,
    CompleteAction,
    RecordDeliveries,
    StreamUserEvents,
    JoinRoom,
    LeaveRoom,
    ListRoomMembers,
    SetPreferences,
    GetPreferences,
    CancelNotification,
}

impl Rpc {
    fn path(self) -> String {
        format!("/notify.v1.NotificationService/{self:?}")
    }
}

/// A request: a prost message of the RPC's type, or raw protobuf bytes.
enum Req {
    Create(proto::CreateNotificationRequest),
    Bulk(proto::CreateNotificationsRequest),
    Get(proto::GetNotificationRequest),
    List(proto::ListOfflineRequest),
    Views(proto::ListNotificationsRequest),
    Counts(proto::GetUnreadCountsRequest),
    Mark(proto::MarkNotificationsRequest),
    MarkAll(proto::MarkAllNotificationsRequest),
    Archive(proto::ArchiveNotificationsRequest),
    Erase(proto::EraseUserRequest),
    Complete(proto::CompleteActionRequest),
    Deliveries(proto::RecordDeliveriesRequest),
    Stream(proto::StreamUserEventsRequest),
    Join(proto::RoomRequest),
    Leave(proto::RoomRequest),
    Members(proto::ListRoomMembersRequest),
    SetPreferences(proto::SetPreferencesRequest),
    GetPreferences(proto::GetPreferencesRequest),
    Cancel(proto::CancelNotificationRequest),
    Raw(Rpc, Vec<u8>),
}

impl Req {
    fn rpc(&self) -> Rpc {
        match self {
            Req::Create(_) => Rpc::CreateNotification,
            Req::Bulk(_) => Rpc::CreateNotifications,
            Req::Get(_) => Rpc::GetNotification,
            Req::List(_) => Rpc::ListOffline,
            Req::Views(_) => Rpc::ListNotifications,
            Req::Counts(_) => Rpc::GetUnreadCounts,
            Req::Mark(_) => Rpc::MarkNotifications,
            Req::MarkAll(_) => Rpc::MarkAllNotifications,
            Req::Archive(_) => Rpc::ArchiveNotifications,
            Req::Erase(_) => Rpc::EraseUser,
            Req::Complete(_) => Rpc::CompleteAction,
            Req::Deliveries(_) => Rpc::RecordDeliveries,
            Req::Stream(_) => Rpc::StreamUserEvents,
            Req::Join(_) => Rpc::JoinRoom,
            Req::Leave(_) => Rpc::LeaveRoom,
            Req::Members(_) => Rpc::ListRoomMembers,
            Req::SetPreferences(_) => Rpc::SetPreferences,
            Req::GetPreferences(_) => Rpc::GetPreferences,
            Req::Cancel(_) => Rpc::CancelNotification,
            Req::Raw(rpc, _) => *rpc,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Req::Create(m) => m.encode_to_vec(),
            Req::Bulk(m) => m.encode_to_vec(),
            Req::Get(m) => m.encode_to_vec(),
            Req::List(m) => m.encode_to_vec(),
            Req::Views(m) => m.encode_to_vec(),
            Req::Counts(m) => m.encode_to_vec(),
            Req::Mark(m) => m.encode_to_vec(),
            Req::MarkAll(m) => m.encode_to_vec(),
            Req::Archive(m) => m.encode_to_vec(),
            Req::Erase(m) => m.encode_to_vec(),
            Req::Complete(m) => m.encode_to_vec(),
            Req::Deliveries(m) => m.encode_to_vec(),
            Req::Stream(m) => m.encode_to_vec(),
            Req::Join(m) | Req::Leave(m) => m.encode_to_vec(),
            Req::Members(m) => m.encode_to_vec(),
            Req::SetPreferences(m) => m.encode_to_vec(),
            Req::GetPreferences(m) => m.encode_to_vec(),
            Req::Cancel(m) => m.encode_to_vec(),
            Req::Raw(_, bytes) => bytes.clone(),
        }
    }
}

/// One row: what to send, and what must come back.
struct Case {
    category: &'static str,
    name: &'static str,
    request: Req,
    code: Code,
    /// INVALID_ARGUMENT: the message starts with `field:`. Other codes: the
    /// message contains this text.
    field: &'static str,
}

/// Collects rows under the current category.
#[derive(Default)]
struct Table {
    category: &'static str,
    cases: Vec<Case>,
}

impl Table {
    fn category(&mut self, category: &'static str) {
        self.category = category;
    }

    fn row(&mut self, name: &'static str, request: Req, code: Code, field: &'static str) {
        self.cases.push(Case {
            category: self.category,
            name,
            request,
            code,
            field,
        });
    }

    /// INVALID_ARGUMENT naming `field`.
    fn bad(&mut self, name: &'static str, request: Req, field: &'static str) {
        self.row(name, request, Code::InvalidArgument, field);
    }

    /// OK, and nothing stored changes.
    fn accept(&mut self, name: &'static str, request: Req) {
        self.row(name, request, Code::Ok, "");
    }
}

/// What the table needs from the stored fixture.
struct Ids {
    /// A vendor 5 notification that is not READ.
    unread: String,
    /// A vendor 5 notification that is READ.
    read: String,
    /// A customer 12 notification.
    other_user: String,
    /// A vendor 5 notification with actions `accept` and `view`, none taken.
    actionable: String,
    /// A vendor 5 notification whose action `accept` was taken.
    taken: String,
}

/// A valid request for `rpc` with `extra` encoded after it: protobuf keeps
/// the last value of a field, so `extra` overrides (or adds to) the request.
fn then(base: Req, extra: Vec<u8>) -> Req {
    Req::Raw(base.rpc(), [base.encode(), extra].concat())
}

fn create(edit: impl FnOnce(&mut proto::CreateNotificationRequest)) -> Req {
    let mut request = simple(5, 1);
    edit(&mut request);
    Req::Create(request)
}

fn vendor(id: i64) -> proto::Recipient {
    proto::Recipient {
        vendor_id: Some(id),
        customer_id: None,
    }
}

fn customer(id: i64) -> proto::Recipient {
    proto::Recipient {
        vendor_id: None,
        customer_id: Some(id),
    }
}

fn bulk(edit: impl FnOnce(&mut proto::CreateNotificationsRequest)) -> Req {
    let mut request = proto::CreateNotificationsRequest {
        recipients: vec![vendor(1), vendor(2)],
        r#type: "sale".into(),
        content: Some(to_struct(json!({}))),
        ..Default::default()
    };
    edit(&mut request);
    Req::Bulk(request)
}

fn get(id: impl Into<String>) -> Req {
    Req::Get(proto::GetNotificationRequest { id: id.into() })
}

fn list(edit: impl FnOnce(&mut proto::ListOfflineRequest)) -> Req {
    let mut request = proto::ListOfflineRequest {
        vendor_id: Some(5),
        ..Default::default()
    };
    edit(&mut request);
    Req::List(request)
}

fn views(edit: impl FnOnce(&mut proto::ListNotificationsRequest)) -> Req {
    let mut request = proto::ListNotificationsRequest {
        vendor_id: Some(5),
        view: proto::View::Archived as i32,
        ..Default::default()
    };
    edit(&mut request);
    Req::Views(request)
}

fn counts(edit: impl FnOnce(&mut proto::GetUnreadCountsRequest)) -> Req {
    let mut request = proto::GetUnreadCountsRequest {
        vendor_id: Some(5),
        customer_id: None,
    };
    edit(&mut request);
    Req::Counts(request)
}

/// Vendor 5 marking its whole inbox READ: would change what is stored.
fn mark_all(edit: impl FnOnce(&mut proto::MarkAllNotificationsRequest)) -> Req {
    let mut request = proto::MarkAllNotificationsRequest {
        vendor_id: Some(5),
        status: proto::Status::Read as i32,
        ..Default::default()
    };
    edit(&mut request);
    Req::MarkAll(request)
}

fn stream(edit: impl FnOnce(&mut proto::StreamUserEventsRequest)) -> Req {
    let mut request = proto::StreamUserEventsRequest {
        vendor_id: Some(5),
        after_seq: Some(0),
        ..Default::default()
    };
    edit(&mut request);
    Req::Stream(request)
}

/// Vendor 5 joining `order:882`, where it is not a member.
fn join(edit: impl FnOnce(&mut proto::RoomRequest)) -> Req {
    let mut request = proto::RoomRequest {
        room: "order:882".into(),
        vendor_id: Some(5),
        customer_id: None,
    };
    edit(&mut request);
    Req::Join(request)
}

/// Vendor 5 leaving `order:881`, where it is a member.
fn leave(edit: impl FnOnce(&mut proto::RoomRequest)) -> Req {
    let mut request = proto::RoomRequest {
        room: "order:881".into(),
        vendor_id: Some(5),
        customer_id: None,
    };
    edit(&mut request);
    Req::Leave(request)
}

fn members(room: impl Into<String>) -> Req {
    Req::Members(proto::ListRoomMembersRequest { room: room.into() })
}

/// An empty message: every field at its default.
fn empty(rpc: Rpc) -> Req {
    Req::Raw(rpc, Vec::new())
}

/// Byte strings that are not UTF-8.
const NOT_UTF8: &[u8] = b"ab\xffcd";
const OVERLONG_NUL: &[u8] = b"\xc0\x80";
const SURROGATE: &[u8] = b"\xed\xa0\x80";
const CUT_OFF: &[u8] = b"ab\xe2\x82";

/// A CreateNotification `type` making the whole message exactly `size` bytes.
fn create_of_size(size: usize) -> proto::CreateNotificationRequest {
    let mut request = simple(5, 1);
    request.r#type = "t".repeat(size);
    let over = request.encoded_len() - size;
    request.r#type = "t".repeat(size - over);
    assert_eq!(request.encoded_len(), size);
    request
}

/// Every case. The request helpers start from a valid request that would
/// change what is stored, so a case the server wrongly accepts shows twice:
/// as the wrong code and as a changed snapshot.
fn cases(ids: &Ids) -> Vec<Case> {
    use wire::{bytes, header, int, key};
    let mark = |edit: &dyn Fn(&mut proto::MarkNotificationsRequest)| {
        let mut request = proto::MarkNotificationsRequest {
            vendor_id: Some(5),
            customer_id: None,
            ids: vec![ids.unread.clone()],
            status: proto::Status::Read as i32,
        };
        edit(&mut request);
        Req::Mark(request)
    };
    let unread = ids.unread.clone();
    // Vendor 5 archiving an unread one of its own: would change what is stored.
    let archive = |edit: &dyn Fn(&mut proto::ArchiveNotificationsRequest)| {
        let mut request = proto::ArchiveNotificationsRequest {
            vendor_id: Some(5),
            customer_id: None,
            ids: vec![ids.unread.clone()],
            archived: Some(true),
        };
        edit(&mut request);
        Req::Archive(request)
    };
    let mut t = Table::default();

    t.category("inbox lifecycle");
    for (name, category) in [
        ("create: category with capitals", "Order"),
        ("create: category with a space", "or der"),
        ("create: category with a colon", "order:shipped"),
        (
            "create: category of 65 characters",
            "a".repeat(65).leak() as &str,
        ),
        ("create: category not ASCII", "заказ"),
    ] {
        t.bad(
            name,
            create(|r| r.category = category.to_owned()),
            "category",
        );
    }
    for (name, expires_at) in [
        ("create: expiresAt not a time", "tomorrow"),
        ("create: expiresAt in the past", "2020-01-01T00:00:00.000Z"),
        ("create: expiresAt two years ahead", "2099-01-01T00:00:00Z"),
        ("create: expiresAt not in UTC", "2030-01-01T00:00:00+02:00"),
        ("create: expiresAt without a zone", "2030-01-01T00:00:00"),
    ] {
        t.bad(
            name,
            create(|r| r.expires_at = expires_at.to_owned()),
            "expiresAt",
        );
    }
    let complete = |edit: &dyn Fn(&mut proto::CompleteActionRequest)| {
        let mut request = proto::CompleteActionRequest {
            vendor_id: Some(5),
            customer_id: None,
            id: ids.actionable.clone(),
            action_id: "accept".into(),
        };
        edit(&mut request);
        Req::Complete(request)
    };
    t.bad(
        "complete: no recipient",
        complete(&|r| r.vendor_id = None),
        "vendorId",
    );
    t.bad(
        "complete: two recipients",
        complete(&|r| r.customer_id = Some(12)),
        "vendorId",
    );
    t.bad("complete: no id", complete(&|r| r.id.clear()), "id");
    t.bad(
        "complete: id not hex",
        complete(&|r| r.id = "zz".repeat(12)),
        "id",
    );
    t.bad(
        "complete: no actionId",
        complete(&|r| r.action_id.clear()),
        "actionId",
    );
    t.bad(
        "complete: actionId of 33 characters",
        complete(&|r| r.action_id = "a".repeat(33)),
        "actionId",
    );
    t.bad(
        "complete: an action the notification lacks",
        complete(&|r| r.action_id = "refund".into()),
        "actionId",
    );
    t.bad(
        "complete: a notification without actions",
        complete(&|r| r.id = ids.unread.clone()),
        "actionId",
    );
    t.row(
        "complete: a second completion",
        complete(&|r| r.id = ids.taken.clone()),
        Code::FailedPrecondition,
        "already had its action",
    );
    t.row(
        "complete: another user's notification",
        complete(&|r| r.id = ids.other_user.clone()),
        Code::NotFound,
        "no notification",
    );
    t.row(
        "complete: an id that does not exist",
        complete(&|r| r.id = "68553796000745d4620985ff".into()),
        Code::NotFound,
        "no notification",
    );
    let action = |id: &str, label: &str, url: &str| proto::Action {
        id: id.into(),
        label: label.into(),
        url: url.into(),
    };
    for (name, actions, field) in [
        (
            "create: four actions",
            vec![action("a", "A", ""); 4],
            "actions",
        ),
        (
            "create: a javascript: action URL",
            vec![action("a", "A", "javascript:alert(1)")],
            "actions[0].url",
        ),
        (
            "create: a relative action URL",
            vec![action("a", "A", "/orders/7")],
            "actions[0].url",
        ),
        (
            "create: a data: action URL",
            vec![action("a", "A", "data:text/html,<b>x</b>")],
            "actions[0].url",
        ),
        (
            "create: two actions with one id",
            vec![action("a", "A", ""), action("a", "B", "")],
            "actions[1].id",
        ),
        (
            "create: an action without an id",
            vec![action("", "A", "")],
            "actions[0].id",
        ),
        (
            "create: an action id of 33 characters",
            vec![action(&"i".repeat(33), "A", "")],
            "actions[0].id",
        ),
        (
            "create: an action without a label",
            vec![action("a", "", "")],
            "actions[0].label",
        ),
        (
            "create: an action label of 65 characters",
            vec![action("a", &"l".repeat(65), "")],
            "actions[0].label",
        ),
    ] {
        t.bad(name, create(|r| r.actions = actions), field);
    }
    t.bad(
        "bulk: an ftp: action URL",
        bulk(|r| r.actions = vec![action("a", "A", "ftp://shop.example/x")]),
        "actions[0].url",
    );
    t.bad(
        "create: collapseKey of 129 characters",
        create(|r| r.collapse_key = "k".repeat(129)),
        "collapseKey",
    );
    t.bad(
        "create: collapseKey with a control character",
        create(|r| r.collapse_key = "order\n7".into()),
        "collapseKey",
    );
    t.bad(
        "bulk: collapseKey of 129 characters",
        bulk(|r| r.collapse_key = "k".repeat(129)),
        "collapseKey",
    );
    t.bad(
        "bulk: expiresAt in the past",
        bulk(|r| r.expires_at = "2001-01-01T00:00:00Z".into()),
        "expiresAt",
    );
    let erase = |vendor_id, customer_id| {
        Req::Erase(proto::EraseUserRequest {
            vendor_id,
            customer_id,
        })
    };
    t.bad("erase: no recipient", erase(None, None), "vendorId");
    t.bad(
        "erase: two recipients",
        erase(Some(5), Some(12)),
        "vendorId",
    );
    t.bad("erase: zero vendor", erase(Some(0), None), "vendorId");
    t.bad(
        "erase: negative customer",
        erase(None, Some(-12)),
        "customerId",
    );
    t.bad(
        "bulk: bad category",
        bulk(|r| r.category = "Sale!".into()),
        "category",
    );
    t.bad(
        "views: no recipient",
        views(|r| r.vendor_id = None),
        "vendorId",
    );
    t.bad("views: unknown view", views(|r| r.view = 9), "view");
    t.bad("views: negative view", views(|r| r.view = -1), "view");
    t.bad(
        "views: bad category",
        views(|r| r.category = "A".into()),
        "category",
    );
    t.bad("views: limit 0", views(|r| r.limit = Some(0)), "limit");
    t.bad("views: page 0", views(|r| r.page = Some(0)), "page");
    t.bad(
        "views: beforeSeq 0",
        views(|r| r.before_seq = Some(0)),
        "beforeSeq",
    );
    t.bad(
        "counts: no recipient",
        counts(|r| r.vendor_id = None),
        "vendorId",
    );
    t.bad(
        "counts: two recipients",
        counts(|r| r.customer_id = Some(12)),
        "vendorId",
    );
    t.bad(
        "counts: negative customer",
        counts(|r| {
            r.vendor_id = None;
            r.customer_id = Some(-1)
        }),
        "customerId",
    );
    t.bad(
        "mark all: no recipient",
        mark_all(|r| r.vendor_id = None),
        "vendorId",
    );
    t.bad(
        "mark all: status unset",
        mark_all(|r| r.status = 0),
        "status",
    );
    t.bad(
        "mark all: status SENT",
        mark_all(|r| r.status = proto::Status::Sent as i32),
        "status",
    );
    t.bad(
        "mark all: status out of range",
        mark_all(|r| r.status = 99),
        "status",
    );
    t.bad(
        "mark all: upToSeq 0",
        mark_all(|r| r.up_to_seq = Some(0)),
        "upToSeq",
    );
    t.bad(
        "mark all: negative upToSeq",
        mark_all(|r| r.up_to_seq = Some(i64::MIN)),
        "upToSeq",
    );
    t.bad(
        "mark all: bad category",
        mark_all(|r| r.category = "ORDER".into()),
        "category",
    );
    t.bad("archive: no ids", archive(&|r| r.ids.clear()), "ids");
    t.bad(
        "archive: a bad id",
        archive(&|r| r.ids = vec!["xyz".into()]),
        "ids[0]",
    );
    t.bad(
        "archive: 1,001 ids",
        archive(&|r| {
            r.ids = (0..1001)
                .map(|n| format!("68553796000745d462{n:06x}"))
                .collect()
        }),
        "ids",
    );
    t.bad(
        "archive: no recipient",
        archive(&|r| r.vendor_id = None),
        "vendorId",
    );
    t.accept(
        "archive: another user's id, nothing changes",
        archive(&|r| r.ids = vec![ids.other_user.clone()]),
    );
    t.accept(
        "mark all: a category the user has none of",
        mark_all(|r| r.category = "nothing-here".into()),
    );
    t.accept(
        "mark all: up to a seq before every unread one",
        mark_all(|r| {
            r.vendor_id = Some(6);
            r.up_to_seq = Some(1)
        }),
    );

    t.category("recipient ids");
    t.bad("no recipient", create(|r| r.vendor_id = None), "vendorId");
    t.bad(
        "two recipients",
        create(|r| r.customer_id = Some(12)),
        "vendorId",
    );
    t.bad(
        "zero vendor id",
        create(|r| r.vendor_id = Some(0)),
        "vendorId",
    );
    t.bad(
        "negative vendor id",
        create(|r| r.vendor_id = Some(-5)),
        "vendorId",
    );
    t.bad(
        "vendor id i64::MIN",
        create(|r| r.vendor_id = Some(i64::MIN)),
        "vendorId",
    );
    t.bad(
        "negative customer id",
        create(|r| {
            r.vendor_id = None;
            r.customer_id = Some(i64::MIN)
        }),
        "customerId",
    );
    t.bad(
        "zero customer id",
        create(|r| {
            r.vendor_id = None;
            r.customer_id = Some(0)
        }),
        "customerId",
    );
    t.bad(
        "two recipients, one zero",
        create(|r| r.customer_id = Some(0)),
        "vendorId",
    );
    t.bad(
        "bulk recipient with both ids",
        bulk(|r| {
            r.recipients = vec![proto::Recipient {
                vendor_id: Some(1),
                customer_id: Some(1),
            }]
        }),
        "recipients[0].vendorId",
    );
    t.bad(
        "bulk recipient with neither id",
        bulk(|r| r.recipients = vec![proto::Recipient::default()]),
        "recipients[0].vendorId",
    );
    t.bad(
        "bulk second recipient zero",
        bulk(|r| r.recipients = vec![vendor(1), vendor(0)]),
        "recipients[1].vendorId",
    );
    t.bad(
        "bulk negative customer",
        bulk(|r| r.recipients = vec![customer(-1)]),
        "recipients[0].customerId",
    );
    t.bad(
        "bulk duplicate vendor",
        bulk(|r| r.recipients = vec![vendor(1), vendor(2), vendor(1)]),
        "recipients[2]",
    );
    t.bad(
        "bulk duplicate customer",
        bulk(|r| r.recipients = vec![customer(1), customer(1)]),
        "recipients[1]",
    );
    t.bad(
        "list with no recipient",
        Req::List(proto::ListOfflineRequest::default()),
        "vendorId",
    );
    t.bad(
        "list with two recipients",
        list(|r| r.customer_id = Some(12)),
        "vendorId",
    );
    t.bad(
        "list for vendor 0",
        list(|r| r.vendor_id = Some(0)),
        "vendorId",
    );
    t.bad(
        "list for a negative customer",
        list(|r| {
            r.vendor_id = None;
            r.customer_id = Some(-12)
        }),
        "customerId",
    );
    t.bad(
        "mark with no recipient",
        mark(&|r| r.vendor_id = None),
        "vendorId",
    );
    t.bad(
        "mark with two recipients",
        mark(&|r| r.customer_id = Some(12)),
        "vendorId",
    );
    t.bad(
        "mark for a negative vendor",
        mark(&|r| r.vendor_id = Some(-5)),
        "vendorId",
    );
    t.bad(
        "stream with no recipient",
        stream(|r| r.vendor_id = None),
        "vendorId",
    );
    t.bad(
        "stream with two recipients",
        stream(|r| r.customer_id = Some(12)),
        "vendorId",
    );
    t.bad(
        "stream for vendor 0",
        stream(|r| r.vendor_id = Some(0)),
        "vendorId",
    );
    t.bad(
        "stream for a negative customer",
        stream(|r| {
            r.vendor_id = None;
            r.customer_id = Some(-7)
        }),
        "customerId",
    );
    t.bad(
        "join with no recipient",
        join(|r| r.vendor_id = None),
        "vendorId",
    );
    t.bad(
        "join with two recipients",
        join(|r| r.customer_id = Some(12)),
        "vendorId",
    );
    t.bad(
        "join as vendor 0",
        join(|r| r.vendor_id = Some(0)),
        "vendorId",
    );
    t.bad(
        "join as a negative customer",
        join(|r| {
            r.vendor_id = None;
            r.customer_id = Some(i64::MIN)
        }),
        "customerId",
    );
    t.bad(
        "leave with no recipient",
        leave(|r| r.vendor_id = None),
        "vendorId",
    );
    t.bad(
        "leave as a negative vendor",
        leave(|r| r.vendor_id = Some(-5)),
        "vendorId",
    );
    t.bad(
        "leave with two recipients",
        leave(|r| r.customer_id = Some(12)),
        "vendorId",
    );

    t.category("sizes");
    t.row(
        "message of 4 MiB + 1 byte",
        Req::Create(create_of_size(MESSAGE_LIMIT + 1)),
        Code::OutOfRange,
        "message length too large",
    );
    t.bad(
        "message of exactly 4 MiB: decoded, then the long type refused",
        Req::Create(create_of_size(MESSAGE_LIMIT)),
        "type",
    );
    t.row(
        "16 MiB of content",
        create(|r| r.content = Some(to_struct(json!({"blob": "x".repeat(16 << 20)})))),
        Code::OutOfRange,
        "message length too large",
    );
    t.row(
        "bulk: 5 MiB of recipients",
        bulk(|r| r.recipients = (1..=1_000_000).map(vendor).collect()),
        Code::OutOfRange,
        "message length too large",
    );
    t.row(
        "get: 5 MiB id",
        get("a".repeat(5 << 20)),
        Code::OutOfRange,
        "message length too large",
    );
    t.row(
        "list: 5 MiB unknown field",
        then(list(|_| {}), bytes(99, &vec![0; 5 << 20])),
        Code::OutOfRange,
        "message length too large",
    );
    t.row(
        "mark: 5 MiB of ids",
        mark(&|r| r.ids = vec![unread.clone(); 200_000]),
        Code::OutOfRange,
        "message length too large",
    );
    t.row(
        "stream: 5 MiB unknown field",
        then(stream(|_| {}), bytes(99, &vec![0; 5 << 20])),
        Code::OutOfRange,
        "message length too large",
    );
    t.row(
        "join: 5 MiB room",
        join(|r| r.room = "r".repeat(5 << 20)),
        Code::OutOfRange,
        "message length too large",
    );
    t.row(
        "leave: 5 MiB room",
        leave(|r| r.room = "r".repeat(5 << 20)),
        Code::OutOfRange,
        "message length too large",
    );
    t.row(
        "members: 5 MiB room",
        members("r".repeat(5 << 20)),
        Code::OutOfRange,
        "message length too large",
    );
    t.bad(
        "type of 129 characters",
        create(|r| r.r#type = "t".repeat(129)),
        "type",
    );
    t.bad(
        "type of 129 two-byte characters",
        create(|r| r.r#type = "é".repeat(129)),
        "type",
    );
    t.bad(
        "type of 3 MiB",
        create(|r| r.r#type = "t".repeat(3 << 20)),
        "type",
    );
    t.bad(
        "content over 64 KiB",
        create(|r| r.content = Some(to_struct(json!({"blob": "x".repeat(64 * 1024)})))),
        "content",
    );
    // {"blob":"…"} is 11 bytes around the string: 65,526 x's make 65,537.
    t.bad(
        "content one byte over 64 KiB",
        create(|r| r.content = Some(to_struct(json!({"blob": "x".repeat(65_526)})))),
        "content",
    );
    t.bad(
        "content of 10,000 small keys",
        create(|r| {
            let map = (0..10_000)
                .map(|i| (format!("k{i:05}"), json!(i)))
                .collect();
            r.content = Some(to_struct(serde_json::Value::Object(map)))
        }),
        "content",
    );
    t.bad(
        "idempotency key of 129 characters",
        create(|r| r.idempotency_key = "k".repeat(129)),
        "idempotencyKey",
    );
    t.bad(
        "idempotency key of 1 MiB",
        create(|r| r.idempotency_key = "k".repeat(1 << 20)),
        "idempotencyKey",
    );
    t.bad(
        "bulk: no recipients",
        bulk(|r| r.recipients.clear()),
        "recipients",
    );
    t.bad(
        "bulk: 1001 recipients",
        bulk(|r| r.recipients = (1..=1001).map(vendor).collect()),
        "recipients",
    );
    t.bad(
        "bulk: 100,000 recipients",
        bulk(|r| r.recipients = (1..=100_000).map(vendor).collect()),
        "recipients",
    );
    t.bad(
        "bulk: type of 129 characters",
        bulk(|r| r.r#type = "t".repeat(129)),
        "type",
    );
    t.bad(
        "bulk: content over 64 KiB",
        bulk(|r| r.content = Some(to_struct(json!({"blob": "x".repeat(70_000)})))),
        "content",
    );
    t.bad(
        "bulk: idempotency key of 129 characters",
        bulk(|r| r.idempotency_key = "k".repeat(129)),
        "idempotencyKey",
    );
    t.bad("mark: no ids", mark(&|r| r.ids.clear()), "ids");
    t.bad(
        "mark: 1001 ids",
        mark(&|r| r.ids = vec![unread.clone(); 1001]),
        "ids",
    );
    t.bad(
        "mark: 100,000 ids",
        mark(&|r| r.ids = vec![unread.clone(); 100_000]),
        "ids",
    );
    t.bad(
        "join: room of 129 characters",
        join(|r| r.room = "r".repeat(129)),
        "room",
    );
    t.bad(
        "join: room of 129 three-byte characters",
        join(|r| r.room = "€".repeat(129)),
        "room",
    );
    t.bad(
        "leave: room of 129 characters",
        leave(|r| r.room = "r".repeat(129)),
        "room",
    );
    t.bad(
        "members: room of 129 characters",
        members("r".repeat(129)),
        "room",
    );
    t.bad(
        "members: room of 1 MiB",
        members("r".repeat(1 << 20)),
        "room",
    );

    t.category("deep nesting");
    t.bad(
        "content objects nested 10,000 deep",
        then(
            create(|r| r.content = None),
            bytes(5, &wire::deep_objects(10_000)),
        ),
        "content",
    );
    t.bad(
        "content lists nested 10,000 deep",
        then(
            create(|r| r.content = None),
            bytes(5, &wire::deep_lists(10_000)),
        ),
        "content",
    );
    t.bad(
        "content objects nested 101 deep",
        then(
            create(|r| r.content = None),
            bytes(5, &wire::deep_objects(101)),
        ),
        "content",
    );
    t.bad(
        "content nested 10,000 deep after valid content",
        then(create(|_| {}), bytes(5, &wire::deep_objects(10_000))),
        "content",
    );
    t.bad(
        "bulk: content objects nested 10,000 deep",
        then(
            bulk(|r| r.content = None),
            bytes(4, &wire::deep_objects(10_000)),
        ),
        "content",
    );
    t.bad(
        "bulk: content lists nested 10,000 deep",
        then(
            bulk(|r| r.content = None),
            bytes(4, &wire::deep_lists(10_000)),
        ),
        "content",
    );

    t.category("numbers");
    t.bad("priority 11", create(|r| r.priority = 11), "priority");
    t.bad("priority -1", create(|r| r.priority = -1), "priority");
    t.bad(
        "priority i32::MAX",
        create(|r| r.priority = i32::MAX),
        "priority",
    );
    t.bad(
        "priority i32::MIN",
        create(|r| r.priority = i32::MIN),
        "priority",
    );
    t.bad("bulk: priority 11", bulk(|r| r.priority = 11), "priority");
    t.bad(
        "bulk: priority i32::MIN",
        bulk(|r| r.priority = i32::MIN),
        "priority",
    );
    t.bad(
        "content number NaN",
        create(|r| r.content = Some(number_content(f64::NAN))),
        "content",
    );
    t.bad(
        "content number +infinity",
        create(|r| r.content = Some(number_content(f64::INFINITY))),
        "content",
    );
    t.bad(
        "content number -infinity inside a list",
        create(|r| {
            let mut content = to_struct(json!({"list": [1, 2]}));
            if let Some(prost_types::value::Kind::ListValue(list)) =
                content.fields.get_mut("list").and_then(|v| v.kind.as_mut())
            {
                list.values.push(prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(f64::NEG_INFINITY)),
                });
            }
            r.content = Some(content)
        }),
        "content",
    );
    t.bad(
        "bulk: content number NaN",
        bulk(|r| r.content = Some(number_content(f64::NAN))),
        "content",
    );
    t.bad(
        "afterSeq -1",
        stream(|r| r.after_seq = Some(-1)),
        "afterSeq",
    );
    t.bad(
        "afterSeq i64::MIN",
        stream(|r| r.after_seq = Some(i64::MIN)),
        "afterSeq",
    );
    t.bad(
        "afterVersion -1",
        stream(|r| r.after_version = Some(-1)),
        "afterVersion",
    );
    t.bad(
        "afterVersion without afterSeq",
        stream(|r| {
            r.after_seq = None;
            r.after_version = Some(3);
        }),
        "afterVersion",
    );
    t.bad(
        "afterId not an id",
        stream(|r| r.after_id = "seq-5".into()),
        "afterId",
    );
    t.bad(
        "afterId without afterSeq",
        stream(|r| {
            r.after_seq = None;
            r.after_id = "68553796000745d4620985bc".into();
        }),
        "afterId",
    );
    t.bad(
        "epoch with a control character",
        stream(|r| r.epoch = "abc\u{0}".into()),
        "epoch",
    );
    t.bad(
        "epoch of 65 characters",
        stream(|r| r.epoch = "a".repeat(65)),
        "epoch",
    );
    t.bad(
        "vendorId varint of 11 bytes",
        then(
            create(|_| {}),
            [key(1, 0), vec![0xff; 10], vec![0x01]].concat(),
        ),
        "vendorId",
    );
    t.bad(
        "customerId varint cut off",
        then(
            create(|r| r.vendor_id = None),
            [key(2, 0), vec![0x80, 0x80]].concat(),
        ),
        "customerId",
    );
    t.bad(
        "priority varint cut off",
        then(create(|_| {}), [key(6, 0), vec![0xff]].concat()),
        "priority",
    );
    t.bad(
        "list: page varint of 11 bytes",
        then(
            list(|_| {}),
            [key(3, 0), vec![0x80; 10], vec![0x01]].concat(),
        ),
        "page",
    );
    t.bad(
        "list: limit varint cut off",
        then(list(|_| {}), [key(4, 0), vec![0x81]].concat()),
        "limit",
    );
    t.bad(
        "stream: afterSeq varint cut off",
        then(stream(|_| {}), [key(3, 0), vec![0xff, 0xff]].concat()),
        "afterSeq",
    );
    t.bad(
        "join: vendorId varint cut off",
        then(join(|_| {}), [key(2, 0), vec![0x80]].concat()),
        "vendorId",
    );

    t.category("enum values");
    t.bad("channel 99", create(|r| r.channel = 99), "channel");
    t.bad(
        "channel 5, one past SMS",
        create(|r| r.channel = 5),
        "channel",
    );
    t.bad("channel -1", create(|r| r.channel = -1), "channel");
    t.bad(
        "channel i32::MAX",
        create(|r| r.channel = i32::MAX),
        "channel",
    );
    t.bad(
        "channel i32::MIN",
        create(|r| r.channel = i32::MIN),
        "channel",
    );
    t.bad("bulk: channel 7", bulk(|r| r.channel = 7), "channel");
    t.bad("bulk: channel -2", bulk(|r| r.channel = -2), "channel");
    t.bad(
        "mark: status unset",
        mark(&|r| r.status = proto::Status::Unspecified as i32),
        "status",
    );
    t.bad(
        "mark: status PENDING",
        mark(&|r| r.status = proto::Status::Pending as i32),
        "status",
    );
    t.bad(
        "mark: status SENT",
        mark(&|r| r.status = proto::Status::Sent as i32),
        "status",
    );
    t.bad("mark: status 5", mark(&|r| r.status = 5), "status");
    t.bad("mark: status -1", mark(&|r| r.status = -1), "status");
    t.bad(
        "mark: status i32::MAX",
        mark(&|r| r.status = i32::MAX),
        "status",
    );

    t.category("invalid UTF-8");
    t.bad(
        "type with a 0xFF byte",
        then(create(|_| {}), bytes(3, NOT_UTF8)),
        "type",
    );
    t.bad(
        "type with an overlong NUL",
        then(create(|_| {}), bytes(3, OVERLONG_NUL)),
        "type",
    );
    t.bad(
        "type with a UTF-16 surrogate",
        then(create(|_| {}), bytes(3, SURROGATE)),
        "type",
    );
    t.bad(
        "type with a cut-off sequence",
        then(create(|_| {}), bytes(3, CUT_OFF)),
        "type",
    );
    t.bad(
        "idempotency key not UTF-8",
        then(create(|_| {}), bytes(7, NOT_UTF8)),
        "idempotencyKey",
    );
    t.bad(
        "content string value not UTF-8",
        then(
            create(|r| r.content = None),
            bytes(5, &wire::one_field(b"message", &bytes(3, SURROGATE))),
        ),
        "content",
    );
    t.bad(
        "content key not UTF-8",
        then(
            create(|r| r.content = None),
            bytes(5, &wire::one_field(NOT_UTF8, &int(4, 1))),
        ),
        "content",
    );
    t.bad(
        "bulk: type not UTF-8",
        then(bulk(|_| {}), bytes(2, NOT_UTF8)),
        "type",
    );
    t.bad(
        "bulk: idempotency key not UTF-8",
        then(bulk(|_| {}), bytes(6, CUT_OFF)),
        "idempotencyKey",
    );
    t.bad(
        "get: id not UTF-8",
        Req::Raw(
            Rpc::GetNotification,
            bytes(1, b"68553796000745d4620985b\xff"),
        ),
        "id",
    );
    t.bad(
        "mark: second id not UTF-8",
        then(mark(&|_| {}), bytes(3, b"68553796000745d4620985\xc3\x28")),
        "ids",
    );
    t.bad(
        "join: room not UTF-8",
        then(join(|_| {}), bytes(1, NOT_UTF8)),
        "room",
    );
    t.bad(
        "leave: room not UTF-8",
        then(leave(|_| {}), bytes(1, OVERLONG_NUL)),
        "room",
    );
    t.bad(
        "members: room not UTF-8",
        Req::Raw(Rpc::ListRoomMembers, bytes(1, SURROGATE)),
        "room",
    );

    t.category("control characters and blanks");
    t.bad("empty type", create(|r| r.r#type = String::new()), "type");
    t.bad("blank type", create(|r| r.r#type = "   ".into()), "type");
    t.bad(
        "type of tabs and newlines",
        create(|r| r.r#type = "\t\n\r".into()),
        "type",
    );
    t.bad(
        "type with BEL",
        create(|r| r.r#type = "a\u{7}b".into()),
        "type",
    );
    t.bad(
        "type with NUL",
        create(|r| r.r#type = "a\0b".into()),
        "type",
    );
    t.bad(
        "type with a newline",
        create(|r| r.r#type = "order\npaid".into()),
        "type",
    );
    t.bad(
        "type with ESC",
        create(|r| r.r#type = "\u{1b}[31mred".into()),
        "type",
    );
    t.bad(
        "type with DEL",
        create(|r| r.r#type = "a\u{7f}".into()),
        "type",
    );
    t.bad(
        "type with C1 NEL",
        create(|r| r.r#type = "a\u{85}b".into()),
        "type",
    );
    t.bad(
        "idempotency key with NUL",
        create(|r| r.idempotency_key = "key\0".into()),
        "idempotencyKey",
    );
    t.bad(
        "idempotency key with a newline",
        create(|r| r.idempotency_key = "key\n2".into()),
        "idempotencyKey",
    );
    t.bad(
        "bulk: empty type",
        bulk(|r| r.r#type = String::new()),
        "type",
    );
    t.bad(
        "bulk: type with a control character",
        bulk(|r| r.r#type = "sale\u{0}".into()),
        "type",
    );
    t.bad(
        "bulk: idempotency key with a control character",
        bulk(|r| r.idempotency_key = "k\u{1}".into()),
        "idempotencyKey",
    );
    t.bad("join: empty room", join(|r| r.room = String::new()), "room");
    t.bad(
        "join: room with NUL",
        join(|r| r.room = "order:\0".into()),
        "room",
    );
    t.bad(
        "join: room with a newline",
        join(|r| r.room = "order:\n881".into()),
        "room",
    );
    t.bad(
        "join: room with a tab",
        join(|r| r.room = "order:\t881".into()),
        "room",
    );
    t.bad(
        "leave: empty room",
        leave(|r| r.room = String::new()),
        "room",
    );
    t.bad(
        "leave: room with ESC",
        leave(|r| r.room = "\u{1b}order".into()),
        "room",
    );
    t.bad("members: empty room", members(""), "room");
    t.bad("members: room with NUL", members("order:881\0"), "room");
    t.bad("members: room with DEL", members("order\u{7f}"), "room");

    t.category("ids");
    t.bad("get: empty id", get(""), "id");
    t.bad("get: 23-character id", get("68553796000745d4620985b"), "id");
    t.bad(
        "get: 25-character id",
        get("68553796000745d4620985bcd"),
        "id",
    );
    t.bad("get: non-hex id", get("zz553796000745d4620985bc"), "id");
    t.bad("get: id with 0x", get("0x68553796000745d4620985"), "id");
    t.bad(
        "get: id with a space",
        get("68553796000745d4620985b "),
        "id",
    );
    t.bad("get: id with NUL", get("68553796000745d4620985b\0"), "id");
    t.bad("get: 24 bytes of é", get("é".repeat(12)), "id");
    t.bad("get: enormous id", get("a".repeat(100_000)), "id");
    t.bad("get: id of 3 MiB", get("a".repeat(3 << 20)), "id");
    t.row(
        "get: unknown id",
        get("68553796000745d4620985bc"),
        Code::NotFound,
        "no notification with id",
    );
    t.bad(
        "mark: malformed second id",
        mark(&|r| r.ids = vec![unread.clone(), "nope".into()]),
        "ids[1]",
    );
    t.bad(
        "mark: empty id",
        mark(&|r| r.ids = vec![String::new()]),
        "ids[0]",
    );
    t.bad(
        "mark: enormous id",
        mark(&|r| r.ids = vec!["a".repeat(100_000)]),
        "ids[0]",
    );
    t.bad(
        "mark: third id with a control character",
        mark(&|r| r.ids = vec![unread.clone(), unread.clone(), "\u{0}".repeat(24)]),
        "ids[2]",
    );
    t.bad(
        "mark: 1000 ids, the last malformed",
        mark(&|r| {
            r.ids = vec![unread.clone(); 1000];
            r.ids[999] = "68553796000745d4620985bg".into()
        }),
        "ids[999]",
    );

    t.category("pagination");
    t.bad("page 0", list(|r| r.page = Some(0)), "page");
    t.bad("page -1", list(|r| r.page = Some(-1)), "page");
    t.bad("beforeSeq 0", list(|r| r.before_seq = Some(0)), "beforeSeq");
    t.bad(
        "beforeSeq -5",
        list(|r| r.before_seq = Some(-5)),
        "beforeSeq",
    );
    t.bad(
        "beforeSeq i64::MIN",
        list(|r| r.before_seq = Some(i64::MIN)),
        "beforeSeq",
    );
    t.bad("page i32::MIN", list(|r| r.page = Some(i32::MIN)), "page");
    t.bad("limit 0", list(|r| r.limit = Some(0)), "limit");
    t.bad("limit 101", list(|r| r.limit = Some(101)), "limit");
    t.bad("limit -1", list(|r| r.limit = Some(-1)), "limit");
    t.bad("limit -20", list(|r| r.limit = Some(-20)), "limit");
    t.bad(
        "limit i32::MAX",
        list(|r| r.limit = Some(i32::MAX)),
        "limit",
    );
    t.bad(
        "limit i32::MIN",
        list(|r| r.limit = Some(i32::MIN)),
        "limit",
    );
    t.bad(
        "page 0 and limit 0: page first",
        list(|r| {
            r.page = Some(0);
            r.limit = Some(0)
        }),
        "page",
    );
    t.bad(
        "good page, limit 1000",
        list(|r| {
            r.page = Some(1);
            r.limit = Some(1000)
        }),
        "limit",
    );
    t.accept("page 1, limit 1", list(|r| r.limit = Some(1)));
    t.accept("limit 100", list(|r| r.limit = Some(100)));
    t.accept(
        "last page, partly full",
        list(|r| {
            r.page = Some(2);
            r.limit = Some(20)
        }),
    );
    t.accept("one page past the end", list(|r| r.page = Some(3)));
    t.accept(
        "page i32::MAX, limit 100",
        list(|r| {
            r.page = Some(i32::MAX);
            r.limit = Some(100)
        }),
    );
    t.accept(
        "a user with nothing stored",
        list(|r| {
            r.vendor_id = None;
            r.customer_id = Some(5)
        }),
    );
    t.accept(
        "vendor i64::MAX, nothing stored",
        list(|r| r.vendor_id = Some(i64::MAX)),
    );

    t.category("delivery receipts");
    // Valid as it stands: it would move vendor 5's unread notification to
    // DELIVERED, so a bad case the server took would show in the snapshot.
    let deliveries = |edit: &dyn Fn(&mut proto::RecordDeliveriesRequest)| {
        let mut request = proto::RecordDeliveriesRequest {
            receipts: vec![proto::DeliveryReceipts {
                vendor_id: Some(5),
                customer_id: None,
                ids: vec![ids.unread.clone()],
            }],
        };
        edit(&mut request);
        Req::Deliveries(request)
    };
    t.bad(
        "receipts: none",
        deliveries(&|r| r.receipts.clear()),
        "receipts",
    );
    t.bad(
        "receipts: 1,001 users",
        deliveries(&|r| {
            let one = r.receipts[0].clone();
            r.receipts = (0..1001)
                .map(|n| proto::DeliveryReceipts {
                    vendor_id: Some(1_000 + n),
                    ..one.clone()
                })
                .collect();
        }),
        "receipts",
    );
    t.bad(
        "receipts: a user twice",
        deliveries(&|r| r.receipts.push(r.receipts[0].clone())),
        "receipts[1]",
    );
    t.bad(
        "receipts: no recipient",
        deliveries(&|r| r.receipts[0].vendor_id = None),
        "receipts[0].vendorId",
    );
    t.bad(
        "receipts: two recipients",
        deliveries(&|r| r.receipts[0].customer_id = Some(12)),
        "receipts[0].vendorId",
    );
    t.bad(
        "receipts: negative vendor id",
        deliveries(&|r| r.receipts[0].vendor_id = Some(-5)),
        "receipts[0].vendorId",
    );
    t.bad(
        "receipts: no ids",
        deliveries(&|r| r.receipts[0].ids.clear()),
        "receipts[0].ids",
    );
    t.bad(
        "receipts: 1,001 ids",
        deliveries(&|r| r.receipts[0].ids = vec![r.receipts[0].ids[0].clone(); 1001]),
        "receipts[0].ids",
    );
    t.bad(
        "receipts: a malformed id after a good one",
        deliveries(&|r| r.receipts[0].ids.push("not-an-id".into())),
        "receipts[0].ids[1]",
    );
    t.bad(
        "receipts: a 3 MiB id",
        deliveries(&|r| r.receipts[0].ids.push("f".repeat(3 << 20))),
        "receipts[0].ids[1]",
    );
    t.accept(
        "receipts: another user's id, nothing changes",
        deliveries(&|r| r.receipts[0].ids = vec![ids.other_user.clone()]),
    );
    t.accept(
        "receipts: a READ notification stays READ",
        deliveries(&|r| r.receipts[0].ids = vec![ids.read.clone()]),
    );

    t.category("malformed protobuf");
    for rpc in [
        Rpc::CreateNotification,
        Rpc::CreateNotifications,
        Rpc::GetNotification,
        Rpc::ListOffline,
        Rpc::ListNotifications,
        Rpc::GetUnreadCounts,
        Rpc::MarkNotifications,
        Rpc::MarkAllNotifications,
        Rpc::ArchiveNotifications,
        Rpc::EraseUser,
        Rpc::CompleteAction,
        Rpc::RecordDeliveries,
        Rpc::StreamUserEvents,
        Rpc::JoinRoom,
        Rpc::LeaveRoom,
        Rpc::ListRoomMembers,
        Rpc::SetPreferences,
        Rpc::GetPreferences,
        Rpc::CancelNotification,
    ] {
        let (name, field) = match rpc {
            Rpc::CreateNotification => ("create: empty message", "vendorId"),
            Rpc::CreateNotifications => ("bulk: empty message", "recipients"),
            Rpc::GetNotification => ("get: empty message", "id"),
            Rpc::ListOffline => ("list: empty message", "vendorId"),
            Rpc::ListNotifications => ("views: empty message", "vendorId"),
            Rpc::GetUnreadCounts => ("counts: empty message", "vendorId"),
            Rpc::MarkNotifications => ("mark: empty message", "vendorId"),
            Rpc::MarkAllNotifications => ("mark all: empty message", "vendorId"),
            Rpc::ArchiveNotifications => ("archive: empty message", "vendorId"),
            Rpc::EraseUser => ("erase: empty message", "vendorId"),
            Rpc::CompleteAction => ("complete: empty message", "vendorId"),
            Rpc::RecordDeliveries => ("receipts: empty message", "receipts"),
            Rpc::StreamUserEvents => ("stream: empty message", "vendorId"),
            Rpc::JoinRoom => ("join: empty message", "room"),
            Rpc::LeaveRoom => ("leave: empty message", "room"),
            Rpc::ListRoomMembers => ("members: empty message", "room"),
            Rpc::SetPreferences => ("preferences: empty message", "vendorId"),
            Rpc::GetPreferences => ("get preferences: empty message", "vendorId"),
            Rpc::CancelNotification => ("cancel: empty message", "id"),
        };
        t.bad(name, empty(rpc), field);
    }
    t.bad("missing content", create(|r| r.content = None), "content");
    t.bad(
        "bulk: missing content",
        bulk(|r| r.content = None),
        "content",
    );
    t.bad(
        "vendorId sent as bytes",
        then(create(|_| {}), bytes(1, b"5")),
        "vendorId",
    );
    t.bad(
        "channel sent as bytes",
        then(create(|_| {}), bytes(4, b"PUSH")),
        "channel",
    );
    t.bad(
        "content sent as a number",
        then(create(|_| {}), int(5, 1)),
        "content",
    );
    t.bad(
        "type longer than the message",
        then(create(|_| {}), header(3, 1000)),
        "type",
    );
    t.bad("field number 0", then(create(|_| {}), int(0, 1)), "request");
    t.bad("wire type 7", then(create(|_| {}), key(99, 7)), "request");
    t.bad(
        "a lone end-group tag",
        then(create(|_| {}), key(99, 4)),
        "request",
    );
    t.bad(
        "bulk: recipient that is not a message",
        then(bulk(|_| {}), int(1, 5)),
        "recipients",
    );
    t.bad(
        "bulk: recipient with a cut-off varint",
        then(bulk(|_| {}), bytes(1, &[0x08, 0xff])),
        "recipients",
    );
    t.bad(
        "get: id sent as a number",
        Req::Raw(Rpc::GetNotification, int(1, 42)),
        "id",
    );
    t.bad(
        "list: page sent as bytes",
        then(list(|_| {}), bytes(3, b"1")),
        "page",
    );
    t.bad(
        "mark: status sent as bytes",
        then(mark(&|_| {}), bytes(4, b"READ")),
        "status",
    );
    t.bad(
        "stream: presence sent as bytes",
        then(stream(|_| {}), bytes(4, b"true")),
        "presence",
    );
    t.bad(
        "members: room sent as a number",
        Req::Raw(Rpc::ListRoomMembers, int(1, 881)),
        "room",
    );

    t.category("preferences");
    let rule = |category: &str, channel: i32, enabled: Option<bool>| proto::PreferenceRule {
        category: category.to_owned(),
        channel,
        enabled,
    };
    let set = |rules: Vec<proto::PreferenceRule>| {
        Req::SetPreferences(proto::SetPreferencesRequest {
            vendor_id: Some(5),
            customer_id: None,
            rules,
        })
    };
    t.bad("preferences: no rules", set(vec![]), "rules");
    t.bad(
        "preferences: 101 rules",
        set(vec![rule("marketing", 1, Some(false)); 101]),
        "rules",
    );
    t.bad(
        "preferences: category missing",
        set(vec![rule("", 1, Some(false))]),
        "rules[0].category",
    );
    t.bad(
        "preferences: category with capitals",
        set(vec![
            rule("marketing", 1, Some(false)),
            rule("Sale", 1, Some(false)),
        ]),
        "rules[1].category",
    );
    t.bad(
        "preferences: channel unspecified",
        set(vec![rule("marketing", 0, Some(false))]),
        "rules[0].channel",
    );
    t.bad(
        "preferences: channel unknown",
        set(vec![rule("marketing", 99, Some(false))]),
        "rules[0].channel",
    );
    t.bad(
        "preferences: enabled missing",
        set(vec![rule("marketing", 1, None)]),
        "rules[0].enabled",
    );
    t.bad(
        "preferences: both recipients",
        Req::SetPreferences(proto::SetPreferencesRequest {
            vendor_id: Some(5),
            customer_id: Some(12),
            rules: vec![rule("marketing", 1, Some(false))],
        }),
        "vendorId",
    );
    t.bad(
        "get preferences: a negative id",
        Req::GetPreferences(proto::GetPreferencesRequest {
            vendor_id: None,
            customer_id: Some(-3),
        }),
        "customerId",
    );

    t.category("scheduled sends");
    for (name, send_at) in [
        ("create: sendAt not a time", "tomorrow at nine"),
        ("create: sendAt in the past", "2020-01-01T00:00:00.000Z"),
        ("create: sendAt two years ahead", "2099-01-01T00:00:00Z"),
        ("create: sendAt not in UTC", "2030-01-01T09:00:00+02:00"),
    ] {
        t.bad(name, create(|r| r.send_at = send_at.to_owned()), "sendAt");
    }
    t.bad(
        "bulk: sendAt without a zone",
        bulk(|r| r.send_at = "2030-01-01T09:00:00".into()),
        "sendAt",
    );
    t.bad(
        "create: expiresAt before sendAt",
        create(|r| {
            r.send_at = "2030-01-02T09:00:00Z".into();
            r.expires_at = "2030-01-01T09:00:00Z".into();
        }),
        "expiresAt",
    );
    t.bad(
        "cancel: a malformed id",
        Req::Cancel(proto::CancelNotificationRequest {
            id: "not-an-id".into(),
        }),
        "id",
    );
    t.row(
        "cancel: an unknown id",
        Req::Cancel(proto::CancelNotificationRequest {
            id: "68553796000745d4620985ff".into(),
        }),
        Code::NotFound,
        "no notification",
    );
    t.row(
        "cancel: a sent one",
        Req::Cancel(proto::CancelNotificationRequest {
            id: ids.unread.clone(),
        }),
        Code::FailedPrecondition,
        "not pending",
    );

    t.category("accepted, changing nothing");
    t.accept(
        "mark another user's notification",
        mark(&|r| r.ids = vec![ids.other_user.clone()]),
    );
    t.accept(
        "mark an unknown id",
        mark(&|r| r.ids = vec!["68553796000745d4620985bc".into()]),
    );
    t.accept(
        "mark a READ notification READ again",
        mark(&|r| r.ids = vec![ids.read.clone()]),
    );
    t.accept(
        "mark a READ notification DELIVERED",
        mark(&|r| {
            r.ids = vec![ids.read.clone()];
            r.status = proto::Status::Delivered as i32
        }),
    );
    t.accept(
        "leave a room the user is not in",
        leave(|r| r.room = "order:882".into()),
    );
    t.accept("members of an unknown room", members("order:999"));
    t.accept(
        "stream from afterSeq i64::MAX",
        stream(|r| r.after_seq = Some(i64::MAX)),
    );
    t.accept(
        "stream resuming in another epoch",
        stream(|r| {
            r.epoch = "0123456789abcdef01234567".into();
            r.after_version = Some(i64::MAX);
            r.sync = true;
        }),
    );
    t.accept(
        "list with a 1 MiB unknown field",
        then(list(|_| {}), bytes(99, &vec![7; 1 << 20])),
    );
    t.cases
}

/// `{"n": value}`.
fn number_content(value: f64) -> prost_types::Struct {
    prost_types::Struct {
        fields: [(
            "n".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(value)),
            },
        )]
        .into(),
    }
}

/// Hand-encoded protobuf, for what prost will not produce.
mod wire {
    /// A base-128 varint.
    pub fn varint(mut value: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(10);
        loop {
            let low = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(low);
                return out;
            }
            out.push(low | 0x80);
        }
    }

    /// A field key: number and wire type (0 varint, 2 length-delimited).
    pub fn key(field: u32, wire_type: u32) -> Vec<u8> {
        varint(u64::from(field << 3 | wire_type))
    }

    /// A varint field.
    pub fn int(field: u32, value: u64) -> Vec<u8> {
        [key(field, 0), varint(value)].concat()
    }

    /// The key and length of a length-delimited field; `len` bytes follow.
    pub fn header(field: u32, len: usize) -> Vec<u8> {
        [key(field, 2), varint(len as u64)].concat()
    }

    /// A length-delimited field.
    pub fn bytes(field: u32, value: &[u8]) -> Vec<u8> {
        [header(field, value.len()), value.to_vec()].concat()
    }

    /// A `google.protobuf.Struct` with one field: `name` → the Value
    /// encoded as `value`.
    pub fn one_field(name: &[u8], value: &[u8]) -> Vec<u8> {
        bytes(1, &[bytes(1, name), bytes(2, value)].concat())
    }

    /// `depth` wrappers around `core`, built without recursion: every
    /// level is a prefix (keys and lengths) computed from the length of
    /// what it wraps, innermost first, then written outermost first.
    fn nest(depth: usize, core: &[u8], prefix: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
        let mut prefixes = Vec::with_capacity(depth);
        let mut len = core.len();
        for _ in 0..depth {
            let level = prefix(len);
            len += level.len();
            prefixes.push(level);
        }
        let mut out = Vec::with_capacity(len);
        for level in prefixes.iter().rev() {
            out.extend_from_slice(level);
        }
        out.extend_from_slice(core);
        out
    }

    /// `{"a":{"a":…{}…}}`: a Struct of `depth` objects, one in another.
    pub fn deep_objects(depth: usize) -> Vec<u8> {
        nest(depth, &[], |inner| {
            // Struct.fields entry {key "a", value Value{struct_value: inner}}.
            let value = header(5, inner);
            let value_len = value.len() + inner;
            let entry = [bytes(1, b"a"), header(2, value_len)].concat();
            [header(1, entry.len() + value_len), entry, value].concat()
        })
    }

    /// `{"a":[[…[]…]]}`: a Struct holding `depth` lists, one in another.
    pub fn deep_lists(depth: usize) -> Vec<u8> {
        // ListValue{values: [Value{list_value: inner}]}.
        let lists = nest(depth - 1, &[], |inner| {
            let value = header(6, inner);
            [header(1, value.len() + inner), value].concat()
        });
        one_field(b"a", &bytes(6, &lists))
    }
}

/// Sends and receives protobuf bytes as they are, so a request can be
/// anything, valid or not.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// Sends one case; a stream that opens counts as OK and is dropped.
async fn send(channel: &Channel, request: &Req) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("channel not ready: {e}")))?;
    let path = http::uri::PathAndQuery::try_from(request.rpc().path()).expect("valid path");
    let message = tonic::Request::new(request.encode());
    if request.rpc() == Rpc::StreamUserEvents {
        grpc.server_streaming(message, path, RawCodec)
            .await
            .map(drop)
    } else {
        grpc.unary(message, path, RawCodec).await.map(drop)
    }
}

/// Checks one case; `Err` says what went wrong.
async fn check(channel: &Channel, case: &Case) -> Result<(), String> {
    let outcome = tokio::time::timeout(Duration::from_secs(30), send(channel, &case.request))
        .await
        .map_err(|_| "no answer within 30 s".to_owned())?;
    let (code, message) = match outcome {
        Ok(()) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_owned()),
    };
    let named = if code == Code::InvalidArgument {
        message.starts_with(&format!("{}:", case.field))
    } else {
        message.contains(case.field)
    };
    if code == case.code && named {
        return Ok(());
    }
    let shown: String = message.chars().take(300).collect();
    Err(format!(
        "got {code:?} {shown:?}; want {:?} naming {:?}",
        case.code, case.field
    ))
}

/// The users whose stored state the snapshot reads: the fixture's, and
/// those the cases address.
const USERS: [(Option<i64>, Option<i64>); 7] = [
    (Some(5), None),
    (None, Some(12)),
    (Some(6), None),
    (Some(1), None),
    (Some(2), None),
    (None, Some(1)),
    (None, Some(5)),
];

const ROOMS: [&str; 2] = ["order:881", "order:882"];

/// Everything stored that the cases could touch, as readable text: every
/// ListOffline page (items, pagination, lastSeq), each unread count, each
/// known notification by id, and the rooms' members.
async fn snapshot(client: &mut Client, known: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (vendor_id, customer_id) in USERS {
        let user = format!("vendor {vendor_id:?} customer {customer_id:?}");
        for page in 1.. {
            let reply = client
                .list_offline(proto::ListOfflineRequest {
                    vendor_id,
                    customer_id,
                    page: Some(page),
                    limit: Some(10),
                    before_seq: None,
                })
                .await
                .expect("list offline")
                .into_inner();
            let pagination = reply.pagination.expect("pagination");
            out.insert(format!("{user}: page {page} of 10"), format!("{reply:?}"));
            if page == 1 {
                out.insert(
                    format!("{user}: unread count"),
                    pagination.total_records.to_string(),
                );
                let counts = client
                    .get_unread_counts(proto::GetUnreadCountsRequest {
                        vendor_id,
                        customer_id,
                    })
                    .await
                    .expect("unread counts")
                    .into_inner();
                let by_category: BTreeMap<_, _> = counts.by_category.into_iter().collect();
                out.insert(
                    format!("{user}: counts"),
                    format!("{} {by_category:?} at {}", counts.count, counts.version),
                );
            }
            if !pagination.has_next {
                break;
            }
        }
    }
    for id in known {
        let reply = client
            .get_notification(proto::GetNotificationRequest { id: id.clone() })
            .await;
        let text = match reply {
            Ok(reply) => format!("{:?}", reply.into_inner()),
            Err(status) => format!("{status:?}"),
        };
        out.insert(format!("notification {id}"), text);
    }
    for room in ROOMS {
        let reply = client
            .list_room_members(proto::ListRoomMembersRequest { room: room.into() })
            .await
            .expect("room members")
            .into_inner();
        out.insert(format!("room {room}"), format!("{reply:?}"));
    }
    out
}

/// Stores the fixture: vendor 5 has 27 notifications (3 READ, 2
/// DELIVERED, then two with actions, one of them taken and so READ), customer 12 has 3 (one with an idempotency key), vendor 6
/// has 2, both READ; vendor 5 and customer 12 share room `order:881`,
/// vendor 6 is in `order:882`.
async fn store_fixture(client: &mut Client) -> (Ids, Vec<String>) {
    let mut create = async |request: proto::CreateNotificationRequest| {
        client
            .create_notification(request)
            .await
            .expect("create")
            .into_inner()
            .id
    };
    let mut vendor5 = Vec::new();
    for n in 0..25 {
        vendor5.push(create(simple(5, n)).await);
    }
    let mut customer12 = Vec::new();
    for n in 0..3 {
        let mut request = simple(5, n);
        request.vendor_id = None;
        request.customer_id = Some(12);
        if n == 0 {
            request.idempotency_key = "order-881-paid".into();
        }
        customer12.push(create(request).await);
    }
    let vendor6 = vec![create(simple(6, 0)).await, create(simple(6, 1)).await];
    let buttons = |n| proto::CreateNotificationRequest {
        actions: vec![
            proto::Action {
                id: "accept".into(),
                label: "Accept return".into(),
                url: String::new(),
            },
            proto::Action {
                id: "view".into(),
                label: "View order".into(),
                url: "https://shop.example/orders/881".into(),
            },
        ],
        ..simple(5, n)
    };
    let actionable = create(buttons(25)).await;
    let taken = create(buttons(26)).await;
    let marks = [
        (5, vendor5[..3].to_vec(), proto::Status::Read),
        (5, vendor5[3..5].to_vec(), proto::Status::Delivered),
        (6, vendor6.clone(), proto::Status::Read),
    ];
    for (vendor_id, ids, status) in marks {
        client
            .mark_notifications(proto::MarkNotificationsRequest {
                vendor_id: Some(vendor_id),
                customer_id: None,
                ids,
                status: status as i32,
            })
            .await
            .expect("mark");
    }
    for (room, vendor_id, customer_id) in [
        ("order:881", Some(5), None),
        ("order:881", None, Some(12)),
        ("order:882", Some(6), None),
    ] {
        client
            .join_room(proto::RoomRequest {
                room: room.into(),
                vendor_id,
                customer_id,
            })
            .await
            .expect("join");
    }
    client
        .complete_action(proto::CompleteActionRequest {
            vendor_id: Some(5),
            customer_id: None,
            id: taken.clone(),
            action_id: "accept".into(),
        })
        .await
        .expect("complete an action");
    let ids = Ids {
        unread: vendor5[10].clone(),
        read: vendor5[0].clone(),
        other_user: customer12[1].clone(),
        actionable: actionable.clone(),
        taken: taken.clone(),
    };
    let known = [vendor5, vec![actionable, taken], customer12, vendor6].concat();
    (ids, known)
}

#[test]
fn the_table_has_at_least_100_refused_cases_and_covers_every_rpc() {
    let ids = Ids {
        unread: "68553796000745d4620985b1".into(),
        read: "68553796000745d4620985b2".into(),
        other_user: "68553796000745d4620985b3".into(),
        actionable: "68553796000745d4620985b4".into(),
        taken: "68553796000745d4620985b5".into(),
    };
    let cases = cases(&ids);
    let refused = cases.iter().filter(|c| c.code != Code::Ok).count();
    assert!(refused >= 100, "only {refused} refused cases");
    assert!(
        cases.len() > refused,
        "accepted edges are in the table too: {} cases, {refused} refused",
        cases.len()
    );
    let names: BTreeSet<_> = cases.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
    let rpcs: BTreeSet<_> = cases.iter().map(|c| c.request.rpc()).collect();
    assert_eq!(rpcs.len(), 19, "every RPC has cases");
}

#[test]
fn hand_encoded_nesting_decodes_as_intended() {
    let decode = |bytes: Vec<u8>| to_json(&prost_types::Struct::decode(&bytes[..]).unwrap());
    assert_eq!(
        decode(wire::deep_objects(3)),
        json!({"a": {"a": {"a": {}}}})
    );
    assert_eq!(decode(wire::deep_lists(3)), json!({"a": [[[]]]}));
    let request =
        proto::CreateNotificationRequest::decode(&wire::bytes(5, &wire::deep_objects(2))[..])
            .unwrap();
    assert_eq!(to_json(&request.content.unwrap()), json!({"a": {"a": {}}}));
    assert_eq!(create_of_size(MESSAGE_LIMIT).encoded_len(), MESSAGE_LIMIT);
}

#[tokio::test]
async fn every_bad_input_is_refused_naming_its_field_and_changes_nothing() {
    let core = CoreProcess::start();
    let mut client = core.client().await;
    let (ids, known) = store_fixture(&mut client).await;
    let before = snapshot(&mut client, &known).await;
    let channel = Channel::from_shared(core.url())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let cases = cases(&ids);
    let mut failures = Vec::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, case) in cases.iter().enumerate() {
        *counts.entry(case.category).or_default() += 1;
        if let Err(why) = check(&channel, case).await {
            let line = format!(
                "case {index} [{}] {:?} {}: {why}",
                case.category,
                case.request.rpc(),
                case.name
            );
            eprintln!("FAILED {line}");
            failures.push(line);
        }
    }
    eprintln!("{} cases by category: {counts:?}", cases.len());

    // The same deep content as JSON through grpcurl: nested 5,000 deep,
    // past the decoder's recursion limit, refused naming the field.
    if let Err(why) = grpcurl_deep_content(&core).await {
        failures.push(format!("grpcurl, content nested 5,000 deep: {why}"));
    }

    // Still serving.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "notify.v1.NotificationService".into(),
        })
        .await
        .map(|reply| reply.into_inner().status);
    let want = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    if !matches!(serving, Ok(status) if status == want) {
        failures.push(format!("health check after the cases: {serving:?}"));
    }

    // Nothing stored changed.
    let after = snapshot(&mut client, &known).await;
    for (what, was) in &before {
        match after.get(what) {
            Some(now) if now == was => {}
            now => failures.push(format!(
                "stored state changed: {what}\n  before: {was}\n  after:  {now:?}"
            )),
        }
    }
    for what in after.keys().filter(|what| !before.contains_key(*what)) {
        failures.push(format!("stored state changed: {what} appeared"));
    }

    // A good request still works, and continues vendor 5's sequence with
    // no gap: nothing was created in between.
    match client.create_notification(simple(5, 99)).await {
        Ok(created) if created.get_ref().seq == 28 => {}
        other => failures.push(format!("a good request after the cases: {other:?}")),
    }

    assert!(
        failures.is_empty(),
        "{} of {} bad-input checks failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Content nested 5,000 deep as JSON, sent by grpcurl.
async fn grpcurl_deep_content(core: &CoreProcess) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
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
        .map_err(|e| format!("cannot run grpcurl: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(body.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    drop(stdin);
    let output = child.wait_with_output().await.map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("InvalidArgument") && stderr.contains("content: malformed") {
        Ok(())
    } else {
        Err(format!("grpcurl said {stderr:?}"))
    }
}
