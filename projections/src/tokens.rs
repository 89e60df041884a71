//! User tokens: only SHA-256 hashes are kept, indexed both ways.

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
}

impl Tokens {
    pub(crate) fn set(&mut self, uid: &str, hash: &Bytes) {
        self.by_hash.insert(hash.clone(), uid.to_owned());
        self.by_user
            .entry(uid.to_owned())
            .or_default()
            .insert(hash.clone());
    }

    pub(crate) fn revoke_all(&mut self, uid: &str) {
        if let Some(hashes) = self.by_user.remove(uid) {
            for h in hashes {
                self.by_hash.remove(&h);
            }
        }
    }

    /// The user a token belongs to, if it is valid.
    pub fn user_of(&self, token: &str) -> Option<&Uid> {
        self.user_of_hash(&token_hash(token))
    }

    /// The user a token belongs to, by the hash it is stored under ([`token_hash`]), if it is
    /// valid: for a caller that holds the hash and not the token (a send checked again under
    /// the server's sequencer lock).
    pub fn user_of_hash(&self, hash: &[u8]) -> Option<&Uid> {
        self.by_hash.get(hash)
    }
}
