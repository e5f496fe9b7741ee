//! The platform's one HTTP edge, which every HTTP service of it uses (the
//! command API, the query API, the operator console and the payment
//! gateway):
//!
//! - `auth`: who is calling (bearer tokens), scopes, per-caller rate limits.
//! - `extract`: body and header parsing with precise problems (400/413/415/422).
//! - `problem`: every error as RFC 9457 problem+json.
//! - `observe`: request ids, spans, access logs, HTTP metrics.
//!
//! It knows no route, command or read model.

pub mod auth;
pub mod extract;
pub mod observe;
pub mod problem;
