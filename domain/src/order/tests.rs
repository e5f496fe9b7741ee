use cqrs_es::test::TestFramework;
use uuid::Uuid;

use super::*;

type OrderTest = TestFramework<Order>;

fn order_id() -> OrderId {
    OrderId::new(Uuid::from_u128(7))
}

fn eur(cents: i64) -> Money {
    Money::price(cents, Currency::parse("EUR").unwrap()).unwrap()
}

fn line(sku: &str, quantity: u32, unit_price: Money) -> PricedLine {
    PricedLine {
        sku: Sku::parse(sku).unwrap(),
        quantity,
        unit_price,
    }
}

fn place(lines: Vec<PricedLine>) -> OrderCommand {
    OrderCommand::PlaceOrder {
        order_id: order_id(),
        customer_id: CustomerId::parse("customer-1").unwrap(),
        lines,
        payment_method: PaymentMethod::parse("tok_visa").unwrap(),
        shipping_address: None,
        email: None,
    }
}

fn placed() -> OrderEvent {
    OrderEvent::OrderPlaced(OrderPlaced {
        order_id: order_id(),
        customer_id: CustomerId::parse("customer-1").unwrap(),
        lines: vec![
            OrderLine {
                sku: Sku::parse("MUG").unwrap(),
                quantity: 2,
                unit_price_cents: 1250,
            },
            OrderLine {
                sku: Sku::parse("TEA").unwrap(),
                quantity: 1,
                unit_price_cents: 499,
            },
        ],
        currency: Currency::parse("EUR").unwrap(),
        total_cents: 2999,
        payment_method: PaymentMethod::parse("tok_visa").unwrap(),
        shipping_address: None,
        email: None,
    })
}

fn cancelled(previous_status: OrderStatus) -> OrderEvent {
    OrderEvent::OrderCancelled(OrderCancelled {
        reason: Reason::parse("changed my mind").unwrap(),
        previous_status,
    })
}

fn cancel() -> OrderCommand {
    OrderCommand::CancelOrder {
        reason: Reason::parse("changed my mind").unwrap(),
        customer: None,
    }
}

fn cancel_as(customer: &str) -> OrderCommand {
    OrderCommand::CancelOrder {
        reason: Reason::parse("changed my mind").unwrap(),
        customer: Some(CustomerId::parse(customer).unwrap()),
    }
}

#[test]
fn a_customer_cancels_their_own_order() {
    OrderTest::with(())
        .given(vec![placed()])
        .when(cancel_as("customer-1"))
        .then_expect_events(vec![cancelled(OrderStatus::Placed)]);
}

#[test]
fn another_customers_order_is_as_unknown_as_a_missing_one() {
    OrderTest::with(())
        .given(vec![placed()])
        .when(cancel_as("customer-2"))
        .then_expect_error(OrderError::NotFound);
    // Even where the owner would hear "already cancelled".
    OrderTest::with(())
        .given(vec![placed(), cancelled(OrderStatus::Placed)])
        .when(cancel_as("customer-2"))
        .then_expect_error(OrderError::NotFound);
    OrderTest::with(())
        .given_no_previous_events()
        .when(cancel_as("customer-2"))
        .then_expect_error(OrderError::NotFound);
}

#[test]
fn placing_an_order_records_priced_lines_and_the_total() {
    OrderTest::with(())
        .given_no_previous_events()
        .when(place(vec![
            line("MUG", 2, eur(1250)),
            line("TEA", 1, eur(499)),
        ]))
        .then_expect_events(vec![placed()]);
}

#[test]
fn placing_an_order_twice_is_refused() {
    OrderTest::with(())
        .given(vec![placed()])
        .when(place(vec![line("MUG", 1, eur(1250))]))
        .then_expect_error(OrderError::AlreadyPlaced);
}

#[test]
fn an_order_without_lines_is_refused() {
    OrderTest::with(())
        .given_no_previous_events()
        .when(place(vec![]))
        .then_expect_error(OrderError::NoLines);
}

#[test]
fn an_order_with_more_than_a_hundred_lines_is_refused() {
    let lines = (0..=MAX_LINES)
        .map(|n| line(&format!("SKU-{n}"), 1, eur(1)))
        .collect();
    OrderTest::with(())
        .given_no_previous_events()
        .when(place(lines))
        .then_expect_error(OrderError::TooManyLines {
            count: 101,
            max: MAX_LINES,
        });
}

#[test]
fn a_total_up_to_the_largest_charge_is_accepted() {
    // 100 units at 100 million cents: exactly the gateway's limit.
    let lines = vec![line(
        "SKU-0",
        100,
        eur(crate::payment::MAX_CHARGE_CENTS / 100),
    )];
    let events = OrderTest::with(())
        .given_no_previous_events()
        .when(place(lines))
        .inspect_result()
        .unwrap();
    let OrderEvent::OrderPlaced(placed) = &events[0] else {
        panic!("expected OrderPlaced, got {events:?}");
    };
    assert_eq!(placed.total_cents, crate::payment::MAX_CHARGE_CENTS);
}

#[test]
fn a_total_the_gateway_could_never_charge_is_refused() {
    // The largest order the lines allow: far above what one charge can take.
    let lines: Vec<_> = (0..MAX_LINES)
        .map(|n| {
            line(
                &format!("SKU-{n}"),
                MAX_SKU_QUANTITY,
                eur(Money::MAX_PRICE_CENTS),
            )
        })
        .collect();
    OrderTest::with(())
        .given_no_previous_events()
        .when(place(lines))
        .then_expect_error(OrderError::TotalTooLarge {
            total_cents: 100 * 1_000_000 * Money::MAX_PRICE_CENTS,
            max: crate::payment::MAX_CHARGE_CENTS,
        });
    let just_over = vec![line(
        "SKU-0",
        101,
        eur(crate::payment::MAX_CHARGE_CENTS / 100),
    )];
    OrderTest::with(())
        .given_no_previous_events()
        .when(place(just_over))
        .then_expect_error(OrderError::TotalTooLarge {
            total_cents: crate::payment::MAX_CHARGE_CENTS / 100 * 101,
            max: crate::payment::MAX_CHARGE_CENTS,
        });
}

#[test]
fn a_line_quantity_out_of_range_is_refused() {
    for quantity in [0, MAX_SKU_QUANTITY + 1] {
        OrderTest::with(())
            .given_no_previous_events()
            .when(place(vec![
                line("MUG", 1, eur(1)),
                line("TEA", quantity, eur(1)),
            ]))
            .then_expect_error(OrderError::QuantityOutOfRange {
                line: 1,
                quantity,
                max: MAX_SKU_QUANTITY,
            });
    }
}

#[test]
fn the_same_sku_on_two_lines_is_refused() {
    OrderTest::with(())
        .given_no_previous_events()
        .when(place(vec![line("MUG", 1, eur(1)), line("MUG", 2, eur(1))]))
        .then_expect_error(OrderError::DuplicateSku {
            line: 1,
            sku: Sku::parse("MUG").unwrap(),
        });
}

#[test]
fn lines_in_different_currencies_are_refused() {
    let usd = Money::price(100, Currency::parse("USD").unwrap()).unwrap();
    OrderTest::with(())
        .given_no_previous_events()
        .when(place(vec![line("MUG", 1, eur(1)), line("TEA", 1, usd)]))
        .then_expect_error(OrderError::MixedCurrencies {
            line: 1,
            sku: Sku::parse("TEA").unwrap(),
            expected: Currency::parse("EUR").unwrap(),
            found: Currency::parse("USD").unwrap(),
        });
}

#[test]
fn confirming_a_placed_order_confirms_it() {
    OrderTest::with(())
        .given(vec![placed()])
        .when(OrderCommand::ConfirmOrder)
        .then_expect_events(vec![OrderEvent::OrderConfirmed(OrderConfirmed {})]);
}

#[test]
fn confirming_an_unknown_order_is_refused() {
    OrderTest::with(())
        .given_no_previous_events()
        .when(OrderCommand::ConfirmOrder)
        .then_expect_error(OrderError::NotFound);
}

#[test]
fn confirming_twice_is_refused() {
    OrderTest::with(())
        .given(vec![
            placed(),
            OrderEvent::OrderConfirmed(OrderConfirmed {}),
        ])
        .when(OrderCommand::ConfirmOrder)
        .then_expect_error(OrderError::AlreadyConfirmed);
}

#[test]
fn confirming_a_cancelled_order_is_refused() {
    OrderTest::with(())
        .given(vec![placed(), cancelled(OrderStatus::Placed)])
        .when(OrderCommand::ConfirmOrder)
        .then_expect_error(OrderError::AlreadyCancelled);
}

#[test]
fn cancelling_a_placed_order_records_the_reason() {
    OrderTest::with(())
        .given(vec![placed()])
        .when(cancel())
        .then_expect_events(vec![cancelled(OrderStatus::Placed)]);
}

#[test]
fn cancelling_a_confirmed_order_records_that_it_was_confirmed() {
    OrderTest::with(())
        .given(vec![
            placed(),
            OrderEvent::OrderConfirmed(OrderConfirmed {}),
        ])
        .when(cancel())
        .then_expect_events(vec![cancelled(OrderStatus::Confirmed)]);
}

#[test]
fn cancelling_a_cancelled_order_is_refused() {
    OrderTest::with(())
        .given(vec![placed(), cancelled(OrderStatus::Placed)])
        .when(cancel())
        .then_expect_error(OrderError::AlreadyCancelled);
}

#[test]
fn cancelling_an_unknown_order_is_refused() {
    OrderTest::with(())
        .given_no_previous_events()
        .when(cancel())
        .then_expect_error(OrderError::NotFound);
}

#[test]
fn status_follows_the_events() {
    let mut order = Order::default();
    assert_eq!(order.status(), None);
    order.apply(placed());
    assert_eq!(order.status(), Some(OrderStatus::Placed));
    order.apply(OrderEvent::OrderConfirmed(OrderConfirmed {}));
    assert_eq!(order.status(), Some(OrderStatus::Confirmed));
    order.apply(cancelled(OrderStatus::Confirmed));
    assert_eq!(order.status(), Some(OrderStatus::Cancelled));
    assert_eq!(order.placed().unwrap().total_cents, 2999);
}
