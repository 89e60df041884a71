//! Events as JSON, for `tidings replay` and `GET /v1/log` (one object per line).
//!
//! A message's JSON payload goes out as the exact text that was stored (as history and pushes
//! send it, see `crate::render`): parsed into a `serde_json::Value` it would come back with its
//! keys re-sorted, repeated keys dropped and long numbers rounded. A payload `tidings compact`
//! purged (`FLAG_PURGED`: zeros in place of a recalled message's bytes) is left out, and the
//! line says `"purged": true`.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tidings_projections::{Envelope, Event, FLAG_JSON_PAYLOAD, FLAG_PURGED};

use crate::render::{hex, payload_view};

/// One event's line: its fields, and a message's payload as stored.
#[derive(Serialize)]
struct EventLine<'a> {
    #[serde(flatten)]
    fields: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
}

/// `{"offset", "ts", "written_ms", "type", …the event's fields}` as JSON text (one line, no
/// newline). A message's payload is JSON text as stored under `payload`, or base64 of other
/// bytes under `payload_b64`; a purged one is neither, and `"purged": true` says why.
pub(crate) fn event_line(offset: u64, written_ms: u64, env: &Envelope) -> String {
    let mut fields = Map::new();
    fields.insert("offset".into(), json!(offset));
    fields.insert("ts".into(), json!(env.ts));
    fields.insert("written_ms".into(), json!(written_ms));
    fields.insert("type".into(), json!(env.event.kind()));
    // The event's own fields (externally tagged: {"kind": {fields}}).
    if let Ok(Value::Object(outer)) = serde_json::to_value(&env.event)
        && let Some(Value::Object(own)) = outer.into_iter().next().map(|(_, v)| v)
    {
        fields.extend(own);
    }
    let (payload, payload_b64) = match &env.event {
        Event::MessageSent { payload, flags, .. } | Event::MessageEdited { payload, flags, .. } => {
            fields.remove("payload");
            if flags & FLAG_PURGED != 0 {
                // Zeros, not the message: nothing to show.
                fields.insert("purged".into(), Value::Bool(true));
                (None, None)
            } else {
                payload_view(payload, flags & FLAG_JSON_PAYLOAD != 0)
            }
        }
        // The hash as hex (the token's id in the API), not an array of numbers; a token's
        // `expires_at_ms` (ms since the Unix epoch) is there when it has one.
        Event::TokenSet { token_hash, .. } | Event::TokenRevoked { token_hash, .. } => {
            fields.insert("token_hash".into(), Value::String(hex(token_hash)));
            (None, None)
        }
        _ => (None, None),
    };
    // One event, one line: a payload sent pretty-printed holds line breaks, which in JSON text
    // can only be whitespace between tokens (never inside a string), so spaces stand in.
    let one_line = payload
        .filter(|p| p.get().contains(['\n', '\r']))
        .and_then(|p| RawValue::from_string(p.get().replace(['\n', '\r'], " ")).ok());
    let line = EventLine {
        fields,
        payload: one_line.as_deref().or(payload),
        payload_b64,
    };
    // Serializing strings, numbers and already-checked JSON text into memory cannot fail; were
    // it to, the line says so as a record that is not a valid event does.
    serde_json::to_string(&line).unwrap_or_else(|e| {
        json!({"offset": offset, "error": format!("the event does not serialize: {e}")}).to_string()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use bytes::Bytes;
    use serde_json::Value;
    use tidings_projections::{Envelope, Event};

    use super::event_line;

    fn line(event: Event) -> Value {
        let text = event_line(3, 6, &Envelope::new(5, event));
        serde_json::from_str(&text).unwrap()
    }

    /// A token's hash is hex (its id in the API) in a single revocation as in a token set, not
    /// an array of numbers; a set's expiry is there when it has one.
    #[test]
    fn token_events_show_the_hash_as_hex_and_the_expiry() {
        let token_hash = Bytes::from_static(&[0xab, 0x01]);
        let set = line(Event::TokenSet {
            uid: "alice".into(),
            token_hash: token_hash.clone(),
            expires_at_ms: Some(9),
        });
        assert_eq!(set["token_hash"], "ab01");
        assert_eq!(set["expires_at_ms"], 9);
        let set = line(Event::TokenSet {
            uid: "alice".into(),
            token_hash: token_hash.clone(),
            expires_at_ms: None,
        });
        assert!(set.get("expires_at_ms").is_none(), "{set}");
        let revoked = line(Event::TokenRevoked {
            uid: "alice".into(),
            token_hash,
        });
        assert_eq!(revoked["type"], "token_revoked");
        assert_eq!(revoked["uid"], "alice");
        assert_eq!(revoked["token_hash"], "ab01");
    }
}
