//! A GraphQL WebSocket client for the tests: `graphql-transport-ws` framing
//! over tokio-tungstenite.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `ws://{address}/graphql` with the `graphql-transport-ws` protocol.
pub async fn connect(address: std::net::SocketAddr) -> Socket {
    let mut request = format!("ws://{address}/graphql")
        .into_client_request()
        .expect("a WebSocket request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("a header value"),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the WebSocket opens");
    socket
}

/// Sends one JSON message.
pub async fn send(socket: &mut Socket, message: &Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .expect("the message is sent");
}

/// The next JSON text message for which `wanted` holds, skipping the rest;
/// panics if none comes within `within` or the socket closes first.
pub async fn next_where(
    socket: &mut Socket,
    within: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    tokio::time::timeout(within, async {
        loop {
            let message = socket
                .next()
                .await
                .expect("the socket stays open")
                .expect("a frame");
            if let Message::Text(text) = message {
                let value: Value = serde_json::from_str(&text).expect("JSON");
                if wanted(&value) {
                    return value;
                }
            }
        }
    })
    .await
    .expect("the message comes in time")
}

/// How an attempt to open and sign in a connection ended.
#[derive(Debug)]
pub enum SignIn {
    Accepted(Box<Socket>),
    /// The upgrade was answered with this HTTP status instead.
    Refused(u16),
    /// The connection was closed after `connection_init`.
    Closed,
}

/// Opens a connection and signs in with `token` in `connection_init`.
pub async fn sign_in(address: std::net::SocketAddr, token: &str) -> SignIn {
    let mut request = format!("ws://{address}/graphql")
        .into_client_request()
        .expect("a WebSocket request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("a header value"),
    );
    let mut socket = match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => socket,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            return SignIn::Refused(response.status().as_u16());
        }
        Err(error) => panic!("the WebSocket did not open: {error}"),
    };
    send(
        &mut socket,
        &serde_json::json!({"type": "connection_init",
                            "payload": {"Authorization": format!("Bearer {token}")}}),
    )
    .await;
    match tokio::time::timeout(Duration::from_secs(30), socket.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => {
            let reply: Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(reply["type"], "connection_ack", "{reply}");
            SignIn::Accepted(Box::new(socket))
        }
        Ok(None | Some(Err(_) | Ok(Message::Close(_)))) => SignIn::Closed,
        other => panic!("no answer to connection_init: {other:?}"),
    }
}

/// Signs in, panicking unless the connection is accepted.
pub async fn signed_in(address: std::net::SocketAddr, token: &str) -> Socket {
    match sign_in(address, token).await {
        SignIn::Accepted(socket) => *socket,
        other => panic!("the connection was not accepted: {other:?}"),
    }
}

/// Subscribes to `orderUpdated` of `order_id` under `id`.
pub async fn subscribe_order(socket: &mut Socket, id: &str, order_id: &str) {
    send(
        socket,
        &serde_json::json!({
            "id": id,
            "type": "subscribe",
            "payload": {"query": format!(
                "subscription {{ orderUpdated(id: \"{order_id}\") {{ id status version cancellationReason }} }}"
            )},
        }),
    )
    .await;
}

/// True when the server closed the socket within `within`; messages before
/// the close are skipped.
pub async fn closed_within(socket: &mut Socket, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        loop {
            match socket.next().await {
                None | Some(Err(_) | Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// The next message for subscription `id` within `within`, if any.
pub async fn next_for(socket: &mut Socket, id: &str, within: Duration) -> Option<Value> {
    tokio::time::timeout(within, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).expect("JSON");
                    if value["id"] == id {
                        return Some(value);
                    }
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}
