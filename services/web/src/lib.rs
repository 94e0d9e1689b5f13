//! `cairn-web`: the device's face in a browser. HTTPS with a self-signed certificate made on
//! the device ([`tls`]); the claim with the button for an unclaimed device ([`claim`]); the setup
//! form ([`settings`]); the owner's sessions ([`auth`]) and dashboard; all of it talking to PID 1
//! only through the [`Device`] trait ([`device`]).
//!
//! One entry point, [`run`] (or [`serve`] inside a caller's runtime), with plain values in
//! [`Config`]; the command line is the `cairn web` role's. Memory: see the crate's README.

pub mod auth;
pub mod backup;
pub mod chat;
pub mod claim;
pub mod device;
pub mod files;
pub mod form;
pub mod mdns;
pub mod names;
pub mod owner_vault;
pub mod pages;
pub mod proxy;
mod server;
pub mod settings;
pub mod share;
pub mod site;
pub mod social;
pub mod storage;
pub mod sysinfo;
pub mod tls;
pub mod trust;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

pub use device::{
    Board, ControlSocket, Device, Pairing, Service, SlotVersion, Slots, UpdateStatus, Window,
};
pub use settings::{Kdf, Settings};

/// What the service needs to run.
pub struct Config {
    /// Its state: `settings.toml`, `tls/`. The dashboard's disk figures are of its file system.
    pub data_dir: PathBuf,
    /// Sockets already bound (PID 1's port 443, or what the caller bound).
    pub listeners: Vec<TcpListener>,
    /// The device's addresses: in a new certificate, and the first one in the console's line.
    pub addresses: Vec<IpAddr>,
    /// Where the memory figures come from (`/proc/meminfo`).
    pub meminfo: PathBuf,
    /// The passphrase hash's cost.
    pub kdf: Kdf,
    /// Longest a claim poll stays open before it answers "still waiting".
    pub wait_poll: Duration,
    /// The storage node (its figures, partners, invitations); none: the pages say it is not
    /// there.
    pub node: Option<Arc<dyn storage::Node>>,
    /// The owner's vault, made at setup (none: setup makes no vault, as on a test host).
    pub vault: Option<owner_vault::OwnerVault>,
    /// Where the certificate and names for the bundled services go ([`share`]); none: nowhere.
    pub share: Option<PathBuf>,
    /// Jabber's admin socket (Prosody's); none: this device has no Jabber.
    pub chat: Option<chat::Prosody>,
    /// Services behind the HTTPS (Prosody's file sharing at `/file_share/`).
    pub upstreams: Vec<proxy::Upstream>,
    /// The services' own backups ([`backup`]); none: nothing is backed up.
    pub backups: Option<backup::Backups>,
    /// snac's data folder (the fediverse; [`social`]); none: this device has none.
    pub social: Option<PathBuf>,
    /// The system layer's root certificates, first in the bundle the services trust
    /// ([`trust`]); none, or a file that is not there: the plug and the owner's servers only.
    pub roots: Option<PathBuf>,
}

impl Config {
    /// The device's defaults over `data_dir` and `listeners`.
    pub fn new(data_dir: PathBuf, listeners: Vec<TcpListener>) -> Config {
        Config {
            data_dir,
            listeners,
            addresses: Vec::new(),
            meminfo: PathBuf::from("/proc/meminfo"),
            kdf: Kdf::default(),
            wait_poll: WAIT_POLL_MAX,
            node: None,
            share: None,
            chat: None,
            upstreams: Vec::new(),
            vault: None,
            backups: None,
            social: None,
            roots: None,
        }
    }
}

/// What [`serve`] tells its caller once it listens.
#[derive(Clone, Debug)]
pub struct Started {
    /// The certificate's SHA-256 fingerprint, as browsers show it.
    pub fingerprint: String,
    /// The addresses it listens on.
    pub local_addrs: Vec<SocketAddr>,
    /// The line said on the console.
    pub announcement: String,
}

/// Runs the service on a current-thread runtime of its own until an error, or until SIGTERM
/// (how PID 1 stops a service), after which it finishes the requests under way and returns
/// `Ok`; `ready` is called once it listens.
pub fn run(config: Config, device: Arc<dyn Device>, ready: impl FnOnce(&Started)) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // PID 1's calls and the passphrase hash block: they run on these few threads.
        .max_blocking_threads(BLOCKING_THREADS_MAX)
        .thread_stack_size(BLOCKING_STACK_BYTES)
        .build()
        .context("starting the runtime")?
        .block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("watching for SIGTERM")?;
            serve_until(config, device, ready, async {
                term.recv().await;
            })
            .await
        })
}

/// Serves on the caller's tokio runtime (which must have time and I/O enabled).
pub async fn serve(
    config: Config,
    device: Arc<dyn Device>,
    ready: impl FnOnce(&Started),
) -> Result<()> {
    serve_until(config, device, ready, std::future::pending()).await
}

/// [`serve`] until `shutdown` completes; then the requests under way are answered (for at most
/// 2 s: PID 1 gives the web 3 s before SIGKILL) and it returns `Ok`.
pub async fn serve_until(
    config: Config,
    device: Arc<dyn Device>,
    ready: impl FnOnce(&Started),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    server::serve(config, device, ready, shutdown).await
}

/// Longest a claim poll stays open (the page polls again at once).
pub const WAIT_POLL_MAX: Duration = Duration::from_secs(25);
/// Threads for blocking calls (PID 1's socket, the passphrase hash, durable writes).
pub const BLOCKING_THREADS_MAX: usize = 2;
/// Their stacks.
pub const BLOCKING_STACK_BYTES: usize = 256 * 1024;
