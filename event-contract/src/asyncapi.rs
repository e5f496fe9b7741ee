//! The AsyncAPI 3 document of what the platform publishes on Kafka: every
//! event topic and its dead-letter topic, the key, the headers (the
//! platform's own and the CloudEvents binding's) and one message per event
//! type whose payload is the [`Envelope`](crate::Envelope) carrying that
//! event's fields. Built from the same names and schemas the relay and the
//! consumers use, so it cannot describe topics or headers they do not.

use serde_json::{Map, Value, json};

use crate::{EVENT_ID_HEADER, EVENT_TYPE_HEADER, Topics, cloud_events, dead_letter, trace};

/// The AsyncAPI version the document follows.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// One event type: what `domain::event_types` describes, without naming
/// the domain's types.
#[derive(Debug, Clone)]
pub struct EventSchema {
    /// The aggregate that records it (`Order`, `Product`, `Payment`).
    pub aggregate_type: String,
    /// The event's name, such as `OrderPlaced`.
    pub event_type: String,
    /// The event's version as the envelope carries it (`1.0`).
    pub event_version: String,
    /// The JSON Schema of the event's own fields (its `$defs` are moved
    /// into the document's components).
    pub schema: Map<String, Value>,
}

/// Why a document could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AsyncApiError {
    /// Two schemas define a type of one name differently: rename one.
    #[error("two event schemas define {0} differently")]
    Conflict(String),
    /// An event names an aggregate type that has no topic.
    #[error("{0} has no topic")]
    NoTopic(String),
}

/// The document for `events`, published on `topics`, at `version` (the
/// platform's release).
pub fn document(
    version: &str,
    topics: &Topics,
    events: &[EventSchema],
) -> Result<Value, AsyncApiError> {
    if let Some(stray) = events
        .iter()
        .find(|event| topics.topic_of(&event.aggregate_type).is_none())
    {
        return Err(AsyncApiError::NoTopic(stray.aggregate_type.clone()));
    }
    let mut schemas = Map::new();
    let envelope = serde_json::to_value(schemars::schema_for!(crate::Envelope)).unwrap_or_default();
    hoist("Envelope", envelope, &mut schemas)?;
    let mut messages = Map::new();
    let mut channels = Map::new();
    let mut operations = Map::new();
    for topic in topics.all() {
        let on_topic: Vec<&EventSchema> = events
            .iter()
            .filter(|event| topics.topic_of(&event.aggregate_type) == Some(topic.as_str()))
            .collect();
        let Some(first) = on_topic.first() else {
            continue;
        };
        let aggregate = first.aggregate_type.as_str();
        let id = channel_id(&topic);
        let mut channel_messages = Map::new();
        for event in &on_topic {
            hoist(
                &event.event_type,
                Value::Object(event.schema.clone()),
                &mut schemas,
            )?;
            messages.insert(event.event_type.clone(), message(event));
            channel_messages.insert(
                event.event_type.clone(),
                json!({"$ref": format!("#/components/messages/{}", event.event_type)}),
            );
        }
        let refs: Vec<Value> = on_topic
            .iter()
            .map(|event| json!({"$ref": format!("#/channels/{id}/messages/{}", event.event_type)}))
            .collect();
        channels.insert(
            id.clone(),
            json!({
                "address": topic,
                "title": format!("{aggregate} events"),
                "description": format!(
                    "Every event of every {aggregate} aggregate, in the order the event store committed them. \
                     The key is the aggregate id, so one aggregate's events share a partition and arrive in sequence order. \
                     Delivery is at least once: deduplicate on `event_id` or on (`aggregate_id`, `sequence`). \
                     Each message is a CloudEvent in binary mode (the `ce_` headers) whose value is the envelope. \
                     A deployment may put a prefix before the topic's name (`ORDERS_KAFKA_TOPIC_PREFIX`)."
                ),
                "messages": channel_messages,
            }),
        );
        operations.insert(
            format!("publish{aggregate}Events"),
            json!({
                "action": "send",
                "title": format!("Publish {aggregate} events"),
                "summary": "The relay publishes each committed event once or more.",
                "channel": {"$ref": format!("#/channels/{id}")},
                "messages": refs,
            }),
        );
        let dead_letters = Topics::dead_letter(&topic);
        let dead_id = channel_id(&dead_letters);
        channels.insert(
            dead_id.clone(),
            json!({
                "address": dead_letters,
                "title": format!("{aggregate} dead letters"),
                "description": format!(
                    "Messages of `{topic}` that a consumer could not process, as they came (key, value and headers), \
                     with headers saying why, which consumer refused them and where they were. \
                     Operators list, replay and discard them with `orders dlq`."
                ),
                "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
            }),
        );
        operations.insert(
            format!("deadLetter{aggregate}Events"),
            json!({
                "action": "send",
                "title": format!("Dead-letter {aggregate} events"),
                "summary": "A consumer forwards a message it cannot process.",
                "channel": {"$ref": format!("#/channels/{dead_id}")},
                "messages": [{"$ref": format!("#/channels/{dead_id}/messages/DeadLetter")}],
            }),
        );
    }
    messages.insert("DeadLetter".into(), dead_letter_message());
    Ok(json!({
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Order platform events",
            "version": version,
            "description": "What the order platform publishes on Kafka: one topic per aggregate type, \
                            each with a dead-letter topic. Every message is a CloudEvent 1.0 in Kafka's binary \
                            content mode (`ce_*` headers, `content-type`) whose value is the platform's envelope \
                            (`components/schemas/Envelope`); its `payload` holds the event's own fields.",
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": cloud_events::JSON,
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "The broker `scripts/up` starts; a deployment names its own in `KAFKA_BROKERS`.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }))
}

/// Channel ids may hold letters, digits, `.`, `-` and `_`: a topic's name
/// is one.
fn channel_id(topic: &str) -> String {
    topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The message of one event type.
fn message(event: &EventSchema) -> Value {
    let major = event
        .event_version
        .split('.')
        .next()
        .unwrap_or(&event.event_version);
    let summary = event
        .schema
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let constant = |value: String, description: &str| json!({"type": "string", "const": value, "description": description});
    let mut headers = event_headers();
    let properties = headers["properties"]
        .as_object_mut()
        .expect("event_headers is an object schema");
    properties.insert(
        EVENT_TYPE_HEADER.into(),
        constant(event.event_type.clone(), "The event's type."),
    );
    properties.insert(
        cloud_events::TYPE.into(),
        constant(
            format!(
                "{}.{}.v{major}",
                cloud_events::TYPE_PREFIX,
                event.event_type
            ),
            "CloudEvents type: `orders.<event type>.v<major event version>`.",
        ),
    );
    properties.insert(
        cloud_events::SOURCE.into(),
        constant(
            format!("{}/{}", cloud_events::SOURCE_PREFIX, event.aggregate_type),
            "CloudEvents source: the platform and the aggregate type.",
        ),
    );
    json!({
        "name": event.event_type,
        "title": event.event_type,
        "summary": summary,
        "contentType": cloud_events::JSON,
        "headers": headers,
        "payload": {
            "allOf": [
                {"$ref": "#/components/schemas/Envelope"},
                {
                    "type": "object",
                    "properties": {
                        "aggregate_type": {"const": event.aggregate_type},
                        "event_type": {"const": event.event_type},
                        "event_version": {"const": event.event_version},
                        "payload": {"$ref": format!("#/components/schemas/{}", event.event_type)},
                    },
                },
            ],
        },
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": "The aggregate id (`aggregate_id`, `ce_subject`)."},
                "bindingVersion": "0.5.0",
            }
        },
    })
}

/// The headers every published event carries.
fn event_headers() -> Value {
    let string = |description: &str| json!({"type": "string", "description": description});
    let required = [
        EVENT_ID_HEADER,
        EVENT_TYPE_HEADER,
        trace::TRACEPARENT_HEADER,
        cloud_events::SPECVERSION,
        cloud_events::ID,
        cloud_events::SOURCE,
        cloud_events::TYPE,
        cloud_events::TIME,
        cloud_events::SUBJECT,
        cloud_events::CONTENT_TYPE,
    ];
    json!({
        "type": "object",
        "properties": {
            EVENT_ID_HEADER: {"type": "string", "format": "uuid", "description": "The event's id, as in the envelope."},
            EVENT_TYPE_HEADER: string("The event's type, as in the envelope."),
            trace::TRACEPARENT_HEADER: string("W3C trace context of the request that wrote the event (or of its publication)."),
            cloud_events::SPECVERSION: {"type": "string", "const": cloud_events::SPEC_VERSION, "description": "CloudEvents version."},
            cloud_events::ID: {"type": "string", "format": "uuid", "description": "CloudEvents id: the event id."},
            cloud_events::SOURCE: string("CloudEvents source: the platform and the aggregate type."),
            cloud_events::TYPE: string("CloudEvents type: `orders.<event type>.v<major event version>`."),
            cloud_events::TIME: {"type": "string", "format": "date-time", "description": "CloudEvents time: when the event was recorded."},
            cloud_events::SUBJECT: string("CloudEvents subject: the aggregate id."),
            cloud_events::CONTENT_TYPE: {"type": "string", "const": cloud_events::JSON, "description": "The value's media type."},
        },
        "required": required,
    })
}

/// The message of a dead-letter topic: the refused message as it came,
/// with why.
fn dead_letter_message() -> Value {
    let mut headers = event_headers();
    let fields = headers
        .as_object_mut()
        .expect("event_headers is an object schema");
    fields.remove("required");
    let properties = fields["properties"]
        .as_object_mut()
        .expect("event_headers has properties");
    for (name, description) in [
        (
            dead_letter::ERROR_HEADER,
            "Why the consumer refused the message.",
        ),
        (
            dead_letter::CONSUMER_HEADER,
            "Which consumer refused it: a read model's name, or `saga`.",
        ),
        (
            dead_letter::SOURCE_TOPIC_HEADER,
            "The topic it was read from.",
        ),
        (dead_letter::SOURCE_PARTITION_HEADER, "Its partition there."),
        (dead_letter::SOURCE_OFFSET_HEADER, "Its offset there."),
    ] {
        properties.insert(
            name.into(),
            json!({"type": "string", "description": description}),
        );
    }
    fields.insert(
        "required".into(),
        json!([
            dead_letter::ERROR_HEADER,
            dead_letter::CONSUMER_HEADER,
            dead_letter::SOURCE_TOPIC_HEADER,
            dead_letter::SOURCE_PARTITION_HEADER,
            dead_letter::SOURCE_OFFSET_HEADER,
        ]),
    );
    json!({
        "name": "DeadLetter",
        "title": "A refused message",
        "summary": "A message a consumer could not process, with its key, value and headers as they came \
                    (usually an event's envelope, but anything may have been produced on the topic).",
        "headers": headers,
        "payload": {"description": "The refused message's value, as it came."},
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": "The refused message's key, as it came."},
                "bindingVersion": "0.5.0",
            }
        },
    })
}

/// Puts `schema` under `name` in `schemas`, its `$defs` beside it and its
/// references to them rewritten to point there; refuses two different
/// schemas of one name.
fn hoist(name: &str, schema: Value, schemas: &mut Map<String, Value>) -> Result<(), AsyncApiError> {
    let Value::Object(mut schema) = schema else {
        return Ok(());
    };
    schema.remove("$schema");
    schema.remove("$id");
    let definitions = match schema.remove("$defs") {
        Some(Value::Object(definitions)) => definitions,
        _ => Map::new(),
    };
    let mut entries = vec![(name.to_owned(), Value::Object(schema))];
    entries.extend(definitions);
    for (name, mut schema) in entries {
        repoint(&mut schema);
        match schemas.get(&name) {
            Some(existing) if *existing != schema => return Err(AsyncApiError::Conflict(name)),
            Some(_) => {}
            None => {
                schemas.insert(name, schema);
            }
        }
    }
    Ok(())
}

/// Rewrites `#/$defs/X` references to `#/components/schemas/X`.
fn repoint(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields.iter_mut() {
                match field {
                    Value::String(target) if key == "$ref" => {
                        if let Some(name) = target.strip_prefix("#/$defs/") {
                            *target = format!("#/components/schemas/{name}");
                        }
                    }
                    other => repoint(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(repoint),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(aggregate: &str, name: &str, schema: Value) -> EventSchema {
        EventSchema {
            aggregate_type: aggregate.into(),
            event_type: name.into(),
            event_version: "1.0".into(),
            schema: schema.as_object().cloned().unwrap_or_default(),
        }
    }

    fn placed() -> EventSchema {
        event(
            "Order",
            "OrderPlaced",
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "OrderPlaced",
                "description": "An order was placed.",
                "type": "object",
                "properties": {"sku": {"$ref": "#/$defs/Sku"}, "lines": {"type": "array", "items": {"$ref": "#/$defs/Sku"}}},
                "$defs": {"Sku": {"type": "string"}},
            }),
        )
    }

    #[test]
    fn every_topic_has_its_dead_letter_topic_and_every_event_a_message() {
        let events = [
            placed(),
            event("Product", "StockAdded", json!({"type": "object"})),
        ];
        let document = document("1.2.3", &Topics::default(), &events).unwrap();
        let channels = document["channels"].as_object().unwrap();
        let addresses: Vec<&str> = channels
            .values()
            .map(|channel| channel["address"].as_str().unwrap())
            .collect();
        assert_eq!(
            addresses,
            [
                "orders.events",
                "orders.events.dlq",
                "products.events",
                "products.events.dlq"
            ]
        );
        let message = &document["components"]["messages"]["OrderPlaced"];
        assert_eq!(
            message["headers"]["properties"]["ce_type"]["const"],
            "orders.OrderPlaced.v1"
        );
        assert_eq!(
            message["payload"]["allOf"][1]["properties"]["payload"]["$ref"],
            "#/components/schemas/OrderPlaced"
        );
        let schemas = &document["components"]["schemas"];
        assert_eq!(
            schemas["OrderPlaced"]["properties"]["sku"]["$ref"],
            "#/components/schemas/Sku"
        );
        assert_eq!(
            schemas["OrderPlaced"]["properties"]["lines"]["items"]["$ref"],
            "#/components/schemas/Sku"
        );
        assert_eq!(schemas["Sku"], json!({"type": "string"}));
        assert!(schemas["OrderPlaced"].get("$schema").is_none());
        assert!(schemas["OrderPlaced"].get("$defs").is_none());
    }

    #[test]
    fn two_definitions_of_one_name_are_refused() {
        let other = event(
            "Order",
            "OrderCancelled",
            json!({"type": "object", "$defs": {"Sku": {"type": "integer"}}}),
        );
        let refused = document("1", &Topics::default(), &[placed(), other]).unwrap_err();
        assert!(matches!(refused, AsyncApiError::Conflict(name) if name == "Sku"));
    }

    #[test]
    fn an_event_without_a_topic_is_refused() {
        let stray = event("Shipment", "Shipped", json!({"type": "object"}));
        let refused = document("1", &Topics::default(), &[placed(), stray]).unwrap_err();
        assert!(matches!(refused, AsyncApiError::NoTopic(name) if name == "Shipment"));
    }
}
