//! The hand-written CBOR codec of [`Envelope`]: the hot path of every send (encode) and of every
//! rebuild and applier step (decode).
//!
//! The format is the one serde + ciborium produce for the types in [`crate::event`] (the
//! *reference codec*, kept as [`Envelope::encode_reference`] / [`Envelope::decode_reference`]):
//! definite-length maps keyed by field name in declaration order, an externally tagged enum
//! (`{kind: {fields}}`), `null` for `None`, minimal-length integer heads.
//!
//! - [`encode`] writes exactly the reference bytes (a property test compares them, and the
//!   golden file pins them).
//! - [`decode`] reads that form — fields in any order — and returns `None` for anything else
//!   (indefinite lengths, tags, unknown or duplicate or missing fields, trailing bytes, ...).
//!   An optional field the encoder leaves out when `None` (`skip_serializing_if`: so far
//!   `conversation_hidden`'s `up_to_seq` and `token_set`'s `expires_at_ms`) is read present or
//!   absent; a `null` there is "anything else".
//!   The caller then runs the reference decoder, which either accepts the unusual-but-valid
//!   encoding or produces the typed error. So this codec never accepts what the reference
//!   rejects, and never decodes differently (a property test checks both on mutated inputs).
//!
//! Decoding allocates only the owned fields of the event (ids, client message id, payload);
//! it never reads past the input and never panics.

use bytes::Bytes;

use crate::event::{ChannelFlags, CursorUpdate, Envelope, Event, ListKind, ListOp, ListOwner};

const MAJOR_UINT: u8 = 0;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;
const FALSE: u8 = 0xf4;
const TRUE: u8 = 0xf5;
const NULL: u8 = 0xf6;

// ---------------------------------------------------------------------------------------------
// Encoding

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u64::from(u8::MAX) {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn uint(out: &mut Vec<u8>, n: u64) {
    head(out, MAJOR_UINT, n);
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, MAJOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, MAJOR_BYTES, b.len() as u64);
    out.extend_from_slice(b);
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.push(if b { TRUE } else { FALSE });
}

fn opt_uint(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => uint(out, n),
        None => out.push(NULL),
    }
}

fn map(out: &mut Vec<u8>, n: usize) {
    head(out, MAJOR_MAP, n as u64);
}

fn texts(out: &mut Vec<u8>, items: &[String]) {
    head(out, MAJOR_ARRAY, items.len() as u64);
    for s in items {
        text(out, s);
    }
}

fn flags(out: &mut Vec<u8>, f: &ChannelFlags) {
    map(out, 3);
    text(out, "ban");
    boolean(out, f.ban);
    text(out, "send_ban");
    boolean(out, f.send_ban);
    text(out, "disband");
    boolean(out, f.disband);
}

fn list_kind(k: ListKind) -> &'static str {
    match k {
        ListKind::Allow => "allow",
        ListKind::Deny => "deny",
    }
}

fn list_op(op: ListOp) -> &'static str {
    match op {
        ListOp::Add => "add",
        ListOp::Remove => "remove",
        ListOp::Set => "set",
    }
}

/// Appends the encoding of `env` to `out`: byte for byte what the reference codec writes.
pub(crate) fn encode(env: &Envelope, out: &mut Vec<u8>) {
    map(out, 3);
    text(out, "v");
    uint(out, u64::from(env.v));
    text(out, "ts");
    uint(out, env.ts);
    text(out, "event");
    map(out, 1);
    let ev = &env.event;
    text(out, ev.kind());
    match ev {
        Event::TokenSet {
            uid,
            token_hash,
            expires_at_ms,
        } => {
            // `None` is left out (`skip_serializing_if`): the two-field form of tokens issued
            // before expiries existed.
            map(out, if expires_at_ms.is_some() { 3 } else { 2 });
            text(out, "uid");
            text(out, uid);
            text(out, "token_hash");
            bytes(out, token_hash);
            if let Some(at) = expires_at_ms {
                text(out, "expires_at_ms");
                uint(out, *at);
            }
        }
        Event::TokenRevoked { uid, token_hash } => {
            map(out, 2);
            text(out, "uid");
            text(out, uid);
            text(out, "token_hash");
            bytes(out, token_hash);
        }
        Event::TokensRevoked { uid } => {
            map(out, 1);
            text(out, "uid");
            text(out, uid);
        }
        Event::LogTrimmed { start } => {
            map(out, 1);
            text(out, "start");
            uint(out, *start);
        }
        Event::ChannelCreated { channel, flags: f }
        | Event::ChannelUpdated { channel, flags: f } => {
            map(out, 2);
            text(out, "channel");
            text(out, channel);
            text(out, "flags");
            flags(out, f);
        }
        Event::ChannelDeleted { channel } => {
            map(out, 1);
            text(out, "channel");
            text(out, channel);
        }
        Event::MembersSubscribed { channel, uids }
        | Event::MembersUnsubscribed { channel, uids } => {
            map(out, 2);
            text(out, "channel");
            text(out, channel);
            text(out, "uids");
            texts(out, uids);
        }
        Event::ListChanged {
            owner,
            list,
            op,
            uids,
        } => {
            map(out, 4);
            text(out, "owner");
            map(out, 1);
            match owner {
                ListOwner::Channel(c) => {
                    text(out, "channel");
                    text(out, c);
                }
                ListOwner::User(u) => {
                    text(out, "user");
                    text(out, u);
                }
            }
            text(out, "list");
            text(out, list_kind(*list));
            text(out, "op");
            text(out, list_op(*op));
            text(out, "uids");
            texts(out, uids);
        }
        Event::MessageSent {
            channel,
            from,
            client_msg_id,
            seq,
            message_id,
            payload,
            flags,
        } => {
            map(out, 7);
            text(out, "channel");
            text(out, channel);
            text(out, "from");
            text(out, from);
            text(out, "client_msg_id");
            text(out, client_msg_id);
            text(out, "seq");
            uint(out, *seq);
            text(out, "message_id");
            uint(out, *message_id);
            text(out, "payload");
            bytes(out, payload);
            text(out, "flags");
            uint(out, u64::from(*flags));
        }
        Event::MessageRecalled { channel, seq, by } => {
            map(out, 3);
            text(out, "channel");
            text(out, channel);
            text(out, "seq");
            uint(out, *seq);
            text(out, "by");
            text(out, by);
        }
        Event::MessageEdited {
            channel,
            seq,
            by,
            payload,
            flags,
        } => {
            map(out, 5);
            text(out, "channel");
            text(out, channel);
            text(out, "seq");
            uint(out, *seq);
            text(out, "by");
            text(out, by);
            text(out, "payload");
            bytes(out, payload);
            text(out, "flags");
            uint(out, u64::from(*flags));
        }
        Event::CursorAdvanced {
            uid,
            channel,
            delivered_seq,
            read_seq,
        } => {
            map(out, 4);
            text(out, "uid");
            text(out, uid);
            text(out, "channel");
            text(out, channel);
            text(out, "delivered_seq");
            opt_uint(out, *delivered_seq);
            text(out, "read_seq");
            opt_uint(out, *read_seq);
        }
        Event::CursorBatch { channel, cursors } => {
            map(out, 2);
            text(out, "channel");
            text(out, channel);
            text(out, "cursors");
            head(out, MAJOR_ARRAY, cursors.len() as u64);
            for c in cursors {
                map(out, 3);
                text(out, "uid");
                text(out, &c.uid);
                text(out, "delivered_seq");
                opt_uint(out, c.delivered_seq);
                text(out, "read_seq");
                opt_uint(out, c.read_seq);
            }
        }
        Event::ConversationHidden {
            uid,
            channel,
            up_to_seq,
        } => {
            // `None` is left out (`skip_serializing_if`): the two-field form of events written
            // before the field existed.
            map(out, if up_to_seq.is_some() { 3 } else { 2 });
            text(out, "uid");
            text(out, uid);
            text(out, "channel");
            text(out, channel);
            if let Some(seq) = up_to_seq {
                text(out, "up_to_seq");
                uint(out, *seq);
            }
        }
        Event::ConversationCleared {
            uid,
            channel,
            up_to_seq,
        } => {
            map(out, 3);
            text(out, "uid");
            text(out, uid);
            text(out, "channel");
            text(out, channel);
            text(out, "up_to_seq");
            uint(out, *up_to_seq);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// The most items a decoder reserves room for before it has read them.
const MAX_RESERVED_ITEMS: usize = 1024;

/// A cursor over the input. Every method returns `None` on anything outside the form this
/// codec reads; none reads past the end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// A data item head of the given major type with a definite argument.
    fn head(&mut self, major: u8) -> Option<u64> {
        let b = self.byte()?;
        if b >> 5 != major {
            return None;
        }
        let arg = b & 0x1f;
        Some(match arg {
            0..=23 => u64::from(arg),
            24 => u64::from(self.byte()?),
            25 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
            26 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().ok()?)),
            27 => u64::from_be_bytes(self.take(8)?.try_into().ok()?),
            _ => return None, // reserved or indefinite length
        })
    }

    fn uint(&mut self) -> Option<u64> {
        self.head(MAJOR_UINT)
    }

    fn len(&mut self, major: u8) -> Option<usize> {
        usize::try_from(self.head(major)?).ok()
    }

    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.key()?).ok()
    }

    /// A text string's raw bytes: for matching against known ASCII names, which needs no UTF-8
    /// check (a match is valid UTF-8; a mismatch is rejected anyway).
    fn key(&mut self) -> Option<&'a [u8]> {
        let n = self.len(MAJOR_TEXT)?;
        self.take(n)
    }

    fn string(&mut self) -> Option<String> {
        self.str().map(str::to_owned)
    }

    fn bytes(&mut self) -> Option<Bytes> {
        let n = self.len(MAJOR_BYTES)?;
        self.take(n).map(Bytes::copy_from_slice)
    }

    fn boolean(&mut self) -> Option<bool> {
        match self.byte()? {
            FALSE => Some(false),
            TRUE => Some(true),
            _ => None,
        }
    }

    fn opt_uint(&mut self) -> Option<Option<u64>> {
        if self.peek()? == NULL {
            self.pos += 1;
            return Some(None);
        }
        self.uint().map(Some)
    }

    fn map(&mut self) -> Option<usize> {
        self.len(MAJOR_MAP)
    }

    fn array(&mut self) -> Option<usize> {
        self.len(MAJOR_ARRAY)
    }

    /// Capacity for `n` items that each take at least one byte: never more than the input
    /// could hold, whatever length the input claims, nor more than [`MAX_RESERVED_ITEMS`]
    /// (the vector grows past it as items are read). An item in memory is larger than its
    /// byte on the wire — a `String` 24 bytes, a cursor update 56 — so a 1 MiB record whose
    /// array claimed 2^20 items reserved 56 MiB before it failed (review, 2026-12-03).
    fn capacity(&self, n: usize) -> usize {
        n.min(self.buf.len().saturating_sub(self.pos))
            .min(MAX_RESERVED_ITEMS)
    }

    fn strings(&mut self) -> Option<Vec<String>> {
        let n = self.array()?;
        let mut v = Vec::with_capacity(self.capacity(n));
        for _ in 0..n {
            v.push(self.string()?);
        }
        Some(v)
    }
}

/// Reads a map whose keys are exactly the listed field names, once each, in any order, into
/// the listed variables (each read with its expression); anything else makes the enclosing
/// function return `None`. Evaluates to a tuple of the values.
macro_rules! fields {
    ($r:ident, { $($key:literal => $var:ident: $read:expr),+ $(,)? }) => {{
        $(let mut $var = None;)+
        let n = $r.map()?;
        for _ in 0..n {
            match $r.key()? {
                $($key => {
                    if $var.is_some() {
                        return None;
                    }
                    $var = Some($read?);
                })+
                _ => return None,
            }
        }
        ($($var?,)+)
    }};
}

fn read_flags(r: &mut Reader<'_>) -> Option<ChannelFlags> {
    let (ban, send_ban, disband) = fields!(r, {
        b"ban" => ban: r.boolean(),
        b"send_ban" => send_ban: r.boolean(),
        b"disband" => disband: r.boolean(),
    });
    Some(ChannelFlags {
        ban,
        send_ban,
        disband,
    })
}

fn read_owner(r: &mut Reader<'_>) -> Option<ListOwner> {
    if r.map()? != 1 {
        return None;
    }
    match r.key()? {
        b"channel" => r.string().map(ListOwner::Channel),
        b"user" => r.string().map(ListOwner::User),
        _ => None,
    }
}

fn read_list_kind(r: &mut Reader<'_>) -> Option<ListKind> {
    match r.key()? {
        b"allow" => Some(ListKind::Allow),
        b"deny" => Some(ListKind::Deny),
        _ => None,
    }
}

fn read_list_op(r: &mut Reader<'_>) -> Option<ListOp> {
    match r.key()? {
        b"add" => Some(ListOp::Add),
        b"remove" => Some(ListOp::Remove),
        b"set" => Some(ListOp::Set),
        _ => None,
    }
}

fn read_u32(r: &mut Reader<'_>) -> Option<u32> {
    u32::try_from(r.uint()?).ok()
}

fn read_cursors(r: &mut Reader<'_>) -> Option<Vec<CursorUpdate>> {
    let n = r.array()?;
    let mut v = Vec::with_capacity(r.capacity(n));
    for _ in 0..n {
        let (uid, delivered_seq, read_seq) = fields!(r, {
            b"uid" => uid: r.string(),
            b"delivered_seq" => delivered_seq: r.opt_uint(),
            b"read_seq" => read_seq: r.opt_uint(),
        });
        v.push(CursorUpdate {
            uid,
            delivered_seq,
            read_seq,
        });
    }
    Some(v)
}

/// The fields of `conversation_hidden`, whose `up_to_seq` may be absent (the encoder leaves
/// out `None`; events written before the field have none). A `null` there is not the form the
/// encoder writes: the reference decoder judges it (and reads it as `None`).
fn read_hidden(r: &mut Reader<'_>) -> Option<Event> {
    let (mut uid, mut channel, mut up_to_seq) = (None, None, None);
    for _ in 0..r.map()? {
        // A field seen twice falls to the last arm, as an unknown one does.
        match r.key()? {
            b"uid" if uid.is_none() => uid = Some(r.string()?),
            b"channel" if channel.is_none() => channel = Some(r.string()?),
            b"up_to_seq" if up_to_seq.is_none() => up_to_seq = Some(r.uint()?),
            _ => return None,
        }
    }
    Some(Event::ConversationHidden {
        uid: uid?,
        channel: channel?,
        up_to_seq,
    })
}

/// The fields of `token_set`, whose `expires_at_ms` may be absent (the encoder leaves out
/// `None`; tokens issued before expiries existed have none). A `null` there is left to the
/// reference decoder, as for [`read_hidden`].
fn read_token_set(r: &mut Reader<'_>) -> Option<Event> {
    let (mut uid, mut token_hash, mut expires_at_ms) = (None, None, None);
    for _ in 0..r.map()? {
        // A field seen twice falls to the last arm, as an unknown one does.
        match r.key()? {
            b"uid" if uid.is_none() => uid = Some(r.string()?),
            b"token_hash" if token_hash.is_none() => token_hash = Some(r.bytes()?),
            b"expires_at_ms" if expires_at_ms.is_none() => expires_at_ms = Some(r.uint()?),
            _ => return None,
        }
    }
    Some(Event::TokenSet {
        uid: uid?,
        token_hash: token_hash?,
        expires_at_ms,
    })
}

fn read_event(r: &mut Reader<'_>) -> Option<Event> {
    if r.map()? != 1 {
        return None;
    }
    let ev = match r.key()? {
        b"message_sent" => {
            let (channel, from, client_msg_id, seq, message_id, payload, flags) = fields!(r, {
                b"channel" => channel: r.string(),
                b"from" => from: r.string(),
                b"client_msg_id" => client_msg_id: r.string(),
                b"seq" => seq: r.uint(),
                b"message_id" => message_id: r.uint(),
                b"payload" => payload: r.bytes(),
                b"flags" => flags: read_u32(r),
            });
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
        b"cursor_advanced" => {
            let (uid, channel, delivered_seq, read_seq) = fields!(r, {
                b"uid" => uid: r.string(),
                b"channel" => channel: r.string(),
                b"delivered_seq" => delivered_seq: r.opt_uint(),
                b"read_seq" => read_seq: r.opt_uint(),
            });
            Event::CursorAdvanced {
                uid,
                channel,
                delivered_seq,
                read_seq,
            }
        }
        b"cursor_batch" => {
            let (channel, cursors) = fields!(r, {
                b"channel" => channel: r.string(),
                b"cursors" => cursors: read_cursors(r),
            });
            Event::CursorBatch { channel, cursors }
        }
        b"token_set" => read_token_set(r)?,
        b"token_revoked" => {
            let (uid, token_hash) = fields!(r, {
                b"uid" => uid: r.string(),
                b"token_hash" => token_hash: r.bytes(),
            });
            Event::TokenRevoked { uid, token_hash }
        }
        b"tokens_revoked" => {
            let (uid,) = fields!(r, { b"uid" => uid: r.string() });
            Event::TokensRevoked { uid }
        }
        b"log_trimmed" => {
            let (start,) = fields!(r, { b"start" => start: r.uint() });
            Event::LogTrimmed { start }
        }
        b"channel_created" => {
            let (channel, flags) = fields!(r, {
                b"channel" => channel: r.string(),
                b"flags" => flags: read_flags(r),
            });
            Event::ChannelCreated { channel, flags }
        }
        b"channel_updated" => {
            let (channel, flags) = fields!(r, {
                b"channel" => channel: r.string(),
                b"flags" => flags: read_flags(r),
            });
            Event::ChannelUpdated { channel, flags }
        }
        b"channel_deleted" => {
            let (channel,) = fields!(r, { b"channel" => channel: r.string() });
            Event::ChannelDeleted { channel }
        }
        b"members_subscribed" => {
            let (channel, uids) = fields!(r, {
                b"channel" => channel: r.string(),
                b"uids" => uids: r.strings(),
            });
            Event::MembersSubscribed { channel, uids }
        }
        b"members_unsubscribed" => {
            let (channel, uids) = fields!(r, {
                b"channel" => channel: r.string(),
                b"uids" => uids: r.strings(),
            });
            Event::MembersUnsubscribed { channel, uids }
        }
        b"list_changed" => {
            let (owner, list, op, uids) = fields!(r, {
                b"owner" => owner: read_owner(r),
                b"list" => list: read_list_kind(r),
                b"op" => op: read_list_op(r),
                b"uids" => uids: r.strings(),
            });
            Event::ListChanged {
                owner,
                list,
                op,
                uids,
            }
        }
        b"message_recalled" => {
            let (channel, seq, by) = fields!(r, {
                b"channel" => channel: r.string(),
                b"seq" => seq: r.uint(),
                b"by" => by: r.string(),
            });
            Event::MessageRecalled { channel, seq, by }
        }
        b"message_edited" => {
            let (channel, seq, by, payload, flags) = fields!(r, {
                b"channel" => channel: r.string(),
                b"seq" => seq: r.uint(),
                b"by" => by: r.string(),
                b"payload" => payload: r.bytes(),
                b"flags" => flags: read_u32(r),
            });
            Event::MessageEdited {
                channel,
                seq,
                by,
                payload,
                flags,
            }
        }
        b"conversation_hidden" => read_hidden(r)?,
        b"conversation_cleared" => {
            let (uid, channel, up_to_seq) = fields!(r, {
                b"uid" => uid: r.string(),
                b"channel" => channel: r.string(),
                b"up_to_seq" => up_to_seq: r.uint(),
            });
            Event::ConversationCleared {
                uid,
                channel,
                up_to_seq,
            }
        }
        _ => return None,
    };
    Some(ev)
}

/// Decodes an envelope in the form [`encode`] writes (fields in any order). `None`: the bytes
/// are something else — run the reference decoder for the answer.
pub(crate) fn decode(buf: &[u8]) -> Option<Envelope> {
    let mut r = Reader { buf, pos: 0 };
    let (v, ts, event) = fields!(r, {
        b"v" => v: r.uint().and_then(|v| u8::try_from(v).ok()),
        b"ts" => ts: r.uint(),
        b"event" => event: read_event(&mut r),
    });
    (r.pos == buf.len()).then_some(Envelope { v, ts, event })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use ciborium::Value;

    use super::*;

    /// What an array's claimed length reserves: never more than the bytes left, nor more than
    /// `MAX_RESERVED_ITEMS`, however many items a record claims.
    #[test]
    fn a_claimed_length_reserves_a_bounded_room() {
        let big = vec![0u8; 1 << 20];
        let r = Reader { buf: &big, pos: 0 };
        assert_eq!(r.capacity(1 << 20), MAX_RESERVED_ITEMS);
        assert_eq!(r.capacity(usize::MAX), MAX_RESERVED_ITEMS);
        let small = Reader {
            buf: &big[..10],
            pos: 4,
        };
        assert_eq!(small.capacity(1 << 20), 6);
        assert_eq!(small.capacity(3), 3);
    }

    fn hidden(up_to_seq: Option<u64>) -> Envelope {
        Envelope::new(
            3,
            Event::ConversationHidden {
                uid: "bob".into(),
                channel: "g".into(),
                up_to_seq,
            },
        )
    }

    /// `{v: 1, ts: 3, event: {conversation_hidden: {fields}}}` as ciborium writes it.
    fn hidden_with(fields: Vec<(&str, Value)>) -> Vec<u8> {
        let fields = fields
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect::<Vec<_>>();
        let event = Value::Map(vec![(
            Value::from("conversation_hidden"),
            Value::Map(fields),
        )]);
        let env = Value::Map(vec![
            (Value::from("v"), Value::from(1u8)),
            (Value::from("ts"), Value::from(3u64)),
            (Value::from("event"), event),
        ]);
        let mut out = Vec::new();
        ciborium::into_writer(&env, &mut out).unwrap();
        out
    }

    /// Both forms of a hide (with and without `up_to_seq`) are the reference's bytes and are
    /// read here, fields in any order; what the encoder never writes (a `null`, a field twice,
    /// one missing) is left to the reference, which reads the `null` as `None` and refuses the
    /// others.
    #[test]
    fn a_hide_is_read_with_or_without_its_seq() {
        for up_to_seq in [None, Some(0), Some(24), Some(u64::MAX)] {
            let env = hidden(up_to_seq);
            let mut out = Vec::new();
            encode(&env, &mut out);
            assert_eq!(out, env.encode_reference().to_vec());
            assert_eq!(decode(&out), Some(env));
        }
        let seq_first = hidden_with(vec![
            ("up_to_seq", Value::from(7u64)),
            ("channel", Value::from("g")),
            ("uid", Value::from("bob")),
        ]);
        assert_eq!(decode(&seq_first), Some(hidden(Some(7))));

        let null = hidden_with(vec![
            ("uid", Value::from("bob")),
            ("channel", Value::from("g")),
            ("up_to_seq", Value::Null),
        ]);
        assert_eq!(decode(&null), None);
        assert_eq!(Envelope::decode(0, &null).unwrap(), hidden(None));

        let twice = hidden_with(vec![
            ("uid", Value::from("bob")),
            ("channel", Value::from("g")),
            ("up_to_seq", Value::from(1u64)),
            ("up_to_seq", Value::from(2u64)),
        ]);
        assert_eq!(decode(&twice), None);
        assert!(Envelope::decode(0, &twice).is_err());

        let no_channel = hidden_with(vec![
            ("uid", Value::from("bob")),
            ("up_to_seq", Value::from(1u64)),
        ]);
        assert_eq!(decode(&no_channel), None);
        assert!(Envelope::decode(0, &no_channel).is_err());
    }

    fn token_set(expires_at_ms: Option<u64>) -> Envelope {
        Envelope::new(
            3,
            Event::TokenSet {
                uid: "bob".into(),
                token_hash: Bytes::from_static(&[7; 32]),
                expires_at_ms,
            },
        )
    }

    /// `{v: 1, ts: 3, event: {token_set: {fields}}}` as ciborium writes it.
    fn token_set_with(fields: Vec<(&str, Value)>) -> Vec<u8> {
        let fields = fields
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect::<Vec<_>>();
        let event = Value::Map(vec![(Value::from("token_set"), Value::Map(fields))]);
        let env = Value::Map(vec![
            (Value::from("v"), Value::from(1u8)),
            (Value::from("ts"), Value::from(3u64)),
            (Value::from("event"), event),
        ]);
        let mut out = Vec::new();
        ciborium::into_writer(&env, &mut out).unwrap();
        out
    }

    /// A token set is read with or without its expiry, fields in any order, as a hide is with
    /// or without its seq; a `null` expiry or a field twice is left to the reference.
    #[test]
    fn a_token_set_is_read_with_or_without_its_expiry() {
        for expires_at_ms in [None, Some(0), Some(1_764_000_000_000), Some(u64::MAX)] {
            let env = token_set(expires_at_ms);
            let mut out = Vec::new();
            encode(&env, &mut out);
            assert_eq!(out, env.encode_reference().to_vec());
            assert_eq!(decode(&out), Some(env));
        }
        let hash = Value::Bytes(vec![7; 32]);
        let expiry_first = token_set_with(vec![
            ("expires_at_ms", Value::from(9u64)),
            ("token_hash", hash.clone()),
            ("uid", Value::from("bob")),
        ]);
        assert_eq!(decode(&expiry_first), Some(token_set(Some(9))));

        let null = token_set_with(vec![
            ("uid", Value::from("bob")),
            ("token_hash", hash.clone()),
            ("expires_at_ms", Value::Null),
        ]);
        assert_eq!(decode(&null), None);
        assert_eq!(Envelope::decode(0, &null).unwrap(), token_set(None));

        let twice = token_set_with(vec![
            ("uid", Value::from("bob")),
            ("token_hash", hash),
            ("expires_at_ms", Value::from(1u64)),
            ("expires_at_ms", Value::from(2u64)),
        ]);
        assert_eq!(decode(&twice), None);
        assert!(Envelope::decode(0, &twice).is_err());

        let no_hash = token_set_with(vec![
            ("uid", Value::from("bob")),
            ("expires_at_ms", Value::from(1u64)),
        ]);
        assert_eq!(decode(&no_hash), None);
        assert!(Envelope::decode(0, &no_hash).is_err());
    }
}
