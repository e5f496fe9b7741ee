//! The saga of an order that authorizes, ships, is returned and cancelled,
//! driven against the domain's own aggregates and a model of the gateway:
//! random sequences of the shop's commands and of the gateway's answers
//! (declines, expiries, failures, timeouts), with the money and stock
//! invariants checked whenever the saga is at rest.

use std::collections::BTreeMap;

use cqrs_es::Aggregate;
use domain::order::{ItemLine, OrderLine, OrderPlaced, ReturnStatus, ShipmentStatus};
use domain::values::{
    Carrier, Currency, CustomerId, Money, OrderId, PaymentMethod, ProductName, Reason, ReturnId,
    ShipmentId, Sku, TrackingNumber,
};
use domain::{
    Order, OrderCommand, OrderEvent, Payment, PaymentCommand, PaymentError, Product, ProductCommand,
};
use proptest::prelude::*;

use super::at;
use crate::saga::{Action, OrderSaga, Outcome, PaymentFlow, SagaState};

const SKUS: [(&str, u32, i64); 2] = [("MUG", 2, 1250), ("TEA", 1, 400)];

/// One authorization as the gateway holds it.
#[derive(Debug, Default)]
struct Held {
    amount: i64,
    authorized: bool,
    voided: bool,
    expired: bool,
    captured: i64,
}

/// The order's world: its aggregates, as the domain decides and folds them,
/// and the gateway's ledger.
struct World {
    order_id: OrderId,
    order: Order,
    order_version: i64,
    payment: Payment,
    products: BTreeMap<String, Product>,
    gateway: BTreeMap<u32, Held>,
    /// Captured per shipment at the gateway, and refunded of it.
    captures: BTreeMap<String, (i64, i64)>,
    next_id: u128,
}

fn sku(raw: &str) -> Sku {
    Sku::parse(raw).unwrap()
}

fn reason(text: &str) -> Reason {
    Reason::parse(text).unwrap()
}

fn eur(cents: i64) -> Money {
    Money {
        amount_cents: cents,
        currency: Currency::parse("EUR").unwrap(),
    }
}

impl World {
    fn new() -> (Self, OrderSaga) {
        let order_id = OrderId::new(uuid::Uuid::from_u128(42));
        let mut products = BTreeMap::new();
        for (name, _, price) in SKUS {
            let mut product = Product::default();
            for command in [
                ProductCommand::CreateProduct {
                    sku: sku(name),
                    name: ProductName::parse(name).unwrap(),
                    price: eur(price),
                },
                ProductCommand::AddStock { quantity: 10 },
            ] {
                for event in product.decide(command).unwrap() {
                    product.apply(event);
                }
            }
            products.insert(name.to_owned(), product);
        }
        let placed = OrderPlaced {
            order_id,
            customer_id: CustomerId::parse("c-1").unwrap(),
            lines: SKUS
                .iter()
                .map(|(name, quantity, price)| OrderLine {
                    sku: sku(name),
                    quantity: *quantity,
                    unit_price_cents: *price,
                })
                .collect(),
            currency: Currency::parse("EUR").unwrap(),
            total_cents: 2 * 1250 + 400,
            payment_method: PaymentMethod::parse("tok_visa").unwrap(),
            shipping_address: None,
            email: None,
        };
        let mut order = Order::default();
        order.apply(OrderEvent::OrderPlaced(placed.clone()));
        let world = Self {
            order_id,
            order,
            order_version: 1,
            payment: Payment::default(),
            products,
            gateway: BTreeMap::new(),
            captures: BTreeMap::new(),
            next_id: 1,
        };
        (world, OrderSaga::start(&placed, "prop", at(0)))
    }

    fn on_order(&mut self, command: OrderCommand) -> bool {
        match self.order.decide(command) {
            Ok(events) => {
                for event in events {
                    self.order.apply(event);
                    self.order_version += 1;
                }
                true
            }
            Err(_) => false,
        }
    }

    fn on_payment(&mut self, command: PaymentCommand) -> Result<(), PaymentError> {
        for event in self.payment.decide(command)? {
            self.payment.fold(event);
        }
        Ok(())
    }

    fn on_product(&mut self, name: &str, command: ProductCommand) -> Outcome {
        let product = self.products.get_mut(name).unwrap();
        match product.decide(command) {
            Ok(events) => {
                for event in events {
                    product.apply(event);
                }
                Outcome::Done
            }
            Err(refusal) => Outcome::Refused {
                detail: refusal.to_string(),
            },
        }
    }

    fn shipment_id(raw: &str) -> ShipmentId {
        ShipmentId::parse(raw).unwrap()
    }

    /// Carries out `action` as the driver would, the gateway answering as
    /// `answer` picks (0: as asked; others: declines, expiries, failures).
    fn carry_out(&mut self, action: &Action, answer: u8) -> Outcome {
        let order_id = self.order_id;
        let failed = || Outcome::Failed {
            detail: "no answer".into(),
        };
        match action {
            Action::ReserveStock { sku, quantity } => self.on_product(
                sku,
                ProductCommand::ReserveStock {
                    order_id,
                    quantity: *quantity,
                },
            ),
            Action::RequestCharge => {
                match self.on_payment(PaymentCommand::RequestAuthorization {
                    order_id,
                    attempt: 1,
                    amount: eur(2900),
                    payment_method: PaymentMethod::parse("tok_visa").unwrap(),
                }) {
                    Ok(()) | Err(PaymentError::AlreadyRequested) => Outcome::Done,
                    Err(refusal) => Outcome::Refused {
                        detail: refusal.to_string(),
                    },
                }
            }
            Action::Charge | Action::Reauthorize { .. } => {
                let (attempt, amount) = match action {
                    Action::Reauthorize {
                        attempt,
                        amount_cents,
                    } => {
                        if self
                            .on_payment(PaymentCommand::RequestAuthorization {
                                order_id,
                                attempt: *attempt,
                                amount: eur(*amount_cents),
                                payment_method: PaymentMethod::parse("tok_visa").unwrap(),
                            })
                            .is_err()
                            && self.payment.authorizations().len() < *attempt as usize
                        {
                            return Outcome::Inconsistent {
                                detail: "cannot ask".into(),
                            };
                        }
                        (*attempt, *amount_cents)
                    }
                    _ => (1, 2900),
                };
                let held = self.gateway.entry(attempt).or_default();
                if held.voided {
                    return Outcome::TimedOut;
                }
                match answer % 5 {
                    1 => {
                        let _ = self.on_payment(PaymentCommand::DeclineAuthorization {
                            attempt,
                            reason: reason("card declined"),
                        });
                        Outcome::Declined {
                            reason: "card declined".into(),
                        }
                    }
                    2 if *action == Action::Charge => Outcome::TimedOut,
                    3 => failed(),
                    _ => {
                        held.amount = amount;
                        held.authorized = true;
                        let _ = self.on_payment(PaymentCommand::RecordAuthorization {
                            attempt,
                            provider_reference: format!("au_{attempt}"),
                            expires_at: None,
                        });
                        Outcome::Approved {
                            reference: format!("au_{attempt}"),
                        }
                    }
                }
            }
            Action::ConfirmOrder => {
                if self.on_order(OrderCommand::ConfirmOrder) {
                    Outcome::Done
                } else {
                    Outcome::Refused {
                        detail: "cancelled".into(),
                    }
                }
            }
            Action::Refund => {
                let attempt = self.payment.authorization().map_or(1, |a| a.attempt);
                self.gateway.entry(attempt).or_default().voided = true;
                let _ = self.on_payment(PaymentCommand::VoidAuthorization { attempt });
                Outcome::Done
            }
            Action::ReleaseReservation { sku } => {
                match self.on_product(sku, ProductCommand::ReleaseReservation { order_id }) {
                    Outcome::Refused { .. } => Outcome::Done,
                    other => other,
                }
            }
            Action::CancelOrder { reason: why } => {
                self.on_order(OrderCommand::CancelOrder {
                    reason: reason(why),
                    customer: None,
                });
                Outcome::Done
            }
            Action::Capture {
                shipment_id,
                attempt,
                amount_cents,
            } => {
                if answer % 7 == 3 {
                    return failed();
                }
                let held = self.gateway.entry(*attempt).or_default();
                if answer % 7 == 2 && !held.expired {
                    held.expired = true;
                }
                if held.expired {
                    let _ =
                        self.on_payment(PaymentCommand::ExpireAuthorization { attempt: *attempt });
                    return Outcome::Expired;
                }
                if answer % 7 == 1 {
                    let _ = self.on_payment(PaymentCommand::DeclineCapture {
                        shipment_id: Self::shipment_id(shipment_id),
                        attempt: *attempt,
                        reason: reason("issuer refused"),
                    });
                    return Outcome::Declined {
                        reason: "issuer refused".into(),
                    };
                }
                assert!(
                    held.authorized && !held.voided,
                    "a capture from an authorization not held: {held:?}"
                );
                if !self.captures.contains_key(shipment_id) {
                    assert!(
                        held.captured + amount_cents <= held.amount,
                        "captured beyond the authorization"
                    );
                    held.captured += amount_cents;
                    self.captures
                        .insert(shipment_id.clone(), (*amount_cents, 0));
                }
                match self.on_payment(PaymentCommand::RecordCapture {
                    shipment_id: Self::shipment_id(shipment_id),
                    attempt: *attempt,
                    amount_cents: *amount_cents,
                    provider_reference: "cp".into(),
                }) {
                    Ok(()) | Err(PaymentError::AlreadyCaptured) => Outcome::Approved {
                        reference: "cp".into(),
                    },
                    Err(refusal) => Outcome::Inconsistent {
                        detail: refusal.to_string(),
                    },
                }
            }
            Action::CommitShipment { sku, quantity, .. } => self.on_product(
                sku,
                ProductCommand::CommitPart {
                    order_id,
                    quantity: *quantity,
                },
            ),
            Action::MarkShipped { shipment_id } => {
                self.on_order(OrderCommand::MarkShipped {
                    shipment_id: Self::shipment_id(shipment_id),
                    at: at(0),
                });
                Outcome::Done
            }
            Action::FailShipment {
                shipment_id,
                reason: why,
            } => {
                self.on_order(OrderCommand::FailShipment {
                    shipment_id: Self::shipment_id(shipment_id),
                    reason: reason(why),
                });
                Outcome::Done
            }
            Action::RefundReturn {
                return_id,
                shipment_id,
                amount_cents,
                ..
            } => {
                if answer % 4 == 3 {
                    return failed();
                }
                let capture = self.captures[shipment_id];
                assert!(
                    capture.1 + amount_cents <= capture.0,
                    "refunded beyond the capture"
                );
                let recorded = self.on_payment(PaymentCommand::RecordRefund {
                    shipment_id: Self::shipment_id(shipment_id),
                    return_id: ReturnId::parse(return_id).unwrap(),
                    amount_cents: *amount_cents,
                    provider_reference: "re".into(),
                });
                match recorded {
                    Ok(()) => {
                        if let Some(capture) = self.captures.get_mut(shipment_id) {
                            capture.1 += amount_cents;
                        }
                        Outcome::Done
                    }
                    Err(PaymentError::RefundExists) => Outcome::Done,
                    Err(refusal) => Outcome::Inconsistent {
                        detail: refusal.to_string(),
                    },
                }
            }
            Action::Restock { sku, quantity, .. } => self.on_product(
                sku,
                ProductCommand::ReturnSoldStock {
                    order_id,
                    quantity: *quantity,
                },
            ),
            other => panic!("an authorizing saga asked for {other:?}"),
        }
    }

    fn new_uuid(&mut self) -> uuid::Uuid {
        self.next_id += 1;
        uuid::Uuid::from_u128(self.next_id)
    }

    /// A command of the shop's (`pick` chooses which, and of what).
    fn shop(&mut self, saga: &mut OrderSaga, pick: (u8, u8, u8)) {
        let (what, which, how_many) = pick;
        let Some(placed) = self.order.placed().cloned() else {
            return;
        };
        let fulfilment = placed.fulfilment;
        let (name, _, _) = SKUS[usize::from(which) % SKUS.len()];
        let quantity = u32::from(how_many % 2) + 1;
        let lines = vec![ItemLine {
            sku: sku(name),
            quantity,
        }];
        match what % 5 {
            0 => {
                let shipment_id = ShipmentId::new(self.new_uuid());
                self.on_order(OrderCommand::RequestShipment {
                    shipment_id,
                    lines,
                    carrier: Carrier::parse("DHL").unwrap(),
                    tracking_number: TrackingNumber::parse("T").unwrap(),
                    at: at(1),
                });
            }
            1 => {
                if let Some(shipped) = fulfilment
                    .shipments
                    .iter()
                    .find(|s| s.status == ShipmentStatus::Shipped)
                {
                    self.on_order(OrderCommand::MarkDelivered {
                        shipment_id: shipped.id,
                        at: at(2),
                    });
                }
            }
            2 => {
                let return_id = ReturnId::new(self.new_uuid());
                self.on_order(OrderCommand::RequestReturn {
                    return_id,
                    lines,
                    reason: reason("no"),
                    at: at(3),
                    window_days: 30,
                    customer: None,
                });
            }
            3 => {
                if let Some(requested) = fulfilment
                    .returns
                    .iter()
                    .find(|r| r.status == ReturnStatus::Requested)
                {
                    self.on_order(OrderCommand::ReceiveReturn {
                        return_id: requested.id,
                        restock: how_many % 2 == 0,
                        at: at(4),
                    });
                }
            }
            _ => {
                if self.on_order(OrderCommand::CancelOrder {
                    reason: reason("changed my mind"),
                    customer: None,
                }) {
                    saga.order_cancelled("changed my mind", at(5));
                }
            }
        }
    }
}

/// What the saga is asked to do in a run: a shop's command now and then,
/// the gateway's answers in between.
#[derive(Debug, Clone)]
enum Turn {
    Shop(u8, u8, u8),
    Step(u8),
}

fn turn() -> impl Strategy<Value = Turn> {
    prop_oneof![
        1 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(a, b, c)| Turn::Shop(a, b, c)),
        3 => any::<u8>().prop_map(Turn::Step),
    ]
}

/// Steps the saga until it is at rest (bounded), the gateway answering as
/// `answers` say, then as asked.
fn run_to_rest(world: &mut World, saga: &mut OrderSaga, answer: u8) {
    for round in 0..200 {
        // The order's shipments and returns, as the driver reads them.
        if let Some(fulfilment) = world.order.fulfilment() {
            saga.take_in(fulfilment, world.order_version);
        }
        let Some(action) = saga.next_action() else {
            return;
        };
        // Only the first answers are picked; then the gateway behaves, so
        // that every run comes to rest.
        let answer = if round < 3 { answer } else { 0 };
        let outcome = world.carry_out(&action, answer);
        saga.record(&action, outcome, at(10 + round));
        if saga.attempts >= 5 && !action.is_compensation() && !action.is_work() {
            saga.give_up(&action, at(10 + round));
        }
    }
    panic!("the saga never came to rest: {saga:#?}");
}

/// The books of the order, the saga at rest.
fn balanced(world: &World, saga: &OrderSaga) -> Result<(), TestCaseError> {
    let placed = world.order.placed().unwrap();
    let fulfilment = &placed.fulfilment;
    let payment = &world.payment;
    prop_assert!(payment.captured_cents() <= payment.authorized_cents());
    prop_assert!(payment.refunded_cents() <= payment.captured_cents());
    let shipped = fulfilment.shipped_value_cents();
    let returned = fulfilment.received_value_cents();
    prop_assert_eq!(payment.captured_cents(), shipped, "{:#?}", saga);
    prop_assert_eq!(payment.refunded_cents(), returned, "{:#?}", saga);
    let at_gateway: i64 = world.gateway.values().map(|held| held.captured).sum();
    prop_assert_eq!(at_gateway, shipped);
    prop_assert!(!fulfilment.has_pending(), "{:#?}", saga);
    let confirmed = placed.status.is_confirmed();
    for line in &placed.lines {
        let product = &world.products[line.sku.as_str()];
        let reserved = product.reservation_of(world.order_id).unwrap_or(0);
        let expected = if confirmed {
            line.quantity - fulfilment.shipped(&line.sku)
        } else {
            0
        };
        prop_assert_eq!(reserved, expected, "{} {:#?}", line.sku, saga);
    }
    if placed.status == domain::OrderStatus::Cancelled {
        prop_assert!(
            world
                .gateway
                .values()
                .all(|held| !held.authorized || held.voided || held.expired)
        );
    }
    prop_assert!(matches!(
        saga.state,
        SagaState::Confirmed | SagaState::Cancelled
    ));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the shop asks and the gateway answers, in whatever order,
    /// the saga comes to rest with the books balanced: captured = what
    /// shipped, refunded = what came back, never beyond the authorization
    /// or the capture, nothing reserved that will not ship, nothing held
    /// for a cancelled order.
    #[test]
    fn the_books_balance_whenever_the_saga_is_at_rest(turns in proptest::collection::vec(turn(), 1..30)) {
        let (mut world, mut saga) = World::new();
        prop_assert_eq!(saga.flow, PaymentFlow::Authorize);
        for turn in turns {
            match turn {
                Turn::Shop(what, which, how_many) => world.shop(&mut saga, (what, which, how_many)),
                Turn::Step(answer) => {
                    run_to_rest(&mut world, &mut saga, answer);
                    balanced(&world, &saga)?;
                }
            }
        }
        run_to_rest(&mut world, &mut saga, 0);
        balanced(&world, &saga)?;
    }
}
