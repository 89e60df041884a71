//! Offline-cursor boundaries — the bug that lost WuKongIM's first offline message. Seqs start
//! at 1, a cursor is the last seq received, sync returns `seq > cursor`. Each case runs under
//! every combination of: channel allowlist on/off, channel denylist on/off, and the
//! person-channel allowlist switch on/off — in a group channel and in a person channel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::World;
use tidings_projections::ids::person_channel;
use tidings_projections::permissions::SendDenied;
use tidings_projections::{ListKind, ListOp, ListOwner};

#[derive(Debug, Clone, Copy)]
struct Combo {
    allowlist: bool,
    denylist: bool,
    person_allowlist: bool,
}

fn combos() -> Vec<Combo> {
    let mut v = Vec::new();
    for a in [false, true] {
        for d in [false, true] {
            for p in [false, true] {
                v.push(Combo {
                    allowlist: a,
                    denylist: d,
                    person_allowlist: p,
                });
            }
        }
    }
    v
}

/// A world where `alice` may send to `bob` in group `g` and in their person channel, and
/// `mallory` is denied wherever a denylist is on.
async fn world(c: Combo) -> (World, String) {
    let mut w = World::new().await;
    w.person_allowlist = c.person_allowlist;
    w.create("g").await;
    w.subscribe("g", &["alice", "bob", "mallory"]).await;
    if c.allowlist {
        w.list(
            ListOwner::Channel("g".into()),
            ListKind::Allow,
            ListOp::Set,
            &["alice", "bob"],
        )
        .await;
        w.list(
            ListOwner::User("bob".into()),
            ListKind::Allow,
            ListOp::Set,
            &["alice"],
        )
        .await;
    }
    if c.denylist {
        w.list(
            ListOwner::Channel("g".into()),
            ListKind::Deny,
            ListOp::Add,
            &["mallory"],
        )
        .await;
        w.list(
            ListOwner::User("bob".into()),
            ListKind::Deny,
            ListOp::Add,
            &["mallory"],
        )
        .await;
    }
    if c.person_allowlist && !c.allowlist {
        // With the switch on, bob must allow alice explicitly to hear from her.
        w.list(
            ListOwner::User("bob".into()),
            ListKind::Allow,
            ListOp::Add,
            &["alice"],
        )
        .await;
    }
    (w, person_channel("alice", "bob"))
}

fn seqs(msgs: &[tidings_projections::messages::Message], channel: &str) -> Vec<u64> {
    msgs.iter()
        .filter(|m| m.channel == channel)
        .map(|m| m.seq)
        .collect()
}

async fn each(f: impl AsyncFn(Combo, World, String)) {
    for c in combos() {
        let (w, p) = world(c).await;
        f(c, w, p).await;
    }
}

#[tokio::test]
async fn cursor_zero_and_one_message_returns_the_first_message() {
    each(async |c, mut w, p| {
        for ch in ["g", p.as_str()] {
            assert_eq!(w.state().cursors.get("bob", ch).delivered, 0, "{c:?} {ch}");
            let sent = w.send("alice", ch, &format!("first-{ch}")).await.unwrap();
            assert_eq!(sent.seq, 1, "seqs start at 1 ({c:?} {ch})");
            let (msgs, more) = w.sync("bob", 100).await;
            assert_eq!(
                seqs(&msgs, ch),
                vec![1],
                "the first offline message must be returned ({c:?} {ch})"
            );
            assert!(!more);
        }
    })
    .await;
}

#[tokio::test]
async fn cursor_at_the_last_seq_returns_nothing() {
    each(async |c, mut w, p| {
        for ch in ["g", p.as_str()] {
            for i in 0..3 {
                w.send("alice", ch, &format!("{ch}-{i}")).await.unwrap();
            }
            w.ack("bob", ch, Some(3), None).await;
            let (msgs, _) = w.sync("bob", 100).await;
            assert_eq!(seqs(&msgs, ch), Vec::<u64>::new(), "{c:?} {ch}");
        }
    })
    .await;
}

#[tokio::test]
async fn cursor_in_the_middle_returns_exactly_the_rest() {
    each(async |c, mut w, p| {
        for ch in ["g", p.as_str()] {
            for i in 0..5 {
                w.send("alice", ch, &format!("{ch}-{i}")).await.unwrap();
            }
            w.ack("bob", ch, Some(2), None).await;
            let (msgs, _) = w.sync("bob", 100).await;
            assert_eq!(seqs(&msgs, ch), vec![3, 4, 5], "{c:?} {ch}");
            // Paging: a limit of 2 gives 3,4 and says there is more.
            let (msgs, more) = w.sync("bob", 2).await;
            assert_eq!(
                msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
                vec![3, 4],
                "{c:?} {ch}"
            );
            assert!(more);
            w.ack("bob", ch, Some(5), None).await;
        }
    })
    .await;
}

#[tokio::test]
async fn an_empty_channel_returns_nothing() {
    each(async |c, w, p| {
        let (msgs, more) = w.sync("bob", 100).await;
        assert!(msgs.is_empty() && !more, "{c:?}");
        assert!(w.history("g").await.is_empty());
        assert!(w.history(&p).await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn after_unsubscribe_and_resubscribe_new_messages_arrive_again() {
    each(async |c, mut w, _p| {
        w.send("alice", "g", "m1").await.unwrap();
        w.send("alice", "g", "m2").await.unwrap();
        w.ack("bob", "g", Some(1), None).await;
        w.unsubscribe("g", &["bob"]).await;
        // Sent while bob is out: not delivered to him (he joins again at the head).
        w.send("alice", "g", "m3").await.unwrap();
        assert_eq!(
            seqs(&w.sync("bob", 100).await.0, "g"),
            Vec::<u64>::new(),
            "{c:?}"
        );
        w.subscribe("g", &["bob"]).await;
        // Subscribing twice changes nothing (idempotent).
        let before = w.state().clone();
        w.subscribe("g", &["bob"]).await;
        assert_eq!(w.state().subs, before.subs);
        assert_eq!(
            w.state().cursors.get("bob", "g").delivered,
            3,
            "joins at the head ({c:?})"
        );
        let sent = w.send("alice", "g", "m4").await.unwrap();
        assert_eq!(sent.seq, 4);
        assert_eq!(
            seqs(&w.sync("bob", 100).await.0, "g"),
            vec![4],
            "the next message arrives ({c:?})"
        );
    })
    .await;
}

#[tokio::test]
async fn denied_and_not_allowed_senders_never_reach_the_cursor() {
    each(async |c, mut w, p| {
        let group = w.send("mallory", "g", "x").await;
        let person = w
            .send("mallory", &person_channel("mallory", "bob"), "y")
            .await;
        if c.denylist {
            assert_eq!(group.unwrap_err(), SendDenied::Denied, "{c:?}");
            assert_eq!(person.clone().unwrap_err(), SendDenied::Denied, "{c:?}");
        } else if c.allowlist {
            assert_eq!(group.unwrap_err(), SendDenied::NotAllowed, "{c:?}");
        } else {
            assert!(group.is_ok(), "{c:?}");
        }
        if !c.denylist && c.person_allowlist {
            assert_eq!(person.unwrap_err(), SendDenied::NotAllowed, "{c:?}");
        } else if !c.denylist {
            assert!(person.is_ok(), "{c:?}");
        }
        // Whatever was refused left no trace: seqs stay gapless.
        let h = w.history("g").await;
        assert_eq!(
            h.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=h.len() as u64).collect::<Vec<_>>()
        );
        // And alice still reaches bob in both channels.
        w.send("alice", "g", "ok-group").await.unwrap();
        w.send("alice", &p, "ok-person").await.unwrap();
        let (msgs, _) = w.sync("bob", 100).await;
        assert!(
            msgs.iter().any(|m| m.from == "alice" && m.channel == "g"),
            "{c:?}"
        );
        assert!(
            msgs.iter().any(|m| m.from == "alice" && m.channel == p),
            "{c:?}"
        );
    })
    .await;
}

/// A user who replies before syncing (an app posting its outbox first, a second device) must
/// still get what was sent to them meanwhile: before 2026-11-30 the send moved the sender's
/// delivered cursor to their own message and the messages below it were lost to sync.
#[tokio::test]
async fn a_reply_sent_before_syncing_skips_nothing() {
    each(async |c, mut w, _p| {
        w.send("alice", "g", "m1").await.unwrap();
        w.send("alice", "g", "m2").await.unwrap();
        let reply = w.send("bob", "g", "r3").await.unwrap();
        assert_eq!(reply.seq, 3);
        let cur = w.state().cursors.get("bob", "g");
        assert_eq!((cur.delivered, cur.read), (0, 3), "{c:?}");
        // Everything bob never received, his own reply included (clients deduplicate).
        assert_eq!(
            seqs(&w.sync("bob", 100).await.0, "g"),
            vec![1, 2, 3],
            "{c:?}"
        );
        // A cumulative ack below the read cursor moves delivered only as far as it says.
        w.ack("bob", "g", Some(1), None).await;
        assert_eq!(seqs(&w.sync("bob", 100).await.0, "g"), vec![2, 3], "{c:?}");
        // A reported read implies delivery, even below the read cursor the send gave.
        w.ack("bob", "g", None, Some(2)).await;
        let cur = w.state().cursors.get("bob", "g");
        assert_eq!((cur.delivered, cur.read), (2, 3), "{c:?}");
        assert_eq!(seqs(&w.sync("bob", 100).await.0, "g"), vec![3], "{c:?}");
        // Clearing the conversation below the read cursor does not skip past the clear.
        w.send("alice", "g", "m4").await.unwrap();
        w.send("bob", "g", "r5").await.unwrap();
        w.emit(tidings_projections::Event::ConversationCleared {
            uid: "bob".into(),
            channel: "g".into(),
            up_to_seq: 3,
        })
        .await;
        assert_eq!(seqs(&w.sync("bob", 100).await.0, "g"), vec![4, 5], "{c:?}");
        // The rule holds in a rebuild too.
        assert_eq!(w.state(), &w.rebuild().await, "{c:?}");
    })
    .await;
}

/// A sender who had everything before their message has it delivered at once (no redelivery of
/// their own message then).
#[tokio::test]
async fn a_reply_after_everything_was_delivered_moves_the_delivered_cursor() {
    each(async |c, mut w, p| {
        // With the person-channel switch on, alice must allow bob to hear from him.
        w.list(
            ListOwner::User("alice".into()),
            ListKind::Allow,
            ListOp::Add,
            &["bob"],
        )
        .await;
        w.send("alice", &p, "m1").await.unwrap();
        w.ack("bob", &p, Some(1), None).await;
        w.send("bob", &p, "r2").await.unwrap();
        let cur = w.state().cursors.get("bob", &p);
        assert_eq!((cur.delivered, cur.read), (2, 2), "{c:?}");
        assert!(seqs(&w.sync("bob", 100).await.0, &p).is_empty(), "{c:?}");
        // The first message of a channel, sent by the user: nothing before it to miss.
        w.send("bob", "g", "first").await.unwrap();
        assert_eq!(w.state().cursors.get("bob", "g").delivered, 1, "{c:?}");
    })
    .await;
}

/// A banned group's backlog (sent to its members before the ban) is in sync, and once acked it
/// no longer fills the page: the other channels' messages come. Before 2026-11-30 a full page
/// of it came back at every sync because its members could not move that cursor (the server
/// now lets them: `permissions::can_move_cursor`).
#[tokio::test]
async fn a_banned_groups_backlog_is_synced_and_does_not_block_the_rest() {
    let mut w = World::new().await;
    for g in ["a1", "b2"] {
        w.create(g).await;
        w.subscribe(g, &["alice", "bob"]).await;
    }
    for i in 0..5 {
        w.send("alice", "a1", &format!("a{i}")).await.unwrap();
    }
    w.send("alice", "b2", "b").await.unwrap();
    w.flags(
        "a1",
        tidings_projections::ChannelFlags {
            ban: true,
            ..Default::default()
        },
    )
    .await;
    // A page shared between the channels (since 2026-12-03): b2's one, and a1's first two.
    let (msgs, more) = w.sync("bob", 3).await;
    assert_eq!(seqs(&msgs, "a1"), vec![1, 2]);
    assert_eq!(seqs(&msgs, "b2"), vec![1]);
    assert!(more);
    assert!(tidings_projections::permissions::can_move_cursor(
        w.state(),
        "bob",
        "a1"
    ));
    assert!(!tidings_projections::permissions::can_read(
        w.state(),
        "bob",
        "a1"
    ));
    w.ack("bob", "a1", Some(5), None).await;
    let (msgs, more) = w.sync("bob", 3).await;
    assert_eq!(seqs(&msgs, "a1"), Vec::<u64>::new());
    assert_eq!(seqs(&msgs, "b2"), vec![1]);
    assert!(!more);
}

/// A page goes to every channel with messages to give, not to the first in id order until it
/// is drained: a quiet person channel sorted after a busy group (here "a-busy" with 40 and the
/// person channel with 3, a page of 10) gets its messages in the first page, first, and the
/// group the rest of the page. Until 2026-12-03 the group took the whole page, and a client that
/// reconnected before the group was drained never saw the person channel (found by a QA
/// round). Paged on, every message comes once, in order per channel.
#[tokio::test]
async fn a_page_goes_to_every_channel_with_messages() {
    each(async |c, mut w, p| {
        w.create("a-busy").await;
        w.subscribe("a-busy", &["alice", "bob"]).await;
        for i in 0..40 {
            w.send("alice", "a-busy", &format!("busy-{i}"))
                .await
                .unwrap();
        }
        for i in 0..3 {
            w.send("alice", &p, &format!("quiet-{i}")).await.unwrap();
        }
        let (msgs, more) = w.sync("bob", 10).await;
        assert!(more, "{c:?}");
        assert_eq!(seqs(&msgs, &p), vec![1, 2, 3], "{c:?}");
        assert_eq!(seqs(&msgs, "a-busy"), (1..=7).collect::<Vec<_>>(), "{c:?}");
        // The smaller share first: a client reading part of the page has the quiet channel.
        assert!(msgs[..3].iter().all(|m| m.channel == p), "{c:?}");
        // Paged on (each page acknowledged): the rest of the group, once each, in order.
        w.ack("bob", &p, Some(3), None).await;
        let mut busy = seqs(&msgs, "a-busy");
        loop {
            w.ack("bob", "a-busy", busy.last().copied(), None).await;
            let (msgs, more) = w.sync("bob", 10).await;
            assert!(seqs(&msgs, &p).is_empty(), "{c:?}");
            busy.extend(seqs(&msgs, "a-busy"));
            if !more {
                break;
            }
        }
        assert_eq!(busy, (1..=40).collect::<Vec<_>>(), "{c:?}");
    })
    .await;
}
