//! `orders dlq`: the dead letters of every `<topic>.dlq`, listed, shown,
//! replayed or discarded (see `operations::dead_letters`).

use operations::dead_letters::{DeadLetter, DeadLetters, Filter, LetterId};

use crate::Settings;
use crate::commands::connect;

/// The platform's dead letters, as `settings` name its brokers, topics and
/// database.
pub async fn open(settings: &Settings) -> anyhow::Result<DeadLetters> {
    platform::telemetry::init_logging(settings.log_format, "warn");
    let pool = connect(settings).await?;
    crate::commands::apply_migrations(&pool).await?;
    Ok(DeadLetters::new(
        &settings.kafka_brokers,
        event_contract::Topics::with_prefix(&settings.kafka_topic_prefix),
        pool,
    ))
}

/// Who takes an action: `--by`, else the user running the command.
pub fn actor(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| "operator".to_owned())
}

/// Which dead letters a replay takes.
#[derive(Debug)]
pub enum Chosen {
    Ids(Vec<String>),
    Matching(Filter),
}

fn summary(letter: &DeadLetter) -> String {
    let state = letter
        .actions
        .last()
        .map(|action| format!("  [{} by {} at {}]", action.action, action.actor, action.at))
        .unwrap_or_default();
    format!(
        "{}  {}  key={}  refused by {}: {}{state}",
        letter.id,
        letter.at.map(|at| at.to_rfc3339()).unwrap_or_default(),
        letter.key.as_deref().unwrap_or("-"),
        letter.consumer(),
        letter.error()
    )
}

pub async fn list(letters: &DeadLetters, filter: &Filter, json: bool) -> anyhow::Result<()> {
    let found = letters.list(filter).await?;
    for letter in &found {
        if json {
            println!("{}", serde_json::to_string(letter)?);
        } else {
            println!("{}", summary(letter));
        }
    }
    if !json {
        println!(
            "{} dead letter(s){}",
            found.len(),
            if filter.include_handled { "" } else { " open" }
        );
    }
    Ok(())
}

async fn find(letters: &DeadLetters, id: &str) -> anyhow::Result<DeadLetter> {
    let id: LetterId = id.parse()?;
    letters
        .find(&id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no dead letter at {id}"))
}

pub async fn show(letters: &DeadLetters, id: &str) -> anyhow::Result<()> {
    let letter = find(letters, id).await?;
    println!("{}", serde_json::to_string_pretty(&letter)?);
    Ok(())
}

pub async fn replay(
    letters: &DeadLetters,
    chosen: Chosen,
    dry_run: bool,
    actor: &str,
) -> anyhow::Result<()> {
    let chosen: Vec<DeadLetter> = match chosen {
        Chosen::Matching(filter) => letters.list(&filter).await?,
        Chosen::Ids(ids) => {
            let mut found = Vec::with_capacity(ids.len());
            for id in &ids {
                found.push(find(letters, id).await?);
            }
            found
        }
    };
    for letter in &chosen {
        let to = letter.source_topic().unwrap_or("?");
        if dry_run {
            println!("would replay {} to {to}", summary(letter));
        } else {
            letters.replay(letter, actor).await?;
            println!("replayed {} to {to}", letter.id);
        }
    }
    println!(
        "{} dead letter(s) {}",
        chosen.len(),
        if dry_run {
            "would be replayed"
        } else {
            "replayed"
        }
    );
    Ok(())
}

pub async fn discard(
    letters: &DeadLetters,
    ids: &[String],
    reason: &str,
    actor: &str,
) -> anyhow::Result<()> {
    // All found first: a typo discards nothing.
    let mut chosen = Vec::with_capacity(ids.len());
    for id in ids {
        chosen.push(find(letters, id).await?);
    }
    for letter in &chosen {
        letters.discard(letter, reason, actor).await?;
        println!("discarded {}", letter.id);
    }
    Ok(())
}
