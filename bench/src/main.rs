//! The platform's benchmark harness. Each subcommand measures one path against
//! the real services and prints its figures next to a raw ceiling measured in
//! the same run on the same machine, so ratios stay meaningful across machines.
//!
//! `bench write`: place-order commands over HTTP against real PostgreSQL, and
//! single-row inserts of an event-shaped row through the same driver, at each
//! concurrency.

mod write;

use clap::{Parser, Subcommand};

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
    }
}
