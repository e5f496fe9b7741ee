use cqrs_es::test::TestFramework;
use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::values::{Currency, Reason};

type ProductTest = TestFramework<Product>;

fn sku() -> Sku {
    Sku::parse("MUG-01").unwrap()
}

fn order(n: u128) -> OrderId {
    OrderId::new(Uuid::from_u128(n))
}

fn created() -> ProductEvent {
    ProductEvent::ProductCreated(ProductCreated {
        sku: sku(),
        name: ProductName::parse("Mug").unwrap(),
        price: Money::price(1250, Currency::parse("EUR").unwrap()).unwrap(),
    })
}

fn added(quantity: u32) -> ProductEvent {
    ProductEvent::StockAdded(StockAdded { quantity })
}

fn reserved(order_id: OrderId, quantity: u32) -> ProductEvent {
    ProductEvent::StockReserved(StockReserved { order_id, quantity })
}

fn committed(order_id: OrderId, quantity: u32) -> ProductEvent {
    ProductEvent::ReservationCommitted(ReservationCommitted { order_id, quantity })
}

fn create_command() -> ProductCommand {
    ProductCommand::CreateProduct {
        sku: sku(),
        name: ProductName::parse("Mug").unwrap(),
        price: Money::price(1250, Currency::parse("EUR").unwrap()).unwrap(),
    }
}

#[test]
fn creating_a_new_product_records_its_catalogue_data() {
    ProductTest::with(())
        .given_no_previous_events()
        .when(create_command())
        .then_expect_events(vec![created()]);
}

#[test]
fn creating_a_product_twice_is_refused() {
    ProductTest::with(())
        .given(vec![created()])
        .when(create_command())
        .then_expect_error(ProductError::AlreadyExists { sku: sku() });
}

#[test]
fn adding_stock_increases_what_is_on_hand() {
    ProductTest::with(())
        .given(vec![created()])
        .when(ProductCommand::AddStock { quantity: 5 })
        .then_expect_events(vec![added(5)]);
}

#[test]
fn adding_stock_to_an_unknown_product_is_refused() {
    ProductTest::with(())
        .given_no_previous_events()
        .when(ProductCommand::AddStock { quantity: 5 })
        .then_expect_error(ProductError::NotFound);
}

#[test]
fn adding_zero_or_too_many_units_is_refused() {
    for quantity in [0, MAX_STOCK_ADDITION + 1] {
        ProductTest::with(())
            .given(vec![created()])
            .when(ProductCommand::AddStock { quantity })
            .then_expect_error(ProductError::QuantityOutOfRange {
                quantity,
                min: 1,
                max: MAX_STOCK_ADDITION,
            });
    }
}

#[test]
fn adding_past_the_on_hand_limit_is_refused() {
    let full: Vec<_> = std::iter::once(created())
        .chain((0..1000).map(|_| added(MAX_STOCK_ADDITION)))
        .collect();
    ProductTest::with(())
        .given(full)
        .when(ProductCommand::AddStock { quantity: 1 })
        .then_expect_error(ProductError::StockLimitExceeded {
            on_hand: MAX_ON_HAND,
            adding: 1,
            limit: MAX_ON_HAND,
        });
}

#[test]
fn reserving_available_stock_sets_it_aside_for_the_order() {
    ProductTest::with(())
        .given(vec![created(), added(3)])
        .when(ProductCommand::ReserveStock {
            order_id: order(1),
            quantity: 3,
        })
        .then_expect_events(vec![reserved(order(1), 3)]);
}

#[test]
fn reserving_more_than_is_available_is_refused_with_the_sku() {
    ProductTest::with(())
        .given(vec![created(), added(3), reserved(order(1), 2)])
        .when(ProductCommand::ReserveStock {
            order_id: order(2),
            quantity: 2,
        })
        .then_expect_error(ProductError::InsufficientStock {
            sku: sku(),
            requested: 2,
            available: 1,
        });
}

#[test]
fn insufficient_stock_reads_as_out_of_stock_with_the_sku() {
    let error = ProductError::InsufficientStock {
        sku: sku(),
        requested: 2,
        available: 1,
    };
    assert!(error.to_string().starts_with("out of stock: MUG-01"));
}

#[test]
fn reserving_twice_for_one_order_is_refused() {
    ProductTest::with(())
        .given(vec![created(), added(3), reserved(order(1), 1)])
        .when(ProductCommand::ReserveStock {
            order_id: order(1),
            quantity: 1,
        })
        .then_expect_error(ProductError::AlreadyReserved { order_id: order(1) });
}

#[test]
fn reserving_zero_units_is_refused() {
    ProductTest::with(())
        .given(vec![created(), added(3)])
        .when(ProductCommand::ReserveStock {
            order_id: order(1),
            quantity: 0,
        })
        .then_expect_error(ProductError::QuantityOutOfRange {
            quantity: 0,
            min: 1,
            max: u32::MAX,
        });
}

#[test]
fn reserving_stock_of_an_unknown_product_is_refused() {
    ProductTest::with(())
        .given_no_previous_events()
        .when(ProductCommand::ReserveStock {
            order_id: order(1),
            quantity: 1,
        })
        .then_expect_error(ProductError::NotFound);
}

#[test]
fn releasing_a_reservation_returns_its_units() {
    ProductTest::with(())
        .given(vec![created(), added(3), reserved(order(1), 2)])
        .when(ProductCommand::ReleaseReservation { order_id: order(1) })
        .then_expect_events(vec![ProductEvent::ReservationReleased(
            ReservationReleased {
                order_id: order(1),
                quantity: 2,
            },
        )]);
}

#[test]
fn releasing_a_reservation_that_does_not_exist_is_refused() {
    ProductTest::with(())
        .given(vec![created(), added(3)])
        .when(ProductCommand::ReleaseReservation { order_id: order(1) })
        .then_expect_error(ProductError::NoReservation { order_id: order(1) });
}

#[test]
fn releasing_a_reservation_twice_is_refused() {
    ProductTest::with(())
        .given(vec![
            created(),
            added(3),
            reserved(order(1), 2),
            ProductEvent::ReservationReleased(ReservationReleased {
                order_id: order(1),
                quantity: 2,
            }),
        ])
        .when(ProductCommand::ReleaseReservation { order_id: order(1) })
        .then_expect_error(ProductError::NoReservation { order_id: order(1) });
}

#[test]
fn releasing_on_an_unknown_product_is_refused() {
    ProductTest::with(())
        .given_no_previous_events()
        .when(ProductCommand::ReleaseReservation { order_id: order(1) })
        .then_expect_error(ProductError::NotFound);
}

#[test]
fn committing_a_reservation_sells_its_units() {
    ProductTest::with(())
        .given(vec![created(), added(3), reserved(order(1), 2)])
        .when(ProductCommand::CommitReservation { order_id: order(1) })
        .then_expect_events(vec![committed(order(1), 2)]);
}

#[test]
fn committing_without_a_reservation_is_refused() {
    ProductTest::with(())
        .given(vec![created(), added(3)])
        .when(ProductCommand::CommitReservation { order_id: order(1) })
        .then_expect_error(ProductError::NoReservation { order_id: order(1) });
}

#[test]
fn committing_or_releasing_a_committed_reservation_finds_none_open() {
    // Whether the reservation was committed is the committer's to know (the
    // saga looks its commit's key up): the product keeps no entry per order
    // it sold to.
    for command in [
        ProductCommand::CommitReservation { order_id: order(1) },
        ProductCommand::ReleaseReservation { order_id: order(1) },
    ] {
        ProductTest::with(())
            .given(vec![
                created(),
                added(3),
                reserved(order(1), 2),
                committed(order(1), 2),
            ])
            .when(command)
            .then_expect_error(ProductError::NoReservation { order_id: order(1) });
    }
}

#[test]
fn a_product_that_sold_to_many_orders_keeps_one_count_not_one_entry_each() {
    let mut few = Product::default();
    let mut many = Product::default();
    for product in [&mut few, &mut many] {
        product.apply(created());
        product.apply(added(1_000_000));
    }
    for n in 0..10 {
        few.apply(reserved(order(n), 1));
        few.apply(committed(order(n), 1));
    }
    for n in 0..20_000 {
        many.apply(reserved(order(n), 1));
        many.apply(committed(order(n), 1));
    }
    assert_eq!(many.sold(), 20_000);
    let size = |product: &Product| serde_json::to_vec(product).expect("serializes").len();
    assert!(
        size(&many) <= size(&few) + 8,
        "{} bytes after 20,000 orders, {} after 10",
        size(&many),
        size(&few)
    );
}

#[test]
fn a_snapshot_written_when_sales_were_kept_by_order_reads_as_their_sum() {
    let old = serde_json::json!({
        "details": null, "on_hand": 5, "reserved": 0, "reservations": {},
        "sold": {
            "0190a0b0-0000-7000-8000-000000000001": 2,
            "0190a0b0-0000-7000-8000-000000000002": 3
        }
    });
    let product: Product = serde_json::from_value(old).expect("an earlier snapshot reads");
    assert_eq!(product.sold(), 5);
    let now: Product = serde_json::from_value(serde_json::to_value(&product).unwrap()).unwrap();
    assert_eq!(now, product);
}

#[test]
fn once_sold_units_are_returned_nothing_is_left_to_release() {
    ProductTest::with(())
        .given(vec![
            created(),
            added(3),
            reserved(order(1), 2),
            committed(order(1), 2),
            ProductEvent::SoldStockReturned(SoldStockReturned {
                order_id: order(1),
                quantity: 2,
            }),
        ])
        .when(ProductCommand::ReleaseReservation { order_id: order(1) })
        .then_expect_error(ProductError::NoReservation { order_id: order(1) });
}

#[test]
fn committing_or_returning_on_an_unknown_product_is_refused() {
    for command in [
        ProductCommand::CommitReservation { order_id: order(1) },
        ProductCommand::ReturnSoldStock {
            order_id: order(1),
            quantity: 1,
        },
    ] {
        ProductTest::with(())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(ProductError::NotFound);
    }
}

#[test]
fn returning_sold_units_puts_them_back_on_hand() {
    ProductTest::with(())
        .given(vec![
            created(),
            added(3),
            reserved(order(1), 2),
            committed(order(1), 2),
        ])
        .when(ProductCommand::ReturnSoldStock {
            order_id: order(1),
            quantity: 2,
        })
        .then_expect_events(vec![ProductEvent::SoldStockReturned(SoldStockReturned {
            order_id: order(1),
            quantity: 2,
        })]);
}

#[test]
fn returning_more_than_was_sold_is_refused() {
    ProductTest::with(())
        .given(vec![
            created(),
            added(3),
            reserved(order(1), 2),
            committed(order(1), 2),
        ])
        .when(ProductCommand::ReturnSoldStock {
            order_id: order(1),
            quantity: 3,
        })
        .then_expect_error(ProductError::NothingToReturn {
            order_id: order(1),
            requested: 3,
            returnable: 2,
        });
}

#[test]
fn returning_for_an_order_that_bought_nothing_is_refused() {
    ProductTest::with(())
        .given(vec![created(), added(3), reserved(order(1), 2)])
        .when(ProductCommand::ReturnSoldStock {
            order_id: order(1),
            quantity: 1,
        })
        .then_expect_error(ProductError::NothingToReturn {
            order_id: order(1),
            requested: 1,
            returnable: 0,
        });
}

#[test]
fn returning_zero_units_is_refused() {
    ProductTest::with(())
        .given(vec![
            created(),
            added(3),
            reserved(order(1), 2),
            committed(order(1), 2),
        ])
        .when(ProductCommand::ReturnSoldStock {
            order_id: order(1),
            quantity: 0,
        })
        .then_expect_error(ProductError::QuantityOutOfRange {
            quantity: 0,
            min: 1,
            max: u32::MAX,
        });
}

#[test]
fn stock_levels_follow_the_events() {
    let mut product = Product::default();
    for event in [
        created(),
        added(10),
        reserved(order(1), 4),
        reserved(order(2), 3),
        committed(order(1), 4),
        ProductEvent::SoldStockReturned(SoldStockReturned {
            order_id: order(1),
            quantity: 1,
        }),
    ] {
        product.apply(event);
    }
    assert_eq!(product.on_hand(), 7);
    assert_eq!(product.reserved(), 3);
    assert_eq!(product.available(), 4);
    assert_eq!(product.sold(), 3);
    assert_eq!(product.reservation_of(order(2)), Some(3));
}

/// A command the property test may send; orders are drawn from a small pool so
/// that sequences hit the same reservation often.
#[derive(Debug, Clone)]
enum Step {
    Add(u32),
    Reserve(u8, u32),
    Release(u8),
    Commit(u8),
    CommitPart(u8, u32),
    Return(u8, u32),
    Adjust(i32),
    Price(i64),
    Discontinue,
    Reactivate,
}

fn step() -> impl Strategy<Value = Step> {
    let order = 0u8..6;
    prop_oneof![
        (0u32..=1_200).prop_map(Step::Add),
        (order.clone(), 0u32..=60).prop_map(|(o, q)| Step::Reserve(o, q)),
        order.clone().prop_map(Step::Release),
        order.clone().prop_map(Step::Commit),
        (order.clone(), 0u32..=30).prop_map(|(o, q)| Step::CommitPart(o, q)),
        (order, 0u32..=60).prop_map(|(o, q)| Step::Return(o, q)),
        (-300i32..=300).prop_map(Step::Adjust),
        (1_240i64..=1_260).prop_map(Step::Price),
        Just(Step::Discontinue),
        Just(Step::Reactivate),
    ]
}

impl Step {
    fn command(&self) -> ProductCommand {
        let id = |o: &u8| order(u128::from(*o));
        match self {
            Step::Add(quantity) => ProductCommand::AddStock {
                quantity: *quantity,
            },
            Step::Reserve(o, quantity) => ProductCommand::ReserveStock {
                order_id: id(o),
                quantity: *quantity,
            },
            Step::Release(o) => ProductCommand::ReleaseReservation { order_id: id(o) },
            Step::Commit(o) => ProductCommand::CommitReservation { order_id: id(o) },
            Step::CommitPart(o, quantity) => ProductCommand::CommitPart {
                order_id: id(o),
                quantity: *quantity,
            },
            Step::Return(o, quantity) => ProductCommand::ReturnSoldStock {
                order_id: id(o),
                quantity: *quantity,
            },
            Step::Adjust(delta) => ProductCommand::AdjustStock {
                delta: *delta,
                reason: Reason::parse("count").unwrap(),
            },
            Step::Price(price_cents) => ProductCommand::ChangePrice {
                price_cents: *price_cents,
            },
            Step::Discontinue => ProductCommand::Discontinue {
                reason: Reason::parse("end of line").unwrap(),
            },
            Step::Reactivate => ProductCommand::Reactivate,
        }
    }
}

proptest! {
    /// Whatever commands arrive in whatever order, stock never goes negative,
    /// reservations never exceed what is on hand, and every unit is accounted
    /// for: on hand = added + adjusted - sold + returned. The catalogue data
    /// is the fold of the catalogue events alone, as the write side's
    /// catalogue reads it.
    #[test]
    fn random_command_sequences_conserve_stock(steps in prop::collection::vec(step(), 1..200)) {
        let mut product = Product::default();
        product.apply(created());
        let (mut added_total, mut sold_total, mut returned_total) = (0u64, 0u64, 0u64);
        let mut adjusted_total = 0i64;
        let mut history = vec![created()];
        let mut catalogue = ProductDetails::fold(None, &created());

        for step in &steps {
            let Ok(events) = product.decide(step.command()) else { continue };
            for event in events {
                match &event {
                    ProductEvent::StockAdded(e) => added_total += u64::from(e.quantity),
                    ProductEvent::ReservationCommitted(e) => sold_total += u64::from(e.quantity),
                    ProductEvent::SoldStockReturned(e) => returned_total += u64::from(e.quantity),
                    ProductEvent::StockAdjusted(e) => adjusted_total += i64::from(e.delta),
                    ProductEvent::ProductCreated(_)
                    | ProductEvent::StockReserved(_)
                    | ProductEvent::ReservationReleased(_)
                    | ProductEvent::ProductPriceChanged(_)
                    | ProductEvent::ProductDiscontinued(_)
                    | ProductEvent::ProductReactivated(_) => {}
                }
                if event.changes_catalogue() {
                    catalogue = ProductDetails::fold(catalogue, &event);
                }
                history.push(event.clone());
                product.apply(event);
            }
            prop_assert!(product.reserved() <= product.on_hand());
            prop_assert_eq!(
                i128::from(product.on_hand()) + i128::from(sold_total),
                i128::from(added_total) + i128::from(adjusted_total) + i128::from(returned_total)
            );
            prop_assert_eq!(product.details(), catalogue.as_ref());
            let open: u64 = product.reservations.values().map(|q| u64::from(*q)).sum();
            prop_assert_eq!(product.reserved(), open);
            prop_assert_eq!(product.sold() + returned_total, sold_total);
        }

        // Replaying the history from scratch gives the same state.
        let mut replayed = Product::default();
        for event in history {
            replayed.apply(event);
        }
        prop_assert_eq!(replayed, product);
    }
}

fn reason(text: &str) -> Reason {
    Reason::parse(text).unwrap()
}

fn price_changed(from: i64, to: i64) -> ProductEvent {
    ProductEvent::ProductPriceChanged(ProductPriceChanged {
        price: Money::price(to, Currency::parse("EUR").unwrap()).unwrap(),
        previous_price_cents: from,
    })
}

fn discontinued() -> ProductEvent {
    ProductEvent::ProductDiscontinued(ProductDiscontinued {
        reason: reason("end of line"),
    })
}

#[test]
fn a_new_price_keeps_the_currency_and_names_the_old_one() {
    ProductTest::with(())
        .given(vec![created()])
        .when(ProductCommand::ChangePrice { price_cents: 1490 })
        .then_expect_events(vec![price_changed(1250, 1490)]);
}

#[test]
fn the_same_price_again_or_a_price_of_an_unknown_product_is_refused() {
    ProductTest::with(())
        .given(vec![created(), price_changed(1250, 1490)])
        .when(ProductCommand::ChangePrice { price_cents: 1490 })
        .then_expect_error(ProductError::PriceUnchanged {
            sku: sku(),
            price_cents: 1490,
        });
    ProductTest::with(())
        .given_no_previous_events()
        .when(ProductCommand::ChangePrice { price_cents: 1490 })
        .then_expect_error(ProductError::NotFound);
    ProductTest::with(())
        .given(vec![created()])
        .when(ProductCommand::ChangePrice {
            price_cents: Money::MAX_PRICE_CENTS + 1,
        })
        .then_expect_error(ProductError::PriceOutOfRange {
            price_cents: Money::MAX_PRICE_CENTS + 1,
            max: Money::MAX_PRICE_CENTS,
        });
}

#[test]
fn a_product_is_discontinued_once_and_reactivated_once() {
    ProductTest::with(())
        .given(vec![created()])
        .when(ProductCommand::Discontinue {
            reason: reason("end of line"),
        })
        .then_expect_events(vec![discontinued()]);
    ProductTest::with(())
        .given(vec![created(), discontinued()])
        .when(ProductCommand::Discontinue {
            reason: reason("again"),
        })
        .then_expect_error(ProductError::AlreadyDiscontinued { sku: sku() });
    ProductTest::with(())
        .given(vec![created(), discontinued()])
        .when(ProductCommand::Reactivate)
        .then_expect_events(vec![ProductEvent::ProductReactivated(
            ProductReactivated {},
        )]);
    ProductTest::with(())
        .given(vec![created()])
        .when(ProductCommand::Reactivate)
        .then_expect_error(ProductError::NotDiscontinued { sku: sku() });
}

#[test]
fn a_discontinued_product_still_serves_the_orders_placed_before() {
    // Orders already placed go on: their reservations and commits are taken.
    let mut product = Product::default();
    for event in [created(), added(5), discontinued()] {
        product.apply(event);
    }
    assert!(!product.details().unwrap().active);
    let reserve = ProductCommand::ReserveStock {
        order_id: order(1),
        quantity: 2,
    };
    assert_eq!(
        product.decide(reserve).unwrap(),
        vec![reserved(order(1), 2)]
    );
}

#[test]
fn an_adjustment_moves_what_is_on_hand_but_never_below_what_is_reserved() {
    let given = vec![created(), added(10), reserved(order(1), 6)];
    ProductTest::with(())
        .given(given.clone())
        .when(ProductCommand::AdjustStock {
            delta: -4,
            reason: reason("broken"),
        })
        .then_expect_events(vec![ProductEvent::StockAdjusted(StockAdjusted {
            delta: -4,
            reason: reason("broken"),
        })]);
    ProductTest::with(())
        .given(given.clone())
        .when(ProductCommand::AdjustStock {
            delta: -5,
            reason: reason("lost"),
        })
        .then_expect_error(ProductError::AdjustmentBelowReserved {
            sku: sku(),
            on_hand: 10,
            reserved: 6,
            delta: -5,
        });
    ProductTest::with(())
        .given(given)
        .when(ProductCommand::AdjustStock {
            delta: 0,
            reason: reason("nothing"),
        })
        .then_expect_error(ProductError::QuantityOutOfRange {
            quantity: 0,
            min: 1,
            max: MAX_STOCK_ADDITION,
        });
    let mut product = Product::default();
    for event in [
        created(),
        added(10),
        ProductEvent::StockAdjusted(StockAdjusted {
            delta: 3,
            reason: reason("found"),
        }),
    ] {
        product.apply(event);
    }
    assert_eq!(product.on_hand(), 13);
}

/// One event of each type, for checks that must see every type.
fn one_of_each() -> Vec<ProductEvent> {
    vec![
        created(),
        added(1),
        reserved(order(1), 1),
        ProductEvent::ReservationReleased(ReservationReleased {
            order_id: order(1),
            quantity: 1,
        }),
        committed(order(1), 1),
        ProductEvent::SoldStockReturned(SoldStockReturned {
            order_id: order(1),
            quantity: 1,
        }),
        price_changed(1250, 1490),
        discontinued(),
        ProductEvent::ProductReactivated(ProductReactivated {}),
        ProductEvent::StockAdjusted(StockAdjusted {
            delta: 1,
            reason: reason("found"),
        }),
    ]
}

#[test]
fn the_catalogue_events_are_exactly_those_that_change_the_catalogue() {
    use cqrs_es::DomainEvent;
    let events = one_of_each();
    let mut types: Vec<String> = events.iter().map(DomainEvent::event_type).collect();
    types.sort();
    let mut declared: Vec<&str> = ProductEvent::TYPES.to_vec();
    declared.sort_unstable();
    assert_eq!(types, declared, "one_of_each must hold every product event");
    let catalogue: Vec<String> = events
        .iter()
        .filter(|event| event.changes_catalogue())
        .map(DomainEvent::event_type)
        .collect();
    assert_eq!(catalogue, ProductEvent::CATALOGUE);
    // Every other event leaves the catalogue data as it was.
    let before = ProductDetails::fold(None, &created());
    for event in events.iter().filter(|event| !event.changes_catalogue()) {
        assert_eq!(ProductDetails::fold(before.clone(), event), before);
    }
}

#[test]
fn a_snapshot_written_before_products_could_be_discontinued_reads_as_sold() {
    let snapshot = serde_json::json!({
        "details": {"sku": "MUG-01", "name": "Mug", "price": {"amount_cents": 1250, "currency": "EUR"}},
        "on_hand": 3, "reserved": 0, "reservations": {}, "sold": 0,
    });
    let product: Product = serde_json::from_value(snapshot).unwrap();
    assert!(product.details().unwrap().active);
}

#[test]
fn part_of_a_reservation_is_sold_and_the_rest_stays_reserved() {
    let given = vec![created(), added(10), reserved(order(1), 5)];
    ProductTest::with(())
        .given(given.clone())
        .when(ProductCommand::CommitPart {
            order_id: order(1),
            quantity: 2,
        })
        .then_expect_events(vec![committed(order(1), 2)]);
    ProductTest::with(())
        .given(given.clone())
        .when(ProductCommand::CommitPart {
            order_id: order(1),
            quantity: 6,
        })
        .then_expect_error(ProductError::QuantityOutOfRange {
            quantity: 6,
            min: 1,
            max: 5,
        });
    ProductTest::with(())
        .given(given.clone())
        .when(ProductCommand::CommitPart {
            order_id: order(2),
            quantity: 1,
        })
        .then_expect_error(ProductError::NoReservation { order_id: order(2) });

    let mut product = Product::default();
    for event in [given, vec![committed(order(1), 2)]].concat() {
        product.apply(event);
    }
    assert_eq!(product.reservation_of(order(1)), Some(3));
    assert_eq!(
        (product.on_hand(), product.reserved(), product.sold()),
        (8, 3, 2)
    );
    // The rest is committed, or released, as a whole.
    assert_eq!(
        product
            .decide(ProductCommand::CommitReservation { order_id: order(1) })
            .unwrap(),
        vec![committed(order(1), 3)]
    );
    assert_eq!(
        product
            .decide(ProductCommand::ReleaseReservation { order_id: order(1) })
            .unwrap(),
        vec![ProductEvent::ReservationReleased(ReservationReleased {
            order_id: order(1),
            quantity: 3,
        })]
    );
    product.apply(committed(order(1), 3));
    assert_eq!(product.reservation_of(order(1)), None);
    assert_eq!(
        (product.on_hand(), product.reserved(), product.sold()),
        (5, 0, 5)
    );
}
