//! Creating the event topics (and their dead-letter topics) at start.

use event_contract::Topics;

use crate::RelayConfig;

/// Creates every event topic and its dead-letter topic that does not exist
/// yet. Existing topics are left as they are.
pub async fn ensure(config: &RelayConfig) -> anyhow::Result<()> {
    let mut names = config.topics.all();
    names.extend(config.topics.all().iter().map(|t| Topics::dead_letter(t)));
    platform::kafka::create_topics(
        &config.brokers,
        &names,
        config.partitions,
        config.replication,
    )
    .await
}
