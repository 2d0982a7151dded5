//! The realtime WebSocket (`/api/v1/ws`) and the notification routes against real servers on
//! 127.0.0.1:0, with a real WebSocket client (tokio-tungstenite): live events from REST
//! changes, authentication before the upgrade, resuming with `last_seq`, slow consumers,
//! malformed and oversize frames, notifications, access lost on open sockets (removed members,
//! expired and read-only tokens), and two instances sharing PostgreSQL — in one
//! test process (`multi`) and as two `pm-server` child processes (`processes`).

mod access;
mod multi;
pub(crate) mod processes;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use pm_realtime::HubConfig;
use pm_server::AppState;
use pm_server::realtime::{Realtime, RealtimeSetup};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for an expected frame.
const WAIT: Duration = Duration::from_secs(10);

/// Replaces the state's realtime with an in-process one using `config`.
pub fn with_hub_config(state: &mut AppState, config: HubConfig) {
    let authz = Arc::new(pm_server::authz::ServerAuthorizer::new(state.permissions.clone()));
    state.realtime = Realtime::new(RealtimeSetup {
        config,
        ..RealtimeSetup::in_process(state.stores.clone(), authz)
    });
}

/// A WebSocket client.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// `ws://…/api/v1/ws` of a server whose base is `http://…`.
pub fn ws_url(base: &str) -> String {
    format!("{}/api/v1/ws", base.replacen("http://", "ws://", 1))
}

impl Ws {
    /// Connects with the token in the subprotocol list (`pm.v1, bearer.<token>`).
    pub async fn connect(base: &str, token: &str) -> Ws {
        let mut req = ws_url(base).into_client_request().unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&format!("pm.v1, bearer.{token}")).unwrap(),
        );
        let (stream, res) = tokio_tungstenite::connect_async(req).await.expect("upgrade");
        assert_eq!(
            res.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()),
            Some("pm.v1"),
            "only the protocol is echoed, never the credential"
        );
        Ws { stream }
    }

    /// Connects over a TCP socket with a tiny receive buffer (so a client that stops reading
    /// backs the server up quickly).
    pub async fn connect_small_window(base: &str, token: &str) -> Ws {
        let addr = base.trim_start_matches("http://").parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        let url = format!("{}?access_token={token}", ws_url(base));
        let (stream, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
            .await
            .expect("upgrade");
        Ws { stream }
    }

    /// Sends a JSON text frame.
    pub async fn send(&mut self, v: Value) {
        self.stream.send(Message::text(v.to_string())).await.unwrap();
    }

    /// Sends a raw message.
    pub async fn send_raw(&mut self, m: Message) {
        self.stream.send(m).await.unwrap();
    }

    /// The next message that is not a WebSocket ping/pong: `Ok(json)` for text, `Err(close)`
    /// for a close frame (`None` when the connection ended without one).
    pub async fn next(&mut self) -> Result<Value, Option<CloseFrame>> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("a message within the wait");
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(c))) => return Err(c),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Binary(_))) => panic!("the server sent binary"),
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// The next JSON frame whose `type` is `ty` (others, e.g. presence, are skipped).
    pub async fn expect(&mut self, ty: &str) -> Value {
        loop {
            match self.next().await {
                Ok(v) if v["type"] == ty => return v,
                Ok(_) => {}
                Err(c) => panic!("closed ({c:?}) while waiting for {ty}"),
            }
        }
    }

    /// The next frame that is not presence (typing/cursor/presence are ephemeral side traffic).
    pub async fn next_durable(&mut self) -> Value {
        loop {
            let v = self.next().await.expect("open");
            if !matches!(v["type"].as_str(), Some("presence" | "typing" | "cursor")) {
                return v;
            }
        }
    }

    /// The close frame that ends the connection, skipping whatever comes before it.
    pub async fn close_frame(&mut self) -> Option<CloseFrame> {
        loop {
            if let Err(c) = self.next().await {
                return c;
            }
        }
    }

    /// Subscribes; returns the `seq` of `subscribed`.
    pub async fn subscribe(&mut self, channel: &str, last_seq: Option<i64>) -> i64 {
        let mut frame = json!({"type": "subscribe", "channel": channel});
        if let Some(s) = last_seq {
            frame["last_seq"] = json!(s);
        }
        self.send(frame).await;
        let v = self.next_durable().await;
        assert_eq!(v["type"], "subscribed", "{v}");
        assert_eq!(v["channel"], channel);
        v["seq"].as_i64().unwrap()
    }

    /// Sends `ping` and waits for `pong` (the session is healthy).
    pub async fn ping(&mut self) {
        self.send(json!({"type": "ping"})).await;
        self.expect("pong").await;
    }
}

/// The upgrade's HTTP error response: (status, content type, JSON body).
pub async fn refused(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> (u16, String, Value) {
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => panic!("the upgrade succeeded"),
        Err(WsError::Http(res)) => {
            let ct = res
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = res.body().as_deref().map(|b| serde_json::from_slice(b).unwrap());
            (res.status().as_u16(), ct, body.unwrap_or(Value::Null))
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}
