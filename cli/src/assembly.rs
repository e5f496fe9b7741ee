//! The one place where the platform's roles are built from the settings and
//! started: `orders run`, the in-process test platform and the benchmarks all
//! come through [`start`], so the tests run exactly what ships.

use std::net::SocketAddr;

use anyhow::Context;
use projections::Projection;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Settings;

/// The parts of the platform a process can run. Any number of processes may
/// run any role against the same database and brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    /// Every role in this process.
    All,
    /// HTTP: the REST command API and the GraphQL query API, with health,
    /// metrics and OpenAPI, and the operator console with its operations.
    Api,
    /// The relay from the event store to Kafka (one leads, others stand by).
    Relay,
    /// The projection workers that keep the read models.
    Projections,
    /// The order saga orchestrator (it charges through `payment_gateway_url`).
    Saga,
    /// The payment gateway simulator, a service with its own database.
    Gateway,
}

impl Role {
    /// The roles this one stands for.
    pub fn expand(self) -> Vec<Role> {
        match self {
            Self::All => vec![
                Self::Gateway,
                Self::Api,
                Self::Relay,
                Self::Projections,
                Self::Saga,
            ],
            one => vec![one],
        }
    }
}

/// Roles running in this process.
pub struct Running {
    /// Where the HTTP API listens, if it runs here.
    pub api: Option<SocketAddr>,
    /// Where the payment gateway listens, if it runs here.
    pub gateway: Option<SocketAddr>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served for the
    /// network's scraper and probes (`metrics_listen`), if they are.
    pub metrics: Option<SocketAddr>,
    roles: JoinSet<anyhow::Result<()>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("api", &self.api)
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

/// Builds and starts `roles` with `settings` until `stop` is cancelled. The
/// platform's schema must be migrated (the gateway migrates its own
/// database). Listeners are bound before this returns, so port 0 works.
pub async fn start(
    settings: &Settings,
    roles: &[Role],
    stop: CancellationToken,
) -> anyhow::Result<Running> {
    let roles: Vec<Role> = roles.iter().flat_map(|role| role.expand()).collect();
    let runs = |role: Role| roles.contains(&role);
    let mut running = JoinSet::new();
    let mut gateway = None;
    if runs(Role::Gateway) {
        let service = payment_gateway::Gateway::build(settings.gateway())
            .await
            .context("starting the payment gateway")?;
        gateway = Some(service.local_addr()?);
        let stopped = stop.clone().cancelled_owned();
        running.spawn(async move {
            service
                .run_until(stopped)
                .await
                .context("serving the payment gateway")
        });
    }
    let needs_pool = roles.iter().any(|role| *role != Role::Gateway);
    let pool = if needs_pool {
        Some(crate::commands::connect(settings).await?)
    } else {
        None
    };
    let mut metrics = None;
    if !settings.metrics_listen.is_empty() {
        let listen: SocketAddr = settings.metrics_listen.parse().with_context(|| {
            format!(
                "metrics_listen {:?} is not an address",
                settings.metrics_listen
            )
        })?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} for metrics"))?;
        metrics = Some(listener.local_addr()?);
        // Ready: the database answers, and Kafka does for a process whose
        // roles read or write it (the API's commands need only the database).
        let consumes = [Role::Relay, Role::Projections, Role::Saga]
            .into_iter()
            .any(runs);
        let kafka = (needs_pool)
            .then(|| platform::kafka::KafkaProbe::new(&settings.kafka_brokers))
            .transpose()?;
        let readiness = command_api::routes::meta::Readiness::new(pool.clone(), kafka, consumes);
        let stopped = stop.clone().cancelled_owned();
        running.spawn(async move {
            tracing::info!(addr = %listen, "metrics listening");
            axum::serve(listener, command_api::routes::meta::metrics_only(readiness))
                .with_graceful_shutdown(stopped)
                .await
                .context("serving metrics")
        });
    }
    let mut api = None;
    if let Some(pool) = pool {
        if runs(Role::Api) {
            let updates = query_api::updates::Updates::listen(pool.clone());
            let config = settings.api()?;
            let limits = settings.graphql_limits();
            let console = orders_console::Console::new(
                pool.clone(),
                operations::dead_letters::DeadLetters::new(
                    &settings.kafka_brokers,
                    event_contract::Topics::with_prefix(&settings.kafka_topic_prefix),
                    pool.clone(),
                ),
            );
            let routes = query_api::router(
                query_api::schema(pool.clone(), updates, limits),
                config.authenticator.clone(),
                limits,
                settings.graphql_access()?,
            )
            .merge(orders_console::router(console));
            let service =
                command_api::Application::build_with(&config, pool.clone(), routes).await?;
            api = Some(service.local_addr()?);
            let stopped = stop.clone().cancelled_owned();
            running.spawn(async move { service.run_until(stopped).await.context("serving HTTP") });
        }
        if runs(Role::Relay) {
            let relay = relay::run(
                pool.clone(),
                settings.relay(),
                stop.clone().cancelled_owned(),
            );
            running.spawn(async move { relay.await.context("relay") });
        }
        if runs(Role::Projections) {
            spawn_projections(&mut running, &pool, settings, &stop);
        }
        if runs(Role::Saga) {
            let base_url = settings.payment_gateway_url(gateway);
            let client = saga_orchestrator::gateway::http::HttpGateway::new(
                settings.payment_gateway(base_url),
            )?;
            let saga = saga_orchestrator::orchestrator::run(
                pool.clone(),
                settings.saga(),
                client,
                stop.clone().cancelled_owned(),
            );
            running.spawn(async move { saga.await.context("saga orchestrator") });
        }
    }
    Ok(Running {
        api,
        gateway,
        metrics,
        roles: running,
        stop,
    })
}

/// One worker per read model of the registry.
fn spawn_projections(
    running: &mut JoinSet<anyhow::Result<()>>,
    pool: &PgPool,
    settings: &Settings,
    stop: &CancellationToken,
) {
    for projection in Projection::ALL {
        let worker = projection.worker(
            pool.clone(),
            settings.projections(),
            stop.clone().cancelled_owned(),
        );
        running.spawn(async move {
            worker
                .await
                .with_context(|| format!("projection {}", projection.name()))
        });
    }
}

impl Running {
    /// Waits until every role has stopped. A role that fails stops the
    /// others; the first failure is returned.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut failure = None;
        while let Some(ended) = self.roles.join_next().await {
            let result = ended.map_err(anyhow::Error::from).and_then(|result| result);
            if let Err(error) = result {
                tracing::error!(error = %format!("{error:#}"), "a role failed; stopping the others");
                self.stop.cancel();
                failure.get_or_insert(error);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Asks every role to stop, then waits for them.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.wait().await
    }
}
