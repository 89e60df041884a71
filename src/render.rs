//! How messages and payloads look to clients (HTTP, WebSocket, `replay`).
//!
//! A payload sent as JSON (`payload`) comes back as JSON; bytes sent as `payload_b64` come back
//! base64-encoded in JSON, and as a CBOR byte string to clients speaking CBOR. A person channel
//! is shown as `@peer` from the viewer's side; the admin sees canonical ids (`p:a:b`).
//!
//! JSON payloads go out as the exact text that was sent ([`MessageView`], through
//! `serde_json::value::RawValue`): parsed into a `serde_json::Value` they would come back with
//! their keys re-sorted, repeated keys dropped and long numbers rounded — and a page of large
//! payloads would be held as trees many times their size. CBOR clients get the payload as a
//! CBOR value (converted from the JSON text).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tidings_projections::FLAG_JSON_PAYLOAD;
use tidings_projections::ids::person_peer;
use tidings_projections::messages::Message;

/// Lowercase hex of `bytes` (a token's hash as its id and in `tidings replay`, a node id).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Adds the payload to `into`: JSON under `payload`, other bytes base64 under `payload_b64`.
pub(crate) fn payload_fields(payload: &[u8], flags: u32, into: &mut Map<String, Value>) {
    if flags & FLAG_JSON_PAYLOAD != 0
        && let Ok(v) = serde_json::from_slice::<Value>(payload)
    {
        into.insert("payload".into(), v);
        return;
    }
    into.insert("payload_b64".into(), Value::String(B64.encode(payload)));
}

/// A channel as `viewer` refers to it (`None`: the admin, who sees canonical ids).
pub(crate) fn channel_ref(channel: &str, viewer: Option<&str>) -> String {
    match viewer.and_then(|v| person_peer(channel, v)) {
        Some(peer) => format!("@{peer}"),
        None => channel.to_owned(),
    }
}

/// A message as `viewer` sees it, ready to serialize (the payload borrowed as sent).
#[derive(Debug, Serialize)]
pub(crate) struct MessageView<'a> {
    /// `"message"` in WebSocket frames; absent in HTTP pages.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<&'static str>,
    channel: String,
    seq: u64,
    message_id: u64,
    from: &'a str,
    client_msg_id: &'a str,
    ts: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    recalled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    edited: bool,
}

/// A payload's field: JSON text as sent, or base64 of other bytes (and of JSON that no longer
/// parses, which the send path never stores).
pub(crate) fn payload_view(payload: &[u8], json: bool) -> (Option<&RawValue>, Option<String>) {
    if json && let Ok(raw) = serde_json::from_slice::<&RawValue>(payload) {
        return (Some(raw), None);
    }
    (None, Some(B64.encode(payload)))
}

/// A message as `viewer` sees it (`None`: the admin).
pub(crate) fn message_view<'a>(m: &'a Message, viewer: Option<&str>) -> MessageView<'a> {
    let (payload, payload_b64) = match &m.payload {
        Some(p) if !m.recalled => payload_view(p, m.json),
        _ => (None, None),
    };
    MessageView {
        kind: None,
        channel: channel_ref(&m.channel, viewer),
        seq: m.seq,
        message_id: m.message_id,
        from: &m.from,
        client_msg_id: &m.client_msg_id,
        ts: m.ts,
        recalled: m.recalled,
        edited: m.edited && !m.recalled && m.payload.is_some(),
        payload,
        payload_b64,
    }
}

/// A message as JSON text for `viewer`, payload as sent.
pub(crate) fn message_text(
    m: &Message,
    viewer: Option<&str>,
    kind: Option<&'static str>,
) -> String {
    let mut view = message_view(m, viewer);
    view.kind = kind;
    // Serializing strings, numbers and already-checked JSON text into memory cannot fail;
    // were it to, the tree form says the same with the payload parsed.
    serde_json::to_string(&view).unwrap_or_else(|_| message_json(m, viewer).to_string())
}

/// A message as one JSON text for a page of messages.
pub(crate) fn message_raw(m: &Message, viewer: Option<&str>) -> Box<RawValue> {
    // Text serde_json just wrote is JSON (`null` would stand in were it not).
    RawValue::from_string(message_text(m, viewer, None)).unwrap_or_default()
}

/// A change told without its message (`messages::Change::Notice`): `{channel, seq,
/// recalled: true}` or `{channel, seq, edited: true}`.
#[derive(Debug, Serialize)]
struct NoticeView {
    channel: String,
    seq: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    recalled: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    edited: bool,
}

/// A change to `channel`'s message `seq` (recalled, or else edited) as JSON text for `viewer`,
/// without the message.
pub(crate) fn change_notice_raw(
    channel: &str,
    seq: u64,
    recalled: bool,
    viewer: Option<&str>,
) -> Box<RawValue> {
    let view = NoticeView {
        channel: channel_ref(channel, viewer),
        seq,
        recalled,
        edited: !recalled,
    };
    // A string, a number and booleans always serialize (`null` would stand in were it not).
    serde_json::value::to_raw_value(&view).unwrap_or_default()
}

/// A conversation's last message from the head's preview (a payload short enough to be kept
/// whole), as sent.
#[derive(Debug, Serialize)]
pub(crate) struct PreviewView<'a> {
    seq: u64,
    message_id: u64,
    from: &'a str,
    ts: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    recalled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    edited: bool,
    /// Left out for the page's size: the payload is the message's, in its history.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

impl<'a> PreviewView<'a> {
    /// A long last message whose payload a conversation page left out (its budget spent).
    pub(crate) fn cut(seq: u64, message_id: u64, from: &'a str, ts: u64, edited: bool) -> Self {
        Self {
            seq,
            message_id,
            from,
            ts,
            recalled: false,
            payload: None,
            payload_b64: None,
            edited,
            truncated: true,
        }
    }

    /// `preview` is the whole payload (not cut), with the message's flags.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        seq: u64,
        message_id: u64,
        from: &'a str,
        ts: u64,
        recalled: bool,
        edited: bool,
        preview: &'a [u8],
        flags: u32,
    ) -> Self {
        let (payload, payload_b64) = if recalled {
            (None, None)
        } else {
            payload_view(preview, flags & FLAG_JSON_PAYLOAD != 0)
        };
        Self {
            seq,
            message_id,
            from,
            ts,
            recalled,
            payload,
            payload_b64,
            edited: edited && !recalled,
            truncated: false,
        }
    }
}

/// An edit as a WebSocket frame for `viewer`: `{type: "edit", channel, seq, by, edited_at_ms,
/// payload | payload_b64}`, the new payload as sent.
#[derive(Debug, Serialize)]
struct EditView<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: String,
    seq: u64,
    by: &'a str,
    edited_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
}

/// What an edit frame says, for [`edit_text`] and [`edit_json`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct EditNotice<'a> {
    pub(crate) channel: &'a str,
    pub(crate) seq: u64,
    pub(crate) by: &'a str,
    pub(crate) ts: u64,
    pub(crate) payload: &'a [u8],
    pub(crate) flags: u32,
}

/// An edit frame as JSON text for `viewer`, the payload as sent.
pub(crate) fn edit_text(e: &EditNotice<'_>, viewer: Option<&str>) -> String {
    let (payload, payload_b64) = payload_view(e.payload, e.flags & FLAG_JSON_PAYLOAD != 0);
    let view = EditView {
        kind: "edit",
        channel: channel_ref(e.channel, viewer),
        seq: e.seq,
        by: e.by,
        edited_at_ms: e.ts,
        payload,
        payload_b64,
    };
    // As for messages: strings, numbers and checked JSON text always serialize.
    serde_json::to_string(&view).unwrap_or_else(|_| edit_json(e, viewer).to_string())
}

/// An edit frame as a JSON tree for `viewer` (for CBOR frames: the payload parsed).
pub(crate) fn edit_json(e: &EditNotice<'_>, viewer: Option<&str>) -> Value {
    let mut obj = Map::new();
    obj.insert("type".into(), json!("edit"));
    obj.insert("channel".into(), json!(channel_ref(e.channel, viewer)));
    obj.insert("seq".into(), json!(e.seq));
    obj.insert("by".into(), json!(e.by));
    obj.insert("edited_at_ms".into(), json!(e.ts));
    payload_fields(e.payload, e.flags, &mut obj);
    Value::Object(obj)
}

/// A message as a JSON tree for `viewer` (for CBOR frames: the payload parsed).
pub(crate) fn message_json(m: &Message, viewer: Option<&str>) -> Value {
    let mut obj = Map::new();
    obj.insert("channel".into(), json!(channel_ref(&m.channel, viewer)));
    obj.insert("seq".into(), json!(m.seq));
    obj.insert("message_id".into(), json!(m.message_id));
    obj.insert("from".into(), json!(m.from));
    obj.insert("client_msg_id".into(), json!(m.client_msg_id));
    obj.insert("ts".into(), json!(m.ts));
    if m.recalled {
        obj.insert("recalled".into(), json!(true));
    } else if let Some(p) = &m.payload {
        payload_fields(p, if m.json { FLAG_JSON_PAYLOAD } else { 0 }, &mut obj);
        if m.edited {
            obj.insert("edited".into(), json!(true));
        }
    }
    Value::Object(obj)
}

/// The CBOR encoding of a JSON frame, with a base64 payload turned back into a byte string.
pub(crate) fn cbor_frame(frame: &Value) -> bytes::Bytes {
    let mut v = frame.clone();
    let raw = v
        .as_object_mut()
        .and_then(|o| o.remove("payload_b64"))
        .and_then(|p| p.as_str().and_then(|s| B64.decode(s).ok()));
    let mut value = match ciborium::Value::serialized(&v) {
        Ok(value) => value,
        Err(e) => unreachable!("a JSON value always converts to CBOR: {e}"),
    };
    if let (Some(raw), ciborium::Value::Map(entries)) = (raw, &mut value) {
        entries.push((
            ciborium::Value::Text("payload".into()),
            ciborium::Value::Bytes(raw),
        ));
    }
    let mut out = Vec::new();
    if let Err(e) = ciborium::into_writer(&value, &mut out) {
        unreachable!("encoding CBOR into memory failed: {e}");
    }
    bytes::Bytes::from(out)
}
