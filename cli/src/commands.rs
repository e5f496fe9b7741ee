//! What each subcommand does.

use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::PgPool;

use crate::Settings;

/// The parts of the platform a process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Every role in this process.
    All,
    /// The REST command API (with health, metrics and OpenAPI).
    Api,
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

/// `orders run`: serve until SIGINT or SIGTERM, then finish in-flight work.
pub async fn run(settings: &Settings, role: Role, migrate: bool) -> anyhow::Result<()> {
    platform::telemetry::init_logging(settings.log_format, &settings.log_filter);
    let pool = connect(settings).await?;
    if migrate {
        apply_migrations(&pool).await?;
    }
    match role {
        Role::All | Role::Api => {
            let api = command_api::Application::build(&settings.api(), pool).await?;
            api.run_until(platform::shutdown::signal())
                .await
                .context("serving HTTP")?;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// The event store's migrations, then the read models'.
async fn apply_migrations(pool: &PgPool) -> anyhow::Result<()> {
    event_store::migrate(pool)
        .await
        .context("applying the event store's migrations")?;
    projections::migrate(pool)
        .await
        .context("applying the read models' migrations")?;
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
        event_store::migrator().iter().count() + projections::migrator().iter().count()
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
    let kafka = platform::kafka::KafkaProbe::new(&settings.kafka_brokers)?;
    match kafka.check(Duration::from_secs(3)).await {
        Ok(()) => println!("kafka: reachable at {}", settings.kafka_brokers),
        Err(error) => println!("kafka: unreachable at {} ({error})", settings.kafka_brokers),
    }
    Ok(())
}
