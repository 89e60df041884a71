//! Events as JSON, for `tidings replay` (one object per line).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};
use tidings_projections::{Envelope, Event, FLAG_JSON_PAYLOAD};

/// A payload as the API shows it: a JSON document under `payload`, other bytes base64-encoded
/// under `payload_b64`.
pub(crate) fn payload_fields(payload: &[u8], flags: u32, into: &mut Map<String, Value>) {
    if flags & FLAG_JSON_PAYLOAD != 0
        && let Ok(v) = serde_json::from_slice::<Value>(payload)
    {
        into.insert("payload".into(), v);
        return;
    }
    into.insert("payload_b64".into(), Value::String(B64.encode(payload)));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `{"offset", "ts", "written_ms", "type", …the event's fields}`.
pub(crate) fn event_line(offset: u64, written_ms: u64, env: &Envelope) -> Value {
    let mut obj = Map::new();
    obj.insert("offset".into(), json!(offset));
    obj.insert("ts".into(), json!(env.ts));
    obj.insert("written_ms".into(), json!(written_ms));
    obj.insert("type".into(), json!(env.event.kind()));
    // The event's own fields (externally tagged: {"kind": {fields}}).
    if let Ok(Value::Object(outer)) = serde_json::to_value(&env.event)
        && let Some(Value::Object(fields)) = outer.into_iter().next().map(|(_, v)| v)
    {
        obj.extend(fields);
    }
    match &env.event {
        Event::MessageSent { payload, flags, .. } | Event::MessageEdited { payload, flags, .. } => {
            obj.remove("payload");
            payload_fields(payload, *flags, &mut obj);
        }
        Event::TokenSet { token_hash, .. } => {
            obj.insert("token_hash".into(), Value::String(hex(token_hash)));
        }
        _ => {}
    }
    Value::Object(obj)
}
