//! User tokens: only SHA-256 hashes are kept, indexed both ways, with the expiry of those that
//! have one.
//!
//! Whether a token is valid depends on the time: [`Tokens::status`] and [`Tokens::list`] take
//! the caller's clock. The projection itself never reads one (it must be deterministic): an
//! expired token is kept (answered `token_expired`, which tells a client to get a new one)
//! until a token issued [`EXPIRED_KEPT_MS`] or more after its expiry — any user's — drops it,
//! as of that event's timestamp ([`Tokens::set`]); or until it is revoked. Only issuing adds
//! tokens, so the expired ones kept are bounded by those that expired within that time of the
//! last issue.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::Uid;

/// The hash under which a token is stored.
pub fn token_hash(token: &str) -> Bytes {
    Bytes::copy_from_slice(&Sha256::digest(token.as_bytes()))
}

/// How long after its expiry a token is kept (answered `token_expired`) before an issue drops
/// it (then `invalid_token`): a week, longer than most devices stay offline.
pub const EXPIRED_KEPT_MS: u64 = 7 * 24 * 3600 * 1000;

/// Token hashes by user and by hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// Hash → owner.
    pub by_hash: BTreeMap<Bytes, Uid>,
    /// Owner → hashes.
    pub by_user: BTreeMap<Uid, BTreeSet<Bytes>>,
    /// Hash → when the token expires (ms since the Unix epoch), for the tokens that do. A state
    /// written before expiries existed has none (right: none of its tokens had one); a build
    /// from before them loading a newer state skips the field (`snapshot.rs`).
    #[serde(default)]
    pub expires: BTreeMap<Bytes, u64>,
    /// The same expiries ordered by time, (expiry, hash): what [`Tokens::set`] drops from,
    /// oldest first, without a scan.
    #[serde(default)]
    pub by_expiry: BTreeSet<(u64, Bytes)>,
}

/// What a token is worth at a given time ([`Tokens::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus<'a> {
    /// It authenticates this user.
    Valid(&'a Uid),
    /// It was issued and is past its expiry (not revoked, and not yet dropped).
    Expired,
    /// Never issued, revoked, or expired and since dropped.
    Unknown,
}

impl Tokens {
    /// A token issued to `uid`, expiring at `expires_at_ms` (`None`: never), by an event of
    /// timestamp `ts`. Every token that expired [`EXPIRED_KEPT_MS`] or more before `ts` is
    /// dropped. A hash another user held (only a crafted log repeats one: tokens are random)
    /// is theirs no longer.
    pub(crate) fn set(&mut self, uid: &str, hash: &Bytes, expires_at_ms: Option<u64>, ts: u64) {
        if let Some(previous) = self.by_hash.insert(hash.clone(), uid.to_owned())
            && previous != uid
        {
            self.forget_for(&previous, hash);
        }
        self.by_user
            .entry(uid.to_owned())
            .or_default()
            .insert(hash.clone());
        self.forget_expiry(hash);
        if let Some(at) = expires_at_ms {
            self.expires.insert(hash.clone(), at);
            self.by_expiry.insert((at, hash.clone()));
        }
        self.prune(ts);
    }

    /// Takes `hash`'s expiry out of both maps.
    fn forget_expiry(&mut self, hash: &[u8]) {
        if let Some(at) = self.expires.remove(hash) {
            self.by_expiry.remove(&(at, Bytes::copy_from_slice(hash)));
        }
    }

    /// Revokes one token, if it is `uid`'s (a revocation naming another user's token changes
    /// nothing).
    pub(crate) fn revoke(&mut self, uid: &str, hash: &[u8]) {
        let owned = self.by_hash.get(hash).is_some_and(|owner| owner == uid);
        if !owned {
            return;
        }
        self.by_hash.remove(hash);
        self.forget_expiry(hash);
        self.forget_for(uid, hash);
    }

    /// Revokes every token of `uid`.
    pub(crate) fn revoke_all(&mut self, uid: &str) {
        if let Some(hashes) = self.by_user.remove(uid) {
            for h in hashes {
                self.by_hash.remove(&h);
                self.forget_expiry(&h);
            }
        }
    }

    /// Takes `hash` out of `uid`'s set (and the user out of `by_user` with their last one).
    fn forget_for(&mut self, uid: &str, hash: &[u8]) {
        if let Some(hashes) = self.by_user.get_mut(uid) {
            hashes.remove(hash);
            if hashes.is_empty() {
                self.by_user.remove(uid);
            }
        }
    }

    /// Drops the tokens that expired [`EXPIRED_KEPT_MS`] or more before `ts` (an event's
    /// timestamp), oldest first.
    fn prune(&mut self, ts: u64) {
        while let Some((at, _)) = self.by_expiry.first()
            && at.saturating_add(EXPIRED_KEPT_MS) <= ts
        {
            let Some((_, h)) = self.by_expiry.pop_first() else {
                break;
            };
            self.expires.remove(&h);
            if let Some(owner) = self.by_hash.remove(&h) {
                self.forget_for(&owner, &h);
            }
        }
    }

    /// What the token stored under `hash` ([`token_hash`]) is worth at `now_ms`: expired from
    /// its expiry on (`expires <= now_ms`).
    pub fn status(&self, hash: &[u8], now_ms: u64) -> TokenStatus<'_> {
        match self.by_hash.get(hash) {
            None => TokenStatus::Unknown,
            Some(_) if self.expires.get(hash).is_some_and(|at| *at <= now_ms) => {
                TokenStatus::Expired
            }
            Some(uid) => TokenStatus::Valid(uid),
        }
    }

    /// When the token stored under `hash` expires (`None`: never, or no such token).
    pub fn expiry(&self, hash: &[u8]) -> Option<u64> {
        self.expires.get(hash).copied()
    }

    /// `uid`'s tokens valid at `now_ms`, by hash, each with its expiry (`None`: never).
    pub fn list(&self, uid: &str, now_ms: u64) -> Vec<(Bytes, Option<u64>)> {
        self.by_user
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|h| {
                let expiry = self.expiry(h);
                expiry
                    .is_none_or(|at| at > now_ms)
                    .then(|| (h.clone(), expiry))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hash(n: u8) -> Bytes {
        Bytes::from(vec![n; 32])
    }

    /// Whom token `n` authenticates at `now` (`None`: expired or unknown).
    fn owner(t: &Tokens, n: u8, now: u64) -> Option<&str> {
        match t.status(&hash(n), now) {
            TokenStatus::Valid(uid) => Some(uid),
            TokenStatus::Expired | TokenStatus::Unknown => None,
        }
    }

    /// The two indexes and the expiries agree: every hash is in its owner's set and nowhere
    /// else, no user has an empty set, and only known hashes have an expiry.
    fn consistent(t: &Tokens) {
        for (h, uid) in &t.by_hash {
            assert!(t.by_user[uid].contains(h), "{uid}: {h:?}");
        }
        for (uid, hashes) in &t.by_user {
            assert!(!hashes.is_empty(), "{uid} with no token");
            for h in hashes {
                assert_eq!(t.by_hash.get(h), Some(uid));
            }
        }
        assert!(t.expires.keys().all(|h| t.by_hash.contains_key(h)));
        let indexed: BTreeSet<(u64, Bytes)> =
            t.expires.iter().map(|(h, at)| (*at, h.clone())).collect();
        assert_eq!(indexed, t.by_expiry);
    }

    #[test]
    fn a_token_is_valid_until_its_expiry_and_one_without_never_expires() {
        let mut t = Tokens::default();
        t.set("alice", &hash(1), Some(1_000), 10);
        t.set("alice", &hash(2), None, 20);
        consistent(&t);
        assert_eq!(owner(&t, 1, 999), Some("alice"));
        assert_eq!(t.status(&hash(1), 1_000), TokenStatus::Expired);
        assert_eq!(owner(&t, 2, u64::MAX), Some("alice"));
        assert_eq!(t.status(&hash(3), 0), TokenStatus::Unknown);
        assert_eq!(t.expiry(&hash(1)), Some(1_000));
        assert_eq!(t.expiry(&hash(2)), None);
        assert_eq!(
            t.list("alice", 999),
            vec![(hash(1), Some(1_000)), (hash(2), None)]
        );
        assert_eq!(t.list("alice", 1_000), vec![(hash(2), None)]);
        assert!(t.list("bob", 0).is_empty());
    }

    /// A token issued (any user's) drops the tokens that expired a week or more before its
    /// event's time, and only those: an expired token is answered `token_expired` for a week,
    /// and none is kept for ever, without the projection reading a clock.
    #[test]
    fn an_issue_drops_the_tokens_expired_a_week_before_it() {
        const WEEK: u64 = EXPIRED_KEPT_MS;
        let mut t = Tokens::default();
        t.set("alice", &hash(1), Some(100), 1);
        t.set("alice", &hash(2), Some(500), 1);
        t.set("bob", &hash(3), Some(100), 1);
        // Expired, not yet a week ago: kept, answered expired.
        t.set("carol", &hash(4), None, 99 + WEEK);
        consistent(&t);
        assert_eq!(t.status(&hash(1), 200), TokenStatus::Expired);
        assert_eq!(t.status(&hash(3), 200), TokenStatus::Expired);
        // A week after 1 and 3 expired (another user's issue): both dropped, 2 kept.
        t.set("carol", &hash(5), None, 100 + WEEK);
        consistent(&t);
        assert_eq!(t.status(&hash(1), 200), TokenStatus::Unknown, "dropped");
        assert_eq!(t.status(&hash(3), 200), TokenStatus::Unknown, "bob's too");
        assert!(!t.by_user.contains_key("bob"), "no empty set left");
        assert_eq!(t.status(&hash(2), 500), TokenStatus::Expired);
        assert_eq!(owner(&t, 2, 499), Some("alice"));
        // A token issued again with another expiry keeps only the later one.
        t.set("alice", &hash(2), Some(10 * WEEK), 100 + WEEK);
        consistent(&t);
        t.set("carol", &hash(6), None, 9 * WEEK);
        consistent(&t);
        assert_eq!(owner(&t, 2, 9 * WEEK), Some("alice"));
    }

    #[test]
    fn revoking_one_token_leaves_the_others() {
        let mut t = Tokens::default();
        t.set("alice", &hash(1), Some(1_000), 0);
        t.set("alice", &hash(2), None, 0);
        t.set("bob", &hash(3), None, 0);
        // Not bob's token: nothing changes.
        t.revoke("bob", &hash(1));
        assert_eq!(owner(&t, 1, 0), Some("alice"));
        t.revoke("alice", &hash(1));
        consistent(&t);
        assert_eq!(t.status(&hash(1), 0), TokenStatus::Unknown);
        assert!(!t.expires.contains_key(&hash(1)));
        assert_eq!(owner(&t, 2, 0), Some("alice"));
        assert_eq!(owner(&t, 3, 0), Some("bob"));
        // Again, and an unknown one: nothing.
        t.revoke("alice", &hash(1));
        t.revoke("alice", &hash(9));
        t.revoke("alice", &hash(2));
        consistent(&t);
        assert!(!t.by_user.contains_key("alice"), "no empty set left");
    }

    #[test]
    fn revoking_all_clears_the_expiries_too() {
        let mut t = Tokens::default();
        t.set("alice", &hash(1), Some(1_000), 0);
        t.set("alice", &hash(2), None, 0);
        t.set("bob", &hash(3), Some(1_000), 0);
        t.revoke_all("alice");
        consistent(&t);
        assert_eq!(t.status(&hash(1), 0), TokenStatus::Unknown);
        assert_eq!(t.status(&hash(2), 0), TokenStatus::Unknown);
        assert_eq!(t.expires.keys().collect::<Vec<_>>(), vec![&hash(3)]);
    }

    /// A hash issued to another user moves to them: it no longer sits in the first user's set,
    /// where revoking the first user's tokens revoked the second's (before, it stayed there).
    #[test]
    fn a_hash_set_for_another_user_leaves_the_first_users_set() {
        let mut t = Tokens::default();
        t.set("alice", &hash(1), Some(1_000), 0);
        t.set("bob", &hash(1), None, 0);
        consistent(&t);
        assert!(!t.by_user.contains_key("alice"));
        assert_eq!(t.expiry(&hash(1)), None, "the later event's expiry");
        t.revoke_all("alice");
        assert_eq!(owner(&t, 1, 0), Some("bob"));
    }

    /// A state from before expiries (no `expires` field) reads with none; a build from before
    /// them reads a newer state, skipping the field.
    #[test]
    fn states_with_and_without_expiries_read_both_ways() {
        #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
        struct OldTokens {
            by_hash: BTreeMap<Bytes, Uid>,
            by_user: BTreeMap<Uid, BTreeSet<Bytes>>,
        }
        let mut old = OldTokens::default();
        old.by_hash.insert(hash(1), "alice".into());
        old.by_user.insert("alice".into(), [hash(1)].into());
        let mut buf = Vec::new();
        ciborium::into_writer(&old, &mut buf).unwrap();
        let read: Tokens = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(read.by_hash, old.by_hash);
        assert!(read.expires.is_empty() && read.by_expiry.is_empty());

        let mut new = Tokens::default();
        new.set("alice", &hash(1), Some(5), 0);
        let mut buf = Vec::new();
        ciborium::into_writer(&new, &mut buf).unwrap();
        let read: OldTokens = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(read, old);
    }
}
