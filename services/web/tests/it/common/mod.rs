//! What the web's tests share: a fake PID 1 behind the `Device` trait (its pairing window opened
//! by the test, every call recorded), the server started in this process on 127.0.0.1:0 with a
//! temporary data directory, and a small HTTPS "browser" (hyper over tokio-rustls) that trusts
//! the server's certificate by its SHA-256 fingerprint and keeps cookies.
//!
//! Each test file builds this module as its own, so a helper only one file uses is marked
//! `#[allow(dead_code)]` to keep the other file's build quiet.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use cairn_web::owner_vault::OwnerVault;
use cairn_web::storage::Node;
use cairn_web::trust::HandshakeOnly;
use cairn_web::{
    Board, Config, Device, Kdf, Pairing, Service, Settings, SlotVersion, UpdateStatus, Window,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::CertificateDer;
use tempfile::TempDir;

/// A cheap passphrase hash for tests (the real cost is the default `Kdf`).
pub const TEST_KDF: Kdf = Kdf {
    m_kib: 256,
    t: 1,
    p: 1,
};
/// How long a claim poll stays open in tests.
pub const POLL: Duration = Duration::from_millis(600);
/// The owner's passphrase in tests that start set up.
pub const PASSPHRASE: &str = "correct horse battery";

/// PID 1 as the tests play it.
pub struct FakeDevice {
    state: Mutex<FakeState>,
    /// Set: the server stops (as PID 1's SIGTERM stops the role).
    stop: tokio::sync::watch::Sender<bool>,
}

impl Default for FakeDevice {
    fn default() -> FakeDevice {
        FakeDevice {
            state: Mutex::default(),
            stop: tokio::sync::watch::channel(false).0,
        }
    }
}

#[derive(Default)]
struct FakeState {
    claimed: bool,
    name: Option<String>,
    window: Option<u64>,
    last_window: u64,
    calls: Vec<String>,
    /// Every call to PID 1 but `board`, `status` too.
    asked: usize,
    /// Each service's log, as `logs` answers it (none: empty).
    logs: BTreeMap<String, String>,
    /// Stop the server right after saying yes to a reboot.
    stops_on_reboot: bool,
    /// The system slots, when the test gives the device some.
    slots: Option<FakeSlots>,
    /// How pairing goes, as `board` says.
    pairing: Pairing,
}

/// The device's system slots as a test gives them: two files, slot a running; bundles go
/// through the real installer (`cairn_update::install`) into slot b's file.
pub struct FakeSlots {
    /// The keys bundles must be signed with.
    pub keys: cairn_update::keys::TrustedKeys,
    /// The other slot's file (b).
    pub inactive: std::path::PathBuf,
    /// The running build; a bundle must be newer.
    pub running_build: u64,
    /// What each slot holds.
    pub status: UpdateStatus,
}

impl FakeDevice {
    /// A device already claimed by its owner (or not).
    pub fn new(claimed: bool) -> Arc<FakeDevice> {
        let d = FakeDevice::default();
        d.state.lock().unwrap().claimed = claimed;
        Arc::new(d)
    }

    /// A short press of the button: a new pairing window opens, unless one is open (presses
    /// do not stack, as on the board); returns the open window.
    #[allow(dead_code, reason = "claim only")]
    pub fn press(&self) -> u64 {
        let mut s = self.state.lock().unwrap();
        if let Some(open) = s.window {
            return open;
        }
        s.last_window += 1;
        s.window = Some(s.last_window);
        s.last_window
    }

    /// An attempt to pair ended with `last` (the window stays as it is).
    #[allow(dead_code, reason = "storage only")]
    pub fn pairing_ended(&self, last: &str) {
        let mut s = self.state.lock().unwrap();
        s.pairing = Pairing {
            busy: false,
            last: Some(last.into()),
        };
    }

    /// Sets what `logs` answers for `service`.
    #[allow(dead_code, reason = "system only")]
    pub fn set_log(&self, service: &str, text: &str) {
        let mut s = self.state.lock().unwrap();
        s.logs.insert(service.into(), text.into());
    }

    /// How many calls PID 1 has had, `status` too: unchanged across a request means the request
    /// never reached PID 1. `board` is not counted: the server asks it on its own (once after
    /// start, and while someone waits for the button), whatever a test's requests do.
    #[allow(dead_code, reason = "system only")]
    pub fn asked(&self) -> usize {
        self.state.lock().unwrap().asked
    }

    /// The open pairing window's time runs out.
    #[allow(dead_code, reason = "claim only")]
    pub fn expire(&self) {
        self.state.lock().unwrap().window = None;
    }

    /// Stops the server right after saying yes to a reboot, as PID 1 does (it stops every
    /// service at once).
    #[allow(dead_code, reason = "admin only")]
    pub fn stops_on_reboot(&self) {
        self.state.lock().unwrap().stops_on_reboot = true;
    }

    /// Gives the device system slots (for `update` and `update-status`).
    #[allow(dead_code, reason = "update only")]
    pub fn set_slots(&self, slots: FakeSlots) {
        self.state.lock().unwrap().slots = Some(slots);
    }

    /// Every call but `board` and `status`, in order (`claim 1`, `claimed plug`, `say …`).
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Whether a call starting with `prefix` was made.
    pub fn called(&self, prefix: &str) -> bool {
        self.calls().iter().any(|c| c.starts_with(prefix))
    }

    fn record(&self, call: String) {
        let mut s = self.state.lock().unwrap();
        s.asked += 1;
        s.calls.push(call);
    }

    fn count(&self) {
        self.state.lock().unwrap().asked += 1;
    }
}

impl Device for FakeDevice {
    fn status(&self) -> Result<Vec<Service>> {
        self.count();
        Ok(services())
    }

    fn board(&self) -> Result<Board> {
        let s = self.state.lock().unwrap();
        Ok(Board {
            claimed: s.claimed,
            name: s.name.clone(),
            health: if s.claimed { "healthy" } else { "setup-needed" }.into(),
            window: s.window.map(|id| Window {
                id,
                remaining_ms: 60_000,
            }),
            last_window: s.last_window,
            pairing: s.pairing.clone(),
        })
    }

    fn claim(&self, window: u64) -> Result<()> {
        let mut s = self.state.lock().unwrap();
        s.asked += 1;
        if s.window != Some(window) {
            bail!("window {window} is not open");
        }
        // A claim completes the window, as PID 1's does.
        s.window = None;
        s.calls.push(format!("claim {window}"));
        Ok(())
    }

    fn refuse(&self, window: u64) -> Result<()> {
        let mut s = self.state.lock().unwrap();
        if s.window != Some(window) {
            bail!("window {window} is not open");
        }
        s.window = None;
        s.calls.push(format!("refuse {window}"));
        Ok(())
    }

    fn claimed(&self, name: &str) -> Result<()> {
        let mut s = self.state.lock().unwrap();
        s.asked += 1;
        s.claimed = true;
        s.name = Some(name.into());
        s.calls.push(format!("claimed {name}"));
        Ok(())
    }

    fn restart(&self, service: &str) -> Result<()> {
        self.record(format!("restart {service}"));
        Ok(())
    }

    fn logs(&self, service: &str) -> Result<String> {
        self.record(format!("logs {service}"));
        // As PID 1: only the services it runs have a log.
        if !services().iter().any(|s| s.name == service) {
            bail!("no service named {service:?}");
        }
        let s = self.state.lock().unwrap();
        Ok(s.logs.get(service).cloned().unwrap_or_default())
    }

    fn reboot(&self) -> Result<()> {
        self.record("reboot".into());
        if self.state.lock().unwrap().stops_on_reboot {
            self.stop.send_replace(true);
        }
        Ok(())
    }

    fn poweroff(&self) -> Result<()> {
        self.record("poweroff".into());
        Ok(())
    }

    fn say(&self, text: &str) -> Result<()> {
        self.record(format!("say {text}"));
        Ok(())
    }

    fn pair(&self) -> Result<String> {
        self.record("pair".into());
        let mut s = self.state.lock().unwrap();
        if !s.claimed {
            bail!("this device is not set up yet");
        }
        if s.window.is_some() {
            bail!("the pairing window is already open, 60 s left");
        }
        s.last_window += 1;
        s.window = Some(s.last_window);
        Ok("pairing window open for 60 s".into())
    }

    fn reset(&self) -> Result<String> {
        self.record("reset".into());
        Ok("press the device's button within 60 s to wipe it".into())
    }

    fn update_status(&self) -> Result<UpdateStatus> {
        self.count();
        let s = self.state.lock().unwrap();
        match &s.slots {
            Some(slots) => Ok(slots.status.clone()),
            None => bail!("this device has no system slots"),
        }
    }

    fn update(&self, bundle: &mut dyn std::io::Read) -> Result<String> {
        self.record("update".into());
        let (keys, inactive, running_build) = {
            let s = self.state.lock().unwrap();
            let Some(slots) = &s.slots else {
                bail!("this device has no system slots");
            };
            (
                slots.keys.to_text(),
                slots.inactive.clone(),
                slots.running_build,
            )
        };
        let keys = cairn_update::keys::TrustedKeys::parse(&keys).map_err(anyhow::Error::msg)?;
        let policy = cairn_update::install::Policy {
            keys: &keys,
            board: "qemu-virt",
            running_build,
            allow_downgrade: false,
        };
        let mut slot = cairn_update::slot::FileSlot::open(&inactive)?;
        // Unlocked while the bundle streams: the page's other calls go on meanwhile.
        let m = cairn_update::install::apply(bundle, &policy, &mut slot)
            .map_err(|e| anyhow::anyhow!("update refused: {e}"))?;
        let mut s = self.state.lock().unwrap();
        let status = &mut s.slots.as_mut().expect("slots").status;
        status.slots.b = Some(SlotVersion {
            version: m.version.clone(),
            build: m.build,
        });
        status.trying = Some("b".into());
        status.tries_left = 3;
        Ok(format!(
            "installed {} (build {}) into slot b and read it back; it is tried at the next restart",
            m.version, m.build
        ))
    }
}

/// The storage node as the tests play it: answers `status` from its fields, records every
/// other request.
#[derive(Default)]
pub struct FakeNode {
    /// What `status` answers (`None`: the node is down).
    pub status: Mutex<Option<serde_json::Value>>,
    /// Requests other than `status` and `set_capacity`, in order.
    pub requests: Mutex<Vec<serde_json::Value>>,
    /// The last `set_capacity`.
    pub offered: Mutex<Option<u64>>,
}

impl FakeNode {
    /// A node with two partners and the owner's data below target.
    pub fn new() -> Arc<FakeNode> {
        let n = FakeNode::default();
        *n.status.lock().unwrap() = Some(serde_json::json!({
            "peer": "12D3KooWme", "capacity": 8u64 << 30, "used": 3u64 << 20,
            "partners": [
                {"peer": "12D3KooWfriendA", "via": "button", "since": 1, "connected": true,
                 "health": "live", "score": 0.97, "held_for_them": 5u64 << 20, "held_for_us": 7u64 << 20},
                {"peer": "12D3KooWfriendB", "via": "invitation", "since": 2, "connected": false,
                 "health": "unreachable", "score": 0.5, "held_for_them": 0, "held_for_us": 1u64 << 20},
            ],
            "chunks": {"chunks": 10, "full": 7, "degraded": 2, "unprotected": 1, "unreadable": 0, "held_here": 3, "held_here_bytes": 3u64 << 20},
        }));
        Arc::new(n)
    }

    /// The requests other than `status` made so far.
    #[allow(dead_code, reason = "storage only")]
    pub fn asked(&self) -> Vec<serde_json::Value> {
        self.requests.lock().unwrap().clone()
    }
}

impl Node for FakeNode {
    fn call(&self, request: serde_json::Value) -> Result<serde_json::Value> {
        if request["op"] == "status" {
            return match self.status.lock().unwrap().clone() {
                Some(v) => Ok(v),
                None => bail!("node control socket /run/node/node.sock: connection refused"),
            };
        }
        if request["op"] == "set_capacity" {
            *self.offered.lock().unwrap() = request["bytes"].as_u64();
            return Ok(serde_json::json!({"capacity": request["bytes"]}));
        }
        self.requests.lock().unwrap().push(request.clone());
        match request["op"].as_str() {
            Some("invite") => Ok(serde_json::json!({"code": "cairn1-abc<def>", "expires": 99})),
            Some("join") if request["code"] == "expired" => {
                bail!("the invitation of 12D3KooWx has expired")
            }
            Some("join") => Ok(serde_json::json!({"peer": "12D3KooWjoined"})),
            Some("unpair") if request["peer"] == "12D3KooWfriendA" => Ok(serde_json::json!({})),
            Some("unpair") => bail!("{} is not a partner", request["peer"]),
            _ => bail!("unknown operation"),
        }
    }
}

/// The services the fake PID 1 runs.
fn services() -> Vec<Service> {
    vec![
        Service {
            name: "node".into(),
            state: "ready".into(),
            pid: Some(42),
            uptime_ms: Some(5000),
            restarts: 0,
            reason: None,
            memory_bytes: Some(30 << 20),
        },
        Service {
            name: "web".into(),
            state: "ready".into(),
            pid: Some(43),
            uptime_ms: Some(5000),
            restarts: 1,
            reason: None,
            memory_bytes: Some(9 << 20),
        },
    ]
}

/// The owner's vault of a test server over `data`.
pub fn test_vault(data: &Path) -> OwnerVault {
    OwnerVault {
        home: data.join("vault"),
        place: cairn_web::owner_vault::Placement {
            targets: (0..3)
                .map(|i| cairn_vault::home::Target::Dir(data.join(format!("shards{i}"))))
                .collect(),
            nodes: Arc::new(cairn_vault::vault::NoNode),
            k: 2,
            n: 3,
        },
        kdf: cairn_vault::keys::KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        },
        open: Arc::default(),
    }
}

/// A running server; it stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub fingerprint: String,
    /// Every browser's TLS: the certificate pinned, then its key.
    pub tls: Arc<rustls::ClientConfig>,
    pub device: Arc<FakeDevice>,
    /// The storage node it talks to.
    #[allow(dead_code, reason = "storage only")]
    pub node: Arc<FakeNode>,
    /// The data directory, kept while the server runs.
    #[allow(dead_code, reason = "read by claim and admin only")]
    pub data: Arc<TempDir>,
    /// Once it has stopped: how it ended.
    #[allow(dead_code, reason = "admin only")]
    pub stopped: std::sync::mpsc::Receiver<std::result::Result<(), String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.device.stop.send_replace(true);
    }
}

impl Server {
    /// Stops the server and waits until it has (its open vault let go).
    #[allow(dead_code, reason = "recovery only")]
    pub fn stop(&self) {
        self.device.stop.send_replace(true);
        let r = self.stopped.recv_timeout(Duration::from_secs(10));
        assert!(matches!(r, Ok(Ok(()))), "{r:?}");
    }

    /// An unclaimed device's web, fresh.
    #[allow(dead_code, reason = "claim and admin only")]
    pub fn unclaimed() -> Server {
        let data = Arc::new(tempfile::tempdir().unwrap());
        Server::start(data, FakeDevice::new(false))
    }

    /// A device set up as `plug` with [`PASSPHRASE`] (PID 1 knowing it, or not).
    #[allow(dead_code, reason = "not recovery")]
    pub fn set_up(pid1_knows: bool) -> Server {
        let data = Arc::new(tempfile::tempdir().unwrap());
        write_settings(data.path(), "plug");
        Server::start(data, FakeDevice::new(pid1_knows))
    }

    /// Starts the service over `data` the way the role does (its own runtime and thread),
    /// until the device's stop (not SIGTERM: this process's tests must die of it).
    pub fn start(data: Arc<TempDir>, device: Arc<FakeDevice>) -> Server {
        Server::start_with(data, device, None)
    }

    /// An unclaimed device's web that makes the owner's vault at setup (2-of-3 over three
    /// directories in its data directory, a cheap key hash).
    #[allow(dead_code, reason = "recovery only")]
    pub fn unclaimed_with_vault() -> Server {
        let data = Arc::new(tempfile::tempdir().unwrap());
        let vault = test_vault(data.path());
        Server::start_with(data, FakeDevice::new(false), Some(vault))
    }

    /// [`Server::start`], with the owner's vault at `vault`.
    pub fn start_with(
        data: Arc<TempDir>,
        device: Arc<FakeDevice>,
        vault: Option<OwnerVault>,
    ) -> Server {
        Server::start_sharing(data, device, vault, None)
    }

    /// [`Server::start_with`], leaving the certificate and names for the bundled services in
    /// `share`.
    pub fn start_sharing(
        data: Arc<TempDir>,
        device: Arc<FakeDevice>,
        vault: Option<OwnerVault>,
        share: Option<std::path::PathBuf>,
    ) -> Server {
        Server::start_configured(data, device, vault, share, |_| {})
    }

    /// [`Server::start_sharing`], with the rest of its `Config` as `configure` leaves it.
    pub fn start_configured(
        data: Arc<TempDir>,
        device: Arc<FakeDevice>,
        vault: Option<OwnerVault>,
        share: Option<std::path::PathBuf>,
        configure: impl FnOnce(&mut Config),
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut config = Config::new(data.path().to_path_buf(), vec![listener]);
        config.addresses = vec!["127.0.0.1".parse().unwrap()];
        config.kdf = TEST_KDF;
        config.wait_poll = POLL;
        let node = FakeNode::new();
        config.node = Some(node.clone());
        config.vault = vault;
        config.share = share;
        let meminfo = data.path().join("meminfo");
        std::fs::write(
            &meminfo,
            "MemTotal:         251904 kB\nMemFree:  100 kB\nMemAvailable:     219000 kB\n",
        )
        .unwrap();
        config.meminfo = meminfo;
        configure(&mut config);
        let (tx, rx) = std::sync::mpsc::channel();
        let (stopped_tx, stopped) = std::sync::mpsc::channel();
        let dev: Arc<dyn Device> = device.clone();
        let mut stop = device.stop.subscribe();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(cairn_web::BLOCKING_THREADS_MAX)
                .build()
                .unwrap();
            let result = rt.block_on(cairn_web::serve_until(
                config,
                dev,
                |s| tx.send(s.clone()).unwrap(),
                async move {
                    let _ = stop.wait_for(|s| *s).await.map(|_| ());
                },
            ));
            // The runtime goes first, with every task holding the server's state (its open
            // vault among it): "stopped" means all of it is gone.
            drop(rt);
            let _ = stopped_tx.send(result.map_err(|e| format!("{e:#}")));
        });
        let started = rx.recv_timeout(Duration::from_secs(10)).expect("started");
        Server {
            addr: started.local_addrs[0],
            tls: tls_config(&started.fingerprint, ALL),
            fingerprint: started.fingerprint,
            device,
            node,
            data,
            stopped,
        }
    }

    /// An unclaimed device's web leaving the certificates and names for the bundled services
    /// in a share folder of its data directory; that folder.
    #[allow(dead_code, reason = "share and trust only")]
    pub fn unclaimed_sharing() -> (Server, std::path::PathBuf) {
        let data = Arc::new(tempfile::tempdir().unwrap());
        let share = data.path().join("share");
        std::fs::create_dir_all(&share).unwrap();
        let server = Server::start_sharing(data, FakeDevice::new(false), None, Some(share.clone()));
        (server, share)
    }

    /// A new browser, with no cookies.
    pub fn browser(&self) -> Browser {
        Browser::new(self.addr, &self.fingerprint, self.tls.clone())
    }

    /// A browser logged in with [`PASSPHRASE`].
    #[allow(dead_code, reason = "admin and system only")]
    pub async fn logged_in(&self) -> Browser {
        let mut b = self.browser();
        let r = b.form("/admin/login", &[("passphrase", PASSPHRASE)]).await;
        assert_eq!(r.status, 303, "{}", r.body);
        assert_eq!(r.header("location"), Some("/admin/"));
        b
    }
}

/// Writes `settings.toml` for a device named `name` with [`PASSPHRASE`].
#[allow(dead_code, reason = "not recovery")]
pub fn write_settings(data: &Path, name: &str) {
    Settings {
        name: name.into(),
        passphrase_hash: TEST_KDF.hash(PASSPHRASE).unwrap(),
        offer_bytes: 1 << 30,
        domain: None,
        recovery_confirmed: true,
        social_accounts: Vec::new(),
        social_removed: Vec::new(),
        newer: toml::Table::new(),
    }
    .save(data)
    .unwrap();
}

/// An answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
    /// The body's bytes as they came (a zip).
    #[allow(dead_code, reason = "files only")]
    pub raw: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The value of a hidden `csrf` field in the page.
    pub fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no csrf field in {}", self.body));
        let rest = &self.body[at + 19..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

/// TLS 1.2 and 1.3, or one of them.
pub const ALL: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A client configuration trusting the certificate with `fingerprint`, as a person comparing
/// the console's line does, and then its key (as a browser pinning it does): the device
/// certifies its key anew for its name at setup.
pub fn tls_config(
    fingerprint: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let fingerprint = fingerprint.to_string();
    let key = Mutex::new(None::<Vec<u8>>);
    let accept = move |end: &CertificateDer<'_>, _: &[CertificateDer<'_>]| {
        let spki = x509_parser::parse_x509_certificate(end)
            .map(|(_, c)| c.public_key().raw.to_vec())
            .ok();
        let mut key = key.lock().unwrap();
        if cairn_web::tls::fingerprint(end) == fingerprint {
            *key = spki;
            Ok(())
        } else if key.is_some() && *key == spki {
            Ok(())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
    };
    Arc::new(HandshakeOnly::client_config_for(accept, versions))
}

/// A browser: one HTTPS connection per request, a cookie jar, and the headers a browser sends
/// on a same-origin request.
pub struct Browser {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    pub cookies: BTreeMap<String, String>,
}

impl Browser {
    pub fn new(addr: SocketAddr, _fingerprint: &str, tls: Arc<rustls::ClientConfig>) -> Browser {
        Browser {
            addr,
            tls,
            cookies: BTreeMap::new(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, &[], Vec::new()).await
    }

    /// A form, as a browser posts it from a page of this site.
    pub async fn form(&mut self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.send(
            "POST",
            path,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", &self.origin()),
                ("sec-fetch-site", "same-origin"),
            ],
            body.into_bytes(),
        )
        .await
    }

    /// One claim poll, as the page's script sends it.
    #[allow(dead_code, reason = "claim only")]
    pub async fn wait(&mut self) -> serde_json::Value {
        let r = self
            .send(
                "POST",
                "/setup/api/wait",
                &[
                    ("content-type", "application/json"),
                    ("origin", &self.origin()),
                    ("sec-fetch-site", "same-origin"),
                ],
                b"{}".to_vec(),
            )
            .await;
        r.json()
    }

    pub fn origin(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Sends one request on a new connection (Host and cookies added) and reads the answer.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(
                rustls::pki_types::ServerName::try_from("cairn.local").unwrap(),
                tcp,
            )
            .await
            .expect("TLS handshake");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        if !self.cookies.is_empty() {
            let jar = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            req = req.header("cookie", jar);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender
            .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .expect("an answer");
        for c in resp.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (kv, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if v.is_empty() || attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), v.to_string());
            }
        }
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            raw: bytes,
        }
    }
}

/// Form encoding of a value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls until the answer is not "waiting" (at most `polls` times).
#[allow(dead_code, reason = "claim and recovery only")]
pub async fn wait_for_outcome(b: &mut Browser, polls: usize) -> serde_json::Value {
    for _ in 0..polls {
        let a = b.wait().await;
        if a["state"] != "waiting" {
            return a;
        }
    }
    serde_json::json!({"state": "waiting"})
}

/// One browser waits, the button is pressed, the browser wins: returns it with its setup
/// token, on the setup page.
#[allow(dead_code, reason = "claim and recovery only")]
pub async fn claim(server: &Server) -> Browser {
    let mut b = server.browser();
    assert_eq!(b.wait().await["state"], "waiting");
    let window = server.device.press();
    let a = wait_for_outcome(&mut b, 5).await;
    assert_eq!(a["state"], "granted", "{a}");
    assert!(server.device.called(&format!("claim {window}")));
    b
}

/// Claims the device and submits setup with [`PASSPHRASE`]; returns the browser and the page.
#[allow(dead_code, reason = "recovery and files only")]
pub async fn set_up(server: &Server) -> (Browser, Reply) {
    let mut b = claim(server).await;
    let csrf = b.get("/setup").await.csrf();
    let r = b
        .form(
            "/setup",
            &[
                ("csrf", &csrf),
                ("name", "attic"),
                ("passphrase", PASSPHRASE),
                ("passphrase2", PASSPHRASE),
                ("offer", "0"),
                ("domain", ""),
            ],
        )
        .await;
    (b, r)
}

/// The recovery key on a page (`cairn-recovery-1 XXXX-…`).
#[allow(dead_code, reason = "recovery and files only")]
pub fn key_on(page: &str) -> String {
    let start = page
        .find("cairn-recovery-1 ")
        .expect("a recovery key on the page");
    page[start..]
        .chars()
        .take_while(|c| *c != '<')
        .collect::<String>()
        .trim()
        .to_string()
}

/// A device set up with its vault (setup, then the recovery key confirmed): the owner's browser.
#[allow(dead_code, reason = "files only")]
pub async fn set_up_with_vault(server: &Server) -> Browser {
    let (mut b, r) = set_up(server).await;
    let key = key_on(&r.body);
    let csrf = b.get("/admin/recovery").await.csrf();
    let last = key.rsplit('-').next().unwrap();
    let r = b
        .form(
            "/admin/recovery/confirm",
            &[("csrf", &csrf), ("last", last)],
        )
        .await;
    assert_eq!(r.header("location"), Some("/admin/"));
    b
}
