//! Test harness: the real `tidings serve` process on a free port, a real HTTP client and real
//! WebSocket clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub(crate) const ADMIN: &str = "test-admin-key";

/// A server process.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) data: PathBuf,
    pub(crate) args: Vec<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// A server on a fresh data directory.
    pub(crate) fn start(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut s = Server::start_on(&data, args);
        s._dir = Some(dir);
        s
    }

    /// A server on `data` (kept by the caller).
    pub(crate) fn start_on(data: &Path, args: &[&str]) -> Server {
        Server::spawn(Command::new(env!("CARGO_BIN_EXE_tidings")), data, args)
    }

    /// A server on a fresh data directory whose open-file limit (soft and hard) is
    /// `open_files` (set by util-linux's `prlimit`, which then runs the server in its place).
    pub(crate) fn start_with_open_files(open_files: u64, args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={open_files}:{open_files}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_tidings"));
        let mut s = Server::spawn(cmd, &data, args);
        s._dir = Some(dir);
        s
    }

    /// A server on a fresh data directory started under `nohup` (SIGHUP ignored).
    pub(crate) fn start_nohup(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut cmd = Command::new("nohup");
        cmd.arg(env!("CARGO_BIN_EXE_tidings"));
        let mut s = Server::spawn(cmd, &data, args);
        s._dir = Some(dir);
        s
    }

    fn spawn(mut cmd: Command, data: &Path, args: &[&str]) -> Server {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut child = cmd
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(["--acks-flush-ms", "20", "--shutdown-grace-secs", "10"])
            // Preallocated segments, as in production, but small spares: tests start many
            // servers.
            .args(["--log-preallocate-bytes", "262144"])
            .args(&args)
            .env("TIDINGS_ADMIN_KEY", ADMIN)
            .env(
                "RUST_LOG",
                std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "server exited before listening"
            );
            if let Some(rest) = line.trim().strip_prefix("tidings listening on http://") {
                break rest.parse().unwrap();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        Server {
            child,
            addr,
            data: data.to_path_buf(),
            args,
            _dir: None,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/v1/ws{query}", self.addr)
    }

    /// SIGTERM, then wait for a clean exit.
    pub(crate) fn stop(self) -> Option<tempfile::TempDir> {
        self.stop_by("-TERM")
    }

    /// [`Server::stop`] by another signal (`-INT`, `-HUP`).
    pub(crate) fn stop_by(mut self, signal: &str) -> Option<tempfile::TempDir> {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(
            exit.success(),
            "the server did not shut down cleanly: {exit:?}"
        );
        self._dir.take()
    }

    /// SIGKILL.
    pub(crate) fn kill(mut self) -> Option<tempfile::TempDir> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self._dir.take()
    }

    /// Stops (cleanly) and starts again on the same data.
    pub(crate) fn restart(self) -> Server {
        let args = self.args.clone();
        let data = self.data.clone();
        let dir = self.stop();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut s = Server::start_on(&data, &refs);
        s._dir = dir;
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client for one server.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) base: String,
    client: reqwest::Client,
}

impl Api {
    pub(crate) fn new(server: &Server) -> Api {
        Api {
            base: format!("http://{}", server.addr),
            client: reqwest::Client::new(),
        }
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.try_call(method, path, token, body).await.unwrap()
    }

    /// Like `call`, but a connection failure (the server went away) is an error, not a panic.
    pub(crate) async fn try_call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .client
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    pub(crate) async fn ok(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Value {
        let (status, v) = self.call(method, path, token, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// A POST of `body`, JSON text sent exactly as given (not re-serialized: key order,
    /// repeated keys, number text and whitespace stay): the status and the answer.
    pub(crate) async fn post_text(&self, path: &str, token: &str, body: &str) -> (u16, Value) {
        self.send_text("POST", path, token, body).await
    }

    /// [`Api::post_text`] with another method.
    pub(crate) async fn send_text(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: &str,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = self
            .client
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The text of a GET's answer (NDJSON, or JSON compared as text).
    pub(crate) async fn text(&self, path: &str, token: &str) -> String {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A token for `uid`.
    pub(crate) async fn user(&self, uid: &str) -> String {
        let v = self
            .ok("POST", &format!("/v1/users/{uid}/tokens"), ADMIN, None)
            .await;
        v["token"].as_str().unwrap().to_string()
    }

    /// A group with members.
    pub(crate) async fn group(&self, id: &str, members: &[&str]) {
        self.ok("PUT", &format!("/v1/channels/{id}"), ADMIN, None)
            .await;
        if !members.is_empty() {
            self.ok(
                "POST",
                &format!("/v1/channels/{id}/members"),
                ADMIN,
                Some(json!({"uids": members})),
            )
            .await;
        }
    }

    pub(crate) async fn send(&self, token: &str, channel: &str, cid: &str, text: &str) -> Value {
        let (status, v) = self
            .call(
                "POST",
                "/v1/messages",
                token,
                Some(json!({"channel": channel, "client_msg_id": cid, "payload": {"text": text}})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        v
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client speaking JSON.
pub(crate) struct Ws {
    pub(crate) ws: WsStream,
}

impl Ws {
    pub(crate) async fn connect(server: &Server, token: &str, query: &str) -> Ws {
        let mut req = server.ws_url(query).into_client_request().unwrap();
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        Ws { ws }
    }

    pub(crate) async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// Queues a frame without writing it yet (a burst goes out with [`Ws::flush`]).
    pub(crate) async fn feed(&mut self, v: Value) {
        self.ws
            .feed(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub(crate) async fn flush(&mut self) {
        self.ws.flush().await.unwrap();
    }

    /// The next JSON frame, or `None` on close or after `wait` with nothing.
    pub(crate) async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Some(serde_json::from_str(t.as_str()).unwrap());
                }
                Ok(Some(Ok(Message::Close(c)))) => {
                    return Some(
                        json!({"type": "closed", "code": c.as_ref().map(|c| u16::from(c.code)), "reason": c.map(|c| c.reason.to_string())}),
                    );
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    pub(crate) async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("a frame within 10 s")
    }

    /// The text of the next frame of a type, as the server wrote it (others skipped).
    pub(crate) async fn next_text_of(&mut self, kind: &str) -> String {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a frame within 10 s")
                .expect("the session is open")
                .unwrap();
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == kind {
                    return t.as_str().to_owned();
                }
            }
        }
    }

    /// The next frame of a type, skipping others.
    pub(crate) async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Every `message` frame until `n` arrived (other frames skipped).
    pub(crate) async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let v = self.next().await;
            if v["type"] == "message" {
                out.push(v);
            }
        }
        out
    }

    /// Asserts no message arrives within `wait`.
    pub(crate) async fn quiet(&mut self, wait: Duration) {
        while let Some(v) = self.next_within(wait).await {
            assert_ne!(v["type"], "message", "unexpected message {v}");
        }
    }

    pub(crate) async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The conversation `ch` of a `/v1/conversations` answer, if listed.
pub(crate) fn listed(v: &Value, ch: &str) -> Option<Value> {
    v["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == ch)
        .cloned()
}

/// A counter of the server's `/metrics`.
pub(crate) async fn metric(server: &Server, name: &str) -> u64 {
    metric_in(&metrics_text(server).await, name)
}

/// The server's `/metrics`, as text (several values read from one scrape: [`metric_in`]).
pub(crate) async fn metrics_text(server: &Server) -> String {
    reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A counter or gauge of a `/metrics` text.
pub(crate) fn metric_in(text: &str, name: &str) -> u64 {
    let prefix = format!("{name} ");
    let value = text.lines().find_map(|l| l.strip_prefix(prefix.as_str()));
    let value = value.unwrap_or_else(|| panic!("no {name} in\n{text}"));
    value.trim().parse().unwrap()
}

/// Runs the `tidings` binary with `args` to its end: the exit code, stdout and stderr.
pub(crate) fn tidings(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `child`'s exit status once it exits; killed, and a panic with `what` (what it printed), when
/// it still runs after `secs` seconds.
fn exit_within(
    child: &mut Child,
    secs: u64,
    what: impl FnOnce() -> String,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{}", what());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`tidings`] for a command that must end within `secs` seconds: panics when it still runs
/// then (killed, with what it printed).
pub(crate) fn tidings_within(args: &[&str], secs: u64) -> (i32, String, String) {
    let (stdout, stderr) = (
        tempfile::NamedTempFile::new().unwrap(),
        tempfile::NamedTempFile::new().unwrap(),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(args)
        .stdout(stdout.reopen().unwrap())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .unwrap();
    let status = exit_within(&mut child, secs, || {
        format!(
            "{args:?} still ran after {secs} s: {}{}",
            std::fs::read_to_string(stdout.path()).unwrap(),
            std::fs::read_to_string(stderr.path()).unwrap()
        )
    });
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(stdout.path()).unwrap(),
        std::fs::read_to_string(stderr.path()).unwrap(),
    )
}

/// Runs `tidings serve` on `data` with `args` where it must refuse to start: whether it exited
/// successfully, and what it wrote to stderr. Panics when it still runs after 30 s (it started).
pub(crate) fn refused_start(
    data: &Path,
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
) -> (bool, String) {
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(args)
        .env("TIDINGS_ADMIN_KEY", ADMIN)
        .stdout(Stdio::null())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .unwrap();
    let status = exit_within(&mut child, 30, || {
        format!(
            "started: {}",
            std::fs::read_to_string(stderr.path()).unwrap()
        )
    });
    let text = std::fs::read_to_string(stderr.path()).unwrap();
    (status.success(), text)
}

/// The base offset of the log's active segment in data directory `data` (its newest segment
/// file).
pub(crate) fn active_base(data: &Path) -> u64 {
    std::fs::read_dir(data.join("log"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name();
            name.to_str()?.strip_suffix(".log")?.parse().ok()
        })
        .max()
        .unwrap()
}

/// Sends filler messages as `token`'s user to group `f` until the active segment starts past
/// `offset` (so that every record up to it is in a sealed segment).
pub(crate) async fn seal_past(api: &Api, server: &Server, token: &str, offset: u64) {
    let mut i = 0;
    while active_base(&server.data) <= offset {
        api.send(token, "f", &format!("f{i}"), &"filler ".repeat(20))
            .await;
        i += 1;
        assert!(i < 3000, "the log never rolled past offset {offset}");
    }
}

/// The log offset of a send, from its `201` answer.
pub(crate) fn sent_offset(sent: &Value) -> u64 {
    sent["offset"].as_u64().unwrap()
}

/// What the API answers about group `g`'s messages, as text, to compare before and after a
/// change to the log's files (a purge): to `reader`, its history, their person channel with
/// alice, their sync, changes and conversations; to `other`, when given, their conversations;
/// to the admin, the traces of `traced` seqs of `g`.
pub(crate) async fn answers_about_g(
    api: &Api,
    reader: &str,
    other: Option<&str>,
    traced: &[u64],
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let g = "/v1/channels/g/messages?after_seq=0&limit=100";
    out.insert("history".into(), api.text(g, reader).await);
    let dm = "/v1/channels/@alice/messages?after_seq=0";
    out.insert("person history".into(), api.text(dm, reader).await);
    out.insert("sync".into(), api.text("/v1/sync", reader).await);
    let changes = "/v1/changes?since=0";
    out.insert("changes".into(), api.text(changes, reader).await);
    let convs = "/v1/conversations";
    out.insert("conversations".into(), api.text(convs, reader).await);
    if let Some(other) = other {
        out.insert("the other's".into(), api.text(convs, other).await);
    }
    for seq in traced {
        let trace = format!("/v1/channels/g/messages/{seq}/trace");
        out.insert(format!("trace of {seq}"), api.text(&trace, ADMIN).await);
    }
    out
}

/// A server tiered to a `file://` store in `bucket` (uploads every second), started with `args`
/// as well, where alice sent `text` to group `g` and recalled it (seq 1), and sent fillers to
/// group `f` until the send's segment was sealed.
pub(crate) async fn tiered_with_a_sealed_recall(
    bucket: &Path,
    args: &[&str],
    text: &str,
) -> (Server, Api, String) {
    let url = format!("file://{}", bucket.display());
    let mut all = vec![
        "--tier-url",
        url.as_str(),
        "--tier-upload-interval-secs",
        "1",
        "--tier-cache-disk-bytes",
        "16777216",
    ];
    all.extend(args);
    let server = Server::start(&all);
    let api = Api::new(&server);
    api.group("g", &["alice"]).await;
    api.group("f", &["alice"]).await;
    let alice = api.user("alice").await;
    let sent = api.send(&alice, "g", "r1", text).await;
    api.ok("DELETE", "/v1/channels/g/messages/1", &alice, None)
        .await;
    seal_past(&api, &server, &alice, sent_offset(&sent)).await;
    (server, api, alice)
}

/// Every path under `dir`, sorted.
pub(crate) fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The seqs of a page of messages (`{"messages": [...]}`: history, `/v1/sync`).
pub(crate) fn page_seqs(v: &Value) -> Vec<u64> {
    frame_seqs(v["messages"].as_array().unwrap())
}

/// The seqs of message frames or messages.
pub(crate) fn frame_seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

/// Where each batch of a segment file's bytes starts: at its magic, `TDTG` (for tests whose
/// records never hold those four bytes).
pub(crate) fn batch_starts(bytes: &[u8]) -> Vec<usize> {
    bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"TDTG")
        .map(|(i, _)| i)
        .collect()
}

/// The names of the entries of `dir`, sorted.
pub(crate) fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
