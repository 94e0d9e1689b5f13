//! `cairn`: the one binary of the firmware. Multi-call: PID 1 (`cairn init`), the control client,
//! the service roles and the user's commands share one static executable, so the image carries
//! a single copy of the Rust runtime and libraries.

mod init;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn: your own cloud node on a plug server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as init (PID 1): mount, supervise services, shut down cleanly.
    Init(init::Args),
}

fn main() {
    // The kernel starts /init with no arguments: PID 1 is init whatever argv says.
    if nix::unistd::getpid().as_raw() == 1 && std::env::args().len() <= 1 {
        init::run(init::Args::default());
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(args) => init::run(args),
    };
    if let Err(e) = result {
        eprintln!("cairn: {e:#}");
        std::process::exit(1);
    }
}
