//! Preferences: which category × channel pairs a user turned off.
//!
//! Everything is on unless a rule turns it off, so the store keeps only
//! the pairs turned off (the `muted` table): turning a pair back on deletes
//! its row, and a user who never changed anything has none. Both stores
//! share these statements and the rule arithmetic; each runs them in its
//! own transaction (SQLite's writer, PostgreSQL under the user's lock).

use std::collections::BTreeSet;

use crate::model::Channel;

/// Most pairs one user may have turned off: a bound on what a socket can
/// make the store hold.
pub const MAX_MUTED_PER_USER: usize = 500;

/// One category × channel switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// 1-64 of `[a-z0-9_-]`.
    pub category: String,
    /// The channel it applies to.
    pub channel: Channel,
    /// False turns notifications of that category on that channel off.
    pub enabled: bool,
}

/// Why a change of preferences was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreferencesRefused {
    /// It would leave more than [`MAX_MUTED_PER_USER`] pairs off.
    TooMany,
}

/// A pair turned off, as stored: the category and the channel's code.
pub(crate) type Muted = (String, i64);

/// `$1, $2` user: the pairs turned off, ordered.
pub(crate) const LIST_MUTED: &str = "SELECT category, channel FROM muted \
     WHERE role = $1 AND user_id = $2 ORDER BY category, channel";
/// `$1, $2` user, `$3` category, `$4` channel.
pub(crate) const MUTE: &str = "INSERT INTO muted (role, user_id, category, channel) \
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
/// `$1, $2` user, `$3` category, `$4` channel.
pub(crate) const UNMUTE: &str =
    "DELETE FROM muted WHERE role = $1 AND user_id = $2 AND category = $3 AND channel = $4";
/// `$1, $2` user.
pub(crate) const ERASE_MUTED: &str = "DELETE FROM muted WHERE role = $1 AND user_id = $2";

/// What applying `rules` (later ones win) to the pairs off now changes:
/// the pairs to turn off, those to turn back on, and the pairs off after.
pub(crate) struct Plan {
    pub mute: Vec<Muted>,
    pub unmute: Vec<Muted>,
    pub after: Vec<Muted>,
}

/// Plans `rules` over `current`, refusing a result past the limit before
/// anything is written.
pub(crate) fn plan(current: Vec<Muted>, rules: &[Rule]) -> Result<Plan, PreferencesRefused> {
    let before: BTreeSet<Muted> = current.into_iter().collect();
    let mut after = before.clone();
    for rule in rules {
        let pair = (rule.category.clone(), rule.channel.code());
        if rule.enabled {
            after.remove(&pair);
        } else {
            after.insert(pair);
        }
    }
    if after.len() > MAX_MUTED_PER_USER && after.len() > before.len() {
        return Err(PreferencesRefused::TooMany);
    }
    Ok(Plan {
        mute: after.difference(&before).cloned().collect(),
        unmute: before.difference(&after).cloned().collect(),
        after: after.into_iter().collect(),
    })
}

/// The stored pairs as rules (all `enabled: false`); a channel code the
/// build does not know is skipped.
pub(crate) fn rules(muted: Vec<Muted>) -> Vec<Rule> {
    muted
        .into_iter()
        .filter_map(|(category, channel)| {
            Some(Rule {
                category,
                channel: Channel::from_code(channel)?,
                enabled: false,
            })
        })
        .collect()
}

/// In `tx` (a transaction of either store, the user's changes serialized
/// by it): reads the user's pairs off, plans `rules` over them and writes
/// the difference. Evaluates to the pairs off after, or the refusal.
macro_rules! apply_in {
    ($tx:expr, $user:expr, $rules:expr) => {{
        let current: Vec<(String, i64)> = sqlx::query_as($crate::preferences::LIST_MUTED)
            .bind($user.role.code())
            .bind($user.id)
            .fetch_all(&mut *$tx)
            .await?;
        match $crate::preferences::plan(current, $rules) {
            Err(refused) => Err(refused),
            Ok(plan) => {
                for (sql, pairs) in [
                    ($crate::preferences::MUTE, &plan.mute),
                    ($crate::preferences::UNMUTE, &plan.unmute),
                ] {
                    for (category, channel) in pairs {
                        sqlx::query(sql)
                            .bind($user.role.code())
                            .bind($user.id)
                            .bind(category)
                            .bind(channel)
                            .execute(&mut *$tx)
                            .await?;
                    }
                }
                Ok($crate::preferences::rules(plan.after))
            }
        }
    }};
}
pub(crate) use apply_in;

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(category: &str, channel: Channel, enabled: bool) -> Rule {
        Rule {
            category: category.into(),
            channel,
            enabled,
        }
    }

    #[test]
    fn later_rules_win_and_only_differences_are_written() {
        let current = vec![("marketing".to_owned(), Channel::Push.code())];
        let plan = plan(
            current,
            &[
                rule("marketing", Channel::Push, false),
                rule("order", Channel::Email, false),
                rule("order", Channel::Email, true),
                rule("review", Channel::Sms, false),
            ],
        )
        .unwrap();
        assert_eq!(plan.mute, vec![("review".to_owned(), Channel::Sms.code())]);
        assert!(plan.unmute.is_empty());
        assert_eq!(plan.after.len(), 2);
    }

    #[test]
    fn more_than_the_limit_is_refused_but_shrinking_is_not() {
        let full: Vec<Muted> = (0..MAX_MUTED_PER_USER)
            .map(|n| (format!("c{n}"), Channel::Push.code()))
            .collect();
        let one_more = [rule("extra", Channel::Push, false)];
        assert_eq!(
            plan(full.clone(), &one_more).err(),
            Some(PreferencesRefused::TooMany)
        );
        let one_less = [rule("c0", Channel::Push, true)];
        assert_eq!(plan(full, &one_less).unwrap().unmute.len(), 1);
    }
}
