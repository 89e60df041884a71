//! A small in-process driver: validates like the sequencer, appends to a real log, applies.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use tidings_log::{FsyncPolicy, Log, LogOptions};
use tidings_projections::idempotency::SentRef;
use tidings_projections::messages::{self, Message};
use tidings_projections::permissions::{SendDenied, check_send};
use tidings_projections::{
    ChannelFlags, Envelope, Event, ListKind, ListOp, ListOwner, ProjectionConfig, Projections,
    State,
};

pub(crate) struct World {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) log: Log,
    pub(crate) p: Projections,
    pub(crate) person_allowlist: bool,
    pub(crate) ts: u64,
}

pub(crate) fn config() -> ProjectionConfig {
    ProjectionConfig {
        index_flush_entries: 5,
        ..ProjectionConfig::default()
    }
}

impl World {
    pub(crate) async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(
            dir.path().join("log"),
            LogOptions::default()
                .with_fsync(FsyncPolicy::Never)
                .with_segment_bytes(16 << 10),
        )
        .await
        .unwrap();
        let p = Projections::empty(&dir.path().join("projections"), config()).unwrap();
        World {
            dir,
            log,
            p,
            person_allowlist: false,
            ts: 1_700_000_000_000,
        }
    }

    pub(crate) fn state(&self) -> &State {
        &self.p.state
    }

    pub(crate) async fn emit(&mut self, event: Event) -> u64 {
        self.ts += 1;
        let env = Envelope::new(self.ts, event);
        let off = self.log.append_one(env.encode()).await.unwrap();
        self.p.apply(off, &env).unwrap();
        off
    }

    pub(crate) async fn create(&mut self, channel: &str) {
        self.emit(Event::ChannelCreated {
            channel: channel.into(),
            flags: ChannelFlags::default(),
        })
        .await;
    }

    pub(crate) async fn flags(&mut self, channel: &str, flags: ChannelFlags) {
        self.emit(Event::ChannelUpdated {
            channel: channel.into(),
            flags,
        })
        .await;
    }

    pub(crate) async fn subscribe(&mut self, channel: &str, uids: &[&str]) {
        self.emit(Event::MembersSubscribed {
            channel: channel.into(),
            uids: uids.iter().map(|u| u.to_string()).collect(),
        })
        .await;
    }

    pub(crate) async fn unsubscribe(&mut self, channel: &str, uids: &[&str]) {
        self.emit(Event::MembersUnsubscribed {
            channel: channel.into(),
            uids: uids.iter().map(|u| u.to_string()).collect(),
        })
        .await;
    }

    pub(crate) async fn list(
        &mut self,
        owner: ListOwner,
        list: ListKind,
        op: ListOp,
        uids: &[&str],
    ) {
        self.emit(Event::ListChanged {
            owner,
            list,
            op,
            uids: uids.iter().map(|u| u.to_string()).collect(),
        })
        .await;
    }

    /// A send as the sequencer does it: checks, idempotency, next seq, append, apply.
    pub(crate) async fn send(
        &mut self,
        from: &str,
        channel: &str,
        client_msg_id: &str,
    ) -> Result<SentRef, SendDenied> {
        if let Some(prev) = self.p.state.idempotency.get(from, client_msg_id) {
            return Ok(prev.clone());
        }
        check_send(&self.p.state, from, channel, self.person_allowlist, false)?;
        let seq = self.p.state.heads.last_seq(channel) + 1;
        let message_id = self.p.state.heads.next_message_id;
        let payload = Bytes::from(format!("{{\"text\":\"{from} #{seq} in {channel}\"}}"));
        let offset = self
            .emit(Event::MessageSent {
                channel: channel.into(),
                from: from.into(),
                client_msg_id: client_msg_id.into(),
                seq,
                message_id,
                payload,
                flags: 0,
            })
            .await;
        Ok(SentRef {
            channel: channel.into(),
            seq,
            message_id,
            offset,
            ts: self.ts,
        })
    }

    /// Cursor moves as the API does them: clamped to the channel's last seq.
    pub(crate) async fn ack(
        &mut self,
        uid: &str,
        channel: &str,
        delivered: Option<u64>,
        read: Option<u64>,
    ) {
        let last = self.p.state.heads.last_seq(channel);
        self.emit(Event::CursorAdvanced {
            uid: uid.into(),
            channel: channel.into(),
            delivered_seq: delivered.map(|d| d.min(last)),
            read_seq: read.map(|r| r.min(last)),
        })
        .await;
    }

    pub(crate) async fn recall(&mut self, channel: &str, seq: u64, by: &str) {
        self.emit(Event::MessageRecalled {
            channel: channel.into(),
            seq,
            by: by.into(),
        })
        .await;
    }

    pub(crate) async fn sync(&self, uid: &str, limit: usize) -> (Vec<Message>, bool) {
        let (plan, more) =
            messages::plan_sync(&self.p.state, self.p.index_files(), uid, limit).unwrap();
        (messages::load(&self.log, &plan).await.unwrap(), more)
    }

    /// Every message of a channel, through the index.
    pub(crate) async fn history(&self, channel: &str) -> Vec<Message> {
        let plan = messages::plan_range(&self.p.state, self.p.index_files(), channel, 1, u64::MAX)
            .unwrap();
        messages::load(&self.log, &plan).await.unwrap()
    }

    /// The state rebuilt from offset 0 into a fresh directory.
    pub(crate) async fn rebuild(&self) -> State {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Projections::empty(dir.path(), config()).unwrap();
        p.catch_up(&self.log, |_, _| {}).await.unwrap();
        p.state
    }
}
