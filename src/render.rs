//! How messages and payloads look to clients (HTTP, WebSocket, `replay`).
//!
//! A payload sent as JSON (`payload`) comes back as JSON; bytes sent as `payload_b64` come back
//! base64-encoded in JSON, and as a CBOR byte string to clients speaking CBOR. A person channel
//! is shown as `@peer` from the viewer's side; the admin sees canonical ids (`p:a:b`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};
use tidings_projections::FLAG_JSON_PAYLOAD;
use tidings_projections::ids::person_peer;
use tidings_projections::messages::Message;

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

/// A message as JSON for `viewer`.
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
