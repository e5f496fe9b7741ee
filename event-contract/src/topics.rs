//! The topic each aggregate type's events go to, and where messages that
//! cannot be processed go.

/// The topic of each aggregate type, under an optional prefix (tests use one
/// per run to keep apart on a shared broker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// (aggregate type, topic), with the prefix applied.
    names: Vec<(&'static str, String)>,
}

impl Default for Topics {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

/// Aggregate types and their topics, as the contract names them.
const TOPICS: &[(&str, &str)] = &[
    ("Order", "orders.events"),
    ("Product", "products.events"),
    ("Payment", "payments.events"),
];

impl Topics {
    pub fn with_prefix(prefix: impl AsRef<str>) -> Self {
        Self {
            names: TOPICS
                .iter()
                .map(|(aggregate, topic)| (*aggregate, format!("{}{topic}", prefix.as_ref())))
                .collect(),
        }
    }

    /// The topic for an aggregate type; `None` for types that are not published.
    pub fn for_aggregate(&self, aggregate_type: &str) -> Option<String> {
        self.topic_of(aggregate_type).map(str::to_owned)
    }

    /// Like [`for_aggregate`](Self::for_aggregate), without allocating.
    pub fn topic_of(&self, aggregate_type: &str) -> Option<&str> {
        self.names
            .iter()
            .find(|(aggregate, _)| *aggregate == aggregate_type)
            .map(|(_, topic)| topic.as_str())
    }

    /// Every event topic.
    pub fn all(&self) -> Vec<String> {
        self.names.iter().map(|(_, topic)| topic.clone()).collect()
    }

    /// Where messages of `topic` that cannot be processed go.
    pub fn dead_letter(topic: &str) -> String {
        format!("{topic}.dlq")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_contract_and_take_a_prefix() {
        let plain = Topics::default();
        assert_eq!(
            plain.for_aggregate("Order").as_deref(),
            Some("orders.events")
        );
        assert_eq!(
            plain.for_aggregate("Product").as_deref(),
            Some("products.events")
        );
        assert_eq!(
            plain.for_aggregate("Payment").as_deref(),
            Some("payments.events")
        );
        assert_eq!(plain.for_aggregate("Test"), None);
        let prefixed = Topics::with_prefix("t1.");
        assert_eq!(
            prefixed.for_aggregate("Order").as_deref(),
            Some("t1.orders.events")
        );
        assert_eq!(
            Topics::dead_letter("t1.orders.events"),
            "t1.orders.events.dlq"
        );
    }
}
