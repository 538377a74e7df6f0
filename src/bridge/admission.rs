//! Which sockets of each user this bridge has admitted (the per-user
//! limit), and each user's feed's mailbox: the first admitted socket
//! starts the user's feed (`feed`), the last one to leave ends it.
//!
//! The connect middleware admits under one lock, so handshakes racing each
//! other cannot pass the limit together; the [`Admission`] lives in the
//! socket and gives its place back when the socket leaves or is dropped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use notify_store::User;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::Bridge;
use super::auth::Identity;
use super::feed::{Feed, Message};

/// Every feed of this bridge, by user: which sockets are admitted (the
/// per-user limit) and each feed's mailbox.
#[derive(Default)]
pub struct Feeds {
    users: Mutex<HashMap<User, Entry>>,
}

struct Entry {
    admitted: HashSet<Sid>,
    mailbox: mpsc::UnboundedSender<Message>,
    /// The user's client requests waiting on the core, across sockets.
    in_flight: Arc<Semaphore>,
}

/// A socket counted against its user's limit. It gives its place back when
/// the socket leaves, or when it is dropped with a socket that never made
/// it past the handshake.
pub struct Admission {
    feeds: Arc<Feeds>,
    /// Who, and until when.
    pub identity: Identity,
    /// The socket.
    pub sid: Sid,
    /// Shared by the user's sockets: a permit per client request in flight.
    pub in_flight: Arc<Semaphore>,
    /// Cancelled when the socket leaves: its requests in flight are dropped
    /// (nobody is left to read their answers).
    pub gone: CancellationToken,
}

impl Admission {
    /// The socket is gone: its feed forgets it, and its requests in flight
    /// are cancelled (once, however often called).
    pub fn leave(&self) {
        self.gone.cancel();
        self.feeds.leave(self.identity.user, self.sid);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Feeds {
    /// Counts socket `sid` against its user's `limit`, starting the user's
    /// feed if it is the first; `None` when the user has `limit` already.
    pub fn admit(
        self: &Arc<Self>,
        bridge: &Arc<Bridge>,
        identity: Identity,
        sid: Sid,
        limit: usize,
    ) -> Option<Admission> {
        let user = identity.user;
        let mut users = lock(&self.users);
        let entry = users.entry(user).or_insert_with(|| Entry {
            admitted: HashSet::new(),
            mailbox: Feed::start(bridge.clone(), user),
            in_flight: Arc::new(Semaphore::new(bridge.limits.requests_in_flight_per_user)),
        });
        if entry.admitted.len() >= limit {
            return None;
        }
        entry.admitted.insert(sid);
        Some(Admission {
            feeds: self.clone(),
            identity,
            sid,
            in_flight: entry.in_flight.clone(),
            gone: CancellationToken::new(),
        })
    }

    /// Hands the connected socket to its feed; false if it is no longer
    /// admitted (it left already).
    pub fn join(&self, admission: &Admission, socket: SocketRef) -> bool {
        let mailbox = {
            let users = lock(&self.users);
            match users.get(&admission.identity.user) {
                Some(entry) if entry.admitted.contains(&admission.sid) => entry.mailbox.clone(),
                _ => return false,
            }
        };
        // Sent outside the lock: a failed send drops the socket handle, and
        // dropping a socket may drop an admission, which takes the lock.
        mailbox
            .send(Message::Join(socket, admission.identity))
            .is_ok()
    }

    /// The socket is gone. The user's last admitted socket ends the feed,
    /// once the feed has read this.
    fn leave(&self, user: User, sid: Sid) {
        let mailbox = {
            let mut users = lock(&self.users);
            let Some(entry) = users.get_mut(&user) else {
                return;
            };
            if !entry.admitted.remove(&sid) {
                return;
            }
            let mailbox = entry.mailbox.clone();
            if entry.admitted.is_empty() {
                users.remove(&user);
            }
            mailbox
        };
        let _ = mailbox.send(Message::Leave(sid));
    }
}

/// The admissions' lock; a panic while holding it leaves the map whole
/// (each change is one insert or remove), so a poisoned lock is usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
