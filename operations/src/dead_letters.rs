//! The dead letters of every `<topic>.dlq`: read, replayed into the live
//! path, or discarded, each action recorded.
//!
//! A dead letter is the message a consumer could not process, as it was,
//! with headers saying why (`error`), who refused it (`consumer`) and where
//! it came from (`source_topic`, `source_partition`, `source_offset`); see
//! `event_contract::dead_letter`. It is named by where it sits:
//! `<dlq topic>:<partition>:<offset>`.
//!
//! Replaying one sends the original message (key, value, its own headers)
//! to its source topic again, where every consumer of that topic takes it
//! as a redelivery: those that applied it already skip it (the rows'
//! versions, the sagas' keys), the one that refused it tries again. So a
//! replay is safe to repeat, and the way back once the cause is fixed (a
//! projection's code, a missing earlier event).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use event_contract::Topics;
use event_contract::dead_letter::{
    CONSUMER_HEADER, ERROR_HEADER, SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use sqlx::PgPool;

/// How long reading one dead-letter topic may take.
const READ_LIMIT: Duration = Duration::from_secs(30);
/// A listing reads at most this many of the newest messages of each
/// partition: memory and time stay bounded however many piled up (older
/// ones are still found by their id).
pub const LIST_LIMIT: i64 = 10_000;
/// How long one call to the broker may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// The header a replayed message carries: the dead letter it came from.
pub const REPLAY_OF_HEADER: &str = "replay_of";

/// Where a dead letter sits; written (and serialized) as
/// `<dead-letter topic>:<partition>:<offset>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LetterId {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for LetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.topic, self.partition, self.offset)
    }
}

impl Serialize for LetterId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for LetterId {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let invalid = || {
            anyhow::anyhow!(
                "{text:?} names no dead letter: use <dead-letter topic>:<partition>:<offset>, as `orders dlq list` prints"
            )
        };
        let mut parts = text.rsplitn(3, ':');
        let (Some(offset), Some(partition), Some(topic)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let topic_ok = topic.ends_with(".dlq")
            && topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        match (topic_ok, partition.parse(), offset.parse()) {
            (true, Ok(partition), Ok(offset)) if partition >= 0 && offset >= 0 => Ok(Self {
                topic: topic.to_owned(),
                partition,
                offset,
            }),
            _ => Err(invalid()),
        }
    }
}

/// One action recorded on a dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    /// `replayed` or `discarded`.
    pub action: String,
    pub reason: Option<String>,
    pub actor: String,
    pub at: DateTime<Utc>,
}

/// A dead letter as it sits on its topic, with what was done to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub id: LetterId,
    /// The aggregate id (the message's key).
    pub key: Option<String>,
    /// The message's value, as text (lossy where it is not UTF-8).
    pub payload: String,
    /// Every header, as text.
    pub headers: Vec<(String, String)>,
    pub at: Option<DateTime<Utc>>,
    /// Oldest first.
    pub actions: Vec<Action>,
    #[serde(skip)]
    raw_key: Option<Vec<u8>>,
    #[serde(skip)]
    raw_payload: Option<Vec<u8>>,
    #[serde(skip)]
    raw_headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// Why it was refused.
    pub fn error(&self) -> &str {
        self.header(ERROR_HEADER).unwrap_or("")
    }

    /// Who refused it.
    pub fn consumer(&self) -> &str {
        self.header(CONSUMER_HEADER).unwrap_or("")
    }

    /// The topic it came from.
    pub fn source_topic(&self) -> Option<&str> {
        self.header(SOURCE_TOPIC_HEADER)
    }

    /// `replayed` or `discarded`, whichever happened last; `None` while
    /// nobody has dealt with it.
    pub fn state(&self) -> Option<&str> {
        self.actions.last().map(|action| action.action.as_str())
    }
}

/// Which dead letters a listing shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// A source topic or a dead-letter topic, by its full name.
    pub topic: Option<String>,
    /// The aggregate id (the message's key).
    pub aggregate: Option<String>,
    /// Text in the reason, in any case.
    pub reason: Option<String>,
    /// Also those already replayed or discarded.
    pub include_handled: bool,
}

impl Filter {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let topic = self
            .topic
            .as_deref()
            .is_none_or(|topic| letter.id.topic == topic || letter.source_topic() == Some(topic));
        let aggregate = self
            .aggregate
            .as_deref()
            .is_none_or(|aggregate| letter.key.as_deref() == Some(aggregate));
        let reason = self.reason.as_deref().is_none_or(|reason| {
            letter
                .error()
                .to_lowercase()
                .contains(&reason.to_lowercase())
        });
        let open = self.include_handled || letter.actions.is_empty();
        topic && aggregate && reason && open
    }
}

/// The platform's dead letters: on the brokers, with the actions recorded
/// in the database.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    brokers: String,
    topics: Topics,
    pool: PgPool,
}

impl DeadLetters {
    pub fn new(brokers: &str, topics: Topics, pool: PgPool) -> Self {
        Self {
            brokers: brokers.to_owned(),
            topics,
            pool,
        }
    }

    /// Every dead letter `filter` lets through, topic by topic, oldest
    /// first in each partition.
    pub async fn list(&self, filter: &Filter) -> anyhow::Result<Vec<DeadLetter>> {
        let mut letters = Vec::new();
        for source in self.topics.all() {
            let topic = Topics::dead_letter(&source);
            letters.extend(self.read(&topic, None).await?);
        }
        self.attach_actions(&mut letters).await?;
        letters.retain(|letter| filter.matches(letter));
        Ok(letters)
    }

    /// Whether `topic` is one of this platform's dead-letter topics.
    pub fn is_dead_letter_topic(&self, topic: &str) -> bool {
        self.topics
            .all()
            .iter()
            .any(|source| Topics::dead_letter(source) == topic)
    }

    /// The dead letter at `id`, if there is one.
    pub async fn find(&self, id: &LetterId) -> anyhow::Result<Option<DeadLetter>> {
        anyhow::ensure!(
            self.is_dead_letter_topic(&id.topic),
            "{} is not one of this platform's dead-letter topics",
            id.topic
        );
        let mut letters = self
            .read(&id.topic, Some((id.partition, id.offset)))
            .await?;
        self.attach_actions(&mut letters).await?;
        Ok(letters.into_iter().find(|letter| letter.id == *id))
    }

    /// Where a replay of `letter` goes: the source topic it names, if that
    /// is its dead-letter topic's source and one of this platform's; why not
    /// otherwise (nothing the broker or the database said).
    pub fn replay_target<'a>(&self, letter: &'a DeadLetter) -> Result<&'a str, String> {
        let source = letter.source_topic().ok_or_else(|| {
            format!(
                "{} has no {SOURCE_TOPIC_HEADER} header: not a dead letter this platform wrote",
                letter.id
            )
        })?;
        // Only back where it came from: the dead-letter topic names its source.
        if Topics::dead_letter(source) == letter.id.topic
            && self.topics.all().iter().any(|topic| topic == source)
        {
            Ok(source)
        } else {
            Err(format!(
                "{} says it came from {source}, which is not its dead-letter topic's source",
                letter.id
            ))
        }
    }

    /// Sends the dead letter's message to its source topic again and records
    /// it as replayed by `actor`.
    pub async fn replay(&self, letter: &DeadLetter, actor: &str) -> anyhow::Result<()> {
        let source = self.replay_target(letter).map_err(anyhow::Error::msg)?;
        let producer: FutureProducer =
            platform::kafka::client_config(&self.brokers, "orders-dead-letter-replay")
                .set("enable.idempotence", "true")
                // The answer comes within the broker timeout, not
                // librdkafka's five minutes: the record's transaction (and
                // its connection) stays open until then, and a caller's
                // request would time out first and cancel mid-send.
                .set("message.timeout.ms", BROKER_TIMEOUT.as_millis().to_string())
                .create()?;
        let replay_of = letter.id.to_string();
        let dead_letter_headers = [
            ERROR_HEADER,
            CONSUMER_HEADER,
            SOURCE_TOPIC_HEADER,
            SOURCE_PARTITION_HEADER,
            SOURCE_OFFSET_HEADER,
            REPLAY_OF_HEADER,
        ];
        let mut headers = OwnedHeaders::new();
        for (key, value) in &letter.raw_headers {
            if !dead_letter_headers.contains(&key.as_str()) {
                headers = headers.insert(Header {
                    key,
                    value: value.as_deref(),
                });
            }
        }
        let headers = headers.insert(Header {
            key: REPLAY_OF_HEADER,
            value: Some(&replay_of),
        });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(source).headers(headers);
        if let Some(key) = &letter.raw_key {
            record = record.key(key);
        }
        if let Some(payload) = &letter.raw_payload {
            record = record.payload(payload);
        }
        // Sent first, recorded after: no transaction of the database stays
        // open while the broker takes its time (one that has written would
        // hold back the relay's reader, whose horizon is the oldest such
        // transaction). A replay that failed leaves no record; one that went
        // out is recorded unless the database then fails, which the error
        // says (a replay twice changes nothing for the consumers).
        producer
            .send(record, BROKER_TIMEOUT)
            .await
            .map_err(|(error, _)| anyhow::anyhow!("cannot write to {source}: {error}"))?;
        let mut connection = self.pool.acquire().await.with_context(|| {
            format!(
                "{} was replayed to {source}, but the record of it was not stored",
                letter.id
            )
        })?;
        insert_action(&mut connection, letter, "replayed", None, actor)
            .await
            .with_context(|| {
                format!(
                    "{} was replayed to {source}, but the record of it was not stored",
                    letter.id
                )
            })?;
        handled(letter, "replayed", None, actor);
        Ok(())
    }

    /// Records the dead letter as discarded by `actor`, for `reason`: it no
    /// longer shows among the open ones.
    pub async fn discard(
        &self,
        letter: &DeadLetter,
        reason: &str,
        actor: &str,
    ) -> anyhow::Result<()> {
        let reason = crate::clean_text("a reason", reason, crate::REASON_LIMIT)
            .map_err(anyhow::Error::msg)?
            .context("a discard needs a reason")?;
        self.record(letter, "discarded", Some(reason), actor).await
    }

    async fn record(
        &self,
        letter: &DeadLetter,
        action: &str,
        reason: Option<&str>,
        actor: &str,
    ) -> anyhow::Result<()> {
        let mut connection = self.pool.acquire().await?;
        insert_action(&mut connection, letter, action, reason, actor).await?;
        handled(letter, action, reason, actor);
        Ok(())
    }

    async fn attach_actions(&self, letters: &mut [DeadLetter]) -> anyhow::Result<()> {
        /// topic, partition, offset, action, reason, actor, at
        type ActionRow = (
            String,
            i32,
            i64,
            String,
            Option<String>,
            String,
            DateTime<Utc>,
        );
        if letters.is_empty() {
            return Ok(());
        }
        let topics: Vec<&str> = letters.iter().map(|l| l.id.topic.as_str()).collect();
        let rows: Vec<ActionRow> = sqlx::query_as(
            "SELECT dlq_topic, partition, \"offset\", action, reason, actor, at
                   FROM dead_letter_actions WHERE dlq_topic = ANY($1) ORDER BY id",
        )
        .bind(&topics)
        .fetch_all(&self.pool)
        .await
        .context("reading the recorded actions")?;
        let mut actions: HashMap<LetterId, Vec<Action>> = HashMap::new();
        for (topic, partition, offset, action, reason, actor, at) in rows {
            actions
                .entry(LetterId {
                    topic,
                    partition,
                    offset,
                })
                .or_default()
                .push(Action {
                    action,
                    reason,
                    actor,
                    at,
                });
        }
        for letter in letters {
            letter.actions = actions.remove(&letter.id).unwrap_or_default();
        }
        Ok(())
    }

    /// The messages of `topic` (or the one at `only`), read from the
    /// brokers on a thread of its own: the consumer's calls block.
    async fn read(&self, topic: &str, only: Option<(i32, i64)>) -> anyhow::Result<Vec<DeadLetter>> {
        let (brokers, topic) = (self.brokers.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || read_topic(&brokers, &topic, only)).await?
    }
}

/// Writes one action on `letter` to the audit table.
async fn insert_action(
    connection: &mut sqlx::PgConnection,
    letter: &DeadLetter,
    action: &str,
    reason: Option<&str>,
    actor: &str,
) -> anyhow::Result<()> {
    let actor = crate::clean_text("who took an action", actor, crate::ACTOR_LIMIT)
        .map_err(anyhow::Error::msg)?
        .context("an action needs who took it")?;
    sqlx::query(
        "INSERT INTO dead_letter_actions (dlq_topic, partition, \"offset\", action, reason, actor)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&letter.id.topic)
    .bind(letter.id.partition)
    .bind(letter.id.offset)
    .bind(action)
    .bind(reason)
    .bind(actor)
    .execute(connection)
    .await
    .context("recording the action")?;
    Ok(())
}

/// Counts and logs an action that was recorded.
fn handled(letter: &DeadLetter, action: &str, reason: Option<&str>, actor: &str) {
    metrics::counter!("dead_letter_actions_total", "action" => action.to_owned()).increment(1);
    tracing::info!(letter = %letter.id, action, actor = actor.trim(), reason, "dead letter handled");
}

fn read_topic(
    brokers: &str,
    topic: &str,
    only: Option<(i32, i64)>,
) -> anyhow::Result<Vec<DeadLetter>> {
    // Assigned partitions, no group membership, nothing committed.
    let consumer: BaseConsumer =
        platform::kafka::client_config(brokers, "orders-dead-letter-reader")
            .set("group.id", "orders-dead-letter-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // An offset removed by retention meanwhile: on from the oldest kept.
            .set("auto.offset.reset", "earliest")
            .create()?;
    let metadata = consumer
        .fetch_metadata(Some(topic), BROKER_TIMEOUT)
        .with_context(|| format!("reading {topic}'s partitions"))?;
    let Some(found) = metadata.topics().first() else {
        return Ok(Vec::new());
    };
    match found.error() {
        None => {}
        // Not created yet: no consumer has refused anything.
        Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
            return Ok(Vec::new());
        }
        Some(error) => anyhow::bail!("cannot read {topic}: {error:?}"),
    }
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for partition in found.partitions() {
        let id = partition.id();
        let (low, high) = consumer.fetch_watermarks(topic, id, BROKER_TIMEOUT)?;
        let (from, end) = match only {
            Some((wanted, _)) if wanted != id => continue,
            Some((_, offset)) if offset < low || offset >= high => continue,
            Some((_, offset)) => (offset, offset + 1),
            None if high > low => (low.max(high - LIST_LIMIT), high),
            None => continue,
        };
        assignment.add_partition_offset(topic, id, Offset::Offset(from))?;
        ends.insert(id, end);
    }
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + READ_LIMIT;
    let mut letters = Vec::new();
    while !ends.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "reading {topic} took longer than {READ_LIMIT:?}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let partition = message.partition();
                let Some(&end) = ends.get(&partition) else {
                    continue;
                };
                if message.offset() < end {
                    letters.push(letter_of(&message));
                }
                if message.offset() + 1 >= end {
                    ends.remove(&partition);
                }
            }
            Some(Err(error)) => return Err(error).with_context(|| format!("reading {topic}")),
            None => {}
        }
    }
    letters.sort_by_key(|letter| (letter.id.partition, letter.id.offset));
    Ok(letters)
}

fn letter_of<M: Message>(message: &M) -> DeadLetter {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let raw_headers: Vec<(String, Option<Vec<u8>>)> = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    DeadLetter {
        id: LetterId {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        },
        key: message.key().map(text),
        payload: message.payload().map(text).unwrap_or_default(),
        headers: raw_headers
            .iter()
            .map(|(key, value)| (key.clone(), value.as_deref().map(text).unwrap_or_default()))
            .collect(),
        at: message
            .timestamp()
            .to_millis()
            .and_then(DateTime::<Utc>::from_timestamp_millis),
        actions: Vec::new(),
        raw_key: message.key().map(<[u8]>::to_vec),
        raw_payload: message.payload().map(<[u8]>::to_vec),
        raw_headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letter_ids_read_back_and_nothing_else_reads() {
        let id: LetterId = "orders.events.dlq:2:41".parse().unwrap();
        assert_eq!(
            id,
            LetterId {
                topic: "orders.events.dlq".into(),
                partition: 2,
                offset: 41
            }
        );
        assert_eq!(id.to_string().parse::<LetterId>().unwrap(), id);
        let prefixed: LetterId = "test-1.orders.events.dlq:0:0".parse().unwrap();
        assert_eq!(prefixed.topic, "test-1.orders.events.dlq");
        for bad in [
            "",
            "orders.events.dlq",
            "orders.events.dlq:1",
            "orders.events:1:2",
            "orders.events.dlq:-1:2",
            "orders.events.dlq:1:-2",
            "orders.events.dlq:x:2",
            "orders events.dlq:1:2",
        ] {
            assert!(bad.parse::<LetterId>().is_err(), "{bad:?} was read");
        }
    }
}
