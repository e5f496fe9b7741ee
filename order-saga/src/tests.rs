#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use chrono::{DateTime, TimeZone, Utc};
use domain::order::{OrderLine, OrderPlaced};
use domain::values::{Currency, CustomerId, OrderId, PaymentMethod, Sku};
use proptest::prelude::*;

use crate::saga::{Action, Charge, OrderSaga, Outcome, SagaState, Stock};

fn at(second: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + second, 0).unwrap()
}

fn placed(skus: &[&str]) -> OrderPlaced {
    OrderPlaced {
        order_id: OrderId::new(uuid::Uuid::from_u128(7)),
        customer_id: CustomerId::parse("c-1").unwrap(),
        lines: skus
            .iter()
            .map(|sku| OrderLine {
                sku: Sku::parse(sku).unwrap(),
                quantity: 2,
                unit_price_cents: 100,
            })
            .collect(),
        currency: Currency::parse("EUR").unwrap(),
        total_cents: 200 * skus.len() as i64,
        payment_method: PaymentMethod::parse("tok_visa").unwrap(),
        shipping_address: None,
        email: None,
    }
}

fn reserve(sku: &str) -> Action {
    Action::ReserveStock {
        sku: sku.into(),
        quantity: 2,
    }
}

/// Answers each action the saga asks for with `answer`, until it is over.
/// Returns the actions in the order asked.
fn drive(saga: &mut OrderSaga, mut answer: impl FnMut(&Action) -> Outcome) -> Vec<Action> {
    let mut asked = Vec::new();
    let mut second = 1;
    while let Some(action) = saga.next_action() {
        assert!(asked.len() < 100, "the saga does not end: {asked:?}");
        let outcome = answer(&action);
        saga.record(&action, outcome, at(second));
        asked.push(action);
        second += 1;
    }
    asked
}

fn done(_: &Action) -> Outcome {
    Outcome::Done
}

fn approving(action: &Action) -> Outcome {
    match action {
        Action::Charge => Outcome::Approved {
            reference: "ch_1".into(),
        },
        _ => Outcome::Done,
    }
}

#[test]
fn an_approved_order_reserves_charges_commits_and_confirms() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG", "TEA"]), "c", at(0));
    let asked = drive(&mut saga, approving);

    assert_eq!(
        asked,
        vec![
            reserve("MUG"),
            reserve("TEA"),
            Action::RequestCharge,
            Action::Charge,
            Action::CommitReservation { sku: "MUG".into() },
            Action::CommitReservation { sku: "TEA".into() },
            Action::ConfirmOrder,
        ]
    );
    assert_eq!(saga.state, SagaState::Confirmed);
    assert_eq!(saga.charge, Charge::Approved);
    assert!(saga.lines.iter().all(|l| l.stock == Stock::Committed));
    assert_eq!(saga.reason, None);
    assert_eq!(saga.steps.len(), 7);
    assert_eq!(saga.steps[3].detail.as_deref(), Some("approved: ch_1"));
}

#[test]
fn a_declined_payment_releases_the_stock_in_reverse_and_cancels() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG", "TEA"]), "c", at(0));
    let asked = drive(&mut saga, |action| match action {
        Action::Charge => Outcome::Declined {
            reason: "card declined".into(),
        },
        _ => Outcome::Done,
    });

    assert_eq!(
        asked[4..],
        [
            Action::ReleaseReservation { sku: "TEA".into() },
            Action::ReleaseReservation { sku: "MUG".into() },
            Action::CancelOrder {
                reason: "payment declined".into()
            },
        ]
    );
    assert_eq!(saga.state, SagaState::Cancelled);
    assert_eq!(saga.charge, Charge::Declined);
    assert_eq!(saga.reason.as_deref(), Some("payment declined"));
}

#[test]
fn one_line_out_of_stock_releases_the_others_and_names_the_sku() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG", "TEA", "CUP"]), "c", at(0));
    let asked = drive(&mut saga, |action| match action {
        Action::ReserveStock { sku, .. } if sku == "TEA" => Outcome::Refused {
            detail: "out of stock: TEA has 1 available, 2 requested".into(),
        },
        _ => Outcome::Done,
    });

    assert_eq!(
        asked,
        vec![
            reserve("MUG"),
            reserve("TEA"),
            Action::ReleaseReservation { sku: "MUG".into() },
            Action::CancelOrder {
                reason: "out of stock: TEA".into()
            },
        ]
    );
    assert_eq!(
        saga.lines.iter().map(|l| l.stock).collect::<Vec<_>>(),
        [Stock::Released, Stock::None, Stock::None]
    );
    assert_eq!(saga.charge, Charge::None);
}

#[test]
fn an_unknown_product_is_named_as_such() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG"]), "c", at(0));
    drive(&mut saga, |action| match action {
        Action::ReserveStock { .. } => Outcome::Refused {
            detail: "no product with this SKU exists".into(),
        },
        _ => Outcome::Done,
    });
    assert_eq!(
        saga.reason.as_deref(),
        Some("cannot reserve MUG: no product with this SKU exists")
    );
    assert_eq!(saga.state, SagaState::Cancelled);
}

#[test]
fn a_payment_timeout_refunds_whatever_was_taken_then_releases_and_cancels() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG"]), "c", at(0));
    let asked = drive(&mut saga, |action| match action {
        Action::Charge => Outcome::TimedOut,
        _ => Outcome::Done,
    });

    assert_eq!(
        asked[3..],
        [
            Action::Refund,
            Action::ReleaseReservation { sku: "MUG".into() },
            Action::CancelOrder {
                reason: "payment timed out".into()
            },
        ]
    );
    assert_eq!(saga.charge, Charge::Refunded);
}

#[test]
fn a_late_approval_while_undoing_is_refunded() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG"]), "c", at(0));
    saga.record(&reserve("MUG"), Outcome::Done, at(1));
    saga.record(&Action::RequestCharge, Outcome::Done, at(2));
    saga.order_cancelled("changed my mind", at(3));
    assert_eq!(saga.state, SagaState::Compensating);

    // The charge that was in flight comes back approved after all.
    saga.record(
        &Action::Charge,
        Outcome::Approved {
            reference: "late".into(),
        },
        at(4),
    );

    assert_eq!(saga.state, SagaState::Compensating);
    let rest = drive(&mut saga, done);
    assert_eq!(
        rest,
        vec![
            Action::Refund,
            Action::ReleaseReservation { sku: "MUG".into() }
        ]
    );
    assert_eq!(saga.state, SagaState::Cancelled);
    assert_eq!(saga.reason.as_deref(), Some("changed my mind"));
}

#[test]
fn an_abandoned_saga_stops_where_it_is_and_undoes_nothing() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG"]), "c", at(0));
    saga.record(&reserve("MUG"), Outcome::Done, at(1));
    saga.record(&Action::RequestCharge, Outcome::Done, at(2));
    for second in 3..9 {
        saga.record(
            &Action::Charge,
            Outcome::Inconsistent {
                detail: "the ledger and the gateway disagree".into(),
            },
            at(second),
        );
    }
    assert!(saga.needs_attention(5));

    assert!(saga.abandon("alice", "settled with the bank by hand", at(10)));

    assert_eq!(saga.state, SagaState::Abandoned);
    assert!(saga.state.is_final());
    assert_eq!(saga.next_action(), None);
    assert!(saga.next_actions().is_empty());
    assert!(saga.is_over());
    assert!(!saga.needs_attention(5));
    // What it held stays held: the operator owns the books of this order.
    assert_eq!(saga.charge, Charge::Requested);
    assert_eq!(saga.lines[0].stock, Stock::Reserved);
    assert_eq!(
        saga.abandoned.as_deref(),
        Some("by alice: settled with the bank by hand")
    );
    let last = saga.steps.last().unwrap();
    assert_eq!(
        (last.name.as_str(), last.at),
        ("abandoned", at(10)),
        "the log says who and when"
    );
    // Survives a save and a load.
    let back: OrderSaga = serde_json::from_value(serde_json::to_value(&saga).unwrap()).unwrap();
    assert_eq!(back, saga);
}

#[test]
fn a_saga_that_ended_cannot_be_abandoned_and_an_abandoned_one_ignores_a_cancel() {
    let mut confirmed = OrderSaga::start_charging(&placed(&["MUG"]), "c", at(0));
    drive(&mut confirmed, approving);
    let before = confirmed.clone();
    assert!(!confirmed.abandon("alice", "too late", at(20)));
    assert_eq!(confirmed, before, "an ended saga is left as it was");

    let mut saga = OrderSaga::start_charging(&placed(&["MUG"]), "c", at(0));
    saga.record(&reserve("MUG"), Outcome::Done, at(1));
    assert!(saga.abandon("alice", "stuck", at(2)));
    assert!(!saga.abandon("bob", "again", at(3)), "abandoned once");
    saga.order_cancelled("changed my mind", at(4));
    assert_eq!(saga.state, SagaState::Abandoned);
    assert_eq!(saga.next_action(), None, "no release, no cancel command");
    assert_eq!(saga.lines[0].stock, Stock::Reserved);
    assert!(saga.order_cancelled, "the cancel is noted");
    assert!(
        saga.needs_attention(5),
        "and someone must settle what the customer was told"
    );
    // A late answer to a step in flight changes nothing either.
    saga.give_up(&Action::RequestCharge, at(5));
    saga.record(&Action::ConfirmOrder, Outcome::Done, at(6));
    saga.record(
        &reserve("MUG"),
        Outcome::Failed { detail: "x".into() },
        at(7),
    );
    assert_eq!(saga.state, SagaState::Abandoned);
    assert_eq!(saga.attempts, 0);
    // The operator settles it and says so.
    assert!(saga.abandon("carol", "refunded by hand", at(8)));
    assert!(!saga.needs_attention(5));
    assert_eq!(
        saga.abandoned.as_deref(),
        Some("by carol: refunded by hand")
    );
    assert!(!saga.abandon("carol", "once more", at(9)));
}

#[test]
fn a_customer_cancel_before_any_charge_undoes_only_the_stock() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG", "TEA"]), "c", at(0));
    saga.record(&reserve("MUG"), Outcome::Done, at(1));
    saga.order_cancelled("changed my mind", at(2));

    let rest = drive(&mut saga, done);

    assert_eq!(rest, vec![Action::ReleaseReservation { sku: "MUG".into() }]);
    assert_eq!(saga.state, SagaState::Cancelled);
    assert_eq!(saga.charge, Charge::None);
}

#[test]
fn a_customer_cancel_after_confirmation_refunds_and_returns_the_stock() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG", "TEA"]), "c", at(0));
    drive(&mut saga, approving);
    assert_eq!(saga.state, SagaState::Confirmed);

    saga.order_cancelled("returned", at(50));
    let rest = drive(&mut saga, done);

    assert_eq!(
        rest,
        vec![
            Action::Refund,
            Action::ReturnStock {
                sku: "TEA".into(),
                quantity: 2
            },
            Action::ReturnStock {
                sku: "MUG".into(),
                quantity: 2
            },
        ]
    );
    assert_eq!(saga.state, SagaState::Cancelled);
    assert!(saga.lines.iter().all(|l| l.stock == Stock::Returned));
    assert_eq!(saga.charge, Charge::Refunded);

    // The event again (a redelivery) changes nothing.
    let before = saga.clone();
    saga.order_cancelled("returned", at(60));
    assert_eq!(saga, before);
}

#[test]
fn an_order_cancelled_before_confirmation_gives_its_sold_stock_back() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG"]), "c", at(0));
    let asked = drive(&mut saga, |action| match action {
        Action::Charge => Outcome::Approved {
            reference: "ch".into(),
        },
        Action::ConfirmOrder => Outcome::Refused {
            detail: "the order is cancelled".into(),
        },
        _ => Outcome::Done,
    });

    assert_eq!(
        asked[5..],
        [
            Action::Refund,
            Action::ReturnStock {
                sku: "MUG".into(),
                quantity: 2
            },
        ]
    );
    assert!(saga.order_cancelled);
    assert_eq!(saga.reason.as_deref(), Some("cancelled by customer"));
}

#[test]
fn a_failing_undo_is_retried_flagged_and_never_dropped() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG"]), "c", at(0));
    saga.record(&reserve("MUG"), Outcome::Done, at(1));
    saga.order_cancelled("changed my mind", at(2));
    let release = saga.next_action().unwrap();
    assert_eq!(release, Action::ReleaseReservation { sku: "MUG".into() });

    for second in 3..8 {
        saga.record(
            &release,
            Outcome::Failed {
                detail: "database unavailable".into(),
            },
            at(second),
        );
        saga.give_up(&release, at(second));
    }
    let timed_out = Outcome::TimedOut;
    saga.record(&release, timed_out, at(8));

    assert_eq!(saga.attempts, 6);
    assert!(saga.needs_attention(5));
    assert_eq!(saga.next_action(), Some(release.clone()));
    saga.record(&release, Outcome::Done, at(9));
    assert!(!saga.needs_attention(5));
    assert_eq!(saga.state, SagaState::Cancelled);
}

#[test]
fn a_forward_step_that_keeps_failing_is_given_up_and_undone() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG", "TEA"]), "c", at(0));
    saga.record(&reserve("MUG"), Outcome::Done, at(1));
    let failing = saga.next_action().unwrap();
    saga.record(
        &failing,
        Outcome::Failed {
            detail: "database unavailable".into(),
        },
        at(2),
    );
    assert_eq!(saga.next_action(), Some(failing.clone()));

    // The driver settled that TEA's reservation never landed: only MUG's
    // is released.
    saga.settled(&failing, false, at(3));
    saga.give_up(&failing, at(3));

    assert_eq!(saga.reason.as_deref(), Some("reserve TEA failed"));
    assert_eq!(
        drive(&mut saga, done),
        vec![
            Action::ReleaseReservation { sku: "MUG".into() },
            Action::CancelOrder {
                reason: "reserve TEA failed".into()
            }
        ]
    );
}

#[test]
fn a_forward_step_that_keeps_failing_without_being_settled_needs_attention() {
    // The store cannot even say whether the step landed (so it is neither
    // done nor given up): the saga retries, and someone should look.
    let mut saga = OrderSaga::start_charging(&placed(&["MUG"]), "c", at(0));
    let reserve = reserve("MUG");
    for second in 1..=5 {
        saga.record(
            &reserve,
            Outcome::Failed {
                detail: "the store did not answer in time".into(),
            },
            at(second),
        );
    }
    assert_eq!(saga.state, SagaState::Reserving);
    assert!(saga.needs_attention(5));
}

#[test]
fn a_step_that_failed_but_landed_after_all_is_taken_as_done() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG"]), "c", at(0));
    saga.record(&reserve("MUG"), Outcome::Done, at(1));
    saga.record(&Action::RequestCharge, Outcome::Done, at(2));
    saga.record(&Action::Charge, approving(&Action::Charge), at(3));
    let commit = saga.next_action().unwrap();
    assert_eq!(commit, Action::CommitReservation { sku: "MUG".into() });
    saga.record(
        &commit,
        Outcome::Failed {
            detail: "no answer".into(),
        },
        at(4),
    );

    // Settled: the queued commit landed. The saga goes on, it does not undo.
    saga.settled(&commit, true, at(5));

    assert_eq!(drive(&mut saga, done), vec![Action::ConfirmOrder]);
    assert_eq!(saga.state, SagaState::Confirmed);
}

#[test]
fn a_release_that_finds_the_units_sold_returns_them() {
    // A commit landed that the saga never learned of (before settling, or
    // from an older version): the undo must not take "nothing reserved" for
    // done, or the units stay sold to a cancelled order.
    let mut saga = OrderSaga::start_charging(&placed(&["MUG"]), "c", at(0));
    saga.record(&reserve("MUG"), Outcome::Done, at(1));
    saga.order_cancelled("changed my mind", at(2));
    let release = saga.next_action().unwrap();
    saga.record(&release, Outcome::AlreadySold, at(3));

    assert_eq!(
        drive(&mut saga, done),
        vec![Action::ReturnStock {
            sku: "MUG".into(),
            quantity: 2
        },]
    );
    assert_eq!(saga.lines[0].stock, Stock::Returned);
    assert_eq!(saga.state, SagaState::Cancelled);
}

#[test]
fn records_that_disagree_flag_the_saga_at_once_and_keep_the_undo_open() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG"]), "c", at(0));
    saga.record(&reserve("MUG"), Outcome::Done, at(1));
    saga.record(&Action::RequestCharge, Outcome::Done, at(2));
    saga.record(&Action::Charge, approving(&Action::Charge), at(3));
    saga.order_cancelled("arrived broken", at(4));
    assert_eq!(saga.next_action(), Some(Action::Refund));

    let disagree = Outcome::Inconsistent {
        detail: "the ledger holds the payment approved, but the gateway says nothing was captured"
            .into(),
    };
    saga.record(&Action::Refund, disagree, at(5));

    assert!(saga.needs_attention(5), "flagged after one failure");
    assert_eq!(saga.next_action(), Some(Action::Refund));
    assert_eq!(saga.charge, Charge::Approved);
    saga.record(&Action::Refund, Outcome::Done, at(6));
    assert!(!saga.needs_attention(5));
    assert_eq!(saga.charge, Charge::Refunded);
}

#[test]
fn a_step_another_driver_gave_up_is_undone_not_retried() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG", "TEA"]), "c", at(0));
    saga.record(&reserve("MUG"), Outcome::Done, at(1));
    saga.record(&reserve("TEA"), Outcome::NeverDone, at(2));

    assert_eq!(saga.state, SagaState::Compensating);
    assert_eq!(
        drive(&mut saga, done),
        vec![
            Action::ReleaseReservation { sku: "MUG".into() },
            Action::CancelOrder {
                reason: "reserve TEA failed".into()
            }
        ]
    );
}

#[test]
fn approval_and_decline_are_recorded_under_keys_of_their_own() {
    let keys = [
        Action::Charge.key("o-1"),
        Action::approval_key("o-1"),
        Action::decline_key("o-1"),
        Action::Refund.key("o-1"),
    ];
    let distinct: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len());
}

#[test]
fn every_step_has_its_own_stable_key() {
    let actions = [
        reserve("MUG"),
        reserve("TEA"),
        Action::RequestCharge,
        Action::Charge,
        Action::ConfirmOrder,
        Action::CommitReservation { sku: "MUG".into() },
        Action::ReleaseReservation { sku: "MUG".into() },
        Action::ReturnStock {
            sku: "MUG".into(),
            quantity: 1,
        },
        Action::Refund,
        Action::CancelOrder { reason: "x".into() },
    ];
    let keys: std::collections::HashSet<String> = actions.iter().map(|a| a.key("o-1")).collect();
    assert_eq!(keys.len(), actions.len());
    assert_eq!(reserve("MUG").key("o-1"), "saga:o-1:reserve:MUG");
    assert_ne!(reserve("MUG").key("o-1"), reserve("MUG").key("o-2"));
}

#[test]
fn a_saga_survives_serialization() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG"]), "c", at(0));
    saga.record(&reserve("MUG"), Outcome::Done, at(1));
    let json = serde_json::to_string(&saga).unwrap();
    assert!(json.contains("\"state\":\"CHARGING\""), "{json}");
    let back: OrderSaga = serde_json::from_str(&json).unwrap();
    assert_eq!(back, saga);
}

#[test]
fn steps_that_fail_side_by_side_count_as_one_try() {
    // Every line's commit fails in one pass (one stall of the store): that
    // is one failed try of the phase, not three, so a paid order is not
    // given up on the first stall.
    let mut saga = OrderSaga::start_charging(&placed(&["A", "B", "C"]), "c", at(0));
    for sku in ["A", "B", "C"] {
        saga.record(&reserve(sku), Outcome::Done, at(1));
    }
    saga.record(&Action::RequestCharge, Outcome::Done, at(2));
    saga.record(
        &Action::Charge,
        Outcome::Approved {
            reference: "r".into(),
        },
        at(3),
    );
    assert_eq!(saga.state, SagaState::Confirming);
    let commits = saga.next_actions();
    assert_eq!(commits.len(), 3);
    let failed = |action: &Action| {
        (
            action.clone(),
            Outcome::Failed {
                detail: "stalled".into(),
            },
        )
    };
    let first = saga.record_together(commits.iter().map(failed).collect(), at(4));
    assert_eq!(first.as_ref(), commits.first());
    assert_eq!(saga.attempts, 1);
    assert_eq!(
        saga.steps.iter().filter(|s| s.status == "FAILED").count(),
        3
    );
    saga.record_together(commits.iter().map(failed).collect(), at(5));
    assert_eq!(saga.attempts, 2);
    assert_eq!(saga.state, SagaState::Confirming);
    // What went through resets the count, as one step's success does.
    let mut mixed: Vec<_> = commits.iter().map(failed).collect();
    mixed[0].1 = Outcome::Done;
    assert_eq!(saga.record_together(mixed, at(6)), Some(commits[1].clone()));
    assert_eq!(saga.attempts, 1);
}

#[test]
fn a_line_in_doubt_survives_serialization_and_is_settled_before_the_undo() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG", "TEA"]), "c", at(0));
    saga.record(
        &reserve("MUG"),
        Outcome::Failed {
            detail: "no answer".into(),
        },
        at(1),
    );
    saga.record(
        &reserve("TEA"),
        Outcome::Refused {
            detail: "out of stock".into(),
        },
        at(2),
    );
    let json = serde_json::to_string(&saga).unwrap();
    assert!(json.contains("\"IN_DOUBT\""), "{json}");
    let mut back: OrderSaga = serde_json::from_str(&json).unwrap();
    assert_eq!(back, saga);
    // Nothing is undone, and the saga is not over, until MUG is settled.
    assert_eq!(back.state, SagaState::Compensating);
    assert_eq!(back.to_settle(), vec![reserve("MUG")]);
    assert_eq!(back.next_action(), None);
    assert!(!back.is_over());
    back.settled(&reserve("MUG"), true, at(3));
    assert_eq!(
        back.next_action(),
        Some(Action::ReleaseReservation { sku: "MUG".into() })
    );
    saga.settled(&reserve("MUG"), false, at(3));
    assert_eq!(saga.lines[0].stock, Stock::None);
    assert!(matches!(
        saga.next_action(),
        Some(Action::CancelOrder { .. })
    ));
}

/// What the world answers, for the property test.
#[derive(Debug, Clone)]
enum World {
    Done,
    Refused,
    Declined,
    TimedOut,
    Failed,
    /// No answer came, but the command landed all the same (it waited in a
    /// queue past the saga's patience).
    FailedButLanded,
    /// The ledger and the gateway disagree (a failure that flags the saga).
    Inconsistent,
    /// Another driver settled the step's key as never to run.
    GivenUpElsewhere,
    /// A release finds the reservation committed.
    Sold,
}

fn world() -> impl Strategy<Value = World> {
    prop_oneof![
        6 => Just(World::Done),
        1 => Just(World::Refused),
        1 => Just(World::Declined),
        1 => Just(World::TimedOut),
        2 => Just(World::Failed),
        1 => Just(World::FailedButLanded),
        1 => Just(World::Inconsistent),
        1 => Just(World::GivenUpElsewhere),
        1 => Just(World::Sold),
    ]
}

#[test]
fn the_lines_are_reserved_together_and_committed_together() {
    let mut saga = OrderSaga::start_charging(&placed(&["MUG", "TEA"]), "c", at(0));
    assert_eq!(saga.next_actions(), vec![reserve("MUG"), reserve("TEA")]);
    assert_eq!(saga.next_actions()[0], saga.next_action().unwrap());
    // Taken in out of order, they reserve both.
    saga.record(&reserve("TEA"), Outcome::Done, at(1));
    assert_eq!(saga.next_actions(), vec![reserve("MUG")]);
    saga.record(&reserve("MUG"), Outcome::Done, at(2));
    assert_eq!(saga.next_actions(), vec![Action::RequestCharge]);
    saga.record(&Action::RequestCharge, Outcome::Done, at(3));
    saga.record(
        &Action::Charge,
        Outcome::Approved {
            reference: "ch_1".into(),
        },
        at(4),
    );
    assert_eq!(
        saga.next_actions(),
        vec![
            Action::CommitReservation { sku: "MUG".into() },
            Action::CommitReservation { sku: "TEA".into() }
        ]
    );
}

#[test]
fn a_line_refused_beside_one_reserved_releases_the_reserved_one() {
    // Taken in in either order, the refusal turns the saga to undoing and
    // the reservation that landed beside it is released.
    for refused_first in [true, false] {
        let mut saga = OrderSaga::start_charging(&placed(&["MUG", "TEA"]), "c", at(0));
        let mut outcomes = vec![
            (reserve("MUG"), Outcome::Done),
            (
                reserve("TEA"),
                Outcome::Refused {
                    detail: "out of stock: TEA".into(),
                },
            ),
        ];
        if refused_first {
            outcomes.reverse();
        }
        for (action, outcome) in outcomes {
            saga.record(&action, outcome, at(1));
        }
        assert_eq!(saga.state, SagaState::Compensating);
        assert_eq!(
            saga.next_actions(),
            vec![Action::ReleaseReservation { sku: "MUG".into() }],
            "refused first: {refused_first}"
        );
    }
}

proptest! {
    /// Whatever the world answers and whenever the customer cancels, the saga
    /// ends, and it ends clean: a confirmed order holds sold stock and a
    /// captured payment; a cancelled one holds no stock and no money.
    #[test]
    fn every_saga_ends_clean(
        lines in 1usize..4,
        answers in prop::collection::vec(world(), 60),
        cancel_at in prop::option::of(0usize..20),
    ) {
        let skus = ["A", "B", "C"];
        let mut saga = OrderSaga::start_charging(&placed(&skus[..lines]), "c", at(0));
        let mut answers = answers.into_iter().cycle();
        let mut world = Products::default();
        let mut step = 0;
        loop {
            world.settle(&mut saga, at(step as i64));
            let Some(action) = saga.next_action() else {
                break;
            };
            prop_assert!(step < 200, "the saga does not end");
            if Some(step) == cancel_at {
                saga.order_cancelled("changed my mind", at(step as i64));
                step += 1;
                continue;
            }
            world.take(&mut saga, vec![(action, answers.next().unwrap())], at(step as i64));
            step += 1;
        }
        prop_assert!(ends_clean(&saga), "{saga:#?}");
        prop_assert!(world.none_held_unknown(&saga), "reserved unknown to the saga: {:?} {saga:#?}", world.held);
    }

    /// The same with the actions that may run together taken together, and
    /// their outcomes taken in in any order, as the driver does.
    #[test]
    fn every_saga_driven_a_phase_at_a_time_ends_clean(
        lines in 1usize..4,
        answers in prop::collection::vec(world(), 60),
        cancel_at in prop::option::of(0usize..20),
        reversed in any::<bool>(),
    ) {
        let skus = ["A", "B", "C"];
        let mut saga = OrderSaga::start_charging(&placed(&skus[..lines]), "c", at(0));
        let mut answers = answers.into_iter().cycle();
        let mut world = Products::default();
        let mut step = 0;
        loop {
            world.settle(&mut saga, at(step as i64));
            let mut actions = saga.next_actions();
            if actions.is_empty() {
                break;
            }
            prop_assert!(step < 200, "the saga does not end");
            if Some(step) == cancel_at {
                saga.order_cancelled("changed my mind", at(step as i64));
                step += 1;
                continue;
            }
            if reversed {
                actions.reverse();
            }
            let together = actions
                .into_iter()
                .map(|action| (action, answers.next().unwrap()))
                .collect();
            world.take(&mut saga, together, at(step as i64));
            step += 1;
        }
        prop_assert!(ends_clean(&saga), "{saga:#?}");
        prop_assert!(world.none_held_unknown(&saga), "reserved unknown to the saga: {:?} {saga:#?}", world.held);
    }
}

/// The products' side of the property tests, and the driver's part in
/// them: which lines hold a reservation, whatever the saga heard.
#[derive(Debug, Default)]
struct Products {
    held: std::collections::BTreeSet<String>,
}

impl Products {
    /// Whether every line the saga takes for never reserved is not held.
    fn none_held_unknown(&self, saga: &OrderSaga) -> bool {
        saga.lines
            .iter()
            .filter(|line| line.stock == Stock::None)
            .all(|line| !self.held.contains(&line.sku))
    }

    /// As the driver does before going on: what may have landed unheard is
    /// settled (found, or fenced so that it never lands).
    fn settle(&self, saga: &mut OrderSaga, at: DateTime<Utc>) {
        for action in saga.to_settle() {
            let landed = match &action {
                Action::ReserveStock { sku, .. } => self.held.contains(sku),
                other => panic!("only reservations are settled: {other:?}"),
            };
            saga.settled(&action, landed, at);
        }
    }

    /// Each of `actions` meets its world, side by side; the saga takes in
    /// what it heard as the driver does (`record_together`), and gives a
    /// forward step up after three failed tries in a row (settling it
    /// first, as the driver does).
    fn take(&mut self, saga: &mut OrderSaga, actions: Vec<(Action, World)>, at: DateTime<Utc>) {
        let mut outcomes = Vec::new();
        for (action, world) in actions {
            // A command left without an answer may have landed all the same.
            let landed = matches!(
                world,
                World::Done | World::FailedButLanded | World::Sold | World::TimedOut
            );
            match &action {
                Action::ReserveStock { sku, .. } if landed => {
                    self.held.insert(sku.clone());
                }
                Action::ReleaseReservation { sku } | Action::CommitReservation { sku }
                    if landed =>
                {
                    self.held.remove(sku);
                }
                _ => {}
            }
            let outcome = answer(world, &action);
            outcomes.push((action, outcome));
        }
        if let Some(action) = saga.record_together(outcomes, at)
            && saga.attempts >= 3
        {
            match &action {
                Action::ReserveStock { sku, .. } if self.held.contains(sku) => {
                    saga.settled(&action, true, at);
                }
                _ => saga.give_up(&action, at),
            }
        }
    }
}

/// What the world answers to `action`.
fn answer(world: World, action: &Action) -> Outcome {
    match (world, action) {
        (World::Done, Action::Charge) => Outcome::Approved {
            reference: "r".into(),
        },
        (World::Done, _) => Outcome::Done,
        (World::Refused, _) => Outcome::Refused {
            detail: "no".into(),
        },
        (World::Declined, Action::Charge) => Outcome::Declined {
            reason: "no".into(),
        },
        (World::Declined, _) => Outcome::Done,
        (World::TimedOut, _) => Outcome::TimedOut,
        (World::Failed | World::FailedButLanded, _) => Outcome::Failed {
            detail: "down".into(),
        },
        (World::Inconsistent, _) => Outcome::Inconsistent {
            detail: "disagree".into(),
        },
        (World::GivenUpElsewhere, _) => Outcome::NeverDone,
        (World::Sold, Action::ReleaseReservation { .. }) => Outcome::AlreadySold,
        (World::Sold, _) => Outcome::Done,
    }
}

/// A confirmed order holds sold stock and a captured payment; a cancelled
/// one holds no stock and no money.
fn ends_clean(saga: &OrderSaga) -> bool {
    match saga.state {
        SagaState::Confirmed => {
            saga.lines.iter().all(|l| l.stock == Stock::Committed)
                && saga.charge == Charge::Approved
                && !saga.order_cancelled
        }
        SagaState::Cancelled => {
            saga.order_cancelled
                && saga.reason.is_some()
                && saga
                    .lines
                    .iter()
                    .all(|l| matches!(l.stock, Stock::None | Stock::Released | Stock::Returned))
                && matches!(
                    saga.charge,
                    Charge::None | Charge::Declined | Charge::Refunded
                )
        }
        _ => false,
    }
}

mod lifecycle;

mod authorizing {
    //! The path of the sagas this release starts: authorize, confirm with
    //! the units reserved, then carry out shipments and returns.

    use domain::order::{Fulfilment, ItemLine, Return, ReturnStatus, Shipment, ShipmentStatus};
    use domain::values::{Carrier, Reason, ReturnId, ShipmentId, Sku, TrackingNumber};

    use super::*;
    use crate::saga::{MAX_EXPIRIES_IN_A_ROW, PaymentFlow, ShipmentStage};

    fn shipment(n: u128, sku: &str, quantity: u32, status: ShipmentStatus) -> Shipment {
        Shipment {
            id: ShipmentId::new(uuid::Uuid::from_u128(n)),
            lines: vec![ItemLine {
                sku: Sku::parse(sku).unwrap(),
                quantity,
            }],
            carrier: Carrier::parse("DHL").unwrap(),
            tracking_number: TrackingNumber::parse("T").unwrap(),
            value_cents: 100 * i64::from(quantity),
            status,
            requested_at: at(0),
            shipped_at: None,
            delivered_at: None,
            failure: None,
        }
    }

    /// Return `n` of `quantity` MUG, received and restocked, refunding
    /// 100 a unit (the units' value in these tests).
    fn received_mugs(n: u128, quantity: u32) -> Return {
        Return {
            id: ReturnId::new(uuid::Uuid::from_u128(n)),
            lines: vec![ItemLine {
                sku: Sku::parse("MUG").unwrap(),
                quantity,
            }],
            reason: Reason::parse("no").unwrap(),
            refund_cents: 100 * i64::from(quantity),
            status: ReturnStatus::Received,
            requested_at: at(0),
            received_at: Some(at(1)),
            restocked: Some(true),
        }
    }

    fn confirmed() -> OrderSaga {
        let mut saga = OrderSaga::start(&placed(&["MUG", "TEA"]), "c", at(0));
        drive(&mut saga, approving);
        saga
    }

    #[test]
    fn an_authorized_order_is_confirmed_with_its_units_still_reserved() {
        let mut saga = OrderSaga::start(&placed(&["MUG", "TEA"]), "c", at(0));
        assert_eq!(saga.flow, PaymentFlow::Authorize);
        let asked = drive(&mut saga, approving);
        assert_eq!(
            asked,
            vec![
                reserve("MUG"),
                reserve("TEA"),
                Action::RequestCharge,
                Action::Charge,
                Action::ConfirmOrder,
            ]
        );
        assert_eq!(saga.state, SagaState::Confirmed);
        assert!(saga.lines.iter().all(|l| l.stock == Stock::Reserved));
        // Side by side too: no commit while confirming.
        let mut saga = OrderSaga::start(&placed(&["MUG", "TEA"]), "c", at(0));
        for action in saga.next_actions() {
            saga.record(&action, Outcome::Done, at(1));
        }
        saga.record(&Action::RequestCharge, Outcome::Done, at(2));
        saga.record(
            &Action::Charge,
            Outcome::Approved {
                reference: "au".into(),
            },
            at(3),
        );
        assert_eq!(saga.next_actions(), vec![Action::ConfirmOrder]);
    }

    #[test]
    fn a_cancel_after_confirmation_voids_and_releases_and_returns_nothing() {
        let mut saga = confirmed();
        saga.order_cancelled("changed my mind", at(10));
        let asked = drive(&mut saga, done);
        assert_eq!(
            asked,
            vec![
                Action::Refund,
                Action::ReleaseReservation { sku: "TEA".into() },
                Action::ReleaseReservation { sku: "MUG".into() },
            ]
        );
        assert_eq!(saga.state, SagaState::Cancelled);
    }

    #[test]
    fn a_shipment_captures_commits_and_is_marked_shipped() {
        let mut saga = confirmed();
        let fulfilment = Fulfilment {
            shipments: vec![shipment(1, "MUG", 2, ShipmentStatus::Pending)],
            returns: Vec::new(),
        };
        saga.take_in(&fulfilment, 3);
        assert_eq!(saga.state, SagaState::Fulfilling);
        // Taken in once: the same version again changes nothing.
        saga.take_in(&fulfilment, 3);
        assert_eq!(saga.shipments.len(), 1);
        let id = uuid::Uuid::from_u128(1).to_string();
        let asked = drive(&mut saga, approving_captures);
        assert_eq!(
            asked,
            vec![
                Action::Capture {
                    shipment_id: id.clone(),
                    attempt: 1,
                    amount_cents: 200
                },
                Action::CommitShipment {
                    shipment_id: id.clone(),
                    sku: "MUG".into(),
                    quantity: 2
                },
                Action::MarkShipped { shipment_id: id },
            ]
        );
        assert_eq!(saga.state, SagaState::Confirmed);
        assert_eq!(saga.captured_cents(), 200);
        assert_eq!(saga.lines[0].stock, Stock::Committed);
        // A cancel now releases only what did not ship.
        saga.order_cancelled("the rest is not needed", at(20));
        let asked = drive(&mut saga, done);
        assert_eq!(
            asked,
            vec![
                Action::Refund,
                Action::ReleaseReservation { sku: "TEA".into() },
            ]
        );
    }

    fn approving_captures(action: &Action) -> Outcome {
        match action {
            Action::Capture { .. } | Action::Reauthorize { .. } => Outcome::Approved {
                reference: "cp".into(),
            },
            _ => Outcome::Done,
        }
    }

    #[test]
    fn an_expired_authorization_is_renewed_for_what_is_left_and_a_declined_one_fails_the_shipment()
    {
        let mut saga = confirmed();
        saga.take_in(
            &Fulfilment {
                shipments: vec![shipment(1, "MUG", 2, ShipmentStatus::Pending)],
                returns: Vec::new(),
            },
            3,
        );
        let mut expired_once = false;
        let asked = drive(&mut saga, |action| match action {
            Action::Capture { .. } if !expired_once => {
                expired_once = true;
                Outcome::Expired
            }
            other => approving_captures(other),
        });
        assert_eq!(
            asked[1],
            Action::Reauthorize {
                attempt: 2,
                amount_cents: 400
            }
        );
        assert!(matches!(asked[2], Action::Capture { attempt: 2, .. }));
        assert_eq!(saga.attempt, 2);

        // The next authorization is declined: the shipment fails with why.
        saga.charge = Charge::Expired;
        saga.take_in(
            &Fulfilment {
                shipments: vec![shipment(2, "TEA", 2, ShipmentStatus::Pending)],
                returns: Vec::new(),
            },
            5,
        );
        let asked = drive(&mut saga, |action| match action {
            Action::Reauthorize { .. } => Outcome::Declined {
                reason: "card declined".into(),
            },
            other => approving_captures(other),
        });
        assert!(matches!(asked.last(), Some(Action::FailShipment { .. })));
        assert_eq!(saga.shipments[1].stage, ShipmentStage::Failed);
        assert_eq!(
            saga.shipments[1].failure.as_deref(),
            Some("a new authorization was declined: card declined")
        );
    }

    #[test]
    fn authorizations_that_keep_expiring_fail_the_shipment_instead_of_holding_ever_more() {
        let mut saga = confirmed();
        saga.take_in(
            &Fulfilment {
                shipments: vec![shipment(1, "MUG", 2, ShipmentStatus::Pending)],
                returns: Vec::new(),
            },
            3,
        );
        // Every authorization has expired by the time its capture comes.
        let asked = drive(&mut saga, |action| match action {
            Action::Capture { .. } => Outcome::Expired,
            other => approving_captures(other),
        });
        let authorized = asked
            .iter()
            .filter(|action| matches!(action, Action::Reauthorize { .. }))
            .count();
        assert_eq!(authorized as u32, MAX_EXPIRIES_IN_A_ROW - 1, "{asked:#?}");
        assert!(matches!(asked.last(), Some(Action::FailShipment { .. })));
        assert_eq!(saga.shipments[0].stage, ShipmentStage::Failed);
        assert_eq!(
            saga.shipments[0].failure.as_deref(),
            Some("3 authorizations in a row expired before the capture")
        );
        assert_eq!(saga.captured_cents(), 0);
        assert_eq!(saga.state, SagaState::Confirmed);

        // The next shipment gets tries of its own, and a capture that goes
        // through starts the count again.
        saga.take_in(
            &Fulfilment {
                shipments: vec![
                    shipment(1, "MUG", 2, ShipmentStatus::Failed),
                    shipment(2, "TEA", 2, ShipmentStatus::Pending),
                ],
                returns: Vec::new(),
            },
            6,
        );
        let mut expiries = 0;
        drive(&mut saga, |action| match action {
            Action::Capture { .. } if expiries < MAX_EXPIRIES_IN_A_ROW - 1 => {
                expiries += 1;
                Outcome::Expired
            }
            other => approving_captures(other),
        });
        assert_eq!(saga.shipments[1].stage, ShipmentStage::Shipped);
        assert_eq!(saga.expired_in_a_row, 0);
    }

    #[test]
    fn a_received_return_is_refunded_from_the_captures_and_restocked() {
        let mut saga = confirmed();
        saga.take_in(
            &Fulfilment {
                shipments: vec![
                    shipment(1, "MUG", 1, ShipmentStatus::Pending),
                    shipment(2, "MUG", 1, ShipmentStatus::Pending),
                ],
                returns: Vec::new(),
            },
            3,
        );
        drive(&mut saga, approving_captures);
        let received = received_mugs(9, 2);
        saga.take_in(
            &Fulfilment {
                shipments: Vec::new(),
                returns: vec![received],
            },
            9,
        );
        let asked = drive(&mut saga, done);
        let refunds: Vec<i64> = asked
            .iter()
            .filter_map(|action| match action {
                Action::RefundReturn { amount_cents, .. } => Some(*amount_cents),
                _ => None,
            })
            .collect();
        assert_eq!(refunds, [100, 100], "split over the two captures");
        assert!(matches!(
            asked.last(),
            Some(Action::Restock { quantity: 2, .. })
        ));
        assert!(
            saga.captures
                .iter()
                .all(|c| c.refunded_cents == c.amount_cents)
        );
        assert_eq!(saga.state, SagaState::Confirmed);
    }

    #[test]
    fn a_shipment_worth_nothing_ships_without_a_capture() {
        let mut saga = confirmed();
        let mut free = shipment(1, "MUG", 1, ShipmentStatus::Pending);
        free.value_cents = 0;
        saga.take_in(
            &Fulfilment {
                shipments: vec![free],
                returns: Vec::new(),
            },
            3,
        );
        let asked = drive(&mut saga, done);
        assert!(
            asked.iter().all(|a| !matches!(a, Action::Capture { .. })),
            "{asked:?}"
        );
        assert!(matches!(asked.last(), Some(Action::MarkShipped { .. })));
    }

    #[test]
    fn a_shipment_after_a_declined_authorization_asks_for_a_new_one() {
        let mut saga = confirmed();
        saga.charge = Charge::Declined;
        saga.take_in(
            &Fulfilment {
                shipments: vec![shipment(3, "MUG", 1, ShipmentStatus::Pending)],
                returns: Vec::new(),
            },
            3,
        );
        assert_eq!(
            saga.next_action(),
            Some(Action::Reauthorize {
                attempt: 2,
                amount_cents: 400
            })
        );
    }

    #[test]
    fn work_that_comes_after_an_abandon_is_flagged_and_taken_in_once() {
        let mut saga = confirmed();
        let first = shipment(1, "MUG", 1, ShipmentStatus::Pending);
        saga.take_in(
            &Fulfilment {
                shipments: vec![first.clone()],
                returns: Vec::new(),
            },
            3,
        );
        assert_eq!(saga.state, SagaState::Fulfilling);
        assert!(saga.abandon("dave", "settled by hand", at(5)));
        saga.take_in(
            &Fulfilment {
                shipments: vec![first, shipment(2, "TEA", 1, ShipmentStatus::Pending)],
                returns: Vec::new(),
            },
            4,
        );
        assert_eq!(saga.order_version, 4, "taken in: the saga can be done");
        assert!(saga.next_action().is_none());
        assert!(saga.needs_attention(5));
        // Abandoning again says the operator settled it.
        assert!(saga.abandon("dave", "shipped by hand", at(6)));
        assert!(!saga.needs_attention(5));
    }

    #[test]
    fn a_return_of_an_order_charged_whole_stays_flagged_until_an_operator_settles_it() {
        let mut saga = OrderSaga::start_charging(&placed(&["MUG"]), "c", at(0));
        drive(&mut saga, approving);
        assert_eq!(saga.state, SagaState::Confirmed);
        let received = received_mugs(9, 1);
        saga.take_in(
            &Fulfilment {
                shipments: Vec::new(),
                returns: vec![received],
            },
            5,
        );
        // The units go back; the refund is the operator's, and the flag
        // outlives every step that goes through.
        let asked = drive(&mut saga, done);
        assert!(matches!(asked.as_slice(), [Action::Restock { .. }]));
        assert_eq!(saga.state, SagaState::Confirmed);
        assert!(saga.needs_attention(5));
        assert!(saga.abandon("dave", "refunded at the provider", at(9)));
        assert!(!saga.needs_attention(5));
    }
}
