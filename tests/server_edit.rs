//! Editing messages (`PATCH /v1/channels/{id}/messages/{seq}`), end to end: the edit reaches
//! online sessions as an `edit` frame and every read (history, sync, changes, the conversation
//! list) shows the latest payload, across a restart; who may edit, and what is refused with
//! which code; an edit racing a recall, or its token's revocation, is never written after it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{ADMIN, Api, Server, Ws, listed, page_seqs};
use serde_json::{Value, json};

/// `PATCH` of message `seq` in `channel` with `body`: the status and the answer.
async fn edit(api: &Api, token: &str, channel: &str, seq: u64, body: Value) -> (u16, Value) {
    api.call(
        "PATCH",
        &format!("/v1/channels/{channel}/messages/{seq}"),
        token,
        Some(body),
    )
    .await
}

/// The messages of a page of `channel`'s history, as `token` reads it.
async fn history(api: &Api, token: &str, channel: &str) -> Vec<Value> {
    let page = api
        .ok(
            "GET",
            &format!("/v1/channels/{channel}/messages?after_seq=0"),
            token,
            None,
        )
        .await;
    page["messages"].as_array().unwrap().clone()
}

#[tokio::test]
async fn an_edit_reaches_sessions_and_every_read_and_survives_a_restart() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    api.group("h", &["alice", "bob"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    api.send(&alice, "g", "c1", "first draft").await;
    api.send(&alice, "g", "c2", "second").await;
    api.send(&alice, "@bob", "d1", "direct draft").await;
    let v0 = api.ok("GET", "/v1/changes", &bob, None).await["version"]
        .as_u64()
        .unwrap();
    // Live pushes only; a message pushed to it shows it registered.
    let mut ws = Ws::connect(&server, &bob, "?catch_up=false").await;
    api.send(&alice, "h", "h1", "registered?").await;
    assert_eq!(ws.next_of("message").await["channel"], "h");

    let (status, answer) = edit(&api, &alice, "g", 1, json!({"payload": {"text": "fixed"}})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["channel"], "g");
    assert_eq!(answer["seq"], 1);
    assert_eq!(answer["edited"], true);
    assert!(answer["offset"].as_u64().is_some() && answer["ts"].as_u64().is_some());
    let frame = ws.next_of("edit").await;
    assert_eq!(
        (
            &frame["channel"],
            &frame["seq"],
            &frame["by"],
            &frame["payload"]
        ),
        (
            &json!("g"),
            &json!(1),
            &json!("alice"),
            &json!({"text": "fixed"})
        ),
        "{frame}"
    );
    assert_eq!(frame["edited_at_ms"], answer["ts"]);
    // Person to person, in bytes: the peer's view names the editor's side.
    let (status, answer) = edit(&api, &alice, "@bob", 1, json!({"payload_b64": "AAEC"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["channel"], "@bob");
    let frame = ws.next_of("edit").await;
    assert_eq!(frame["channel"], "@alice", "{frame}");
    assert_eq!(frame["payload_b64"], "AAEC", "{frame}");
    assert!(frame.get("payload").is_none(), "{frame}");

    // A JSON payload goes out as the text sent (key order, number text), in the frame and
    // in history.
    let raw = r#"{"b":1,"a":1.50,"n":[1.0]}"#;
    let (status, v) = api
        .send_text(
            "PATCH",
            "/v1/channels/h/messages/1",
            &alice,
            &format!(r#"{{"payload":{raw}}}"#),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let text = ws.next_text_of("edit").await;
    assert!(text.contains(&format!(r#""payload":{raw}"#)), "{text}");
    let page = api.text("/v1/channels/h/messages?after_seq=0", &bob).await;
    assert!(page.contains(&format!(r#""payload":{raw}"#)), "{page}");

    // Edited again: the latest payload is what every read shows, marked edited; the message
    // keeps its seq, id, sender and time.
    let before = history(&api, &bob, "g").await;
    edit(&api, &alice, "g", 2, json!({"payload": {"text": "2nd"}})).await;
    let (status, _) = edit(
        &api,
        &alice,
        "g",
        2,
        json!({"payload": {"text": "2nd, final"}}),
    )
    .await;
    assert_eq!(status, 200);
    let reads = |api: Api, bob: String| async move {
        let page = history(&api, &bob, "g").await;
        let dm = history(&api, &bob, "@alice").await;
        let changes = api
            .ok("GET", &format!("/v1/changes?since={v0}"), &bob, None)
            .await;
        let convs = api.ok("GET", "/v1/conversations", &bob, None).await;
        (page, dm, changes, convs)
    };
    let (page, dm, changes, convs) = reads(Api::new(&server), bob.clone()).await;
    assert_eq!(page_seqs(&json!({"messages": page})), vec![1, 2]);
    assert_eq!(page[0]["payload"], json!({"text": "fixed"}));
    assert_eq!(page[1]["payload"], json!({"text": "2nd, final"}));
    assert!(page.iter().all(|m| m["edited"] == true), "{page:?}");
    for (was, now) in before.iter().zip(&page) {
        for key in ["seq", "message_id", "from", "client_msg_id", "ts"] {
            assert_eq!(was[key], now[key], "{key}");
        }
    }
    assert_eq!(dm[0]["payload_b64"], "AAEC");
    assert_eq!(dm[0]["edited"], true);
    // Changes since v0: each edited message once, as history shows it now, in the order of
    // its latest change.
    let got: Vec<(String, u64)> = changes["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["channel"].as_str().unwrap().to_owned(),
                m["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("g".into(), 1),
            ("@alice".into(), 1),
            ("h".into(), 1),
            ("g".into(), 2)
        ],
        "{changes}"
    );
    assert_eq!(
        changes["messages"][3]["payload"],
        json!({"text": "2nd, final"})
    );
    // The conversation list's last message of `g` is its edited text.
    let g = listed(&convs, "g").unwrap();
    assert_eq!(
        g["last_message"]["payload"],
        json!({"text": "2nd, final"}),
        "{g}"
    );
    assert_eq!(g["last_message"]["edited"], true, "{g}");
    ws.close().await;

    // A restart (snapshot, then the log) answers the same.
    let server = server.restart();
    let again = reads(Api::new(&server), bob.clone()).await;
    assert_eq!(again.0, page);
    assert_eq!(again.1, dm);
    assert_eq!(again.2["messages"], changes["messages"]);
    assert_eq!(again.3["conversations"], convs["conversations"]);
    // A message after it: the list shows that one, not marked edited.
    let api = Api::new(&server);
    api.send(&alice, "g", "c3", "third").await;
    let convs = api.ok("GET", "/v1/conversations", &bob, None).await;
    let g = listed(&convs, "g").unwrap();
    assert_eq!(g["last_message"]["seq"], 3, "{g}");
    assert!(g["last_message"].get("edited").is_none(), "{g}");
}

#[tokio::test]
async fn only_the_sender_who_may_still_send_or_the_admin_edits() {
    let server = Server::start(&["--limits-max-payload-bytes", "64"]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let carol = api.user("carol").await;
    api.send(&alice, "g", "c1", "one").await;
    api.send(&alice, "g", "c2", "two").await;
    let text = |t: &str| json!({"payload": {"text": t}});
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or_default().to_owned();

    // Not the sender; not a member; no such message.
    let (status, v) = edit(&api, &bob, "g", 1, text("x")).await;
    assert_eq!((status, code(&v).as_str()), (403, "forbidden"), "{v}");
    let (status, v) = edit(&api, &carol, "g", 1, text("x")).await;
    assert_eq!((status, code(&v).as_str()), (403, "not_member"), "{v}");
    let (status, v) = edit(&api, &alice, "g", 3, text("x")).await;
    assert_eq!(
        (status, code(&v).as_str()),
        (404, "message_not_found"),
        "{v}"
    );
    // Bad bodies: both forms, neither, an unknown field, too large, bad base64.
    for (body, want) in [
        (
            json!({"payload": 1, "payload_b64": "AA=="}),
            (400, "invalid_request"),
        ),
        (json!({}), (400, "invalid_request")),
        (json!({"payload": 1, "seq": 2}), (400, "invalid_request")),
        (
            json!({"payload": "x".repeat(100)}),
            (413, "payload_too_large"),
        ),
        (json!({"payload_b64": "!!"}), (400, "invalid_payload")),
    ] {
        let (status, v) = edit(&api, &alice, "g", 1, body.clone()).await;
        assert_eq!((status, code(&v).as_str()), want, "{body}: {v}");
    }

    // The admin may edit (moderation), named `:admin`; in a send-banned group too.
    api.ok(
        "PUT",
        "/v1/channels/g",
        ADMIN,
        Some(json!({"flags": {"send_ban": true}})),
    )
    .await;
    let (status, v) = edit(&api, &alice, "g", 1, text("x")).await;
    assert_eq!((status, code(&v).as_str()), (403, "send_banned"), "{v}");
    let (status, v) = edit(&api, ADMIN, "g", 1, text("[removed]")).await;
    assert_eq!(status, 200, "{v}");
    let log = api.text("/v1/log?from=0", ADMIN).await;
    let edits: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["type"] == "message_edited")
        .collect();
    assert_eq!(edits.len(), 1, "{log}");
    assert_eq!(edits[0]["by"], ":admin");
    // Not into a banned group: its members would get the new payload.
    api.ok(
        "PUT",
        "/v1/channels/g",
        ADMIN,
        Some(json!({"flags": {"ban": true}})),
    )
    .await;
    let (status, v) = edit(&api, ADMIN, "g", 1, text("x")).await;
    assert_eq!((status, code(&v).as_str()), (403, "channel_banned"), "{v}");
    api.ok("PUT", "/v1/channels/g", ADMIN, Some(json!({"flags": {}})))
        .await;

    // A recalled message is not edited (and the refusal writes nothing).
    api.ok("DELETE", "/v1/channels/g/messages/2", &alice, None)
        .await;
    let (status, v) = edit(&api, &alice, "g", 2, text("x")).await;
    assert_eq!(
        (status, code(&v).as_str()),
        (409, "message_recalled"),
        "{v}"
    );
    let (status, v) = edit(&api, ADMIN, "g", 2, text("x")).await;
    assert_eq!(
        (status, code(&v).as_str()),
        (409, "message_recalled"),
        "{v}"
    );

    // Out of the group, the sender may not edit what they sent in it.
    api.ok(
        "DELETE",
        "/v1/channels/g/members",
        ADMIN,
        Some(json!({"uids": ["alice"]})),
    )
    .await;
    let (status, v) = edit(&api, &alice, "g", 1, text("x")).await;
    assert_eq!((status, code(&v).as_str()), (403, "not_member"), "{v}");
    // A revoked token edits nothing.
    api.send(&alice, "@bob", "d1", "dm").await;
    api.ok("DELETE", "/v1/users/alice/tokens", ADMIN, None)
        .await;
    let (status, v) = edit(&api, &alice, "@bob", 1, text("x")).await;
    assert_eq!(status, 401, "{v}");

    let log = api.text("/v1/log?from=0", ADMIN).await;
    let edits = log
        .lines()
        .filter(|l| l.contains("\"message_edited\""))
        .count();
    assert_eq!(edits, 1, "only the admin's edit was written: {log}");
    let page = history(&api, ADMIN, "g").await;
    assert_eq!(page[0]["payload"], json!({"text": "[removed]"}));
    assert_eq!(page[1]["recalled"], true);
}

#[tokio::test]
async fn an_edit_racing_a_recall_is_written_before_it_or_refused() {
    let server = Server::start(&["--limits-sends-per-second", "100000"]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let alice = api.user("alice").await;
    const ROUNDS: u64 = 24;
    for i in 1..=ROUNDS {
        api.send(&alice, "g", &format!("c{i}"), "draft").await;
    }
    let mut ws = Ws::connect(&server, &alice, "").await;
    let mut refused = 0;
    for seq in 1..=ROUNDS {
        let body = json!({"payload": {"text": "edited"}});
        let recall = format!("/v1/channels/g/messages/{seq}");
        let (e, r) = tokio::join!(
            edit(&api, &alice, "g", seq, body),
            api.call("DELETE", &recall, &alice, None)
        );
        assert_eq!(r.0, 200, "{}", r.1);
        match e.0 {
            200 => {}
            409 => refused += 1,
            other => panic!("edit answered {other}: {}", e.1),
        }
    }
    // In the log, no edit of a message comes after its recall; every message is recalled.
    let log = api.text("/v1/log?from=0", ADMIN).await;
    let mut recalled = std::collections::BTreeSet::new();
    for line in log.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        let seq = e["seq"].as_u64().unwrap_or(0);
        match e["type"].as_str().unwrap() {
            "message_recalled" => assert!(recalled.insert(seq)),
            "message_edited" => assert!(!recalled.contains(&seq), "edit after recall: {line}"),
            _ => {}
        }
    }
    assert_eq!(recalled.len() as u64, ROUNDS);
    // Sessions hear of no edit after a message's recall either.
    let mut seen_recall = std::collections::BTreeSet::new();
    while let Some(f) = ws.next_within(Duration::from_millis(500)).await {
        let seq = f["seq"].as_u64().unwrap_or(0);
        match f["type"].as_str().unwrap_or_default() {
            "recall" => {
                seen_recall.insert(seq);
            }
            "edit" => assert!(!seen_recall.contains(&seq), "edit frame after recall: {f}"),
            _ => {}
        }
    }
    assert_eq!(seen_recall.len() as u64, ROUNDS);
    let page = history(&api, &alice, "g").await;
    assert!(
        page.iter()
            .all(|m| m["recalled"] == true && m.get("payload").is_none())
    );
    eprintln!("{refused} of {ROUNDS} edits refused as recalled");
}

#[tokio::test]
async fn an_edit_racing_its_tokens_revocation_is_written_before_it_or_refused() {
    let server = Server::start(&["--limits-sends-per-second", "100000"]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let first = api.user("alice").await;
    api.send(&first, "g", "c1", "draft").await;
    const ROUNDS: usize = 24;
    let mut answers = std::collections::BTreeMap::new();
    for round in 0..ROUNDS {
        let token = api.user("alice").await;
        let body = json!({"payload": {"text": format!("edit {round}")}});
        let (e, r) = tokio::join!(
            edit(&api, &token, "g", 1, body),
            api.call("DELETE", "/v1/users/alice/tokens", ADMIN, None)
        );
        assert!((200..300).contains(&r.0), "{}", r.1);
        assert!(matches!(e.0, 200 | 401), "edit answered {}: {}", e.0, e.1);
        *answers.entry(e.0).or_insert(0) += 1;
    }
    // In the log, no edit of alice's comes between a revocation of her tokens and the next
    // token issued to her.
    let log = api.text("/v1/log?from=0", ADMIN).await;
    let mut revoked = false;
    let mut edits = 0;
    for line in log.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        match e["type"].as_str().unwrap() {
            "tokens_revoked" => revoked = true,
            "token_set" => revoked = false,
            "message_edited" => {
                assert!(!revoked, "an edit after its token's revocation: {line}");
                edits += 1;
            }
            _ => {}
        }
    }
    assert_eq!(
        edits,
        answers.get(&200).copied().unwrap_or(0),
        "{answers:?}"
    );
    eprintln!("answers: {answers:?}");
}

/// The frame answering `client_msg_id` (an ack or an error), skipping others.
async fn answer_to(ws: &mut Ws, client_msg_id: &str) -> Value {
    loop {
        let f = ws.next().await;
        if f["client_msg_id"] == client_msg_id {
            return f;
        }
    }
}

/// Recalls and edits over a WebSocket (`recall` and `edit` frames): answered `recallack` and
/// `editack` with the HTTP answer's fields and the frame's `client_msg_id`, refused with the
/// HTTP codes in error frames naming it, and told to the other members' sessions as over
/// HTTP; a send written before an edit in one burst reaches the log before it.
#[tokio::test]
async fn recalls_and_edits_over_a_websocket() {
    let server = Server::start(&["--limits-sends-per-second", "100000"]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let mut a = Ws::connect(&server, &alice, "?catch_up=false").await;
    let mut b = Ws::connect(&server, &bob, "?catch_up=false").await;
    for (i, id) in ["c1", "c2"].into_iter().enumerate() {
        a.send(json!({"type": "send", "client_msg_id": id, "channel": "g", "payload": {"n": i}}))
            .await;
        assert_eq!(answer_to(&mut a, id).await["type"], "sendack");
    }
    assert_eq!(b.messages(2).await.len(), 2);

    a.send(json!({"type": "edit", "client_msg_id": "e1", "channel": "g", "seq": 1, "payload": {"text": "fixed"}}))
        .await;
    let ack = answer_to(&mut a, "e1").await;
    assert_eq!(
        (&ack["type"], &ack["channel"], &ack["seq"], &ack["edited"]),
        (&json!("editack"), &json!("g"), &json!(1), &json!(true)),
        "{ack}"
    );
    assert!(ack["offset"].as_u64().is_some(), "{ack}");
    let frame = b.next_of("edit").await;
    assert_eq!(frame["payload"], json!({"text": "fixed"}), "{frame}");
    assert_eq!(frame["by"], "alice");
    assert_eq!(frame["edited_at_ms"], ack["ts"]);
    // Bytes, and a person channel as the sender names it.
    api.send(&alice, "@bob", "d1", "direct").await;
    a.send(json!({"type": "edit", "client_msg_id": "e2", "channel": "@bob", "seq": 1, "payload_b64": "AAEC"}))
        .await;
    let ack = answer_to(&mut a, "e2").await;
    assert_eq!(
        (&ack["type"], &ack["channel"]),
        (&json!("editack"), &json!("@bob")),
        "{ack}"
    );
    assert_eq!(b.next_of("edit").await["payload_b64"], "AAEC");

    a.send(json!({"type": "recall", "client_msg_id": "r1", "channel": "g", "seq": 2}))
        .await;
    let ack = answer_to(&mut a, "r1").await;
    assert_eq!(
        (&ack["type"], &ack["channel"], &ack["seq"], &ack["recalled"]),
        (&json!("recallack"), &json!("g"), &json!(2), &json!(true)),
        "{ack}"
    );
    let frame = b.next_of("recall").await;
    assert_eq!(
        (&frame["seq"], &frame["by"]),
        (&json!(2), &json!("alice")),
        "{frame}"
    );
    // Again: nothing to write, answered the same.
    a.send(json!({"type": "recall", "client_msg_id": "r2", "channel": "g", "seq": 2}))
        .await;
    assert_eq!(answer_to(&mut a, "r2").await["type"], "recallack");
    let page = history(&api, &bob, "g").await;
    assert_eq!(page[0]["payload"], json!({"text": "fixed"}));
    assert_eq!(page[0]["edited"], true);
    assert_eq!(page[1]["recalled"], true);

    // Refused, with the HTTP codes, naming the frame.
    let refusals = [
        (
            true,
            json!({"type": "edit", "client_msg_id": "x1", "channel": "g", "seq": 1, "payload": 1}),
            "forbidden",
        ),
        (
            true,
            json!({"type": "recall", "client_msg_id": "x2", "channel": "g", "seq": 1}),
            "forbidden",
        ),
        (
            false,
            json!({"type": "edit", "client_msg_id": "x3", "channel": "g", "seq": 2, "payload": 1}),
            "message_recalled",
        ),
        (
            false,
            json!({"type": "edit", "client_msg_id": "x4", "channel": "g", "seq": 99, "payload": 1}),
            "message_not_found",
        ),
        (
            false,
            json!({"type": "recall", "client_msg_id": "x5", "channel": "g", "seq": 99}),
            "message_not_found",
        ),
        (
            false,
            json!({"type": "edit", "client_msg_id": "x6", "channel": "g", "seq": 1}),
            "invalid_request",
        ),
        (
            false,
            json!({"type": "edit", "client_msg_id": "x7", "channel": "g", "payload": 1}),
            "invalid_frame",
        ),
        (
            false,
            json!({"type": "recall", "client_msg_id": "x8", "channel": "nowhere", "seq": 1}),
            "not_member",
        ),
    ];
    for (by_bob, frame, code) in refusals {
        let ws = if by_bob { &mut b } else { &mut a };
        let id = frame["client_msg_id"].as_str().unwrap().to_owned();
        ws.send(frame.clone()).await;
        let answer = answer_to(ws, &id).await;
        assert_eq!(
            (&answer["type"], &answer["code"]),
            (&json!("error"), &json!(code)),
            "{frame} → {answer}"
        );
    }

    // A send, then an edit, in one burst (more sends after them): the send is written first,
    // every time.
    for round in 0..20 {
        let id = format!("burst{round}");
        a.feed(json!({"type": "send", "client_msg_id": id, "channel": "g", "payload": round}))
            .await;
        a.feed(json!({"type": "edit", "client_msg_id": format!("edit{round}"), "channel": "g", "seq": 1, "payload": round}))
            .await;
        // More sends in the burst: without the flush at the edit, the first send waited for
        // them to go to the sequencer together, while the edit went ahead.
        for k in 0..40 {
            a.feed(json!({"type": "send", "client_msg_id": format!("fill{round}-{k}"), "channel": "g", "payload": k}))
                .await;
        }
        a.flush().await;
        assert_eq!(
            answer_to(&mut a, &format!("edit{round}")).await["type"],
            "editack"
        );
    }
    let log = api.text("/v1/log?from=0", ADMIN).await;
    let mut sent = std::collections::HashSet::new();
    for line in log.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        match e["type"].as_str().unwrap() {
            "message_sent" => {
                sent.insert(e["client_msg_id"].as_str().unwrap().to_owned());
            }
            "message_edited" if e["payload"].is_u64() => {
                let round = e["payload"].as_u64().unwrap();
                assert!(
                    sent.contains(&format!("burst{round}")),
                    "edit before its burst's send: {line}"
                );
            }
            _ => {}
        }
    }
    assert_eq!(history(&api, &bob, "g").await[0]["payload"], json!(19));

    // Edits of one message in one burst are written in the order sent: the last one stays.
    for k in 0..12 {
        a.feed(json!({"type": "edit", "client_msg_id": format!("again{k}"), "channel": "g", "seq": 1, "payload": format!("v{k}")}))
            .await;
    }
    a.flush().await;
    // Answered in any order (the log says in which they were written).
    let mut acked = std::collections::BTreeSet::new();
    while acked.len() < 12 {
        let f = a.next().await;
        if let Some(id) = f["client_msg_id"]
            .as_str()
            .filter(|id| id.starts_with("again"))
        {
            assert_eq!(f["type"], "editack", "{f}");
            acked.insert(id.to_owned());
        }
    }
    let log = api.text("/v1/log?from=0", ADMIN).await;
    let order: Vec<String> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["type"] == "message_edited" && e["payload"].is_string())
        .map(|e| e["payload"].as_str().unwrap().to_owned())
        .collect();
    let sent: Vec<String> = (0..12).map(|k| format!("v{k}")).collect();
    assert_eq!(order, sent);
    assert_eq!(history(&api, &bob, "g").await[0]["payload"], json!("v11"));
}

/// A user's recall and edit are charged to their send rate, over HTTP and over a WebSocket
/// (until 2026-11-30 a recall was not limited at all): with one send a second (bursts of 2),
/// two sends leave nothing for them.
#[tokio::test]
async fn recalls_and_edits_are_charged_to_the_send_rate() {
    let server = Server::start(&["--limits-sends-per-second", "1"]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let alice = api.user("alice").await;
    api.send(&alice, "g", "c1", "one").await;
    api.send(&alice, "g", "c2", "two").await;
    let (status, v) = api
        .call("DELETE", "/v1/channels/g/messages/1", &alice, None)
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{v}"
    );
    let (status, v) = edit(&api, &alice, "g", 1, json!({"payload": 1})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{v}"
    );
    let mut ws = Ws::connect(&server, &alice, "?catch_up=false").await;
    ws.send(json!({"type": "recall", "client_msg_id": "r", "channel": "g", "seq": 1}))
        .await;
    assert_eq!(answer_to(&mut ws, "r").await["code"], "rate_limited");
    // The admin is not limited.
    let (status, v) = api
        .call("DELETE", "/v1/channels/g/messages/1", ADMIN, None)
        .await;
    assert_eq!(status, 200, "{v}");
}
