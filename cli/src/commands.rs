//! What each subcommand does.

use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::Settings;

/// The parts of the platform a process can run. Any number of processes may
/// run any role against the same database and brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Every role in this process.
    All,
    /// HTTP: the REST command API and the GraphQL query API, with health,
    /// metrics and OpenAPI.
    Api,
    /// The relay from the event store to Kafka (one leads, others stand by).
    Relay,
    /// The projection workers that keep the read models.
    Projections,
    /// The order saga orchestrator (it charges through `payment_gateway_url`).
    Saga,
}

impl Role {
    fn runs(self, role: Role) -> bool {
        self == Role::All || self == role
    }
}

/// Connects to PostgreSQL, retrying for up to a minute so the platform can
/// start alongside its database.
pub async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    let url = settings.database_url.expose_secret();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut delay = Duration::from_millis(200);
    loop {
        match event_store::connect(
            url,
            settings.database_pool_size,
            Duration::from_secs(settings.database_acquire_timeout_secs),
        )
        .await
        {
            Ok(pool) => return Ok(pool),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, "PostgreSQL is not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                return Err(error).context(
                    "cannot connect to PostgreSQL (is it running? `scripts/services start` starts it)",
                );
            }
        }
    }
}

/// `orders run`: runs the chosen roles until SIGINT or SIGTERM, then lets
/// each finish what it is doing. A role that fails stops the others.
pub async fn run(settings: &Settings, role: Role, migrate: bool) -> anyhow::Result<()> {
    use projections::model::customer_orders::CustomerOrders;
    use projections::model::orders::OrderSummary;
    use projections::model::products::ProductStock;
    use projections::worker;

    platform::telemetry::init_logging(settings.log_format, &settings.log_filter);
    let pool = connect(settings).await?;
    if migrate {
        apply_migrations(&pool).await?;
    }
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            platform::shutdown::signal().await;
            stop.cancel();
        }
    });
    let mut roles = tokio::task::JoinSet::new();
    if role.runs(Role::Api) {
        let updates = projections::graphql::updates::Updates::listen(pool.clone());
        let mut routes =
            projections::graphql::router(projections::graphql::schema(pool.clone(), updates));
        if settings.payment_gateway_simulator {
            let simulator = saga_orchestrator::gateway::Simulator::new();
            routes = routes.nest(
                "/gateway",
                saga_orchestrator::gateway::http::simulator_routes(simulator),
            );
        }
        let api =
            command_api::Application::build_with(&settings.api(), pool.clone(), routes).await?;
        let stopped = stop.clone().cancelled_owned();
        roles.spawn(async move { api.run_until(stopped).await.context("serving HTTP") });
    }
    if role.runs(Role::Relay) {
        let relay = relay::run(
            pool.clone(),
            settings.relay(),
            stop.clone().cancelled_owned(),
        );
        roles.spawn(async move { relay.await.context("relay") });
    }
    if role.runs(Role::Projections) {
        let config = settings.projections();
        let (a, b, c) = (
            stop.clone().cancelled_owned(),
            stop.clone().cancelled_owned(),
            stop.clone().cancelled_owned(),
        );
        roles.spawn(worker::run::<OrderSummary>(pool.clone(), config.clone(), a));
        roles.spawn(worker::run::<ProductStock>(pool.clone(), config.clone(), b));
        roles.spawn(worker::run::<CustomerOrders>(pool.clone(), config, c));
    }
    if role.runs(Role::Saga) {
        let gateway =
            saga_orchestrator::gateway::http::HttpGateway::new(settings.payment_gateway())?;
        let saga = saga_orchestrator::orchestrator::run(
            pool.clone(),
            settings.saga(),
            gateway,
            stop.clone().cancelled_owned(),
        );
        roles.spawn(async move { saga.await.context("saga orchestrator") });
    }
    let mut failure = None;
    while let Some(ended) = roles.join_next().await {
        let result = ended.map_err(anyhow::Error::from).and_then(|result| result);
        if let Err(error) = result {
            tracing::error!(error = %format!("{error:#}"), "a role failed; stopping the others");
            stop.cancel();
            failure.get_or_insert(error);
        }
    }
    tracing::info!("stopped");
    failure.map_or(Ok(()), Err)
}

/// The event store's migrations, then the read models' and the sagas'.
async fn apply_migrations(pool: &PgPool) -> anyhow::Result<()> {
    event_store::migrate(pool)
        .await
        .context("applying the event store's migrations")?;
    projections::migrate(pool)
        .await
        .context("applying the read models' migrations")?;
    saga_orchestrator::migrate(pool)
        .await
        .context("applying the sagas' migrations")?;
    Ok(())
}

/// `orders migrate`.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    apply_migrations(&pool).await?;
    println!("migrations applied");
    Ok(())
}

/// `orders status`: what is stored and what answers.
pub async fn status(settings: &Settings) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
    println!(
        "database: reachable, {applied} of {} migrations applied",
        event_store::migrator().iter().count()
            + projections::migrator().iter().count()
            + saga_orchestrator::migrator().iter().count()
    );
    let row: Result<(i64, Option<i64>), _> =
        sqlx::query_as("SELECT count(*), max(global_position) FROM events")
            .fetch_one(&pool)
            .await;
    match row {
        Ok((events, last)) => println!(
            "events: {events}, last global position {}",
            last.map_or("-".into(), |p| p.to_string())
        ),
        Err(error) => println!("events: unavailable ({error})"),
    }
    match saga_orchestrator::store::counts(&pool).await {
        Ok((by_state, attention)) => {
            let states: Vec<String> = by_state
                .iter()
                .map(|(state, count)| format!("{count} {state}"))
                .collect();
            let states = if states.is_empty() {
                "none".to_owned()
            } else {
                states.join(", ")
            };
            println!("sagas: {states}; {attention} need attention");
        }
        Err(error) => println!("sagas: unavailable ({error})"),
    }
    let kafka = platform::kafka::KafkaProbe::new(&settings.kafka_brokers)?;
    match kafka.check(Duration::from_secs(3)).await {
        Ok(()) => println!("kafka: reachable at {}", settings.kafka_brokers),
        Err(error) => println!("kafka: unreachable at {} ({error})", settings.kafka_brokers),
    }
    Ok(())
}

/// The read models `orders rebuild` can rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Projection {
    /// `order_summary`.
    Orders,
    /// `product_stock`.
    Products,
    /// `customer_order`.
    CustomerOrders,
    /// All of them, one after the other.
    All,
}

/// `orders rebuild`: one progress bar per read model, then a summary line.
pub async fn rebuild(settings: &Settings, projection: Projection) -> anyhow::Result<()> {
    use projections::model::customer_orders::CustomerOrders;
    use projections::model::orders::OrderSummary;
    use projections::model::products::ProductStock;
    use projections::rebuild::rebuild;

    platform::telemetry::init_logging(settings.log_format, "warn");
    let pool = connect(settings).await?;
    apply_migrations(&pool).await?;
    let wanted = |p: Projection| projection == Projection::All || projection == p;
    let mut reports = Vec::new();
    if wanted(Projection::Orders) {
        reports.push(rebuild::<OrderSummary>(&pool, &progress_bar()).await?);
    }
    if wanted(Projection::Products) {
        reports.push(rebuild::<ProductStock>(&pool, &progress_bar()).await?);
    }
    if wanted(Projection::CustomerOrders) {
        reports.push(rebuild::<CustomerOrders>(&pool, &progress_bar()).await?);
    }
    for report in reports {
        let seconds = report.elapsed.as_secs_f64();
        println!(
            "rebuilt {}: {} events into {} rows in {:.1} s ({:.0} events/s){}",
            report.projection,
            report.events,
            report.rows,
            seconds,
            report.events as f64 / seconds.max(1e-9),
            if report.refused > 0 {
                format!(
                    ", {} events refused (see the dead-letter topic)",
                    report.refused
                )
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>16} [{bar:30}] {pos}/{len} events, {per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// `orders republish --from N`.
pub async fn republish(settings: &Settings, from: i64) -> anyhow::Result<()> {
    platform::telemetry::init_logging(settings.log_format, "warn");
    let pool = connect(settings).await?;
    let count = relay::republish(&pool, &settings.relay(), from).await?;
    println!("republished {count} events from global position {from}");
    Ok(())
}
