//! WebSocket clients: real connections (tokio-tungstenite) from one of several 127.0.0.x source
//! addresses, JSON frames.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Source addresses connections are spread over (each has its own ~28k ephemeral ports).
const SOURCES: u32 = 16;

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Connects client number `i` as the holder of `token`.
pub(crate) async fn connect(
    server: SocketAddr,
    token: &str,
    i: usize,
    query: &str,
) -> anyhow::Result<Ws> {
    let source = Ipv4Addr::new(127, 0, 0, 2 + (i as u32 % SOURCES) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let stream = socket
        .connect(server)
        .await
        .with_context(|| format!("connecting from {source}"))?;
    stream.set_nodelay(true)?;
    let mut req = format!("ws://{server}/v1/ws{query}").into_client_request()?;
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse()?);
    // tungstenite's default read buffer is 128 KiB, zeroed as it is used: at tens of thousands
    // of small frames a second that memset was a fifth of the generator's CPU (which the
    // server shares). Frames here are small; larger ones still arrive, in more reads.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024);
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
    Ok(ws)
}

/// Sends one JSON frame.
pub(crate) async fn send<S>(ws: &mut S, v: &Value) -> anyhow::Result<()>
where
    S: SinkExt<Message> + Unpin,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    ws.send(Message::Text(v.to_string().into())).await?;
    Ok(())
}

/// The next JSON frame; `None` when the connection ends.
pub(crate) async fn next<S>(ws: &mut S) -> anyhow::Result<Option<Value>>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    match next_text(ws).await? {
        Some(t) => Ok(Some(serde_json::from_str(t.as_str())?)),
        None => Ok(None),
    }
}

/// The next text frame, unparsed (a scenario that reads many frames parses only what it
/// needs); `None` when the connection ends.
pub(crate) async fn next_text<S>(ws: &mut S) -> anyhow::Result<Option<Utf8Bytes>>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(t))) => return Ok(Some(t)),
            Some(Ok(Message::Close(c))) => {
                anyhow::bail!("closed by the server: {c:?}")
            }
            Some(Ok(_)) => continue,
        }
    }
}
