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

mod authorizations {
    //! Authorize, then capture in parts, void, expire, authorize again,
    //! refund in parts.

    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    use super::*;
    use crate::values::{ReturnId, ShipmentId};

    fn eur(amount_cents: i64) -> Money {
        Money {
            amount_cents,
            currency: Currency::parse("EUR").unwrap(),
        }
    }

    fn shipment(n: u128) -> ShipmentId {
        ShipmentId::new(Uuid::from_u128(n))
    }

    fn return_id(n: u128) -> ReturnId {
        ReturnId::new(Uuid::from_u128(100 + n))
    }

    fn authorize(attempt: u32, amount_cents: i64) -> PaymentCommand {
        PaymentCommand::RequestAuthorization {
            order_id: order_id(),
            attempt,
            amount: eur(amount_cents),
            payment_method: PaymentMethod::parse("tok_visa").unwrap(),
        }
    }

    fn authorized(attempt: u32) -> PaymentCommand {
        PaymentCommand::RecordAuthorization {
            attempt,
            provider_reference: format!("au_{attempt}"),
            expires_at: Some(Utc.with_ymd_and_hms(2026, 12, 8, 0, 0, 0).unwrap()),
        }
    }

    fn capture(n: u128, attempt: u32, amount_cents: i64) -> PaymentCommand {
        PaymentCommand::RecordCapture {
            shipment_id: shipment(n),
            attempt,
            amount_cents,
            provider_reference: format!("cp_{n}"),
        }
    }

    fn refund(n: u128, r: u128, amount_cents: i64) -> PaymentCommand {
        PaymentCommand::RecordRefund {
            shipment_id: shipment(n),
            return_id: return_id(r),
            amount_cents,
            provider_reference: format!("re_{r}"),
        }
    }

    fn run(payment: &mut Payment, command: PaymentCommand) -> Result<(), PaymentError> {
        for event in payment.decide(command)? {
            payment.apply(event);
        }
        Ok(())
    }

    fn held(total: i64) -> Payment {
        let mut payment = Payment::default();
        run(&mut payment, authorize(1, total)).unwrap();
        run(&mut payment, authorized(1)).unwrap();
        payment
    }

    #[test]
    fn an_authorization_holds_the_total_and_captures_take_it_in_parts() {
        let mut payment = Payment::default();
        run(&mut payment, authorize(1, 2999)).unwrap();
        assert_eq!(payment.status(), Some(PaymentStatus::Requested));
        assert_eq!(payment.authorized_cents(), 0, "asked is not held");
        run(&mut payment, authorized(1)).unwrap();
        assert_eq!(payment.status(), Some(PaymentStatus::Authorized));
        assert_eq!(payment.authorized_cents(), 2999);
        run(&mut payment, capture(1, 1, 1250)).unwrap();
        run(&mut payment, capture(2, 1, 1749)).unwrap();
        assert_eq!(payment.captured_cents(), 2999);
        assert_eq!(
            run(&mut payment, capture(3, 1, 1)),
            Err(PaymentError::ExceedsAuthorization {
                amount_cents: 1,
                capturable_cents: 0
            })
        );
        assert_eq!(
            run(&mut payment, capture(1, 1, 1)),
            Err(PaymentError::AlreadyCaptured)
        );
        assert!(!payment.is_charge());
    }

    #[test]
    fn nothing_is_captured_of_an_authorization_not_held() {
        let mut payment = Payment::default();
        run(&mut payment, authorize(1, 1000)).unwrap();
        assert_eq!(
            run(&mut payment, capture(1, 1, 100)),
            Err(PaymentError::AuthorizationIs {
                attempt: 1,
                status: AuthorizationStatus::Requested,
                why: "nothing can be captured from it"
            })
        );
        assert_eq!(
            run(&mut payment, capture(1, 2, 100)),
            Err(PaymentError::AuthorizationNotFound { attempt: 2 })
        );
        run(
            &mut payment,
            PaymentCommand::DeclineAuthorization {
                attempt: 1,
                reason: reason("card declined"),
            },
        )
        .unwrap();
        assert_eq!(payment.status(), Some(PaymentStatus::Declined));
        assert!(matches!(
            run(&mut payment, capture(1, 1, 100)),
            Err(PaymentError::AuthorizationIs { .. })
        ));
        assert!(matches!(
            run(
                &mut payment,
                PaymentCommand::VoidAuthorization { attempt: 1 }
            ),
            Err(PaymentError::AuthorizationIs { .. })
        ));
        // A charge command means nothing to a payment of authorizations.
        assert_eq!(
            run(&mut payment, approve()),
            Err(PaymentError::AlreadyRequested)
        );
        assert_eq!(
            run(&mut payment, request_command(1000)),
            Err(PaymentError::AlreadyRequested)
        );
    }

    #[test]
    fn an_expired_authorization_is_followed_by_one_for_what_is_left() {
        let mut payment = held(3000);
        run(&mut payment, capture(1, 1, 1000)).unwrap();
        assert!(matches!(
            run(&mut payment, authorize(2, 2000)),
            Err(PaymentError::AuthorizationOutOfTurn { attempt: 2, .. })
        ));
        run(
            &mut payment,
            PaymentCommand::ExpireAuthorization { attempt: 1 },
        )
        .unwrap();
        assert_eq!(payment.status(), Some(PaymentStatus::Expired));
        assert!(matches!(
            run(&mut payment, authorize(3, 2000)),
            Err(PaymentError::AuthorizationOutOfTurn { .. })
        ));
        assert_eq!(
            run(&mut payment, authorize(2, 2001)),
            Err(PaymentError::ExceedsAuthorization {
                amount_cents: 2001,
                capturable_cents: 2000
            })
        );
        run(&mut payment, authorize(2, 2000)).unwrap();
        run(&mut payment, authorized(2)).unwrap();
        run(&mut payment, capture(2, 2, 2000)).unwrap();
        assert_eq!(payment.captured_cents(), 3000);
        // The expired one counts what it gave, the live one what it holds.
        assert_eq!(payment.authorized_cents(), 1000 + 2000);
        assert_eq!(payment.authorization().unwrap().attempt, 2);
    }

    #[test]
    fn a_void_releases_what_was_not_captured() {
        let mut payment = held(3000);
        run(&mut payment, capture(1, 1, 1000)).unwrap();
        run(
            &mut payment,
            PaymentCommand::VoidAuthorization { attempt: 1 },
        )
        .unwrap();
        assert_eq!(payment.status(), Some(PaymentStatus::Voided));
        assert_eq!(
            payment.captured_cents(),
            1000,
            "what shipped stays captured"
        );
        assert!(matches!(
            run(&mut payment, capture(2, 1, 100)),
            Err(PaymentError::AuthorizationIs {
                status: AuthorizationStatus::Voided,
                ..
            })
        ));
    }

    #[test]
    fn refunds_give_a_capture_back_in_parts_never_more_than_it_took() {
        let mut payment = held(3000);
        run(&mut payment, capture(1, 1, 1000)).unwrap();
        run(&mut payment, refund(1, 1, 400)).unwrap();
        assert_eq!(
            run(&mut payment, refund(1, 1, 1)),
            Err(PaymentError::RefundExists)
        );
        assert_eq!(
            run(&mut payment, refund(1, 2, 601)),
            Err(PaymentError::ExceedsCapture {
                amount_cents: 601,
                refundable_cents: 600
            })
        );
        run(&mut payment, refund(1, 2, 600)).unwrap();
        assert_eq!(payment.refunded_cents(), 1000);
        assert_eq!(
            run(&mut payment, refund(2, 3, 1)),
            Err(PaymentError::CaptureNotFound)
        );
    }

    #[test]
    fn a_charge_of_the_previous_release_reads_as_an_authorization_captured_whole() {
        let mut payment = Payment::default();
        payment.apply(requested());
        payment.apply(approved());
        assert!(payment.is_charge());
        assert_eq!(
            (
                payment.authorized_cents(),
                payment.captured_cents(),
                payment.refunded_cents()
            ),
            (2999, 2999, 0)
        );
        assert_eq!(
            run(&mut payment, authorize(2, 1)),
            Err(PaymentError::AlreadyRequested)
        );
        payment.apply(refunded());
        assert_eq!(payment.refunded_cents(), 2999);
        assert_eq!(payment.status(), Some(PaymentStatus::Refunded));
    }

    /// Any answer of the gateway, in any order.
    #[derive(Debug, Clone)]
    enum Step {
        Authorize(u32, i64),
        Authorized(u32),
        Decline(u32),
        Expire(u32),
        Void(u32),
        Capture(u8, u32, i64),
        DeclineCapture(u8, u32),
        Refund(u8, u8, i64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u32..4, 0i64..4000).prop_map(|(a, m)| Step::Authorize(a, m)),
            (1u32..4).prop_map(Step::Authorized),
            (1u32..4).prop_map(Step::Decline),
            (1u32..4).prop_map(Step::Expire),
            (1u32..4).prop_map(Step::Void),
            (0u8..5, 1u32..4, 0i64..2000).prop_map(|(s, a, m)| Step::Capture(s, a, m)),
            (0u8..5, 1u32..4).prop_map(|(s, a)| Step::DeclineCapture(s, a)),
            (0u8..5, 0u8..5, 0i64..1500).prop_map(|(s, r, m)| Step::Refund(s, r, m)),
        ]
    }

    proptest! {
        /// Captures never add up to more than was held, nor to more than the
        /// order's total; refunds never to more than was captured, per
        /// capture or in all; a refusal changes nothing.
        #[test]
        fn money_never_leaves_its_bounds(steps in proptest::collection::vec(step(), 1..60)) {
            let mut payment = Payment::default();
            for step in steps {
                let command = match step {
                    Step::Authorize(attempt, amount) => authorize(attempt, amount),
                    Step::Authorized(attempt) => authorized(attempt),
                    Step::Decline(attempt) => PaymentCommand::DeclineAuthorization { attempt, reason: reason("no") },
                    Step::Expire(attempt) => PaymentCommand::ExpireAuthorization { attempt },
                    Step::Void(attempt) => PaymentCommand::VoidAuthorization { attempt },
                    Step::Capture(s, attempt, amount) => capture(u128::from(s), attempt, amount),
                    Step::DeclineCapture(s, attempt) => PaymentCommand::DeclineCapture {
                        shipment_id: shipment(u128::from(s)), attempt, reason: reason("refused"),
                    },
                    Step::Refund(s, r, amount) => refund(u128::from(s), u128::from(r), amount),
                };
                let before = payment.clone();
                if run(&mut payment, command).is_err() {
                    prop_assert_eq!(&payment, &before);
                }
                let total = payment.requested().map_or(0, |p| p.amount_cents);
                prop_assert!(payment.captured_cents() <= total);
                prop_assert!(payment.refunded_cents() <= payment.captured_cents());
                prop_assert!(payment.captured_cents() <= payment.authorized_cents());
                for authorization in payment.authorizations() {
                    prop_assert!(authorization.captured_cents <= authorization.amount_cents);
                    prop_assert!(authorization.captured_cents == 0
                        || authorization.status != AuthorizationStatus::Requested);
                }
                for capture in payment.captures() {
                    prop_assert!(capture.refunded_cents <= capture.amount_cents);
                }
            }
        }
    }
}
