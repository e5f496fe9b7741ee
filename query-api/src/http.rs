//! GraphQL over HTTP and WebSocket, with the platform's limits: the body is
//! read only up to its limit, batches are capped, the caller's identity goes
//! into every request, database errors are logged and never shown, and
//! subscription connections are counted per caller and in all.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextRequest, NextSubscribe,
};
use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql::{BatchRequest, BatchResponse, Data, ServerError};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::stream::BoxStream;
use http_edge::auth::{Charged, RateKey, TrustedProxies, peer_key};
use http_edge::problem::ApiError;
use identity::{AuthError, Authenticator, Identity};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::OrdersSchema;
use super::access::{FORBIDDEN, UNAUTHENTICATED};
use super::limits::GraphqlLimits;
use super::slots::Slots;

/// What the GraphQL handlers share.
#[derive(Clone)]
pub struct Endpoint {
    schema: OrdersSchema,
    authenticator: Authenticator,
    limits: GraphqlLimits,
    /// Open subscription connections in all.
    connections: Arc<Semaphore>,
    /// Signed-in connections per caller.
    per_caller: Slots<String>,
    /// Connections not signed in yet, per peer address.
    unsigned: Slots<RateKey>,
    access: Access,
}

/// Who may open a subscription connection, beyond its token: how a peer's
/// address is told (behind trusted proxies) and the origins of other sites
/// whose pages may open one.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub proxies: TrustedProxies,
    /// Origins (`https://shop.example`) besides this host's own.
    pub allowed_origins: Vec<String>,
}

impl Endpoint {
    pub fn new(
        schema: OrdersSchema,
        authenticator: Authenticator,
        limits: GraphqlLimits,
        access: Access,
    ) -> Self {
        Self {
            schema,
            authenticator,
            connections: Arc::new(Semaphore::new(limits.ws_connections)),
            limits,
            per_caller: Slots::default(),
            unsigned: Slots::default(),
            access,
        }
    }

    /// `POST /graphql`: one operation or a batch of them. Each operation of
    /// a batch counts against the caller's rate, all of them before any
    /// runs (the request itself paid for one).
    pub async fn execute(&self, request: Request) -> Response {
        let identity = request
            .extensions()
            .get::<Identity>()
            .cloned()
            .unwrap_or(Identity::Anonymous);
        let charged = request.extensions().get::<Charged>().cloned();
        let batch = match self.read(request).await {
            Ok(batch) => batch,
            Err(error) => return error.into_response(),
        };
        let size = match &batch {
            BatchRequest::Single(_) => 1,
            BatchRequest::Batch(requests) => requests.len(),
        };
        if size == 0 || size > self.limits.batch {
            return ApiError::invalid(
                "body",
                format!("a batch holds 1 to {} operations", self.limits.batch),
            )
            .into_response();
        }
        if let Some(charged) = charged
            && let Err(refused) = charged.more(u32::try_from(size - 1).unwrap_or(u32::MAX))
        {
            return refused.into_response();
        }
        let batch = batch.data(identity);
        let response = self.schema.execute_batch(batch).await;
        match refusal(&response) {
            Some(refusal) => refusal.into_response(),
            None => graphql_json(&response),
        }
    }

    /// The body as a GraphQL request, read no further than the limit.
    async fn read(&self, request: Request) -> Result<BatchRequest, ApiError> {
        let limit = self.limits.body_bytes;
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let (parts, body) = request.into_parts();
        let body = http_edge::extract::read_limited(&parts.headers, body, limit).await?;
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|error| ApiError::MalformedJson(error.to_string()))?;
        serde_json::from_value(value).map_err(|error| {
            ApiError::invalid(
                "body",
                format!("not a GraphQL request ({{\"query\", \"variables\", \"operationName\"}} or a list of them): {error}"),
            )
        })
    }

    /// `GET /graphql` with `Upgrade: websocket`: subscriptions over
    /// `graphql-transport-ws` (or the older `graphql-ws`). The token rides in
    /// `connection_init` as `{"Authorization": "Bearer ..."}`.
    pub async fn subscribe(&self, request: Request) -> Response {
        if let Err(refused) = self.origin_allowed(request.headers()) {
            return refused.into_response();
        }
        let charged = request.extensions().get::<Charged>().cloned();
        let peer = peer_key(&request, &self.access.proxies);
        let (mut parts, _body) = request.into_parts();
        let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &()).await {
            Ok(protocol) => protocol,
            Err(rejection) => return rejection.into_response(),
        };
        let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => upgrade,
            Err(rejection) => return rejection.into_response(),
        };
        // Until it signs in, a connection is its address's: a few at once
        // per address, so that no address holds the slots of every other.
        let Some(unsigned) = self
            .unsigned
            .take(peer, self.limits.ws_unsigned_per_address)
        else {
            return ApiError::TooManyRequests {
                retry_after: self.limits.ws_init_timeout.as_secs().max(1),
            }
            .into_response();
        };
        let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
            return ApiError::TooManyRequests { retry_after: 5 }.into_response();
        };
        let endpoint = self.clone();
        upgrade
            .protocols(ALL_WEBSOCKET_PROTOCOLS)
            .max_message_size(self.limits.body_bytes)
            .max_frame_size(self.limits.body_bytes)
            .on_upgrade(move |socket| async move {
                let _permit: OwnedSemaphorePermit = permit;
                let unsigned = Arc::new(Mutex::new(Some(unsigned)));
                let budget =
                    super::subscription::SubscriptionBudget::new(endpoint.limits.ws_subscriptions);
                let (init, budgeted) = (endpoint.clone(), budget.clone());
                let (signed_in, on_sign_in) = tokio::sync::oneshot::channel::<Option<u64>>();
                let signing_in = Arc::clone(&unsigned);
                let serve = GraphQLWebSocket::new(socket, endpoint.schema.clone(), protocol)
                    .on_connection_init(move |payload| async move {
                        let (data, expires_at) =
                            init.connection(payload, budgeted, charged).await?;
                        // Signed in: the connection is its caller's now.
                        signing_in
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .take();
                        let _ = signed_in.send(expires_at);
                        Ok(data)
                    })
                    .serve();
                tokio::pin!(serve);
                // Pings keep a connection alive, but not one that never signs
                // in: that would hold a slot of the total for nothing.
                let expires_at = tokio::select! {
                    () = &mut serve => return,
                    signed = tokio::time::timeout(endpoint.limits.ws_init_timeout, on_sign_in) => {
                        match signed {
                            Ok(Ok(expires_at)) => expires_at,
                            _ => {
                                tracing::info!("closing a WebSocket that did not sign in in time");
                                return;
                            }
                        }
                    }
                };
                tokio::select! {
                    () = &mut serve => {}
                    why = watch(&budget, endpoint.limits.ws_idle_timeout, expires_at) => {
                        tracing::info!(why, "closing a WebSocket");
                    }
                }
            })
    }

    /// Authenticates a connection from its `connection_init` payload and
    /// counts it against its caller.
    async fn connection(
        &self,
        payload: serde_json::Value,
        budget: super::subscription::SubscriptionBudget,
        charged: Option<Charged>,
    ) -> async_graphql::Result<(Data, Option<u64>)> {
        let header = payload
            .as_object()
            .and_then(|fields| {
                fields
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
            })
            .and_then(|(_, value)| value.as_str());
        let caller = match self
            .authenticator
            .authenticate(header.map(str::as_bytes))
            .await
        {
            Ok(caller) => caller,
            Err(AuthError::Missing) => {
                return Err(async_graphql::Error::new(
                    "connection_init needs {\"Authorization\": \"Bearer <token>\"}",
                ));
            }
            Err(error) => return Err(async_graphql::Error::new(error.to_string())),
        };
        let expires_at = caller.expires_at();
        let key = caller.customer().as_str().to_owned();
        let slot = self
            .per_caller
            .take(key.clone(), self.limits.ws_connections_per_caller)
            .ok_or_else(|| {
                async_graphql::Error::new(format!(
                    "this caller already has {} open connections",
                    self.limits.ws_connections_per_caller
                ))
            })?;
        let mut data = Data::default();
        data.insert(OverWebSocket);
        data.insert(Identity::Caller(caller));
        data.insert(slot);
        data.insert(budget);
        // Each subscription started on the connection counts against the
        // caller's rate, as a query would.
        if let Some(Charged { limiter, .. }) = charged {
            data.insert(Charged {
                limiter,
                key: RateKey::Customer(key),
            });
        }
        Ok((data, expires_at))
    }

    /// A browser's WebSocket from a page of another site is refused (`403`):
    /// only pages of this host, or of the origins allowed
    /// (`ws_allowed_origins`), open one. Clients that send no `Origin` (not
    /// browsers) are let through; they sign in with a token anyway.
    fn origin_allowed(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
        let host = headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let same_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|authority| !host.is_empty() && authority.eq_ignore_ascii_case(host));
        let allowed = self
            .access
            .allowed_origins
            .iter()
            .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin));
        if same_host || allowed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this page's origin may not open a subscription here".into(),
            ))
        }
    }
}

/// Returns why a signed-in connection should close: no subscription has run
/// on it for `idle` (a listening subscriber need not send anything), or the
/// token it signed in with expired (seconds since the epoch).
async fn watch(
    budget: &super::subscription::SubscriptionBudget,
    idle: Duration,
    expires_at: Option<u64>,
) -> &'static str {
    let mut tick =
        tokio::time::interval((idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)));
    let mut idle_since = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if expires_at.is_some_and(|exp| identity::now() >= exp) {
            return "its token expired";
        }
        if budget.running() > 0 {
            idle_since = tokio::time::Instant::now();
        } else if idle_since.elapsed() >= idle {
            return "no subscription ran on it for the idle timeout";
        }
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .is_some_and(|essence| {
            essence == "application/json"
                || essence == "application/graphql-response+json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        })
}

/// Marks the operations of a WebSocket connection.
pub(super) struct OverWebSocket;

/// What every operation passes through, over HTTP and over WebSocket alike:
/// database texts are scrubbed from its errors.
pub(super) struct Guard;

impl ExtensionFactory for Guard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Guard)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for Guard {
    // `request` wraps all of a request over HTTP, parse and validation
    // included; WebSocket streams bypass it and pass `subscribe` instead.
    async fn request(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextRequest<'_>,
    ) -> async_graphql::Response {
        let mut response = next.run(ctx).await;
        response.errors.iter_mut().for_each(scrub);
        response
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, async_graphql::Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, async_graphql::Response> {
        next.run(ctx, stream)
            .map(|mut response| {
                response.errors.iter_mut().for_each(scrub);
                response
            })
            .boxed()
    }
}

/// A database or driver error becomes a plain "unavailable": its text is
/// for the log, not the client.
fn scrub(error: &mut ServerError) {
    let from_database =
        error.source::<sqlx::Error>().is_some() || error.source::<Arc<sqlx::Error>>().is_some();
    if from_database {
        tracing::error!(error = %error.message, path = ?error.path, "GraphQL field failed");
        error.message = "the read side is unavailable; retry later".into();
        error.source = None;
        let mut extensions = async_graphql::ErrorExtensionValues::default();
        extensions.set("code", "UNAVAILABLE");
        error.extensions = Some(extensions);
    }
}

/// A field that needs a caller (401) or a scope (403) fails the whole request.
fn refusal(response: &BatchResponse) -> Option<ApiError> {
    let errors: Vec<&ServerError> = match response {
        BatchResponse::Single(one) => one.errors.iter().collect(),
        BatchResponse::Batch(many) => many.iter().flat_map(|one| one.errors.iter()).collect(),
    };
    let has = |wanted: &str| {
        errors.iter().copied().find(|error| {
            matches!(
                error.extensions.as_ref().and_then(|e| e.get("code")),
                Some(async_graphql::Value::String(code)) if code == wanted
            )
        })
    };
    if has(UNAUTHENTICATED).is_some() {
        return Some(ApiError::Unauthenticated(None));
    }
    has(FORBIDDEN).map(|error| ApiError::Forbidden(error.message.clone()))
}

fn graphql_json(response: &BatchResponse) -> Response {
    match serde_json::to_vec(response) {
        Ok(body) => {
            let mut answer = Response::new(Body::from(body));
            answer.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            answer
        }
        Err(error) => {
            tracing::error!(%error, "cannot serialize a GraphQL response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
