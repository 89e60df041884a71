//! The purge of one record: the same event with its payload replaced by zeros of the same
//! length and [`FLAG_PURGED`] set, encoded to exactly the original's length.

use bytes::Bytes;
use tidings_projections::{Envelope, Event, FLAG_PURGED};

use crate::error::{CompactionError, Result};

/// The purged bytes of the record at `offset`, a send or an edit of a message; `None` when it
/// is purged already (nothing to do: a second run changes nothing).
///
/// Refused: a record that does not decode; one whose bytes are not what this build encodes for
/// the event they decode to ([`CompactionError::NotCanonical`]: re-encoding it would change
/// more than the payload); another kind of event ([`CompactionError::NotAMessage`]).
pub fn purge_record(offset: u64, bytes: &[u8]) -> Result<Option<Bytes>> {
    let env = Envelope::decode(offset, bytes)?;
    purge_env(offset, bytes, env)
}

/// [`purge_record`] of a record already decoded to `env`.
pub(crate) fn purge_env(offset: u64, bytes: &[u8], env: Envelope) -> Result<Option<Bytes>> {
    if env.encode() != bytes {
        return Err(CompactionError::NotCanonical { offset });
    }
    let Some((_, _, flags)) = message_of(&env.event) else {
        let kind = env.event.kind();
        return Err(CompactionError::NotAMessage { offset, kind });
    };
    if flags & FLAG_PURGED != 0 {
        return Ok(None);
    }
    let Some(purged) = env.purged() else {
        let kind = env.event.kind();
        return Err(CompactionError::NotAMessage { offset, kind });
    };
    let purged = purged.encode();
    if purged.len() != bytes.len() {
        return Err(CompactionError::LengthChanged {
            offset,
            before: bytes.len(),
            after: purged.len(),
        });
    }
    Ok(Some(purged))
}

/// Whether `event` is a send or an edit of a message, and which: `(channel, seq, flags)`.
pub(crate) fn message_of(event: &Event) -> Option<(&str, u64, u32)> {
    match event {
        Event::MessageSent {
            channel,
            seq,
            flags,
            ..
        } => Some((channel.as_str(), *seq, *flags)),
        Event::MessageEdited {
            channel,
            seq,
            flags,
            ..
        } => Some((channel.as_str(), *seq, *flags)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use tidings_projections::{ChannelFlags, FLAG_JSON_PAYLOAD};

    use super::*;

    fn send(payload: &[u8], flags: u32) -> Envelope {
        Envelope::new(
            1_764_000_000_000,
            Event::MessageSent {
                channel: "g".into(),
                from: "ann".into(),
                client_msg_id: "c1".into(),
                seq: 7,
                message_id: 70,
                payload: Bytes::copy_from_slice(payload),
                flags,
            },
        )
    }

    /// A send's payload becomes zeros of its length and the bit is set; everything else, and
    /// the record's length, stays. Purging it again is nothing to do.
    #[test]
    fn a_send_is_purged_in_place_once() {
        let original = send(br#"{"text":"secret"}"#, FLAG_JSON_PAYLOAD).encode();
        let purged = purge_record(3, &original).unwrap().unwrap();
        assert_eq!(purged.len(), original.len());
        let zeros = vec![0; br#"{"text":"secret"}"#.len()];
        assert_eq!(
            Envelope::decode(3, &purged).unwrap(),
            send(&zeros, FLAG_JSON_PAYLOAD | FLAG_PURGED)
        );
        assert!(!purged.windows(6).any(|w| w == b"secret"));
        assert_eq!(purge_record(3, &purged).unwrap(), None);
    }

    /// An edit is purged the same way.
    #[test]
    fn an_edit_is_purged_in_place() {
        let edit = Envelope::new(
            5,
            Event::MessageEdited {
                channel: "p:ann:bob".into(),
                seq: 2,
                by: "ann".into(),
                payload: Bytes::from(vec![0xff; 600]),
                flags: 0,
            },
        );
        let original = edit.encode();
        let purged = purge_record(9, &original).unwrap().unwrap();
        assert_eq!(purged.len(), original.len());
        match Envelope::decode(9, &purged).unwrap().event {
            Event::MessageEdited { payload, flags, .. } => {
                assert_eq!(payload, Bytes::from(vec![0; 600]));
                assert_eq!(flags, FLAG_PURGED);
            }
            other => panic!("{other:?}"),
        }
    }

    /// A record whose bytes decode but are not this build's encoding of the event is refused
    /// (here the envelope's version written with a needless extra byte), and so is another
    /// kind of event; neither is purged.
    #[test]
    fn other_encodings_and_other_events_are_refused() {
        let mut odd = send(b"secret", 0).encode().to_vec();
        // {"v": 1, ...}: map(3), text(1) "v", uint 1 — written as a one-byte argument instead.
        assert_eq!(&odd[..4], &[0xa3, 0x61, b'v', 0x01]);
        odd.insert(3, 0x18);
        assert!(Envelope::decode(4, &odd).is_ok());
        assert!(matches!(
            purge_record(4, &odd),
            Err(CompactionError::NotCanonical { offset: 4 })
        ));
        let created = Envelope::new(
            1,
            Event::ChannelCreated {
                channel: "g".into(),
                flags: ChannelFlags::default(),
            },
        );
        assert!(matches!(
            purge_record(0, &created.encode()),
            Err(CompactionError::NotAMessage {
                offset: 0,
                kind: "channel_created"
            })
        ));
        assert!(matches!(
            purge_record(2, b"not cbor"),
            Err(CompactionError::Projection(_))
        ));
    }
}
