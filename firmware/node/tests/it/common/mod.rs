//! What the node's in-process tests share: a node running on its own thread with its own
//! runtime (`node::run_until`), on a loopback TCP port, mDNS off, its control socket in its
//! temporary directory; stopped on drop.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use cairn_node::control::Client;
use cairn_node::node::{self, Config};
use serde_json::Value;
use tokio::sync::oneshot;

/// Longest a node may take to come up.
pub const START_WAIT: Duration = Duration::from_secs(20);

/// A running node.
pub struct Running {
    /// Its temporary directory: `home/` and `node.sock`.
    pub dir: tempfile::TempDir,
    /// Its control socket.
    pub sock: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Starts a node, `tune` adjusting its configuration first; waits until it listens.
    pub fn start(tune: impl FnOnce(&mut Config)) -> Running {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut cfg = Config::new(dir.path().join("home"));
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")];
        cfg.mdns = false;
        cfg.control = dir.path().join("node.sock");
        tune(&mut cfg);
        let sock = cfg.control.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            node::run_until(
                cfg,
                move || {
                    let _ = ready_tx.send(());
                },
                Some(stop_rx),
            )
        });
        if ready_rx.recv_timeout(START_WAIT).is_err() {
            let why = if thread.is_finished() {
                format!("{:?}", thread.join())
            } else {
                format!("no listener after {START_WAIT:?}")
            };
            panic!("node did not start: {why}");
        }
        Running {
            dir,
            sock,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Its home directory.
    #[allow(dead_code, reason = "not every test file reads the home")]
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Registers a new owner (a fresh owner secret's owner key) with the node, as a vault
    /// does; the key and its hex form, which `put_shard` and `get_shard` name.
    #[allow(dead_code, reason = "not every test file puts shards")]
    pub fn new_owner(&self) -> (cairn_vault::OwnerKey, String) {
        let secret = cairn_vault::OwnerSecret::generate().expect("random secret");
        let key = secret.keys().owner_key().clone();
        let hex = self
            .client()
            .register_owner(&key)
            .expect("registering the owner");
        (key, hex)
    }

    /// A client of its control socket.
    pub fn client(&self) -> Client {
        Client::connect(&self.sock).expect("control socket")
    }

    /// One control request; the node's one-line reason on refusal.
    pub fn op(&self, req: Value) -> Result<Value, String> {
        self.client().op(req).map_err(|e| e.to_string())
    }

    /// Whether it still runs: not stopped, and its thread has not ended.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the node and checks that it stopped cleanly.
    pub fn stop(&mut self) {
        let _ = self.stop.take().expect("running").send(());
        match self.thread.take().expect("running").join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("node stopped with an error: {e:#}"),
            Err(_) => panic!("node thread panicked"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
