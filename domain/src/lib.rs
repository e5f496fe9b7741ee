//! The order platform's business rules: the Product, Order and Payment
//! aggregates, the commands they accept, the events they record and the
//! refusals they answer with.
//!
//! This crate decides; it never does IO. Every `decide` is a pure, synchronous
//! function of the aggregate's state and one command, and every `apply` is a
//! pure fold of one event. Clocks, random ids, prices from other aggregates and
//! anything else from the outside world arrive inside commands. The async
//! `Aggregate::handle` that cqrs-es asks for only forwards to `decide`.
//!
//! Refusals (`ProductError`, `OrderError`, `PaymentError`) are business answers;
//! failures of storage or messaging belong to the crates that do IO.

pub mod order;
pub mod payment;
pub mod product;
pub mod values;

pub use order::{Order, OrderCommand, OrderError, OrderEvent, OrderStatus};
pub use payment::{Payment, PaymentCommand, PaymentError, PaymentEvent, PaymentStatus};
pub use product::{Product, ProductCommand, ProductError, ProductEvent};
pub use values::InvalidValue;

/// The body of every aggregate's `handle`: record, in order, the events that
/// `decide` returned. `EventSink::write` also applies each one.
async fn record<A: cqrs_es::Aggregate>(
    aggregate: &mut A,
    decided: Result<Vec<A::Event>, A::Error>,
    sink: &cqrs_es::event_sink::EventSink<A>,
) -> Result<(), A::Error> {
    for event in decided? {
        sink.write(event, aggregate).await;
    }
    Ok(())
}

/// The schema version every event type is written with today.
pub const EVENT_VERSION: &str = "1.0";

/// One event type of the public contract.
#[derive(Debug)]
pub struct EventType {
    /// The aggregate that records it (`Order`, `Product`, `Payment`).
    pub aggregate_type: &'static str,
    /// The event's name, as stored in `events.event_type`.
    pub event_type: &'static str,
    /// JSON Schema of the event's payload.
    pub schema: schemars::Schema,
}

/// Declares an aggregate's event enum from one list of event structs: the
/// enum (each variant wraps the struct of its name), its stored names
/// (`DomainEvent`), and its entries of the event catalogue. Adding an event is
/// adding its struct and its name here; everything that matches on the enum
/// is then flagged by the compiler (no `_ =>` arms), and the catalogue, the
/// JSON Schemas and the AsyncAPI document follow.
macro_rules! events {
    (
        $(#[$meta:meta])*
        pub enum $name:ident for $aggregate:ty { $($event:ident),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum $name {
            $($event($event)),+
        }

        impl cqrs_es::DomainEvent for $name {
            fn event_type(&self) -> String {
                match self {
                    $(Self::$event(_) => stringify!($event)),+
                }
                .to_owned()
            }

            fn event_version(&self) -> String {
                crate::EVENT_VERSION.to_owned()
            }
        }

        impl $name {
            /// Every event type of the aggregate, as stored in `events.event_type`.
            pub const TYPES: &'static [&'static str] = &[$(stringify!($event)),+];

            /// The aggregate's entries of the event catalogue.
            pub fn catalogue() -> Vec<crate::EventType> {
                vec![$(crate::EventType {
                    aggregate_type: <$aggregate as cqrs_es::Aggregate>::TYPE,
                    event_type: stringify!($event),
                    schema: schemars::schema_for!($event),
                }),+]
            }
        }
    };
}
pub(crate) use events;

/// Every event type with the JSON Schema of its payload, in a stable order.
///
/// Stored payloads wrap the event in an object keyed by its type
/// (`{"OrderPlaced": {...}}`, as cqrs-es serializes enums); the schema here
/// describes the inner object, which is what published envelopes carry.
pub fn event_types() -> Vec<EventType> {
    let mut types = ProductEvent::catalogue();
    types.extend(OrderEvent::catalogue());
    types.extend(PaymentEvent::catalogue());
    types
}

#[cfg(test)]
mod tests {
    use cqrs_es::DomainEvent;

    use super::*;

    #[test]
    fn the_catalogue_names_match_the_stored_event_types() {
        // A stored event type must match its catalogue entry, or published
        // schemas would describe events nobody writes.
        let oid = values::OrderId::new(uuid::Uuid::nil());
        let reason = values::Reason::parse("r").unwrap();
        let written = [
            OrderEvent::OrderConfirmed(order::OrderConfirmed {}).event_type(),
            ProductEvent::ReservationReleased(product::ReservationReleased {
                order_id: oid,
                quantity: 1,
            })
            .event_type(),
            PaymentEvent::PaymentRefunded(payment::PaymentRefunded {
                amount_cents: 1,
                reason,
            })
            .event_type(),
        ];
        let catalogue: Vec<_> = event_types().iter().map(|e| e.event_type).collect();
        for name in written {
            assert!(catalogue.contains(&name.as_str()), "{name} missing");
        }
        let declared = [ProductEvent::TYPES, OrderEvent::TYPES, PaymentEvent::TYPES].concat();
        assert_eq!(catalogue, declared);
        let mut unique = declared.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            declared.len(),
            "an event name is declared twice"
        );
    }
}
