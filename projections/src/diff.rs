//! Readable differences between two states (what `tidings verify` prints): which user, which
//! channel, which field, and both values.

use std::collections::{BTreeMap, BTreeSet};

use hashbrown::HashMap;
use std::fmt::Debug;
use std::hash::Hash;

use crate::state::State;

/// Collects difference lines, up to a limit.
struct Out {
    lines: Vec<String>,
    max: usize,
    more: usize,
}

impl Out {
    fn push(&mut self, line: String) {
        if self.lines.len() < self.max {
            self.lines.push(line);
        } else {
            self.more += 1;
        }
    }
}

fn sets<T: Ord + Debug>(out: &mut Out, what: &str, live: &BTreeSet<T>, rebuilt: &BTreeSet<T>) {
    for x in rebuilt.difference(live) {
        out.push(format!(
            "{what}: {x:?} missing from the live state (present when rebuilt from the log)"
        ));
    }
    for x in live.difference(rebuilt) {
        out.push(format!(
            "{what}: {x:?} in the live state but not in the log"
        ));
    }
}

/// A map to compare: its keys in order, and lookups.
trait Keyed<K, V> {
    fn sorted_keys(&self) -> Vec<&K>;
    fn lookup(&self, k: &K) -> Option<&V>;
}

impl<K: Ord, V> Keyed<K, V> for BTreeMap<K, V> {
    fn sorted_keys(&self) -> Vec<&K> {
        self.keys().collect()
    }
    fn lookup(&self, k: &K) -> Option<&V> {
        self.get(k)
    }
}

impl<K: Ord + Hash + Eq, V, S: std::hash::BuildHasher> Keyed<K, V> for HashMap<K, V, S> {
    fn sorted_keys(&self) -> Vec<&K> {
        let mut keys: Vec<&K> = self.keys().collect();
        keys.sort();
        keys
    }
    fn lookup(&self, k: &K) -> Option<&V> {
        self.get(k)
    }
}

fn maps<K: Ord + Debug, V>(
    out: &mut Out,
    what: &str,
    live: &impl Keyed<K, V>,
    rebuilt: &impl Keyed<K, V>,
    mut each: impl FnMut(&mut Out, String, &V, &V),
) {
    for k in rebuilt.sorted_keys() {
        let Some(r) = rebuilt.lookup(k) else { continue };
        match live.lookup(k) {
            None => out.push(format!(
                "{what} {k:?}: missing from the live state (present when rebuilt from the log)"
            )),
            Some(l) => each(out, format!("{what} {k:?}"), l, r),
        }
    }
    for k in live.sorted_keys() {
        if rebuilt.lookup(k).is_none() {
            out.push(format!(
                "{what} {k:?}: in the live state but not in the log"
            ));
        }
    }
}

fn field<T: PartialEq + Debug>(out: &mut Out, what: &str, name: &str, live: &T, rebuilt: &T) {
    if live != rebuilt {
        out.push(format!(
            "{what}: {name} is {live:?} live, {rebuilt:?} rebuilt from the log"
        ));
    }
}

fn values<T: PartialEq + Debug>(out: &mut Out, what: String, live: &T, rebuilt: &T) {
    if live != rebuilt {
        out.push(format!(
            "{what}: {live:?} live, {rebuilt:?} rebuilt from the log"
        ));
    }
}

/// Every difference between `live` and `rebuilt`, at most `max` lines (plus a count of the
/// rest). Empty when they are equal.
pub fn diff(live: &State, rebuilt: &State, max: usize) -> Vec<String> {
    let mut out = Out {
        lines: Vec::new(),
        max,
        more: 0,
    };
    let o = &mut out;
    field(
        o,
        "state",
        "last offset applied",
        &live.applied,
        &rebuilt.applied,
    );
    field(o, "state", "log trimmed", &live.trimmed, &rebuilt.trimmed);

    maps(
        o,
        "user",
        &live.tokens.by_user,
        &rebuilt.tokens.by_user,
        |o, w, l, r| sets(o, &format!("{w} token"), l, r),
    );
    maps(
        o,
        "token",
        &live.tokens.by_hash,
        &rebuilt.tokens.by_hash,
        |o, w, l, r| field(o, &w, "owner", l, r),
    );
    maps(
        o,
        "token",
        &live.tokens.expires,
        &rebuilt.tokens.expires,
        |o, w, l, r| field(o, &w, "expiry", l, r),
    );
    sets(
        o,
        "token expiry index",
        &live.tokens.by_expiry,
        &rebuilt.tokens.by_expiry,
    );

    maps(
        o,
        "channel",
        &live.subs.channels,
        &rebuilt.subs.channels,
        |o, w, l, r| {
            field(o, &w, "flags", &l.flags, &r.flags);
            field(o, &w, "history_from", &l.history_from, &r.history_from);
            sets(o, &format!("{w} member"), &l.members, &r.members);
            sets(o, &format!("{w} allowlist"), &l.allow, &r.allow);
            sets(o, &format!("{w} denylist"), &l.deny, &r.deny);
        },
    );
    maps(
        o,
        "user",
        &live.subs.user_channels,
        &rebuilt.subs.user_channels,
        |o, w, l, r| sets(o, &format!("{w} subscribed channel"), l, r),
    );
    maps(
        o,
        "user",
        &live.subs.user_lists,
        &rebuilt.subs.user_lists,
        |o, w, l, r| {
            sets(o, &format!("{w} allowlist"), &l.allow, &r.allow);
            sets(o, &format!("{w} denylist"), &l.deny, &r.deny);
        },
    );

    maps(
        o,
        "channel head",
        &live.heads.heads,
        &rebuilt.heads.heads,
        |o, w, l, r| {
            field(o, &w, "last_seq", &l.last_seq, &r.last_seq);
            field(
                o,
                &w,
                "last_message_id",
                &l.last_message_id,
                &r.last_message_id,
            );
            field(o, &w, "from", &l.from, &r.from);
            field(o, &w, "preview", &l.preview, &r.preview);
            field(o, &w, "truncated", &l.truncated, &r.truncated);
            field(o, &w, "flags", &l.flags, &r.flags);
            field(o, &w, "recalled", &l.recalled, &r.recalled);
            field(o, &w, "edited", &l.edited, &r.edited);
            field(o, &w, "ts", &l.ts, &r.ts);
            field(o, &w, "version", &l.version, &r.version);
        },
    );
    maps(
        o,
        "channel",
        &live.heads.recalled,
        &rebuilt.heads.recalled,
        |o, w, l, r| sets(o, &format!("{w} recalled seq"), l, r),
    );
    maps(
        o,
        "channel",
        &live.heads.edits,
        &rebuilt.heads.edits,
        |o, w, l, r| {
            maps(o, &format!("{w} edited message"), l, r, |o, w, l, r| {
                field(o, &w, "edit offsets", l, r)
            })
        },
    );
    maps(
        o,
        "channel",
        &live.heads.changes,
        &rebuilt.heads.changes,
        |o, w, l, r| field(o, &w, "changes (offset, seq)", l, r),
    );
    field(
        o,
        "heads",
        "next_message_id",
        &live.heads.next_message_id,
        &rebuilt.heads.next_message_id,
    );

    maps(
        o,
        "user",
        &live.cursors.by_user,
        &rebuilt.cursors.by_user,
        |o, w, l, r| {
            maps(o, &format!("{w} cursor in channel"), l, r, |o, w, l, r| {
                field(o, &w, "delivered_seq", &l.delivered, &r.delivered);
                field(o, &w, "read_seq", &l.read, &r.read);
                field(o, &w, "cleared_seq", &l.cleared, &r.cleared);
                field(o, &w, "hidden_at", &l.hidden_at, &r.hidden_at);
                field(o, &w, "version", &l.version, &r.version);
            })
        },
    );
    maps(
        o,
        "user",
        &live.cursors.removed,
        &rebuilt.cursors.removed,
        values,
    );
    maps(
        o,
        "removals let go of user",
        &live.cursors.removals_let_go,
        &rebuilt.cursors.removals_let_go,
        values,
    );

    if live.idempotency != rebuilt.idempotency {
        o.push(format!(
            "idempotency window differs: {} entries live, {} rebuilt from the log",
            live.idempotency.len(),
            rebuilt.idempotency.len()
        ));
    }
    maps(
        o,
        "message index (in memory) of channel",
        &live.index.mem,
        &rebuilt.index.mem,
        values,
    );
    maps(
        o,
        "message index runs of channel",
        &live.index.runs,
        &rebuilt.index.runs,
        values,
    );
    field(
        o,
        "message index",
        "sidecars",
        &live.index.sidecars,
        &rebuilt.index.sidecars,
    );
    maps(
        o,
        "message index: last seq dropped with its sidecar, of channel",
        &live.index.dropped,
        &rebuilt.index.dropped,
        values,
    );

    if out.more > 0 {
        let more = out.more;
        out.lines.push(format!("… and {more} more differences"));
    }
    out.lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every edit offset of a message is compared, not only the latest: a state that lost an
    /// earlier edit's is named, with the message and both lists.
    #[test]
    fn every_edit_offset_is_compared() {
        let mut live = State::default();
        let mut rebuilt = State::default();
        let edits = |offsets: Vec<u64>| {
            BTreeMap::from([("g".to_owned(), BTreeMap::from([(1u64, offsets)]))])
        };
        live.heads.edits = edits(vec![3, 8]);
        rebuilt.heads.edits = edits(vec![3, 5, 8]);
        let d = diff(&live, &rebuilt, 10);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].contains("edited message 1"), "{}", d[0]);
        assert!(d[0].contains("[3, 8] live, [3, 5, 8] rebuilt"), "{}", d[0]);
        live.heads.edits = edits(vec![3, 5, 8]);
        assert!(diff(&live, &rebuilt, 10).is_empty());
    }

    /// A head's flags, its preview's cut and its edit mark are compared, and a token's owner
    /// (they were not: states differing there alone were said equal).
    #[test]
    fn head_marks_and_token_owners_are_compared() {
        let mut live = State::default();
        live.heads
            .heads
            .insert("g".into(), crate::heads::Head::default());
        live.tokens
            .by_hash
            .insert(bytes::Bytes::from_static(b"h"), "alice".into());
        let mut rebuilt = live.clone();
        assert!(diff(&live, &rebuilt, 10).is_empty());
        let head = rebuilt.heads.heads.get_mut("g").unwrap();
        head.truncated = true;
        head.flags = 1;
        head.edited = true;
        rebuilt
            .tokens
            .by_hash
            .insert(bytes::Bytes::from_static(b"h"), "bob".into());
        let d = diff(&live, &rebuilt, 10);
        assert_eq!(d.len(), 4, "{d:?}");
        for what in ["truncated", "flags", "edited", "owner"] {
            assert!(d.iter().any(|l| l.contains(what)), "{what}: {d:?}");
        }
    }
}
