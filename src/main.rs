//! The `opcount` command line. Owns stdout, stderr and the exit code; everything else is
//! the library's.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use opcount::Op;

/// Count every arithmetic operation of a neural network, by kind.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the kinds of operation opcount counts (see docs/counting.md).
    Kinds,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("opcount: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Kinds => {
            for op in Op::ALL {
                println!("{:<6} {}", op.name(), op.description().replace('`', ""));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
