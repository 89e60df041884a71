//! Property: random sequences of actions (create, subscribe, unsubscribe, resubscribe, send,
//! ack, read, cursor batches, recall, edit (also of a recalled message), ban, send-ban and
//! disband flags, allow/deny changes, hide, clear, delete, a retention's trim) give the same state live, rebuilt
//! from offset 0, and from a snapshot taken at a random point plus a replay of the rest; and
//! every message reads back through the index. And what is read from the state: `/v1/changes`
//! paged one change at a time gives what one call gives, each message once, a group the user is
//! not in as notices of what they could hold; no conversation is listed from an earlier
//! group's head.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{World, config};
use proptest::prelude::*;
use tidings_projections::conversations::compute;
use tidings_projections::diff::diff;
use tidings_projections::ids::person_channel;
use tidings_projections::messages::{Change, plan_changes};
use tidings_projections::{
    ChannelFlags, CursorUpdate, Event, ListKind, ListOp, ListOwner, Projections, snapshot,
};

const USERS: [&str; 4] = ["ann", "bob", "cat", "dan"];
const GROUPS: [&str; 2] = ["g0", "g1"];

#[derive(Debug, Clone)]
enum Action {
    Create(usize),
    /// ban, send_ban, disband.
    Flags(usize, bool, bool, bool),
    Delete(usize),
    Subscribe(usize, Vec<usize>),
    Unsubscribe(usize, Vec<usize>),
    Send(usize, usize, u8),
    SendPerson(usize, usize, u8),
    Ack(usize, usize, u64),
    Read(usize, usize, u64),
    Recall(usize, u64),
    /// An edit of a seq of a group (also of a recalled one, which the projections ignore).
    Edit(usize, u64),
    /// A cursor batch of a group: each user's delivered and read seqs.
    Batch(usize, Vec<(usize, Option<u64>, Option<u64>)>),
    List(usize, bool, u8, Vec<usize>),
    UserList(usize, bool, u8, Vec<usize>),
    Hide(usize, usize, Option<u64>),
    Clear(usize, usize, u64),
    /// A token (one of a few hashes) issued to a user: no expiry, expired long ago (dropped by
    /// the next issue), or expiring far ahead.
    Token(usize, u8, u8),
    RevokeToken(usize, u8),
    RevokeAll(usize),
    /// A removal of the retention: the log now starts at this many eighths of the next offset
    /// (the segments stay: the state's rules are what is checked).
    Trim(u8),
    Snapshot,
}

fn action() -> impl Strategy<Value = Action> {
    let u = 0..USERS.len();
    let g = 0..GROUPS.len();
    let us = prop::collection::vec(0..USERS.len(), 1..3);
    prop_oneof![
        2 => g.clone().prop_map(Action::Create),
        1 => (g.clone(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(c, x, a, b)| Action::Flags(c, x, a, b)),
        1 => g.clone().prop_map(Action::Delete),
        4 => (g.clone(), us.clone()).prop_map(|(c, u)| Action::Subscribe(c, u)),
        2 => (g.clone(), us.clone()).prop_map(|(c, u)| Action::Unsubscribe(c, u)),
        10 => (u.clone(), g.clone(), 0u8..4).prop_map(|(f, c, k)| Action::Send(f, c, k)),
        4 => (u.clone(), u.clone(), 0u8..4).prop_map(|(f, t, k)| Action::SendPerson(f, t, k)),
        3 => (u.clone(), g.clone(), 0u64..12).prop_map(|(x, c, s)| Action::Ack(x, c, s)),
        3 => (u.clone(), g.clone(), 0u64..12).prop_map(|(x, c, s)| Action::Read(x, c, s)),
        2 => (g.clone(), 1u64..10).prop_map(|(c, s)| Action::Recall(c, s)),
        2 => (g.clone(), 1u64..10).prop_map(|(c, s)| Action::Edit(c, s)),
        1 => (g.clone(), prop::collection::vec((u.clone(), prop::option::of(0u64..12), prop::option::of(0u64..12)), 1..4)).prop_map(|(c, b)| Action::Batch(c, b)),
        2 => (g.clone(), any::<bool>(), 0u8..3, us.clone()).prop_map(|(c, a, o, u)| Action::List(c, a, o, u)),
        1 => (u.clone(), any::<bool>(), 0u8..3, us.clone()).prop_map(|(x, a, o, u)| Action::UserList(x, a, o, u)),
        1 => (u.clone(), g.clone(), prop::option::of(0u64..12)).prop_map(|(x, c, s)| Action::Hide(x, c, s)),
        1 => (u.clone(), g.clone(), 0u64..8).prop_map(|(x, c, s)| Action::Clear(x, c, s)),
        1 => (u.clone(), 0u8..5, 0u8..3).prop_map(|(x, h, e)| Action::Token(x, h, e)),
        1 => (u.clone(), 0u8..5).prop_map(|(x, h)| Action::RevokeToken(x, h)),
        1 => u.clone().prop_map(Action::RevokeAll),
        1 => (0u8..=8).prop_map(Action::Trim),
        1 => Just(Action::Snapshot),
    ]
}

fn names(ix: &[usize]) -> Vec<&'static str> {
    ix.iter().map(|&i| USERS[i]).collect()
}

fn op(k: u8) -> ListOp {
    match k {
        0 => ListOp::Add,
        1 => ListOp::Remove,
        _ => ListOp::Set,
    }
}

async fn run(actions: Vec<Action>, snap_at: usize) {
    let mut w = World::new().await;
    let mut snap: Option<std::path::PathBuf> = None;
    for (i, a) in actions.into_iter().enumerate() {
        if i == snap_at
            && let Some(p) = w.p.snapshot().unwrap()
        {
            snap = Some(p);
        }
        match a {
            Action::Create(c) => w.create(GROUPS[c]).await,
            Action::Flags(c, ban, send_ban, disband) => {
                w.flags(
                    GROUPS[c],
                    ChannelFlags {
                        ban,
                        send_ban,
                        disband,
                    },
                )
                .await
            }
            Action::Delete(c) => {
                w.emit(Event::ChannelDeleted {
                    channel: GROUPS[c].into(),
                })
                .await;
            }
            Action::Subscribe(c, u) => w.subscribe(GROUPS[c], &names(&u)).await,
            Action::Unsubscribe(c, u) => w.unsubscribe(GROUPS[c], &names(&u)).await,
            Action::Send(f, c, k) => {
                let _ = w.send(USERS[f], GROUPS[c], &format!("k{k}")).await;
            }
            Action::SendPerson(f, t, k) => {
                let ch = person_channel(USERS[f], USERS[t]);
                let _ = w.send(USERS[f], &ch, &format!("p{k}")).await;
            }
            Action::Ack(x, c, s) => w.ack(USERS[x], GROUPS[c], Some(s), None).await,
            Action::Read(x, c, s) => w.ack(USERS[x], GROUPS[c], None, Some(s)).await,
            Action::Recall(c, s) => {
                if s <= w.state().heads.last_seq(GROUPS[c]) {
                    w.recall(GROUPS[c], s, "ann").await;
                }
            }
            Action::Edit(c, s) => {
                if s <= w.state().heads.last_seq(GROUPS[c]) {
                    w.emit(Event::MessageEdited {
                        channel: GROUPS[c].into(),
                        seq: s,
                        by: "ann".into(),
                        payload: bytes::Bytes::from(format!("e{s}")),
                        flags: 0,
                    })
                    .await;
                }
            }
            Action::Batch(c, cursors) => {
                // Capped at the head, as the API caps them when they arrive.
                let last = w.state().heads.last_seq(GROUPS[c]);
                w.emit(Event::CursorBatch {
                    channel: GROUPS[c].into(),
                    cursors: cursors
                        .into_iter()
                        .map(|(x, delivered_seq, read_seq)| CursorUpdate {
                            uid: USERS[x].into(),
                            delivered_seq: delivered_seq.map(|d| d.min(last)),
                            read_seq: read_seq.map(|r| r.min(last)),
                        })
                        .collect(),
                })
                .await;
            }
            Action::List(c, allow, k, u) => {
                let kind = if allow {
                    ListKind::Allow
                } else {
                    ListKind::Deny
                };
                w.list(
                    ListOwner::Channel(GROUPS[c].into()),
                    kind,
                    op(k),
                    &names(&u),
                )
                .await
            }
            Action::UserList(x, allow, k, u) => {
                let kind = if allow {
                    ListKind::Allow
                } else {
                    ListKind::Deny
                };
                w.list(ListOwner::User(USERS[x].into()), kind, op(k), &names(&u))
                    .await
            }
            Action::Hide(x, c, s) => {
                // As of a seq (below, at or past the head) or, as older events, of the head.
                w.emit(Event::ConversationHidden {
                    uid: USERS[x].into(),
                    channel: GROUPS[c].into(),
                    up_to_seq: s,
                })
                .await;
            }
            Action::Clear(x, c, s) => {
                let s = s.min(w.state().heads.last_seq(GROUPS[c]));
                w.emit(Event::ConversationCleared {
                    uid: USERS[x].into(),
                    channel: GROUPS[c].into(),
                    up_to_seq: s,
                })
                .await;
            }
            Action::Token(x, h, e) => {
                let expires_at_ms = match e {
                    0 => None,
                    1 => Some(1),
                    _ => Some(u64::MAX / 2),
                };
                w.emit(Event::TokenSet {
                    uid: USERS[x].into(),
                    token_hash: bytes::Bytes::from(vec![h; 32]),
                    expires_at_ms,
                })
                .await;
            }
            Action::RevokeToken(x, h) => {
                w.emit(Event::TokenRevoked {
                    uid: USERS[x].into(),
                    token_hash: bytes::Bytes::from(vec![h; 32]),
                })
                .await;
            }
            Action::RevokeAll(x) => {
                w.emit(Event::TokensRevoked {
                    uid: USERS[x].into(),
                })
                .await;
            }
            Action::Trim(k) => {
                let start = w.state().next_offset() * u64::from(k) / 8;
                w.emit(Event::LogTrimmed { start }).await;
            }
            Action::Snapshot => {
                if let Some(p) = w.p.snapshot().unwrap() {
                    snap = Some(p);
                }
            }
        }
    }
    // Live == rebuilt from offset 0.
    let rebuilt = w.rebuild().await;
    let d = diff(w.state(), &rebuilt, 20);
    assert!(d.is_empty(), "live differs from rebuilt:\n{}", d.join("\n"));
    assert_eq!(w.state(), &rebuilt);

    // Live == snapshot + replay of the rest (in a fresh directory, with the sidecars copied).
    if let Some(path) = snap {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("snapshots")).unwrap();
        std::fs::copy(
            &path,
            dir.path().join("snapshots").join(path.file_name().unwrap()),
        )
        .unwrap();
        let idx = dir.path().join("index");
        std::fs::create_dir_all(&idx).unwrap();
        for f in std::fs::read_dir(w.p.index_files().dir()).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, idx.join(f.file_name().unwrap())).unwrap();
        }
        let mut p = Projections::load(dir.path(), config()).unwrap();
        assert!(matches!(
            p.origin(),
            tidings_projections::Origin::Snapshot(_)
        ));
        p.catch_up(&w.log, |_, _| {}).await.unwrap();
        let d = diff(w.state(), &p.state, 20);
        assert!(
            d.is_empty(),
            "live differs from snapshot + replay:\n{}",
            d.join("\n")
        );
        assert!(
            snapshot::decode(&path, &std::fs::read(&path).unwrap())
                .unwrap()
                .applied
                .is_some()
        );
    }

    // Every message of every channel reads back through the index, with its own seq (but for
    // those whose sidecar a trim let go).
    let channels: Vec<String> = w.state().heads.heads.keys().cloned().collect();
    for ch in channels {
        let msgs = w.history(&ch).await;
        let last = w.state().heads.last_seq(&ch);
        let dropped = w.state().index.dropped_through(&ch);
        assert_eq!(
            msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (dropped + 1..=last).collect::<Vec<_>>(),
            "{ch}"
        );
        for m in &msgs {
            assert_eq!(m.recalled, m.payload.is_none());
        }
    }
    // Cursors never pass the channel's head (`read` may be above `delivered`: a send moves
    // the sender's read cursor, and their delivered one only when contiguous); nor does a
    // hide, whatever seq its event names (it covers no message in advance).
    for (uid, curs) in &w.state().cursors.by_user {
        for (ch, c) in curs {
            let last = w.state().heads.last_seq(ch);
            assert!(
                c.read <= last && c.delivered <= last && c.hidden_at.is_none_or(|h| h <= last),
                "{uid} in {ch}: {c:?}"
            );
        }
    }
    for uid in USERS {
        check_changes(&w, uid);
        // A group created again is listed from its own first message, as a new one is.
        for c in compute(w.state(), uid) {
            assert!(
                c.last_seq > w.state().subs.history_from(&c.channel),
                "{uid}: {c:?}"
            );
        }
    }
}

/// `/v1/changes` from 0: paged one at a time, the same changes and version as in one call;
/// each message once; in a group the user is not in, only notices, at or below their cursor.
fn check_changes(w: &World, uid: &str) {
    let plan =
        |since, limit| plan_changes(w.state(), w.p.index_files(), uid, since, limit, 0).unwrap();
    let all = plan(0, usize::MAX);
    assert!(!all.has_more);
    let (mut paged, mut since) = (Vec::new(), 0);
    loop {
        let page = plan(since, 1);
        assert!(page.changes.len() <= 1 && page.version >= since, "{uid}");
        paged.extend(page.changes);
        since = page.version;
        if !page.has_more {
            break;
        }
    }
    assert_eq!((&paged, since), (&all.changes, all.version), "{uid}");
    let mut seen = std::collections::BTreeSet::new();
    for c in &all.changes {
        assert!(seen.insert((c.channel(), c.seq())), "{uid}: {c:?} twice");
        if !w.state().subs.is_member(c.channel(), uid) {
            let cur = w.state().cursors.get(uid, c.channel());
            assert!(
                matches!(c, Change::Notice { .. }) && c.seq() <= cur.delivered.max(cur.read),
                "{uid}: {c:?} {cur:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn live_rebuilt_and_snapshot_plus_replay_agree(
        actions in prop::collection::vec(action(), 1..80),
        snap_at in any::<prop::sample::Index>(),
    ) {
        let snap_at = snap_at.index(actions.len());
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(actions, snap_at));
    }
}
