//! Conversations in read mode: exact unread counts (own messages and recalled ones not counted,
//! the read cursor never moves back, two devices of one user agree), ordering, incremental
//! sync, and the per-user cache that is never the source of truth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::World;
use tidings_projections::Event;
use tidings_projections::conv_cache::{
    ConversationCache, ConversationCacheConfig, UNTRUSTED, fingerprint,
};
use tidings_projections::conversations::{compute, conversations};
use tidings_projections::ids::person_channel;

fn unread(w: &World, uid: &str, channel: &str) -> u64 {
    compute(w.state(), uid)
        .into_iter()
        .find(|c| c.channel == channel)
        .map_or(0, |c| c.unread)
}

async fn group(w: &mut World) {
    w.create("g").await;
    w.subscribe("g", &["alice", "bob", "carol"]).await;
}

#[tokio::test]
async fn own_messages_are_never_unread() {
    let mut w = World::new().await;
    group(&mut w).await;
    for i in 0..3 {
        w.send("alice", "g", &format!("a{i}")).await.unwrap();
    }
    assert_eq!(unread(&w, "alice", "g"), 0);
    assert_eq!(unread(&w, "bob", "g"), 3);
    w.send("bob", "g", "b0").await.unwrap();
    // Sending marks the sender's view read (as in most IM apps).
    assert_eq!(unread(&w, "bob", "g"), 0);
    assert_eq!(unread(&w, "alice", "g"), 1);
    assert_eq!(unread(&w, "carol", "g"), 4);
}

#[tokio::test]
async fn recalled_messages_are_not_counted() {
    let mut w = World::new().await;
    group(&mut w).await;
    for i in 0..5 {
        w.send("alice", "g", &format!("a{i}")).await.unwrap();
    }
    w.ack("bob", "g", None, Some(2)).await;
    assert_eq!(unread(&w, "bob", "g"), 3);
    w.recall("g", 4, "alice").await; // unread for bob
    assert_eq!(unread(&w, "bob", "g"), 2);
    w.recall("g", 1, "alice").await; // already read by bob: no change
    assert_eq!(unread(&w, "bob", "g"), 2);
    assert_eq!(unread(&w, "carol", "g"), 3);
    // The head shows the recall when the last message is recalled.
    w.recall("g", 5, "alice").await;
    let conv = compute(w.state(), "carol")
        .into_iter()
        .find(|c| c.channel == "g")
        .unwrap();
    assert_eq!(conv.unread, 2);
    assert!(conv.last_message.unwrap().recalled);
}

#[tokio::test]
async fn the_read_cursor_never_moves_back() {
    let mut w = World::new().await;
    group(&mut w).await;
    for i in 0..6 {
        w.send("alice", "g", &format!("a{i}")).await.unwrap();
    }
    w.ack("bob", "g", None, Some(5)).await;
    assert_eq!(unread(&w, "bob", "g"), 1);
    w.ack("bob", "g", None, Some(2)).await;
    w.ack("bob", "g", Some(1), None).await;
    assert_eq!(unread(&w, "bob", "g"), 1);
    let c = w.state().cursors.get("bob", "g");
    assert_eq!(
        (c.read, c.delivered),
        (5, 5),
        "reading implies delivery, and nothing moves back"
    );
}

/// A cursor move, hide or clear of a user no longer a member, written after their removal
/// (an ack window flushed after it, a request checked before it), changes nothing of theirs;
/// a member's move in the same batch is applied; a replay from zero agrees. Until 2026-12-03
/// each was applied, and the cursor of a user out of the group kept for good.
#[tokio::test]
async fn cursor_moves_of_a_user_removed_before_them_are_not_applied() {
    let mut w = World::new().await;
    group(&mut w).await;
    for i in 0..3 {
        w.send("alice", "g", &format!("a{i}")).await.unwrap();
    }
    w.ack("bob", "g", Some(1), Some(1)).await;
    w.unsubscribe("g", &["bob"]).await;
    let before = w.state().cursors.get("bob", "g");
    w.emit(Event::CursorBatch {
        channel: "g".into(),
        cursors: ["bob", "carol"]
            .map(|uid| tidings_projections::CursorUpdate {
                uid: uid.into(),
                delivered_seq: Some(3),
                read_seq: Some(3),
            })
            .to_vec(),
    })
    .await;
    w.ack("bob", "g", Some(2), Some(2)).await;
    w.emit(Event::ConversationHidden {
        uid: "bob".into(),
        channel: "g".into(),
        up_to_seq: Some(3),
    })
    .await;
    w.emit(Event::ConversationCleared {
        uid: "bob".into(),
        channel: "g".into(),
        up_to_seq: 3,
    })
    .await;
    assert_eq!(w.state().cursors.get("bob", "g"), before);
    assert_eq!(before.read, 1);
    assert_eq!(w.state().cursors.get("carol", "g").read, 3);
    assert_eq!(&w.rebuild().await, w.state());
}

#[tokio::test]
async fn two_devices_of_one_user_agree() {
    let mut w = World::new().await;
    group(&mut w).await;
    let p = person_channel("alice", "bob");
    for i in 0..4 {
        w.send("alice", "g", &format!("g{i}")).await.unwrap();
        w.send("alice", &p, &format!("p{i}")).await.unwrap();
    }
    // Device A reads the group; device B then lists conversations: both see the same state,
    // because cursors are per user, not per device.
    w.ack("bob", "g", None, Some(4)).await;
    let device_a = conversations(w.state(), "bob", None, 50);
    let device_b = conversations(w.state(), "bob", None, 50);
    assert_eq!(device_a, device_b);
    let g = device_b
        .conversations
        .iter()
        .find(|c| c.channel == "g")
        .unwrap();
    let pc = device_b
        .conversations
        .iter()
        .find(|c| c.channel == p)
        .unwrap();
    assert_eq!((g.unread, pc.unread), (0, 4));
}

#[tokio::test]
async fn ordered_by_last_activity_with_incremental_sync_and_removals() {
    let mut w = World::new().await;
    for ch in ["a", "b", "c"] {
        w.create(ch).await;
        w.subscribe(ch, &["alice", "bob"]).await;
    }
    w.send("alice", "a", "1").await.unwrap();
    w.send("alice", "b", "2").await.unwrap();
    w.send("alice", "c", "3").await.unwrap();
    w.send("alice", "a", "4").await.unwrap();
    let full = conversations(w.state(), "bob", None, 50);
    let order: Vec<_> = full
        .conversations
        .iter()
        .map(|c| c.channel.as_str())
        .collect();
    assert_eq!(order, ["a", "c", "b"]);
    let v = full.version;
    // Nothing changed: the incremental form is empty.
    let inc = conversations(w.state(), "bob", Some(v), 50);
    assert!(inc.conversations.is_empty() && inc.removed.is_empty());
    // One new message, one read, one removal.
    w.send("alice", "b", "5").await.unwrap();
    w.unsubscribe("c", &["bob"]).await;
    let inc = conversations(w.state(), "bob", Some(v), 50);
    assert_eq!(
        inc.conversations
            .iter()
            .map(|c| c.channel.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(inc.removed, vec!["c".to_string()]);
    // Limit and has_more.
    let page = conversations(w.state(), "bob", None, 1);
    assert_eq!(page.conversations.len(), 1);
    assert!(page.has_more);
    // Hidden until the next message.
    w.emit(Event::ConversationHidden {
        uid: "bob".into(),
        channel: "a".into(),
        up_to_seq: Some(2),
    })
    .await;
    assert!(!compute(w.state(), "bob").iter().any(|c| c.channel == "a"));
    w.send("alice", "a", "6").await.unwrap();
    assert!(compute(w.state(), "bob").iter().any(|c| c.channel == "a"));
}

/// Conversations hidden since a version come back in `removed` in channel order, not in the
/// order of a hash map (which differs between processes, and between a live and a restored
/// state).
#[tokio::test]
async fn removed_conversations_are_listed_in_channel_order() {
    let mut w = World::new().await;
    let channels = ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"];
    for ch in channels {
        w.create(ch).await;
        w.subscribe(ch, &["alice", "bob"]).await;
        w.send("alice", ch, "x").await.unwrap();
    }
    let v = conversations(w.state(), "bob", None, 50).version;
    for ch in channels.iter().rev() {
        w.emit(Event::ConversationHidden {
            uid: "bob".into(),
            channel: (*ch).into(),
            up_to_seq: Some(1),
        })
        .await;
    }
    let inc = conversations(w.state(), "bob", Some(v), 50);
    assert_eq!(inc.removed, channels.map(String::from).to_vec());
}

fn shown(w: &World, uid: &str, channel: &str) -> bool {
    compute(w.state(), uid).iter().any(|c| c.channel == channel)
}

async fn hide(w: &mut World, uid: &str, channel: &str, up_to_seq: Option<u64>) {
    w.emit(Event::ConversationHidden {
        uid: uid.into(),
        channel: channel.into(),
        up_to_seq,
    })
    .await;
}

/// A hide carries the seq it was made as of: a message sequenced after it keeps the
/// conversation listed, even one applied before the hide (the user never saw it; with the head
/// read at apply time it stayed hidden, unread, until the next message). A seq past the head
/// is taken as the head. A hide without one (every event written before the field) hides as of
/// the head when it is applied, as it always did.
#[tokio::test]
async fn a_hide_as_of_a_seq_never_covers_a_later_message() {
    let mut w = World::new().await;
    group(&mut w).await;
    w.send("alice", "g", "a1").await.unwrap();
    let v = conversations(w.state(), "bob", None, 50).version;
    // Bob hides g as of 1, while message 2 is sequenced and applied before his hide.
    w.send("alice", "g", "a2").await.unwrap();
    hide(&mut w, "bob", "g", Some(1)).await;
    let g = compute(w.state(), "bob")
        .into_iter()
        .find(|c| c.channel == "g")
        .expect("message 2 keeps g listed");
    assert_eq!((g.last_seq, g.unread), (2, 2));
    let inc = conversations(w.state(), "bob", Some(v), 50);
    assert!(inc.removed.is_empty(), "{inc:?}");
    assert_eq!(&w.rebuild().await, w.state(), "the rule holds on replay");

    // As of the head: hidden until the next message.
    hide(&mut w, "bob", "g", Some(2)).await;
    assert!(!shown(&w, "bob", "g"));
    w.send("alice", "g", "a3").await.unwrap();
    assert!(shown(&w, "bob", "g"));
    // Past the head: as of the head, so the next message still brings it back.
    hide(&mut w, "bob", "g", Some(99)).await;
    assert!(!shown(&w, "bob", "g"));
    w.send("alice", "g", "a4").await.unwrap();
    assert!(shown(&w, "bob", "g"));
    // No seq (an older event): as of the head when applied, message 4 included.
    hide(&mut w, "bob", "g", None).await;
    assert!(!shown(&w, "bob", "g"));
    assert_eq!(w.state().cursors.get("bob", "g").hidden_at, Some(4));
    w.send("alice", "g", "a5").await.unwrap();
    assert!(shown(&w, "bob", "g"));
    // Bob's hides are his: carol's list always had g.
    assert!(shown(&w, "carol", "g"));
    assert_eq!(&w.rebuild().await, w.state());

    // Two devices hiding at once, the one read earlier (as of 4) applied last: still hidden
    // as of 5, until the next message.
    hide(&mut w, "bob", "g", Some(5)).await;
    hide(&mut w, "bob", "g", Some(4)).await;
    assert!(!shown(&w, "bob", "g"));
    assert_eq!(w.state().cursors.get("bob", "g").hidden_at, Some(5));
    w.send("alice", "g", "a6").await.unwrap();
    assert!(shown(&w, "bob", "g"));
    // Bob's own send clears his hide: a hide as of an earlier seq then counts alone.
    hide(&mut w, "bob", "g", Some(6)).await;
    w.send("bob", "g", "b7").await.unwrap();
    hide(&mut w, "bob", "g", Some(6)).await;
    assert!(shown(&w, "bob", "g"));
    assert_eq!(&w.rebuild().await, w.state());
}

#[tokio::test]
async fn a_send_to_a_large_group_writes_one_event() {
    let mut w = World::new().await;
    w.create("big").await;
    let members: Vec<String> = (0..5000).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    w.subscribe("big", &refs).await;
    let before = w.log.next_offset();
    w.send("u0", "big", "hello").await.unwrap();
    assert_eq!(
        w.log.next_offset() - before,
        1,
        "read mode: one event per send"
    );
    assert_eq!(unread(&w, "u4999", "big"), 1);
}

#[tokio::test]
async fn the_cache_is_used_when_valid_and_never_trusted_when_not() {
    let mut w = World::new().await;
    group(&mut w).await;
    w.send("alice", "g", "1").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConversationCacheConfig {
        memory_bytes: 1 << 20,
        disk_bytes: 16 << 20,
        recover: true,
    };
    let cache = ConversationCache::open(dir.path(), &cfg).await.unwrap();

    let fp = fingerprint(w.state(), "bob");
    assert!(cache.get("bob", fp).await.is_none());
    let list = compute(w.state(), "bob");
    cache.put("bob", fp, &list);
    assert_eq!(cache.get("bob", fp).await.unwrap(), list);

    // A new message changes the fingerprint: the stale entry is not served.
    w.send("alice", "g", "2").await.unwrap();
    let fp2 = fingerprint(w.state(), "bob");
    assert_ne!(fp, fp2);
    assert!(cache.get("bob", fp2).await.is_none());
    // So does a read by bob, and a membership change.
    w.ack("bob", "g", None, Some(2)).await;
    assert_ne!(fingerprint(w.state(), "bob"), fp2);
    let fp3 = fingerprint(w.state(), "bob");
    w.create("h").await;
    w.subscribe("h", &["bob"]).await;
    assert_ne!(fingerprint(w.state(), "bob"), fp3);
    // Another user's read does not invalidate bob's entry.
    let fp4 = fingerprint(w.state(), "bob");
    w.ack("carol", "g", None, Some(1)).await;
    assert_eq!(fingerprint(w.state(), "bob"), fp4);
    let (hits, misses) = cache.stats();
    assert_eq!((hits, misses), (1, 2));

    // Entries reach the disk on close and are found again after reopening.
    let list = compute(w.state(), "bob");
    cache.put("bob", fp4, &list);
    cache.close().await.unwrap();
    drop(cache);
    let cache = ConversationCache::open(dir.path(), &cfg).await.unwrap();
    assert_eq!(cache.get("bob", fp4).await, Some(list.clone()));
    cache.close().await.unwrap();
    drop(cache);
    // Unless told not to (a log that may lose applied events in a power cut).
    let forgetful = ConversationCacheConfig {
        recover: false,
        ..cfg.clone()
    };
    let cache = ConversationCache::open(dir.path(), &forgetful)
        .await
        .unwrap();
    assert_eq!(cache.get("bob", fp4).await, None);
    cache.put("bob", fp4, &list);
    cache.close().await.unwrap();
    drop(cache);
    // Nor by the next open that may recover: that run left its directory marked. Its own
    // list, then, is the one on disk.
    let cache = ConversationCache::open(dir.path(), &cfg).await.unwrap();
    assert_eq!(cache.get("bob", fp4).await, None);
    cache.put("bob", fp4, &list);
    cache.close().await.unwrap();
    drop(cache);

    // Damage every byte past the first block header region: nothing wrong is ever served.
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let f = f.unwrap().path();
        let mut bytes = std::fs::read(&f).unwrap();
        for b in bytes.iter_mut().skip(64) {
            *b ^= 0x5a;
        }
        std::fs::write(&f, bytes).unwrap();
    }
    let cache = ConversationCache::open(dir.path(), &cfg).await.unwrap();
    assert_eq!(cache.get("bob", fp4).await, None);
    cache.close().await.unwrap();
}

/// A cache opened without recovery (the log's last run may have lost applied events) leaves
/// nothing for a later open to recover. `RecoverMode::None` alone only skipped the scan: the
/// lists stayed in the blocks that run did not overwrite, and the next start under
/// `fsync = always` found them again.
#[tokio::test]
async fn lists_not_recovered_once_are_never_recovered_later() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConversationCacheConfig {
        memory_bytes: 1 << 20,
        disk_bytes: 16 << 20,
        recover: true,
    };
    let forgetful = ConversationCacheConfig {
        recover: false,
        ..cfg.clone()
    };
    let cache = ConversationCache::open(dir.path(), &cfg).await.unwrap();
    cache.put("bob", 7, &[]);
    cache.close().await.unwrap();
    drop(cache);
    let cache = ConversationCache::open(dir.path(), &cfg).await.unwrap();
    assert_eq!(cache.get("bob", 7).await, Some(vec![]), "on disk");
    cache.close().await.unwrap();
    drop(cache);
    let cache = ConversationCache::open(dir.path(), &forgetful)
        .await
        .unwrap();
    assert_eq!(cache.get("bob", 7).await, None);
    cache.close().await.unwrap();
    drop(cache);
    let cache = ConversationCache::open(dir.path(), &cfg).await.unwrap();
    assert_eq!(cache.get("bob", 7).await, None, "found again");
    cache.close().await.unwrap();
}

/// The doubt about the lists on disk outlives the run that had it. Lists written by a run
/// opened without recovery are not reused by the next open that may recover (before, foyer
/// found them: the server's start after a `tidings rebuild`, or after a start that failed
/// before its cache opened, reused the lists of a run under `fsync = never`), nor are lists
/// after `distrust` (which the server calls before it sets snapshots aside). Once an open that
/// may recover has removed them, the lists it writes are reused.
#[tokio::test]
async fn a_distrusted_cache_stays_so_until_an_open_that_recovers_empties_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConversationCacheConfig {
        memory_bytes: 1 << 20,
        disk_bytes: 16 << 20,
        recover: true,
    };
    let forgetful = ConversationCacheConfig {
        recover: false,
        ..cfg.clone()
    };
    let marker = dir.path().join(UNTRUSTED);

    let cache = ConversationCache::open(dir.path(), &forgetful)
        .await
        .unwrap();
    assert!(
        marker.exists(),
        "marked, and not removed with foyer's files"
    );
    cache.put("bob", 7, &[]);
    cache.close().await.unwrap();
    drop(cache);
    let cache = ConversationCache::open(dir.path(), &cfg).await.unwrap();
    assert_eq!(cache.get("bob", 7).await, None, "a forgetful run's list");
    assert!(!marker.exists(), "emptied, so no longer marked");
    cache.put("bob", 7, &[]);
    cache.close().await.unwrap();
    drop(cache);
    let cache = ConversationCache::open(dir.path(), &cfg).await.unwrap();
    assert_eq!(
        cache.get("bob", 7).await,
        Some(vec![]),
        "a trusted run's list"
    );
    cache.close().await.unwrap();
    drop(cache);

    ConversationCache::distrust(dir.path()).unwrap();
    let cache = ConversationCache::open(dir.path(), &cfg).await.unwrap();
    assert_eq!(cache.get("bob", 7).await, None, "found after distrust");
    cache.close().await.unwrap();
    drop(cache);

    // A directory not made yet is made and marked.
    let fresh = dir.path().join("fresh");
    ConversationCache::distrust(&fresh).unwrap();
    assert!(fresh.join(UNTRUSTED).exists());
}

/// A cache reopened smaller keeps only the files it uses: 16 of 16 MiB for 256 MiB, then 8 of
/// 2 MiB for 16 MiB. foyer opens the first 8 and never removes the others, so the disk the
/// larger cache took stayed taken.
#[tokio::test]
async fn a_smaller_cache_leaves_no_files_behind() {
    let dir = tempfile::tempdir().unwrap();
    let files = || std::fs::read_dir(dir.path()).unwrap().count();
    let cfg = |disk_bytes| ConversationCacheConfig {
        memory_bytes: 1 << 20,
        disk_bytes,
        recover: true,
    };
    let cache = ConversationCache::open(dir.path(), &cfg(256 << 20))
        .await
        .unwrap();
    assert_eq!(files(), 16);
    cache.put("bob", 7, &[]);
    cache.close().await.unwrap();
    drop(cache);
    let cache = ConversationCache::open(dir.path(), &cfg(16 << 20))
        .await
        .unwrap();
    assert_eq!(files(), 8);
    cache.close().await.unwrap();
}

#[tokio::test]
async fn paging_with_a_small_limit_reaches_every_conversation_and_ends() {
    let mut w = World::new().await;
    let names = ["a", "b", "c", "d", "e", "f", "g"];
    for ch in names {
        w.create(ch).await;
        w.subscribe(ch, &["alice", "bob"]).await;
        w.send("alice", ch, &format!("hi-{ch}")).await.unwrap();
    }
    // Versions no longer follow activity: reads bump the oldest conversations' versions.
    w.ack("bob", "a", None, Some(1)).await;
    w.ack("bob", "c", None, Some(1)).await;
    let mut seen = std::collections::BTreeSet::new();
    let first = conversations(w.state(), "bob", None, 2);
    assert_eq!(first.conversations.len(), 2);
    assert!(first.has_more);
    seen.extend(first.conversations.iter().map(|c| c.channel.clone()));
    let mut version = first.version;
    let mut calls = 0;
    loop {
        calls += 1;
        assert!(calls < 20, "incremental paging must make progress");
        let page = conversations(w.state(), "bob", Some(version), 2);
        assert!(page.conversations.len() <= 2);
        assert!(page.version >= version, "the version never moves back");
        seen.extend(page.conversations.iter().map(|c| c.channel.clone()));
        version = page.version;
        if !page.has_more {
            break;
        }
    }
    let all: std::collections::BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
    assert_eq!(seen, all, "no conversation is skipped by paging");
    // Caught up: nothing more.
    let rest = conversations(w.state(), "bob", Some(version), 2);
    assert!(rest.conversations.is_empty() && !rest.has_more);
}

fn changes_plan(
    w: &World,
    uid: &str,
    since: u64,
    limit: usize,
) -> tidings_projections::messages::ChangesPlan {
    let files = w.p.index_files();
    tidings_projections::messages::plan_changes(w.state(), files, uid, since, limit, 0).unwrap()
}

fn changes(w: &World, uid: &str, since: u64, limit: usize) -> (Vec<u64>, u64, bool) {
    let plan = changes_plan(w, uid, since, limit);
    let seqs = plan.changes.iter().map(|c| c.seq()).collect();
    (seqs, plan.version, plan.has_more)
}

/// A device that was offline asks what changed since its last version: each recalled or
/// edited message once (at its latest change), pages by `limit`, and the same rules as history
/// (cleared messages, a banned group); the changes survive a rebuild from the log.
#[tokio::test]
async fn changes_since_a_version_name_each_changed_message_once() {
    let mut w = World::new().await;
    group(&mut w).await;
    for i in 0..6 {
        w.send("alice", "g", &format!("a{i}")).await.unwrap();
    }
    let (none, v0, more) = changes(&w, "bob", 0, 10);
    assert!(none.is_empty() && !more);
    assert_eq!(v0, w.state().next_offset());

    w.recall("g", 2, "alice").await;
    w.emit(Event::MessageEdited {
        channel: "g".into(),
        seq: 5,
        by: "alice".into(),
        payload: bytes::Bytes::from_static(b"{\"text\":\"fixed\"}"),
        flags: 1,
    })
    .await;
    w.recall("g", 5, "alice").await; // edited, then recalled: once, as its latest change
    w.recall("g", 2, "alice").await; // a second recall of 2 changes nothing
    w.emit(Event::MessageEdited {
        channel: "g".into(),
        seq: 3,
        by: "alice".into(),
        payload: bytes::Bytes::from_static(b"{\"text\":\"better\"}"),
        flags: 1,
    })
    .await;
    let (seqs, v1, more) = changes(&w, "bob", v0, 10);
    assert_eq!((seqs, more), (vec![2, 5, 3], false));
    assert_eq!(v1, w.state().next_offset());
    assert!(changes(&w, "bob", v1, 10).0.is_empty());
    // Paged: the version of a short page is where the next one starts.
    let (page, v, more) = changes(&w, "bob", v0, 2);
    assert_eq!((page, more), (vec![2, 5], true));
    assert_eq!(changes(&w, "bob", v, 2), (vec![3], v1, false));
    // The loaded messages show the change.
    let plan = changes_plan(&w, "bob", v0, 10);
    let loaded = tidings_projections::messages::load(&w.log, &plan.to_load())
        .await
        .unwrap();
    assert!(loaded[0].recalled && loaded[1].recalled && loaded[2].edited);
    // Not a member: nothing.
    assert!(changes(&w, "dave", 0, 10).0.is_empty());
    // Cleared up to 3: only 5 is left for carol.
    w.emit(Event::ConversationCleared {
        uid: "carol".into(),
        channel: "g".into(),
        up_to_seq: 3,
    })
    .await;
    assert_eq!(changes(&w, "carol", v0, 10).0, vec![5]);
    // The rebuilt state holds the same changes.
    assert_eq!(w.rebuild().await.heads.changes, w.state().heads.changes);
    // A banned group's backlog still reaches its members by sync: so do its changes, and a
    // recall made during the ban (else the version would move past it for good).
    w.flags(
        "g",
        tidings_projections::ChannelFlags {
            ban: true,
            ..Default::default()
        },
    )
    .await;
    w.recall("g", 1, "admin").await;
    assert_eq!(changes(&w, "bob", v0, 10).0, vec![2, 5, 3, 1]);
    // A message changed again moves to its latest change; the list holds it once.
    w.recall("g", 6, "alice").await;
    w.emit(Event::MessageEdited {
        channel: "g".into(),
        seq: 3,
        by: "alice".into(),
        payload: bytes::Bytes::from_static(b"{\"text\":\"best\"}"),
        flags: 1,
    })
    .await;
    assert_eq!(changes(&w, "bob", v0, 10).0, vec![2, 5, 1, 6, 3]);
    assert_eq!(w.state().heads.changes["g"].len(), 5);
    // bob is owed all of them (sync brings them): each comes with its message. One who joins
    // during the ban is owed none: each comes as a notice, without the message.
    assert_eq!(changes_plan(&w, "bob", v0, 10).to_load().len(), 5);
    w.subscribe("g", &["erin"]).await;
    let theirs = changes_plan(&w, "erin", v0, 10);
    assert!(theirs.to_load().is_empty());
    assert_eq!(
        theirs.changes.last(),
        Some(&tidings_projections::messages::Change::Notice {
            channel: "g".into(),
            seq: 3,
            recalled: false,
        })
    );
    assert_eq!(changes(&w, "erin", v0, 10).0, vec![2, 5, 1, 6, 3]);
}

fn notice(channel: &str, seq: u64, recalled: bool) -> tidings_projections::messages::Change {
    tidings_projections::messages::Change::Notice {
        channel: channel.into(),
        seq,
        recalled,
    }
}

/// A user out of a group (removed, or the group deleted) still hears of changes to the
/// messages a device of theirs could hold — at or below their cursor there, which stays when
/// they leave — as notices, merged in log order with their groups' changes and paged the
/// same way. Only the user's current channels were walked: the version moved past such a
/// recall and it was lost for good. Nothing of what was sent after they left, nor of a group
/// created again under the id.
#[tokio::test]
async fn changes_reach_a_user_out_of_the_group_for_what_they_could_hold() {
    let mut w = World::new().await;
    for ch in ["l", "m"] {
        w.create(ch).await;
        w.subscribe(ch, &["alice", "bob"]).await;
    }
    for i in 0..3 {
        w.send("alice", "l", &format!("l{i}")).await.unwrap();
    }
    w.send("alice", "m", "m0").await.unwrap();
    w.ack("bob", "l", Some(2), None).await;
    w.send("bob", "l", "mine").await.unwrap(); // seq 4: bob's own, read but not delivered
    let v0 = w.state().next_offset();
    w.unsubscribe("l", &["bob"]).await;
    w.send("alice", "l", "after").await.unwrap(); // seq 5: sent after bob left
    w.recall("l", 1, "alice").await;
    w.recall("m", 1, "alice").await;
    w.recall("l", 5, "alice").await;
    w.recall("l", 3, "alice").await; // above bob's delivered cursor, below his read one
    w.emit(Event::MessageEdited {
        channel: "l".into(),
        seq: 2,
        by: "alice".into(),
        payload: bytes::Bytes::from_static(b"{\"text\":\"fixed\"}"),
        flags: 1,
    })
    .await;
    w.recall("l", 4, "admin").await;
    let plan = changes_plan(&w, "bob", v0, 10);
    let m1 = plan.changes[1].clone();
    assert_eq!(
        plan.changes,
        vec![
            notice("l", 1, true),
            m1.clone(),
            notice("l", 3, true),
            notice("l", 2, false),
            notice("l", 4, true),
        ]
    );
    assert_eq!((m1.channel(), m1.seq()), ("m", 1));
    assert_eq!(
        plan.to_load().len(),
        1,
        "only m's change comes with its message"
    );
    assert_eq!(
        (plan.version, plan.has_more),
        (w.state().next_offset(), false)
    );
    // Paged one at a time: the same changes, each once; the recall of 5 is passed over.
    let mut since = v0;
    let mut paged = Vec::new();
    loop {
        let page = changes_plan(&w, "bob", since, 1);
        paged.extend(page.changes);
        since = page.version;
        if !page.has_more {
            break;
        }
    }
    assert_eq!((paged, since), (plan.changes.clone(), plan.version));
    // The group deleted: a change made after reaches its former members too. carol, who was
    // never in it, hears of nothing.
    let v1 = w.state().next_offset();
    w.emit(Event::ChannelDeleted {
        channel: "l".into(),
    })
    .await;
    w.emit(Event::MessageEdited {
        channel: "l".into(),
        seq: 2,
        by: "admin".into(),
        payload: bytes::Bytes::from_static(b"{\"text\":\"again\"}"),
        flags: 1,
    })
    .await;
    assert_eq!(
        changes_plan(&w, "bob", v1, 10).changes,
        vec![notice("l", 2, false)]
    );
    assert_eq!(
        changes_plan(&w, "alice", v1, 10).changes,
        vec![notice("l", 2, false)]
    );
    assert!(changes(&w, "carol", 0, 10).0.is_empty());
    // Created again under the id: its members' changes reach none of the earlier group's.
    let v2 = w.state().next_offset();
    w.create("l").await;
    w.subscribe("l", &["zoe"]).await;
    w.send("zoe", "l", "new").await.unwrap(); // seq 6
    w.recall("l", 6, "zoe").await;
    assert_eq!(changes(&w, "zoe", v2, 10).0, vec![6]);
    assert!(changes(&w, "bob", v2, 10).0.is_empty());
    assert!(changes(&w, "alice", v2, 10).0.is_empty());
    // zoe leaves the group created again: out of it, she still hears of what she could hold
    // of it (her recall of 6), never of the earlier group's changes below her join (its
    // recalls of 1, 3, 4 and 5 and the edit of 2), which she never held.
    w.unsubscribe("l", &["zoe"]).await;
    assert_eq!(
        changes_plan(&w, "zoe", 0, 10).changes,
        vec![notice("l", 6, true)]
    );
    assert_eq!(w.rebuild().await.cursors, w.state().cursors);
}

/// A group deleted and created again under its id is listed as a new group is — not at all —
/// until its first message. Its head is the earlier group's: a new member was shown that
/// group's last seq and time (`last_message` null), where a new empty group shows nothing. A
/// member of the earlier group who joins again is told it left the list (the join took it off
/// the removals, and their client may hold the earlier group's entry). From its first message
/// on it is listed with the channel's seqs, which add up with the cursors.
#[tokio::test]
async fn a_recreated_group_is_listed_from_its_first_message() {
    let mut w = World::new().await;
    w.create("d").await;
    w.subscribe("d", &["alice", "bob"]).await;
    w.send("alice", "d", "a1").await.unwrap();
    w.send("alice", "d", "a2").await.unwrap();
    let held = conversations(w.state(), "bob", None, 50);
    assert_eq!(held.conversations.len(), 1);
    w.emit(Event::ChannelDeleted {
        channel: "d".into(),
    })
    .await;
    w.create("d").await;
    w.subscribe("d", &["alice", "bob", "zoe"]).await;
    w.create("e").await;
    w.subscribe("e", &["zoe"]).await;
    assert!(compute(w.state(), "zoe").is_empty());
    assert!(compute(w.state(), "bob").is_empty());
    let inc = conversations(w.state(), "bob", Some(held.version), 50);
    assert!(inc.conversations.is_empty(), "{inc:?}");
    assert_eq!(inc.removed, vec!["d".to_string()]);
    // The first message of the new group.
    w.send("alice", "d", "n1").await.unwrap();
    for uid in ["zoe", "bob"] {
        let list = compute(w.state(), uid);
        assert_eq!(list.len(), 1, "{uid}: {list:?}");
        let d = &list[0];
        assert_eq!(
            (
                d.channel.as_str(),
                d.last_seq,
                d.read_seq,
                d.delivered_seq,
                d.unread
            ),
            ("d", 3, 2, 2, 1),
            "{uid}"
        );
        assert_eq!(d.last_message.as_ref().map(|m| m.seq), Some(3), "{uid}");
        assert_eq!(d.updated_at, w.ts, "{uid}");
    }
    let inc = conversations(w.state(), "bob", Some(held.version), 50);
    assert_eq!(inc.conversations.len(), 1);
    assert!(inc.removed.is_empty(), "{inc:?}");
}

/// A `log_trimmed` event lets go of what is kept of a group a user left (the entry the
/// incremental list's `removed` reads, and their cursor there) once nothing of it can reach
/// them: every message they held there let go by the index and no recall or edit of one still
/// kept. One who held nothing (joined, never acked) goes at once; one holding a message whose
/// recall is still kept stays until a later event lets the recall go; one holding a message
/// the index still has stays. A member's own cursor stays. Live and rebuilt states agree, and a
/// user let go joins again at the head.
#[tokio::test]
async fn a_trim_lets_go_of_groups_left_with_nothing_left_to_tell() {
    let mut w = World::new().await;
    w.create("g").await;
    w.create("k").await;
    w.subscribe("g", &["ann", "bob", "cat", "dan"]).await;
    w.subscribe("k", &["ann", "bob"]).await;
    // The index flushes every 5 entries (`common::config`): seqs 1 to 20 in sidecars.
    for i in 0..12 {
        w.send("ann", "g", &format!("a{i}")).await.unwrap();
    }
    w.ack("bob", "g", Some(12), None).await;
    w.unsubscribe("g", &["bob", "cat"]).await;
    w.unsubscribe("k", &["bob"]).await;
    for i in 12..24 {
        w.send("ann", "g", &format!("a{i}")).await.unwrap();
    }
    w.ack("dan", "g", Some(24), None).await;
    w.unsubscribe("g", &["dan"]).await;
    w.recall("g", 11, "ann").await;
    let recall = w.state().applied.unwrap();

    // The log starts at the recall: it is kept, and so is bob's group g (he held seq 11).
    w.emit(Event::LogTrimmed { start: recall }).await;
    assert_eq!(w.state().index.dropped_through("g"), 20);
    let removed = |w: &World, uid: &str| -> Vec<String> {
        w.state()
            .cursors
            .removed
            .get(uid)
            .map_or_else(Vec::new, |m| m.keys().cloned().collect())
    };
    let has_cursor = |w: &World, uid: &str, ch: &str| {
        w.state()
            .cursors
            .by_user
            .get(uid)
            .is_some_and(|m| m.contains_key(ch))
    };
    assert_eq!(removed(&w, "bob"), ["g"]);
    assert!(has_cursor(&w, "bob", "g") && !has_cursor(&w, "bob", "k"));
    assert!(removed(&w, "cat").is_empty() && !has_cursor(&w, "cat", "g"));
    assert!(!w.state().cursors.by_user.contains_key("cat"));
    // Noted: an incremental list of cat's from before her removal answers the whole list.
    let let_go = |w: &World, uid: &str| w.state().cursors.removals_let_go.get(uid).copied();
    let left = let_go(&w, "cat").unwrap();
    // (bob's group k, left at the next event, went: he held nothing there.)
    assert!(left < recall && let_go(&w, "bob") == Some(left + 1));
    assert!(let_go(&w, "dan").is_none());
    // dan held seq 24 (expired, its entry still in the index's memory), and a recall of one
    // he held is kept.
    assert_eq!(w.state().index.dropped_through("g"), 20);
    assert_eq!(removed(&w, "dan"), ["g"]);
    assert!(has_cursor(&w, "dan", "g") && has_cursor(&w, "ann", "g"));
    let plan =
        tidings_projections::messages::plan_changes(w.state(), w.p.index_files(), "bob", 0, 10, 0)
            .unwrap();
    assert_eq!(plan.changes.len(), 1, "{:?}", plan.changes);

    // Past the recall: it goes, and bob's group with it.
    let next = w.state().next_offset();
    w.emit(Event::LogTrimmed { start: next }).await;
    assert!(removed(&w, "bob").is_empty() && !has_cursor(&w, "bob", "g"));
    assert!(let_go(&w, "bob").unwrap() > left);
    // So does dan's: seq 24 is below the start, though no sidecar holding it went (a small
    // server trims long before its first sidecar is written).
    assert_eq!(w.state().index.dropped_through("g"), 20);
    assert!(removed(&w, "dan").is_empty() && !has_cursor(&w, "dan", "g"));
    assert_eq!(&w.rebuild().await, w.state());

    // Joined again, bob starts at the head.
    w.subscribe("g", &["bob"]).await;
    let cur = w.state().cursors.get("bob", "g");
    assert_eq!((cur.delivered, cur.read, cur.cleared), (24, 24, 0));
}

/// A user who left a group created again under its id before its first message (their cursor
/// cleared at the group's floor, which is its last seq) is let go by a trim past the removal,
/// as is one of a group deleted after it was created again: a clear at the floor hides nothing
/// the floor does not. Until 2026-12-03 `cleared < last` kept both cursors for good. Live and
/// rebuilt states agree, and one who joins again sees no earlier message.
#[tokio::test]
async fn a_trim_lets_go_of_a_recreated_group_left_before_its_first_message() {
    let mut w = World::new().await;
    for ch in ["r", "d"] {
        w.create(ch).await;
        w.subscribe(ch, &["ann"]).await;
        for i in 0..3 {
            w.send("ann", ch, &format!("{ch}{i}")).await.unwrap();
        }
        w.emit(Event::ChannelDeleted { channel: ch.into() }).await;
        w.create(ch).await;
        w.subscribe(ch, &["eve"]).await;
        w.unsubscribe(ch, &["eve"]).await;
    }
    w.emit(Event::ChannelDeleted {
        channel: "d".into(),
    })
    .await;
    assert_eq!(w.state().subs.history_from("r"), 3);
    assert_eq!(w.state().cursors.get("eve", "r").cleared, 3);
    let next = w.state().next_offset();
    w.emit(Event::LogTrimmed { start: next }).await;
    let cursors = &w.state().cursors;
    assert!(
        !cursors.removed.contains_key("eve"),
        "{:?}",
        cursors.removed
    );
    assert!(
        !cursors.by_user.contains_key("eve"),
        "{:?}",
        cursors.by_user.get("eve")
    );
    assert_eq!(&w.rebuild().await, w.state());
    // Joined again: nothing of the earlier group.
    w.subscribe("r", &["eve"]).await;
    assert!(w.sync("eve", 50).await.0.is_empty());
    let list = conversations(w.state(), "eve", None, 50);
    assert!(list.conversations.is_empty(), "{list:?}");
}
