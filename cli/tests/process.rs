//! The `orders` binary as an operator runs it: killed with SIGKILL, it loses no
//! accepted command (a retry with the same Idempotency-Key gets the first answer
//! and appends nothing); stopped with SIGTERM, it exits cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use platform::testing::TestDatabase;
use serde_json::{Value, json};

struct Platform {
    child: Child,
    base: String,
}

impl Platform {
    async fn start(database_url: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_orders"))
            .args(["run", "--role", "api"])
            .env("DATABASE_URL", database_url)
            .env("ORDERS_LISTEN", format!("127.0.0.1:{port}"))
            .env("ORDERS_LOG_FILTER", "warn")
            .env("ORDERS_AUTH_HS256_SECRET", identity::testing::secret())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("orders starts");
        let platform = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        platform.wait_until_healthy().await;
        platform
    }

    async fn wait_until_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = reqwest::get(format!("{}/healthz", self.base)).await
                && response.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "orders did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        identity::testing::admin_client()
            .post(format!("{}{path}", self.base))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_for_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "orders did not exit in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_command_accepted_before_a_sigkill_is_kept_and_its_retry_deduplicated() {
    let database = TestDatabase::create().await.unwrap();
    let mut platform = Platform::start(&database.url).await;
    let product = json!({"sku": "MUG", "name": "Mug", "price_cents": 1250, "currency": "EUR"});
    let created = platform.post("/api/products", "create-mug", &product).await;
    assert_eq!(created.status(), 201);
    let first: Value = created.json().await.unwrap();

    platform.signal("-KILL");
    platform.wait_for_exit(Duration::from_secs(10));
    let platform = Platform::start(&database.url).await;
    let retried = platform.post("/api/products", "create-mug", &product).await;

    assert_eq!(retried.status(), 201);
    assert_eq!(retried.headers()["idempotent-replayed"], "true");
    assert_eq!(retried.json::<Value>().await.unwrap(), first);
    let pool = database.pool(1).await.unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 1);
}

#[tokio::test]
async fn sigterm_stops_the_platform_cleanly() {
    let database = TestDatabase::create().await.unwrap();
    let mut platform = Platform::start(&database.url).await;

    platform.signal("-TERM");
    let status = platform.wait_for_exit(Duration::from_secs(15));

    assert!(status.success(), "exit status {status}");
}
