//! Building the API from its configuration: the state, the router, the
//! listener. `orders run` and the tests start the API the same way.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::routes::{meta, orders, products};
pub use crate::state::ApiConfig;
use crate::state::AppState;
use http_edge::auth::{Limiter, limited, limiter};
use http_edge::extract::BODY_LIMIT;
use http_edge::problem::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Order platform command API",
        description = "Commands over REST. Every accepted command is committed as events before \
                       the answer; reads are served over GraphQL. Errors are RFC 9457 problem+json.",
    ),
    tags(
        (name = "products", description = "Catalogue and stock"),
        (name = "orders", description = "Placing and cancelling orders"),
    ),
    components(schemas(http_edge::problem::Problem, http_edge::problem::FieldError))
)]
struct ApiDoc;

/// What the route attributes cannot say: the `bearer` security scheme they
/// name, the format of every `ETag`, and the `X-Request-Id` and `X-Trace-Id`
/// every answer carries.
fn complete(mut openapi: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::header::Header;
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    use utoipa::openapi::{RefOr, Type};

    let mut request_id =
        Header::new(utoipa::openapi::ObjectBuilder::new().schema_type(Type::String));
    request_id.description =
        Some("The request's id: the client's X-Request-Id when usable, a new one otherwise".into());
    let mut trace_id = Header::new(
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[0-9a-f]{32}$")),
    );
    trace_id.description = Some(
        "The trace the request is part of (the caller's traceparent's, or a new one): \
         open it in the tracing backend"
            .into(),
    );
    let mut position = Header::new(crate::routes::schema::position());
    position.description = Some(
        "Where the command left its resource (the body's `position`): GraphQL's `afterPosition`"
            .into(),
    );
    let mut etag = Header::new(crate::routes::schema::etag());
    etag.description = Some("The resource's version, quoted".into());
    for item in openapi.paths.paths.values_mut() {
        for operation in item.post.iter_mut() {
            for (status, response) in operation.responses.responses.iter_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                if status.starts_with('2') {
                    response
                        .headers
                        .insert("X-Event-Position".into(), RefOr::T(position.clone()));
                }
                if response.headers.contains_key("ETag") {
                    response
                        .headers
                        .insert("ETag".into(), RefOr::T(etag.clone()));
                }
                response
                    .headers
                    .insert("X-Request-Id".into(), RefOr::T(request_id.clone()));
                response
                    .headers
                    .insert("X-Trace-Id".into(), RefOr::T(trace_id.clone()));
            }
        }
    }
    {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "A JWT (RFC 9068) signed with the configured HS256 secret or a key of the \
                 configured JWKS. `sub` is the customer id; `scope` holds `orders` (one's own \
                 orders) and/or `admin` (everything); `exp` is required.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
    openapi
}

fn command_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(products::create::create_product))
        .routes(routes!(products::add_stock::add_stock))
        .routes(routes!(products::adjust_stock::adjust_stock))
        .routes(routes!(products::change_price::change_price))
        .routes(routes!(products::discontinue::discontinue))
        .routes(routes!(products::reactivate::reactivate))
        .routes(routes!(orders::place::place_order))
        .routes(routes!(orders::cancel::cancel_order))
        .routes(routes!(orders::fulfilment::request_shipment))
        .routes(routes!(orders::fulfilment::mark_delivered))
        .routes(routes!(orders::fulfilment::request_return))
        .routes(routes!(orders::fulfilment::receive_return))
}

/// The OpenAPI document of the command routes, as served at `/api/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    complete(command_routes().into_openapi())
}

/// The whole HTTP surface: commands, health, metrics, documentation, and
/// `extra` routes served beside them (the GraphQL API) with the same request
/// ids, metrics, authentication, limits and problem answers for unknown
/// routes. Every request counts against its caller's rate: commands, GraphQL
/// and everything else (health, readiness, metrics, documents, unknown
/// routes) each by a limiter of their own. Also returns the rate limiters,
/// whose idle callers [`forget_idle_callers`](http_edge::auth::forget_idle_callers)
/// forgets.
pub fn router(state: AppState, config: &ApiConfig, extra: Router) -> (Router, Vec<Limiter>) {
    let request_timeout = config.request_timeout;
    let (commands, document) = command_routes().split_for_parts();
    let command_limiter = limiter("command", config.command_rate, &config.trusted_proxies);
    let graphql_limiter = limiter("GraphQL", config.graphql_rate, &config.trusted_proxies);
    let meta_limiter = limiter("service", config.meta_rate, &config.trusted_proxies);
    let commands = limited(
        commands.layer(axum::middleware::from_fn(http_edge::auth::refuse_rejected)),
        command_limiter.as_ref(),
    );
    let extra = limited(
        extra.layer(axum::middleware::from_fn(http_edge::auth::refuse_rejected)),
        graphql_limiter.as_ref(),
    );
    let limiters = command_limiter
        .into_iter()
        .chain(graphql_limiter)
        .chain(meta_limiter.clone())
        .collect();
    let document: Arc<str> = complete(document)
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".into())
        .into();
    let meta = Router::new()
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz))
        .route("/metrics", get(meta::admin_metrics))
        .route(
            "/api/openapi.json",
            get(move || {
                let document = Arc::clone(&document);
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        document.to_string(),
                    )
                }
            }),
        )
        .route("/problems/{slug}", get(meta::problem_type))
        .fallback(meta::no_route)
        .with_state(state.clone());
    let meta = limited(meta, meta_limiter.as_ref());
    let router = Router::new()
        .merge(commands)
        .with_state(state)
        .merge(extra)
        .merge(meta)
        .method_not_allowed_fallback(meta::wrong_method)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            config.authenticator.clone(),
            http_edge::auth::identify,
        ))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                http_edge::observe::time_limit(request_timeout, request, next)
            },
        ))
        .layer(CatchPanicLayer::custom(panicked))
        .layer(axum::middleware::from_fn(http_edge::observe::observe));
    (router, limiters)
}

/// A handler panicked: answer 500 like any other unexpected failure.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned());
    ApiError::Internal(anyhow::anyhow!("handler panicked: {message}")).into_response()
}

/// A bound, ready-to-run API.
pub struct Application {
    listener: TcpListener,
    router: Router,
    limiters: Vec<Limiter>,
    pool: PgPool,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds the listener and builds the router. The schema must be migrated.
    pub async fn build(config: &ApiConfig, pool: PgPool) -> anyhow::Result<Self> {
        Self::build_with(config, pool, Router::new()).await
    }

    /// Like [`build`](Self::build), serving `extra` routes beside the commands.
    pub async fn build_with(
        config: &ApiConfig,
        pool: PgPool,
        extra: Router,
    ) -> anyhow::Result<Self> {
        let state = AppState::new(pool.clone(), config)?;
        if !config.authenticator.is_enabled() {
            tracing::warn!(
                "authentication is switched off: every caller is an administrator; \
                 never expose this API beyond a trusted network"
            );
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", config.listen))?;
        let (router, limiters) = router(state, config, extra);
        Ok(Self {
            listener,
            router,
            limiters,
            pool,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then finishes the requests in
    /// flight. Expired idempotency keys are cleaned up meanwhile.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let cleanup = tokio::spawn(forget_expired_keys(self.pool));
        let forget = tokio::spawn(http_edge::auth::forget_idle_callers(self.limiters));
        tracing::info!(addr = %self.listener.local_addr()?, "command API listening");
        // Connection info gives anonymous callers their own rate bucket.
        let served = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        cleanup.abort();
        forget.abort();
        served
    }
}

/// Every minute, deletes expired idempotency keys in small batches.
async fn forget_expired_keys(pool: PgPool) {
    const BATCH: i64 = 1000;
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        loop {
            match event_store::idempotency::forget_expired(&pool, BATCH).await {
                Ok(deleted) => {
                    if deleted > 0 {
                        tracing::debug!(deleted, "forgot expired idempotency keys");
                    }
                    if deleted < BATCH as u64 {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "could not delete expired idempotency keys");
                    break;
                }
            }
        }
    }
}
