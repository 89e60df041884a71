//! User and channel identifiers.
//!
//! A user id and a group channel id are 1–64 characters of `[A-Za-z0-9._-]`. A person-to-person
//! channel is stored once under the canonical id `p:{lo}:{hi}` (the two user ids in byte
//! order); `:` cannot appear in a group id, so the two namespaces never collide. Clients refer
//! to a person channel as `@{other_uid}` from their own point of view.

/// A user id.
pub type Uid = String;
/// A channel id: a group id, or a canonical person-channel id.
pub type ChannelId = String;

const PERSON_PREFIX: &str = "p:";

/// The longest user id or group channel id, in bytes (all ASCII).
pub const MAX_ID_LEN: usize = 64;

/// Whether `s` is a valid user id or group channel id.
pub fn is_valid_id(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `s` is a valid id ([`is_valid_id`]) that may name a new user or channel, or be
/// named in a request: not `.` or `..`, which an HTTP client removes from a URL path as dot
/// segments (`/v1/channels/../messages` reaches `/v1/messages`). Ids already in the log stay
/// valid ([`is_valid_id`]) whatever they are: replaying them is unchanged.
pub fn is_usable_id(s: &str) -> bool {
    is_valid_id(s) && s != "." && s != ".."
}

/// The canonical id of the person channel between `a` and `b`.
pub fn person_channel(a: &str, b: &str) -> ChannelId {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{PERSON_PREFIX}{lo}:{hi}")
}

/// The two users of a person channel, if `channel` is one.
pub fn person_pair(channel: &str) -> Option<(&str, &str)> {
    let rest = channel.strip_prefix(PERSON_PREFIX)?;
    let (a, b) = rest.split_once(':')?;
    (is_valid_id(a) && is_valid_id(b)).then_some((a, b))
}

/// Whether `channel` is a person channel.
pub fn is_person_channel(channel: &str) -> bool {
    person_pair(channel).is_some()
}

/// The other user of a person channel, seen from `me`.
pub fn person_peer<'a>(channel: &'a str, me: &str) -> Option<&'a str> {
    let (a, b) = person_pair(channel)?;
    if a == me {
        Some(b)
    } else if b == me {
        Some(a)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_valid_id("alice"));
        assert!(is_valid_id("team-1.ops_x"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a:b"));
        assert!(!is_valid_id("@bob"));
        assert!(!is_valid_id(&"x".repeat(65)));
        // Dot segments: valid in the log, refused in requests.
        assert!(is_valid_id("..") && !is_usable_id("..") && !is_usable_id("."));
        assert!(is_usable_id("...") && is_usable_id(".a") && is_usable_id("a.."));
        assert_eq!(person_channel("bob", "alice"), "p:alice:bob");
        assert_eq!(person_channel("alice", "bob"), "p:alice:bob");
        assert_eq!(person_pair("p:alice:bob"), Some(("alice", "bob")));
        assert_eq!(person_peer("p:alice:bob", "bob"), Some("alice"));
        assert_eq!(person_peer("p:alice:bob", "carol"), None);
        assert!(!is_person_channel("general"));
        // A self-chat is a person channel too.
        assert_eq!(person_peer(&person_channel("al", "al"), "al"), Some("al"));
    }
}
