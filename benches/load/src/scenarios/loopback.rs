//! A WebSocket peer on 127.0.0.1 for unit tests of the senders: it answers each frame as a
//! test says, after a delay, and gives back every frame it read once the client hangs up.

use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::client::{self, Ws};

/// Starts a peer that reads JSON frames, waits `delay` after each, then writes what
/// `answer` returns for it; returns the client connected to it and the peer's task, which
/// ends with the frames read when the client goes.
pub(crate) async fn peer(
    delay: Duration,
    mut answer: impl FnMut(&Value) -> Vec<Value> + Send + 'static,
) -> anyhow::Result<(Ws, JoinHandle<Vec<Value>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut read = Vec::new();
        let Ok((stream, _)) = listener.accept().await else {
            return read;
        };
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return read;
        };
        // A client that hangs up ends the read with an error or `None`.
        while let Ok(Some(v)) = client::next(&mut ws).await {
            tokio::time::sleep(delay).await;
            let replies = answer(&v);
            read.push(v);
            for r in replies {
                if client::send(&mut ws, &r).await.is_err() {
                    return read;
                }
            }
        }
        read
    });
    let stream = TcpStream::connect(addr).await?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), stream).await?;
    Ok((ws, task))
}

/// The `sendack` a server would write for `send`, as number `seq` and new.
pub(crate) fn sendack(send: &Value, seq: u64) -> Value {
    serde_json::json!({
        "type": "sendack",
        "client_msg_id": send["client_msg_id"],
        "channel": send["channel"],
        "seq": seq,
        "duplicate": false,
    })
}
