//! Message trace: the timeline of one message, built from the log (accepted, durable, delivery
//! and read acks, recall, edits) plus sampled push records; the scan is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::World;
use tidings_projections::Event;
use tidings_projections::trace::{self, Ack, PushRecord, PushSamples, Trace};

#[tokio::test]
async fn a_trace_shows_who_got_and_read_a_message_and_when() {
    let mut w = World::new().await;
    w.create("g").await;
    w.subscribe("g", &["alice", "bob", "carol", "dan"]).await;
    let sent = w.send("alice", "g", "m1").await.unwrap();
    w.send("alice", "g", "m2").await.unwrap();
    let samples = PushSamples::new(1, 100);
    samples.record(
        "g",
        sent.seq,
        PushRecord {
            at_ms: 5,
            online_users: 2,
            sessions: 3,
            dropped: 0,
        },
    );
    w.ack("bob", "g", Some(1), None).await;
    w.ack("carol", "g", Some(2), Some(2)).await; // covers seq 1 for both
    w.ack("bob", "g", None, Some(1)).await;
    w.emit(Event::MessageEdited {
        channel: "g".into(),
        seq: 1,
        by: "alice".into(),
        payload: Bytes::from_static(b"{}"),
        flags: 1,
    })
    .await;
    w.recall("g", 1, "alice").await;

    let plan = trace::plan(w.state(), w.p.index_files(), "g", 1)
        .unwrap()
        .unwrap();
    assert_eq!(plan.offset, sent.offset);
    let t = trace::trace(&w.log, &plan, Some(&samples), 1_000_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (t.from.as_str(), t.message_id, t.offset),
        ("alice", sent.message_id, sent.offset)
    );
    assert_eq!(t.accepted_at_ms, sent.ts);
    assert!(t.durable_at_ms > 0);
    assert_eq!(
        t.delivered
            .iter()
            .map(|a| a.uid.as_str())
            .collect::<Vec<_>>(),
        ["bob", "carol"]
    );
    assert_eq!(
        t.read.iter().map(|a| a.uid.as_str()).collect::<Vec<_>>(),
        ["carol", "bob"],
        "in time order"
    );
    assert!(t.delivered[0].at_ms <= t.read[1].at_ms);
    assert_eq!(t.not_delivered, vec!["dan".to_string()]);
    assert_eq!(t.edited_at_ms.len(), 1);
    assert!(t.recalled_at_ms.is_some());
    assert_eq!(t.pushes.len(), 1);
    assert!(t.scan_complete);

    // A bounded scan says it stopped early.
    let short = trace::trace(&w.log, &plan, None, 2).await.unwrap().unwrap();
    assert!(!short.scan_complete);
    assert_eq!(short.delivered.len(), 1);

    // No such message.
    assert!(
        trace::plan(w.state(), w.p.index_files(), "g", 99)
            .unwrap()
            .is_none()
    );
    assert!(
        trace::plan(w.state(), w.p.index_files(), "nope", 1)
            .unwrap()
            .is_none()
    );
}

#[test]
fn push_samples_are_bounded_and_sampled_by_message_id() {
    let s = PushSamples::new(4, 3);
    assert!(s.sampled(8) && !s.sampled(9));
    for seq in 0..5 {
        s.record(
            "g",
            seq,
            PushRecord {
                at_ms: seq,
                online_users: 1,
                sessions: 1,
                dropped: 0,
            },
        );
    }
    assert!(
        s.get("g", 0).is_empty() && s.get("g", 1).is_empty(),
        "the oldest fell out"
    );
    assert_eq!(s.get("g", 4).len(), 1);
}

#[tokio::test]
async fn the_sender_is_never_listed_as_not_delivered_for_their_own_message() {
    let mut w = World::new().await;
    w.create("g").await;
    w.subscribe("g", &["alice", "bob"]).await;
    w.send("alice", "g", "m1").await.unwrap();
    // bob replies without having received seq 1: his delivered cursor stays at 0.
    let reply = w.send("bob", "g", "r2").await.unwrap();
    assert_eq!(w.state().cursors.get("bob", "g").delivered, 0);
    let plan = trace::plan(w.state(), w.p.index_files(), "g", reply.seq)
        .unwrap()
        .unwrap();
    let t = trace::trace(&w.log, &plan, None, 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.from, "bob");
    assert_eq!(t.not_delivered, vec!["alice".to_string()]);
}

/// A member who sends a later message has read up to it (their conversation shows nothing
/// unread): the trace lists them as readers, as it does for a read ack. The message's own
/// sender is not listed for their later messages.
#[tokio::test]
async fn a_reply_counts_as_reading_the_message() {
    let mut w = World::new().await;
    w.create("g").await;
    w.subscribe("g", &["alice", "bob"]).await;
    w.send("alice", "g", "m1").await.unwrap();
    w.send("alice", "g", "m2").await.unwrap();
    w.send("bob", "g", "r3").await.unwrap();
    assert_eq!(w.state().cursors.get("bob", "g").read, 3);
    let plan = trace::plan(w.state(), w.p.index_files(), "g", 1)
        .unwrap()
        .unwrap();
    let t = trace::trace(&w.log, &plan, None, 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        t.read.iter().map(|a| a.uid.as_str()).collect::<Vec<_>>(),
        ["bob"]
    );
}

/// A recall past the scan's reach still shows (`recalled`), and a seq of an earlier group
/// under the same id has no trace in the group that replaced it (as for history and recall).
#[tokio::test]
async fn a_trace_knows_a_recall_past_its_scan_and_the_group_s_floor() {
    let mut w = World::new().await;
    w.create("g").await;
    w.subscribe("g", &["alice", "bob"]).await;
    w.send("alice", "g", "m1").await.unwrap();
    w.ack("bob", "g", Some(1), None).await;
    w.recall("g", 1, "alice").await;
    let plan = trace::plan(w.state(), w.p.index_files(), "g", 1)
        .unwrap()
        .unwrap();
    let t = trace::trace(&w.log, &plan, None, 1).await.unwrap().unwrap();
    assert!(!t.scan_complete);
    assert_eq!((t.recalled, t.recalled_at_ms), (true, None));
    let t = trace::trace(&w.log, &plan, None, 1_000)
        .await
        .unwrap()
        .unwrap();
    assert!(t.recalled && t.recalled_at_ms.is_some());

    w.emit(Event::ChannelDeleted {
        channel: "g".into(),
    })
    .await;
    w.create("g").await;
    w.subscribe("g", &["bob"]).await;
    assert!(
        trace::plan(w.state(), w.p.index_files(), "g", 1)
            .unwrap()
            .is_none()
    );
}

/// A user who joins after a message never had it: the join puts their cursors at the head, so
/// their acks and sends cover it, but the trace does not count them. A member's ack does, and
/// the joiner is not listed as not delivered either (the join moved their cursor past it).
#[tokio::test]
async fn a_user_who_joined_after_the_message_is_not_counted_for_it() {
    let mut w = World::new().await;
    w.create("g").await;
    w.subscribe("g", &["alice", "bob"]).await;
    w.send("alice", "g", "m1").await.unwrap();
    w.subscribe("g", &["carol"]).await;
    w.send("alice", "g", "m2").await.unwrap();
    w.ack("carol", "g", Some(2), Some(2)).await;
    w.send("carol", "g", "r3").await.unwrap();
    w.ack("bob", "g", Some(1), Some(1)).await;
    let t = traced(&w, 1).await;
    assert_eq!(uids(&t.delivered), ["bob"]);
    assert_eq!(uids(&t.read), ["bob"]);
    assert!(t.not_delivered.is_empty(), "{:?}", t.not_delivered);
}

/// A member removed before acking and added again is marked as having read what they were
/// owed (the join rule): that, and their acks after it, are not reads of the message. A
/// subscribe naming a member whose ack the scan already counted changes nothing: their later
/// read counts.
#[tokio::test]
async fn a_member_removed_and_added_again_is_not_counted_for_what_they_missed() {
    let mut w = World::new().await;
    w.create("g").await;
    w.subscribe("g", &["alice", "bob", "carol"]).await;
    w.send("alice", "g", "m1").await.unwrap();
    w.ack("carol", "g", Some(1), None).await;
    w.unsubscribe("g", &["bob"]).await;
    w.subscribe("g", &["bob", "carol"]).await;
    assert_eq!(w.state().cursors.get("bob", "g").read, 1, "the join rule");
    w.ack("bob", "g", Some(1), Some(1)).await;
    w.ack("carol", "g", None, Some(1)).await;
    let t = traced(&w, 1).await;
    assert_eq!(uids(&t.delivered), ["carol"]);
    assert_eq!(uids(&t.read), ["carol"]);
}

/// A cursor event below the message proves no membership: WebSocket acks are written up to a
/// window late, so one a user made before their removal can land after the message, and their
/// re-join after it is still a join (it was taken for a re-subscribe of a member).
#[tokio::test]
async fn a_late_ack_from_before_a_removal_does_not_make_a_later_joiner_a_member() {
    let mut w = World::new().await;
    w.create("g").await;
    w.subscribe("g", &["alice", "dan"]).await;
    w.send("alice", "g", "m1").await.unwrap();
    w.unsubscribe("g", &["dan"]).await;
    w.send("alice", "g", "m2").await.unwrap();
    w.ack("dan", "g", Some(1), Some(1)).await; // dan's window, written late
    w.subscribe("g", &["dan"]).await;
    w.ack("dan", "g", Some(2), Some(2)).await;
    let t = traced(&w, 2).await;
    assert!(t.delivered.is_empty(), "{:?}", t.delivered);
    assert!(t.read.is_empty(), "{:?}", t.read);
}

/// A clear counts the messages up to it as delivered and read (the cursors projection), so
/// the trace lists the member who cleared as having them (it listed them nowhere: neither
/// delivered nor not delivered). Found by a black-box QA.
#[tokio::test]
async fn a_clear_counts_as_delivery_and_read() {
    let mut w = World::new().await;
    w.create("g").await;
    w.subscribe("g", &["alice", "bob", "carol"]).await;
    w.send("alice", "g", "m1").await.unwrap();
    w.emit(Event::ConversationCleared {
        uid: "bob".into(),
        channel: "g".into(),
        up_to_seq: 1,
    })
    .await;
    let t = traced(&w, 1).await;
    assert_eq!(uids(&t.delivered), ["bob"]);
    assert_eq!(uids(&t.read), ["bob"]);
    assert_eq!(t.not_delivered, ["carol"]);
}

/// A group deleted and created again under the same id is another group: a send there (its
/// seqs continue) by a member of the earlier one is not a read of the earlier group's message.
#[tokio::test]
async fn nobody_is_counted_after_the_group_is_deleted() {
    let mut w = World::new().await;
    w.create("g").await;
    w.subscribe("g", &["alice", "bob"]).await;
    w.send("alice", "g", "m1").await.unwrap();
    w.ack("bob", "g", Some(1), None).await;
    let plan = trace::plan(w.state(), w.p.index_files(), "g", 1)
        .unwrap()
        .unwrap();
    w.emit(Event::ChannelDeleted {
        channel: "g".into(),
    })
    .await;
    w.create("g").await;
    w.subscribe("g", &["bob"]).await;
    assert_eq!(w.send("bob", "g", "n2").await.unwrap().seq, 2);
    let t = trace::trace(&w.log, &plan, None, 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(uids(&t.delivered), ["bob"]);
    assert!(t.read.is_empty(), "{:?}", t.read);
}

/// The trace of seq `seq` in `g`, the whole log scanned.
async fn traced(w: &World, seq: u64) -> Trace {
    let plan = trace::plan(w.state(), w.p.index_files(), "g", seq)
        .unwrap()
        .unwrap();
    trace::trace(&w.log, &plan, None, 1_000)
        .await
        .unwrap()
        .unwrap()
}

fn uids(acks: &[Ack]) -> Vec<&str> {
    acks.iter().map(|a| a.uid.as_str()).collect()
}
