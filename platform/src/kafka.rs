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

/// A `group.instance.id` this process holds in one consumer group (static
/// membership): a member that restarts under the same id takes its
/// partitions back at once, where a new member would wait for the group to
/// notice the old one is gone (`session.timeout.ms`) and rebalance.
///
/// The id is `<base>-<slot>`: `base` names the host (the configured
/// `kafka_instance_id`, or the host name), and `slot` is the lowest one no
/// other live member of the group on this host holds, kept by a lock on a
/// file for as long as this value lives. Two live members with one id would
/// fence each other; a process that died gave its lock back, so its
/// successor gets its id.
#[derive(Debug)]
pub struct StaticMember {
    id: String,
    _lock: std::fs::File,
}

impl StaticMember {
    /// Most members of one group on one host.
    const SLOTS: usize = 256;

    /// Claims the lowest free slot of `group` for `base`; `None` (dynamic
    /// membership) when the lock files cannot be made.
    pub fn claim(base: &str, group: &str) -> Option<Self> {
        let directory = std::env::temp_dir().join("orders-kafka-members");
        if let Err(error) = std::fs::create_dir_all(&directory) {
            tracing::warn!(%error, ?directory, "no static group membership: cannot make the lock directory");
            return None;
        }
        let name: String = format!("{base}.{group}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        for slot in 0..Self::SLOTS {
            let path = directory.join(format!("{name}.{slot}.lock"));
            let file = match std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            {
                Ok(file) => file,
                Err(error) => {
                    tracing::warn!(%error, ?path, "no static group membership: cannot open the lock file");
                    return None;
                }
            };
            if file.try_lock().is_ok() {
                return Some(Self {
                    id: format!("{base}-{slot}"),
                    _lock: file,
                });
            }
        }
        tracing::warn!(
            group,
            "no static group membership: every slot on this host is taken"
        );
        None
    }

    /// The `group.instance.id`.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// This host's name, for [`StaticMember`] ids when none is configured.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "orders".to_owned())
}

/// [`group_consumer_config`] as a static member of `group` (see
/// [`StaticMember`]) when `instance` names this host; keep the member as
/// long as the consumer runs.
pub fn static_group_consumer_config(
    brokers: &str,
    client_id: &str,
    group: &str,
    instance: Option<&str>,
) -> (ClientConfig, Option<StaticMember>) {
    let mut config = group_consumer_config(brokers, client_id, group);
    let member = instance.and_then(|base| StaticMember::claim(base, group));
    if let Some(member) = &member {
        config.set("group.instance.id", member.id());
    }
    (config, member)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_members_of_a_group_get_distinct_ids_and_a_successor_gets_the_freed_one() {
        let group = format!("membership-test-{}", uuid::Uuid::new_v4().simple());
        let first = StaticMember::claim("host", &group).expect("a slot");
        let second = StaticMember::claim("host", &group).expect("another slot");
        assert_eq!((first.id(), second.id()), ("host-0", "host-1"));
        let elsewhere = StaticMember::claim("host", &format!("{group}-other")).expect("a slot");
        assert_eq!(elsewhere.id(), "host-0", "slots are per group");
        drop(first);
        let successor = StaticMember::claim("host", &group).expect("the freed slot");
        assert_eq!(successor.id(), "host-0");
    }

    #[test]
    fn a_static_consumer_config_carries_the_members_id() {
        let (config, member) =
            static_group_consumer_config("127.0.0.1:9092", "c", "g-static-test", Some("box"));
        let member = member.expect("a slot");
        assert_eq!(config.get("group.instance.id"), Some(member.id()));
        let (config, member) = static_group_consumer_config("127.0.0.1:9092", "c", "g", None);
        assert!(member.is_none());
        assert_eq!(config.get("group.instance.id"), None);
    }
}
