//! The platform's benchmark harness. Each subcommand measures one path against
//! the real services and prints its figures next to a raw ceiling measured in
//! the same run on the same machine, so ratios stay meaningful across machines.
//!
//! - `bench write`: place-order commands over HTTP against real PostgreSQL,
//!   and single-row inserts of an event-shaped row through the same driver.
//! - `bench relay`: the relay's events/s into Kafka, and a bare producer's.
//! - `bench latency`: from a 202 on `POST /api/orders` to the order in GraphQL.
//! - `bench rebuild`: rebuilding a read model, and a plain read of the events.
//! - `bench saga`: orders from placement to CONFIRMED through the saga.
//! - `bench catchup`: a live worker applying a backlog, next to a rebuild;
//!   the relay's lag while a rebuild runs.
//! - `bench hot-product`: one product that sold to a million orders: its
//!   state's and snapshot's size, the fold's time, peak memory.

mod catchup;
mod connection;
mod hot;
mod latency;
mod lifecycle;
mod measure;
mod rebuild;
mod relay;
mod saga;
mod seed;
mod write;

use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's allocator, which spent a tenth of the
/// platform's CPU under load in `bench saga`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Benchmarks of the order platform against real services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Place-order throughput and latency over HTTP versus raw inserts.
    Write(write::Options),
    /// Relay throughput versus a bare rdkafka producer.
    Relay(relay::Options),
    /// Latency from an accepted order to the order in GraphQL.
    Latency(latency::Options),
    /// Rebuild throughput versus a sequential read of the events.
    Rebuild(rebuild::Options),
    /// Orders from placement to CONFIRMED: completion time and saturation.
    Saga(saga::Options),
    /// Live catch-up versus rebuild, and relay lag during a rebuild.
    Catchup(catchup::Options),
    /// One product that sold to a million orders: state, snapshot, memory.
    HotProduct(hot::Options),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The platform under test gets a runtime like `orders run` has; the load
    // generator a single thread of its own.
    let server = tokio::runtime::Runtime::new()?;
    let load = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Write(options) => write::run(options, &server, &load),
        Command::Relay(options) => server.block_on(relay::run(options)),
        Command::Latency(options) => server.block_on(latency::run(options)),
        Command::Rebuild(options) => server.block_on(rebuild::run(options)),
        Command::Saga(options) => server.block_on(saga::run(options)),
        Command::Catchup(options) => server.block_on(catchup::run(options)),
        Command::HotProduct(options) => server.block_on(hot::run(options)),
    }
}
