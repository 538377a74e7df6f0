//! The stages of a create both stores share, apart from the SQL:
//!
//! 1. **Resolve keys**: a notification whose idempotency key the recipient
//!    already has (stored, or earlier in the same commit) is answered with
//!    that one instead of a new row ([`Plan::resolve`]).
//! 2. **Reserve seqs**: the store reads (and locks, or upserts) each
//!    recipient's counters: its own SQL.
//! 3. **Find what collapses**: the store reads the recipients' unread
//!    notifications under the fresh ones' collapse keys
//!    ([`Plan::collapse_keys`]): its own SQL, under the recipients' locks.
//! 4. **Number**: each fresh notification takes its recipient's next seq
//!    and version, and the unread counts after it ([`Plan::number`]): the
//!    insert trigger counts it as unread in its category, as this does, and
//!    one it replaces leaves its count in the same version.
//! 5. **Insert**: the store writes the rows, then takes the replaced ones
//!    off every shelf ([`Numbered::replaced`]): its own SQL.
//! 6. **Answer**: each input gets its notification, fresh or not
//!    ([`Plan::answers`]).

use std::collections::HashMap;

use crate::model::{ByCategory, Created, NewNotification, Notification, Status, User, UserState};
use crate::object_id::new_object_id;

/// Where one input's answer comes from.
enum Slot {
    /// Stored before this commit.
    Existing(Box<Notification>),
    /// The n-th fresh row.
    Fresh(usize),
    /// The same key as the n-th fresh row, earlier in this commit.
    SameAs(usize),
}

/// A commit's creates once their keys are resolved: the batches (each
/// answered on its own) and the notifications that need a row.
pub(crate) struct Plan<'a> {
    slots: Vec<Vec<Slot>>,
    fresh: Vec<&'a NewNotification>,
}

/// An unread notification a fresh one may replace: its id and category.
pub(crate) type Holder = (String, String);

/// The unread notifications under each (recipient, collapse key), oldest
/// first.
pub(crate) type Holders = HashMap<(User, String), Vec<Holder>>;

/// A fresh notification, numbered.
pub(crate) struct Numbered {
    /// The row to insert.
    pub notification: Notification,
    /// The unread ones it replaces (stored, or fresh earlier in the same
    /// commit): each leaves every shelf, with `replaced_by` naming this one,
    /// at this one's version.
    pub replaced: Vec<String>,
    /// Its recipient's unread count right after it.
    pub unread: i64,
    /// The same by category.
    pub by_category: ByCategory,
}

/// Each replaced row of `rows`: (its id, the id of the one replacing it,
/// that one's version), the update stage 5 makes.
pub(crate) fn replacements(rows: &[Numbered]) -> Vec<(&str, &str, i64)> {
    rows.iter()
        .flat_map(|row| {
            let n = &row.notification;
            row.replaced
                .iter()
                .map(move |old| (old.as_str(), n.id.as_str(), n.version))
        })
        .collect()
}

impl<'a> Plan<'a> {
    /// Stage 1. `stored` holds the notifications already stored under the
    /// (recipient, key) pairs of `batches`.
    pub(crate) fn resolve(
        batches: &[&'a [NewNotification]],
        stored: &HashMap<(User, String), Notification>,
    ) -> Plan<'a> {
        let mut slots = Vec::with_capacity(batches.len());
        let mut fresh = Vec::new();
        let mut seen: HashMap<(User, &str), usize> = HashMap::new();
        for batch in batches {
            let mut batch_slots = Vec::with_capacity(batch.len());
            for new in batch.iter() {
                let slot = match new.idempotency_key.as_deref() {
                    Some(key) => {
                        if let Some(&index) = seen.get(&(new.recipient, key)) {
                            Slot::SameAs(index)
                        } else if let Some(existing) = stored.get(&(new.recipient, key.to_owned()))
                        {
                            Slot::Existing(Box::new(existing.clone()))
                        } else {
                            seen.insert((new.recipient, key), fresh.len());
                            fresh.push(new);
                            Slot::Fresh(fresh.len() - 1)
                        }
                    }
                    None => {
                        fresh.push(new);
                        Slot::Fresh(fresh.len() - 1)
                    }
                };
                batch_slots.push(slot);
            }
            slots.push(batch_slots);
        }
        Plan { slots, fresh }
    }

    /// The notifications that need a row, in the order [`Plan::number`]
    /// numbers them.
    pub(crate) fn fresh(&self) -> &[&'a NewNotification] {
        &self.fresh
    }

    /// How many fresh notifications each recipient gets, each recipient
    /// once, in order of first appearance.
    pub(crate) fn per_recipient(&self) -> Vec<(User, i64)> {
        let mut counts: Vec<(User, i64)> = Vec::new();
        let mut position: HashMap<User, usize> = HashMap::new();
        for new in &self.fresh {
            let index = *position.entry(new.recipient).or_insert_with(|| {
                counts.push((new.recipient, 0));
                counts.len() - 1
            });
            counts[index].1 += 1;
        }
        counts
    }

    /// The (recipient, collapse key) pairs of the fresh notifications,
    /// each once: stage 3 looks up what they replace.
    pub(crate) fn collapse_keys(&self) -> Vec<(User, &'a str)> {
        let mut keys: Vec<(User, &str)> = self
            .fresh
            .iter()
            .filter_map(|new| Some((new.recipient, new.collapse_key.as_deref()?)))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Stage 4. `counters` and `by_category` hold each recipient's counters
    /// before this commit and come back as they are after it; `holders`
    /// holds the stored unread notifications under the collapse keys. Each
    /// notification is one change of its recipient: it takes a version as
    /// it takes a seq, and the ones it replaces leave the counts in it.
    pub(crate) fn number(
        &self,
        counters: &mut HashMap<User, UserState>,
        by_category: &mut HashMap<User, ByCategory>,
        mut holders: Holders,
        now: i64,
    ) -> Vec<Numbered> {
        self.fresh
            .iter()
            .map(|new| {
                let id = new.id.clone().unwrap_or_else(new_object_id);
                let state = counters.entry(new.recipient).or_default();
                state.last_seq += 1;
                state.unread += 1;
                state.version += 1;
                let categories = by_category.entry(new.recipient).or_default();
                *categories.entry(new.category.clone()).or_default() += 1;
                let mut replaced = Vec::new();
                if let Some(key) = &new.collapse_key {
                    let slot = holders.entry((new.recipient, key.clone())).or_default();
                    for (old, category) in slot.drain(..) {
                        state.unread -= 1;
                        if let Some(count) = categories.get_mut(&category) {
                            *count -= 1;
                            if *count <= 0 {
                                categories.remove(&category);
                            }
                        }
                        replaced.push(old);
                    }
                    slot.push((id.clone(), new.category.clone()));
                }
                Numbered {
                    replaced: replaced.clone(),
                    notification: Notification {
                        send_at: None,
                        id,
                        recipient: new.recipient,
                        seq: state.last_seq,
                        kind: new.kind.clone(),
                        channel: new.channel,
                        content: new.content.clone(),
                        status: Status::Sent,
                        priority: new.priority,
                        created_at: now,
                        updated_at: now,
                        version: state.version,
                        category: new.category.clone(),
                        archived_at: None,
                        expires_at: new.expires_at,
                        collapse_key: new.collapse_key.clone(),
                        replaces: replaced.last().cloned(),
                        replaced_by: None,
                        actions: new.actions.clone(),
                        action_taken: None,
                    },
                    unread: state.unread,
                    by_category: categories.clone(),
                }
            })
            .collect()
    }

    /// Stage 6: each batch's answers, in input order.
    pub(crate) fn answers(self, rows: &[Numbered]) -> Vec<Vec<Created>> {
        self.slots
            .into_iter()
            .map(|batch| {
                batch
                    .into_iter()
                    .map(|slot| match slot {
                        Slot::Existing(notification) => Created {
                            notification: *notification,
                            fresh: false,
                        },
                        Slot::Fresh(index) => Created {
                            notification: rows[index].notification.clone(),
                            fresh: true,
                        },
                        Slot::SameAs(index) => Created {
                            notification: rows[index].notification.clone(),
                            fresh: false,
                        },
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Channel;

    fn new(user: User, key: Option<&str>) -> NewNotification {
        NewNotification {
            id: None,
            recipient: user,
            kind: "order".to_owned(),
            channel: Channel::InApp,
            content: "{}".to_owned(),
            priority: 0,
            idempotency_key: key.map(str::to_owned),
            category: "order".to_owned(),
            expires_at: None,
            collapse_key: None,
            actions: Vec::new(),
        }
    }

    #[test]
    fn keys_resolve_to_the_stored_or_the_earlier_one_and_seqs_follow_the_counters() {
        let (a, b) = (User::vendor(1), User::customer(1));
        let mut stored = HashMap::new();
        let mut old = Plan::resolve(&[&[new(a, Some("k0"))]], &stored)
            .number(&mut HashMap::new(), &mut HashMap::new(), Holders::new(), 0)
            .remove(0)
            .notification;
        old.seq = 7;
        stored.insert((a, "k0".to_owned()), old.clone());

        let first = [new(a, Some("k0")), new(a, Some("k1")), new(b, None)];
        let second = [new(a, Some("k1")), new(b, Some("k1")), new(a, None)];
        let plan = Plan::resolve(&[&first, &second], &stored);
        assert_eq!(plan.per_recipient(), vec![(a, 2), (b, 2)]);
        let mut counters = HashMap::from([(
            a,
            UserState {
                last_seq: 7,
                unread: 3,
                version: 10,
            },
        )]);
        let mut by_category = HashMap::from([(a, ByCategory::from([("order".to_owned(), 3)]))]);
        let rows = plan.number(&mut counters, &mut by_category, Holders::new(), 5);
        let seqs: Vec<(User, i64, i64, i64)> = rows
            .iter()
            .map(|r| {
                let n = &r.notification;
                (n.recipient, n.seq, n.version, r.unread)
            })
            .collect();
        assert_eq!(
            seqs,
            vec![(a, 8, 11, 4), (b, 1, 1, 1), (b, 2, 2, 2), (a, 9, 12, 5)]
        );
        assert_eq!(counters[&a].last_seq, 9, "the counters come back advanced");
        assert_eq!(rows[3].by_category["order"], 5, "by category as in all");
        assert_eq!(by_category[&b]["order"], 2);
        let answers = plan.answers(&rows);
        let fresh: Vec<Vec<(i64, bool)>> = answers
            .iter()
            .map(|batch| {
                batch
                    .iter()
                    .map(|c| (c.notification.seq, c.fresh))
                    .collect()
            })
            .collect();
        assert_eq!(
            fresh,
            vec![
                vec![(7, false), (8, true), (1, true)],
                vec![(8, false), (2, true), (9, true)],
            ],
            "a stored key answers the stored one; a repeat in the commit the first"
        );
    }

    #[test]
    fn a_collapse_key_replaces_the_stored_unread_one_and_then_its_own_predecessor() {
        let a = User::vendor(1);
        let keyed = |key: &str, category: &str| NewNotification {
            collapse_key: Some(key.to_owned()),
            category: category.to_owned(),
            ..new(a, None)
        };
        let batch = [
            keyed("order-7", "order"),
            keyed("order-9", "order"),
            keyed("order-7", "shipping"),
        ];
        let plan = Plan::resolve(&[&batch], &HashMap::new());
        assert_eq!(plan.collapse_keys(), vec![(a, "order-7"), (a, "order-9")]);
        let mut counters = HashMap::from([(
            a,
            UserState {
                last_seq: 3,
                unread: 2,
                version: 3,
            },
        )]);
        let mut by_category = HashMap::from([(a, ByCategory::from([("order".to_owned(), 2)]))]);
        let holders = Holders::from([(
            (a, "order-7".to_owned()),
            vec![("stored".to_owned(), "order".to_owned())],
        )]);
        let rows = plan.number(&mut counters, &mut by_category, holders, 5);
        let replaced: Vec<(&[String], Option<&str>, i64)> = rows
            .iter()
            .map(|r| {
                let replaces = r.notification.replaces.as_deref();
                (r.replaced.as_slice(), replaces, r.unread)
            })
            .collect();
        let first = rows[0].notification.id.clone();
        assert_eq!(
            replaced,
            vec![
                (&["stored".to_owned()][..], Some("stored"), 2),
                (&[][..], None, 3),
                (&[first.clone()][..], Some(first.as_str()), 3),
            ],
            "each replaces the unread one before it, and the count does not grow"
        );
        assert_eq!(
            rows[2].by_category,
            ByCategory::from([("order".to_owned(), 2), ("shipping".to_owned(), 1)]),
            "the replaced one leaves its own category's count"
        );
        assert_eq!(counters[&a].unread, 3);
    }
}
