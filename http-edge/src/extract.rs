//! Extractors that turn a request into what a command needs, or into an
//! [`ApiError`] that says exactly what was wrong with it.
//!
//! Checks run in the order a client would fix them: the media type (415), the
//! size (413), JSON syntax (400), then the shape of the document (422).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::observe::RequestId;
use crate::problem::{ApiError, FieldError};

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A JSON request body of type `T`, with the request's fingerprint for
/// idempotency checks.
#[derive(Debug)]
pub struct JsonBody<T> {
    pub value: T,
    /// SHA-256 over the method, the path and the body's canonical JSON: two
    /// requests share it exactly when they mean the same thing. Only computed
    /// for requests that carry an `Idempotency-Key`, the only ones that need it.
    pub fingerprint: Option<String>,
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(request.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let keyed = request.headers().contains_key(IDEMPOTENCY_KEY);
        let (parts, body) = request.into_parts();
        let bytes = read_limited(&parts.headers, body, BODY_LIMIT).await?;
        let value = decode(&bytes)?;
        let fingerprint = if keyed {
            let document: Value = serde_json::from_slice(&bytes)
                .map_err(|error| ApiError::MalformedJson(error.to_string()))?;
            Some(fingerprint(&method, &path, &document))
        } else {
            None
        };
        Ok(Self { value, fingerprint })
    }
}

/// Bytes read and thrown away past a body's limit before the 413 goes out,
/// and how long that may take. A client that sends a body somewhat too large
/// without declaring its length (chunked) then finishes sending and reads the
/// answer, rather than finding the connection closed under its last writes.
const DRAIN_BYTES: usize = 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// A request body of at most `limit` bytes. A body declared (by its
/// `Content-Length`) larger than the limit and the drain allowance together
/// is refused before a byte of it is read; any other body over the limit is
/// read on, up to that allowance, and then refused: 413 either way.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::PayloadTooLarge { limit };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let allowance = limit.saturating_add(DRAIN_BYTES);
    if declared.is_some_and(|length| length > allowance as u64) {
        return Err(too_large());
    }
    let mut body = body;
    let mut bytes = Vec::new();
    let mut seen = loop {
        match body.frame().await {
            None => return Ok(Bytes::from(bytes)),
            Some(Err(_)) => {
                return Err(ApiError::MalformedJson("the body could not be read".into()));
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if bytes.len() + data.len() > limit {
                        break bytes.len() + data.len();
                    }
                    bytes.extend_from_slice(&data);
                }
            }
        }
    };
    drop(bytes);
    let drain = async {
        while seen <= allowance {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
                Some(Err(_)) | None => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    Err(too_large())
}

/// `application/json`, or any `application/*+json`, with or without parameters.
fn has_json_content_type(headers: &HeaderMap) -> bool {
    let Some(Ok(content_type)) = headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The request type straight from the body's bytes. Malformed JSON anywhere
/// in the body is a 400 even when a field before it is already wrong; every
/// command body is an object (serde would otherwise take an array positionally).
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let well_formed = || {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
            .map(drop)
            .map_err(|error| ApiError::MalformedJson(error.to_string()))
    };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        well_formed()?;
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => {
            deserializer
                .end()
                .map_err(|error| ApiError::MalformedJson(error.to_string()))?;
            Ok(value)
        }
        Err(error) if error.inner().classify() == serde_json::error::Category::Data => {
            well_formed()?;
            Err(shape_error(error))
        }
        Err(error) => Err(ApiError::MalformedJson(error.inner().to_string())),
    }
}

/// Turns serde's first complaint into a field error a client can act on.
fn shape_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let message = error.inner().to_string();
    let join = |name: &str| {
        if path == "." {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    let (field, message) = if let Some(name) = quoted("missing field `") {
        (join(&name), "is required".to_owned())
    } else if message.starts_with("unknown field `") {
        // The path already ends at the unknown field.
        (path, "is not a field of this request".to_owned())
    } else {
        let field = if path == "." { "body".to_owned() } else { path };
        (field, plain_types(&message))
    };
    ApiError::Validation(vec![FieldError::new(field, message)])
}

/// Serde names Rust types; clients know JSON types.
fn plain_types(message: &str) -> String {
    let mut text = message.to_owned();
    for (rust, json) in [
        ("expected i64", "expected an integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected i32", "expected an integer"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected an object"),
    ] {
        text = text.replace(rust, json);
    }
    if let Some(start) = text.find("expected struct ") {
        text.replace_range(start.., "expected an object");
    }
    text
}

/// An integer field as JSON Schema means it: `25`, `25.0` and `2.5e1` are
/// the same integer. Fractions are refused; integers beyond `i64` saturate,
/// so that the route's range check names the field and its range.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    struct Whole;

    impl serde::de::Visitor<'_> for Whole {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer")
        }

        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<i64, E> {
            Ok(value)
        }

        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<i64, E> {
            Ok(i64::try_from(value).unwrap_or(i64::MAX))
        }

        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<i64, E> {
            if value.is_finite() && value.fract() == 0.0 {
                // `as` saturates at the ends of i64's range.
                #[allow(clippy::cast_possible_truncation)]
                Ok(value as i64)
            } else {
                Err(E::invalid_type(serde::de::Unexpected::Float(value), &self))
            }
        }
    }

    deserializer.deserialize_any(Whole)
}

/// SHA-256 of method, path and canonical body, as lowercase hex.
pub fn fingerprint(method: &Method, path: &str, body: &Value) -> String {
    let mut canonical = Vec::with_capacity(256);
    write_canonical(body, &mut canonical);
    let mut hasher = Sha256::new();
    hasher.update(method.as_str().as_bytes());
    hasher.update(b"\n");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(&canonical);
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// JSON with object keys sorted and no whitespace, whatever order the client
/// sent them in.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(Value::String(key.clone()).to_string().as_bytes());
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend(scalar.to_string().as_bytes()),
    }
}

/// The one parameter of a route's path (a SKU, an order id). A segment that
/// cannot be decoded names nothing, so it answers 404 like an unknown one.
#[derive(Debug, Clone)]
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(id)| Self(id))
            .map_err(|rejection| {
                ApiError::not_found(format!(
                    "the path names no resource: {}",
                    rejection.body_text()
                ))
            })
    }
}

/// Two ids of a route's path, such as an order's and one of its
/// shipments'; a path that names none answers 404.
#[derive(Debug, Clone)]
pub struct PathIds(pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathIds {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path((first, second))| Self(first, second))
            .map_err(|rejection| {
                ApiError::not_found(format!(
                    "the path names no resource: {}",
                    rejection.body_text()
                ))
            })
    }
}

/// The headers a command route reads.
#[derive(Debug, Clone)]
pub struct CommandHeaders {
    /// From `X-Request-Id`, or generated; also the events' correlation id.
    pub request_id: String,
    /// From `Idempotency-Key` (1–255 visible ASCII characters).
    pub idempotency_key: Option<String>,
    /// From `If-Match: "<version>"`; `*` sets no version.
    pub if_match: Option<u64>,
}

impl<S: Send + Sync> FromRequestParts<S> for CommandHeaders {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_default();
        Ok(Self {
            request_id,
            idempotency_key: idempotency_key(&parts.headers)?,
            if_match: if_match(&parts.headers)?,
        })
    }
}

fn header_text<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> Result<Option<&'h str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value.to_str().map(Some).map_err(|_| ApiError::BadHeader {
            header: name,
            message: "must be visible ASCII".into(),
        }),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(key) = header_text(headers, IDEMPOTENCY_KEY)? else {
        return Ok(None);
    };
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(ApiError::BadHeader {
            header: "Idempotency-Key",
            message: "must be 1-255 visible ASCII characters".into(),
        });
    }
    Ok(Some(key.to_owned()))
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match header_text(headers, "if-match")? {
        None => Ok(None),
        Some(raw) => parse_if_match(raw.trim()),
    }
}

/// `*` (no version) or one version of 1–19 digits in quotes, as in `ETag`
/// (or without the quotes, as some clients send it).
pub fn parse_if_match(raw: &str) -> Result<Option<u64>, ApiError> {
    if raw == "*" {
        return Ok(None);
    }
    let digits = raw
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(raw);
    Some(digits)
        .filter(|digits| {
            (1..=19).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|version| version.parse::<u64>().ok())
        .map(Some)
        .ok_or(ApiError::BadHeader {
            header: "If-Match",
            message: "must be one version of 1-19 digits in quotes, as sent in ETag, such as \"3\""
                .into(),
        })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // Only deserialized.
    struct Sample {
        name: String,
        lines: Vec<Line>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // Only deserialized.
    struct Line {
        quantity: i64,
    }

    fn field_error(document: Value) -> FieldError {
        match decode::<Sample>(document.to_string().as_bytes()).unwrap_err() {
            ApiError::Validation(mut errors) => errors.remove(0),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn shape_errors_name_the_field_in_json_terms() {
        assert_eq!(
            field_error(json!({"lines": []})),
            FieldError::new("name", "is required")
        );
        assert_eq!(
            field_error(json!({"name": "x", "lines": [{"quantity": 1, "colour": "red"}]})),
            FieldError::new("lines[0].colour", "is not a field of this request")
        );
        let wrong_type = field_error(json!({"name": "x", "lines": [{"quantity": "two"}]}));
        assert_eq!(wrong_type.field, "lines[0].quantity");
        assert!(
            wrong_type.message.contains("expected an integer"),
            "{wrong_type:?}"
        );
        assert_eq!(
            field_error(json!([1])),
            FieldError::new("body", "must be a JSON object")
        );
        assert_eq!(field_error(json!(null)).field, "body");
    }

    #[test]
    fn malformed_json_is_reported_as_such_even_after_a_wrong_field() {
        for body in [&b"{\"name\": 1, "[..], b"[1, 2", b"", b"{} trailing"] {
            assert!(
                matches!(decode::<Sample>(body), Err(ApiError::MalformedJson(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn fingerprints_ignore_key_order_and_whitespace_but_not_values() {
        let a = fingerprint(
            &Method::POST,
            "/api/orders",
            &json!({"a": 1, "b": [1, {"c": 2, "d": 3}]}),
        );
        let b: Value = serde_json::from_str(r#"{ "b": [1, {"d": 3, "c": 2}], "a": 1 }"#).unwrap();
        assert_eq!(a, fingerprint(&Method::POST, "/api/orders", &b));
        assert_ne!(
            a,
            fingerprint(
                &Method::POST,
                "/api/orders",
                &json!({"a": 2, "b": [1, {"c": 2, "d": 3}]})
            )
        );
        assert_ne!(a, fingerprint(&Method::POST, "/api/other", &b));
    }

    #[test]
    fn json_media_types_are_recognised() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            has_json_content_type(&headers)
        };
        assert!(with("application/json"));
        assert!(with("application/json; charset=utf-8"));
        assert!(with("Application/JSON"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!has_json_content_type(&HeaderMap::new()));
    }

    #[test]
    fn if_match_takes_one_quoted_version() {
        let parse = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_MATCH, HeaderValue::from_static(value));
            if_match(&headers)
        };
        assert_eq!(parse("\"3\"").unwrap(), Some(3));
        assert_eq!(parse("*").unwrap(), None);
        assert_eq!(parse("3").unwrap(), Some(3));
        assert!(parse("\"3").is_err());
        assert!(parse("W/\"3\"").is_err());
        assert!(parse("\"three\"").is_err());
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        let parse = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("idempotency-key", HeaderValue::from_str(value).unwrap());
            idempotency_key(&headers)
        };
        assert_eq!(parse("order-42").unwrap().as_deref(), Some("order-42"));
        assert!(parse(&"k".repeat(255)).is_ok());
        assert!(parse(&"k".repeat(256)).is_err());
        assert!(parse("").is_err());
    }
}
