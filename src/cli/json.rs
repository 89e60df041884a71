//! Events as JSON, for `tidings replay` and `GET /v1/log` (one object per line).

use serde_json::{Map, Value, json};
use tidings_projections::{Envelope, Event};

use crate::render::payload_fields;

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
