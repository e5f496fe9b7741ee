//! Value types shared by the aggregates: identifiers, money and bounded text.
//!
//! Each type is parsed once, at the edge, with `parse`; holding one is proof that
//! the value is valid. Deserialization does *not* re-validate: values read back
//! from stored events were valid when they were written, and tightening a rule
//! later must never make history unreadable.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a raw value was not accepted. The message is written for the API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn invalid(message: impl Into<String>) -> InvalidValue {
    InvalidValue(message.into())
}

/// A product's stock keeping unit: 1–64 characters of `A-Z a-z 0-9 - _ .`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct Sku(String);

impl Sku {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.chars().all(valid_char) {
            return Err(invalid(
                "must be 1-64 characters of A-Z, a-z, 0-9, '-', '_' or '.'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! uuid_id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
            JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub fn new(id: Uuid) -> Self {
                Self(id)
            }

            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                Uuid::parse_str(raw)
                    .map(Self)
                    .map_err(|_| invalid("must be a UUID"))
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id_type!(
    /// An order's identifier, chosen by the write side when the order is placed.
    OrderId
);
uuid_id_type!(
    /// A shipment's identifier, chosen by the write side when it is asked for.
    ShipmentId
);
uuid_id_type!(
    /// A return's identifier, chosen by the write side when it is asked for.
    ReturnId
);

/// Text bounded in length, without control characters, and not blank.
fn bounded_text(raw: &str, max_chars: usize) -> Result<String, InvalidValue> {
    let count = raw.chars().count();
    if raw.trim().is_empty() {
        return Err(invalid("must not be blank"));
    }
    if count > max_chars {
        return Err(invalid(format!("must be at most {max_chars} characters")));
    }
    if raw.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    Ok(raw.to_owned())
}

macro_rules! bounded_text_type {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;

            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                bounded_text(raw, Self::MAX_CHARS).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

bounded_text_type!(
    /// A product's display name: 1–200 characters.
    ProductName,
    200
);
bounded_text_type!(
    /// The shop's identifier for the customer: 1–128 characters, opaque to the platform.
    CustomerId,
    128
);
bounded_text_type!(
    /// Why an order was cancelled: 1–500 characters.
    Reason,
    500
);
bounded_text_type!(
    /// Who carries a shipment (`DHL`, `UPS`, a courier's name): 1–100 characters.
    Carrier,
    100
);
bounded_text_type!(
    /// The carrier's number for a shipment: 1–100 characters.
    TrackingNumber,
    100
);

/// A payment method token understood by the payment gateway (`tok_visa`, ...):
/// 1–64 characters of `A-Z a-z 0-9 _`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct PaymentMethod(String);

impl PaymentMethod {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if raw.is_empty() || raw.len() > 64 || !raw.chars().all(valid_char) {
            return Err(invalid("must be 1-64 characters of A-Z, a-z, 0-9 or '_'"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An ISO 4217 currency code in active use, such as `EUR`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Currency(String);

/// Active ISO 4217 codes, sorted so that membership is a binary search.
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD",
    "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUP", "CVE",
    "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL",
    "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR",
    "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD",
    "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK",
    "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO",
    "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON",
    "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD",
    "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD",
    "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES", "VND", "VUV",
    "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

impl Currency {
    /// Every code [`Currency::parse`] accepts, sorted.
    pub const CODES: &'static [&'static str] = ISO_4217;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if ISO_4217.binary_search(&raw).is_err() {
            return Err(invalid(
                "must be an ISO 4217 currency code in upper case, such as EUR or USD",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An ISO 3166-1 alpha-2 country code, such as `DE` or `US`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Country(String);

/// The officially assigned ISO 3166-1 alpha-2 codes, sorted so that
/// membership is a binary search.
const ISO_3166_1: &[&str] = &[
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

impl Country {
    /// Every code [`Country::parse`] accepts, sorted.
    pub const CODES: &'static [&'static str] = ISO_3166_1;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if ISO_3166_1.binary_search(&raw).is_err() {
            return Err(invalid(
                "must be an ISO 3166-1 alpha-2 country code in upper case, such as DE or US",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

bounded_text_type!(
    /// A line of a postal address (a name, a street, a city): 1–200
    /// characters, not blank, without control characters.
    AddressLine,
    200
);
bounded_text_type!(
    /// A postal code: 1–20 characters, not blank, without control characters.
    PostalCode,
    20
);

/// Where an order's goods go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShippingAddress {
    pub name: AddressLine,
    pub line1: AddressLine,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<AddressLine>,
    pub city: AddressLine,
    pub postal_code: PostalCode,
    pub country: Country,
}

/// An e-mail address of the shape `local@domain`: at most 254 characters,
/// a local part of 1–64 and a domain of 1–253, neither with white space,
/// control characters or a second `@`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let shape = || invalid("must have the shape local@domain, at most 254 characters");
        if raw.chars().count() > Self::MAX_LEN {
            return Err(shape());
        }
        let (local, domain) = raw.split_once('@').ok_or_else(shape)?;
        let part = |text: &str, max: usize| {
            !text.is_empty()
                && text.chars().count() <= max
                && !text
                    .chars()
                    .any(|c| c == '@' || c.is_whitespace() || c.is_control())
        };
        if !part(local, 64) || !part(domain, 253) {
            return Err(shape());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An amount of money in minor units (cents) of one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Money {
    pub amount_cents: i64,
    pub currency: Currency,
}

impl Money {
    /// The largest unit price the platform accepts: 100 million major units.
    pub const MAX_PRICE_CENTS: i64 = 10_000_000_000;

    /// A price: zero or more, at most [`Money::MAX_PRICE_CENTS`].
    pub fn price(amount_cents: i64, currency: Currency) -> Result<Self, InvalidValue> {
        if !(0..=Self::MAX_PRICE_CENTS).contains(&amount_cents) {
            return Err(invalid(format!(
                "must be between 0 and {}",
                Self::MAX_PRICE_CENTS
            )));
        }
        Ok(Self {
            amount_cents,
            currency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_table_is_sorted_and_holds_every_assigned_code() {
        assert!(ISO_3166_1.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(ISO_3166_1.len(), 249);
        assert!(Country::parse("DE").is_ok());
        assert!(Country::parse("de").is_err());
        assert!(Country::parse("XX").is_err());
        assert!(Country::parse("DEU").is_err());
    }

    #[test]
    fn emails_have_one_at_between_two_parts_without_spaces() {
        for good in ["a@b", "first.last+tag@example.com", "x@localhost"] {
            assert!(Email::parse(good).is_ok(), "{good}");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        let too_long = format!("a@{}", "b".repeat(254));
        for bad in [
            "",
            "@",
            "a@",
            "@b",
            "ab",
            "a@b@c",
            "a b@c",
            "a@b c",
            "a\n@b",
            &long_local,
            &too_long,
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn currency_table_is_sorted_so_binary_search_works() {
        assert!(ISO_4217.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn skus_accept_the_documented_alphabet_and_length() {
        assert!(Sku::parse("ABC-123_x.y").is_ok());
        assert!(Sku::parse(&"a".repeat(64)).is_ok());
        assert!(Sku::parse(&"a".repeat(65)).is_err());
        assert!(Sku::parse("").is_err());
        assert!(Sku::parse("has space").is_err());
        assert!(Sku::parse("é").is_err());
    }

    #[test]
    fn currencies_must_be_known_upper_case_codes() {
        assert!(Currency::parse("EUR").is_ok());
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("XYZ").is_err());
        assert!(Currency::parse("EURO").is_err());
    }

    #[test]
    fn bounded_text_refuses_blank_long_and_control_characters() {
        assert!(Reason::parse("changed my mind").is_ok());
        assert!(Reason::parse("   ").is_err());
        assert!(Reason::parse(&"x".repeat(501)).is_err());
        assert!(Reason::parse("line\nbreak").is_err());
        assert!(CustomerId::parse(&"é".repeat(128)).is_ok());
    }

    #[test]
    fn prices_are_bounded() {
        let eur = Currency::parse("EUR").unwrap();
        assert!(Money::price(0, eur.clone()).is_ok());
        assert!(Money::price(-1, eur.clone()).is_err());
        assert!(Money::price(Money::MAX_PRICE_CENTS + 1, eur).is_err());
    }

    #[test]
    fn payment_methods_are_tokens() {
        assert!(PaymentMethod::parse("tok_visa").is_ok());
        assert!(PaymentMethod::parse("tok visa").is_err());
        assert!(PaymentMethod::parse("").is_err());
    }
}
