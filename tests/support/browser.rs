//! A real browser for the tests: headless Chromium (Debian's `chromium`,
//! installed by `scripts/test`), driven over the Chrome DevTools Protocol on
//! a WebSocket. Every host but 127.0.0.1 fails to resolve in it, so a page
//! that needs the internet shows it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::websocket::Socket;

/// A headless Chromium, killed when dropped.
pub struct Browser {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The Chromium program: `ORDERS_CHROMIUM`, or `chromium` on the path.
fn program() -> String {
    std::env::var("ORDERS_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

impl Browser {
    pub async fn start() -> Self {
        let profile =
            std::env::temp_dir().join(format!("orders-browser-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).unwrap();
        let child = Command::new(program())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
                // Nothing but this machine: a page that reaches for a CDN
                // finds nothing there.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {} ({error}): scripts/test installs Debian's chromium",
                    program()
                )
            });
        // Chromium writes the port it took into the profile.
        let file = profile.join("DevToolsActivePort");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|text| text.lines().next().and_then(|line| line.parse().ok()))
            {
                break port;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Chromium did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Self {
            child,
            port,
            profile,
        }
    }

    /// A new tab on `url`.
    pub async fn open(&self, url: &str) -> Page {
        let target: Value = reqwest::Client::new()
            .put(format!("http://127.0.0.1:{}/json/new?{url}", self.port))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let address = target["webSocketDebuggerUrl"].as_str().unwrap();
        let (socket, _) = tokio_tungstenite::connect_async(address).await.unwrap();
        Page { socket, next: 0 }
    }
}

/// One tab.
pub struct Page {
    socket: Socket,
    next: u64,
}

impl Page {
    /// Calls a DevTools method and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let request = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::Text(request.to_string().into()))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("the tab is open")
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            // Events have no id.
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns
    /// its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result:#}"
        );
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is truthy, for at most `within`;
    /// returns its value.
    pub async fn wait_for(&mut self, expression: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let value = self.eval(expression).await;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!("")
                && value != json!(0);
            if truthy {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{expression} stayed false for {within:?}; the page: {}",
                self.eval("document.body ? document.body.innerText.slice(0, 2000) : ''")
                    .await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Requests the page made that failed (a script or stylesheet that did
    /// not load), as the browser's performance entries and console saw them.
    pub async fn resources(&mut self) -> Vec<String> {
        let value = self
            .eval("performance.getEntriesByType('resource').map(e => e.name)")
            .await;
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|name| name.as_str().unwrap().to_owned())
            .collect()
    }
}

impl Page {
    /// Saves what the tab shows as `<dir>/<name>.png` when
    /// `ORDERS_SCREENSHOTS` names a folder (`scripts/screenshots` sets it);
    /// does nothing otherwise.
    pub async fn screenshot(&mut self, name: &str) {
        let Ok(dir) = std::env::var("ORDERS_SCREENSHOTS") else {
            return;
        };
        use base64::Engine as _;
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("image data"))
            .expect("base64");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(PathBuf::from(dir).join(format!("{name}.png")), png).unwrap();
    }
}
