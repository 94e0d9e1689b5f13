//! `cairn`: the one binary of the firmware. Multi-call: PID 1 (`cairn init`), the control client,
//! the service roles and the user's commands share one static executable, so the image carries
//! a single copy of the Rust runtime and libraries.

mod board;
mod init;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: your own cloud node on a plug server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as init (PID 1): mount, supervise services, shut down cleanly.
    Init(init::Args),
    /// Control the running supervisor: status, start/stop/restart, logs, poweroff, reboot.
    Ctl(cairn_supervisor::ctl::Args),
    /// Test services that misbehave on purpose (for the supervisor's tests).
    #[command(hide = true)]
    Fixture(cairn_supervisor::fixture::Args),
    /// Your encrypted, erasure-coded vault: init, put, ls, get, snapshots, recovery-key, restore.
    Vault(cairn_vault::cli::Args),
    /// The storage node: run, status, pair, invite, join, audit, repair.
    Node(cairn_node::cli::Args),
}

/// The vault's `node:SOCKET` targets and `--node` go through the node's control socket.
fn node_backend(path: &std::path::Path) -> Result<cairn_vault::vault::Backend, String> {
    let b = std::sync::Arc::new(
        cairn_node::control::NodeBackend::new(path).map_err(|e| e.to_string())?,
    );
    Ok((b.clone(), b))
}

fn main() {
    // The kernel starts /init with no arguments: PID 1 is init whatever argv says.
    if nix::unistd::getpid().as_raw() == 1 && std::env::args().len() <= 1 {
        if let Err(e) = init::run(init::Args::default()) {
            eprintln!("cairn: {e:#}");
        }
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(args) => init::run(args),
        Command::Ctl(args) => cairn_supervisor::ctl::run(args),
        Command::Fixture(args) => cairn_supervisor::fixture::run(args),
        Command::Vault(args) => {
            cairn_vault::vault::register_node_backend(node_backend);
            cairn_vault::cli::run(args)
        }
        Command::Node(args) => cairn_node::cli::run(args),
    };
    if let Err(e) = result {
        eprintln!("cairn: {e:#}");
        std::process::exit(1);
    }
}
