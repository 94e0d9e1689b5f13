//! A running node: opening it (key, chunk store, partners, books) and the run loop that
//! drives the swarm task ([`crate::swarm`]), the control socket ([`crate::server`]) and the
//! owner's background rounds ([`crate::owner`]) until it is told to stop. The state they
//! share is in [`crate::state`]; the holder's side in [`crate::holder`]; pairing in
//! [`crate::pairing`].
//!
//! Threads: one tokio runtime with two workers runs the swarm task and the control
//! connections (at start, two short-lived threads store a new key and open the chunk store
//! while the runtime and libp2p are set up); chunk-store calls (blocking I/O) run on tokio's
//! blocking pool, at most `inflight_per_peer` per peer and bounded in bytes by the frame budget.
//!
//! Memory (the node's RSS budget is 64 MiB): frames in flight ≤ `frame_budget` (24 MiB), the
//! chunk store's index ≤ `store_memory` (8 MiB), partners and peers a few hundred bytes each,
//! chunks being placed ≤ [`crate::owner::PENDING_CHUNKS_MAX`] records, libp2p connections ≤
//! `max_connections` (strangers ≤ `max_stranger_connections`) with at most `muxer_streams`
//! streams each (`max_streams` of them shard streams), the streams peers open drawn from
//! node-wide pools, each stream's unread bytes ≤ 256 KiB ([`crate::mux`]); the README's Bounds
//! adds it up.

use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_store::Store;
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};

use crate::codec::Budget;
use crate::net;

// The items that lived here before the node was split keep their paths.
pub use crate::config::Config;
pub use crate::holder::err;
pub use crate::state::{
    now_secs, recount_held, Cmd, Partner, PeerMeta, Persisted, Placing, Shared, State,
    PER_PEER_REQUESTS, PLACING_BYTES, UNREACHABLE_FOR,
};
pub use crate::swarm::SwarmTask;

/// Opens the node: key, store (its space reserve held), partners; rebuilds the ledger from
/// the store.
pub fn open(cfg: Config) -> Result<(Arc<Shared>, mpsc::Receiver<Cmd>, libp2p::identity::Keypair)> {
    make_home(&cfg)?;
    let key = crate::identity::load_or_create(&cfg.home.join("identity.key"))?;
    let budget = Budget::new(cfg.limits.frame_budget);
    let (shared, rx) = open_state(cfg, key.public().to_peer_id(), budget, true)?;
    Ok((shared, rx, key))
}

fn make_home(cfg: &Config) -> Result<()> {
    std::fs::create_dir_all(&cfg.home)
        .with_context(|| format!("{}: creating the node's home", cfg.home.display()))
}

/// The chunk store's configuration as the node opens it, with `store_memory` for its index (the
/// device bench measures the store with exactly this).
pub fn store_config(store_memory: usize) -> cairn_store::Config {
    cairn_store::Config {
        memory_budget_bytes: store_memory,
        max_shard_bytes: crate::wire::SHARD_BYTES_MAX as u32,
        max_batch_bytes: 8 << 20,
        ..Default::default()
    }
}

/// The node's state around its chunk store; with `reserve_now` false a missing space reserve
/// is left for [`make_reserve`].
fn open_state(
    cfg: Config,
    me: PeerId,
    budget: Budget,
    reserve_now: bool,
) -> Result<(Arc<Shared>, mpsc::Receiver<Cmd>)> {
    let store_cfg = store_config(cfg.store_memory);
    let dir = cfg.home.join("store");
    let store = if reserve_now {
        Store::open_dir(&dir, store_cfg)
    } else {
        Store::open_dir_reserve_later(&dir, store_cfg)
    }
    .with_context(|| format!("{}: opening the chunk store", dir.display()))?;
    let saved = crate::state::load_persisted(&cfg.home.join("partners.json"))?;
    let (shared, rx) = Shared::new(cfg, me, store, saved, budget);
    shared.load_owners()?;
    // Books rebuilt from what the store and the records really hold (authoritative after a
    // crash).
    recount_held(&shared)?;
    crate::owner::rebuild_books(&shared)?;
    Ok((shared, rx))
}

/// Makes the chunk store's space reserve if it is missing (on a first start: `reserve_bytes`
/// of zeros, synced — long on an SD card), after the node is ready; see
/// [`Store::open_reserve_later`].
fn make_reserve(shared: &Arc<Shared>) {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || {
        if !s.store.ensure_reserve() {
            tracing::warn!(
                "chunk store: no room for its space reserve (deletes on a full disk \
                 may fail until compaction frees space)"
            );
        }
    });
}

/// Runs `f` on a thread of its own; its result comes through the receiver (an error if the
/// thread could not start or panicked).
fn on_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> oneshot::Receiver<Result<T>> {
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(f());
        });
    if let Err(e) = spawned {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Err(anyhow::anyhow!("starting a thread: {e}")));
        return rx;
    }
    rx
}

/// Runs the node until SIGTERM/SIGINT. `ready` is called once it listens and serves control.
pub fn run(cfg: Config, ready: impl FnOnce() + Send + 'static) -> Result<()> {
    run_until(cfg, ready, None)
}

/// Runs the node until SIGTERM/SIGINT or until `stop` fires (for tests that run a node in
/// their own process).
pub fn run_until(
    cfg: Config,
    ready: impl FnOnce() + Send + 'static,
    stop: Option<oneshot::Receiver<()>>,
) -> Result<()> {
    make_home(&cfg)?;
    let key_path = cfg.home.join("identity.key");
    let (key, new_key) = crate::identity::load_or_generate(&key_path)?;
    let me = key.public().to_peer_id();
    let budget = Budget::new(cfg.limits.frame_budget);
    let (limits, mdns) = (cfg.limits.clone(), cfg.mdns);
    // The disk work (a new key's file; the chunk store) runs on threads of its own while the
    // runtime and the libp2p stack are set up, so the waits for the medium overlap that CPU
    // work (and two syncs may share one journal commit). Both are done before anything
    // listens or the peer id is shown.
    let key_saved = new_key.then(|| {
        let (key, path) = (key.clone(), key_path.clone());
        on_thread("node-key", move || crate::identity::store(&path, &key))
    });
    let opened = {
        let budget = budget.clone();
        on_thread("node-store", move || open_state(cfg, me, budget, false))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let swarm = net::build(key, &limits, budget, mdns)?;
        if let Some(saved) = key_saved {
            saved.await.context("storing the node key")??;
        }
        let (shared, rx) = opened.await.context("opening the node")??;
        let weak = Arc::downgrade(&shared);
        shared
            .budget
            .gate()
            .set_partner_check(move |p| weak.upgrade().is_some_and(|s| s.state().is_partner(p)));
        let listener = crate::server::bind(&shared.cfg.control)?;
        let mut task = SwarmTask::new(shared.clone(), swarm, rx);
        task.start()?;
        let server = tokio::spawn(crate::server::serve(shared.clone(), listener));
        let background = tokio::spawn(crate::owner::background(shared.clone()));
        let scrub = tokio::spawn(crate::scrub::run(shared.clone()));
        tracing::info!(
            "{} starting, control {}",
            shared.me,
            shared.cfg.control.display()
        );
        let mut ready = Some(ready);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let stop = async move {
            match stop {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                () = &mut stop => break,
                () = task.step() => {
                    if task.listening && ready.is_some() {
                        (ready.take().expect("once"))();
                        // What can follow readiness does.
                        make_reserve(&shared);
                    }
                }
            }
        }
        tracing::info!("stopping");
        server.abort();
        background.abort();
        scrub.abort();
        crate::owner::flush(&shared).await.ok();
        shared.persist()?;
        let _ = std::fs::remove_file(&shared.cfg.control);
        Ok(())
    })
}
