//! The event model: one CBOR-encoded [`Envelope`] per log record.
//!
//! The encoding is the on-disk format: `projections/tests/golden/` holds encoded events of every
//! kind that a test decodes, so the format cannot change by accident. Add new variants at the
//! end; never rename or reorder fields of existing ones. The serde derives define the format
//! (the reference codec); `codec.rs` is a hand-written codec of the same bytes for the hot
//! paths, and a new variant or field must be added to both (the property tests in
//! `tests/events.rs` compare them).
//!
//! A field added to an existing variant is an `Option` left out of the encoding when `None`
//! (`#[serde(default, skip_serializing_if = "Option::is_none")]`): events written before it
//! keep their bytes and decode as `None`, so the envelope version stays; and a build from
//! before the field still reads an event that has it (serde skips unknown fields; its
//! hand-written decoder hands such an event to the reference), without its meaning. So far:
//! `ConversationHidden::up_to_seq` (2026-11-30), `TokenSet::expires_at_ms` (2026-11-30).
//!
//! A message's `flags` carry [`FLAG_JSON_PAYLOAD`] and [`FLAG_PURGED`]; the other bits are
//! reserved. [`FLAG_PURGED`] marks a send or an edit whose payload `tidings compact` replaced
//! with zeros of the same length (the payload of a recalled message, which nothing serves
//! again): the record keeps its length, so its segment's batch lengths, byte positions and
//! index files stay valid. The flags are a CBOR integer (one byte while below 24), and setting
//! bit 1 never moves them across a head-length boundary (24, 256, 2^16 and 2^32 are multiples
//! of 4, and the two values just below each have bit 1 set already), so the encoding keeps the
//! original's length. The projections ignore the bit (`State::apply` masks it): a purged log
//! rebuilds into the state the original gave. A build from before the bit reads a purged
//! record as a message whose payload is zeros (never served: the message is recalled).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{ProjectionError, Result};
use crate::ids::{ChannelId, Uid};

/// Message flag: the payload is a JSON document (the API returns it as JSON, not base64).
pub const FLAG_JSON_PAYLOAD: u32 = 1;

/// Message flag: the payload was purged — replaced by zeros of the same length, by `tidings
/// compact`, in a send or an edit of a recalled message (see the module doc). The other flags
/// are the original's. Ignored by the projections; `tidings replay` and `GET /v1/log` show
/// `"purged": true` instead of the zeros.
pub const FLAG_PURGED: u32 = 1 << 1;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 4096]);
}

/// The envelope version this build writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

/// One log record: a versioned, timestamped event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version ([`ENVELOPE_VERSION`]).
    pub v: u8,
    /// When the server accepted the action (ms since the Unix epoch).
    pub ts: u64,
    /// What happened.
    pub event: Event,
}

/// A channel's moderation flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChannelFlags {
    /// Nobody may send or read.
    pub ban: bool,
    /// Nobody but the app server (admin) may send.
    pub send_ban: bool,
    /// The channel is dissolved: no sends, members kept for history.
    pub disband: bool,
}

/// Which list an allow/deny change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListKind {
    /// Only listed users may send (when the list is non-empty / enabled).
    Allow,
    /// Listed users may not send.
    Deny,
}

/// Whose list it is: a group channel's, or a user's own (for person channels).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListOwner {
    /// A group channel's list.
    Channel(ChannelId),
    /// A user's list, applied to person channels with that user.
    User(Uid),
}

/// How a list changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListOp {
    /// Add the uids.
    Add,
    /// Remove the uids.
    Remove,
    /// Replace the list with the uids.
    Set,
}

/// One user's cursor move inside a [`Event::CursorBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorUpdate {
    /// The user.
    pub uid: Uid,
    /// Everything up to this seq was delivered.
    pub delivered_seq: Option<u64>,
    /// Everything up to this seq was read.
    pub read_seq: Option<u64>,
}

/// Everything that can happen, as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A user token was issued; only its SHA-256 is stored.
    TokenSet {
        /// The user.
        uid: Uid,
        /// SHA-256 of the token.
        token_hash: Bytes,
        /// When the token expires (ms since the Unix epoch): it authenticates nothing from
        /// then on. `None` — the field absent, as in every event written before 2026-11-30 —
        /// never expires. Absent rather than `null` when `None`, so such an event keeps the
        /// old two-field encoding; a build from before the field reads a new event too (serde
        /// skips the unknown field) and takes the token as one that never expires.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
    },
    /// All of a user's tokens were revoked.
    TokensRevoked {
        /// The user.
        uid: Uid,
    },
    /// A group channel was created.
    ChannelCreated {
        /// The channel.
        channel: ChannelId,
        /// Its flags.
        flags: ChannelFlags,
    },
    /// A group channel's flags changed.
    ChannelUpdated {
        /// The channel.
        channel: ChannelId,
        /// The new flags.
        flags: ChannelFlags,
    },
    /// A group channel was deleted (its seqs are never reused).
    ChannelDeleted {
        /// The channel.
        channel: ChannelId,
    },
    /// Users joined a group channel.
    MembersSubscribed {
        /// The channel.
        channel: ChannelId,
        /// Who joined.
        uids: Vec<Uid>,
    },
    /// Users left a group channel.
    MembersUnsubscribed {
        /// The channel.
        channel: ChannelId,
        /// Who left.
        uids: Vec<Uid>,
    },
    /// An allowlist or denylist changed.
    ListChanged {
        /// Whose list.
        owner: ListOwner,
        /// Which list.
        list: ListKind,
        /// How.
        op: ListOp,
        /// The users.
        uids: Vec<Uid>,
    },
    /// A message was sent.
    MessageSent {
        /// The channel (canonical id).
        channel: ChannelId,
        /// The sender.
        from: Uid,
        /// The client's id for the send (makes retries idempotent).
        client_msg_id: String,
        /// The message's seq in the channel (from 1, gapless).
        seq: u64,
        /// The server's message id (unique over the server).
        message_id: u64,
        /// The message body.
        payload: Bytes,
        /// Message options: [`FLAG_JSON_PAYLOAD`], [`FLAG_PURGED`]; other bits reserved.
        flags: u32,
    },
    /// A message was recalled: its payload is no longer served.
    MessageRecalled {
        /// The channel.
        channel: ChannelId,
        /// The message's seq.
        seq: u64,
        /// Who recalled it: the sender's uid, or `:admin` for the admin key (no uid has a
        /// colon; events written before 2026-11-30 say `admin`).
        by: Uid,
    },
    /// A message's payload was replaced.
    MessageEdited {
        /// The channel.
        channel: ChannelId,
        /// The message's seq.
        seq: u64,
        /// Who edited it.
        by: Uid,
        /// The new body.
        payload: Bytes,
        /// Options of the new body: [`FLAG_JSON_PAYLOAD`], [`FLAG_PURGED`]; other bits
        /// reserved.
        flags: u32,
    },
    /// A user's cursors in a channel moved forward (cumulative, coalesced acks).
    CursorAdvanced {
        /// The user.
        uid: Uid,
        /// The channel.
        channel: ChannelId,
        /// Everything up to this seq was delivered.
        delivered_seq: Option<u64>,
        /// Everything up to this seq was read.
        read_seq: Option<u64>,
    },
    /// Many users' cursors in one channel moved forward: the coalesced acks of a window, one
    /// event per channel however many members acked.
    CursorBatch {
        /// The channel.
        channel: ChannelId,
        /// The users' new positions.
        cursors: Vec<CursorUpdate>,
    },
    /// A user hid a conversation (it returns with the next message after the hide).
    ConversationHidden {
        /// The user.
        uid: Uid,
        /// The channel.
        channel: ChannelId,
        /// Hidden while the channel's last seq is at most this: the seq the user hid it as of
        /// (the one their client showed, or the head when the server took the request). A
        /// message sequenced after it keeps the conversation listed, even one applied before
        /// this event. `None` — the field absent, as in every event written before
        /// 2026-11-30 — is the channel's last seq when the event is applied. Absent rather
        /// than `null` when `None`, so such an event keeps the old two-field encoding; a build
        /// from before the field reads a new event too (serde skips the unknown field) and
        /// applies it by the old rule.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        up_to_seq: Option<u64>,
    },
    /// A user cleared a conversation up to a seq (those messages are no longer listed for them).
    ConversationCleared {
        /// The user.
        uid: Uid,
        /// The channel.
        channel: ChannelId,
        /// Cleared up to and including this seq.
        up_to_seq: u64,
    },
    /// One of a user's tokens was revoked (a lost device, a logout); their others stay valid.
    /// Revokes nothing when the token is not the user's.
    TokenRevoked {
        /// The user.
        uid: Uid,
        /// SHA-256 of the token.
        token_hash: Bytes,
    },
    /// The retention removed the log's segments below `start`: the messages sent below it have
    /// expired. Written by the server after each removal (from 2026-11-30), so that a change
    /// the removal made to what is read — unread counts that now leave expired messages out —
    /// has an offset: a conversation whose count it cut is listed again to incremental
    /// conversation lists, as of this event (`State::trimmed`). A build from before it cannot
    /// read a log that holds one.
    LogTrimmed {
        /// The log's first offset after the removal.
        start: u64,
    },
}

impl Event {
    /// The event's kind as a short snake_case name.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::TokenSet { .. } => "token_set",
            Event::TokensRevoked { .. } => "tokens_revoked",
            Event::ChannelCreated { .. } => "channel_created",
            Event::ChannelUpdated { .. } => "channel_updated",
            Event::ChannelDeleted { .. } => "channel_deleted",
            Event::MembersSubscribed { .. } => "members_subscribed",
            Event::MembersUnsubscribed { .. } => "members_unsubscribed",
            Event::ListChanged { .. } => "list_changed",
            Event::MessageSent { .. } => "message_sent",
            Event::MessageRecalled { .. } => "message_recalled",
            Event::MessageEdited { .. } => "message_edited",
            Event::CursorAdvanced { .. } => "cursor_advanced",
            Event::CursorBatch { .. } => "cursor_batch",
            Event::ConversationHidden { .. } => "conversation_hidden",
            Event::ConversationCleared { .. } => "conversation_cleared",
            Event::TokenRevoked { .. } => "token_revoked",
            Event::LogTrimmed { .. } => "log_trimmed",
        }
    }

    /// Bytes of message payload the event carries (a hint for buffer sizes).
    fn payload_len(&self) -> usize {
        match self {
            Event::MessageSent { payload, .. } | Event::MessageEdited { payload, .. } => {
                payload.len()
            }
            _ => 0,
        }
    }

    /// Bytes of the names a send carries (a hint for buffer sizes).
    fn names_len(&self) -> usize {
        match self {
            Event::MessageSent {
                channel,
                from,
                client_msg_id,
                ..
            } => channel.len() + from.len() + client_msg_id.len(),
            _ => 0,
        }
    }

    /// The channel the event is about, if any.
    pub fn channel(&self) -> Option<&str> {
        match self {
            Event::ChannelCreated { channel, .. }
            | Event::ChannelUpdated { channel, .. }
            | Event::ChannelDeleted { channel }
            | Event::MembersSubscribed { channel, .. }
            | Event::MembersUnsubscribed { channel, .. }
            | Event::MessageSent { channel, .. }
            | Event::MessageRecalled { channel, .. }
            | Event::MessageEdited { channel, .. }
            | Event::CursorAdvanced { channel, .. }
            | Event::CursorBatch { channel, .. }
            | Event::ConversationHidden { channel, .. }
            | Event::ConversationCleared { channel, .. } => Some(channel),
            Event::ListChanged {
                owner: ListOwner::Channel(channel),
                ..
            } => Some(channel),
            _ => None,
        }
    }
}

impl Envelope {
    /// This envelope as a purge leaves it (`tidings compact`, the server's background purge): a
    /// send's or an edit's payload replaced by zeros of its length, [`FLAG_PURGED`] set (its
    /// encoding keeps the original's length: the module doc). `None` for any other event.
    pub fn purged(&self) -> Option<Envelope> {
        let mut out = self.clone();
        match &mut out.event {
            Event::MessageSent { payload, flags, .. }
            | Event::MessageEdited { payload, flags, .. } => {
                *payload = Bytes::from(vec![0; payload.len()]);
                *flags |= FLAG_PURGED;
            }
            _ => return None,
        }
        Some(out)
    }

    /// An envelope of the current version.
    pub fn new(ts: u64, event: Event) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            ts,
            event,
        }
    }

    /// The CBOR encoding stored in the log (the hand-written codec in `codec.rs`; the same
    /// bytes as [`Envelope::encode_reference`]).
    pub fn encode(&self) -> Bytes {
        // Field names and fixed-size fields fit in 96 bytes; the ids and names of a send
        // (channel, sender, client message id) need room too, or the buffer grows mid-encode.
        let mut buf = Vec::with_capacity(96 + self.event.payload_len() + self.event.names_len());
        crate::codec::encode(self, &mut buf);
        Bytes::from(buf)
    }

    /// Decodes the record at `offset`. Never panics: anything that is not a version-1 envelope
    /// is a typed error naming the offset.
    ///
    /// The hand-written decoder reads the form the encoder writes; anything else (an
    /// unusual-but-valid encoding, or garbage) goes to [`Envelope::decode_reference`], which
    /// accepts it or names what is wrong.
    pub fn decode(offset: u64, bytes: &[u8]) -> Result<Envelope> {
        let env = match crate::codec::decode(bytes) {
            Some(env) => env,
            None => return Self::decode_reference(offset, bytes),
        };
        if env.v != ENVELOPE_VERSION {
            return Err(ProjectionError::UnsupportedVersion {
                offset,
                version: env.v,
            });
        }
        Ok(env)
    }

    /// The serde + ciborium encoding: the reference the hand-written codec is checked against.
    #[doc(hidden)]
    pub fn encode_reference(&self) -> Bytes {
        let mut buf = Vec::with_capacity(128);
        // Writing into a Vec cannot fail, and every field type serializes.
        if let Err(e) = ciborium::into_writer(self, &mut buf) {
            unreachable!("encoding an envelope into memory failed: {e}");
        }
        Bytes::from(buf)
    }

    /// The serde + ciborium decoder: the reference the hand-written codec is checked against,
    /// and the fallback for encodings the hand-written decoder does not read.
    #[doc(hidden)]
    pub fn decode_reference(offset: u64, bytes: &[u8]) -> Result<Envelope> {
        let mut rest = bytes;
        // ciborium's `from_reader` zero-fills a 4 KiB scratch buffer on every call; reuse one
        // per thread instead.
        let env: std::result::Result<Envelope, _> = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            ciborium::de::from_reader_with_buffer(&mut rest, &mut scratch[..])
        });
        let env = env.map_err(|e| ProjectionError::Decode {
            offset,
            reason: e.to_string(),
        })?;
        if !rest.is_empty() {
            return Err(ProjectionError::Decode {
                offset,
                reason: format!("{} bytes after the envelope", rest.len()),
            });
        }
        if env.v != ENVELOPE_VERSION {
            return Err(ProjectionError::UnsupportedVersion {
                offset,
                version: env.v,
            });
        }
        Ok(env)
    }
}
