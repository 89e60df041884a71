//! User tokens: only SHA-256 hashes are kept, indexed both ways, with the expiry of those that
//! have one.
//!
//! Whether a token is valid depends on the time: [`Tokens::status`] and [`Tokens::list`] take
//! the caller's clock. The projection itself never reads one (it must be deterministic): an
//! expired token stays until its user's next token is issued, which drops it as of that
//! event's timestamp ([`Tokens::set`]), or their tokens are revoked.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::Uid;

/// The hash under which a token is stored.
pub fn token_hash(token: &str) -> Bytes {
    Bytes::copy_from_slice(&Sha256::digest(token.as_bytes()))
}

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
    /// timestamp `ts`. The user's tokens expired by `ts` are dropped. A hash another user held
    /// (only a crafted log repeats one: tokens are random) is theirs no longer.
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
        if let Some(at) = expires_at_ms {
            self.expires.insert(hash.clone(), at);
        } else {
            self.expires.remove(hash);
        }
        self.prune(uid, ts);
    }

    /// Revokes one token, if it is `uid`'s (a revocation naming another user's token changes
    /// nothing).
    pub(crate) fn revoke(&mut self, uid: &str, hash: &[u8]) {
        let owned = self.by_hash.get(hash).is_some_and(|owner| owner == uid);
        if !owned {
            return;
        }
        self.by_hash.remove(hash);
        self.expires.remove(hash);
        self.forget_for(uid, hash);
    }

    /// Revokes every token of `uid`.
    pub(crate) fn revoke_all(&mut self, uid: &str) {
        if let Some(hashes) = self.by_user.remove(uid) {
            for h in hashes {
                self.by_hash.remove(&h);
                self.expires.remove(&h);
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

    /// Drops `uid`'s tokens that expired by `ts` (an event's timestamp).
    fn prune(&mut self, uid: &str, ts: u64) {
        let Some(hashes) = self.by_user.get(uid) else {
            return;
        };
        let expired: Vec<Bytes> = hashes
            .iter()
            .filter(|h| self.expires.get(*h).is_some_and(|at| *at <= ts))
            .cloned()
            .collect();
        for h in &expired {
            self.by_hash.remove(h);
            self.expires.remove(h);
            self.forget_for(uid, h);
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

    /// A user's next token drops their tokens expired by its event's time, and only theirs:
    /// the projection keeps no expired token longer than it must, without reading a clock.
    #[test]
    fn a_new_token_drops_the_users_expired_ones() {
        let mut t = Tokens::default();
        t.set("alice", &hash(1), Some(100), 1);
        t.set("alice", &hash(2), Some(500), 1);
        t.set("bob", &hash(3), Some(100), 1);
        t.set("alice", &hash(4), None, 100);
        consistent(&t);
        assert_eq!(t.status(&hash(1), 100), TokenStatus::Unknown, "dropped");
        assert_eq!(owner(&t, 2, 100), Some("alice"));
        assert_eq!(t.status(&hash(3), 100), TokenStatus::Expired, "bob's");
        assert!(!t.expires.contains_key(&hash(1)));
        // A token issued already expired (by its event's own time) is dropped at once.
        t.set("alice", &hash(5), Some(150), 200);
        consistent(&t);
        assert_eq!(t.status(&hash(5), 0), TokenStatus::Unknown);
        assert_eq!(owner(&t, 2, 0), Some("alice"));
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
        assert!(read.expires.is_empty());

        let mut new = Tokens::default();
        new.set("alice", &hash(1), Some(5), 0);
        let mut buf = Vec::new();
        ciborium::into_writer(&new, &mut buf).unwrap();
        let read: OldTokens = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(read, old);
    }
}
