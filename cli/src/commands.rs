//! What each subcommand does.

use std::time::Duration;

use anyhow::Context;
use projections::Projection;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::Settings;

pub use crate::assembly::Role;

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

/// `orders run`: runs the chosen roles (or all of them) until SIGINT or
/// SIGTERM, then lets each finish what it is doing. A role that fails stops
/// the others.
pub async fn run(settings: &Settings, roles: &[Role], migrate: bool) -> anyhow::Result<()> {
    let tracing = settings.tracing(roles);
    let telemetry = platform::telemetry::init(settings.log_format, &settings.log_filter, &tracing)?;
    if let Some(endpoint) = &tracing.otlp_endpoint {
        tracing::info!(endpoint, service = %tracing.service_name, "sending traces over OTLP");
    }
    let result = run_roles(settings, roles, migrate).await;
    // The last spans (the shutdown's, or the failure's) go out before the
    // process ends, whichever way it ends.
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .ok();
    result
}

async fn run_roles(settings: &Settings, roles: &[Role], migrate: bool) -> anyhow::Result<()> {
    if migrate && roles.iter().any(|role| *role != Role::Gateway) {
        let pool = connect(settings).await?;
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
    let running = crate::assembly::start(settings, roles, stop).await?;
    let result = running.wait().await;
    tracing::info!("stopped");
    result
}

/// The event store's migrations, then the read models' and the sagas'.
pub async fn apply_migrations(pool: &PgPool) -> anyhow::Result<()> {
    event_store::migrate(pool)
        .await
        .context("applying the event store's migrations")?;
    projections::migrate(pool)
        .await
        .context("applying the read models' migrations")?;
    saga_orchestrator::migrate(pool)
        .await
        .context("applying the sagas' migrations")?;
    operations::migrate(pool)
        .await
        .context("applying the operations' migrations")?;
    Ok(())
}

/// `orders migrate`: the platform's database, then the payment gateway's
/// (created when missing).
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    apply_migrations(&pool).await?;
    let gateway = settings.gateway();
    let gateway_pool = payment_gateway::connect(&gateway.database_url, 1).await?;
    payment_gateway::migrator()
        .run(&gateway_pool)
        .await
        .context("applying the payment gateway's migrations")?;
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
            + operations::migrator().iter().count()
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
    match operations::overview::overview(&pool, &orders_console::read_models()).await {
        Ok(overview) => {
            let behind = |lag: &operations::overview::Lag| {
                format!(
                    "{}{} event(s) behind{}",
                    if lag.behind_more { "at least " } else { "" },
                    lag.behind,
                    lag.oldest_behind_at
                        .map(|at| format!(", the oldest recorded {}", at.to_rfc3339()))
                        .unwrap_or_default()
                )
            };
            for relay in &overview.relay {
                println!(
                    "relay {}: published to position {}, {}",
                    relay.name,
                    relay.global_position,
                    behind(&relay.lag)
                );
            }
            for projection in &overview.projections {
                println!(
                    "read model {} ({}): applied to position {}, {}",
                    projection.name,
                    projection.table,
                    projection.last_global_position,
                    behind(&projection.lag)
                );
            }
        }
        Err(error) => println!("relay and read models: unavailable ({error})"),
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
    let gateway = settings.payment_gateway_url(None);
    let ready = async {
        reqwest::Client::new()
            .get(format!("{gateway}/readyz"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .and_then(|response| response.error_for_status())
    };
    match ready.await {
        Ok(_) => println!("payment gateway: ready at {gateway}"),
        Err(error) => println!("payment gateway: not ready at {gateway} ({error})"),
    }
    let kafka = platform::kafka::KafkaProbe::new(&settings.kafka_brokers)?;
    match kafka.check(Duration::from_secs(3)).await {
        Ok(()) => println!("kafka: reachable at {}", settings.kafka_brokers),
        Err(error) => println!("kafka: unreachable at {} ({error})", settings.kafka_brokers),
    }
    Ok(())
}

/// `orders rebuild <name|all>`: one progress bar per read model, then a
/// summary line each. `which` is a read model's name from the registry
/// (`orders`, `products`, `customer-orders`, `payments`) or `all`.
pub async fn rebuild(
    settings: &Settings,
    which: &str,
    mode: projections::rebuild::Mode,
) -> anyhow::Result<()> {
    let chosen: Vec<Projection> = if which == "all" {
        Projection::ALL.to_vec()
    } else {
        vec![Projection::named(which).with_context(|| format!("no read model is named {which}"))?]
    };
    platform::telemetry::init_logging(settings.log_format, "warn");
    let pool = connect(settings).await?;
    apply_migrations(&pool).await?;
    let mut reports = Vec::new();
    for projection in chosen {
        reports.push(projection.rebuild_as(&pool, &progress_bar(), mode).await?);
    }
    for report in reports {
        if let Some(diff) = &report.diff {
            println!(
                "{}: rebuilt beside the live table ({} rows from {} events), nothing swapped:\n  \
                 {} rows differ, {} missing from the live table, {} live rows without events, \
                 {} at another version (not compared)",
                report.projection,
                report.rows,
                report.events,
                diff.differing,
                diff.missing_live,
                diff.only_live,
                diff.other_version
            );
            for example in &diff.examples {
                println!("  {example}");
            }
            continue;
        }
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

/// The names `orders rebuild` takes: every read model's, and `all`.
pub fn rebuild_names() -> Vec<&'static str> {
    Projection::ALL
        .iter()
        .map(|p| p.slug())
        .chain(["all"])
        .collect()
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

/// `orders audit`: prints the report; whether the books balance.
pub async fn audit(settings: &Settings, settle: Duration) -> anyhow::Result<bool> {
    platform::telemetry::init_logging(settings.log_format, "warn");
    let pool = connect(settings).await?;
    let report = crate::audit::audit_settled(&pool, &settings.gateway_access(None), settle).await?;
    println!("{report}");
    Ok(report.is_clean())
}

/// `orders republish --from N`.
pub async fn republish(settings: &Settings, from: i64) -> anyhow::Result<()> {
    platform::telemetry::init_logging(settings.log_format, "warn");
    let pool = connect(settings).await?;
    let count = relay::republish(&pool, &settings.relay(), from).await?;
    println!("republished {count} events from global position {from}");
    Ok(())
}

/// `orders token`: a development token for `sub` with `scope`, signed with
/// the configured HS256 secret and naming the configured issuer and audience.
pub fn token(settings: &Settings, sub: &str, scope: &str, ttl_secs: u64) -> anyhow::Result<String> {
    let secret = settings.auth_hs256_secret.expose_secret();
    if secret.is_empty() {
        anyhow::bail!(
            "no ORDERS_AUTH_HS256_SECRET is set: `orders token` signs with that secret \
             (scripts/up keeps a development secret in .local/auth/hs256-secret)"
        );
    }
    if secret.len() < identity::MIN_SECRET_BYTES {
        anyhow::bail!(
            "ORDERS_AUTH_HS256_SECRET must be at least {} bytes",
            identity::MIN_SECRET_BYTES
        );
    }
    domain::values::CustomerId::parse(sub).map_err(|error| anyhow::anyhow!("--sub {error}"))?;
    if ttl_secs == 0 {
        anyhow::bail!("--ttl must be at least 1 second");
    }
    let nonempty = |value: &str| (!value.is_empty()).then_some(value.to_owned());
    let claims = identity::Claims::new(sub, scope, Duration::from_secs(ttl_secs))
        .issuer(nonempty(&settings.auth_issuer).as_deref())
        .audience(nonempty(&settings.auth_audience).as_deref());
    identity::mint_hs256(secret, &claims).context("signing the token")
}
