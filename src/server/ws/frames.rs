//! The frames of a WebSocket session: what a client sends (JSON text or CBOR binary frames),
//! read strictly — a frame that cannot be read gets an error frame naming what is wrong, never
//! a guess — and the server's own frames, encoded in the session's encoding.

use std::collections::HashSet;

use axum::extract::ws::{Message as WsMessage, Utf8Bytes};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::server::error::ApiError;
use crate::server::http::{MAX_CLIENT_MSG_ID, present};

/// A sendack, serialized straight from its fields: no JSON tree is built per send.
#[derive(Serialize)]
pub(super) struct SendAck<'a> {
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) client_msg_id: &'a str,
    pub(super) channel: String,
    pub(super) seq: u64,
    pub(super) message_id: u64,
    pub(super) offset: u64,
    pub(super) ts: u64,
    pub(super) duplicate: bool,
}

/// A frame in the session's encoding (`None` only if serialization failed, which the frames
/// here cannot).
pub(super) fn encode<T: Serialize>(frame: &T, cbor: bool) -> Option<WsMessage> {
    if cbor {
        let mut buf = Vec::with_capacity(128);
        match ciborium::into_writer(frame, &mut buf) {
            Ok(()) => Some(WsMessage::Binary(Bytes::from(buf))),
            Err(e) => {
                tracing::warn!(error = %e, "could not encode a frame");
                None
            }
        }
    } else {
        // Room for a sendack or a small message at once (serde_json starts at 128 bytes and
        // grows: a realloc per frame).
        let mut buf = Vec::with_capacity(256);
        match serde_json::to_writer(&mut buf, frame)
            .map_err(|e| e.to_string())
            .and_then(|()| String::from_utf8(buf).map_err(|e| e.to_string()))
        {
            Ok(t) => Some(WsMessage::Text(Utf8Bytes::from(t))),
            Err(e) => {
                tracing::warn!(error = %e, "could not encode a frame");
                None
            }
        }
    }
}

pub(super) fn error_frame(e: &ApiError, client_msg_id: Option<&str>) -> Value {
    // A session is a user's: an internal error's details stay in the server's log.
    let message = if crate::server::error::is_operators(e.status, e.code) {
        crate::server::error::internal_for_user(&e.message)
    } else {
        e.message.clone()
    };
    let mut v = json!({"type": "error", "code": e.code, "message": message});
    // When to try again, as HTTP's `Retry-After` says it (whole seconds).
    if let (Some(secs), Some(o)) = (e.retry_after(), v.as_object_mut()) {
        o.insert("retry_after".into(), json!(secs));
    }
    // An id no send may carry (over 128 bytes) is not echoed: a frame's worth of it would go
    // back to the client.
    let client_msg_id = client_msg_id.filter(|id| id.len() <= MAX_CLIENT_MSG_ID);
    if let (Some(id), Some(o)) = (client_msg_id, v.as_object_mut()) {
        o.insert("client_msg_id".into(), json!(id));
    }
    v
}

/// A client frame, parsed.
#[derive(Debug)]
pub(super) enum ClientFrame {
    Send {
        client_msg_id: String,
        channel: String,
        payload: SendPayload,
    },
    Ack {
        channel: String,
        seq: u64,
    },
    Read {
        channel: String,
        seq: u64,
    },
    /// A recall of one of the user's messages (`DELETE /v1/channels/{id}/messages/{seq}`).
    Recall {
        /// Echoed in the answer, to tell answers apart.
        client_msg_id: Option<String>,
        channel: String,
        seq: u64,
    },
    /// An edit of one of the user's messages (`PATCH /v1/channels/{id}/messages/{seq}`).
    Edit {
        client_msg_id: Option<String>,
        channel: String,
        seq: u64,
        payload: SendPayload,
    },
    Ping,
}

/// A send's payload as the frame gave it, checked with the rest of the send
/// ([`Ctx::prepare_send`]) in the order HTTP checks one: its size before its content.
#[derive(Debug, Default)]
pub(super) struct SendPayload {
    /// `payload` as JSON text: from a JSON frame as the client wrote it (stored verbatim, not
    /// printed again), from a CBOR frame converted.
    pub(super) json: Option<Box<RawValue>>,
    pub(super) payload_b64: Option<String>,
    /// A CBOR `payload` given as a byte string: stored as those bytes.
    pub(super) bytes: Option<Bytes>,
    /// What in the CBOR `payload` JSON cannot express, if anything: a float NaN or ±Infinity
    /// (`json` has `null` in its place), or a map key that is not a string (`json` is `null`).
    /// Refused as `invalid_payload`, as a JSON number out of range is.
    pub(super) not_json: Option<&'static str>,
}

/// A frame the server could not read: what is wrong, and its `client_msg_id` when that much
/// could be read (a client pipelining sends learns which one failed).
#[derive(Debug)]
pub(super) struct BadFrame {
    pub(super) message: String,
    pub(super) client_msg_id: Option<String>,
}

impl BadFrame {
    /// What is wrong with a decoded CBOR frame, naming its `client_msg_id` if it has one.
    fn cbor(v: &ciborium::Value, message: impl Into<String>) -> BadFrame {
        let client_msg_id = v
            .as_map()
            .and_then(|entries| {
                entries
                    .iter()
                    .find(|(k, _)| k.as_text() == Some("client_msg_id"))
            })
            .and_then(|(_, id)| id.as_text())
            .map(str::to_owned);
        BadFrame {
            message: message.into(),
            client_msg_id,
        }
    }
}

/// Every field any frame has, flat: serde reads it in one pass (an internally tagged enum
/// would buffer the whole frame first), and `payload` stays raw text. Other fields are ignored
/// (a newer client's frame still reads; HTTP bodies refuse them) — the README warns that a
/// misspelled `client_msg_id` is then a send without one.
#[derive(Debug, Deserialize)]
pub(super) struct WireFrame {
    #[serde(rename = "type")]
    kind: String,
    client_msg_id: Option<String>,
    channel: Option<String>,
    /// `null` is a payload (JSON null); only a missing field is none.
    #[serde(default, deserialize_with = "present")]
    payload: Option<Box<RawValue>>,
    payload_b64: Option<String>,
    seq: Option<u64>,
}

impl TryFrom<WireFrame> for ClientFrame {
    type Error = BadFrame;

    fn try_from(w: WireFrame) -> Result<Self, BadFrame> {
        let WireFrame {
            kind,
            client_msg_id,
            channel,
            payload,
            payload_b64,
            seq,
        } = w;
        let missing = |field: &str| format!("missing field `{field}`");
        let message = match (kind.as_str(), channel, seq) {
            ("send", Some(channel), _) => {
                return Ok(ClientFrame::Send {
                    client_msg_id: client_msg_id.unwrap_or_default(),
                    channel,
                    payload: SendPayload {
                        json: payload,
                        payload_b64,
                        ..SendPayload::default()
                    },
                });
            }
            ("ack", Some(channel), Some(seq)) => return Ok(ClientFrame::Ack { channel, seq }),
            ("read", Some(channel), Some(seq)) => return Ok(ClientFrame::Read { channel, seq }),
            ("recall", Some(channel), Some(seq)) => {
                return Ok(ClientFrame::Recall {
                    client_msg_id,
                    channel,
                    seq,
                });
            }
            ("edit", Some(channel), Some(seq)) => {
                return Ok(ClientFrame::Edit {
                    client_msg_id,
                    channel,
                    seq,
                    payload: SendPayload {
                        json: payload,
                        payload_b64,
                        ..SendPayload::default()
                    },
                });
            }
            ("ping", ..) => return Ok(ClientFrame::Ping),
            ("send" | "ack" | "read" | "recall" | "edit", None, _) => missing("channel"),
            ("ack" | "read" | "recall" | "edit", Some(_), None) => missing("seq"),
            (other, ..) => format!(
                "unknown frame type `{other}`, expected one of `send`, `ack`, `read`, `recall`, `edit`, `ping`"
            ),
        };
        Err(BadFrame {
            message,
            client_msg_id,
        })
    }
}

/// Only a frame's `client_msg_id`, read leniently (any other field may be anything, and what
/// follows the frame is not looked at) from a JSON frame that did not parse, so that the
/// error names the send it answers.
pub(super) struct IdOnly(Option<String>);

impl<'de> Deserialize<'de> for IdOnly {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(IdVisitor)
    }
}

pub(super) struct IdVisitor;

impl<'de> serde::de::Visitor<'de> for IdVisitor {
    type Value = IdOnly;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a frame (an object)")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<IdOnly, A::Error> {
        let mut id = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "client_msg_id" && id.is_none() {
                id = map.next_value::<Option<String>>()?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(IdOnly(id))
    }
}

/// What a frame that is not a map is told (serde reads a struct from an array of its fields
/// in order: `["send","c1","g",{…}]` was taken as a send).
const NOT_AN_OBJECT: &str = "a frame is an object (`{\"type\":…}`)";

/// A JSON text frame.
pub(super) fn parse_text(text: &str) -> Result<ClientFrame, BadFrame> {
    // JSON's whitespace (serde's reading skips the same four).
    let first = text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .bytes()
        .next();
    if first != Some(b'{') && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        return Err(BadFrame {
            message: NOT_AN_OBJECT.to_owned(),
            client_msg_id: None,
        });
    }
    match serde_json::from_str::<WireFrame>(text) {
        Ok(w) => ClientFrame::try_from(w),
        Err(e) => {
            let mut de = serde_json::Deserializer::from_str(text);
            Err(BadFrame {
                message: e.to_string(),
                client_msg_id: IdOnly::deserialize(&mut de).ok().and_then(|IdOnly(id)| id),
            })
        }
    }
}

/// A CBOR binary frame, read as strictly as its JSON equivalent is: one CBOR item and nothing
/// after it, no key twice (serde refuses a JSON field given twice; the JSON tree the frame is
/// converted to would keep the last), a payload JSON can express (checked with the send); a
/// byte-string `payload` is kept as raw bytes.
pub(super) fn parse_cbor(b: &[u8]) -> Result<ClientFrame, BadFrame> {
    let mut rest = b;
    let mut v: ciborium::Value = ciborium::from_reader(&mut rest).map_err(|e| BadFrame {
        message: cbor_error(&e),
        client_msg_id: None,
    })?;
    if !rest.is_empty() {
        return Err(BadFrame::cbor(
            &v,
            format!("{} bytes after the frame's CBOR item", rest.len()),
        ));
    }
    if !v.is_map() {
        return Err(BadFrame::cbor(&v, NOT_AN_OBJECT));
    }
    let (mut raw, mut not_json) = (None, None);
    if let ciborium::Value::Map(entries) = &mut v {
        if let Some(key) = duplicate_key(entries) {
            let message = format!("duplicate field `{key}`");
            return Err(BadFrame::cbor(&v, message));
        }
        let at = entries
            .iter()
            .position(|(k, _)| k.as_text() == Some("payload"));
        match at {
            Some(i) if matches!(entries[i].1, ciborium::Value::Bytes(_)) => {
                if let (_, ciborium::Value::Bytes(bytes)) = entries.remove(i) {
                    raw = Some(Bytes::from(bytes));
                }
            }
            Some(i) => {
                not_json = payload_not_json(&entries[i].1);
                // Its conversion would fail and name the whole frame: the send refuses it. (A
                // NaN converts, to `null`: the payload's size is still checked first.)
                if not_json.is_some_and(|why| why != NON_FINITE) {
                    entries[i].1 = ciborium::Value::Null;
                }
            }
            None => {}
        }
    }
    // The error's text alone (its `Display` is its `Debug`: `Custom("…")`).
    let json: Value = v.deserialized().map_err(|e| {
        let ciborium::value::Error::Custom(message) = e;
        BadFrame::cbor(&v, message)
    })?;
    let wire: WireFrame =
        serde_json::from_value(json).map_err(|e| BadFrame::cbor(&v, e.to_string()))?;
    let mut frame = ClientFrame::try_from(wire)?;
    if let ClientFrame::Send { payload, .. } | ClientFrame::Edit { payload, .. } = &mut frame {
        payload.bytes = raw;
        payload.not_json = not_json;
    }
    Ok(frame)
}

/// The fields a frame may have (serde refuses one of these given twice in JSON; other keys
/// are ignored there, repeated or not).
pub(super) const FRAME_FIELDS: [&str; 6] = [
    "type",
    "client_msg_id",
    "channel",
    "payload",
    "payload_b64",
    "seq",
];

/// The first frame field a CBOR map has twice.
pub(super) fn duplicate_key(entries: &[(ciborium::Value, ciborium::Value)]) -> Option<&str> {
    let mut seen = HashSet::with_capacity(entries.len());
    entries
        .iter()
        .filter_map(|(k, _)| k.as_text())
        .filter(|k| FRAME_FIELDS.contains(k))
        .find(|k| !seen.insert(*k))
}

/// A CBOR payload's map key that is not a text string (JSON's keys are strings).
pub(super) const NON_TEXT_KEY: &str =
    "payload: a map key that is not a string, which JSON cannot express";

/// A payload's float NaN or infinity.
pub(super) const NON_FINITE: &str = "payload: NaN or an infinite number, which JSON cannot express";

/// A payload's CBOR tag (a date, a bignum, …).
pub(super) const TAGGED: &str =
    "payload: a CBOR tag (a date, a bignum, …), which JSON cannot express";

/// A byte string inside a payload (a whole payload may be one: then it is binary).
pub(super) const NESTED_BYTES: &str = "payload: a byte string inside the payload, which JSON cannot express (a whole payload \
     may be a byte string)";

/// An integer outside what a JSON payload converted here can hold exactly.
pub(super) const HUGE_INTEGER: &str = "payload: an integer outside -2^63 to 2^64-1, which this conversion to JSON cannot hold \
     exactly";

/// A CBOR decoding error in words (its `Display` is its `Debug`: `Io(Error { kind: … })`).
pub(super) fn cbor_error(e: &ciborium::de::Error<std::io::Error>) -> String {
    use ciborium::de::Error;
    match e {
        Error::Io(_) => "the frame ends inside its CBOR item (truncated or empty)".into(),
        Error::Syntax(at) => format!("CBOR syntax error at byte {at}"),
        Error::Semantic(Some(at), m) => format!("invalid CBOR at byte {at}: {m}"),
        Error::Semantic(None, m) => format!("invalid CBOR: {m}"),
        Error::RecursionLimitExceeded => "the CBOR item is nested too deeply".into(),
    }
}

/// What of a CBOR value JSON cannot express, anywhere in it: a map key that is not a text
/// string (the conversion to JSON fails on it; was answered `invalid_frame` with the
/// decoder's debug text until 2026-11-30), else a float NaN or ±Infinity (the conversion
/// stores `null` in its place). Its depth is bounded by the CBOR decoder's recursion limit.
pub(super) fn payload_not_json(v: &ciborium::Value) -> Option<&'static str> {
    let mut non_finite = false;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            ciborium::Value::Float(f) => non_finite |= !f.is_finite(),
            ciborium::Value::Array(items) => stack.extend(items),
            ciborium::Value::Map(entries) => {
                for (k, v) in entries {
                    if !k.is_text() {
                        return Some(NON_TEXT_KEY);
                    }
                    stack.push(v);
                }
            }
            ciborium::Value::Tag(..) => return Some(TAGGED),
            ciborium::Value::Bytes(_) => return Some(NESTED_BYTES),
            ciborium::Value::Integer(i) => {
                let i = i128::from(*i);
                if i < i128::from(i64::MIN) || i > i128::from(u64::MAX) {
                    return Some(HUGE_INTEGER);
                }
            }
            _ => {}
        }
    }
    non_finite.then_some(NON_FINITE)
}

/// Parses a frame (`None`: not a text or binary frame).
pub(super) fn parse(msg: &WsMessage) -> Result<Option<ClientFrame>, BadFrame> {
    match msg {
        WsMessage::Text(t) => parse_text(t.as_str()).map(Some),
        WsMessage::Binary(b) => parse_cbor(b).map(Some).map_err(|mut e| {
            // JSON sent as a binary frame: the error says what a binary frame is.
            if b.first().is_some_and(|c| matches!(c, b'{' | b'[')) {
                e.message
                    .push_str(" (a binary frame is read as CBOR: send JSON as a text frame)");
            }
            e
        }),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn text(s: &str) -> Result<Option<ClientFrame>, BadFrame> {
        parse(&WsMessage::Text(Utf8Bytes::from(s.to_owned())))
    }

    fn binary(b: Vec<u8>) -> Result<Option<ClientFrame>, BadFrame> {
        parse(&WsMessage::Binary(Bytes::from(b)))
    }

    /// JSON sent in a binary frame: refused, saying a binary frame is CBOR.
    #[test]
    fn json_in_a_binary_frame_says_binary_is_cbor() {
        let e = binary(br#"{"type":"ping"}"#.to_vec()).unwrap_err();
        assert!(
            e.message.ends_with("send JSON as a text frame)"),
            "{}",
            e.message
        );
        let e = binary(vec![0xff]).unwrap_err();
        assert!(!e.message.contains("text frame"), "{}", e.message);
    }

    /// A CBOR map with these entries, in this order (repeated keys kept).
    fn cbor(entries: Vec<(&str, ciborium::Value)>) -> Vec<u8> {
        let v = ciborium::Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect());
        let mut buf = Vec::new();
        ciborium::into_writer(&v, &mut buf).unwrap();
        buf
    }

    /// The `client_msg_id` and payload of a send.
    fn sent(f: ClientFrame) -> (String, SendPayload) {
        let ClientFrame::Send {
            client_msg_id,
            payload,
            ..
        } = f
        else {
            panic!("not a send: {f:?}")
        };
        (client_msg_id, payload)
    }

    #[test]
    fn a_send_keeps_its_json_payload_verbatim() {
        let f = text(r#"{"type":"send","channel":"g","client_msg_id":"c1","payload":{"z":1,"a":[true, null]},"extra":0}"#)
            .unwrap()
            .unwrap();
        let ClientFrame::Send {
            client_msg_id,
            channel,
            payload,
        } = f
        else {
            panic!("not a send: {f:?}")
        };
        assert_eq!((client_msg_id.as_str(), channel.as_str()), ("c1", "g"));
        assert_eq!(payload.json.unwrap().get(), r#"{"z":1,"a":[true, null]}"#);
        assert!(payload.payload_b64.is_none() && payload.bytes.is_none());
        // A null payload is a payload (JSON null); only a missing one is none.
        let (id, p) = sent(
            text(r#"{"type":"send","channel":"g","payload":null}"#)
                .unwrap()
                .unwrap(),
        );
        assert!(id.is_empty());
        assert_eq!(p.json.unwrap().get(), "null");
        let (_, p) = sent(
            text(r#"{"type":"send","channel":"g","payload_b64":"AA=="}"#)
                .unwrap()
                .unwrap(),
        );
        assert!(p.json.is_none());
    }

    /// `recall` and `edit` frames: their fields, an optional `client_msg_id`, an edit's payload
    /// in either form (a CBOR byte string as raw bytes), and what is missing named.
    #[test]
    fn recall_and_edit_frames_read() {
        let f = text(r#"{"type":"recall","channel":"g","seq":7}"#)
            .unwrap()
            .unwrap();
        assert!(
            matches!(&f, ClientFrame::Recall { client_msg_id: None, channel, seq: 7 } if channel == "g"),
            "{f:?}"
        );
        let f = text(
            r#"{"type":"edit","client_msg_id":"e","channel":"@bob","seq":2,"payload":{"t":1}}"#,
        )
        .unwrap()
        .unwrap();
        let ClientFrame::Edit {
            client_msg_id,
            channel,
            seq,
            payload,
        } = f
        else {
            panic!("not an edit: {f:?}")
        };
        assert_eq!(
            (client_msg_id.as_deref(), channel.as_str(), seq),
            (Some("e"), "@bob", 2)
        );
        assert_eq!(payload.json.unwrap().get(), r#"{"t":1}"#);
        let frame = cbor(vec![
            ("type", "edit".into()),
            ("channel", "g".into()),
            ("seq", 3.into()),
            ("payload", ciborium::Value::Bytes(vec![0, 255])),
        ]);
        let Ok(Some(ClientFrame::Edit { payload, .. })) = binary(frame) else {
            panic!("not an edit")
        };
        assert_eq!(payload.bytes.as_deref(), Some(&[0u8, 255][..]));
        assert!(payload.json.is_none());
        let message = |s: &str| text(s).unwrap_err().message;
        assert!(message(r#"{"type":"recall","channel":"g"}"#).contains("`seq`"));
        assert!(message(r#"{"type":"edit","seq":1,"payload":1}"#).contains("`channel`"));
        assert!(message(r#"{"type":"nope"}"#).contains("`recall`, `edit`"));
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        let message = |s: &str| text(s).unwrap_err().message;
        assert!(message(r#"{"channel":"g"}"#).contains("`type`"));
        assert!(message(r#"{"type":"teleport"}"#).contains("teleport"));
        assert!(message(r#"{"type":"ack","channel":"g"}"#).contains("`seq`"));
        assert!(message(r#"{"type":"send","payload":1}"#).contains("`channel`"));
        assert!(text(r#"{"type":"read","channel":"g","seq":-1}"#).is_err());
        assert!(text("not json").is_err());
        // A frame is an object: serde took an array of the fields in order for one.
        for frame in [
            r#"["send","c1","g",{"t":1},null,null]"#,
            r#" ["ping"]"#,
            r#""ping""#,
            "7",
        ] {
            let e = text(frame).unwrap_err();
            assert!(e.message.contains("is an object"), "{frame}: {}", e.message);
            assert_eq!(e.client_msg_id, None);
        }
        assert!(matches!(
            text(" \n{\"type\":\"ping\"}"),
            Ok(Some(ClientFrame::Ping))
        ));
        assert!(matches!(
            text(r#"{"type":"ping"}"#),
            Ok(Some(ClientFrame::Ping))
        ));
        assert!(matches!(
            text(r#"{"type":"read","channel":"g","seq":7}"#),
            Ok(Some(ClientFrame::Read { seq: 7, .. }))
        ));
    }

    /// An `invalid_frame` names the frame's `client_msg_id` whenever that could be read: a
    /// field missing, another of the wrong type (before or after the id), a field twice, text
    /// after the frame. Before, none did: a client pipelining sends could not tell which failed.
    #[test]
    fn a_bad_send_names_its_client_msg_id() {
        let id = |s: &str| text(s).unwrap_err().client_msg_id;
        for (frame, want) in [
            (
                r#"{"type":"send","client_msg_id":"c7","payload":{"t":1}}"#,
                "c7",
            ),
            (
                r#"{"type":"send","client_msg_id":"c8","channel":"g","seq":"x"}"#,
                "c8",
            ),
            (
                r#"{"seq":"x","type":"send","client_msg_id":"c9","channel":"g"}"#,
                "c9",
            ),
            (
                r#"{"type":"send","client_msg_id":"c10","channel":"g","payload":1} x"#,
                "c10",
            ),
            (
                r#"{"type":"send","channel":"g","channel":"h","client_msg_id":"c11"}"#,
                "c11",
            ),
            (r#"{"type":"teleport","client_msg_id":"c12"}"#, "c12"),
        ] {
            assert_eq!(id(frame).as_deref(), Some(want), "{frame}");
        }
        // Not to be read: none.
        assert_eq!(id(r#"{"type":"send","client_msg_id":7}"#), None);
        assert_eq!(id(r#"["send","c13"]"#), None);
        assert_eq!(id("not json"), None);
        // CBOR alike.
        let e = binary(cbor(vec![
            ("type", "send".into()),
            ("client_msg_id", "c14".into()),
        ]))
        .unwrap_err();
        assert!(e.message.contains("`channel`"), "{}", e.message);
        assert_eq!(e.client_msg_id.as_deref(), Some("c14"));
        let e = binary(cbor(vec![
            ("type", "send".into()),
            ("client_msg_id", "c15".into()),
            ("channel", 1u8.into()),
        ]))
        .unwrap_err();
        assert_eq!(e.client_msg_id.as_deref(), Some("c15"));
        assert_eq!(binary(vec![0xa1]).unwrap_err().client_msg_id, None);
    }

    #[test]
    fn a_cbor_send_with_a_json_payload_or_raw_bytes() {
        let send = |payload: ciborium::Value| {
            let b = cbor(vec![
                ("type", "send".into()),
                ("channel", "g".into()),
                ("payload", payload),
            ]);
            sent(binary(b).unwrap().unwrap()).1
        };
        let p = send(ciborium::Value::Map(vec![("t".into(), "hi".into())]));
        assert!(p.bytes.is_none() && p.not_json.is_none());
        assert_eq!(p.json.unwrap().get(), r#"{"t":"hi"}"#);
        let p = send(ciborium::Value::Bytes(vec![0, 1, 2]));
        assert!(p.json.is_none());
        assert_eq!(p.bytes.unwrap(), Bytes::from_static(&[0, 1, 2]));
        // A null payload is a payload, as in JSON.
        let p = send(ciborium::Value::Null);
        assert_eq!(p.json.unwrap().get(), "null");
    }

    /// A CBOR frame is read as strictly as the same frame in JSON. Before, trailing bytes were
    /// ignored, a key given twice kept its last value, and NaN or an infinity in a payload was
    /// stored as null.
    #[test]
    fn cbor_frames_are_read_as_strictly_as_json() {
        let send = |extra: Vec<(&'static str, ciborium::Value)>| {
            let mut entries: Vec<(&str, ciborium::Value)> = vec![
                ("type", "send".into()),
                ("client_msg_id", "c1".into()),
                ("channel", "g".into()),
            ];
            entries.extend(extra);
            cbor(entries)
        };
        // An array of the fields in order (serde reads a struct from one).
        let array = ciborium::Value::Array(vec![
            "send".into(),
            "c1".into(),
            "g".into(),
            1u8.into(),
            ciborium::Value::Null,
            ciborium::Value::Null,
        ]);
        let mut b = Vec::new();
        ciborium::into_writer(&array, &mut b).unwrap();
        let e = binary(b).unwrap_err();
        assert!(e.message.contains("is an object"), "{}", e.message);
        // Bytes after the map.
        let mut b = send(vec![("payload", 1u8.into())]);
        assert!(binary(b.clone()).is_ok());
        b.push(0);
        let e = binary(b).unwrap_err();
        assert!(e.message.contains("1 bytes after"), "{}", e.message);
        assert_eq!(e.client_msg_id.as_deref(), Some("c1"));
        // A key twice: the same words as serde's for JSON.
        let e = binary(send(vec![("channel", "h".into()), ("payload", 1u8.into())])).unwrap_err();
        let json =
            text(r#"{"type":"send","client_msg_id":"c1","channel":"g","channel":"h","payload":1}"#)
                .unwrap_err();
        assert!(
            json.message.starts_with("duplicate field `channel`"),
            "{}",
            json.message
        );
        assert_eq!(e.message, "duplicate field `channel`");
        assert_eq!(e.client_msg_id.as_deref(), Some("c1"));
        // An unknown key twice is ignored, as JSON ignores it.
        let unknown = send(vec![
            ("x", 1u8.into()),
            ("x", 2u8.into()),
            ("payload", 1u8.into()),
        ]);
        assert!(binary(unknown).is_ok());
        assert!(
            text(r#"{"type":"send","client_msg_id":"c1","channel":"g","x":1,"x":2,"payload":1}"#)
                .is_ok()
        );
        // An id longer than any send may carry is not echoed back.
        let long = "i".repeat(MAX_CLIENT_MSG_ID + 1);
        let frame = error_frame(&ApiError::bad_request("invalid_frame", "x"), Some(&long));
        assert!(frame.get("client_msg_id").is_none(), "{frame}");
        let frame = error_frame(&ApiError::bad_request("invalid_frame", "x"), Some("c1"));
        assert_eq!(frame["client_msg_id"], "c1");
        // Floats JSON cannot express, anywhere in the payload: flagged, refused with the send.
        let nan = ciborium::Value::Map(vec![("x".into(), f64::NAN.into())]);
        let deep =
            ciborium::Value::Array(vec![ciborium::Value::Array(vec![f64::NEG_INFINITY.into()])]);
        for payload in [nan, f64::INFINITY.into(), deep] {
            let p = sent(
                binary(send(vec![("payload", payload.clone())]))
                    .unwrap()
                    .unwrap(),
            )
            .1;
            assert_eq!(p.not_json, Some(NON_FINITE), "{payload:?}");
        }
        let p = sent(
            binary(send(vec![("payload", 1.5f64.into())]))
                .unwrap()
                .unwrap(),
        )
        .1;
        assert_eq!(p.not_json, None);
        assert_eq!(p.json.unwrap().get(), "1.5");
        // A map key that is not a string, anywhere in the payload (beside a NaN, too): flagged
        // and the payload read as null, for the send to refuse; the rest of the frame is read.
        let int_key = |inner| ciborium::Value::Map(vec![(1.into(), inner)]);
        let nested = ciborium::Value::Array(vec![f64::NAN.into(), int_key(2.into())]);
        for payload in [int_key(2.into()), nested] {
            let (id, p) = sent(
                binary(send(vec![("payload", payload.clone())]))
                    .unwrap()
                    .unwrap(),
            );
            assert_eq!(p.not_json, Some(NON_TEXT_KEY), "{payload:?}");
            assert_eq!(p.json.unwrap().get(), "null");
            assert!(!id.is_empty());
        }
        // A tag, a byte string inside the payload, an integer past 64 bits: flagged (they
        // were `invalid_frame`, with serde's words for the whole frame).
        let huge = ciborium::value::Integer::try_from(-(1i128 << 64)).unwrap();
        let cases = [
            (ciborium::Value::Tag(1, Box::new(0u8.into())), TAGGED),
            (
                ciborium::Value::Map(vec![("b".into(), ciborium::Value::Bytes(vec![1]))]),
                NESTED_BYTES,
            ),
            (ciborium::Value::Array(vec![huge.into()]), HUGE_INTEGER),
        ];
        for (payload, why) in cases {
            let (id, p) = sent(
                binary(send(vec![("payload", payload.clone())]))
                    .unwrap()
                    .unwrap(),
            );
            assert_eq!(p.not_json, Some(why), "{payload:?}");
            assert!(!id.is_empty());
        }
        let p = sent(
            binary(send(vec![("payload", u64::MAX.into())]))
                .unwrap()
                .unwrap(),
        )
        .1;
        assert_eq!(p.not_json, None);
        // A truncated or empty frame: said in words, not as the decoder's debug text.
        let whole = send(vec![("payload", 1u8.into())]);
        for cut in [&whole[..whole.len() - 1], &[][..]] {
            let e = binary(cut.to_vec()).unwrap_err();
            assert!(e.message.contains("truncated or empty"), "{}", e.message);
        }
        // A byte string and `payload_b64`: both kept, for the send to refuse.
        let b = send(vec![
            ("payload", ciborium::Value::Bytes(vec![1])),
            ("payload_b64", "AQ==".into()),
        ]);
        let p = sent(binary(b).unwrap().unwrap()).1;
        assert!(p.bytes.is_some() && p.payload_b64.is_some());
    }
}
