//! A snapshot is only a shortcut: the state it holds, read back, plus the
//! events after it must fold to exactly what the whole stream folds to. The
//! state snapshotted is the one a dispatcher holds after `handle`, which
//! applies each event it decides through cqrs-es's sink; were any event
//! applied twice on that path, the folds below would disagree.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::fmt::Debug;

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use domain::values::{Currency, CustomerId, Money, OrderId, PaymentMethod, Reason, Sku};
use domain::{Order, OrderCommand, Payment, PaymentCommand, Product, ProductCommand};
use proptest::prelude::*;
use uuid::Uuid;

/// What a dispatcher sees: each command handled on the aggregate it holds,
/// the decided events kept in order, and the state after every command with
/// the number of events it is the fold of.
fn handle_all<A>(commands: Vec<A::Command>) -> (Vec<A::Event>, Vec<(A, usize)>)
where
    A: Aggregate<Services = ()> + Clone,
{
    let mut held = A::default();
    let mut history = Vec::new();
    let mut states = Vec::new();
    for command in commands {
        let sink = EventSink::default();
        let decided = futures::executor::block_on(held.handle(command, &(), &sink));
        if decided.is_ok() {
            history.extend(futures::executor::block_on(sink.collect()));
        }
        states.push((held.clone(), history.len()));
    }
    (history, states)
}

fn fold<A: Aggregate>(start: A, events: &[A::Event]) -> A
where
    A::Event: Clone,
{
    events.iter().cloned().fold(start, |mut aggregate, event| {
        aggregate.apply(event);
        aggregate
    })
}

/// The stored form: the aggregate through its JSON and back.
fn through_snapshot<A: Aggregate>(state: &A) -> A {
    let stored = serde_json::to_string(state).expect("every aggregate serializes");
    serde_json::from_str(&stored).expect("a snapshot reads back as the aggregate")
}

/// For the state held after command `at`: the held state equals the fold of
/// the events up to it, and its snapshot plus the events after it equals the
/// fold of the whole stream.
fn snapshot_agrees<A>(
    commands: Vec<A::Command>,
    at: prop::sample::Index,
) -> Result<(), TestCaseError>
where
    A: Aggregate<Services = ()> + Clone + PartialEq + Debug,
    A::Event: Clone,
{
    let (history, states) = handle_all::<A>(commands);
    let whole = fold(A::default(), &history);
    prop_assert_eq!(&states.last().expect("at least one command").0, &whole);
    let (held, version) = &states[at.index(states.len())];
    prop_assert_eq!(held, &fold(A::default(), &history[..*version]));
    let resumed = fold(through_snapshot(held), &history[*version..]);
    prop_assert_eq!(resumed, whole);
    Ok(())
}

fn order_id(n: u8) -> OrderId {
    OrderId::new(Uuid::from_u128(u128::from(n) + 1))
}

fn money(cents: i64) -> Money {
    Money::price(cents, Currency::parse("EUR").unwrap()).unwrap()
}

fn product_command() -> impl Strategy<Value = ProductCommand> {
    let order = (0u8..8).prop_map(order_id);
    prop_oneof![
        1 => Just(ProductCommand::CreateProduct {
            sku: Sku::parse("MUG-1").unwrap(),
            name: domain::values::ProductName::parse("Mug").unwrap(),
            price: money(1250),
        }),
        3 => (0u32..=200).prop_map(|quantity| ProductCommand::AddStock { quantity }),
        4 => (order.clone(), 0u32..=40)
            .prop_map(|(order_id, quantity)| ProductCommand::ReserveStock { order_id, quantity }),
        2 => order.clone().prop_map(|order_id| ProductCommand::ReleaseReservation { order_id }),
        3 => order.clone().prop_map(|order_id| ProductCommand::CommitReservation { order_id }),
        1 => (order, 0u32..=40)
            .prop_map(|(order_id, quantity)| ProductCommand::ReturnSoldStock { order_id, quantity }),
    ]
}

fn order_command() -> impl Strategy<Value = OrderCommand> {
    let line = |sku: &str| domain::order::PricedLine {
        sku: Sku::parse(sku).unwrap(),
        quantity: 2,
        unit_price: money(300),
    };
    prop_oneof![
        (0u8..3, any::<bool>()).prop_map(move |(n, two)| OrderCommand::PlaceOrder {
            order_id: order_id(n),
            customer_id: CustomerId::parse("alice").unwrap(),
            lines: if two {
                vec![line("MUG-1"), line("TEA-2")]
            } else {
                vec![line("MUG-1")]
            },
            payment_method: PaymentMethod::parse("tok_visa").unwrap(),
            shipping_address: None,
            email: None,
        }),
        Just(OrderCommand::ConfirmOrder),
        prop::option::of(Just(CustomerId::parse("alice").unwrap())).prop_map(|customer| {
            OrderCommand::CancelOrder {
                reason: Reason::parse("changed my mind").unwrap(),
                customer,
            }
        }),
    ]
}

fn payment_command() -> impl Strategy<Value = PaymentCommand> {
    prop_oneof![
        (0u8..2, 1i64..100_000).prop_map(|(n, cents)| PaymentCommand::RequestCharge {
            order_id: order_id(n),
            amount: money(cents),
            payment_method: PaymentMethod::parse("tok_visa").unwrap(),
        }),
        Just(PaymentCommand::ApproveCharge {
            provider_reference: "ch_1".into()
        }),
        Just(PaymentCommand::DeclineCharge {
            reason: Reason::parse("card_declined").unwrap()
        }),
        Just(PaymentCommand::RefundPayment {
            reason: Reason::parse("order cancelled").unwrap()
        }),
    ]
}

proptest! {
    #[test]
    fn a_product_snapshot_plus_later_events_folds_to_the_whole_stream(
        commands in prop::collection::vec(product_command(), 1..300),
        at in any::<prop::sample::Index>(),
    ) {
        snapshot_agrees::<Product>(commands, at)?;
    }

    #[test]
    fn an_order_snapshot_plus_later_events_folds_to_the_whole_stream(
        commands in prop::collection::vec(order_command(), 1..12),
        at in any::<prop::sample::Index>(),
    ) {
        snapshot_agrees::<Order>(commands, at)?;
    }

    #[test]
    fn a_payment_snapshot_plus_later_events_folds_to_the_whole_stream(
        commands in prop::collection::vec(payment_command(), 1..12),
        at in any::<prop::sample::Index>(),
    ) {
        snapshot_agrees::<Payment>(commands, at)?;
    }
}
