//! Kafka client settings shared by every process, and a reachability probe.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

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

/// A member of consumer group `group` that commits its offsets itself (after
/// its work is durable), starts a new group from the earliest message, answers
/// fetches without lingering, and hands a dead member's partitions over after
/// 10 s rather than the default 45 s.
pub fn group_consumer_config(brokers: &str, client_id: &str, group: &str) -> ClientConfig {
    let mut config = client_config(brokers, client_id);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // The default waits up to 500 ms for more data before answering.
        .set("fetch.wait.max.ms", "10")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000");
    config
}

/// [`create_topics`], waiting for the brokers (with a warning per try) until
/// they answer. Returns `false` if `shutdown` completed first.
pub async fn create_topics_when_up(
    brokers: &str,
    names: &[String],
    partitions: i32,
    replication: i32,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    loop {
        match create_topics(brokers, names, partitions, replication).await {
            Ok(()) => return true,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), ?names, "cannot create the topics yet; retrying");
                tokio::select! {
                    () = shutdown.as_mut() => return false,
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
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

/// Forwards a message as it came to the dead-letter `topic`, with why it was
/// refused (`error` header), who refused it (`consumer`) and where it was
/// (`source_topic`, `source_partition`, `source_offset`). Returns once the
/// broker has it.
pub async fn send_to_dead_letters(
    producer: &FutureProducer,
    topic: &str,
    message: &BorrowedMessage<'_>,
    consumer: &str,
    error: &str,
) -> anyhow::Result<()> {
    tracing::warn!(
        consumer,
        source_topic = message.topic(),
        partition = message.partition(),
        offset = message.offset(),
        %error,
        "message sent to the dead-letter topic"
    );
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    let mut headers = OwnedHeaders::new();
    if let Some(original) = message.headers() {
        for header in original.iter() {
            headers = headers.insert(header);
        }
    }
    let headers = headers
        .insert(Header {
            key: "error",
            value: Some(error),
        })
        .insert(Header {
            key: "consumer",
            value: Some(consumer),
        })
        .insert(Header {
            key: "source_topic",
            value: Some(message.topic()),
        })
        .insert(Header {
            key: "source_partition",
            value: Some(&partition),
        })
        .insert(Header {
            key: "source_offset",
            value: Some(&offset),
        });
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if let Some(payload) = message.payload() {
        record = record.payload(payload);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(error, _)| anyhow::anyhow!("cannot write to {topic}: {error}"))?;
    Ok(())
}
