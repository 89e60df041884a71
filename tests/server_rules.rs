//! The server end to end, rules and limits: lists and switches enforced, auth, error shapes,
//! size and rate limits, CORS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};

use common::{ADMIN, Api, Server, Ws, frame_seqs, page_seqs};
use serde_json::{Value, json};

async fn code_of(
    api: &Api,
    method: &str,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let (status, v) = api.call(method, path, token, body).await;
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

async fn try_send(api: &Api, token: &str, channel: &str) -> (u16, String) {
    code_of(
        api,
        "POST",
        "/v1/messages",
        token,
        Some(json!({"channel": channel, "payload": {"t": 1}})),
    )
    .await
}

#[tokio::test]
async fn denylist_allowlist_and_flags_are_enforced_in_groups() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob", "mallory"]).await;
    let alice = api.user("alice").await;
    let mallory = api.user("mallory").await;
    let carol = api.user("carol").await;
    assert_eq!(try_send(&api, &mallory, "g").await.0, 201);
    api.ok(
        "POST",
        "/v1/channels/g/denylist",
        ADMIN,
        Some(json!({"uids": ["mallory"]})),
    )
    .await;
    assert_eq!(try_send(&api, &mallory, "g").await, (403, "denied".into()));
    api.ok(
        "DELETE",
        "/v1/channels/g/denylist",
        ADMIN,
        Some(json!({"uids": ["mallory"]})),
    )
    .await;
    api.ok(
        "POST",
        "/v1/channels/g/allowlist",
        ADMIN,
        Some(json!({"uids": ["alice"]})),
    )
    .await;
    assert_eq!(
        api.ok("GET", "/v1/channels/g/allowlist", ADMIN, None).await,
        json!({"uids": ["alice"]})
    );
    assert_eq!(
        try_send(&api, &mallory, "g").await,
        (403, "not_allowed".into())
    );
    assert_eq!(try_send(&api, &alice, "g").await.0, 201);
    assert_eq!(
        try_send(&api, &carol, "g").await,
        (403, "not_member".into())
    );
    // Whether a group exists is not told to a user outside it.
    assert_eq!(
        try_send(&api, &carol, "nosuch").await,
        (403, "not_member".into())
    );
    // Flags.
    api.ok(
        "PUT",
        "/v1/channels/g",
        ADMIN,
        Some(json!({"flags": {"send_ban": true}})),
    )
    .await;
    assert_eq!(
        try_send(&api, &alice, "g").await,
        (403, "send_banned".into())
    );
    let (status, _) = api
        .call(
            "POST",
            "/v1/messages",
            ADMIN,
            Some(json!({"channel": "g", "from": "alice", "payload": "from the app server"})),
        )
        .await;
    assert_eq!(
        status, 201,
        "the admin may still send into a send-banned channel"
    );
    api.ok(
        "PUT",
        "/v1/channels/g",
        ADMIN,
        Some(json!({"flags": {"disband": true}})),
    )
    .await;
    assert_eq!(
        try_send(&api, &alice, "g").await,
        (403, "channel_disbanded".into())
    );
    api.ok(
        "PUT",
        "/v1/channels/g",
        ADMIN,
        Some(json!({"flags": {"ban": true}})),
    )
    .await;
    assert_eq!(
        code_of(&api, "GET", "/v1/channels/g/messages", &alice, None)
            .await
            .0,
        403
    );
}

/// A banned group's history is closed: a member who joins after the ban does not see its last
/// message in the conversation list either (before, that list was the one place it showed);
/// a member with a backlog from before the ban (which sync still brings) does.
#[tokio::test]
async fn a_banned_group_s_last_message_is_shown_only_to_whom_it_is_owed() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    api.send(&alice, "g", "s1", "secret").await;
    let last = |v: &Value| {
        v["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["channel"] == "g")
            .unwrap()["last_message"]
            .clone()
    };
    // alice's list, cached before the ban, is not served on after it.
    let hers = api.ok("GET", "/v1/conversations", &alice, None).await;
    assert_eq!(last(&hers)["payload"]["text"], "secret");
    api.ok(
        "PUT",
        "/v1/channels/g",
        ADMIN,
        Some(json!({"flags": {"ban": true}})),
    )
    .await;
    let hers = api.ok("GET", "/v1/conversations", &alice, None).await;
    assert!(last(&hers).is_null(), "{hers}");
    api.ok(
        "POST",
        "/v1/channels/g/members",
        ADMIN,
        Some(json!({"uids": ["mallory"]})),
    )
    .await;
    let mallory = api.user("mallory").await;
    let theirs = api.ok("GET", "/v1/conversations", &mallory, None).await;
    assert!(last(&theirs).is_null(), "{theirs}");
    // bob has not had it yet: sync brings it, and the list shows it.
    let his = api.ok("GET", "/v1/conversations", &bob, None).await;
    assert_eq!(last(&his)["payload"]["text"], "secret", "{his}");
    let sync = api.ok("GET", "/v1/sync", &bob, None).await;
    assert_eq!(sync["messages"].as_array().unwrap().len(), 1);
}

/// `/v1/changes` in a banned group tells a member of a change to a message they are not owed
/// (at or below their delivered cursor) without the message: a member who joined after the
/// ban, whose history read is refused and whose sync is empty, learned there the sender and
/// client id of a message sent and recalled before the ban. A member who had the message still
/// gets its recall; one it is still to be delivered to gets it whole, as sync brings it.
#[tokio::test]
async fn changes_in_a_banned_group_show_only_what_is_owed() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("z", &["alice", "bob", "carol"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let carol = api.user("carol").await;
    api.send(&alice, "z", "secret-plan-42", "the plan").await;
    // bob receives it; carol has not synced yet.
    let sync = api.ok("GET", "/v1/sync", &bob, None).await;
    assert_eq!(page_seqs(&sync), vec![1]);
    api.ok("POST", "/v1/channels/z/ack", &bob, Some(json!({"seq": 1})))
        .await;
    api.ok("DELETE", "/v1/channels/z/messages/1", &alice, None)
        .await;
    let ban = |on: bool| json!({"flags": {"ban": on}});
    api.ok("PUT", "/v1/channels/z", ADMIN, Some(ban(true)))
        .await;
    api.ok(
        "POST",
        "/v1/channels/z/members",
        ADMIN,
        Some(json!({"uids": ["dave"]})),
    )
    .await;
    let dave = api.user("dave").await;
    let (status, code) = code_of(&api, "GET", "/v1/channels/z/messages", &dave, None).await;
    assert_eq!((status, code.as_str()), (403, "channel_banned"));
    let sync = api.ok("GET", "/v1/sync", &dave, None).await;
    assert!(sync["messages"].as_array().unwrap().is_empty(), "{sync}");
    let notice = json!([{"channel": "z", "seq": 1, "recalled": true}]);
    let theirs = api.ok("GET", "/v1/changes?since=0", &dave, None).await;
    assert_eq!(theirs["messages"], notice, "{theirs}");
    let text = theirs.to_string();
    assert!(
        !text.contains("secret-plan-42") && !text.contains("alice"),
        "{text}"
    );
    // bob had it: he learns of the recall.
    let his = api.ok("GET", "/v1/changes?since=0", &bob, None).await;
    assert_eq!(his["messages"], notice, "{his}");
    // carol is owed it: the change comes whole, as her sync brings the message.
    let hers = api.ok("GET", "/v1/changes?since=0", &carol, None).await;
    let msgs = hers["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{hers}");
    assert_eq!(
        (
            &msgs[0]["from"],
            &msgs[0]["client_msg_id"],
            &msgs[0]["recalled"]
        ),
        (&json!("alice"), &json!("secret-plan-42"), &json!(true))
    );
    let sync = api.ok("GET", "/v1/sync", &carol, None).await;
    assert_eq!(sync["messages"][0]["client_msg_id"], "secret-plan-42");
    // Once the ban is lifted the history is open again, and so is the change.
    api.ok("PUT", "/v1/channels/z", ADMIN, Some(ban(false)))
        .await;
    let theirs = api.ok("GET", "/v1/changes?since=0", &dave, None).await;
    assert_eq!(theirs["messages"][0]["from"], "alice", "{theirs}");
}

#[tokio::test]
async fn person_channels_honour_deny_lists_and_the_allowlist_switch() {
    for switch in [false, true] {
        let server = Server::start(&["--person-allowlist", &switch.to_string()]);
        let api = Api::new(&server);
        let alice = api.user("alice").await;
        let mallory = api.user("mallory").await;
        let friend = api.user("friend").await;
        api.ok(
            "POST",
            "/v1/users/bob/denylist",
            ADMIN,
            Some(json!({"uids": ["mallory"]})),
        )
        .await;
        api.ok(
            "POST",
            "/v1/users/bob/allowlist",
            ADMIN,
            Some(json!({"uids": ["friend"]})),
        )
        .await;
        assert_eq!(
            try_send(&api, &mallory, "@bob").await,
            (403, "denied".into()),
            "switch {switch}"
        );
        assert_eq!(try_send(&api, &friend, "@bob").await.0, 201);
        let alice_to_bob = try_send(&api, &alice, "@bob").await;
        if switch {
            assert_eq!(alice_to_bob, (403, "not_allowed".into()));
        } else {
            assert_eq!(alice_to_bob.0, 201, "switch off: anyone may message anyone");
        }
        // A user reads their own lists, not another's.
        let bob = api.user("bob").await;
        assert_eq!(
            api.ok("GET", "/v1/users/bob/denylist", &bob, None).await,
            json!({"uids": ["mallory"]})
        );
        assert_eq!(
            code_of(&api, "GET", "/v1/users/bob/denylist", &alice, None)
                .await
                .0,
            403
        );
    }
}

#[tokio::test]
async fn auth_and_error_shapes() {
    let server = Server::start(&["--limits-max-payload-bytes", "1024"]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    api.group("h", &["bob"]).await;
    let alice = api.user("alice").await;
    // Wrong token, no token.
    assert_eq!(
        code_of(&api, "GET", "/v1/sync", "nope", None).await,
        (401, "invalid_token".into())
    );
    let resp = reqwest::get(server.url("/v1/sync")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_token");
    // Another user's channel.
    assert_eq!(
        code_of(&api, "GET", "/v1/channels/h/messages", &alice, None).await,
        (403, "not_member".into())
    );
    // A channel's existence is not revealed to non-members.
    assert_eq!(
        code_of(&api, "GET", "/v1/channels/h", &alice, None).await,
        (403, "not_member".into())
    );
    assert_eq!(
        code_of(&api, "GET", "/v1/channels/no-such-channel", &alice, None).await,
        (403, "not_member".into())
    );
    // Nor by its history, or a send (they said 404 `channel_not_found` for a missing group).
    assert_eq!(
        code_of(
            &api,
            "GET",
            "/v1/channels/no-such-channel/messages",
            &alice,
            None
        )
        .await,
        (403, "not_member".into())
    );
    // A wrong method, and a plain GET of the WebSocket endpoint, are JSON errors too.
    assert_eq!(
        code_of(&api, "PATCH", "/v1/messages", &alice, None).await,
        (405, "method_not_allowed".into())
    );
    assert_eq!(
        code_of(&api, "GET", "/v1/ws", &alice, None).await,
        (400, "not_a_websocket".into())
    );
    // An upgrade of another WebSocket version: 426 naming the one served (RFC 6455; it was
    // 400 `not_a_websocket`).
    let old = reqwest::Client::new()
        .get(server.url("/v1/ws"))
        .bearer_auth(&alice)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "8")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(old.status().as_u16(), 426);
    assert_eq!(
        old.headers()
            .get("sec-websocket-version")
            .and_then(|v| v.to_str().ok()),
        Some("13")
    );
    let body: Value = old.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "unsupported_websocket_version",
        "{body}"
    );
    // A HEAD of it is a method it does not take (it was 405 `not_a_websocket`).
    assert_eq!(code_of(&api, "HEAD", "/v1/ws", &alice, None).await.0, 405);
    // With the method it takes named, as every 405 (it had no `Allow`).
    let head = reqwest::Client::new()
        .head(server.url("/v1/ws"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 405);
    assert_eq!(
        head.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET")
    );
    // Without a token too, and any other method (it was 401 for a HEAD without a token, and
    // the others said `Allow: GET,HEAD`).
    for method in [
        reqwest::Method::HEAD,
        reqwest::Method::POST,
        reqwest::Method::PUT,
    ] {
        let resp = reqwest::Client::new()
            .request(method.clone(), server.url("/v1/ws"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405, "{method}");
        assert_eq!(
            resp.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some("GET"),
            "{method}"
        );
    }
    // A membership body with a field it does not take (a typo: `uid` for `uids`) is refused,
    // as every other body's is: it subscribed the `uids` alone, and said 200.
    api.group("typo", &["alice"]).await;
    assert_eq!(
        code_of(
            &api,
            "POST",
            "/v1/channels/typo/members",
            ADMIN,
            Some(json!({"uids": ["bob"], "uid": ["carol"]}))
        )
        .await,
        (400, "invalid_request".into())
    );
    let members = api
        .ok("GET", "/v1/channels/typo/members", ADMIN, None)
        .await;
    assert_eq!(members["uids"], json!(["alice"]), "{members}");
    // A channel's flags of the wrong shape: `invalid_request`, as elsewhere (was `invalid_json`).
    assert_eq!(
        code_of(
            &api,
            "PUT",
            "/v1/channels/x",
            ADMIN,
            Some(json!({"flags": 5}))
        )
        .await,
        (400, "invalid_request".into())
    );
    // A `null` body is no body, as the OpenAPI document says (it was `invalid_request`).
    let (status, v) = api
        .send_text("PUT", "/v1/channels/nul", ADMIN, "null")
        .await;
    assert_eq!(status, 201, "{v}");
    // A token in the query string is for WebSocket upgrades only.
    let resp = reqwest::get(server.url(&format!("/v1/sync?token={alice}")))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // Admin-only calls.
    assert_eq!(
        code_of(&api, "PUT", "/v1/channels/x", &alice, None).await,
        (403, "admin_only".into())
    );
    // Oversized payload: 413.
    let big = "x".repeat(2000);
    let (status, code) = code_of(
        &api,
        "POST",
        "/v1/messages",
        &alice,
        Some(json!({"channel": "g", "payload": big})),
    )
    .await;
    assert_eq!((status, code.as_str()), (413, "payload_too_large"));
    // Exactly the limit in base64 is accepted (1024 % 3 = 1: two characters of padding).
    use base64::Engine as _;
    let exact = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 1024]);
    let (status, v) = api
        .call(
            "POST",
            "/v1/messages",
            &alice,
            Some(json!({"channel": "g", "payload_b64": exact})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    // Past the body limit (here the room for 10,000 uids of 64 characters, 670,000 bytes, +
    // 64 KiB), small enough that the client finishes writing before the server answers and
    // closes.
    let huge = "y".repeat(800 << 10);
    let (status, code) = code_of(
        &api,
        "POST",
        "/v1/messages",
        &alice,
        Some(json!({"channel": "g", "payload": huge})),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (413, "payload_too_large"),
        "past the body limit too"
    );
    // Malformed JSON and wrong shapes: 400 with a code.
    let (status, v) = api
        .post_text("/v1/messages", &alice, "{\"channel\": ")
        .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "invalid_json");
    assert_eq!(
        code_of(
            &api,
            "POST",
            "/v1/messages",
            &alice,
            Some(json!({"channel": "g"}))
        )
        .await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        code_of(
            &api,
            "POST",
            "/v1/messages",
            &alice,
            Some(json!({"channel": "bad id!", "payload": 1}))
        )
        .await,
        (400, "invalid_channel".into())
    );
    assert_eq!(
        code_of(
            &api,
            "POST",
            "/v1/messages",
            &alice,
            Some(json!({"channel": "g", "payload": 1, "extra": 2}))
        )
        .await,
        (400, "invalid_request".into())
    );
    // An array of the fields in order is not the object (serde would take it: it was a send).
    for body in [r#"["g","arr1",{"x":1},null,null]"#, " [\"g\"]", "[]"] {
        let (status, v) = api.post_text("/v1/messages", &alice, body).await;
        assert_eq!(
            (status, &v["error"]["code"]),
            (400, &json!("invalid_request")),
            "{body}: {v}"
        );
    }
    assert_eq!(
        code_of(&api, "GET", "/v1/channels/g/messages?limit=x", &alice, None)
            .await
            .1,
        "invalid_query"
    );
    assert_eq!(
        code_of(&api, "GET", "/v1/nothing", &alice, None).await,
        (404, "not_found".into())
    );
    // The most uids a call takes, each of the longest form, fit the body limit.
    let longest: Vec<String> = (0..10_000).map(|i| format!("{i:0>64}")).collect();
    api.ok(
        "POST",
        "/v1/channels/g/members",
        ADMIN,
        Some(json!({"uids": longest})),
    )
    .await;
    let many: Vec<String> = (0..10_001).map(|i| format!("u{i}")).collect();
    assert_eq!(
        code_of(
            &api,
            "POST",
            "/v1/channels/g/members",
            ADMIN,
            Some(json!({"uids": many}))
        )
        .await,
        (413, "payload_too_large".into())
    );
}

#[tokio::test]
async fn a_revoked_token_is_refused_and_its_websockets_close() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    let alice = api.user("alice").await;
    let mut ws = Ws::connect(&server, &alice, "").await;
    api.ok("DELETE", "/v1/users/alice/tokens", ADMIN, None)
        .await;
    let closed = ws.next_of("closed").await;
    assert_eq!(
        (closed["code"].as_u64(), closed["reason"].as_str()),
        (Some(4001), Some("token_revoked"))
    );
    assert_eq!(
        code_of(&api, "GET", "/v1/sync", &alice, None).await,
        (401, "invalid_token".into())
    );
    // A new token works.
    let again = api.user("alice").await;
    api.ok("GET", "/v1/sync", &again, None).await;
}

/// Sends racing the revocation of their sender's tokens, over HTTP and a WebSocket, are never
/// written after it: each send's token is checked under the sequencer's lock, which the
/// revocation is written and applied under. Before, a send authenticated just before the
/// revocation (an HTTP request on its way to the sequencer, any send of a session the applier
/// had not closed yet) was written after it: a user cut off still got messages in. The same
/// for one token revoked by its id, and for a logout (the session's own token).
#[tokio::test]
async fn no_message_is_written_after_its_senders_tokens_were_revoked() {
    use tokio_tungstenite::tungstenite::Message;

    const ROUNDS: u64 = 6;
    const WS_SENDS: usize = 5000;
    const HTTP_SENDS: usize = 300;
    let server = Server::start(&["--limits-sends-per-second", "100000"]);
    let api = Api::new(&server);
    let users: Vec<String> = (0..ROUNDS).map(|r| format!("u{r}")).collect();
    let members: Vec<&str> = users.iter().map(String::as_str).collect();
    api.group("g", &members).await;
    let mut raced = 0;
    for (round, uid) in (0..ROUNDS).zip(&users) {
        let token = api.user(uid).await;
        // One session (a second would be pushed the first's messages, and might fill its
        // queue): it pipelines sends until it is closed.
        let ws = Ws::connect(&server, &token, "?catch_up=false").await;
        let (mut sink, mut stream) = ws.ws.split();
        let prefix = uid.clone();
        let sender = tokio::spawn(async move {
            for i in 0..WS_SENDS {
                let f = json!({"type": "send", "client_msg_id": format!("{prefix}-w{i}"), "channel": "g", "payload": i});
                if sink
                    .send(Message::Text(f.to_string().into()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let reader = tokio::spawn(async move {
            let mut started_tx = Some(started_tx);
            let (mut acked, mut refused, mut closed) = (0usize, Vec::new(), None);
            while let Some(Ok(msg)) = stream.next().await {
                match msg {
                    Message::Text(t) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        match v["type"].as_str() {
                            Some("sendack") => {
                                acked += 1;
                                if let Some(tx) = started_tx.take() {
                                    let _ = tx.send(());
                                }
                            }
                            Some("error") => {
                                refused.push(v["code"].as_str().unwrap_or_default().to_owned());
                            }
                            _ => {}
                        }
                    }
                    Message::Close(c) => {
                        closed = c.map(|c| u16::from(c.code));
                        break;
                    }
                    _ => {}
                }
            }
            (acked, refused, closed)
        });
        // The session's sends are being written: now HTTP sends and the revocation, racing.
        tokio::time::timeout(Duration::from_secs(10), started)
            .await
            .unwrap()
            .unwrap();
        let sends = (0..HTTP_SENDS).map(|i| {
            let (api, token, uid) = (api.clone(), token.clone(), uid.clone());
            async move {
                let body =
                    json!({"channel": "g", "client_msg_id": format!("{uid}-h{i}"), "payload": {"n": i}});
                code_of(&api, "POST", "/v1/messages", &token, Some(body)).await
            }
        });
        // Rounds take turns: every token of the user, the one token by its id, a logout.
        let token_id = match round % 3 {
            1 => {
                let listed = api
                    .ok("GET", &format!("/v1/users/{uid}/tokens"), ADMIN, None)
                    .await;
                listed["tokens"][0]["token_id"].as_str().unwrap().to_owned()
            }
            _ => String::new(),
        };
        let (all, one) = (
            format!("/v1/users/{uid}/tokens"),
            format!("/v1/users/{uid}/tokens/{token_id}"),
        );
        let revoke = async {
            tokio::time::sleep(Duration::from_millis(2 + 3 * round)).await;
            match round % 3 {
                0 => api.ok("DELETE", &all, ADMIN, None).await,
                1 => api.ok("DELETE", &one, ADMIN, None).await,
                _ => api.ok("DELETE", "/v1/token", &token, None).await,
            };
        };
        let (answers, ()) = tokio::join!(futures_util::future::join_all(sends), revoke);
        assert!(
            answers
                .iter()
                .all(|a| a.0 == 201 || *a == (401, "invalid_token".to_owned())),
            "{answers:?}"
        );
        let (acked, refused, closed) = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap();
        sender.abort();
        assert_eq!(closed, Some(4001));
        assert!(refused.iter().all(|c| c == "invalid_token"), "{refused:?}");
        raced += usize::from(acked < WS_SENDS);
    }
    // On a loaded machine the revocation of one round may come after all of its sends; not of
    // every round (before 2026-11-30 each round had to race, and one under the full suite's
    // load did not).
    assert!(
        raced > 0,
        "every WebSocket send was written before the revocation came: nothing raced it"
    );
    // No message of a user at or past the offset of their revocation.
    let log = api.text("/v1/log?from=0", ADMIN).await;
    let events: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let revoked_at: HashMap<&str, u64> = events
        .iter()
        .filter(|e| e["type"] == "tokens_revoked" || e["type"] == "token_revoked")
        .map(|e| (e["uid"].as_str().unwrap(), e["offset"].as_u64().unwrap()))
        .collect();
    assert_eq!(revoked_at.len(), users.len());
    for e in events.iter().filter(|e| e["type"] == "message_sent") {
        let from = e["from"].as_str().unwrap();
        assert!(
            e["offset"].as_u64().unwrap() < revoked_at[from],
            "a message written after its sender's tokens were revoked: {e}"
        );
    }
}

/// A token as `POST /v1/users/{uid}/tokens` answers it, issued with `body`.
async fn issue(api: &Api, uid: &str, body: Option<Value>) -> Value {
    let path = format!("/v1/users/{uid}/tokens");
    let (status, v) = api.call("POST", &path, ADMIN, body).await;
    assert_eq!(status, 201, "{v}");
    v
}

/// A string field.
fn text(v: &Value) -> String {
    v.as_str().unwrap().to_owned()
}

/// `uid`'s live tokens as the admin lists them: `(token_id, expires_at_ms)`, by id.
async fn live_tokens(api: &Api, uid: &str) -> Vec<(String, Value)> {
    let path = format!("/v1/users/{uid}/tokens");
    let v = api.ok("GET", &path, ADMIN, None).await;
    assert_eq!(v["uid"], uid, "{v}");
    let mut tokens = Vec::new();
    for t in v["tokens"].as_array().unwrap() {
        tokens.push((text(&t["token_id"]), t["expires_at_ms"].clone()));
    }
    tokens.sort_by(|a, b| a.0.cmp(&b.0));
    tokens
}

/// Whether `id` is a token id: the lowercase hex of a SHA-256.
fn is_token_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Polls `GET /v1/sync` with `token` (every 50 ms, up to 10 s) until it is refused: the
/// refusal's status and code.
async fn refused_within(api: &Api, token: &str) -> (u16, String) {
    for _ in 0..200 {
        let (status, code) = code_of(api, "GET", "/v1/sync", token, None).await;
        if status != 200 {
            return (status, code);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the token was still taken after 10 s");
}

/// The wall clock in ms since the Unix epoch (the server's clock for expiries).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The close frame a WebSocket gets next (other frames skipped): its code and reason.
async fn close_of(ws: &mut Ws) -> (Option<u64>, Option<String>) {
    let closed = ws.next_of("closed").await;
    let reason = closed["reason"].as_str().map(str::to_owned);
    (closed["code"].as_u64(), reason)
}

/// A token issued with `ttl_secs` works until its expiry; from then on it is refused 401
/// `token_expired` (an upgrade too), and its WebSocket is closed then with 4001
/// `token_expired`. A token without one, and its session, go on. Before, no token expired.
#[tokio::test]
async fn a_token_with_a_ttl_expires_and_its_websocket_closes() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    let lasting = issue(&api, "alice", None).await;
    assert_eq!(lasting["expires_at_ms"], Value::Null, "{lasting}");
    let (lasting_id, lasting) = (text(&lasting["token_id"]), text(&lasting["token"]));
    let before = wall_ms();
    let short = issue(&api, "alice", Some(json!({"ttl_secs": 2}))).await;
    let expires_at = short["expires_at_ms"].as_u64().unwrap();
    assert!(
        (before + 2_000..=wall_ms() + 2_000).contains(&expires_at),
        "{short}"
    );
    let (short_id, short) = (text(&short["token_id"]), text(&short["token"]));
    assert!(is_token_id(&short_id), "{short_id}");
    let mut listed = vec![
        (lasting_id.clone(), Value::Null),
        (short_id, json!(expires_at)),
    ];
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(live_tokens(&api, "alice").await, listed);
    // Until then it works, over HTTP and a WebSocket.
    api.ok("GET", "/v1/sync", &short, None).await;
    let mut expiring = try_connect(&server, &short).await.unwrap();
    let mut staying = try_connect(&server, &lasting).await.unwrap();
    assert_eq!(
        close_of(&mut expiring).await,
        (Some(4001), Some("token_expired".into()))
    );
    assert_eq!(
        refused_within(&api, &short).await,
        (401, "token_expired".into())
    );
    let Err((status, body)) = try_connect(&server, &short).await else {
        panic!("an expired token opened a WebSocket");
    };
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "token_expired", "{body}");
    // The token without an expiry, and its session, go on.
    api.ok("GET", "/v1/sync", &lasting, None).await;
    staying.send(json!({"type": "ping"})).await;
    assert_eq!(staying.next_of("pong").await["type"], "pong");
    assert_eq!(
        live_tokens(&api, "alice").await,
        vec![(lasting_id, Value::Null)]
    );
}

/// Acks and reads a session's client sends after its token was revoked are not recorded: the
/// session, closing, still reads what the client sends while its close frame goes out, and
/// recorded acks and reads among it (up to 4,096), so a revoked token's holder could move the
/// user's cursors to the heads (found by a review).
#[tokio::test]
async fn acks_after_a_revocation_are_not_recorded() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let alice = api.user("alice").await;
    for i in 0..5 {
        api.send(&alice, "g", &format!("c{i}"), "hi").await;
    }
    let lost = issue(&api, "bob", None).await;
    let kept = issue(&api, "bob", None).await;
    let (lost_id, lost) = (text(&lost["token_id"]), text(&lost["token"]));
    let kept = text(&kept["token"]);
    let mut lost_ws = try_connect(&server, &lost).await.unwrap();
    let path = format!("/v1/users/bob/tokens/{lost_id}");
    let (status, v) = api.call("DELETE", &path, ADMIN, None).await;
    assert_eq!(status, 204, "{v}");
    // Applied: the session is closing. The client, not reading, goes on sending.
    for _ in 0..20 {
        lost_ws
            .send(json!({"type": "ack", "channel": "g", "seq": 5}))
            .await;
        lost_ws
            .send(json!({"type": "read", "channel": "g", "seq": 5}))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let list = api.ok("GET", "/v1/conversations", &kept, None).await;
    let g = common::listed(&list, "g").unwrap();
    assert_eq!(
        (
            g["delivered_seq"].as_u64(),
            g["read_seq"].as_u64(),
            g["unread"].as_u64()
        ),
        (Some(0), Some(0), Some(5)),
        "{g}"
    );
    // The kept token's acks are recorded.
    let mut kept_ws = try_connect(&server, &kept).await.unwrap();
    kept_ws
        .send(json!({"type": "read", "channel": "g", "seq": 5}))
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let list = api.ok("GET", "/v1/conversations", &kept, None).await;
    let g = common::listed(&list, "g").unwrap();
    assert_eq!(g["read_seq"].as_u64(), Some(5), "{g}");
}

/// Revoking one token (`DELETE /v1/users/{uid}/tokens/{token_id}`) refuses it and closes the
/// WebSockets opened with it; the user's other token and its session go on. Again, or with an
/// id that names no live token of that user, it is 404 `token_not_found`. Before, only all of
/// a user's tokens could be revoked.
#[tokio::test]
async fn revoking_one_token_leaves_the_users_others() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let bob = api.user("bob").await;
    let lost = issue(&api, "alice", None).await;
    let kept = issue(&api, "alice", None).await;
    let (lost_id, lost) = (text(&lost["token_id"]), text(&lost["token"]));
    let (kept_id, kept) = (text(&kept["token_id"]), text(&kept["token"]));
    let mut lost_ws = try_connect(&server, &lost).await.unwrap();
    let mut kept_ws = try_connect(&server, &kept).await.unwrap();
    let path = format!("/v1/users/alice/tokens/{lost_id}");
    assert_eq!(
        code_of(&api, "DELETE", &path, &kept, None).await,
        (403, "admin_only".into())
    );
    // Another user's token, or an id that is no token's: not found, nothing revoked.
    for wrong in [
        format!("/v1/users/bob/tokens/{lost_id}"),
        format!("/v1/users/alice/tokens/{}", lost_id.to_uppercase()),
        format!("/v1/users/alice/tokens/{}", &lost_id[..63]),
        "/v1/users/alice/tokens/nope".to_owned(),
    ] {
        assert_eq!(
            code_of(&api, "DELETE", &wrong, ADMIN, None).await,
            (404, "token_not_found".into()),
            "{wrong}"
        );
    }
    api.ok("GET", "/v1/sync", &lost, None).await;
    let (status, v) = api.call("DELETE", &path, ADMIN, None).await;
    assert_eq!(status, 204, "{v}");
    assert_eq!(
        close_of(&mut lost_ws).await,
        (Some(4001), Some("token_revoked".into()))
    );
    assert_eq!(
        code_of(&api, "GET", "/v1/sync", &lost, None).await,
        (401, "invalid_token".into())
    );
    // The other token works, and its session is still pushed messages.
    api.ok("GET", "/v1/sync", &kept, None).await;
    api.send(&bob, "g", "c1", "still there?").await;
    let got = kept_ws.messages(1).await;
    assert_eq!(got[0]["from"], "bob", "{got:?}");
    // Revoked, it is not found again; only the other token is listed.
    assert_eq!(
        code_of(&api, "DELETE", &path, ADMIN, None).await,
        (404, "token_not_found".into())
    );
    assert_eq!(
        live_tokens(&api, "alice").await,
        vec![(kept_id, Value::Null)]
    );
}

/// `DELETE /v1/token` logs the caller out: the token it is made with is revoked and its
/// WebSockets close, the user's other tokens stay; the admin key is no user's (400
/// `user_only`).
#[tokio::test]
async fn logout_revokes_the_token_it_is_made_with() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    let alice = api.user("alice").await;
    let other = api.user("alice").await;
    let mut ws = try_connect(&server, &alice).await.unwrap();
    assert_eq!(
        code_of(&api, "DELETE", "/v1/token", ADMIN, None).await,
        (400, "user_only".into())
    );
    let (status, v) = api.call("DELETE", "/v1/token", &alice, None).await;
    assert_eq!(status, 204, "{v}");
    assert_eq!(
        close_of(&mut ws).await,
        (Some(4001), Some("token_revoked".into()))
    );
    for (method, path) in [("GET", "/v1/sync"), ("DELETE", "/v1/token")] {
        assert_eq!(
            code_of(&api, method, path, &alice, None).await,
            (401, "invalid_token".into()),
            "{method} {path}"
        );
    }
    api.ok("GET", "/v1/sync", &other, None).await;
}

/// A `ttl_secs` outside 1 to ten years, or not a number (or a field the body does not take),
/// is 400 `invalid_request` and issues nothing; ten years, or `null`, is taken.
#[tokio::test]
async fn a_bad_ttl_is_invalid_request() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    let path = "/v1/users/alice/tokens";
    for body in [
        r#"{"ttl_secs": 0}"#,
        r#"{"ttl_secs": -1}"#,
        r#"{"ttl_secs": 315360001}"#,
        r#"{"ttl_secs": 100000000000000000000}"#,
        r#"{"ttl_secs": "60"}"#,
        r#"{"ttl": 60}"#,
    ] {
        let (status, v) = api.post_text(path, ADMIN, body).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "{body}: {v}"
        );
    }
    assert!(live_tokens(&api, "alice").await.is_empty());
    let v = issue(&api, "alice", Some(json!({"ttl_secs": null}))).await;
    assert_eq!(v["expires_at_ms"], Value::Null, "{v}");
    let before = wall_ms();
    let ten_years = json!({"ttl_secs": 315_360_000});
    let v = issue(&api, "alice", Some(ten_years)).await;
    let expires_at = v["expires_at_ms"].as_u64().unwrap();
    assert!(expires_at >= before + 315_360_000_000, "{v}");
    assert_eq!(live_tokens(&api, "alice").await.len(), 2);
}

/// An expiry and a single revocation hold after a restart: the projection keeps both.
#[tokio::test]
async fn expiries_and_single_revocations_survive_a_restart() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    let kept = issue(&api, "alice", None).await;
    let revoked = issue(&api, "alice", None).await;
    let expiring = issue(&api, "alice", Some(json!({"ttl_secs": 1}))).await;
    let an_hour = json!({"ttl_secs": 3600});
    let later = issue(&api, "alice", Some(an_hour)).await;
    let path = format!("/v1/users/alice/tokens/{}", text(&revoked["token_id"]));
    let (status, v) = api.call("DELETE", &path, ADMIN, None).await;
    assert_eq!(status, 204, "{v}");
    let expiring = text(&expiring["token"]);
    assert_eq!(
        refused_within(&api, &expiring).await,
        (401, "token_expired".into())
    );

    let server = server.restart();
    let api = Api::new(&server);
    let refusals = [
        (text(&revoked["token"]), "invalid_token"),
        (expiring, "token_expired"),
    ];
    for (token, code) in refusals {
        assert_eq!(
            code_of(&api, "GET", "/v1/sync", &token, None).await,
            (401, code.to_owned()),
            "{code}"
        );
    }
    for token in [text(&kept["token"]), text(&later["token"])] {
        api.ok("GET", "/v1/sync", &token, None).await;
    }
    let mut want = vec![
        (text(&kept["token_id"]), Value::Null),
        (text(&later["token_id"]), later["expires_at_ms"].clone()),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(live_tokens(&api, "alice").await, want);
    server.stop();
}

#[tokio::test]
async fn websocket_limits_answer_with_error_frames() {
    let server = Server::start(&[
        "--limits-sends-per-second",
        "5",
        "--limits-max-payload-bytes",
        "100",
    ]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let alice = api.user("alice").await;
    let mut ws = Ws::connect(&server, &alice, "?catch_up=false").await;
    ws.send(
        json!({"type": "send", "client_msg_id": "big", "channel": "g", "payload": "z".repeat(500)}),
    )
    .await;
    let e = ws.next_of("error").await;
    assert_eq!(
        (e["code"].as_str(), e["client_msg_id"].as_str()),
        (Some("payload_too_large"), Some("big"))
    );
    // A burst of 2 × 5 sends is allowed, then rate_limited (the oversized one above, refused
    // before its payload could be charged, took none: it counts as a frame).
    for i in 0..15 {
        ws.send(
            json!({"type": "send", "client_msg_id": format!("r{i}"), "channel": "g", "payload": i}),
        )
        .await;
    }
    let (mut acks, mut limited) = (0, 0);
    while acks + limited < 15 {
        let f = ws.next().await;
        match f["type"].as_str() {
            Some("sendack") => acks += 1,
            Some("error") if f["code"] == "rate_limited" => limited += 1,
            _ => {}
        }
    }
    assert_eq!(acks, 10);
    assert_eq!(limited, 5);
    // Garbage frames and unknown channels get error frames; the connection stays up.
    ws.send(json!({"type": "teleport"})).await;
    assert_eq!(ws.next_of("error").await["code"], "invalid_frame");
    ws.send(json!({"type": "ack", "channel": "elsewhere", "seq": 1}))
        .await;
    assert_eq!(ws.next_of("error").await["code"], "not_member");
    // A send that does not parse still names its client_msg_id (a field missing, another of
    // the wrong type): a client pipelining sends can tell which one failed.
    ws.send(json!({"type": "send", "client_msg_id": "c7", "payload": {"t": 1}}))
        .await;
    let e = ws.next_of("error").await;
    assert_eq!(
        (e["code"].as_str(), e["client_msg_id"].as_str()),
        (Some("invalid_frame"), Some("c7")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("`channel`"), "{e}");
    ws.send(
        json!({"type": "send", "client_msg_id": "c8", "channel": "g", "payload": 1, "seq": "x"}),
    )
    .await;
    let e = ws.next_of("error").await;
    assert_eq!(
        (e["code"].as_str(), e["client_msg_id"].as_str()),
        (Some("invalid_frame"), Some("c8")),
        "{e}"
    );
    // An oversized payload that is also invalid is too large first (it was `invalid_payload`).
    tokio::time::sleep(Duration::from_millis(500)).await; // a send token again
    let bad = "\\ud800".repeat(40);
    let raw = format!(r#"{{"type":"send","client_msg_id":"bad","channel":"g","payload":"{bad}"}}"#);
    ws.ws
        .send(tokio_tungstenite::tungstenite::Message::Text(raw.into()))
        .await
        .unwrap();
    let e = ws.next_of("error").await;
    assert_eq!(
        (e["code"].as_str(), e["client_msg_id"].as_str()),
        (Some("payload_too_large"), Some("bad"))
    );
    // A binary (CBOR) frame larger than a send can be is refused before it is decoded.
    let mut cbor = vec![0x9a, 0x00, 0x00, 0x27, 0x10]; // an array of 10,000 …
    cbor.extend(std::iter::repeat_n(0x01, 10_000)); // … one-byte integers
    ws.ws
        .send(tokio_tungstenite::tungstenite::Message::Binary(cbor.into()))
        .await
        .unwrap();
    assert_eq!(ws.next_of("error").await["code"], "payload_too_large");
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next_of("pong").await["type"], "pong");
    ws.quiet(Duration::from_millis(100)).await;
}

/// `limits.sends_per_second` is one bucket per user, whatever carries the sends: two WebSocket
/// sessions of one user (two devices) draw on it together, and so do the user's HTTP sends.
/// Each session had a bucket of its own (and HTTP another), so a user holding
/// `limits.sessions_per_user` sessions sent that many times the limit. The admin's sends as a
/// user (an app server's) are not charged to the user.
#[tokio::test]
async fn a_users_sessions_and_http_sends_share_one_send_limit() {
    let server = Server::start(&["--limits-sends-per-second", "1"]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let phone = api.user("alice").await;
    let laptop = api.user("alice").await;
    let mut devices = [
        Ws::connect(&server, &phone, "?catch_up=false").await,
        Ws::connect(&server, &laptop, "?catch_up=false").await,
    ];
    // Five sends pipelined on each: the user's burst is 2 × 1, for both sessions together (a low
    // rate, so that a slow machine refills little while the test runs: one send a second).
    for (d, ws) in devices.iter_mut().enumerate() {
        for i in 0..5 {
            ws.feed(json!({"type": "send", "client_msg_id": format!("d{d}-{i}"), "channel": "g", "payload": i}))
                .await;
        }
    }
    for ws in &mut devices {
        ws.flush().await;
    }
    let (mut accepted, mut limited) = (0, 0);
    for ws in &mut devices {
        let mut answered = 0;
        while answered < 5 {
            let f = ws.next().await;
            match f["type"].as_str() {
                Some("sendack") => accepted += 1,
                Some("error") => {
                    assert_eq!(f["code"], "rate_limited", "{f}");
                    assert!(f["client_msg_id"].is_string(), "{f}");
                    limited += 1;
                }
                // The other session's messages, pushed to this one.
                _ => continue,
            }
            answered += 1;
        }
    }
    // The burst, and at most one send refilled meanwhile (a second at 1/s).
    assert!(
        (2..=3).contains(&accepted),
        "{accepted} of 10 accepted ({limited} refused): the user's burst is 2"
    );
    // HTTP sends draw on the same bucket, which the sessions have (nearly) emptied.
    let mut http_accepted = 0;
    loop {
        let body =
            json!({"channel": "g", "client_msg_id": format!("h{http_accepted}"), "payload": 1});
        let (status, v) = api.call("POST", "/v1/messages", &phone, Some(body)).await;
        if status == 429 {
            assert_eq!(v["error"]["code"], "rate_limited", "{v}");
            break;
        }
        assert_eq!(status, 201, "{v}");
        http_accepted += 1;
        assert!(
            http_accepted <= 10,
            "HTTP sends past the burst were accepted"
        );
    }
    assert!(
        http_accepted <= 1,
        "{http_accepted} HTTP sends accepted after the sessions emptied the user's bucket"
    );
    // An app server sending as alice (the admin with `from`) is not held to her limit.
    let body = json!({"channel": "g", "from": "alice", "client_msg_id": "app", "payload": 1});
    let (status, v) = api.call("POST", "/v1/messages", ADMIN, Some(body)).await;
    assert_eq!(status, 201, "{v}");
}

#[tokio::test]
async fn the_connection_limit_answers_503_and_frees_slots() {
    let server = Server::start(&["--limits-max-connections", "2"]);
    let api = Api::new(&server);
    let alice = api.user("alice").await;
    let a = Ws::connect(&server, &alice, "").await;
    let _b = Ws::connect(&server, &alice, "").await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = server.ws_url("").into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {alice}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_connections");
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    a.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _c = Ws::connect(&server, &alice, "").await;
}

#[test]
fn the_admin_key_is_generated_once_with_mode_0600() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .env_remove("TIDINGS_ADMIN_KEY")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = Vec::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        loop {
            let mut l = String::new();
            if out.read_line(&mut l).unwrap() == 0 {
                panic!("the server exited before listening: {lines:?}");
            }
            if l.starts_with("tidings listening") {
                break;
            }
            lines.push(l);
        }
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(child.wait().unwrap().success());
        lines
    };
    let first = start();
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap();
    assert!(
        first.iter().any(|l| l.contains(key.trim())),
        "printed once: {first:?}"
    );
    let mode = std::fs::metadata(data.join("admin.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let second = start();
    assert!(
        !second.iter().any(|l| l.contains(key.trim())),
        "not printed again: {second:?}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("admin.key")).unwrap(),
        key,
        "and kept"
    );
    // An empty key file (a crash between its creation and its bytes reaching the disk, with
    // an earlier build) is replaced by a new key; before, every later start failed.
    std::fs::write(data.join("admin.key"), "").unwrap();
    let third = start();
    let new_key = std::fs::read_to_string(data.join("admin.key")).unwrap();
    assert!(!new_key.trim().is_empty() && new_key != key);
    assert!(
        third.iter().any(|l| l.contains(new_key.trim())),
        "{third:?}"
    );
}

/// A group deleted and created again under the same id is a new group: its members read none
/// of the earlier group's messages (history, conversation preview), only what is sent after.
/// Seqs are never reused, so the earlier messages stayed readable under the id before.
#[tokio::test]
async fn a_recreated_group_does_not_show_the_deleted_groups_history() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let alice = api.user("alice").await;
    let mallory = api.user("mallory").await;
    api.send(&alice, "g", "s1", "secret one").await;
    api.send(&alice, "g", "s2", "secret two").await;
    api.ok("DELETE", "/v1/channels/g", ADMIN, None).await;
    api.group("g", &["alice", "mallory"]).await;

    for q in ["", "?after_seq=0", "?before_seq=3"] {
        let page = api
            .ok(
                "GET",
                &format!("/v1/channels/g/messages{q}"),
                &mallory,
                None,
            )
            .await;
        assert_eq!(page["messages"], json!([]), "{q}: {page}");
        assert_eq!(page["has_more"], json!(false), "{q}: {page}");
    }
    let convs = api.ok("GET", "/v1/conversations", &mallory, None).await;
    let g = convs["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "g")
        .cloned();
    // Listed as a new group is, from its first message: not with the earlier group's last
    // seq and time.
    assert!(g.is_none(), "{convs}");

    // Its sender cannot recall an old message through the new group either.
    let (status, v) = api
        .call("DELETE", "/v1/channels/g/messages/1", &alice, None)
        .await;
    assert_eq!(status, 404, "{v}");

    let sent = api.send(&alice, "g", "n1", "hello").await;
    assert_eq!(sent["seq"], 3, "seqs go on");
    let page = api
        .ok("GET", "/v1/channels/g/messages?after_seq=0", &mallory, None)
        .await;
    assert_eq!(page_seqs(&page), vec![3]);
    // Paging forward from below the floor with a small page starts at the floor: a page
    // counted from `after_seq` ended below it, empty with `has_more` (a client paging on
    // from the last seq it got looped for ever).
    api.send(&alice, "g", "n2", "again").await;
    let page = api
        .ok(
            "GET",
            "/v1/channels/g/messages?after_seq=0&limit=1",
            &mallory,
            None,
        )
        .await;
    assert_eq!(page_seqs(&page), vec![3], "{page}");
    assert_eq!(page["has_more"], json!(true), "{page}");
    let page = api
        .ok(
            "GET",
            "/v1/channels/g/messages?after_seq=1&limit=2",
            &mallory,
            None,
        )
        .await;
    assert_eq!(page_seqs(&page), vec![3, 4], "{page}");
    assert_eq!(page["has_more"], json!(false), "{page}");
    // Both bounds: the messages between them (`before_seq` was ignored).
    let page = api
        .ok(
            "GET",
            "/v1/channels/g/messages?after_seq=0&before_seq=4",
            &mallory,
            None,
        )
        .await;
    assert_eq!(page_seqs(&page), vec![3], "{page}");
    assert_eq!(page["has_more"], json!(false), "{page}");
}

/// A retry of a send stored before `limits.max_payload_bytes` was lowered (by a restart) is
/// answered as the duplicate it is, over HTTP and WebSocket: it was refused 413
/// `payload_too_large`, and its client took a message that was stored and delivered for one
/// that failed. Only the exact retry: a new send of that size, and the same `client_msg_id`
/// sent to another channel, are still refused, and nothing more is written.
#[tokio::test]
async fn a_retry_of_a_send_stored_under_a_larger_payload_limit_is_its_duplicate() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    // 115 bytes of JSON text: a string of 113 characters and its quotes.
    let payload = json!("z".repeat(113));
    let http_send = |channel: &str, cid: &str| json!({"channel": channel, "client_msg_id": cid, "payload": payload});
    let ws_send = |channel: &str, cid: &str| json!({"type": "send", "client_msg_id": cid, "channel": channel, "payload": payload});
    let first = api
        .ok("POST", "/v1/messages", &alice, Some(http_send("g", "c80")))
        .await;
    assert_eq!(
        (&first["seq"], &first["duplicate"]),
        (&json!(1), &json!(false))
    );
    let data = server.data.clone();
    let dir = server.stop();

    let server = Server::start_on(&data, &["--limits-max-payload-bytes", "20"]);
    let api = Api::new(&server);
    let original = |v: &Value| {
        (
            v["channel"].clone(),
            v["seq"].clone(),
            v["message_id"].clone(),
            v["offset"].clone(),
            v["ts"].clone(),
            v["duplicate"].clone(),
        )
    };
    let mut expected = original(&first);
    expected.5 = json!(true);
    let (status, again) = api
        .call("POST", "/v1/messages", &alice, Some(http_send("g", "c80")))
        .await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(original(&again), expected, "{again}");

    let mut ws = Ws::connect(&server, &alice, "?catch_up=false").await;
    ws.send(ws_send("g", "c80")).await;
    let ack = ws.next().await;
    assert_eq!(
        (ack["type"].as_str(), ack["client_msg_id"].as_str()),
        (Some("sendack"), Some("c80")),
        "{ack}"
    );
    assert_eq!(original(&ack), expected, "{ack}");

    // A new send of that size is refused, over both; so is the id in another channel (not a
    // retry of the stored send: its original is in g).
    for (channel, cid) in [("g", "c81"), ("@bob", "c80")] {
        assert_eq!(
            code_of(
                &api,
                "POST",
                "/v1/messages",
                &alice,
                Some(http_send(channel, cid))
            )
            .await,
            (413, "payload_too_large".into()),
            "{channel} {cid}"
        );
        ws.send(ws_send(channel, cid)).await;
        let e = ws.next().await;
        assert_eq!(
            (e["code"].as_str(), e["client_msg_id"].as_str()),
            (Some("payload_too_large"), Some(cid)),
            "{e}"
        );
    }
    let page = api
        .ok("GET", "/v1/channels/g/messages?after_seq=0", &bob, None)
        .await;
    assert_eq!(page_seqs(&page), vec![1], "{page}");
    ws.close().await;
    drop(server);
    drop(dir);
}

/// A send whose `client_msg_id` was used in a group since deleted and created again under the
/// id is a new message of the new group: it was answered `duplicate` with the old group's seq,
/// which nobody can read. Within one group a retry is still a duplicate.
#[tokio::test]
async fn a_retry_into_a_recreated_group_is_sent_again() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let first = api.send(&alice, "g", "c1", "hello").await;
    assert_eq!(first["seq"], 1);
    let again = api.send(&alice, "g", "c1", "hello").await;
    assert_eq!(
        (&again["seq"], &again["duplicate"]),
        (&json!(1), &json!(true))
    );

    api.ok("DELETE", "/v1/channels/g", ADMIN, None).await;
    api.group("g", &["alice", "bob"]).await;
    let retry = api.send(&alice, "g", "c1", "hello").await;
    assert_eq!(retry["duplicate"], json!(false), "{retry}");
    assert_eq!(retry["seq"], 2, "{retry}");
    let page = api
        .ok("GET", "/v1/channels/g/messages?after_seq=0", &bob, None)
        .await;
    assert_eq!(page_seqs(&page), vec![2], "{page}");
    // And a retry of that one is its duplicate.
    let again = api.send(&alice, "g", "c1", "hello").await;
    assert_eq!(
        (&again["seq"], &again["duplicate"]),
        (&json!(2), &json!(true))
    );
}

/// A banned group's backlog reaches its members and they can acknowledge it, so it neither
/// blocks `/v1/sync` nor is lost when the ban is lifted while a session is live. (For a while
/// on 2026-11-30 sync and catch-up passed banned groups over: a session then went live past
/// the backlog, and the cumulative ack of the first message after the ban moved the cursor
/// past a backlog it never sent.)
#[tokio::test]
async fn a_banned_groups_backlog_is_delivered_acked_and_never_lost() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    for i in 1..=5 {
        api.send(&alice, "g", &format!("a{i}"), "before").await;
    }
    let ban = |on: bool| json!({"flags": {"ban": on, "send_ban": false, "disband": false}});
    api.ok("PUT", "/v1/channels/g", ADMIN, Some(ban(true)))
        .await;
    // Over HTTP: in sync, and acknowledged (before, 403: sync returned it forever).
    let sync = api.ok("GET", "/v1/sync?limit=3", &bob, None).await;
    assert_eq!(page_seqs(&sync), vec![1, 2, 3]);
    api.ok("POST", "/v1/channels/g/ack", &bob, Some(json!({"seq": 3})))
        .await;
    // History reads stay closed while banned.
    let (status, v) = api.call("GET", "/v1/channels/g/messages", &bob, None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("channel_banned"))
    );

    // Over WebSocket: catch-up sends the rest; the ban is lifted while the session is live.
    let mut ws = Ws::connect(&server, &bob, "").await;
    let mut got = frame_seqs(&ws.messages(2).await);
    api.ok("PUT", "/v1/channels/g", ADMIN, Some(ban(false)))
        .await;
    api.send(&alice, "g", "a6", "after").await;
    got.extend(frame_seqs(&ws.messages(1).await));
    assert_eq!(got, vec![4, 5, 6]);
    ws.send(json!({"type": "ack", "channel": "g", "seq": 6}))
        .await;
    ws.quiet(Duration::from_millis(300)).await;
    ws.close().await;
    let sync = api.ok("GET", "/v1/sync", &bob, None).await;
    assert_eq!(sync["messages"], json!([]), "{sync}");
}

/// A WebSocket upgrade of `token`, or the refusal's status and JSON body.
async fn try_connect(server: &Server, token: &str) -> Result<Ws, (u16, Value)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = server
        .ws_url("?catch_up=false")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(Ws { ws }),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            Err((
                resp.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(Value::Null),
            ))
        }
        Err(e) => panic!("connect: {e}"),
    }
}

/// A user holds at most `limits.sessions_per_user` WebSockets (one token could otherwise take
/// every connection slot); a closed one frees its place.
#[tokio::test]
async fn a_user_holds_at_most_sessions_per_user_websockets() {
    let server = Server::start(&["--limits-sessions-per-user", "2"]);
    let api = Api::new(&server);
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let first = try_connect(&server, &alice).await.unwrap();
    let mut second = try_connect(&server, &alice).await.unwrap();
    let Err((status, body)) = try_connect(&server, &alice).await else {
        panic!("a third session was accepted");
    };
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_sessions", "{body}");
    assert!(try_connect(&server, &bob).await.is_ok(), "per user");
    // The second still works; once the first is gone, a new one is accepted.
    second.send(json!({"type": "ping"})).await;
    assert_eq!(second.next_of("pong").await["type"], "pong");
    first.close().await;
    let mut accepted = false;
    for _ in 0..100 {
        if try_connect(&server, &alice).await.is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(accepted, "a closed session frees its place");
}

/// A client that stays silent — not even answering the server's pings, as a peer gone without
/// a FIN cannot — is closed with 4002 `idle_timeout` after `limits.ws_idle_secs`; one that
/// reads (and so answers pings by itself) stays, however quiet.
#[tokio::test]
async fn a_silent_websocket_is_closed_one_that_answers_pings_stays() {
    let server = Server::start(&["--limits-ws-idle-secs", "3"]);
    let api = Api::new(&server);
    let alice = api.user("alice").await;
    let mut reading = try_connect(&server, &alice).await.unwrap();
    let mut silent = try_connect(&server, &alice).await.unwrap();
    // Only `reading` is polled for 4.5 s: its client library answers the pings.
    let until = tokio::time::Instant::now() + Duration::from_millis(4500);
    let mut pings = 0;
    while let Ok(frame) = tokio::time::timeout_at(until, reading.ws.next()).await {
        match frame {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_))) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 1, "the quiet client was pinged");
    // Closed by now: a close frame 4002, unless the client's late answers to the pings
    // queued before it met the server's closed socket first (a reset, then no frame).
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        use tokio_tungstenite::tungstenite::Message;
        match tokio::time::timeout_at(until, silent.ws.next()).await {
            Err(_) => panic!("the silent session is still open"),
            Ok(Some(Ok(Message::Ping(_)))) => continue,
            Ok(Some(Ok(Message::Close(c)))) => {
                let code = c.map(|c| u16::from(c.code));
                assert_eq!(code, Some(4002));
                break;
            }
            Ok(Some(Ok(other))) => panic!("unexpected {other:?}"),
            Ok(None) | Ok(Some(Err(_))) => break,
        }
    }
    reading.send(json!({"type": "ping"})).await;
    assert_eq!(reading.next_of("pong").await["type"], "pong");
}

/// A client that only reads — here through a catch-up longer than `ws_idle_secs`, reading
/// slowly — stays: pages written count as activity (its answer to a ping would come only
/// after it read everything before the ping), and the keepalive timer is not starved by the
/// always-ready catch-up (at first it was, and its first look after the catch-up closed the
/// client at once, unpinged).
#[tokio::test]
async fn a_client_that_only_reads_through_a_long_catch_up_stays() {
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start(&[
        "--limits-ws-idle-secs",
        "3",
        "--limits-sends-per-second",
        "100000",
        "--limits-send-bytes-per-second",
        "1000000000",
    ]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let big = "z".repeat(60_000);
    for i in 1..=400 {
        api.send(&alice, "g", &format!("a{i}"), &big).await;
    }
    let mut ws = Ws::connect(&server, &bob, "").await;
    let mut got = 0;
    while got < 400 {
        match tokio::time::timeout(Duration::from_secs(10), ws.ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => {
                got += 1;
                tokio::time::sleep(Duration::from_millis(12)).await;
            }
            Ok(Some(Ok(Message::Ping(_)))) => {}
            other => panic!("after {got} messages: {other:?}"),
        }
    }
    // Past the catch-up and well past `ws_idle_secs` since the client last wrote anything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Still open and answering.
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next_of("pong").await["type"], "pong");
}

/// A frame past `limits.max_frame_bytes` ends the session with close code 1009
/// `message_too_big` (the client saw the connection drop, 1006, and could not tell why); what
/// the client sent before it still counts. (The frame limit is at least 3 × the payload limit
/// and 4 KiB.)
#[tokio::test]
async fn a_frame_too_large_closes_with_1009() {
    let server = Server::start(&[
        "--limits-max-payload-bytes",
        "1024",
        "--limits-max-frame-bytes",
        "8192",
    ]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let alice = api.user("alice").await;
    let mut ws = try_connect(&server, &alice).await.unwrap();
    ws.send(json!({"type": "send", "client_msg_id": "ok", "channel": "g", "payload": 1}))
        .await;
    assert_eq!(ws.next_of("sendack").await["client_msg_id"], "ok");
    ws.ws
        .send(tokio_tungstenite::tungstenite::Message::Text(
            "x".repeat(16 << 10).into(),
        ))
        .await
        .unwrap();
    let closed = ws.next_of("closed").await;
    assert_eq!(
        (closed["code"].as_u64(), closed["reason"].as_str()),
        (Some(1009), Some("message_too_big")),
        "{closed}"
    );
    let page = api.ok("GET", "/v1/channels/g/messages", &alice, None).await;
    assert_eq!(page_seqs(&page), vec![1]);
}

/// A text frame that is not UTF-8 ends the session with close code 1007
/// `invalid_payload_data` (RFC 6455); before, the server closed without a code and the client
/// could not tell why. What the client sent before it still counts.
#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let alice = api.user("alice").await;
    let mut ws = try_connect(&server, &alice).await.unwrap();
    ws.send(json!({"type": "send", "client_msg_id": "ok", "channel": "g", "payload": 1}))
        .await;
    assert_eq!(ws.next_of("sendack").await["client_msg_id"], "ok");
    // A text frame with a byte that is not UTF-8, written raw (the library's text is UTF-8).
    let text = b"{\"type\":\"ping\xff\"}".to_vec();
    ws.ws
        .send(Message::Frame(Frame::message(
            text,
            OpCode::Data(Data::Text),
            true,
        )))
        .await
        .unwrap();
    let closed = ws.next_of("closed").await;
    assert_eq!(
        (closed["code"].as_u64(), closed["reason"].as_str()),
        (Some(1007), Some("invalid_payload_data")),
        "{closed}"
    );
    let page = api.ok("GET", "/v1/channels/g/messages", &alice, None).await;
    assert_eq!(page_seqs(&page), vec![1]);
}

/// Reads until the server closes the connection; what it sent first.
async fn read_to_close(tcp: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    closed
        .ok()
        .map(|()| String::from_utf8_lossy(&out).into_owned())
}

/// A client gets `limits.http_read_timeout_secs` for a request's headers (also the longest an
/// idle keep-alive connection is kept) and again for its body; a WebSocket is not bound by it.
/// Before, a connection trickling its headers or body, or just left open, was kept for ever.
#[tokio::test]
async fn slow_or_idle_http_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(&["--limits-http-read-timeout-secs", "1"]);
    let api = Api::new(&server);
    let alice = api.user("alice").await;
    let mut ws = Ws::connect(&server, &alice, "").await;
    // Headers that never end: closed without an answer.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut slow, Duration::from_secs(10)).await;
    assert_eq!(got.as_deref(), Some(""), "closed, nothing sent");
    // A body that never ends: 408 request_timeout.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let got = read_to_close(&mut slow, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("request_timeout"), "{got}");
    // A keep-alive connection left idle after its request: closed.
    let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut idle, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    // The WebSocket, quiet longer than that, still works.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    api.group("g", &["alice", "bob"]).await;
    let bob = api.user("bob").await;
    api.send(&bob, "g", "b1", "hello").await;
    assert_eq!(frame_seqs(&ws.messages(1).await), vec![1]);
}

/// The frames that arrive within `d`.
async fn frames_within(ws: &mut Ws, d: Duration) -> Vec<Value> {
    let until = tokio::time::Instant::now() + d;
    let mut out = Vec::new();
    while let Ok(Some(f)) =
        tokio::time::timeout_at(until, ws.next_within(Duration::from_secs(5))).await
    {
        out.push(f);
    }
    out
}

/// Frames other than sends (acks, reads, pings, bad frames) are limited per connection
/// (`limits.frames_per_second`, bursts of twice that): past it the server stops reading the
/// connection until a token is back — the frames are answered later, not dropped. Before, a
/// client could make the server parse and answer such frames as fast as it could send them.
#[tokio::test]
async fn non_send_frames_are_rate_limited_by_backpressure() {
    let server = Server::start(&["--limits-frames-per-second", "5"]);
    let api = Api::new(&server);
    let alice = api.user("alice").await;
    let mut ws = Ws::connect(&server, &alice, "").await;
    for _ in 0..30 {
        ws.feed(json!({"type": "ping"})).await;
    }
    ws.flush().await;
    // The burst (10) and what half a second refills (2 or 3) come back at once...
    let early = frames_within(&mut ws, Duration::from_millis(500)).await;
    assert!(early.iter().all(|f| f["type"] == "pong"));
    let mut pongs = early.len();
    assert!(
        (10..=14).contains(&pongs),
        "{pongs} pongs in the first half second"
    );
    // ...and the rest as tokens come back: none is lost.
    while pongs < 30 {
        let f = ws
            .next_within(Duration::from_secs(10))
            .await
            .expect("a pong");
        assert_eq!(f["type"], "pong");
        pongs += 1;
    }
    // A refused send is charged as any other frame (only an accepted send is the send
    // limit's): a flood of them is slowed the same way.
    tokio::time::sleep(Duration::from_secs(4)).await; // the burst is back
    let bad = "x".repeat(300);
    for _ in 0..30 {
        ws.feed(json!({"type": "send", "client_msg_id": bad, "channel": "g", "payload": {}}))
            .await;
    }
    ws.flush().await;
    let early = frames_within(&mut ws, Duration::from_millis(500)).await;
    assert!(early.iter().all(|f| f["type"] == "error"), "{early:?}");
    let errors = early.len();
    assert!(
        (10..=14).contains(&errors),
        "{errors} refusals in the first half second"
    );
}

/// A server taking 1 frame a second per connection, where bob sent `n` messages to group `g`
/// and alice has just connected with catch-up: the server and her WebSocket.
async fn catching_up_at_one_frame_a_second(n: u64) -> (Server, Ws) {
    let server = Server::start(&[
        "--limits-frames-per-second",
        "1",
        "--limits-sends-per-second",
        "1000000",
    ]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let bob = api.user("bob").await;
    for i in 1..=n {
        api.send(&bob, "g", &format!("b{i}"), "hello").await;
    }
    let alice = api.user("alice").await;
    let ws = Ws::connect(&server, &alice, "").await;
    (server, ws)
}

/// An ack that moves the user's position forward is not charged to `limits.frames_per_second`
/// (such acks are bounded by the messages there are): a client acking each of the 60 messages
/// of its catch-up at 1 frame a second has them read at once, its ping answered behind them
/// (fails without: the acks took a minute). Acks that move nothing are charged as before.
#[tokio::test]
async fn acks_that_move_the_cursor_are_not_charged_to_the_frame_limit() {
    let (_server, mut ws) = catching_up_at_one_frame_a_second(60).await;
    let seqs = frame_seqs(&ws.messages(60).await);
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    for seq in seqs {
        ws.feed(json!({"type": "ack", "channel": "g", "seq": seq}))
            .await;
    }
    ws.feed(json!({"type": "ping"})).await;
    ws.flush().await;
    let f = ws
        .next_within(Duration::from_secs(10))
        .await
        .expect("a pong");
    assert_eq!(f["type"], "pong");
    // Acks of what is acked already move nothing: charged (the burst of 2 is spent by now).
    for _ in 0..6 {
        ws.feed(json!({"type": "ack", "channel": "g", "seq": 60}))
            .await;
    }
    ws.feed(json!({"type": "ping"})).await;
    ws.flush().await;
    let early = frames_within(&mut ws, Duration::from_millis(1500)).await;
    assert!(early.is_empty(), "{early:?}");
    let f = ws
        .next_within(Duration::from_secs(15))
        .await
        .expect("a pong");
    assert_eq!(f["type"], "pong");
}

/// Catch-up writes nothing while the connection is past its frame limit: a client sending
/// charged frames as it reads (here 6 pings at 1 frame a second, burst 2) blocked in its own
/// send once the server stopped reading, stopped reading, and the server's catch-up write then
/// blocked too, reading nothing, until the write timeout dropped the connection (found by a QA
/// round with a read and an ack per message). Here: not all 600 messages come within the first
/// 1.5 s (fails without: catch-up wrote them at once), and then every one comes, in order,
/// with every pong.
#[tokio::test]
async fn catch_up_waits_while_the_frame_limit_stops_reading() {
    let (_server, mut ws) = catching_up_at_one_frame_a_second(600).await;
    for _ in 0..6 {
        ws.feed(json!({"type": "ping"})).await;
    }
    ws.flush().await;
    let early = frames_within(&mut ws, Duration::from_millis(1500)).await;
    let mut seqs: Vec<u64> = early
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.len() < 600,
        "all {} messages while the server read nothing",
        seqs.len()
    );
    let mut pongs = early.iter().filter(|f| f["type"] == "pong").count();
    while seqs.len() < 600 || pongs < 6 {
        let f = ws
            .next_within(Duration::from_secs(15))
            .await
            .expect("a frame");
        match f["type"].as_str() {
            Some("message") => seqs.push(f["seq"].as_u64().unwrap()),
            Some("pong") => pongs += 1,
            _ => {}
        }
    }
    assert_eq!(seqs, (1..=600).collect::<Vec<_>>());
}

/// The admin reads any channel that exists or has had messages; one that never did is 404
/// `channel_not_found`, as the README says (it was `200 []`). So is a message trace in one
/// (it said `message_not_found`); a message that is not there is `message_not_found`.
#[tokio::test]
async fn the_admin_reading_a_channel_that_never_existed_gets_404() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    assert_eq!(
        code_of(&api, "GET", "/v1/channels/nope/messages", ADMIN, None).await,
        (404, "channel_not_found".into())
    );
    assert_eq!(
        code_of(
            &api,
            "GET",
            "/v1/channels/nope/messages/1/trace",
            ADMIN,
            None
        )
        .await,
        (404, "channel_not_found".into())
    );
    assert_eq!(
        code_of(&api, "GET", "/v1/channels/g/messages/1/trace", ADMIN, None).await,
        (404, "message_not_found".into())
    );
    let (status, _) = api
        .call("GET", "/v1/channels/g/messages", ADMIN, None)
        .await;
    assert_eq!(status, 200);
}

/// A message's trace counts the reads of members only: a user added after it (whose join put
/// their cursor past it) is not listed when they read, while a member re-added meanwhile
/// still is — adding a member writes nothing, so the log's subscribes are joins.
#[tokio::test]
async fn a_trace_lists_the_reads_of_members_not_of_later_joiners() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let dan = api.user("dan").await;
    api.send(&alice, "g", "m1", "hello").await;
    let members = Some(json!({"uids": ["bob", "dan"]}));
    api.ok("POST", "/v1/channels/g/members", ADMIN, members)
        .await;
    for token in [&bob, &dan] {
        api.ok(
            "POST",
            "/v1/channels/g/read",
            token,
            Some(json!({"seq": 1})),
        )
        .await;
    }
    let trace = api
        .ok("GET", "/v1/channels/g/messages/1/trace", ADMIN, None)
        .await;
    let uids = |k: &str| -> Vec<String> {
        trace[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["uid"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(uids("read"), vec!["bob"], "{trace}");
    assert_eq!(uids("delivered"), vec!["bob"], "{trace}");
}

/// Calls racing to add one user write one subscribe: each read them as not a member before
/// either's event was applied, and both wrote one (a message between the two was then not
/// counted in its trace for that user, whose second subscribe read as a join after it).
#[tokio::test]
async fn racing_calls_adding_one_user_write_one_subscribe() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    for round in 0..5 {
        let uid = format!("new{round}");
        let calls = (0..12).map(|_| {
            let (api, body) = (api.clone(), json!({"uids": [uid.clone(), "alice"]}));
            async move {
                api.ok("POST", "/v1/channels/g/members", ADMIN, Some(body))
                    .await
            }
        });
        for view in futures_util::future::join_all(calls).await {
            assert_eq!(view["members"], 2 + round, "{view}");
        }
    }
    let log = api.text("/v1/log?from=0", ADMIN).await;
    let subscribes: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["type"] == "members_subscribed")
        .collect();
    let uids: Vec<&str> = subscribes
        .iter()
        .flat_map(|e| e["uids"].as_array().unwrap())
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(
        uids,
        ["alice", "new0", "new1", "new2", "new3", "new4"],
        "{subscribes:?}"
    );
}

/// A membership or list call of `limits.max_uids_per_call` uids of the longest kind is taken:
/// the log's largest append was sized by the payload limit alone (2 × 64 KiB + 1 MiB), and
/// 20,000 uids of 64 characters made an event past it, answered 500 `internal`.
#[tokio::test]
async fn the_largest_uids_call_fits_the_log() {
    let server = Server::start(&["--limits-max-uids-per-call", "20000"]);
    let api = Api::new(&server);
    api.group("g", &[]).await;
    let uids: Vec<String> = (0..20_000).map(|i| format!("{i:064}")).collect();
    let view = api
        .ok(
            "POST",
            "/v1/channels/g/members",
            ADMIN,
            Some(json!({ "uids": uids })),
        )
        .await;
    assert_eq!(view["members"], 20_000);
    let list = api
        .ok(
            "POST",
            "/v1/users/alice/denylist",
            ADMIN,
            Some(json!({ "uids": uids })),
        )
        .await;
    assert_eq!(list["uids"].as_array().map(Vec::len), Some(20_000));
    // As JSON may write them: pretty-printed, every character escaped (413 for the
    // whitespace alone until 2026-12-03).
    let escaped: Vec<String> = uids
        .iter()
        .map(|u| u.chars().map(|c| format!("\\u{:04x}", c as u32)).collect())
        .collect();
    let body = format!(
        "{{\n    \"uids\": [\n{}\n    ]\n}}",
        escaped
            .iter()
            .map(|u| format!("        \"{u}\""))
            .collect::<Vec<_>>()
            .join(",\n")
    );
    let (status, answer) = api
        .send_text("DELETE", "/v1/users/alice/denylist", ADMIN, &body)
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["uids"].as_array().map(Vec::len), Some(0), "{answer}");
    // Other calls keep their own limit (the payload's, or 67 bytes a uid): a send of 2 MB,
    // whitespace for the most part, is 413.
    let padded = format!(
        "{{\"channel\":\"g\",\"client_msg_id\":\"big\",\"payload\":\"hi\"{}}}",
        " ".repeat(2 << 20)
    );
    let (status, answer) = api.post_text("/v1/messages", ADMIN, &padded).await;
    assert_eq!(status, 413, "{answer}");
    // One more uid is refused, as before.
    let mut more = uids;
    more.push("one-more".into());
    assert_eq!(
        code_of(
            &api,
            "POST",
            "/v1/channels/g/members",
            ADMIN,
            Some(json!({ "uids": more }))
        )
        .await,
        (413, "payload_too_large".into())
    );
}

/// `limit` is 1 to 1000 on every paged call: 0 is 400 `invalid_query` (it was taken as 1 and
/// answered one item with `has_more`), a larger one is taken as 1000.
#[tokio::test]
async fn a_zero_limit_is_refused_and_a_large_one_capped() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    api.send(&alice, "g", "c1", "one").await;
    api.send(&alice, "g", "c2", "two").await;
    for path in [
        "/v1/channels/g/messages?limit=0",
        "/v1/sync?limit=0",
        "/v1/conversations?limit=0",
        "/v1/changes?since=0&limit=0",
    ] {
        let (status, v) = api.call("GET", path, &bob, None).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some("invalid_query")),
            "{path}: {v}"
        );
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains("between 1 and 1000"), "{path}: {v}");
    }
    let page = api
        .ok("GET", "/v1/channels/g/messages?limit=1", &bob, None)
        .await;
    assert_eq!(
        (page_seqs(&page), &page["has_more"]),
        (vec![2], &json!(true))
    );
    let page = api
        .ok("GET", "/v1/channels/g/messages?limit=5000", &bob, None)
        .await;
    assert_eq!(
        (page_seqs(&page), &page["has_more"]),
        (vec![2, 1], &json!(false)),
        "the newest page, newest first"
    );
    let sync = api.ok("GET", "/v1/sync?limit=5000", &bob, None).await;
    assert_eq!(page_seqs(&sync), vec![1, 2]);
    // Past every integer is larger too (it was 400 `invalid_query`); not a number is refused.
    let huge = "limit=99999999999999999999999";
    let sync = api.ok("GET", &format!("/v1/sync?{huge}"), &bob, None).await;
    assert_eq!(page_seqs(&sync), vec![1, 2]);
    let list = format!("/v1/conversations?{huge}");
    api.ok("GET", &list, &bob, None).await;
    for bad in ["-1", "x", "", "1.5"] {
        let path = format!("/v1/sync?limit={bad}");
        let (status, v) = api.call("GET", &path, &bob, None).await;
        assert_eq!(
            (status, &v["error"]["code"]),
            (400, &json!("invalid_query")),
            "{bad}: {v}"
        );
    }
}

/// `.` and `..` name no user or channel: a client removes them from a URL path as dot
/// segments, so a channel or user so named could not be reached by its path (one named `..`
/// took `/v1/channels/../members` to `/v1/members`). Refused wherever an id is taken in a body.
#[tokio::test]
async fn dot_segments_are_not_ids() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let alice = api.user("alice").await;
    for dots in [".", ".."] {
        let body = json!({"channel": dots, "payload": 1});
        assert_eq!(
            code_of(&api, "POST", "/v1/messages", &alice, Some(body)).await,
            (400, "invalid_channel".into()),
            "{dots}"
        );
        let body = json!({"channel": format!("@{dots}"), "payload": 1});
        assert_eq!(
            code_of(&api, "POST", "/v1/messages", &alice, Some(body)).await,
            (400, "invalid_channel".into()),
            "@{dots}"
        );
        // Nor in a person channel's canonical form.
        let body = json!({"channel": format!("p:alice:{dots}"), "payload": 1});
        assert_eq!(
            code_of(&api, "POST", "/v1/messages", &alice, Some(body)).await,
            (400, "invalid_channel".into()),
            "p:alice:{dots}"
        );
        let body = json!({"channel": "g", "payload": 1, "from": dots});
        assert_eq!(
            code_of(&api, "POST", "/v1/messages", ADMIN, Some(body)).await,
            (400, "invalid_uid".into()),
            "from {dots}"
        );
        let body = json!({"uids": [dots]});
        assert_eq!(
            code_of(&api, "POST", "/v1/channels/g/members", ADMIN, Some(body)).await,
            (400, "invalid_uid".into()),
            "member {dots}"
        );
    }
    // Dots within an id are fine.
    api.group("a..b", &["alice", "..c"]).await;
    let (status, v) = api
        .call(
            "POST",
            "/v1/messages",
            &alice,
            Some(json!({"channel": "a..b", "payload": 1})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
}

/// `"client_msg_id": null` over HTTP is no id, as over a WebSocket and as an absent one (it
/// was 400 `invalid_request`): each such send is a new message.
#[tokio::test]
async fn a_null_client_msg_id_is_none() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let alice = api.user("alice").await;
    let mut seqs = Vec::new();
    for _ in 0..2 {
        let body = json!({"channel": "g", "client_msg_id": null, "payload": 1});
        let (status, v) = api.call("POST", "/v1/messages", &alice, Some(body)).await;
        assert_eq!(status, 201, "{v}");
        assert_eq!(v["duplicate"], json!(false), "{v}");
        seqs.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, [1, 2]);
}

/// Whether a channel exists is read under the sequencer's lock: of racing creations of one
/// channel exactly one is 201 (the others update it: 200), of racing deletions exactly one is
/// 204 (the others 404). Read before the lock, several were 201 and several 204.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creations_and_deletions_of_a_channel_are_one_each() {
    let server = Server::start(&[]);
    let api = std::sync::Arc::new(Api::new(&server));
    for method in ["PUT", "DELETE"].repeat(5) {
        let calls: Vec<_> = (0..32)
            .map(|_| {
                let api = api.clone();
                tokio::spawn(
                    async move { api.call(method, "/v1/channels/race", ADMIN, None).await },
                )
            })
            .collect();
        let mut statuses = Vec::new();
        for call in calls {
            let (status, v) = call.await.unwrap();
            statuses.push((status, v));
        }
        let (first, rest) = if method == "PUT" {
            (201, 200)
        } else {
            (204, 404)
        };
        assert_eq!(
            statuses.iter().filter(|(s, _)| *s == first).count(),
            1,
            "{method}: {statuses:?}"
        );
        assert!(
            statuses.iter().all(|(s, _)| *s == first || *s == rest),
            "{method}: {statuses:?}"
        );
    }
}

/// A version past the server's own (a data directory restored to an earlier point, or a
/// client's damage) is no version of its lists: conversations answer as a first call
/// (`reset`), changes tell every change still kept with `forgotten` (both answered "nothing
/// changed", and the client never caught up).
#[tokio::test]
async fn a_version_from_the_future_starts_over() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let alice = api.user("alice").await;
    api.send(&alice, "g", "c1", "hi").await;
    api.send(&alice, "g", "c2", "oops").await;
    api.ok("DELETE", "/v1/channels/g/messages/2", &alice, None)
        .await;
    let now = api.ok("GET", "/v1/conversations", &alice, None).await;
    let version = now["version"].as_u64().unwrap();
    // Its own version: nothing changed since.
    let same = api
        .ok(
            "GET",
            &format!("/v1/conversations?since_version={version}"),
            &alice,
            None,
        )
        .await;
    assert_eq!(
        (
            same["reset"].clone(),
            same["conversations"].as_array().unwrap().len()
        ),
        (json!(false), 0)
    );
    let future = api
        .ok(
            "GET",
            &format!("/v1/conversations?since_version={}", version + 1000),
            &alice,
            None,
        )
        .await;
    assert_eq!(future["reset"], json!(true), "{future}");
    assert_eq!(
        future["conversations"][0]["channel"],
        json!("g"),
        "{future}"
    );
    let changes = api
        .ok(
            "GET",
            "/v1/changes?since=18446744073709551615",
            &alice,
            None,
        )
        .await;
    assert_eq!(changes["forgotten"], json!(true), "{changes}");
    assert_eq!(changes["messages"][0]["seq"], json!(2), "{changes}");
    assert_eq!(changes["messages"][0]["recalled"], json!(true), "{changes}");
    let start = api.ok("GET", "/v1/changes", &alice, None).await;
    let current = api
        .ok(
            "GET",
            &format!("/v1/changes?since={}", start["version"]),
            &alice,
            None,
        )
        .await;
    assert_eq!(current["forgotten"], json!(false), "{current}");
    assert_eq!(current["messages"], json!([]), "{current}");
}

/// Two credentials naming different callers are none (401 `invalid_token`): two
/// `Authorization` headers (the first was taken), a WebSocket upgrade's header and `?token=`
/// naming different tokens (the header's was taken). The same token twice over a WebSocket is
/// one.
#[tokio::test]
async fn conflicting_credentials_are_none() {
    use tokio::io::AsyncWriteExt as _;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let server = Server::start(&[]);
    let api = Api::new(&server);
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    for (headers, status) in [
        (format!("Authorization: Bearer {alice}\r\n"), "200"),
        (
            format!("Authorization: Bearer {alice}\r\nAuthorization: Bearer {bob}\r\n"),
            "401",
        ),
        // Another scheme beside it (a proxy's) is not a credential of ours; the same token
        // twice is one.
        (
            format!("Authorization: Basic dTpw\r\nAuthorization: Bearer {alice}\r\n"),
            "200",
        ),
        (
            format!("Authorization: Bearer {alice}\r\nAuthorization: Bearer {alice}\r\n"),
            "200",
        ),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let req = format!(
            "GET /v1/conversations HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let got = read_to_close(&mut tcp, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(got.starts_with(&format!("HTTP/1.1 {status}")), "{got}");
        if status == "401" {
            assert!(got.contains("two different tokens"), "{got}");
        }
    }
    let upgrade = |header: String, query: &str| {
        let mut req = server.ws_url(query).into_client_request().unwrap();
        req.headers_mut()
            .insert("Authorization", header.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    let refused = upgrade(format!("Bearer {bob}"), &format!("?token={alice}")).await;
    assert!(
        matches!(
            &refused,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401
        ),
        "{refused:?}"
    );
    assert!(
        upgrade(format!("Bearer {alice}"), &format!("?token={alice}"))
            .await
            .is_ok()
    );
    // A page's `Basic` credentials, which a browser sends with its upgrade, beside the query's
    // token; an empty `token=` beside the header's.
    assert!(
        upgrade("Basic dTpw".into(), &format!("?token={alice}"))
            .await
            .is_ok()
    );
    assert!(upgrade(format!("Bearer {alice}"), "?token=").await.is_ok());
    // The same token twice in the query is that token (it was 400 `invalid_query`); two that
    // differ are 401.
    assert!(
        upgrade(
            "Basic dTpw".into(),
            &format!("?token={alice}&token={alice}")
        )
        .await
        .is_ok()
    );
    let refused = upgrade("Basic dTpw".into(), &format!("?token={alice}&token={bob}")).await;
    assert!(
        matches!(
            &refused,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401
        ),
        "{refused:?}"
    );
}

/// A uid in the path of a user's list is checked on GET as on POST and DELETE (an invalid one
/// answered 200 and an empty list), and an admin send naming an invalid sender is
/// `invalid_uid` (it was `invalid_request`, as for no sender at all).
#[tokio::test]
async fn an_invalid_uid_is_invalid_uid_on_every_call() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let long = "u".repeat(70);
    for list in ["allowlist", "denylist"] {
        for uid in ["bad%20x", long.as_str()] {
            let path = format!("/v1/users/{uid}/{list}");
            assert_eq!(
                code_of(&api, "GET", &path, ADMIN, None).await,
                (400, "invalid_uid".into()),
                "GET {path}"
            );
            assert_eq!(
                code_of(&api, "POST", &path, ADMIN, Some(json!({"uids": ["bob"]}))).await,
                (400, "invalid_uid".into()),
                "POST {path}"
            );
        }
        let v = api
            .ok("GET", &format!("/v1/users/alice/{list}"), ADMIN, None)
            .await;
        assert_eq!(v, json!({"uids": []}));
    }
    let send = |from: Option<&str>| {
        let mut body = json!({"channel": "g", "payload": 1});
        if let Some(from) = from {
            body["from"] = json!(from);
        }
        body
    };
    assert_eq!(
        code_of(
            &api,
            "POST",
            "/v1/messages",
            ADMIN,
            Some(send(Some("bad uid")))
        )
        .await,
        (400, "invalid_uid".into())
    );
    assert_eq!(
        code_of(
            &api,
            "POST",
            "/v1/messages",
            ADMIN,
            Some(send(Some(long.as_str())))
        )
        .await,
        (400, "invalid_uid".into())
    );
    assert_eq!(
        code_of(&api, "POST", "/v1/messages", ADMIN, Some(send(None))).await,
        (400, "invalid_request".into())
    );
    let (status, v) = api
        .call("POST", "/v1/messages", ADMIN, Some(send(Some("alice"))))
        .await;
    assert_eq!(status, 201, "{v}");
}

/// A body that is present needs `Content-Type: application/json` where the body is optional
/// too (`PUT /v1/channels/{id}` took a JSON body sent as `text/plain`, or with no type, and
/// applied it); an empty body is still taken whatever its type.
#[tokio::test]
async fn an_optional_body_that_is_present_must_be_json() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let put = |content_type: Option<&str>, body: &str| {
        let mut req = client
            .put(server.url("/v1/channels/tp2"))
            .bearer_auth(ADMIN)
            .body(body.to_owned());
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap();
            (status, v)
        }
    };
    let ban = r#"{"flags": {"ban": true}}"#;
    for content_type in [Some("text/plain"), None] {
        let (status, v) = put(content_type, ban).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (415, Some("unsupported_media_type")),
            "{content_type:?}: {v}"
        );
    }
    let (status, v) = put(None, "").await;
    assert_eq!(status, 201, "an empty body, no type: created, {v}");
    assert_eq!(v["flags"]["ban"], false, "{v}");
    let (status, v) = put(Some("text/plain"), " \n").await;
    assert_eq!(status, 200, "whitespace alone is no body: {v}");
    let (status, v) = put(Some("application/json"), ban).await;
    assert_eq!((status, &v["flags"]["ban"]), (200, &json!(true)), "{v}");
    let (status, v) = put(Some("application/json"), r#"{"flags": 5}"#).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );
}

/// A send refused by the rate limit says when to retry: `Retry-After` in whole seconds (the
/// 429 had none).
#[tokio::test]
async fn a_rate_limited_send_says_when_to_retry() {
    let server = Server::start(&["--limits-sends-per-second", "1"]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let alice = api.user("alice").await;
    let client = reqwest::Client::new();
    // A burst of two is taken; one of the next few is refused (a second refills one).
    let mut refused = None;
    for i in 0..5 {
        let resp = client
            .post(server.url("/v1/messages"))
            .bearer_auth(&alice)
            .json(&json!({"channel": "g", "client_msg_id": format!("r{i}"), "payload": i}))
            .send()
            .await
            .unwrap();
        if resp.status().as_u16() == 429 {
            refused = Some(resp);
            break;
        }
        assert_eq!(resp.status().as_u16(), 201);
    }
    let resp = refused.expect("a send past the burst is refused");
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(retry_after.as_deref(), Some("1"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
}

/// Posts a send that must be refused 429: its `Retry-After` (whole seconds) and its body.
async fn send_refused_429(server: &Server, token: &str, body: Value) -> (u64, Value) {
    let resp = reqwest::Client::new()
        .post(server.url("/v1/messages"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (wait, resp.json().await.unwrap())
}

/// `limits.send_bytes_per_second` limits the payload bytes a user sends (and edits in) a second,
/// beside the number of sends: 200 sends of the largest payload a second were ~13 MB/s of log
/// per user, for any user. Its burst is twice the rate, and never less than one largest
/// payload; a refused send writes nothing and says when to retry; small sends go on, as do the
/// admin's sends as the user.
#[tokio::test]
async fn payload_bytes_per_second_are_limited_per_user() {
    let server = Server::start(&[
        "--limits-send-bytes-per-second",
        "100",
        "--limits-max-payload-bytes",
        "4096",
    ]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let alice = api.user("alice").await;
    // 3,000 bytes stored (a JSON string: its quotes count).
    let big = Value::String("x".repeat(2998));
    let body = |id: &str| json!({"channel": "g", "client_msg_id": id, "payload": big});
    let (status, v) = api
        .call("POST", "/v1/messages", &alice, Some(body("b1")))
        .await;
    assert_eq!(
        status, 201,
        "the largest burst (4,096 bytes) holds one: {v}"
    );
    let (wait, v) = send_refused_429(&server, &alice, body("b2")).await;
    // ~19 s until 3,000 bytes are there at 100 a second (a slow rate: a slow machine refills
    // little while the test runs).
    assert!((15..=20).contains(&wait), "{wait}");
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("payload bytes"),
        "{v}"
    );
    // Over a WebSocket: an error frame naming the send, with retry_after.
    let mut ws = Ws::connect(&server, &alice, "?catch_up=false").await;
    ws.send(json!({"type": "send", "client_msg_id": "b3", "channel": "g", "payload": big}))
        .await;
    let e = ws.next_of("error").await;
    assert_eq!(
        (e["code"].as_str(), e["client_msg_id"].as_str()),
        (Some("rate_limited"), Some("b3")),
        "{e}"
    );
    assert!(e["retry_after"].as_u64().unwrap() >= 10, "{e}");
    // An edit's payload counts too.
    let (status, v) = api
        .call(
            "PATCH",
            "/v1/channels/g/messages/1",
            &alice,
            Some(json!({"payload": big})),
        )
        .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (429, &json!("rate_limited")),
        "{v}"
    );
    // A small send still fits; the admin's send as alice is not hers to pay.
    assert_eq!(api.send(&alice, "g", "small", "hi").await["seq"], 2);
    let by_admin = json!({"channel": "g", "from": "alice", "client_msg_id": "adm", "payload": big});
    api.ok("POST", "/v1/messages", ADMIN, Some(by_admin)).await;
    // Nothing refused was written: seq 1 (not edited), the small send, the admin's.
    let page = api
        .ok("GET", "/v1/channels/g/messages?after_seq=0", &alice, None)
        .await;
    let ids: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["client_msg_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b1", "small", "adm"]);
    assert!(page["messages"][0].get("edited").is_none(), "{page}");
}

/// A user opens at most `limits.new_person_channels_per_hour` person channels an hour (each
/// holds a head and cursors for good, and any uid may be named: sends to made-up uids grew
/// the server's memory without end — security QA): past it, 429 `too_many_new_chats` with
/// `Retry-After` (over a WebSocket, an error frame with the send's `client_msg_id`), while the
/// channels already open, groups, other users and the admin's sends on their behalf go on.
#[tokio::test]
async fn a_user_opens_so_many_person_channels_an_hour() {
    let server = Server::start(&["--limits-new-person-channels-per-hour", "3"]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    for to in ["a1", "a2", "a3"] {
        api.send(&alice, &format!("@{to}"), &format!("to-{to}"), "hi")
            .await;
    }
    let body = json!({"channel": "@a4", "client_msg_id": "to-a4", "payload": 1});
    let (wait, v) = send_refused_429(&server, &alice, body).await;
    assert!((3500..=3600).contains(&wait), "{wait}");
    assert_eq!(v["error"]["code"], "too_many_new_chats", "{v}");
    // Over a WebSocket too.
    let mut ws = Ws::connect(&server, &alice, "?catch_up=false").await;
    ws.send(json!({"type": "send", "client_msg_id": "to-a5", "channel": "@a5", "payload": 1}))
        .await;
    let e = ws.next_of("error").await;
    assert!(
        (3500..=3600).contains(&e["retry_after"].as_u64().unwrap()),
        "{e}"
    );
    assert_eq!(
        (e["code"].as_str(), e["client_msg_id"].as_str()),
        (Some("too_many_new_chats"), Some("to-a5")),
        "{e}"
    );
    // What is open goes on; so do groups, another user, and the admin as alice.
    assert_eq!(api.send(&alice, "@a1", "again", "hi").await["seq"], 2);
    assert_eq!(api.send(&alice, "g", "grp", "hi").await["seq"], 1);
    assert_eq!(api.send(&bob, "@a4", "bob-a4", "hi").await["seq"], 1);
    let by_admin =
        json!({"channel": "p:a6:alice", "from": "alice", "client_msg_id": "adm", "payload": 1});
    api.ok("POST", "/v1/messages", ADMIN, Some(by_admin)).await;
}

/// A recall by the admin is `"by": ":admin"`, which no user id can be (`:` is in none): it was
/// `"admin"`, a valid uid, so a recall by the user `admin` looked the same. A recalled
/// message in catch-up is a `message` frame with `"recalled": true` and no payload.
#[tokio::test]
async fn an_admin_recall_is_not_taken_for_the_user_admin() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    api.group("g", &["admin", "bob", "carol"]).await;
    let admin_user = api.user("admin").await;
    let bob = api.user("bob").await;
    let carol = api.user("carol").await;
    let mut ws = Ws::connect(&server, &bob, "?catch_up=false").await;
    api.send(&admin_user, "g", "c1", "from the user admin")
        .await;
    api.send(&bob, "g", "c2", "from bob").await;
    api.ok("DELETE", "/v1/channels/g/messages/1", &admin_user, None)
        .await;
    api.ok("DELETE", "/v1/channels/g/messages/2", ADMIN, None)
        .await;
    let by_user = ws.next_of("recall").await;
    assert_eq!(
        (&by_user["seq"], &by_user["by"]),
        (&json!(1), &json!("admin"))
    );
    let by_admin = ws.next_of("recall").await;
    assert_eq!(
        (&by_admin["seq"], &by_admin["by"]),
        (&json!(2), &json!(":admin"))
    );
    // carol was never online: her catch-up brings both, recalled, without payloads.
    let mut ws = Ws::connect(&server, &carol, "").await;
    let msgs = ws.messages(2).await;
    assert_eq!(frame_seqs(&msgs), vec![1, 2]);
    for m in &msgs {
        assert_eq!(m["recalled"], true, "{m}");
        assert!(
            m.get("payload").is_none() && m.get("payload_b64").is_none(),
            "{m}"
        );
        assert!(m["from"].is_string() && m["message_id"].is_u64(), "{m}");
    }
}

/// A server full of WebSocket sessions still answers plain HTTP: sessions stop short of the
/// connection budget the open-file limit leaves by a headroom, so `/healthz`, `/readyz` and
/// the admin API stay reachable. At capacity they waited in the kernel's backlog, and a
/// liveness probe would have restarted a server that was only full. Found by a review.
/// Sessions take the whole budget but the headroom, not one less (the upgrading connection's
/// own permit was counted against it: found by a QA round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_full_of_sessions_still_answers_http() {
    let server = Server::start_with_open_files(300, &[]);
    let api = Api::new(&server);
    let mut tokens = Vec::new();
    for u in 0..8 {
        tokens.push(api.user(&format!("u{u}")).await);
    }
    // No connection but the sessions' from here on (the client's pooled one closed).
    drop(api);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sessions = Vec::new();
    let mut retried = false;
    let refused = loop {
        // At most 30 sessions a user (32 by default).
        let token = &tokens[sessions.len() / 30];
        match try_connect(&server, token).await {
            Ok(ws) => {
                sessions.push(ws);
                retried = false;
            }
            // Once more after a while: the previous upgrade's connection may not have given
            // its permit back yet.
            Err(_) if !retried => {
                retried = true;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => break e,
        }
        assert!(sessions.len() < 240, "no connection limit was reached");
    };
    assert_eq!(
        (refused.0, refused.1["error"]["code"].as_str()),
        (503, Some("too_many_connections")),
        "{refused:?} after {} sessions",
        sessions.len()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = common::metrics_text(&server).await;
    let budget = common::metric_in(&text, "tidings_connections_budget") as usize;
    let headroom = common::metric_in(&text, "tidings_connections_http_headroom") as usize;
    assert!(headroom > 0 && budget > 100, "{budget} / {headroom}");
    assert_eq!(sessions.len(), budget - headroom, "{budget} / {headroom}");
    // The scrape's own connection holds one.
    assert_eq!(
        common::metric_in(&text, "tidings_connections_free") as usize,
        headroom - 1
    );
    // New clients, new connections: answered.
    for path in ["/healthz", "/readyz", "/v1/channels/nope"] {
        let fresh = Api::new(&server);
        let answered =
            tokio::time::timeout(Duration::from_secs(5), fresh.call("GET", path, ADMIN, None))
                .await;
        let (status, body) = answered.unwrap_or_else(|_| panic!("{path}: no answer within 5 s"));
        assert!(status == 200 || status == 404, "{path}: {status} {body}");
    }
}

/// A client holding the whole connection budget in connections that send half a request
/// (each kept for the read timeout, and opened again) no longer leaves the server unreachable:
/// a newcomer past the budget closes the oldest plain-HTTP connection and is answered. Before,
/// it waited in the kernel's backlog until one timed out (found by a QA round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_holding_the_budget_are_shed_for_newcomers() {
    let server = Server::start_with_open_files(300, &[]);
    let api = Api::new(&server);
    api.group("g", &["alice", "bob"]).await;
    let (alice, bob) = (api.user("alice").await, api.user("bob").await);
    // A WebSocket session is not a connection to shed: it outlives the flood. Nor is a
    // response still being sent (a follow stream, the oldest plain-HTTP connection here).
    let mut ws = Ws::connect(&server, &bob, "").await;
    let mut follow = reqwest::Client::new()
        .get(server.url("/v1/log?follow=true"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    // Far more than the budget a limit of 300 leaves (about half of it).
    let held = half_sent_requests(&server, 400).await;
    assert!(held.len() > 200, "{} connections", held.len());
    for path in ["/healthz", "/v1/channels/nope"] {
        let fresh = Api::new(&server);
        let answered =
            tokio::time::timeout(Duration::from_secs(5), fresh.call("GET", path, ADMIN, None))
                .await;
        let (status, body) = answered.unwrap_or_else(|_| panic!("{path}: no answer within 5 s"));
        assert!(status == 200 || status == 404, "{path}: {status} {body}");
    }
    drop(held);
    api.send(&alice, "g", "a1", "still there?").await;
    assert_eq!(frame_seqs(&ws.messages(1).await), vec![1]);
    follow_until(&mut follow, "still there?").await;
}

/// Connections that serve a request are not shed for newcomers, whatever they wait for: a
/// 4 MiB page going out to a reader that takes it slowly is sent whole during a flood of
/// half-sent requests (its body ends before its last megabyte leaves: closed then, it was cut
/// short), and with every connection busy — slow uploads, a follow stream — a newcomer waits
/// for one to end rather than resetting one (it reset the oldest after a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_serving_a_request_are_not_shed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = Server::start_with_open_files(300, &[]);
    let api = std::sync::Arc::new(Api::new(&server));
    api.group("big", &["alice"]).await;
    let text = "x".repeat(60_000);
    for i in 0..72 {
        let body = json!({"channel": "big", "from": "alice", "client_msg_id": format!("b{i}"), "payload": text});
        let (status, v) = api.call("POST", "/v1/messages", ADMIN, Some(body)).await;
        assert_eq!(status, 201, "{v}");
    }
    // The page, read slowly through a small receive buffer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut page = socket.connect(server.addr).await.unwrap();
    let req = format!(
        "GET /v1/channels/big/messages?limit=1000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nConnection: close\r\n\r\n"
    );
    page.write_all(req.as_bytes()).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = page.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break got;
            }
            got.extend_from_slice(&buf[..n]);
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
    });
    let held = half_sent_requests(&server, 400).await;
    let got = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the page within a minute")
        .unwrap();
    drop(held);
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(length > 3 << 20, "{length}");
    assert_eq!(got.len() - head_end, length, "the page was cut short");

    // Every connection busy: a follow stream and uploads whose bodies come slowly, more of them
    // than the budget holds (about 140).
    let mut follow = reqwest::Client::new()
        .get(server.url("/v1/log?follow=true"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let uploads: Vec<_> = (0..180)
        .map(|i| {
            let addr = server.addr;
            tokio::spawn(async move {
                let body = json!({"channel": "big", "from": "alice", "client_msg_id": format!("u{i}"), "payload": i}).to_string();
                let (first, rest) = body.split_at(body.len() / 2);
                let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let head = format!(
                    "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{first}",
                    body.len()
                );
                tcp.write_all(head.as_bytes()).await?;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                tcp.write_all(rest.as_bytes()).await?;
                let mut answer = String::new();
                tcp.read_to_string(&mut answer).await?;
                Ok::<_, std::io::Error>(answer)
            })
        })
        .collect();
    for (i, upload) in uploads.into_iter().enumerate() {
        let answer = upload
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("upload {i}: {e}"));
        assert!(answer.starts_with("HTTP/1.1 201"), "upload {i}: {answer}");
    }
    follow_until(&mut follow, "\"u179\"").await;
}

/// Up to `n` connections to `server`, each having sent half a request's head.
async fn half_sent_requests(server: &Server, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt as _;
    let mut held = Vec::new();
    for _ in 0..n {
        let Ok(Ok(mut tcp)) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(server.addr),
        )
        .await
        else {
            break;
        };
        if tcp
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_ok()
        {
            held.push(tcp);
        }
    }
    held
}

/// Reads a `/v1/log?follow=true` stream until it has shown `needle`, failing if it stops or
/// stays quiet for 5 s.
async fn follow_until(follow: &mut reqwest::Response, needle: &str) {
    let mut seen = String::new();
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout(Duration::from_secs(5), follow.chunk())
            .await
            .expect("the follow stream goes on")
            .unwrap()
            .expect("the follow stream was not cut");
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

/// A preflight (`OPTIONS`) from `origin` for a `method` call of `path` with a bearer token and
/// a JSON body, as a browser sends it before a cross-origin `fetch`.
async fn preflight(server: &Server, origin: &str, method: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, server.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap()
}

/// A call from a page of `origin` with `token` (and `body`, as JSON).
async fn cross_origin(
    server: &Server,
    origin: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = reqwest::Client::new()
        .request(m, server.url(path))
        .header("origin", origin)
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

/// A response's header `name` as text, if it has it.
fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// The comma-separated items of a response's header `name`, in lowercase.
fn header_items(resp: &reqwest::Response, name: &str) -> Vec<String> {
    header(resp, name).map_or_else(Vec::new, |v| {
        v.split(',')
            .map(|item| item.trim().to_ascii_lowercase())
            .collect()
    })
}

/// The names of a response's CORS headers (`access-control-*`).
fn cors_header_names(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

/// With `http.cors_origins` set, a page of a listed origin can call the API from a browser:
/// preflights of user and admin calls are answered with the methods and request headers the
/// API takes, and every answer to that origin — errors included (401, 404, 429: a browser
/// hides an answer without the header from the page) — has `Access-Control-Allow-Origin`, and
/// exposes `Retry-After`. Another origin is told nothing (the browser then refuses). Without
/// CORS the preflight was a 405 and no answer had the header. (The edit's PATCH was left out of
/// the allowed methods until 2026-11-30: a browser page on another origin could not edit.)
#[tokio::test]
async fn cors_answers_the_configured_origins_errors_included() {
    let app = "https://app.example.com";
    let local = "http://localhost:5173";
    let server = Server::start(&[
        "--http-cors-origins",
        "https://app.example.com,http://localhost:5173",
        "--limits-sends-per-second",
        "1",
    ]);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    for origin in [app, local] {
        for (method, path) in [
            ("POST", "/v1/messages"),
            ("GET", "/v1/conversations"),
            ("DELETE", "/v1/channels/g/messages/1"),
            ("PUT", "/v1/channels/g"),
            ("PATCH", "/v1/channels/g/messages/1"),
        ] {
            let resp = preflight(&server, origin, method, path).await;
            let what = format!("{origin} {method} {path}");
            assert!(resp.status().is_success(), "{what}: {}", resp.status());
            assert_eq!(
                header(&resp, "access-control-allow-origin").as_deref(),
                Some(origin),
                "{what}"
            );
            let methods = header_items(&resp, "access-control-allow-methods");
            for m in ["get", "post", "put", "patch", "delete"] {
                assert!(methods.iter().any(|x| x == m), "{what}: {methods:?}");
            }
            let headers = header_items(&resp, "access-control-allow-headers");
            for h in ["authorization", "content-type"] {
                assert!(headers.iter().any(|x| x == h), "{what}: {headers:?}");
            }
            assert_eq!(
                header(&resp, "access-control-max-age").as_deref(),
                Some("600")
            );
            assert_eq!(
                header(&resp, "access-control-allow-credentials"),
                None,
                "{what}: bearer tokens, not cookies"
            );
        }
    }
    // Another origin (one that only starts like a listed one, too): no allow-origin, so the
    // browser refuses the call, on the preflight and on an answer alike.
    for other in [
        "https://evil.example.com",
        "https://app.example.com.evil.com",
    ] {
        let resp = preflight(&server, other, "POST", "/v1/messages").await;
        assert_eq!(
            header(&resp, "access-control-allow-origin"),
            None,
            "{other}"
        );
        let resp = cross_origin(&server, other, "GET", "/v1/conversations", "nope", None).await;
        assert_eq!(resp.status().as_u16(), 401);
        assert_eq!(
            header(&resp, "access-control-allow-origin"),
            None,
            "{other}"
        );
    }
    // Errors to a listed origin carry the headers: a bad token (401), no such endpoint (404).
    for (path, status, code) in [
        ("/v1/conversations", 401, "invalid_token"),
        ("/v1/nowhere", 404, "not_found"),
    ] {
        let resp = cross_origin(&server, app, "GET", path, "nope", None).await;
        assert_eq!(resp.status().as_u16(), status, "{path}");
        assert_eq!(
            header(&resp, "access-control-allow-origin").as_deref(),
            Some(app),
            "{path}"
        );
        assert!(
            header_items(&resp, "access-control-expose-headers").contains(&"retry-after".into()),
            "{path}"
        );
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{path}: {v}");
    }
    // A token made by an admin call from a listed origin, used from the other one; sends until
    // the rate limit refuses one: its 429 has the headers, and the page may read Retry-After.
    let resp = cross_origin(
        &server,
        local,
        "POST",
        "/v1/users/alice/tokens",
        ADMIN,
        None,
    )
    .await;
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some(local)
    );
    let alice = resp.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut refused = None;
    for i in 0..5 {
        let body = json!({"channel": "g", "client_msg_id": format!("c{i}"), "payload": i});
        let resp = cross_origin(&server, app, "POST", "/v1/messages", &alice, Some(body)).await;
        assert_eq!(
            header(&resp, "access-control-allow-origin").as_deref(),
            Some(app)
        );
        if resp.status().as_u16() == 429 {
            refused = Some(resp);
            break;
        }
        assert_eq!(resp.status().as_u16(), 201);
    }
    let resp = refused.expect("a send past the burst is refused");
    assert!(header(&resp, "retry-after").is_some());
    assert!(header_items(&resp, "access-control-expose-headers").contains(&"retry-after".into()));
}

/// `*` lets any origin call (no credentials header: it cannot go with `*`); without
/// `http.cors_origins` no answer has a CORS header, and a preflight is 405, as before the
/// setting.
#[tokio::test]
async fn cors_is_off_by_default_and_star_allows_any_origin() {
    let origin = "https://anywhere.example.org";
    let any = Server::start(&["--http-cors-origins", "*"]);
    let resp = preflight(&any, origin, "POST", "/v1/messages").await;
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert_eq!(header(&resp, "access-control-allow-credentials"), None);
    let resp = cross_origin(&any, origin, "GET", "/v1/conversations", "nope", None).await;
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some("*")
    );

    let off = Server::start(&[]);
    let resp = preflight(&off, origin, "POST", "/v1/messages").await;
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(cors_header_names(&resp), Vec::<String>::new());
    let resp = cross_origin(&off, origin, "GET", "/v1/conversations", "nope", None).await;
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(cors_header_names(&resp), Vec::<String>::new());
}

/// A request target or header fields larger than the API takes are refused with a JSON error
/// (hyper's own refusals, at 64 KiB of target and ~400 KiB of head, have no body: those stay
/// for larger ones); just below the limits the request is served.
#[tokio::test]
async fn a_long_target_or_large_headers_get_a_json_error() {
    let server = Server::start(&[]);
    let api = Api::new(&server);
    let alice = api.user("alice").await;
    let client = reqwest::Client::new();
    let get = |path: String, header: Option<String>| {
        let mut req = client.get(server.url(&path)).bearer_auth(&alice);
        if let Some(h) = header {
            req = req.header("x-big", h);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (status, serde_json::from_str::<Value>(&text).ok())
        }
    };
    // "/v1/sync?limit=10&x=" is 20 bytes.
    let target = |len: usize| format!("/v1/sync?limit=10&x={}", "a".repeat(len - 20));
    let (status, _) = get(target(8 * 1024), None).await;
    assert_eq!(status, 200);
    let (status, v) = get(target(8 * 1024 + 1), None).await;
    assert_eq!(status, 414);
    assert_eq!(v.unwrap()["error"]["code"], "uri_too_long");
    let (status, _) = get("/v1/sync".into(), Some("b".repeat(30 * 1024))).await;
    assert_eq!(status, 200);
    let (status, v) = get("/v1/sync".into(), Some("b".repeat(33 * 1024))).await;
    assert_eq!(status, 431);
    assert_eq!(v.unwrap()["error"]["code"], "headers_too_large");
    // A refused request with a body (not read) ends its connection, and the answer says so;
    // one without keeps it.
    let long = server.url(&target(8 * 1024 + 1));
    let resp = client
        .post(&long)
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body(vec![b' '; 16 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 414);
    assert_eq!(resp.headers()["connection"], "close");
    let resp = client.get(&long).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 414);
    assert!(resp.headers().get("connection").is_none());
    // Past hyper's limit (more than 100 fields): refused all the same, without a body.
    let mut req = client.get(server.url("/v1/sync")).bearer_auth(&alice);
    for i in 0..101 {
        req = req.header(format!("x-h{i}"), "1");
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 431);
    assert_eq!(resp.text().await.unwrap(), "");
}
