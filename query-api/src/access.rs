//! Who may read what. The HTTP layer puts the request's [`Identity`] into
//! the GraphQL request (or, for subscriptions, the connection); resolvers ask
//! here. Products are public; orders need a caller with `orders` (their own)
//! or `admin` (every one). Another customer's order reads as a missing one.

use async_graphql::{Context, Error, ErrorExtensions};
use identity::{Caller, Identity};

/// Error code of a field that needs a caller when there is none.
pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
/// Error code of a field the caller's scopes do not reach.
pub const FORBIDDEN: &str = "FORBIDDEN";

/// The caller, whatever its scopes; an error without a token.
pub fn signed_in<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a Caller> {
    match ctx.data_opt::<Identity>() {
        Some(Identity::Caller(caller)) => Ok(caller),
        _ => Err(Error::new("this field needs Authorization: Bearer <token>")
            .extend_with(|_, e| e.set("code", UNAUTHENTICATED))),
    }
}

/// The caller, if it may read orders at all.
pub fn order_reader<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a Caller> {
    let caller = match ctx.data_opt::<Identity>() {
        Some(Identity::Caller(caller)) => caller,
        _ => {
            return Err(
                Error::new("reading orders needs Authorization: Bearer <token>")
                    .extend_with(|_, e| e.set("code", UNAUTHENTICATED)),
            );
        }
    };
    if !caller.may_order() {
        return Err(
            Error::new("reading orders needs the orders or the admin scope")
                .extend_with(|_, e| e.set("code", FORBIDDEN)),
        );
    }
    Ok(caller)
}
