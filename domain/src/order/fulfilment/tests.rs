//! Shipments, deliveries, returns and the statuses they give an order,
//! through the aggregate's `decide` and `apply`.

use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::Aggregate;
use proptest::prelude::*;
use uuid::Uuid;

use crate::order::*;
use crate::values::*;

fn sku(raw: &str) -> Sku {
    Sku::parse(raw).unwrap()
}

fn day(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap() + Duration::days(n)
}

fn shipment_id(n: u128) -> ShipmentId {
    ShipmentId::new(Uuid::from_u128(n))
}

fn return_id(n: u128) -> ReturnId {
    ReturnId::new(Uuid::from_u128(1000 + n))
}

fn items(lines: &[(&str, u32)]) -> Vec<ItemLine> {
    lines
        .iter()
        .map(|(name, quantity)| ItemLine {
            sku: sku(name),
            quantity: *quantity,
        })
        .collect()
}

/// An order of 2 MUG at 1250 and 1 TEA at 499, placed by customer-1.
fn order(confirmed: bool) -> Order {
    order_of(2, confirmed)
}

/// An order of `mugs` MUG at 1250 and 1 TEA at 499, placed by customer-1.
fn order_of(mugs: u32, confirmed: bool) -> Order {
    let mut order = Order::default();
    let placed = order
        .decide(OrderCommand::PlaceOrder {
            order_id: OrderId::new(Uuid::from_u128(7)),
            customer_id: CustomerId::parse("customer-1").unwrap(),
            lines: vec![
                PricedLine {
                    sku: sku("MUG"),
                    quantity: mugs,
                    unit_price: Money::price(1250, Currency::parse("EUR").unwrap()).unwrap(),
                },
                PricedLine {
                    sku: sku("TEA"),
                    quantity: 1,
                    unit_price: Money::price(499, Currency::parse("EUR").unwrap()).unwrap(),
                },
            ],
            payment_method: PaymentMethod::parse("tok_visa").unwrap(),
            shipping_address: None,
            email: None,
        })
        .unwrap();
    apply_all(&mut order, placed);
    if confirmed {
        let confirmed = order.decide(OrderCommand::ConfirmOrder).unwrap();
        apply_all(&mut order, confirmed);
    }
    order
}

fn apply_all(order: &mut Order, events: Vec<OrderEvent>) {
    for event in events {
        order.apply(event);
    }
}

/// Decides `command` and applies what it records.
fn run(order: &mut Order, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
    let events = order.decide(command)?;
    apply_all(order, events.clone());
    Ok(events)
}

fn ship(n: u128, lines: &[(&str, u32)]) -> OrderCommand {
    OrderCommand::RequestShipment {
        shipment_id: shipment_id(n),
        lines: items(lines),
        carrier: Carrier::parse("DHL").unwrap(),
        tracking_number: TrackingNumber::parse(&format!("TRK{n}")).unwrap(),
        at: day(0),
    }
}

fn shipped(n: u128) -> OrderCommand {
    OrderCommand::MarkShipped {
        shipment_id: shipment_id(n),
        at: day(0),
    }
}

fn delivered(n: u128, on: i64) -> OrderCommand {
    OrderCommand::MarkDelivered {
        shipment_id: shipment_id(n),
        at: day(on),
    }
}

fn give_back(n: u128, lines: &[(&str, u32)], on: i64, customer: Option<&str>) -> OrderCommand {
    OrderCommand::RequestReturn {
        return_id: return_id(n),
        lines: items(lines),
        reason: Reason::parse("too big").unwrap(),
        at: day(on),
        window_days: RETURN_WINDOW_DAYS,
        customer: customer.map(|c| CustomerId::parse(c).unwrap()),
    }
}

fn cancel() -> OrderCommand {
    OrderCommand::CancelOrder {
        reason: Reason::parse("changed my mind").unwrap(),
        customer: None,
    }
}

fn status(order: &Order) -> OrderStatus {
    order.status().unwrap()
}

#[test]
fn a_shipment_values_its_lines_at_the_order_prices_and_waits_for_its_capture() {
    let mut order = order(true);
    let events = run(&mut order, ship(1, &[("MUG", 1)])).unwrap();
    let OrderEvent::ShipmentRequested(requested) = &events[0] else {
        panic!("{events:?}");
    };
    assert_eq!(requested.value_cents, 1250);
    assert_eq!(
        status(&order),
        OrderStatus::Confirmed,
        "nothing shipped yet"
    );
    let shipment = order
        .fulfilment()
        .unwrap()
        .shipment(shipment_id(1))
        .unwrap();
    assert_eq!(shipment.status, ShipmentStatus::Pending);
}

#[test]
fn shipping_in_two_parts_moves_the_order_through_partially_shipped_shipped_and_delivered() {
    let mut order = order(true);
    run(&mut order, ship(1, &[("MUG", 1)])).unwrap();
    run(&mut order, shipped(1)).unwrap();
    assert_eq!(status(&order), OrderStatus::PartiallyShipped);
    run(&mut order, delivered(1, 1)).unwrap();
    assert_eq!(status(&order), OrderStatus::PartiallyShipped);
    run(&mut order, ship(2, &[("MUG", 1), ("TEA", 1)])).unwrap();
    run(&mut order, shipped(2)).unwrap();
    assert_eq!(status(&order), OrderStatus::Shipped);
    run(&mut order, delivered(2, 2)).unwrap();
    assert_eq!(status(&order), OrderStatus::Delivered);
}

#[test]
fn only_confirmed_orders_ship_and_only_what_is_left() {
    let mut placed = order(false);
    assert_eq!(
        run(&mut placed, ship(1, &[("MUG", 1)])),
        Err(OrderError::NotConfirmed)
    );
    let mut order = order(true);
    run(&mut order, ship(1, &[("MUG", 2)])).unwrap();
    // Units of a pending shipment are spoken for.
    assert_eq!(
        run(&mut order, ship(2, &[("MUG", 1)])),
        Err(OrderError::NotShippable {
            line: 0,
            sku: sku("MUG"),
            asked: 1,
            left: 0
        })
    );
    assert_eq!(
        run(&mut order, ship(1, &[("TEA", 1)])),
        Err(OrderError::ShipmentExists)
    );
    assert_eq!(
        run(&mut order, ship(3, &[("TEA", 1), ("CUP", 1)])),
        Err(OrderError::SkuNotOrdered {
            line: 1,
            sku: sku("CUP")
        })
    );
    assert_eq!(
        run(&mut order, ship(3, &[("TEA", 1), ("TEA", 1)])),
        Err(OrderError::DuplicateSku {
            line: 1,
            sku: sku("TEA")
        })
    );
    assert_eq!(run(&mut order, ship(3, &[])), Err(OrderError::NoLines));
    assert!(matches!(
        run(&mut order, ship(3, &[("TEA", 0)])),
        Err(OrderError::QuantityOutOfRange { .. })
    ));
    run(&mut order, shipped(1)).unwrap();
    run(&mut order, ship(3, &[("TEA", 1)])).unwrap();
    run(&mut order, shipped(3)).unwrap();
    assert_eq!(
        run(&mut order, ship(4, &[("TEA", 1)])),
        Err(OrderError::FullyShipped)
    );
}

#[test]
fn a_failed_shipment_frees_its_units_to_ship_again() {
    let mut order = order(true);
    run(&mut order, ship(1, &[("MUG", 2)])).unwrap();
    run(
        &mut order,
        OrderCommand::FailShipment {
            shipment_id: shipment_id(1),
            reason: Reason::parse("capture declined").unwrap(),
        },
    )
    .unwrap();
    let failed = order
        .fulfilment()
        .unwrap()
        .shipment(shipment_id(1))
        .unwrap();
    assert_eq!(failed.status, ShipmentStatus::Failed);
    assert_eq!(failed.failure.as_deref(), Some("capture declined"));
    assert_eq!(status(&order), OrderStatus::Confirmed);
    assert_eq!(
        run(&mut order, shipped(1)),
        Err(OrderError::ShipmentNotPending {
            status: ShipmentStatus::Failed
        })
    );
    run(&mut order, ship(2, &[("MUG", 2)])).unwrap();
}

#[test]
fn a_cancel_waits_for_a_pending_shipment_and_a_fully_shipped_order_is_returned_instead() {
    let mut order = order(true);
    run(&mut order, ship(1, &[("MUG", 1)])).unwrap();
    assert_eq!(run(&mut order, cancel()), Err(OrderError::ShipmentPending));
    run(&mut order, shipped(1)).unwrap();
    let events = run(&mut order, cancel()).unwrap();
    assert_eq!(
        events,
        vec![OrderEvent::OrderCancelled(OrderCancelled {
            reason: Reason::parse("changed my mind").unwrap(),
            previous_status: OrderStatus::PartiallyShipped,
        })]
    );
    assert_eq!(status(&order), OrderStatus::Cancelled);
    // What shipped is still delivered, and may come back; the order stays
    // cancelled.
    run(&mut order, delivered(1, 1)).unwrap();
    assert_eq!(status(&order), OrderStatus::Cancelled);
    run(&mut order, give_back(1, &[("MUG", 1)], 2, None)).unwrap();
    assert_eq!(
        run(&mut order, ship(2, &[("TEA", 1)])),
        Err(OrderError::AlreadyCancelled)
    );

    let mut whole = self::order(true);
    run(&mut whole, ship(1, &[("MUG", 2), ("TEA", 1)])).unwrap();
    run(&mut whole, shipped(1)).unwrap();
    assert_eq!(run(&mut whole, cancel()), Err(OrderError::FullyShipped));
    run(&mut whole, delivered(1, 1)).unwrap();
    assert_eq!(run(&mut whole, cancel()), Err(OrderError::FullyShipped));
}

#[test]
fn an_order_keeps_a_bounded_number_of_shipments_and_returns() {
    use crate::order::{MAX_RETURNS, MAX_SHIPMENTS};
    // Shipments that fail, again and again: the units stay free, the
    // shipments stay on the order.
    let mut order = order(true);
    for n in 0..MAX_SHIPMENTS as u128 {
        run(&mut order, ship(n, &[("MUG", 1)])).unwrap();
        run(
            &mut order,
            OrderCommand::FailShipment {
                shipment_id: shipment_id(n),
                reason: Reason::parse("capture declined").unwrap(),
            },
        )
        .unwrap();
    }
    let before = order.clone();
    assert_eq!(
        run(&mut order, ship(1000, &[("MUG", 1)])),
        Err(OrderError::TooManyShipments { max: MAX_SHIPMENTS })
    );
    assert_eq!(order, before);

    // A customer sending back one unit at a time.
    let units = MAX_RETURNS as u32 + 1;
    let mut order = order_of(units, true);
    run(&mut order, ship(1, &[("MUG", units)])).unwrap();
    run(&mut order, shipped(1)).unwrap();
    run(&mut order, delivered(1, 1)).unwrap();
    for n in 0..MAX_RETURNS as u128 {
        run(
            &mut order,
            give_back(n, &[("MUG", 1)], 2, Some("customer-1")),
        )
        .unwrap();
    }
    let before = order.clone();
    let refused = run(
        &mut order,
        give_back(1000, &[("MUG", 1)], 2, Some("customer-1")),
    );
    assert_eq!(
        refused,
        Err(OrderError::TooManyReturns { max: MAX_RETURNS })
    );
    assert_eq!(order, before);
}

#[test]
fn only_shipped_shipments_are_delivered_once() {
    let mut order = order(true);
    assert_eq!(
        run(&mut order, delivered(1, 1)),
        Err(OrderError::ShipmentNotFound)
    );
    run(&mut order, ship(1, &[("MUG", 1)])).unwrap();
    assert_eq!(
        run(&mut order, delivered(1, 1)),
        Err(OrderError::NotShipped {
            status: ShipmentStatus::Pending
        })
    );
    run(&mut order, shipped(1)).unwrap();
    run(&mut order, delivered(1, 1)).unwrap();
    assert_eq!(
        run(&mut order, delivered(1, 2)),
        Err(OrderError::NotShipped {
            status: ShipmentStatus::Delivered
        })
    );
}

#[test]
fn returns_take_back_delivered_units_within_the_window_and_refund_their_value() {
    let mut order = order(true);
    run(&mut order, ship(1, &[("MUG", 2), ("TEA", 1)])).unwrap();
    run(&mut order, shipped(1)).unwrap();
    // Shipped is not delivered.
    assert!(matches!(
        run(&mut order, give_back(1, &[("MUG", 1)], 1, None)),
        Err(OrderError::NotReturnable { returnable: 0, .. })
    ));
    run(&mut order, delivered(1, 1)).unwrap();
    let events = run(
        &mut order,
        give_back(1, &[("MUG", 1), ("TEA", 1)], 31, Some("customer-1")),
    )
    .unwrap();
    let OrderEvent::ReturnRequested(requested) = &events[0] else {
        panic!("{events:?}");
    };
    assert_eq!(requested.refund_cents, 1250 + 499);
    assert_eq!(
        status(&order),
        OrderStatus::Delivered,
        "returns keep the status"
    );
    // One MUG is left to return; not two, and not after the window.
    assert!(matches!(
        run(&mut order, give_back(2, &[("MUG", 2)], 2, None)),
        Err(OrderError::NotReturnable {
            asked: 2,
            returnable: 1,
            ..
        })
    ));
    assert_eq!(
        run(&mut order, give_back(2, &[("MUG", 1)], 32, None)),
        Err(OrderError::ReturnWindowClosed {
            line: 0,
            sku: sku("MUG"),
            window_days: 30
        })
    );
    assert_eq!(
        run(&mut order, give_back(1, &[("MUG", 1)], 2, None)),
        Err(OrderError::ReturnExists)
    );
    // Another customer's order is as unknown as a missing one.
    assert_eq!(
        run(
            &mut order,
            give_back(2, &[("MUG", 1)], 2, Some("customer-2"))
        ),
        Err(OrderError::NotFound)
    );

    let receive = |restock| OrderCommand::ReceiveReturn {
        return_id: return_id(1),
        restock,
        at: day(35),
    };
    run(&mut order, receive(true)).unwrap();
    let received = order.fulfilment().unwrap().return_of(return_id(1)).unwrap();
    assert_eq!(received.status, ReturnStatus::Received);
    assert_eq!(received.restocked, Some(true));
    assert_eq!(
        run(&mut order, receive(false)),
        Err(OrderError::ReturnAlreadyReceived)
    );
    assert_eq!(
        run(
            &mut order,
            OrderCommand::ReceiveReturn {
                return_id: return_id(9),
                restock: true,
                at: day(35)
            }
        ),
        Err(OrderError::ReturnNotFound)
    );
}

#[test]
fn an_order_stored_before_shipments_existed_folds_without_them() {
    // A snapshot of the previous release has no `fulfilment`.
    let stored = serde_json::json!({"placed": {
        "customer_id": "c", "lines": [{"sku": "MUG", "quantity": 1, "unit_price_cents": 5}],
        "currency": "EUR", "total_cents": 5, "payment_method": "tok_visa", "status": "CONFIRMED"
    }});
    let mut order: Order = serde_json::from_value(stored).unwrap();
    assert!(order.fulfilment().unwrap().shipments.is_empty());
    run(&mut order, ship(1, &[("MUG", 1)])).unwrap();
}

/// One step a property run takes: any command of the lifecycle.
#[derive(Debug, Clone)]
enum Step {
    Ship(u8, u32, u32),
    Shipped(u8),
    Fail(u8),
    Deliver(u8, i64),
    Return(u8, u32, u32, i64),
    Receive(u8),
    Cancel,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..4, 0u32..3, 0u32..2).prop_map(|(n, mugs, teas)| Step::Ship(n, mugs, teas)),
        (0u8..4).prop_map(Step::Shipped),
        (0u8..4).prop_map(Step::Fail),
        (0u8..4, 0i64..40).prop_map(|(n, on)| Step::Deliver(n, on)),
        (0u8..3, 0u32..3, 0u32..2, 0i64..80).prop_map(|(n, m, t, on)| Step::Return(n, m, t, on)),
        (0u8..3).prop_map(Step::Receive),
        Just(Step::Cancel),
    ]
}

fn lines_of(mugs: u32, teas: u32) -> Vec<(&'static str, u32)> {
    [("MUG", mugs), ("TEA", teas)]
        .into_iter()
        .filter(|(_, quantity)| *quantity > 0)
        .collect()
}

proptest! {
    /// Whatever is asked in whatever order: nothing ships beyond what was
    /// ordered, nothing is returned beyond what was delivered, a refusal
    /// changes nothing, and the status is the one the shipments give.
    #[test]
    fn quantities_and_statuses_hold_under_any_sequence(steps in proptest::collection::vec(step(), 1..40)) {
        let mut order = order(true);
        for step in steps {
            let command = match step {
                Step::Ship(n, mugs, teas) => ship(u128::from(n), &lines_of(mugs, teas)),
                Step::Shipped(n) => shipped(u128::from(n)),
                Step::Fail(n) => OrderCommand::FailShipment {
                    shipment_id: shipment_id(u128::from(n)),
                    reason: Reason::parse("declined").unwrap(),
                },
                Step::Deliver(n, on) => delivered(u128::from(n), on),
                Step::Return(n, mugs, teas, on) => give_back(u128::from(n), &lines_of(mugs, teas), on, None),
                Step::Receive(n) => OrderCommand::ReceiveReturn {
                    return_id: return_id(u128::from(n)),
                    restock: n % 2 == 0,
                    at: day(90),
                },
                Step::Cancel => cancel(),
            };
            let before = order.clone();
            let said = match run(&mut order, command) {
                Err(_) => {
                    prop_assert_eq!(&order, &before);
                    None
                }
                Ok(events) => events.iter().find_map(|event| match event {
                    OrderEvent::ShipmentShipped(shipped) => Some(shipped.status),
                    OrderEvent::ShipmentDelivered(delivered) => Some(delivered.status),
                    _ => None,
                }),
            };
            let placed = order.placed().unwrap();
            let fulfilment = &placed.fulfilment;
            for line in &placed.lines {
                let spoken: u32 = fulfilment
                    .shipments
                    .iter()
                    .filter(|s| s.status != ShipmentStatus::Failed)
                    .flat_map(|s| &s.lines)
                    .filter(|l| l.sku == line.sku)
                    .map(|l| l.quantity)
                    .sum();
                prop_assert!(spoken <= line.quantity);
                let delivered: u32 = fulfilment
                    .shipments
                    .iter()
                    .filter(|s| s.status == ShipmentStatus::Delivered)
                    .flat_map(|s| &s.lines)
                    .filter(|l| l.sku == line.sku)
                    .map(|l| l.quantity)
                    .sum();
                let returned: u32 = fulfilment
                    .returns
                    .iter()
                    .flat_map(|r| &r.lines)
                    .filter(|l| l.sku == line.sku)
                    .map(|l| l.quantity)
                    .sum();
                prop_assert!(returned <= delivered);
            }
            if placed.status != OrderStatus::Cancelled {
                prop_assert_eq!(placed.status, fulfilment.status(&placed.lines));
            }
            // Shipped and delivered events say the status they leave.
            if let Some(said) = said {
                prop_assert_eq!(said, placed.status);
            }
        }
    }
}
