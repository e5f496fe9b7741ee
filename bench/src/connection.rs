//! One HTTP/1.1 keep-alive connection to the API as an administrator: the
//! load generators' client. Each benchmark client holds one and sends one
//! request at a time on it, as a client program with its own connection
//! would; nothing is pooled or shared between clients.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use serde_json::Value;

pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    authority: String,
    /// An administrator's bearer token: the benchmarks act for many customers.
    authorization: String,
}

impl Connection {
    pub async fn open(address: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            authority: address.to_string(),
            authorization: format!("Bearer {}", identity::testing::admin_token()),
        })
    }

    /// POSTs `body` to `path`; the status and the body's bytes, read to the
    /// end so that the connection stays usable.
    pub async fn post(&mut self, path: &str, body: &Value) -> anyhow::Result<(u16, bytes::Bytes)> {
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::AUTHORIZATION, &self.authorization)
            .body(http_body_util::Full::new(bytes::Bytes::from(
                serde_json::to_vec(body)?,
            )))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// POSTs a new order and returns its id, or why it was not accepted.
    pub async fn place(&mut self, order: &Value) -> anyhow::Result<String> {
        let (status, body) = self.post("/api/orders", order).await?;
        anyhow::ensure!(
            status == 202,
            "place order: {status} {}",
            String::from_utf8_lossy(&body)
        );
        let answer: Value = serde_json::from_slice(&body)?;
        answer["order_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no order_id in {answer}"))
    }
}

/// Sends every request (path, body) from `clients` clients, each on a
/// connection of its own, on a thread and runtime of their own (as the
/// bursts place orders); returns the answers in the requests' order. Every
/// request must be accepted (202).
pub async fn send_all(
    address: SocketAddr,
    clients: usize,
    requests: Vec<(String, Value)>,
) -> anyhow::Result<Vec<Value>> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let sent = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(clients_sending(address, clients, requests)));
        let _ = sender.send(sent);
    });
    receiver.await?
}

async fn clients_sending(
    address: SocketAddr,
    clients: usize,
    requests: Vec<(String, Value)>,
) -> anyhow::Result<Vec<Value>> {
    let requests: Arc<[(String, Value)]> = requests.into();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut running = Vec::with_capacity(clients);
    for _ in 0..clients.min(requests.len()) {
        let mut connection = Connection::open(address).await?;
        let (next, requests) = (Arc::clone(&next), Arc::clone(&requests));
        running.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((path, body)) = requests.get(n) else {
                    return anyhow::Ok(answers);
                };
                let (status, answer) = connection.post(path, body).await?;
                anyhow::ensure!(
                    status == 202,
                    "{path}: {status} {}",
                    String::from_utf8_lossy(&answer)
                );
                answers.push((n, serde_json::from_slice::<Value>(&answer)?));
            }
        }));
    }
    let mut answers = Vec::with_capacity(requests.len());
    for client in running {
        answers.extend(client.await??);
    }
    answers.sort_by_key(|(n, _)| *n);
    Ok(answers.into_iter().map(|(_, answer)| answer).collect())
}
