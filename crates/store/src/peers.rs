//! What one reader has been told about its room peers' presence.
//!
//! Presence changes reach a reader as events that can be dropped (a full
//! queue, a lost database feed) or arrive twice (a resync, a reconnect).
//! The view turns them, and snapshots of who is online now, into the
//! announcements that keep the reader right: for each peer they alternate
//! (online, offline, online …), and after a snapshot the reader's picture
//! matches it.

use std::collections::HashMap;

use crate::model::User;

/// Each peer the reader was told about, and what it was told (true: online).
#[derive(Debug, Default)]
pub struct PeerView {
    told: HashMap<User, bool>,
}

impl PeerView {
    /// Takes `online` as what the reader already knows, announcing nothing:
    /// a new reader is told only what changes from now on.
    pub fn start(&mut self, online: &[User]) {
        self.told = online.iter().map(|&peer| (peer, true)).collect();
    }

    /// A change heard live: whether to announce it. A change the reader was
    /// already told (a repeat) is not.
    pub fn change(&mut self, peer: User, online: bool) -> bool {
        self.told.insert(peer, online) != Some(online)
    }

    /// The changes to announce so that the reader's picture matches
    /// `online`, the peers online now: peers it believes online that are
    /// not, then peers online that it does not believe so.
    pub fn snapshot(&mut self, online: &[User]) -> Vec<(User, bool)> {
        let mut changes: Vec<(User, bool)> = self
            .told
            .iter()
            .filter(|&(peer, &was)| was && !online.contains(peer))
            .map(|(&peer, _)| (peer, false))
            .collect();
        changes.sort_unstable();
        for &peer in online {
            if self.told.get(&peer) != Some(&true) {
                changes.push((peer, true));
            }
        }
        for &(peer, now) in &changes {
            self.told.insert(peer, now);
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_not_announced_and_announcements_alternate() {
        let (a, b) = (User::vendor(1), User::customer(2));
        let mut view = PeerView::default();
        view.start(&[a]);
        assert!(!view.change(a, true), "already known online");
        assert!(view.change(a, false));
        assert!(!view.change(a, false), "a repeat");
        assert!(
            view.change(b, false),
            "a peer never mentioned: told as it comes"
        );
        assert!(view.change(b, true));
    }

    #[test]
    fn a_snapshot_announces_what_was_missed_and_nothing_else() {
        let (a, b, c) = (User::vendor(1), User::vendor(2), User::vendor(3));
        let mut view = PeerView::default();
        view.start(&[a, b]);
        // Missed: a went offline, c came online; b is unchanged.
        assert_eq!(view.snapshot(&[b, c]), vec![(a, false), (c, true)]);
        assert_eq!(view.snapshot(&[b, c]), vec![], "nothing new");
        // A late, stale event about a is a repeat of what the snapshot said.
        assert!(!view.change(a, false));
    }
}
