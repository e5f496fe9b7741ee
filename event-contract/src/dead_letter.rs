//! Dead letters: a message a consumer cannot process goes, as it came, to
//! its topic's dead-letter topic ([`Topics::dead_letter`](crate::Topics::dead_letter)),
//! with headers that say why, who refused it and where it was.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Why the message was refused.
pub const ERROR_HEADER: &str = "error";
/// Which consumer refused it (a projection's name, or `saga`).
pub const CONSUMER_HEADER: &str = "consumer";
/// Where it was: topic, partition and offset.
pub const SOURCE_TOPIC_HEADER: &str = "source_topic";
pub const SOURCE_PARTITION_HEADER: &str = "source_partition";
pub const SOURCE_OFFSET_HEADER: &str = "source_offset";

/// Makes `dead_letters_total` of `consumer` on `source_topic` exist (at 0)
/// before the first dead letter, so that an alert on its increase has a
/// series to watch.
pub fn register(source_topic: &str, consumer: &str) {
    metrics::counter!("dead_letters_total", "topic" => source_topic.to_owned(), "consumer" => consumer.to_owned())
        .increment(0);
}

/// Forwards a message as it came to the dead-letter `topic`, with why it was
/// refused (`error` header), who refused it (`consumer`) and where it was
/// (`source_topic`, `source_partition`, `source_offset`). Returns once the
/// broker has it.
pub async fn send(
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
            key: ERROR_HEADER,
            value: Some(error),
        })
        .insert(Header {
            key: CONSUMER_HEADER,
            value: Some(consumer),
        })
        .insert(Header {
            key: SOURCE_TOPIC_HEADER,
            value: Some(message.topic()),
        })
        .insert(Header {
            key: SOURCE_PARTITION_HEADER,
            value: Some(&partition),
        })
        .insert(Header {
            key: SOURCE_OFFSET_HEADER,
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
    metrics::counter!("dead_letters_total", "topic" => message.topic().to_owned(), "consumer" => consumer.to_owned())
        .increment(1);
    Ok(())
}
