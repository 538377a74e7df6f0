//! Pages of a user's lists (the unread inbox unless asked for another view
//! or a category) as sockets get them: read from the core (by keyset when
//! the socket asks for the page after the one it was last sent), with their
//! ids for receipts.

use std::sync::{Arc, Mutex};

use notify_store::{ListQuery, User, View};
use socketioxide::extract::SocketRef;

use super::core_client::{self, unary};
use super::payload::{Envelope, NotificationJson, Page};
use crate::contract::paging::Pagination;
use crate::contract::proto;

/// One page of one of a user's lists as sockets see it, with what the
/// bridge needs besides: its ids (for receipts) and the database's epoch.
pub struct OfflinePage {
    /// The `offlineNotifications` envelope.
    pub envelope: Envelope<Page>,
    /// The ids of its items.
    pub ids: Vec<String>,
    /// Where the next page starts: the seq of its last item.
    pub next: Option<PageCursor>,
    /// The database's epoch.
    pub epoch: String,
}

/// Where a socket's next page starts, from the last page it was sent:
/// asked for next, that page is read by keyset (after this seq), so paging
/// through a deep inbox costs each page its own rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageCursor {
    /// The list …
    pub query: ListQuery,
    /// … and the page that starts there …
    pub page: u32,
    /// … when pages have this many items …
    pub limit: u32,
    /// … right after this seq …
    pub after: i64,
    /// … as long as the socket has been sent no notification newer than
    /// this (the user's highest seq when the page was read): a new one on
    /// top moves every page down by one, and the next page is counted from
    /// the top again.
    pub read_at: i64,
}

/// What a socket was sent that its next page depends on; in its extensions.
#[derive(Default)]
struct PageMemory {
    next: Option<PageCursor>,
    /// The highest seq sent to it live.
    delivered: i64,
}

type SharedPages = Arc<Mutex<PageMemory>>;

/// Starts remembering what the socket's next page depends on.
pub(super) fn track(socket: &SocketRef) {
    socket.extensions.insert::<SharedPages>(Arc::default());
}

fn with_pages<T>(socket: &SocketRef, f: impl FnOnce(&mut PageMemory) -> T) -> Option<T> {
    let pages = socket.extensions.get::<SharedPages>()?;
    let mut memory = pages
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Some(f(&mut memory))
}

/// Remembers where the socket's next page starts.
pub(super) fn remember_page(socket: &SocketRef, next: Option<PageCursor>) {
    with_pages(socket, |memory| memory.next = next);
}

/// The socket was sent notification `seq` live.
pub(super) fn delivered_live(socket: &SocketRef, seq: i64) {
    with_pages(socket, |memory| {
        memory.delivered = memory.delivered.max(seq)
    });
}

/// Where the socket's next page starts, if nothing newer reached it since.
pub(super) fn next_page_start(socket: &SocketRef) -> Option<PageCursor> {
    with_pages(socket, |memory| {
        memory
            .next
            .clone()
            .filter(|cursor| memory.delivered <= cursor.read_at)
    })
    .flatten()
}

/// Reads one page of one of the user's lists; by keyset when `cursor` says
/// where this page starts.
pub(super) async fn offline_page(
    mut client: core_client::CoreApi,
    user: User,
    query: ListQuery,
    page: u32,
    limit: u32,
    cursor: Option<PageCursor>,
) -> Result<OfflinePage, tonic::Status> {
    let before_seq = cursor
        .filter(|c| (c.page, c.limit, &c.query) == (page, limit, &query))
        .map(|c| c.after);
    let view = match query.view {
        View::Inbox => proto::View::Inbox,
        View::Archived => proto::View::Archived,
        View::All => proto::View::All,
    };
    let response = client
        .list_notifications(unary(proto::ListNotificationsRequest {
            vendor_id: user.vendor_id(),
            customer_id: user.customer_id(),
            view: view as i32,
            category: query.category.clone().unwrap_or_default(),
            page: Some(page as i32),
            limit: Some(limit as i32),
            before_seq,
        }))
        .await?
        .into_inner();
    let total = response
        .pagination
        .map(|p| p.total_records)
        .unwrap_or_default();
    let next = response.items.last().map(|last| PageCursor {
        query,
        page: page + 1,
        limit,
        after: last.seq,
        read_at: response.last_seq,
    });
    Ok(OfflinePage {
        ids: response.items.iter().map(|n| n.id.clone()).collect(),
        next,
        envelope: Envelope::ok(Page {
            items: response.items.iter().map(NotificationJson::from).collect(),
            pagination: Pagination::new(page, limit, total).into(),
        }),
        epoch: response.epoch,
    })
}
