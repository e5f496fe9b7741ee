//! Kafka client settings shared by every process, and a reachability probe.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Settings every client starts from: where the brokers are and who we are.
pub fn client_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        // Fail fast on a broker that is down rather than waiting a minute.
        .set("socket.connection.setup.timeout.ms", "5000");
    // librdkafka's own debug contexts (`consumer,cgrp`, `all`...), for operators.
    if let Ok(contexts) = std::env::var("KAFKA_DEBUG") {
        config.set("debug", contexts);
    }
    config
}

/// Tells whether the brokers answer. Holds one long-lived client, so a probe is
/// one metadata request on an open connection rather than a new connection.
#[derive(Clone)]
pub struct KafkaProbe {
    client: Arc<BaseConsumer>,
}

impl std::fmt::Debug for KafkaProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProbe").finish_non_exhaustive()
    }
}

impl KafkaProbe {
    pub fn new(brokers: &str) -> anyhow::Result<Self> {
        let client: BaseConsumer = client_config(brokers, "orders-platform-probe").create()?;
        Ok(Self {
            client: Arc::new(client),
        })
    }

    /// Asks the cluster for its broker list; fails if none answers in `timeout`.
    pub async fn check(&self, timeout: Duration) -> anyhow::Result<()> {
        let client = Arc::clone(&self.client);
        tokio::task::spawn_blocking(move || {
            let metadata = client.fetch_metadata(None, timeout)?;
            anyhow::ensure!(
                !metadata.brokers().is_empty(),
                "the cluster lists no brokers"
            );
            Ok(())
        })
        .await?
    }
}

/// Creates the named topics that do not exist yet; existing ones are left as
/// they are.
pub async fn create_topics(
    brokers: &str,
    names: &[String],
    partitions: i32,
    replication: i32,
) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;

    let admin: AdminClient<DefaultClientContext> =
        client_config(brokers, "orders-admin").create()?;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(replication)))
        .collect();
    for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}
