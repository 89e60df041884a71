//! The `tidings` binary: the server and the operator CLI.

use clap::{Parser, Subcommand};

/// tidings: an instant-messaging server on a checksummed commit log.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the server.
    Serve,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve => {
            println!("tidings serve: not yet — the server lands with the [server] issue");
            Ok(())
        }
    }
}
