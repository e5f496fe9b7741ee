//! The OpenAPI schemas of the values the routes parse: the same rules as the
//! domain's `parse` functions, written as JSON Schema so that a client (or a
//! fuzzer) knows exactly which requests are valid. Unit tests hold each
//! pattern against the parser it describes.

use domain::order::{MAX_LINE_QUANTITY, MAX_SKU_QUANTITY};
use domain::product::MAX_STOCK_ADDITION;
use domain::values::{
    AddressLine, Carrier, Country, Currency, CustomerId, Email, Money, PostalCode, ProductName,
    Reason, Sku, TrackingNumber,
};
use serde_json::json;
use utoipa::openapi::schema::{ObjectBuilder, OneOf, OneOfBuilder, SchemaFormat, SchemaType, Type};
use utoipa::openapi::{KnownFormat, Object};

/// `Sku::parse`.
pub const SKU_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";
/// `PaymentMethod::parse`.
pub const PAYMENT_METHOD_PATTERN: &str = "^[A-Za-z0-9_]{1,64}$";
/// The `Idempotency-Key` header: visible ASCII, spaces inside only (HTTP
/// strips them at either end).
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]([ -~]*[!-~])?$";
/// The `If-Match` header: one version in quotes, as sent in `ETag` (the
/// quotes may be left out), or `*`.
pub const IF_MATCH_PATTERN: &str = "^(\\*|\"[0-9]{1,19}\"|[0-9]{1,19})$";
/// The `ETag` header of an answer.
pub const ETAG_PATTERN: &str = "^\"[0-9]{1,19}\"$";

/// Text of bounded length with no control character and at least one
/// character that is not white space (as `str::trim` counts it).
const BOUNDED_TEXT_PATTERN: &str = concat!(
    "^[^\\u0000-\\u001f\\u007f-\\u009f]*",
    "[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]",
    "[^\\u0000-\\u001f\\u007f-\\u009f]*$"
);

fn string(pattern: &str, max_length: usize, example: &str, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .min_length(Some(1))
        .max_length(Some(max_length))
        .examples([json!(example)])
        .description(Some(description))
}

fn bounded_text(max_chars: usize, example: &str, description: &str) -> ObjectBuilder {
    string(BOUNDED_TEXT_PATTERN, max_chars, example, description)
}

fn integer(min: i64, max: i64, example: i64, description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(min))
        .maximum(Some(max))
        .examples([json!(example)])
        .description(Some(description))
        .build()
}

pub fn sku() -> Object {
    string(
        SKU_PATTERN,
        Sku::MAX_LEN,
        "MUG-01",
        "The product's id: 1–64 characters of `A-Z a-z 0-9 - _ .`.",
    )
    .build()
}

pub fn product_name() -> Object {
    bounded_text(
        ProductName::MAX_CHARS,
        "Enamel mug",
        "1–200 characters, not blank, without control characters.",
    )
    .build()
}

pub fn price_cents() -> Object {
    integer(
        0,
        Money::MAX_PRICE_CENTS,
        1250,
        "Unit price in minor units (cents), 0 to 10,000,000,000.",
    )
}

pub fn currency() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(Currency::CODES.iter().copied()))
        .examples([json!("EUR")])
        .description(Some("An ISO 4217 code in active use, in upper case."))
        .build()
}

pub fn stock_quantity() -> Object {
    integer(
        1,
        i64::from(MAX_STOCK_ADDITION),
        25,
        "Units received, 1 to 1,000,000.",
    )
}

pub fn new_price_cents() -> Object {
    integer(
        1,
        Money::MAX_PRICE_CENTS,
        1490,
        "The new unit price in minor units (cents) of the product's currency, 1 to \
         10,000,000,000; it must differ from the current one.",
    )
}

pub fn stock_delta() -> utoipa::openapi::Schema {
    let max = i64::from(MAX_STOCK_ADDITION);
    let one_of: OneOf = OneOfBuilder::new()
        .item(integer(-max, -1, -2, "Units taken off what is on hand."))
        .item(integer(1, max, 3, "Units added to what is on hand."))
        .description(Some(
            "Units on hand are corrected by this many: not zero, -1,000,000 to 1,000,000.",
        ))
        .build();
    utoipa::openapi::Schema::OneOf(one_of)
}

pub fn line_quantity() -> Object {
    integer(
        1,
        i64::from(MAX_LINE_QUANTITY),
        2,
        "1 to 10,000. Lines naming the same SKU are added together into one line of the order.",
    )
}

pub fn item_quantity() -> Object {
    integer(
        1,
        i64::from(MAX_SKU_QUANTITY),
        1,
        "At least 1, and at most the units of the SKU the rules leave (ordered and not shipped, \
         delivered and not returned).",
    )
}

pub fn carrier() -> Object {
    bounded_text(
        Carrier::MAX_CHARS,
        "DHL",
        "Who carries the shipment: 1–100 characters, not blank, without control characters.",
    )
    .build()
}

pub fn tracking_number() -> Object {
    bounded_text(
        TrackingNumber::MAX_CHARS,
        "JD014600006281230704",
        "The carrier's number for the shipment: 1–100 characters, not blank, without control \
         characters.",
    )
    .build()
}

fn uuid(description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .description(Some(description))
        .build()
}

pub fn shipment_id() -> Object {
    uuid("The shipment's id, a UUID, as its request answered it.")
}

pub fn return_id() -> Object {
    uuid("The return's id, a UUID, as its request answered it.")
}

pub fn customer_id() -> Object {
    bounded_text(
        CustomerId::MAX_CHARS,
        "customer-42",
        "The shop's id for the customer, 1–128 characters, not blank, without control characters. \
         Optional (null or absent means the token's `sub`); when sent it must equal `sub` (403 \
         otherwise), unless the caller is an administrator placing an order for a customer.",
    )
    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
    .build()
}

pub fn payment_method() -> Object {
    string(
        PAYMENT_METHOD_PATTERN,
        64,
        "tok_visa",
        "A payment token for the gateway, 1–64 characters of `A-Z a-z 0-9 _`, such as `tok_visa`.",
    )
    .build()
}

pub fn reason() -> Object {
    bounded_text(
        Reason::MAX_CHARS,
        "customer changed their mind",
        "1–500 characters, not blank, without control characters.",
    )
    .build()
}

/// `Email::parse`: a local part of 1–64 and a domain of 1–253 characters,
/// neither with `@`, white space or control characters.
pub const EMAIL_PATTERN: &str =
    "^[^@\\s\\u0000-\\u001f\\u007f-\\u009f]{1,64}@[^@\\s\\u0000-\\u001f\\u007f-\\u009f]{1,253}$";

pub fn email() -> Object {
    string(
        EMAIL_PATTERN,
        Email::MAX_LEN,
        "ada@example.com",
        "Optional (null or absent): where the customer hears about the order, of the shape \
         local@domain, at most 254 characters. Only the customer and administrators read it back.",
    )
    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
    .build()
}

pub fn address_line() -> Object {
    bounded_text(
        AddressLine::MAX_CHARS,
        "1 Main Street",
        "1–200 characters, not blank, without control characters.",
    )
    .build()
}

pub fn optional_address_line() -> Object {
    bounded_text(
        AddressLine::MAX_CHARS,
        "Flat 2",
        "Optional (null or absent); otherwise 1–200 characters, not blank, without control \
         characters.",
    )
    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
    .build()
}

pub fn postal_code() -> Object {
    bounded_text(
        PostalCode::MAX_CHARS,
        "10115",
        "1–20 characters, not blank, without control characters.",
    )
    .build()
}

pub fn country() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(Country::CODES.iter().copied()))
        .examples([json!("DE")])
        .description(Some("An ISO 3166-1 alpha-2 code, in upper case."))
        .build()
}

pub fn idempotency_key() -> Object {
    string(
        IDEMPOTENCY_KEY_PATTERN,
        255,
        "order-2024-0042",
        "1–255 visible ASCII characters (spaces inside only).",
    )
    .build()
}

pub fn if_match() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(IF_MATCH_PATTERN))
        .examples([json!("\"3\"")])
        .description(Some(
            "A version in quotes, as sent in `ETag` (or without them), or `*` for any.",
        ))
        .build()
}

pub fn placed() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["PLACED"]))
        .build()
}

pub fn order_id() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .description(Some(
            "The order's id, a UUID. Another customer's order answers 404, as an unknown one does.",
        ))
        .build()
}

pub fn retry_after() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .description(Some("Seconds to wait before the next request."))
        .build()
}

pub fn position() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[A-Za-z0-9_-]{1,800}$"))
        .description(Some(
            "Where the command left its resource: pass it as GraphQL's `afterPosition` to read \
             a view that includes it. Opaque; also in the X-Event-Position header.",
        ))
        .build()
}

pub fn etag() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(ETAG_PATTERN))
        .examples([json!("\"1\"")])
        .build()
}

#[cfg(test)]
mod tests {
    use domain::values::{CustomerId, PaymentMethod, ProductName, Reason, Sku};
    use proptest::prelude::*;
    use regex::Regex;

    use super::*;

    fn matches(pattern: &str, max_chars: usize, value: &str) -> bool {
        Regex::new(pattern)
            .expect("pattern compiles")
            .is_match(value)
            && value.chars().count() <= max_chars
    }

    /// Characters near every boundary the rules draw: ASCII punctuation,
    /// controls, Unicode spaces, the byte-order mark, letters of other scripts.
    fn tricky() -> impl Strategy<Value = String> {
        let chars = prop::sample::select(vec![
            'a', 'Z', '0', '9', '-', '_', '.', ' ', '!', '~', '"', '*', '/', '\t', '\n', '\r',
            '\u{0}', '\u{1f}', '\u{7f}', '\u{85}', '\u{9f}', '\u{a0}', '\u{1680}', '\u{2000}',
            '\u{200b}', '\u{2028}', '\u{3000}', '\u{feff}', 'é', '日', '😀', '@',
        ]);
        prop::collection::vec(chars, 0..70).prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #[test]
        fn each_pattern_accepts_exactly_what_its_parser_accepts(value in tricky()) {
            prop_assert_eq!(matches(SKU_PATTERN, 64, &value), Sku::parse(&value).is_ok());
            prop_assert_eq!(
                matches(PAYMENT_METHOD_PATTERN, 64, &value),
                PaymentMethod::parse(&value).is_ok()
            );
            for (max, parsed) in [
                (ProductName::MAX_CHARS, ProductName::parse(&value).is_ok()),
                (CustomerId::MAX_CHARS, CustomerId::parse(&value).is_ok()),
                (Reason::MAX_CHARS, Reason::parse(&value).is_ok()),
                (AddressLine::MAX_CHARS, AddressLine::parse(&value).is_ok()),
                (PostalCode::MAX_CHARS, PostalCode::parse(&value).is_ok()),
            ] {
                prop_assert_eq!(matches(BOUNDED_TEXT_PATTERN, max, &value), parsed, "{:?}", value);
            }
            prop_assert_eq!(
                matches(EMAIL_PATTERN, Email::MAX_LEN, &value),
                Email::parse(&value).is_ok(),
                "{:?}",
                value
            );
        }
    }

    #[test]
    fn bounded_text_counts_characters_not_bytes() {
        let long = "日".repeat(ProductName::MAX_CHARS);
        assert!(matches(BOUNDED_TEXT_PATTERN, ProductName::MAX_CHARS, &long));
        assert!(ProductName::parse(&long).is_ok());
        assert!(ProductName::parse(&format!("{long}x")).is_err());
    }

    #[test]
    fn header_patterns_agree_with_the_header_parsers() {
        let if_match = Regex::new(IF_MATCH_PATTERN).unwrap();
        for (value, valid) in [
            ("\"3\"", true),
            ("*", true),
            ("\"0\"", true),
            ("\"9999999999999999999\"", true),
            ("\"10000000000000000000\"", false),
            ("\"+3\"", false),
            ("3", true),
            ("\"3", false),
            ("W/\"3\"", false),
            ("\"\"", false),
        ] {
            assert_eq!(if_match.is_match(value), valid, "{value}");
            assert_eq!(
                http_edge::extract::parse_if_match(value).is_ok(),
                valid,
                "{value}"
            );
        }
        let key = Regex::new(IDEMPOTENCY_KEY_PATTERN).unwrap();
        for (value, valid) in [
            ("k", true),
            ("a b", true),
            ("order-42", true),
            ("", false),
            ("é", false),
        ] {
            assert_eq!(key.is_match(value), valid, "{value}");
        }
    }
}
