//! `orders`: run the order platform, or one of its maintenance tasks.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orders_cli::{Settings, commands};

/// mimalloc rather than glibc's allocator, which spent a tenth of the
/// platform's CPU under load in `bench saga`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "orders", version, about = "Event-sourced order platform")]
struct Cli {
    /// A TOML configuration file (default: ./orders.toml when present).
    #[arg(long, global = true, env = "ORDERS_CONFIG_FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform in the foreground until Ctrl-C or SIGTERM.
    Run {
        /// Which parts of the platform to run, comma-separated (for example
        /// `api,relay`); `all` is every one.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
        role: Vec<commands::Role>,
        /// Do not apply pending database migrations at start.
        #[arg(long)]
        no_migrate: bool,
        /// Switch authentication off: every caller is an administrator.
        /// Only for a trusted network; logged as a warning.
        #[arg(long)]
        no_auth: bool,
    },
    /// Print a bearer token signed with the configured HS256 secret
    /// (ORDERS_AUTH_HS256_SECRET), for development.
    Token {
        /// The customer id the token names (its `sub`).
        #[arg(long)]
        sub: String,
        /// Space-separated scopes: `orders` (one's own orders), `admin`.
        #[arg(long, default_value = "orders")]
        scope: String,
        /// Seconds the token stays valid.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Show what the platform's database and broker hold.
    Status,
    /// Rebuild read models from the event store into fresh tables and swap
    /// them in, while queries and live projection workers keep running.
    Rebuild {
        /// Which read model (`orders`, `products`, `customer-orders`, `payments`), or `all`.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(commands::rebuild_names()))]
        projection: String,
        /// Build the new table beside the live one and report how their rows
        /// differ (counts and the first examples), swapping nothing: for
        /// checking a change to a projection's code before it goes live.
        #[arg(long, conflicts_with = "swap")]
        diff: bool,
        /// Build and swap the new table in (what a rebuild does without
        /// `--diff`).
        #[arg(long)]
        swap: bool,
    },
    /// Publish the events from a global position on again (for a new
    /// consumer); the relay's own progress is left alone.
    Republish {
        /// The first global position to publish.
        #[arg(long)]
        from: i64,
    },
    /// Order sagas that need someone: list them, look at one, retry or
    /// abandon it.
    Saga {
        #[command(subcommand)]
        action: SagaCommand,
    },
    /// Dead letters: what consumers could not process, on every `<topic>.dlq`.
    Dlq {
        #[command(subcommand)]
        action: DlqCommand,
    },
    /// Check the books of a running platform (events, read models, sagas,
    /// the payment gateway's ledger); print every violation, exit 1 if any.
    Audit {
        /// Seconds to keep auditing while violations remain, for a platform
        /// still digesting its last events.
        #[arg(long, default_value_t = 10)]
        settle_secs: u64,
    },
    /// Write the generated contract (OpenAPI, event schemas) into a folder.
    Schemas {
        /// Fail if the folder differs from the code instead of writing it.
        #[arg(long)]
        check: bool,
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
    },
}

/// What `orders saga` does.
#[derive(Debug, clap::Subcommand)]
enum SagaCommand {
    /// Sagas flagged as needing attention, and those with work due for over
    /// five minutes that no process does.
    List {
        /// Print JSON, one saga per line.
        #[arg(long)]
        json: bool,
    },
    /// One order's saga whole: state, steps, bookkeeping, operators' actions.
    Show { order_id: String },
    /// Make the saga's next action due at once, with a fresh count of
    /// failures and its attention flag cleared; recorded.
    Retry {
        order_id: String,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
        /// Who retries it (default: the user running this).
        #[arg(long)]
        by: Option<String>,
    },
    /// Stop the saga for good, undoing nothing: its order's books are
    /// yours from then on, and `orders audit` lists it as abandoned with
    /// who and why. Refused for a saga that ended or that a driver holds.
    Abandon {
        order_id: String,
        /// Why (required), for the record and the audit.
        #[arg(long)]
        reason: String,
        /// Who abandons it (default: the user running this).
        #[arg(long)]
        by: Option<String>,
    },
}

/// What `orders dlq` does.
#[derive(Debug, clap::Subcommand)]
enum DlqCommand {
    /// The dead letters nobody has replayed or discarded yet (with `--all`,
    /// every one, with what was done to it).
    List {
        #[command(flatten)]
        filter: DlqFilter,
        /// Print JSON, one dead letter per line.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter whole: headers, value, actions.
    Show {
        /// `<dead-letter topic>:<partition>:<offset>`, as `list` prints it.
        id: String,
    },
    /// Send dead letters' messages to their source topics again (consumers
    /// that applied them skip them, the one that refused them tries again),
    /// and record it.
    Replay {
        /// Dead letters by id; or every open one the filter matches, with
        /// `--matching`.
        ids: Vec<String>,
        #[command(flatten)]
        filter: DlqFilter,
        /// Replay every open dead letter the filter lets through.
        #[arg(long)]
        matching: bool,
        /// Say what would be replayed, and do nothing.
        #[arg(long)]
        dry_run: bool,
        /// Who replays them, for the record (default: the user running this).
        #[arg(long)]
        by: Option<String>,
    },
    /// Record dead letters as dealt with, for a reason: they no longer show
    /// among the open ones.
    Discard {
        ids: Vec<String>,
        /// Why (required).
        #[arg(long)]
        reason: String,
        #[arg(long)]
        by: Option<String>,
    },
}

/// Which dead letters a command takes.
#[derive(Debug, clap::Args)]
struct DlqFilter {
    /// A source topic (`orders.events`) or a dead-letter topic.
    #[arg(long)]
    topic: Option<String>,
    /// The aggregate id (the message's key).
    #[arg(long)]
    aggregate: Option<String>,
    /// Text in the reason.
    #[arg(long)]
    reason: Option<String>,
    /// Also those already replayed or discarded.
    #[arg(long)]
    all: bool,
}

impl From<DlqFilter> for operations::dead_letters::Filter {
    fn from(filter: DlqFilter) -> Self {
        Self {
            topic: filter.topic,
            aggregate: filter.aggregate,
            reason: filter.reason,
            include_handled: filter.all,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Audit { settle_secs } = cli.command {
        return audit(cli.config.as_deref(), settle_secs);
    }
    let result = match cli.command {
        Command::Schemas { check, dir } => {
            if check {
                orders_cli::schemas::check(&dir)
            } else {
                orders_cli::schemas::write(&dir)
            }
        }
        Command::Token { sub, scope, ttl } => Settings::load(cli.config.as_deref())
            .and_then(|settings| commands::token(&settings, &sub, &scope, ttl))
            .map(|token| println!("{token}")),
        command => Settings::load(cli.config.as_deref()).and_then(|mut settings| {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async move {
                match command {
                    Command::Run {
                        role,
                        no_migrate,
                        no_auth,
                    } => {
                        settings.auth_disabled |= no_auth;
                        commands::run(&settings, &role, !no_migrate).await
                    }
                    Command::Migrate => commands::migrate(&settings).await,
                    Command::Status => commands::status(&settings).await,
                    Command::Rebuild {
                        projection, diff, ..
                    } => {
                        let mode = if diff {
                            projections::rebuild::Mode::Diff
                        } else {
                            projections::rebuild::Mode::Swap
                        };
                        commands::rebuild(&settings, &projection, mode).await
                    }
                    Command::Republish { from } => commands::republish(&settings, from).await,
                    Command::Dlq { action } => dlq(&settings, action).await,
                    Command::Saga { action } => saga(&settings, action).await,
                    Command::Audit { .. } | Command::Schemas { .. } | Command::Token { .. } => {
                        Ok(())
                    }
                }
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `orders audit`: exit status 0 when the books balance, 1 when they do not
/// (every violation printed), 2 when the audit could not be done.
fn audit(config: Option<&std::path::Path>, settle_secs: u64) -> ExitCode {
    let audited = Settings::load(config).and_then(|settings| {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(commands::audit(
            &settings,
            std::time::Duration::from_secs(settle_secs),
        ))
    });
    match audited {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("error: cannot audit: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn dlq(settings: &Settings, command: DlqCommand) -> anyhow::Result<()> {
    use orders_cli::dlq;
    let letters = dlq::open(settings).await?;
    match command {
        DlqCommand::List { filter, json } => dlq::list(&letters, &filter.into(), json).await,
        DlqCommand::Show { id } => dlq::show(&letters, &id).await,
        DlqCommand::Replay {
            ids,
            filter,
            matching,
            dry_run,
            by,
        } => {
            let chosen = if matching {
                anyhow::ensure!(
                    ids.is_empty(),
                    "name dead letters or use --matching, not both"
                );
                dlq::Chosen::Matching(filter.into())
            } else {
                anyhow::ensure!(
                    !ids.is_empty(),
                    "name the dead letters to replay, or use --matching"
                );
                dlq::Chosen::Ids(ids)
            };
            dlq::replay(&letters, chosen, dry_run, &dlq::actor(by)).await
        }
        DlqCommand::Discard { ids, reason, by } => {
            anyhow::ensure!(!ids.is_empty(), "name the dead letters to discard");
            dlq::discard(&letters, &ids, &reason, &dlq::actor(by)).await
        }
    }
}

async fn saga(settings: &Settings, command: SagaCommand) -> anyhow::Result<()> {
    use operations::sagas;
    platform::telemetry::init_logging(settings.log_format, "warn");
    let pool = commands::connect(settings).await?;
    commands::apply_migrations(&pool).await?;
    match command {
        SagaCommand::List { json } => {
            let found = sagas::needing_attention(&pool).await?;
            for saga in &found {
                if json {
                    println!("{}", serde_json::to_string(saga)?);
                } else {
                    let why = saga.saga["attention"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| {
                            format!("{} failure(s) in a row", saga.saga["attempts"])
                        });
                    println!(
                        "{}  {}  {}  next try {}  {}",
                        saga.order_id,
                        saga.state,
                        if saga.needs_attention {
                            "needs attention"
                        } else {
                            "stalled"
                        },
                        saga.next_attempt_at.to_rfc3339(),
                        why
                    );
                }
            }
            if !json {
                println!("{} saga(s) need someone", found.len());
            }
            Ok(())
        }
        SagaCommand::Show { order_id } => {
            let report = sagas::show(&pool, &order_id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("order {order_id} has no saga"))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        SagaCommand::Retry {
            order_id,
            reason,
            by,
        } => {
            sagas::retry(
                &pool,
                &order_id,
                reason.as_deref(),
                &orders_cli::dlq::actor(by),
            )
            .await?;
            println!("the saga of order {order_id} is due now");
            Ok(())
        }
        SagaCommand::Abandon {
            order_id,
            reason,
            by,
        } => {
            sagas::abandon(&pool, &order_id, &reason, &orders_cli::dlq::actor(by)).await?;
            println!("the saga of order {order_id} is abandoned");
            Ok(())
        }
    }
}
