//! `cairn`: the one binary of the firmware. Multi-call: PID 1 (`cairn init`), the control client,
//! the service roles and the user's commands share one static executable, so the image carries
//! a single copy of the Rust runtime and libraries. The command lines live here (one module per
//! subcommand in [`cmd`]); the libraries under them take plain values. The libraries log
//! through `tracing`; `main` installs the one subscriber that prints their events, with each
//! role's prefix ([`logging`]).

#[cfg_attr(
    not(target_env = "musl"),
    allow(
        dead_code,
        reason = "only the device (musl) uses it; elsewhere its tests do"
    )
)]
mod alloc;
mod board;
mod cmd;
mod init;
mod logging;
mod requests;
mod sys;

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
    Ctl(cmd::ctl::Args),
    /// Test services that misbehave on purpose (for the supervisor's tests; test builds only).
    #[cfg(feature = "test-fixtures")]
    #[command(hide = true)]
    Fixture(cmd::fixture::Args),
    /// Benchmarks on the device itself (test builds only).
    #[cfg(feature = "test-fixtures")]
    #[command(hide = true)]
    Bench(cmd::bench::Args),
    /// Your encrypted, erasure-coded vault: init, put, ls, get, snapshots, recovery-key, restore.
    Vault(cmd::vault::Args),
    /// The storage node: run, status, pair, invite, join, audit, repair.
    Node(cmd::node::Args),
    /// The web service: the claim with the button, setup and the owner's dashboard, over HTTPS.
    Web(cmd::web::Args),
    /// The Jabber service: writes Prosody's configuration, then runs Prosody.
    Prosody(cmd::prosody::Args),
    /// The fediverse service: readies snac2's data and configuration, then runs snac2.
    Snac(cmd::snac::Args),
    /// The services' own backups: restore them on a new plug from the recovery key.
    Backup(cmd::backup::Args),
    /// The device's name server for its services: NAME.local by mDNS, the rest upstream.
    Names(cmd::names::Args),
    /// Signed updates: apply a bundle into the inactive slot, show the boot state.
    Update(cmd::update::Args),
}

/// On the device (musl), every role allocates from dlmalloc: it keeps freed memory for reuse,
/// where musl's malloc returns each larger block to the kernel and the next one page-faults
/// afresh (halved the storage node's page faults and its put's system time on the emulated plug).
/// Huge blocks are mapped on their own, so that they do go back (`alloc` says why).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: alloc::HugeMapped<dlmalloc::GlobalDlmalloc> =
    alloc::HugeMapped(dlmalloc::GlobalDlmalloc);

fn main() {
    // SAFETY: first thing in main, before any other thread starts; it registers fork handlers
    // that hold the allocator's lock across fork(2), so a forked child may allocate.
    #[cfg(target_env = "musl")]
    unsafe {
        dlmalloc::enable_alloc_after_fork()
    };
    // The kernel starts /init with no arguments: PID 1 is init whatever argv says.
    if nix::unistd::getpid().as_raw() == 1 && std::env::args().len() <= 1 {
        logging::install("cairn");
        if let Err(e) = init::run(init::Args::default()) {
            eprintln!("cairn: {e:#}");
        }
    }
    // `cairn node …` and `cairn web …` parse their own arguments only: the services start this
    // way at every boot, and building the parser of every role's arguments first costs tens of
    // milliseconds of an emulated or small ARM CPU before the service is ready.
    match std::env::args_os().nth(1) {
        Some(a) if a == "node" => {
            let args: cmd::node::Args = parse_role("node");
            // The running node's lines are `cairn-node: …`, as its log and the tests know them.
            logging::install(match args.command {
                cmd::node::Command::Run { .. } => "cairn-node",
                _ => "cairn",
            });
            return exit_on_error(cmd::node::run(args));
        }
        Some(a) if a == "web" => {
            let args = parse_role("web");
            logging::install("cairn-web");
            return exit_on_error(cmd::web::run(args));
        }
        // Everything else (and nothing): the full parser below.
        _ => {}
    }
    let cli = Cli::parse();
    logging::install("cairn");
    let result = match cli.command {
        Command::Init(args) => init::run(args),
        Command::Ctl(args) => cmd::ctl::run(args),
        #[cfg(feature = "test-fixtures")]
        Command::Fixture(args) => cmd::fixture::run(args),
        #[cfg(feature = "test-fixtures")]
        Command::Bench(args) => cmd::bench::run(args),
        Command::Vault(args) => cmd::vault::run(args),
        Command::Node(args) => cmd::node::run(args),
        Command::Web(args) => cmd::web::run(args),
        Command::Prosody(args) => cmd::prosody::run(args),
        Command::Snac(args) => cmd::snac::run(args),
        Command::Backup(args) => cmd::backup::run(args),
        Command::Names(args) => cmd::names::run(args),
        Command::Update(args) => cmd::update::run(args),
    };
    exit_on_error(result);
}

fn exit_on_error(result: anyhow::Result<()>) {
    if let Err(e) = result {
        eprintln!("cairn: {e:#}");
        std::process::exit(1);
    }
}

/// A service role's arguments (`cairn ROLE …`), parsed alone (help and errors as `cairn ROLE`
/// shows them).
fn parse_role<A: Parser>(role: &'static str) -> A {
    let matches = A::command()
        .name(role)
        .bin_name(format!("cairn {role}"))
        .get_matches_from(std::env::args_os().skip(1));
    A::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}
