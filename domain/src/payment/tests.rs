use cqrs_es::test::TestFramework;
use uuid::Uuid;

use super::*;

type PaymentTest = TestFramework<Payment>;

fn order_id() -> OrderId {
    OrderId::new(Uuid::from_u128(9))
}

fn reason(text: &str) -> Reason {
    Reason::parse(text).unwrap()
}

fn request_command(amount_cents: i64) -> PaymentCommand {
    PaymentCommand::RequestCharge {
        order_id: order_id(),
        amount: Money {
            amount_cents,
            currency: Currency::parse("EUR").unwrap(),
        },
        payment_method: PaymentMethod::parse("tok_visa").unwrap(),
    }
}

fn requested() -> PaymentEvent {
    PaymentEvent::ChargeRequested(ChargeRequested {
        order_id: order_id(),
        amount_cents: 2999,
        currency: Currency::parse("EUR").unwrap(),
        payment_method: PaymentMethod::parse("tok_visa").unwrap(),
    })
}

fn approved() -> PaymentEvent {
    PaymentEvent::ChargeApproved(ChargeApproved {
        provider_reference: "ch_1".into(),
    })
}

fn declined() -> PaymentEvent {
    PaymentEvent::ChargeDeclined(ChargeDeclined {
        reason: reason("card declined"),
    })
}

fn refunded() -> PaymentEvent {
    PaymentEvent::PaymentRefunded(PaymentRefunded {
        amount_cents: 2999,
        reason: reason("order cancelled"),
    })
}

fn approve() -> PaymentCommand {
    PaymentCommand::ApproveCharge {
        provider_reference: "ch_1".into(),
    }
}

fn decline() -> PaymentCommand {
    PaymentCommand::DeclineCharge {
        reason: reason("card declined"),
    }
}

fn refund() -> PaymentCommand {
    PaymentCommand::RefundPayment {
        reason: reason("order cancelled"),
    }
}

#[test]
fn requesting_a_charge_records_amount_and_method() {
    PaymentTest::with(())
        .given_no_previous_events()
        .when(request_command(2999))
        .then_expect_events(vec![requested()]);
}

#[test]
fn requesting_a_second_charge_on_one_payment_is_refused() {
    PaymentTest::with(())
        .given(vec![requested()])
        .when(request_command(2999))
        .then_expect_error(PaymentError::AlreadyRequested);
}

#[test]
fn an_amount_outside_what_the_gateway_charges_is_refused() {
    for amount in [-1, MAX_CHARGE_CENTS + 1] {
        PaymentTest::with(())
            .given_no_previous_events()
            .when(request_command(amount))
            .then_expect_error(PaymentError::AmountOutOfRange);
    }
}

#[test]
fn approving_a_requested_charge_records_the_gateway_reference() {
    PaymentTest::with(())
        .given(vec![requested()])
        .when(approve())
        .then_expect_events(vec![approved()]);
}

#[test]
fn approving_without_a_reference_is_refused() {
    PaymentTest::with(())
        .given(vec![requested()])
        .when(PaymentCommand::ApproveCharge {
            provider_reference: " ".into(),
        })
        .then_expect_error(PaymentError::MissingProviderReference);
}

#[test]
fn approving_an_unknown_payment_is_refused() {
    PaymentTest::with(())
        .given_no_previous_events()
        .when(approve())
        .then_expect_error(PaymentError::NotFound);
}

#[test]
fn approving_twice_is_refused() {
    PaymentTest::with(())
        .given(vec![requested(), approved()])
        .when(approve())
        .then_expect_error(PaymentError::AlreadyApproved);
}

#[test]
fn approving_a_declined_charge_is_refused() {
    PaymentTest::with(())
        .given(vec![requested(), declined()])
        .when(approve())
        .then_expect_error(PaymentError::AlreadyDeclined);
}

#[test]
fn declining_a_requested_charge_records_the_reason() {
    PaymentTest::with(())
        .given(vec![requested()])
        .when(decline())
        .then_expect_events(vec![declined()]);
}

#[test]
fn declining_an_approved_charge_is_refused() {
    PaymentTest::with(())
        .given(vec![requested(), approved()])
        .when(decline())
        .then_expect_error(PaymentError::AlreadyApproved);
}

#[test]
fn declining_an_unknown_payment_is_refused() {
    PaymentTest::with(())
        .given_no_previous_events()
        .when(decline())
        .then_expect_error(PaymentError::NotFound);
}

#[test]
fn refunding_an_approved_charge_returns_the_whole_amount() {
    PaymentTest::with(())
        .given(vec![requested(), approved()])
        .when(refund())
        .then_expect_events(vec![refunded()]);
}

#[test]
fn refunding_a_charge_that_was_never_approved_is_refused() {
    for history in [vec![requested()], vec![requested(), declined()]] {
        PaymentTest::with(())
            .given(history)
            .when(refund())
            .then_expect_error(PaymentError::NotApproved);
    }
}

#[test]
fn refunding_twice_is_refused() {
    PaymentTest::with(())
        .given(vec![requested(), approved(), refunded()])
        .when(refund())
        .then_expect_error(PaymentError::AlreadyRefunded);
}

#[test]
fn answering_a_refunded_charge_is_refused() {
    PaymentTest::with(())
        .given(vec![requested(), approved(), refunded()])
        .when(approve())
        .then_expect_error(PaymentError::AlreadyRefunded);
}

#[test]
fn refunding_an_unknown_payment_is_refused() {
    PaymentTest::with(())
        .given_no_previous_events()
        .when(refund())
        .then_expect_error(PaymentError::NotFound);
}

#[test]
fn status_follows_the_events() {
    let mut payment = Payment::default();
    assert_eq!(payment.status(), None);
    payment.apply(requested());
    assert_eq!(payment.status(), Some(PaymentStatus::Requested));
    payment.apply(approved());
    assert_eq!(payment.status(), Some(PaymentStatus::Approved));
    payment.apply(refunded());
    assert_eq!(payment.status(), Some(PaymentStatus::Refunded));
    assert_eq!(payment.requested().unwrap().amount_cents, 2999);
}
