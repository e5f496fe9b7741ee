//! Kafka client settings shared by every process, and a reachability probe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;

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

/// A member of consumer group `group` that stores its offsets itself once
/// its work is durable (`store_offsets`), which librdkafka commits every
/// second and when the member leaves or its partitions move (a commit per
/// batch cost the broker a request and a log append each); that starts a
/// new group from the earliest message, has fetches answered within 10 ms,
/// and hands a dead member's partitions over after 10 s rather than the
/// default 45 s. A crash redelivers at most the last second, which changes
/// nothing.
pub fn group_consumer_config(brokers: &str, client_id: &str, group: &str) -> ClientConfig {
    let mut config = client_config(brokers, client_id);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        // The broker answers a fetch once 64 KiB wait or 10 ms have passed
        // (the default waits up to 500 ms): under load a consumer is woken
        // once per 10 ms with everything since, not once per produced batch.
        .set("fetch.wait.max.ms", "10")
        .set("fetch.min.bytes", "65536")
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

/// How a consumer joins its group.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Names this host in static member ids (see [`StaticMember`]); `None`
    /// joins as a dynamic member, which a restart makes the group rebalance.
    pub instance: Option<String>,
    /// How long the group waits for a silent member before it gives that
    /// member's partitions to the others (`session.timeout.ms`).
    pub session_timeout: Duration,
}

impl Default for Membership {
    fn default() -> Self {
        Self {
            instance: None,
            session_timeout: Duration::from_secs(10),
        }
    }
}

/// One member of a consumer group, which builds its consumer again after a
/// fatal error. A static member raises one when the group has fenced it: a
/// newer member took its id, or (librdkafka does this under load) its own
/// session timed out while it was joining and it came back under its old
/// id. Such a consumer never delivers again; a new one with the same id
/// takes the partitions back.
#[derive(Debug)]
pub struct GroupMember {
    config: ClientConfig,
    group: String,
    topic: String,
    member: Option<StaticMember>,
    last_fatal: Option<Instant>,
    delay: Duration,
}

impl GroupMember {
    /// The first pause before a consumer is built again.
    const FIRST_DELAY: Duration = Duration::from_millis(200);
    /// The longest: two live members sharing an id fence each other in turn,
    /// and the pauses keep that from turning into a storm of rebalances.
    const MAX_DELAY: Duration = Duration::from_secs(30);

    /// A member of `group` consuming `topic`, joining as `membership` says;
    /// it holds its static id (if any) for as long as it lives.
    pub fn new(
        brokers: &str,
        client_id: &str,
        group: &str,
        topic: &str,
        membership: &Membership,
    ) -> Self {
        let mut config = group_consumer_config(brokers, client_id, group);
        config.set(
            "session.timeout.ms",
            membership.session_timeout.as_millis().max(1).to_string(),
        );
        let member = membership
            .instance
            .as_deref()
            .and_then(|base| StaticMember::claim(base, group));
        if let Some(member) = &member {
            config.set("group.instance.id", member.id());
        }
        Self {
            config,
            group: group.to_owned(),
            topic: topic.to_owned(),
            member,
            last_fatal: None,
            delay: Self::FIRST_DELAY,
        }
    }

    /// Has the broker answer each fetch as soon as anything waits, for a
    /// consumer on the path of a customer's request (the saga), where the
    /// wait for a fuller fetch would be added to every order's time.
    pub fn eager(mut self) -> Self {
        self.config.set("fetch.min.bytes", "1");
        self
    }

    /// The static member id, if it joins as one.
    pub fn instance_id(&self) -> Option<&str> {
        self.member.as_ref().map(StaticMember::id)
    }

    /// A new consumer, subscribed to the topic.
    pub fn consumer(&self) -> KafkaResult<StreamConsumer> {
        let consumer: StreamConsumer = self.config.create()?;
        consumer.subscribe(&[&self.topic])?;
        Ok(consumer)
    }

    /// The fatal error `consumer` has hit, if any: it will deliver nothing
    /// more and has to be replaced.
    pub fn fatal_error(consumer: &StreamConsumer) -> Option<String> {
        consumer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    /// Records a fatal error and says how long to wait before building the
    /// next consumer: a short pause for the first in a while, doubling while
    /// they keep coming.
    pub fn replacement_delay(&mut self, reason: &str) -> Duration {
        let recent = self
            .last_fatal
            .is_some_and(|last| last.elapsed() < Self::MAX_DELAY * 2);
        self.delay = if recent {
            (self.delay * 2).min(Self::MAX_DELAY)
        } else {
            Self::FIRST_DELAY
        };
        self.last_fatal = Some(Instant::now());
        metrics::counter!("kafka_consumer_replaced_total", "group" => self.group.clone())
            .increment(1);
        tracing::error!(
            group = %self.group,
            instance = self.instance_id().unwrap_or("-"),
            %reason,
            delay_ms = self.delay.as_millis() as u64,
            "the consumer hit a fatal error; building a new one (a second live process with this \
             instance id fences this one in turn: check kafka_instance_id)"
        );
        self.delay
    }
}

/// How long [`close`] serves a leaving consumer's rebalance before it
/// closes the consumer anyway, and then how long it waits for the close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Leaves the group and closes `consumer` without ever hanging its caller.
///
/// Dropping a group consumer closes it, and librdkafka hangs that close for
/// good when a rebalance event is still queued for the application: the
/// close terminates the group first, and the (un)assign call the event
/// makes then waits for an answer nobody gives (confluentinc/librdkafka
/// issue 4884). So the consumer unsubscribes first and serves its queue
/// until it holds no partition and nothing more comes, and only then is
/// dropped, on a thread of its own: should the close still stall, the
/// caller goes on after [`CLOSE_WAIT`] with a warning.
///
/// Leaving is explicit, so even a static member hands its partitions to
/// the rest of the group at once; one that is killed keeps them until it
/// comes back or its session times out.
///
/// Returns whether the consumer closed within the wait.
pub async fn close(consumer: impl Into<Arc<StreamConsumer>>) -> bool {
    let consumer = consumer.into();
    consumer.unsubscribe();
    let deadline = Instant::now() + CLOSE_WAIT;
    let mut quiet = 0;
    while quiet < 3 && Instant::now() < deadline {
        // Rebalance events are served inside `recv`; messages that still
        // arrive are not committed, so the group delivers them again.
        match tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await {
            Ok(_) => quiet = 0,
            Err(_) => {
                let holds = consumer
                    .assignment()
                    .is_ok_and(|partitions| partitions.count() > 0);
                quiet = if holds { 0 } else { quiet + 1 };
            }
        }
    }
    let (closed, done) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        drop(consumer);
        let _ = closed.send(());
    });
    let closed = tokio::time::timeout(CLOSE_WAIT, done).await.is_ok();
    if !closed {
        tracing::warn!("a Kafka consumer did not close within {CLOSE_WAIT:?}; going on without it");
    }
    closed
}

/// The `consumer_lag_messages` gauge of a consumer, by topic and partition:
/// messages in its assigned partitions not yet consumed, measured every few
/// seconds; `total` is told their sum.
pub struct LagGauge {
    consumer: &'static str,
    total: Arc<dyn Fn(i64) + Send + Sync>,
    last: Option<Instant>,
    /// The measurement under way: it holds the consumer until it ends.
    measuring: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for LagGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagGauge")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl LagGauge {
    const EVERY: Duration = Duration::from_secs(5);

    pub fn new(consumer: &'static str, total: impl Fn(i64) + Send + Sync + 'static) -> Self {
        Self {
            consumer,
            total: Arc::new(total),
            last: None,
            measuring: None,
        }
    }

    /// Waits for the measurement under way, so the consumer it holds can be
    /// closed by its owner ([`close`]), not dropped by it.
    pub async fn finish(&mut self) {
        if let Some(measuring) = self.measuring.take() {
            let _ = measuring.await;
        }
    }

    /// Measures again if the last measurement is old enough and done.
    pub fn update(&mut self, consumer: &Arc<StreamConsumer>) {
        let busy = self
            .measuring
            .as_ref()
            .is_some_and(|task| !task.is_finished());
        if busy || self.last.is_some_and(|last| last.elapsed() < Self::EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let (consumer, name, total) =
            (Arc::clone(consumer), self.consumer, Arc::clone(&self.total));
        // Watermark queries block; keep them off the async workers.
        self.measuring = Some(tokio::task::spawn_blocking(move || {
            let Ok(positions) = consumer.position() else {
                return;
            };
            let mut lag = 0i64;
            for element in positions.elements() {
                let Ok((_, high)) = consumer.fetch_watermarks(
                    element.topic(),
                    element.partition(),
                    Duration::from_secs(1),
                ) else {
                    return;
                };
                let position = match element.offset() {
                    rdkafka::Offset::Offset(offset) => offset,
                    _ => 0,
                };
                let behind = (high - position).max(0);
                metrics::gauge!(
                    "consumer_lag_messages",
                    "consumer" => name,
                    "topic" => element.topic().to_owned(),
                    "partition" => element.partition().to_string()
                )
                .set(behind as f64);
                lag += behind;
            }
            total(lag);
        }));
    }
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
    fn a_static_member_joins_under_its_id_with_the_session_timeout_it_is_given() {
        let group = format!("membership-test-{}", uuid::Uuid::new_v4().simple());
        let membership = Membership {
            instance: Some("box".into()),
            session_timeout: Duration::from_secs(45),
        };
        let member = GroupMember::new("127.0.0.1:9092", "c", &group, "t", &membership);
        assert_eq!(member.instance_id(), Some("box-0"));
        assert_eq!(member.config.get("group.instance.id"), Some("box-0"));
        assert_eq!(member.config.get("session.timeout.ms"), Some("45000"));

        let dynamic = GroupMember::new("127.0.0.1:9092", "c", &group, "t", &Membership::default());
        assert_eq!(dynamic.instance_id(), None);
        assert_eq!(dynamic.config.get("group.instance.id"), None);
        assert_eq!(dynamic.config.get("session.timeout.ms"), Some("10000"));
    }

    #[test]
    fn fatal_errors_in_a_row_wait_longer_and_longer_up_to_a_bound() {
        let mut member = GroupMember::new("127.0.0.1:9092", "c", "g", "t", &Membership::default());
        let delays: Vec<Duration> = (0..12).map(|_| member.replacement_delay("test")).collect();
        assert_eq!(delays[0], GroupMember::FIRST_DELAY);
        assert_eq!(delays[1], GroupMember::FIRST_DELAY * 2);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert_eq!(delays[11], GroupMember::MAX_DELAY);
        // The first one after a long quiet spell waits the shortest again.
        member.last_fatal = Some(Instant::now() - GroupMember::MAX_DELAY * 3);
        assert_eq!(member.replacement_delay("test"), GroupMember::FIRST_DELAY);
    }
}
