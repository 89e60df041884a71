//! The server under test: a `tidings serve` child process on a fresh data directory, an admin
//! HTTP client, and the process's CPU time and resident memory from `/proc`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::Args;

const ADMIN: &str = "load-admin-key";

/// A running server.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: SocketAddr,
    http: reqwest::Client,
    /// Drains the server's stdout; stopped with the server.
    drain: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn server_bin(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.tidings_bin {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    let p = me.with_file_name("tidings");
    if !p.exists() {
        bail!(
            "{} not found: build it first (cargo build --release) or pass --tidings-bin",
            p.display()
        );
    }
    Ok(p)
}

impl Server {
    /// Starts a server with load-friendly limits plus `extra` flags.
    pub(crate) async fn start(args: &Args, extra: &[&str]) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let bin = server_bin(args)?;
        let mut cmd = Command::new(&bin);
        // The harness fixes the durability measured: nothing from the caller's environment
        // (TIDINGS_LOG_FSYNC, TIDINGS_CONFIG, …) may weaken it unseen.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TIDINGS_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .arg("serve")
            .args(["--log-fsync", "always"])
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .args(["--limits-sends-per-second", "10000000"])
            .args(["--limits-send-bytes-per-second", "100000000000"])
            .args(["--limits-max-connections", "1000000"])
            // `idle` connects 100 sessions per user.
            .args(["--limits-sessions-per-user", "1000"])
            // `idle` clients never read (so never answer pings) while 100k connect.
            .args(["--limits-ws-idle-secs", "3600"])
            .args(["--limits-session-queue", "65536"])
            .args(["--limits-session-queue-bytes", "1073741824"])
            .args(["--acks-flush-ms", "200"])
            .args(extra)
            .env("TIDINGS_ADMIN_KEY", ADMIN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .context("the server did not start within 30 s")??
                .context("the server exited before listening")?;
            if let Some(rest) = line.strip_prefix("tidings listening on http://") {
                break rest.trim().parse::<SocketAddr>()?;
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let s = Server {
            child,
            addr,
            http: reqwest::Client::new(),
            drain,
            _dir: dir,
        };
        for _ in 0..300 {
            if let Ok(r) = s.http.get(s.url("/readyz")).send().await
                && r.status().is_success()
            {
                return Ok(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("the server never became ready")
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The cumulative buckets `(upper bound in seconds, count)` of a histogram in the server's
    /// `/metrics` (Prometheus text), `+Inf` excluded.
    pub(crate) async fn histogram(&self, name: &str) -> anyhow::Result<Vec<(f64, u64)>> {
        let text = self.metrics().await?;
        let prefix = format!("{name}_bucket{{le=\"");
        let mut out = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some((le, count)) = rest.split_once("\"} ") else {
                continue;
            };
            if let (Ok(le), Ok(count)) = (le.parse::<f64>(), count.trim().parse::<u64>())
                && le.is_finite()
            {
                out.push((le, count));
            }
        }
        if out.is_empty() {
            bail!("{name} not found in /metrics");
        }
        Ok(out)
    }

    /// The `/metrics` text.
    pub(crate) async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(self.url("/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// An admin call; fails unless the status is 2xx.
    pub(crate) async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a group with these members (in calls of 10,000).
    pub(crate) async fn group(&self, id: &str, members: &[String]) -> anyhow::Result<()> {
        self.admin(reqwest::Method::PUT, &format!("/v1/channels/{id}"), None)
            .await?;
        for chunk in members.chunks(10_000) {
            self.admin(
                reqwest::Method::POST,
                &format!("/v1/channels/{id}/members"),
                Some(json!({ "uids": chunk })),
            )
            .await?;
        }
        Ok(())
    }

    /// A token for `uid`.
    pub(crate) async fn token(&self, uid: &str) -> anyhow::Result<String> {
        let v = self
            .admin(
                reqwest::Method::POST,
                &format!("/v1/users/{uid}/tokens"),
                None,
            )
            .await?;
        v["token"]
            .as_str()
            .map(str::to_owned)
            .context("no token in the answer")
    }

    /// Tokens for many users, 32 calls at a time.
    pub(crate) async fn tokens(&self, uids: &[String]) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(32) {
            let calls = chunk.iter().map(|u| self.token(u));
            for t in futures_util::future::join_all(calls).await {
                out.push(t?);
            }
        }
        Ok(out)
    }

    pub(crate) fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("the server has exited")
    }

    /// Resident memory in bytes.
    pub(crate) fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")?;
        Ok(kb * 1024)
    }

    /// CPU time used so far (user + system), in seconds (clock ticks of 1/100 s).
    pub(crate) fn cpu_secs(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?))?;
        // Fields after the command name (which may contain spaces) start after the last ')'.
        let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> anyhow::Result<f64> {
            Ok(f.get(i).context("short /proc stat")?.parse::<f64>()?)
        };
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        Ok((ticks(11)? + ticks(12)?) / 100.0)
    }

    /// Stops the server (SIGKILL: the benchmark does not measure shutdown).
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
        // The pipe closes with the process: the drain ends on its own.
        let _ = self.drain.await;
    }
}
