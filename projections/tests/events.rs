//! The event codec: every kind round-trips; arbitrary bytes give a typed error naming the
//! offset, never a panic; and a committed golden file pins the on-disk encoding.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use proptest::prelude::*;
use tidings_projections::{
    ChannelFlags, CursorUpdate, Envelope, Event, FLAG_PURGED, ListKind, ListOp, ListOwner,
    ProjectionError,
};

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,12}"
}

fn bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn flags() -> impl Strategy<Value = ChannelFlags> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(ban, send_ban, disband)| {
        ChannelFlags {
            ban,
            send_ban,
            disband,
        }
    })
}

fn uids() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(id(), 0..5)
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (id(), bytes(), any::<Option<u64>>()).prop_map(|(uid, token_hash, expires_at_ms)| {
            Event::TokenSet {
                uid,
                token_hash,
                expires_at_ms,
            }
        }),
        id().prop_map(|uid| Event::TokensRevoked { uid }),
        (id(), flags()).prop_map(|(channel, flags)| Event::ChannelCreated { channel, flags }),
        (id(), flags()).prop_map(|(channel, flags)| Event::ChannelUpdated { channel, flags }),
        id().prop_map(|channel| Event::ChannelDeleted { channel }),
        (id(), uids()).prop_map(|(channel, uids)| Event::MembersSubscribed { channel, uids }),
        (id(), uids()).prop_map(|(channel, uids)| Event::MembersUnsubscribed { channel, uids }),
        (
            prop_oneof![
                id().prop_map(ListOwner::Channel),
                id().prop_map(ListOwner::User)
            ],
            prop_oneof![Just(ListKind::Allow), Just(ListKind::Deny)],
            prop_oneof![Just(ListOp::Add), Just(ListOp::Remove), Just(ListOp::Set)],
            uids()
        )
            .prop_map(|(owner, list, op, uids)| Event::ListChanged {
                owner,
                list,
                op,
                uids
            }),
        (
            id(),
            id(),
            ".{0,20}",
            any::<u64>(),
            any::<u64>(),
            bytes(),
            any::<u32>()
        )
            .prop_map(
                |(channel, from, client_msg_id, seq, message_id, payload, flags)| {
                    Event::MessageSent {
                        channel,
                        from,
                        client_msg_id,
                        seq,
                        message_id,
                        payload,
                        flags,
                    }
                }
            ),
        (id(), any::<u64>(), id()).prop_map(|(channel, seq, by)| Event::MessageRecalled {
            channel,
            seq,
            by
        }),
        (id(), any::<u64>(), id(), bytes(), any::<u32>()).prop_map(
            |(channel, seq, by, payload, flags)| Event::MessageEdited {
                channel,
                seq,
                by,
                payload,
                flags,
            }
        ),
        (id(), id(), any::<Option<u64>>(), any::<Option<u64>>()).prop_map(
            |(uid, channel, delivered_seq, read_seq)| Event::CursorAdvanced {
                uid,
                channel,
                delivered_seq,
                read_seq
            }
        ),
        (
            id(),
            prop::collection::vec((id(), any::<Option<u64>>(), any::<Option<u64>>()), 0..4)
        )
            .prop_map(|(channel, cs)| Event::CursorBatch {
                channel,
                cursors: cs
                    .into_iter()
                    .map(|(uid, delivered_seq, read_seq)| CursorUpdate {
                        uid,
                        delivered_seq,
                        read_seq
                    })
                    .collect()
            }),
        (id(), id(), any::<Option<u64>>()).prop_map(|(uid, channel, up_to_seq)| {
            Event::ConversationHidden {
                uid,
                channel,
                up_to_seq,
            }
        }),
        (id(), id(), any::<u64>()).prop_map(|(uid, channel, up_to_seq)| {
            Event::ConversationCleared {
                uid,
                channel,
                up_to_seq,
            }
        }),
        (id(), bytes()).prop_map(|(uid, token_hash)| Event::TokenRevoked { uid, token_hash }),
        any::<u64>().prop_map(|start| Event::LogTrimmed { start }),
    ]
}

proptest! {
    #[test]
    fn every_event_kind_round_trips(ts in any::<u64>(), ev in event(), offset in any::<u64>()) {
        let env = Envelope::new(ts, ev);
        let bytes = env.encode();
        prop_assert_eq!(Envelope::decode(offset, &bytes).unwrap(), env);
    }

    #[test]
    fn the_hand_written_encoder_writes_the_reference_bytes(ts in any::<u64>(), ev in event()) {
        let env = Envelope::new(ts, ev);
        prop_assert_eq!(env.encode(), env.encode_reference());
    }

    #[test]
    fn arbitrary_bytes_are_a_typed_error_naming_the_offset(b in prop::collection::vec(any::<u8>(), 0..200), offset in any::<u64>()) {
        match Envelope::decode(offset, &b) {
            Ok(_) => {} // some byte strings are valid envelopes; that is fine
            Err(ProjectionError::Decode { offset: o, .. }) | Err(ProjectionError::UnsupportedVersion { offset: o, .. }) => prop_assert_eq!(o, offset),
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    #[test]
    fn truncated_or_flipped_encodings_never_panic(ev in event(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()) {
        let bytes = Envelope::new(1, ev).encode().to_vec();
        let _ = Envelope::decode(7, &bytes[..cut.index(bytes.len())]);
        let mut flipped = bytes.clone();
        let i = flip.index(flipped.len());
        flipped[i] ^= 0xff;
        let _ = Envelope::decode(7, &flipped);
    }
}

proptest! {
    // Many cases: this is the check that the fast decoder is only an optimisation.
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// The fast decoder never accepts what the reference rejects and never decodes differently:
    /// on damaged encodings (a byte changed, bytes cut, a byte inserted) both give the same
    /// answer, error included.
    #[test]
    fn the_decoder_agrees_with_the_reference_on_damaged_input(
        ev in event(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        how in 0..3u8,
    ) {
        let mut b = Envelope::new(5, ev).encode().to_vec();
        let i = at.index(b.len());
        match how {
            0 => b[i] = byte,
            1 => b.truncate(i),
            _ => b.insert(i, byte),
        }
        prop_assert_eq!(
            format!("{:?}", Envelope::decode(9, &b)),
            format!("{:?}", Envelope::decode_reference(9, &b))
        );
    }
}

#[test]
fn an_unknown_event_kind_or_version_is_a_typed_error() {
    #[derive(serde::Serialize)]
    struct Env<E> {
        v: u8,
        ts: u64,
        event: E,
    }
    let mut buf = Vec::new();
    ciborium::into_writer(
        &Env {
            v: 1,
            ts: 1,
            event: std::collections::BTreeMap::from([("teleported", 1)]),
        },
        &mut buf,
    )
    .unwrap();
    assert!(matches!(
        Envelope::decode(42, &buf),
        Err(ProjectionError::Decode { offset: 42, .. })
    ));
    let mut env = Envelope::new(1, Event::TokensRevoked { uid: "a".into() });
    env.v = 9;
    let bytes = env.encode();
    assert!(matches!(
        Envelope::decode(43, &bytes),
        Err(ProjectionError::UnsupportedVersion {
            offset: 43,
            version: 9
        })
    ));
}

#[test]
fn fields_in_another_order_decode_the_same() {
    #[derive(serde::Serialize)]
    struct Sent<'a> {
        flags: u32,
        payload: serde_bytes_like::B<'a>,
        message_id: u64,
        seq: u64,
        client_msg_id: &'a str,
        from: &'a str,
        channel: &'a str,
    }
    mod serde_bytes_like {
        pub(super) struct B<'a>(pub(super) &'a [u8]);
        impl serde::Serialize for B<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
    }
    #[derive(serde::Serialize)]
    struct Env<'a> {
        event: std::collections::BTreeMap<&'static str, Sent<'a>>,
        ts: u64,
        v: u8,
    }
    let mut buf = Vec::new();
    ciborium::into_writer(
        &Env {
            event: [(
                "message_sent",
                Sent {
                    flags: 1,
                    payload: serde_bytes_like::B(b"{}"),
                    message_id: 77,
                    seq: 3,
                    client_msg_id: "c1",
                    from: "al",
                    channel: "g",
                },
            )]
            .into(),
            ts: 10,
            v: 1,
        },
        &mut buf,
    )
    .unwrap();
    let want = Envelope::new(
        10,
        Event::MessageSent {
            channel: "g".into(),
            from: "al".into(),
            client_msg_id: "c1".into(),
            seq: 3,
            message_id: 77,
            payload: Bytes::from_static(b"{}"),
            flags: 1,
        },
    );
    assert_ne!(
        Bytes::from(buf.clone()),
        want.encode(),
        "a different byte order"
    );
    assert_eq!(Envelope::decode(1, &buf).unwrap(), want);
    assert_eq!(Envelope::decode_reference(1, &buf).unwrap(), want);
}

/// `ConversationHidden` gained `up_to_seq` without a new envelope version: an event without it
/// is written as before the field existed (the two-field map, byte for byte what the old
/// variant encodes to) and reads back as `None`; one with it is read by both decoders; and a
/// build from before the field (its variant, decoded by serde) still reads the new form,
/// skipping the field.
#[test]
fn a_hide_without_a_seq_keeps_the_old_encoding_and_old_builds_read_one_with_it() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum OldEvent {
        ConversationHidden { uid: String, channel: String },
    }
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct OldEnvelope {
        v: u8,
        ts: u64,
        event: OldEvent,
    }
    let old = OldEnvelope {
        v: 1,
        ts: 5,
        event: OldEvent::ConversationHidden {
            uid: "bob".into(),
            channel: "g".into(),
        },
    };
    let mut old_bytes = Vec::new();
    ciborium::into_writer(&old, &mut old_bytes).unwrap();
    let hidden = |up_to_seq: Option<u64>| {
        Envelope::new(
            5,
            Event::ConversationHidden {
                uid: "bob".into(),
                channel: "g".into(),
                up_to_seq,
            },
        )
    };

    let without = hidden(None);
    assert_eq!(without.encode(), Bytes::from(old_bytes.clone()));
    assert_eq!(without.encode_reference(), Bytes::from(old_bytes.clone()));
    assert_eq!(Envelope::decode(1, &old_bytes).unwrap(), without);
    assert_eq!(Envelope::decode_reference(1, &old_bytes).unwrap(), without);

    let with = hidden(Some(4));
    let bytes = with.encode();
    assert_eq!(bytes, with.encode_reference());
    assert_eq!(
        bytes.len(),
        old_bytes.len() + 11,
        "one more field: up_to_seq: 4"
    );
    assert_eq!(Envelope::decode(1, &bytes).unwrap(), with);
    assert_eq!(Envelope::decode_reference(1, &bytes).unwrap(), with);
    // The downgrade: what a build without the field decodes (it then hides by the old rule).
    let read_by_old: OldEnvelope = ciborium::from_reader(&bytes[..]).unwrap();
    assert_eq!(read_by_old, old);
}

/// `TokenSet` gained `expires_at_ms` as the hide gained its seq: a token without an expiry is
/// written as before the field existed, and a build from before it reads one with it (as a
/// token that never expires).
#[test]
fn a_token_without_an_expiry_keeps_the_old_encoding_and_old_builds_read_one_with_it() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum OldEvent {
        TokenSet { uid: String, token_hash: Bytes },
    }
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct OldEnvelope {
        v: u8,
        ts: u64,
        event: OldEvent,
    }
    let hash = Bytes::from_static(&[0x11; 32]);
    let old = OldEnvelope {
        v: 1,
        ts: 5,
        event: OldEvent::TokenSet {
            uid: "bob".into(),
            token_hash: hash.clone(),
        },
    };
    let mut old_bytes = Vec::new();
    ciborium::into_writer(&old, &mut old_bytes).unwrap();
    let issued = |expires_at_ms: Option<u64>| {
        Envelope::new(
            5,
            Event::TokenSet {
                uid: "bob".into(),
                token_hash: hash.clone(),
                expires_at_ms,
            },
        )
    };

    let without = issued(None);
    assert_eq!(without.encode(), Bytes::from(old_bytes.clone()));
    assert_eq!(without.encode_reference(), Bytes::from(old_bytes.clone()));
    assert_eq!(Envelope::decode(1, &old_bytes).unwrap(), without);

    let with = issued(Some(1_764_086_400_000));
    let bytes = with.encode();
    assert_eq!(bytes, with.encode_reference());
    assert_eq!(Envelope::decode(1, &bytes).unwrap(), with);
    assert_eq!(Envelope::decode_reference(1, &bytes).unwrap(), with);
    let read_by_old: OldEnvelope = ciborium::from_reader(&bytes[..]).unwrap();
    assert_eq!(read_by_old, old);
}

/// `env` as `tidings compact` purges it ([`Envelope::purged`]; another event as it is).
fn purged(env: &Envelope) -> Envelope {
    env.purged().unwrap_or_else(|| env.clone())
}

/// The purged bit round-trips through both codecs, and a purged send or edit encodes to exactly
/// the original's length (what lets `tidings compact` rewrite a record in place): for payloads
/// of every CBOR length-head size, and flags just below each head-length boundary (bit 1 never
/// carries them across).
#[test]
fn the_purged_bit_round_trips_and_keeps_the_length() {
    let s = |x: &str| x.to_string();
    let flag_values = [
        0,
        1,
        4,
        5,
        20,
        21,
        252,
        253,
        65_532,
        65_533,
        u32::MAX - 3,
        u32::MAX - 2,
    ];
    for flags in flag_values {
        assert_eq!(flags & FLAG_PURGED, 0);
        for len in [0usize, 1, 23, 24, 255, 256, 600, 70_000] {
            let payload = Bytes::from(vec![b'x'; len]);
            let events = [
                Event::MessageSent {
                    channel: s("general"),
                    from: s("alice"),
                    client_msg_id: s("c-1"),
                    seq: 1,
                    message_id: 77,
                    payload: payload.clone(),
                    flags,
                },
                Event::MessageEdited {
                    channel: s("general"),
                    seq: 1,
                    by: s("alice"),
                    payload,
                    flags,
                },
            ];
            for ev in events {
                let original = Envelope::new(1_764_000_000_000, ev);
                let gone = purged(&original);
                let bytes = gone.encode();
                assert_eq!(bytes.len(), original.encode().len(), "{flags} {len}");
                assert_eq!(bytes, gone.encode_reference(), "{flags} {len}");
                assert_eq!(Envelope::decode(9, &bytes).unwrap(), gone);
                assert_eq!(Envelope::decode_reference(9, &bytes).unwrap(), gone);
            }
        }
    }
}

/// One envelope of every kind, with fixed values.
fn golden_events() -> Vec<Envelope> {
    let s = |x: &str| x.to_string();
    let evs = vec![
        Event::TokenSet {
            uid: s("alice"),
            token_hash: Bytes::from_static(&[0xab; 32]),
            expires_at_ms: None,
        },
        Event::TokensRevoked { uid: s("alice") },
        Event::ChannelCreated {
            channel: s("general"),
            flags: ChannelFlags::default(),
        },
        Event::ChannelUpdated {
            channel: s("general"),
            flags: ChannelFlags {
                ban: false,
                send_ban: true,
                disband: false,
            },
        },
        Event::ChannelDeleted { channel: s("old") },
        Event::MembersSubscribed {
            channel: s("general"),
            uids: vec![s("alice"), s("bob")],
        },
        Event::MembersUnsubscribed {
            channel: s("general"),
            uids: vec![s("bob")],
        },
        Event::ListChanged {
            owner: ListOwner::Channel(s("general")),
            list: ListKind::Deny,
            op: ListOp::Add,
            uids: vec![s("mallory")],
        },
        Event::ListChanged {
            owner: ListOwner::User(s("bob")),
            list: ListKind::Allow,
            op: ListOp::Set,
            uids: vec![s("alice")],
        },
        Event::MessageSent {
            channel: s("general"),
            from: s("alice"),
            client_msg_id: s("c-1"),
            seq: 1,
            message_id: 77,
            payload: Bytes::from_static(b"{\"text\":\"hello\"}"),
            flags: 1,
        },
        Event::MessageRecalled {
            channel: s("general"),
            seq: 1,
            by: s("alice"),
        },
        Event::MessageEdited {
            channel: s("general"),
            seq: 1,
            by: s("alice"),
            payload: Bytes::from_static(b"{}"),
            flags: 1,
        },
        Event::CursorAdvanced {
            uid: s("bob"),
            channel: s("general"),
            delivered_seq: Some(1),
            read_seq: None,
        },
        Event::ConversationHidden {
            uid: s("bob"),
            channel: s("general"),
            up_to_seq: None,
        },
        Event::ConversationCleared {
            uid: s("bob"),
            channel: s("p:alice:bob"),
            up_to_seq: 3,
        },
        Event::CursorBatch {
            channel: s("general"),
            cursors: vec![
                CursorUpdate {
                    uid: s("bob"),
                    delivered_seq: Some(9),
                    read_seq: Some(7),
                },
                CursorUpdate {
                    uid: s("carol"),
                    delivered_seq: Some(9),
                    read_seq: None,
                },
            ],
        },
        // Appended with the field (2026-11-30): the entries before it kept their bytes.
        Event::ConversationHidden {
            uid: s("bob"),
            channel: s("general"),
            up_to_seq: Some(4),
        },
        // Appended with token expiries and single revocations (2026-11-30): the entries before
        // them kept their bytes.
        Event::TokenSet {
            uid: s("alice"),
            token_hash: Bytes::from_static(&[0xcd; 32]),
            expires_at_ms: Some(1_764_086_400_000),
        },
        Event::TokenRevoked {
            uid: s("alice"),
            token_hash: Bytes::from_static(&[0xcd; 32]),
        },
        // Appended with the retention's event (2026-11-30): the entries before it kept their
        // bytes.
        Event::LogTrimmed { start: 70_000 },
    ];
    evs.into_iter()
        .enumerate()
        .map(|(i, e)| Envelope::new(1_764_000_000_000 + i as u64, e))
        .collect()
}

fn golden_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    for env in golden_events() {
        let b = env.encode();
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(&b);
    }
    out
}

/// The golden file, under the package's directory as the test runner says it now (cargo and
/// nextest set it): a test binary reused from a build cache filled by a clone elsewhere holds
/// that clone's path at compile time, gone since.
fn golden_path() -> String {
    let root = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    format!("{root}/tests/golden/events-v1.bin")
}

#[test]
fn the_golden_file_decodes_to_the_same_events() {
    if std::env::var_os("TIDINGS_UPDATE_GOLDEN").is_some() {
        std::fs::write(golden_path(), golden_bytes()).unwrap();
    }
    let file = std::fs::read(golden_path()).expect(
        "golden file (regenerate with TIDINGS_UPDATE_GOLDEN=1 only for a new format version)",
    );
    let mut decoded = Vec::new();
    let mut at = 0;
    while at < file.len() {
        let len = u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        decoded.push(Envelope::decode(at as u64, &file[at + 4..at + 4 + len]).unwrap());
        at += 4 + len;
    }
    assert_eq!(
        decoded,
        golden_events(),
        "the stored format changed: old logs would not read"
    );
    assert_eq!(
        file,
        golden_bytes(),
        "the encoding changed: new logs would differ from old ones"
    );
}
