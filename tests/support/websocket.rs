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
