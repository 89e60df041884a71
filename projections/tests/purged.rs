//! A log whose recalled messages were purged (`tidings compact`: every send and edit of a
//! recalled message with its payload zeroed and `FLAG_PURGED` set) rebuilds into the state the
//! original log gives: those payloads only fed previews that the recall cleared or a later
//! message replaced, and the bit is not part of a message's flags.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use bytes::Bytes;
use proptest::prelude::*;
use tidings_projections::{
    ChannelFlags, Envelope, Event, FLAG_JSON_PAYLOAD, ProjectionConfig, State,
};

/// `env` as `tidings compact` purges it ([`Envelope::purged`]; another event as it is).
fn purged(env: &Envelope) -> Envelope {
    env.purged().unwrap_or_else(|| env.clone())
}

/// The message a send or an edit is about.
fn message_of(event: &Event) -> Option<(&str, u64)> {
    match event {
        Event::MessageSent { channel, seq, .. } => Some((channel.as_str(), *seq)),
        Event::MessageEdited { channel, seq, .. } => Some((channel.as_str(), *seq)),
        _ => None,
    }
}

/// The log with every send and edit of a recalled message purged, as `tidings compact` leaves
/// it; and how many records that purged.
fn purge_recalled(log: &[Envelope]) -> (Vec<Envelope>, usize) {
    let recalled: BTreeSet<(&str, u64)> = log
        .iter()
        .filter_map(|env| match &env.event {
            Event::MessageRecalled { channel, seq, .. } => Some((channel.as_str(), *seq)),
            _ => None,
        })
        .collect();
    let mut n = 0;
    let out: Vec<Envelope> = log
        .iter()
        .map(|env| match message_of(&env.event) {
            Some(message) if recalled.contains(&message) => {
                n += 1;
                purged(env)
            }
            _ => env.clone(),
        })
        .collect();
    (out, n)
}

/// The state the log's events give, applied at offsets 0, 1, ...
fn state_of(log: &[Envelope]) -> State {
    let mut state = ProjectionConfig::default().empty_state();
    for (offset, env) in log.iter().enumerate() {
        state.apply(offset as u64, env).unwrap();
    }
    state
}

/// A group `g` with two members, then `events`, as envelopes.
fn log(events: Vec<Event>) -> Vec<Envelope> {
    let s = |x: &str| x.to_string();
    let mut all = vec![
        Event::ChannelCreated {
            channel: s("g"),
            flags: ChannelFlags::default(),
        },
        Event::MembersSubscribed {
            channel: s("g"),
            uids: vec![s("ann"), s("bob")],
        },
    ];
    all.extend(events);
    all.into_iter()
        .enumerate()
        .map(|(i, e)| Envelope::new(1_764_000_000_000 + i as u64, e))
        .collect()
}

fn send(seq: u64, payload: &[u8], flags: u32) -> Event {
    Event::MessageSent {
        channel: "g".into(),
        from: "ann".into(),
        client_msg_id: format!("c{seq}"),
        seq,
        message_id: 100 + seq,
        payload: Bytes::copy_from_slice(payload),
        flags,
    }
}

fn edit(seq: u64, payload: &[u8], flags: u32) -> Event {
    Event::MessageEdited {
        channel: "g".into(),
        seq,
        by: "ann".into(),
        payload: Bytes::copy_from_slice(payload),
        flags,
    }
}

fn recall(seq: u64) -> Event {
    Event::MessageRecalled {
        channel: "g".into(),
        seq,
        by: "ann".into(),
    }
}

/// Purged sends apply as the originals: one recalled while it was the channel's head (the
/// head keeps the send's flags, without the purged bit: without the mask in `State::apply` it
/// held `FLAG_PURGED`), one recalled after a later message replaced its preview, and one
/// longer than the preview.
#[test]
fn purged_sends_apply_as_the_originals() {
    let original = log(vec![
        send(1, br#"{"text":"kept"}"#, FLAG_JSON_PAYLOAD),
        send(2, br#"{"text":"secret"}"#, FLAG_JSON_PAYLOAD),
        send(3, &[7; 900], 0),
        send(4, br#"{"text":"kept too"}"#, FLAG_JSON_PAYLOAD),
        recall(2),
        recall(3),
        send(5, br#"{"text":"the head"}"#, FLAG_JSON_PAYLOAD),
        recall(5),
    ]);
    let (purged, n) = purge_recalled(&original);
    assert_eq!(n, 3);
    assert_ne!(purged, original);
    let state = state_of(&original);
    assert_eq!(state_of(&purged), state);
    let head = state.heads.heads.get("g").unwrap();
    assert!(head.recalled && head.preview.is_empty());
    assert_eq!(head.flags, FLAG_JSON_PAYLOAD);
}

/// Purged edits apply as the originals: an edit of the head before its recall (its flags
/// become the head's), an edit of an older message, and an edit after the recall (ignored).
#[test]
fn purged_edits_apply_as_the_originals() {
    let original = log(vec![
        send(1, b"bytes", 0),
        send(2, b"more bytes", 0),
        edit(1, br#"{"text":"older, edited"}"#, FLAG_JSON_PAYLOAD),
        edit(2, br#"{"text":"the head, edited"}"#, FLAG_JSON_PAYLOAD),
        recall(2),
        recall(1),
        edit(2, br#"{"text":"after the recall"}"#, FLAG_JSON_PAYLOAD),
    ]);
    let (purged, n) = purge_recalled(&original);
    assert_eq!(n, 5);
    let state = state_of(&original);
    assert_eq!(state_of(&purged), state);
    assert_eq!(state.heads.heads.get("g").unwrap().flags, FLAG_JSON_PAYLOAD);
}

#[derive(Debug, Clone)]
enum Op {
    /// A send to channel 0 or 1 of a payload of this length, JSON or not.
    Send(usize, usize, bool),
    /// An edit of one of the channel's messages.
    Edit(usize, prop::sample::Index, usize, bool),
    /// A recall of one of the channel's messages (again, perhaps).
    Recall(usize, prop::sample::Index),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..700usize, any::<bool>()).prop_map(|(c, len, json)| Op::Send(c, len, json)),
        2 => (0..2usize, any::<prop::sample::Index>(), 0..700usize, any::<bool>())
            .prop_map(|(c, i, len, json)| Op::Edit(c, i, len, json)),
        2 => (0..2usize, any::<prop::sample::Index>()).prop_map(|(c, i)| Op::Recall(c, i)),
    ]
}

/// The log the operations write (edits and recalls name a message the channel has; those of a
/// channel without one are left out).
fn log_of(ops: &[Op]) -> Vec<Envelope> {
    const CHANNELS: [&str; 2] = ["g0", "g1"];
    let mut last = [0u64; 2];
    let mut events = Vec::new();
    for c in CHANNELS {
        events.push(Event::ChannelCreated {
            channel: c.into(),
            flags: ChannelFlags::default(),
        });
        events.push(Event::MembersSubscribed {
            channel: c.into(),
            uids: vec!["ann".into(), "bob".into()],
        });
    }
    for (n, op) in ops.iter().enumerate() {
        // Bytes of the operation's own (every payload differs from the others).
        let body = |len: usize| Bytes::from(vec![b'a' + (n % 26) as u8; len]);
        match op {
            Op::Send(c, len, json) => {
                last[*c] += 1;
                events.push(Event::MessageSent {
                    channel: CHANNELS[*c].into(),
                    from: "ann".into(),
                    client_msg_id: format!("m{n}"),
                    seq: last[*c],
                    message_id: n as u64 + 1,
                    payload: body(*len),
                    flags: u32::from(*json),
                });
            }
            Op::Edit(c, i, len, json) if last[*c] > 0 => events.push(Event::MessageEdited {
                channel: CHANNELS[*c].into(),
                seq: 1 + i.index(last[*c] as usize) as u64,
                by: "ann".into(),
                payload: body(*len),
                flags: u32::from(*json),
            }),
            Op::Recall(c, i) if last[*c] > 0 => events.push(Event::MessageRecalled {
                channel: CHANNELS[*c].into(),
                seq: 1 + i.index(last[*c] as usize) as u64,
                by: "ann".into(),
            }),
            Op::Edit(..) | Op::Recall(..) => {}
        }
    }
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| Envelope::new(1_764_000_000_000 + i as u64, e))
        .collect()
}

proptest! {
    /// Any sequence of sends, edits and recalls: the purged log rebuilds into the original's
    /// state.
    #[test]
    fn a_purged_log_rebuilds_into_the_original_state(ops in prop::collection::vec(op(), 0..60)) {
        let original = log_of(&ops);
        let (purged, _) = purge_recalled(&original);
        prop_assert_eq!(state_of(&purged), state_of(&original));
    }
}
