//! The HTTPS server: connections (bounded, with handshake and header timeouts), the routes, and
//! what every response carries (security headers, bounded bodies). Unclaimed, the device shows
//! the claim and setup pages; once `settings.toml` exists, the owner's site and `/admin/`.
//!
//! Shared state sits behind one mutex, never held across an await; PID 1's calls, the passphrase
//! hash and durable writes run on the blocking pool.
//!
//! Asked to stop (PID 1's SIGTERM, see [`crate::run`]), it stops accepting, lets the requests
//! under way answer (a reboot's page among them: PID 1 stops the services the moment it has
//! said yes to the reboot) and ends their connections, for at most [`SHUTDOWN_GRACE`].

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use maud::Markup;
use serde_json::json;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::auth::{tokens_equal, Client, KnownBrowsers, LoginLimiter, Sessions};
use crate::claim::{Action, Claims, Outcome};
use crate::device::{valid_service_name, Device, SERVICE_NAME_BYTES_MAX};
use crate::form::{cookie, Form};
use crate::owner_vault::{self, OwnerVault};
use crate::pages::{self, PassphraseErrors, SetupErrors, SetupValues};
use crate::settings::{self, verify_passphrase, Kdf, Settings};
use crate::storage::{self, Node};
use crate::{backup, chat, proxy, share, social};
use crate::{files, site, sysinfo, tls, trust, Config, Started};

/// A page (whole) or a download (streamed from the vault).
type Body = Either<Full<Bytes>, files::Streamed>;

/// What the handlers share.
struct App {
    data_dir: PathBuf,
    meminfo: PathBuf,
    kdf: Kdf,
    wait_poll: Duration,
    device: Arc<dyn Device>,
    node: Option<Arc<dyn Node>>,
    vault: Option<OwnerVault>,
    /// Where the bundled services find the certificate and names.
    share: Option<PathBuf>,
    /// Jabber's admin socket.
    chat: Option<chat::Prosody>,
    /// Services behind the HTTPS, by path prefix.
    upstreams: Vec<proxy::Upstream>,
    /// The services' own backups.
    backups: Option<backup::Backups>,
    /// snac's data folder (the owner's first password is there).
    social: Option<PathBuf>,
    /// The certificate being served (certified anew when the device is renamed).
    live: Arc<tls::Live>,
    /// The device's addresses (in a new certificate) and the first address listened on (the
    /// console's line).
    addresses: Vec<IpAddr>,
    local_addr: SocketAddr,
    /// What the services' bundle of trusted certificates is made of.
    bundle: trust::Bundle,
    /// One backup at a time (the schedule's or the owner's "Back up now").
    backup_turn: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    /// Bumped whenever a waiter's outcome is decided.
    decided: watch::Sender<u64>,
    /// A waiter registered: the board watcher wakes.
    waiter_came: Notify,
    /// One passphrase hash at a time (each takes [`Kdf::m_kib`] of memory).
    kdf_gate: Arc<Semaphore>,
    /// Settings are written by one request at a time.
    settings_write: tokio::sync::Mutex<()>,
    /// True once the service is stopping.
    stopping: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    settings: Option<Settings>,
    claims: Claims,
    sessions: Sessions,
    limiter: LoginLimiter,
    /// The recovery key awaiting confirmation, and the session it was shown to (only in
    /// memory, only until confirmed).
    recovery: Option<(String, String)>,
}

pub(crate) async fn serve(
    config: Config,
    device: Arc<dyn Device>,
    ready: impl FnOnce(&Started),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let settings = Settings::load(&config.data_dir)?;
    let name = settings.as_ref().map(|s| s.name.clone());
    let identity = {
        let (dir, addrs, name) = (
            config.data_dir.clone(),
            config.addresses.clone(),
            name.clone(),
        );
        tokio::task::spawn_blocking(move || tls::load_or_make(&dir, name.as_deref(), &addrs))
            .await??
    };
    let mut listeners = Vec::new();
    let mut local_addrs = Vec::new();
    for l in config.listeners {
        l.set_nonblocking(true)?;
        local_addrs.push(l.local_addr()?);
        listeners.push(tokio::net::TcpListener::from_std(l).context("listening")?);
    }
    if listeners.is_empty() {
        return Err(anyhow!("no socket to listen on"));
    }
    let announcement = announcement(
        &config.addresses,
        local_addrs[0],
        name.as_deref(),
        &identity.fingerprint,
    );
    let live = tls::Live::new(&identity);
    let bundle = trust::Bundle {
        roots: config.roots,
        data_dir: config.data_dir.clone(),
    };
    let app = Arc::new(App {
        data_dir: config.data_dir,
        meminfo: config.meminfo,
        kdf: config.kdf,
        wait_poll: config.wait_poll,
        device,
        node: config.node,
        vault: config.vault,
        share: config.share,
        chat: config.chat,
        upstreams: config.upstreams,
        backups: config.backups,
        social: config.social,
        live: live.clone(),
        addresses: config.addresses,
        local_addr: local_addrs[0],
        bundle,
        backup_turn: tokio::sync::Mutex::new(()),
        state: Mutex::new(State {
            settings,
            ..State::default()
        }),
        decided: watch::channel(0).0,
        waiter_came: Notify::new(),
        kdf_gate: Arc::new(Semaphore::new(1)),
        settings_write: tokio::sync::Mutex::new(()),
        stopping: watch::channel(false).0,
    });
    if let Some(dir) = &app.share {
        let settings = app.state().settings.clone();
        if let Err(e) = share::publish(dir, &app.data_dir, settings.as_ref()) {
            tracing::warn!("the bundled services get no certificate: {e:#}");
        }
        if let Err(e) = app.bundle.compose(dir, &identity.certificate) {
            tracing::warn!("the bundled services trust no server: {e:#}");
        }
    }
    // Said before ready, so the console shows where to go before `cairn: ready`.
    tracing::info!("{announcement}");
    let said = announcement.clone();
    if let Err(e) = app.call(move |d| d.say(&said)).await {
        tracing::warn!("cannot tell the console: {e:#}");
    }
    ready(&Started {
        fingerprint: identity.fingerprint.clone(),
        local_addrs,
        announcement,
    });
    let (confirmed, offer) = app.state().settings.as_ref().map_or((false, None), |s| {
        (s.recovery_confirmed, Some(s.offer_bytes))
    });
    if let (Some(name), true) = (name, confirmed) {
        tokio::spawn(finish_claim(app.clone(), name));
    }
    if let Some(bytes) = offer {
        // The node may have been reset or have started with its command line's figure.
        tokio::spawn(apply_offer(app.clone(), bytes));
    }
    tokio::spawn(watch_board(app.clone()));
    if app.backups.is_some() {
        tokio::spawn(back_up_on_schedule(app.clone(), Instant::now()));
    }
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let acceptor = TlsAcceptor::from(tls::server_config(live)?);
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        tasks.spawn(accept(app.clone(), l, acceptor.clone(), permits.clone()));
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                Some(r) => r?,
                None => return Ok(()),
            },
            () = &mut shutdown => break,
        }
    }
    // No new connections; the open ones finish the request under way, then close.
    tasks.abort_all();
    app.stopping.send_replace(true);
    let all = u32::try_from(CONNECTIONS_MAX).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("stopping with connections still open after {SHUTDOWN_GRACE:?}");
    }
    Ok(())
}

/// The console's line: where to go and what certificate to expect.
fn announcement(
    addresses: &[IpAddr],
    local: SocketAddr,
    name: Option<&str>,
    fingerprint: &str,
) -> String {
    let dns = tls::dns_names(name).pop().unwrap_or_default();
    let port = match local.port() {
        443 => String::new(),
        p => format!(":{p}"),
    };
    // An address of the device; before it has one (the DHCP lease may come after the web
    // starts), its name.
    let ip = addresses
        .iter()
        .find(|a| !a.is_loopback())
        .copied()
        .or(Some(local.ip()).filter(|ip| !ip.is_unspecified()));
    match ip {
        Some(IpAddr::V4(v4)) => {
            format!("https://{v4}{port}/ ({dns}) certificate SHA-256 {fingerprint}")
        }
        Some(IpAddr::V6(v6)) => {
            format!("https://[{v6}]{port}/ ({dns}) certificate SHA-256 {fingerprint}")
        }
        None => format!("https://{dns}{port}/ certificate SHA-256 {fingerprint}"),
    }
}

/// Settings exist but PID 1 does not know the device is claimed (the `claimed` after setup
/// failed, or the state was lost): tell it again.
async fn finish_claim(app: Arc<App>, name: String) {
    match app.call(|d| d.board()).await {
        Ok(b) if b.claimed => {}
        Ok(_) => match app.call(move |d| d.claimed(&name)).await {
            Ok(()) => tracing::info!("told PID 1 the device is claimed"),
            Err(e) => tracing::warn!("telling PID 1 the device is claimed: {e:#}"),
        },
        Err(e) => tracing::warn!("board: {e:#}"),
    }
}

/// Tells the storage node what the owner offers friends; a failure is a log line (the next
/// start tries again; the dashboard shows the node's own figure).
async fn apply_offer(app: Arc<App>, bytes: u64) {
    if app.node.is_none() {
        return;
    }
    match app
        .call_node(move |n| storage::set_capacity(n, bytes))
        .await
    {
        Ok(()) => tracing::info!("offering {bytes} bytes to partners"),
        Err(e) => tracing::warn!("telling the storage node the offer: {e:#}"),
    }
}

/// While anyone waits for the button, looks at the board every [`BOARD_POLL`] and settles each
/// new window.
async fn watch_board(app: Arc<App>) {
    let mut failing = false;
    loop {
        if !app.state().claims.anyone_waiting(Instant::now()) {
            app.waiter_came.notified().await;
            continue;
        }
        tokio::time::sleep(BOARD_POLL).await;
        let board = match app.call(|d| d.board()).await {
            Ok(b) => {
                failing = false;
                b
            }
            Err(e) => {
                // Once per outage, not four times a second.
                if !failing {
                    tracing::warn!("board: {e:#}");
                }
                failing = true;
                continue;
            }
        };
        let action = app.state().claims.on_board(&board, Instant::now());
        match action {
            Action::Nothing => continue,
            Action::Refused => {
                let window = board.last_window;
                tracing::warn!("window {window}: more than one browser waiting, all refused");
                // Left open, the window would swallow the press the page asks for next
                // (presses do not stack) until its time ran out.
                if let Err(e) = app.call(move |d| d.refuse(window)).await {
                    tracing::warn!("window {window}: closing it: {e:#}");
                }
            }
            Action::Claim { window, waiter } => {
                let claimed = app.call(move |d| d.claim(window)).await;
                let mut state = app.state();
                match claimed {
                    Ok(()) => {
                        tracing::info!("window {window}: claimed for the one browser waiting");
                        state.claims.claimed(&waiter, Instant::now());
                    }
                    Err(e) => {
                        tracing::warn!("window {window}: claim refused: {e:#}");
                        state.claims.claim_failed(&waiter, &format!("{e:#}"));
                    }
                }
            }
        }
        app.decided.send_modify(|n| *n += 1);
    }
}

/// Accepts connections while fewer than [`CONNECTIONS_MAX`] are open.
async fn accept(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    permits: Arc<Semaphore>,
) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or the like: wait instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (app, acceptor) = (app.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(stream)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let client = peer.ip();
            let mut stopping = app.stopping.subscribe();
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(respond(app, req, client).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(CONNECTION_BUF_BYTES)
                .max_headers(HEADERS_MAX)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped(&mut stopping) => {
                    // The request under way is answered, then the connection closes.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

impl App {
    fn state(&self) -> MutexGuard<'_, State> {
        // A handler that panicked mid-update leaves plain data; go on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls PID 1 on the blocking pool.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Device) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let device = self.device.clone();
        tokio::task::spawn_blocking(move || f(&*device))
            .await
            .map_err(|e| anyhow!("PID 1's call did not finish: {e}"))?
    }

    /// Works on the owner's vault (each opening derives its key: one at a time, like the
    /// passphrase hashes, on the blocking pool).
    async fn vault_op<T: Send + 'static>(
        &self,
        f: impl FnOnce(&OwnerVault) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let vault = self.vault.clone().context("this device keeps no vault")?;
        let turn = self.kdf_gate.clone().acquire_owned().await?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            f(&vault)
        })
        .await?
    }

    /// Works on the open vault on the blocking pool.
    async fn with_vault<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut cairn_vault::Vault) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let vault = self.vault.clone().context("this device keeps no vault")?;
        tokio::task::spawn_blocking(move || vault.with_unlocked(f))
            .await
            .map_err(|e| anyhow!("the vault's call did not finish: {e}"))?
    }

    /// Hands the backups their secret from the open owner's vault (setup, a login); a failure
    /// is logged and tried again at the next login. At setup (`fresh`) there can be no earlier
    /// backups to look for.
    async fn prepare_backups(&self, fresh: bool) {
        let Some(b) = self.backups.clone() else {
            return;
        };
        match self.with_vault(move |v| b.prepare(v.secret(), fresh)).await {
            Ok(true) => tracing::info!("backups: set up"),
            Ok(false) => {}
            Err(e) => tracing::warn!("backups: cannot set up: {e:#}"),
        }
    }

    /// One backup, now, after any running one. `own`: the owner asked for it, so an earlier
    /// plug's backups waiting to be restored are left as older snapshots.
    async fn back_up(&self, own: bool) -> Option<std::result::Result<backup::Done, String>> {
        let b = self.backups.clone()?;
        let _turn = self.backup_turn.lock().await;
        Some(
            tokio::task::spawn_blocking(move || {
                if own {
                    b.start_own().map_err(|e| format!("{e:#}"))?;
                }
                b.run_and_record()
            })
            .await
            .unwrap_or_else(|e| Err(format!("the backup did not finish: {e}"))),
        )
    }

    /// Calls the storage node on the blocking pool.
    async fn call_node<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Node) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let node = self
            .node
            .clone()
            .context("this device runs no storage node")?;
        tokio::task::spawn_blocking(move || f(&*node))
            .await
            .map_err(|e| anyhow!("the storage node's call did not finish: {e}"))?
    }

    /// Hashes a passphrase, one hash at a time. The turn goes with the hash onto its thread: a
    /// browser that goes away mid-hash does not let a second 19 MiB hash start beside it.
    async fn hash(&self, passphrase: String) -> Result<String> {
        let turn = self.kdf_gate.clone().acquire_owned().await?;
        let kdf = self.kdf;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            kdf.hash(&passphrase)
        })
        .await?
    }

    /// Checks a passphrase against the stored hash, one check at a time.
    async fn verify(&self, passphrase: String) -> Result<bool> {
        let hash = self
            .state()
            .settings
            .as_ref()
            .map(|s| s.passphrase_hash.clone())
            .context("not set up")?;
        let turn = self.kdf_gate.clone().acquire_owned().await?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            verify_passphrase(&hash, &passphrase)
        })
        .await?
    }

    /// Writes settings durably, then makes them the ones in use.
    async fn save(&self, settings: Settings) -> Result<()> {
        let dir = self.data_dir.clone();
        let s = settings.clone();
        tokio::task::spawn_blocking(move || s.save(&dir)).await??;
        let (renamed, accounts_changed) = {
            let mut st = self.state();
            let before = st
                .settings
                .as_ref()
                .map(|s| (s.name.clone(), s.domain.clone(), s.social_accounts.clone()));
            st.settings = Some(settings.clone());
            let renamed =
                before.as_ref().map(|b| (&b.0, &b.1)) != Some((&settings.name, &settings.domain));
            let accounts = before.as_ref().map(|b| &b.2) != Some(&settings.social_accounts);
            (renamed, accounts)
        };
        if renamed {
            // Other servers check that the certificate names the device: it is certified
            // anew (same key) for the new name and served from the next connection on.
            self.recertify(&settings).await;
        }
        // A new household account concerns snac only: Jabber's clients stay connected.
        let restart: &[&str] = if renamed { &share::SERVICES } else { &["snac"] };
        if let Some(share) = self.share.clone().filter(|_| renamed || accounts_changed) {
            // The services read the names when they start: a new name restarts them.
            let data_dir = self.data_dir.clone();
            let (bundle, own) = (self.bundle.clone(), self.live.certificate());
            let published = tokio::task::spawn_blocking(move || {
                share::publish(&share, &data_dir, Some(&settings))?;
                bundle.compose(&share, &own)
            })
            .await?;
            match published {
                Ok(()) => {
                    for &service in restart {
                        if let Err(e) = self.call(move |d| d.restart(service)).await {
                            tracing::info!("{service} not restarted: {e:#}");
                        }
                    }
                }
                Err(e) => tracing::warn!("the bundled services keep their old names: {e:#}"),
            }
        }
        Ok(())
    }

    /// Certifies the key anew for `settings`' names, serves that certificate and says its
    /// fingerprint on the console; a failure keeps the old one (the next start tries again).
    async fn recertify(&self, settings: &Settings) {
        let (dir, addrs, name) = (
            self.data_dir.clone(),
            self.addresses.clone(),
            settings.name.clone(),
        );
        let made =
            tokio::task::spawn_blocking(move || tls::load_or_make(&dir, Some(&name), &addrs)).await;
        match made {
            Ok(Ok(identity)) => {
                self.live.replace(&identity);
                let line = announcement(
                    &self.addresses,
                    self.local_addr,
                    Some(&settings.name),
                    &identity.fingerprint,
                );
                tracing::info!("{line}");
                if let Err(e) = self.call(move |d| d.say(&line)).await {
                    tracing::warn!("cannot tell the console: {e:#}");
                }
            }
            Ok(Err(e)) => tracing::warn!("the certificate keeps its old names: {e:#}"),
            Err(e) => tracing::warn!("the certificate keeps its old names: {e}"),
        }
    }

    /// Writes the services' bundle of trusted certificates again (a server trusted or
    /// forgotten); libcurl reads it at each connection, so snac needs no restart.
    async fn compose_bundle(&self) -> Result<()> {
        let Some(share) = self.share.clone() else {
            return Ok(());
        };
        let (bundle, own) = (self.bundle.clone(), self.live.certificate());
        tokio::task::spawn_blocking(move || bundle.compose(&share, &own)).await?
    }

    /// The live session of the request: its id and CSRF token.
    fn session(&self, req: &Request<Incoming>) -> Option<(String, String)> {
        let id = request_cookie(req, SESSION_COOKIE)?;
        let csrf = self.state().sessions.touch(&id, Instant::now())?;
        Some((id, csrf))
    }

    /// A new session's cookie.
    fn log_in(&self) -> String {
        self.log_in_session().0
    }

    /// A new session's cookie and id.
    fn log_in_session(&self) -> (String, String) {
        let (id, _) = self.state().sessions.create(Instant::now());
        (
            format!("{SESSION_COOKIE}={id}; {COOKIE_ATTRIBUTES}; Path=/"),
            id,
        )
    }

    /// The known browsers' signer, once set up.
    fn known_browsers(&self) -> Option<KnownBrowsers> {
        let state = self.state();
        let hash = &state.settings.as_ref()?.passphrase_hash;
        Some(KnownBrowsers::new(hash))
    }

    /// Who a login attempt of `req` counts against: the known browser its cookie names, or
    /// else its address.
    fn login_client(&self, req: &Request<Incoming>, address: IpAddr) -> Client {
        request_cookie(req, KNOWN_COOKIE)
            .and_then(|token| self.known_browsers()?.check(&token))
            .unwrap_or(Client::from(address))
    }

    /// The cookie that makes this browser a known one (see [`KnownBrowsers`]).
    fn known_cookie(&self) -> Option<String> {
        let token = self.known_browsers()?.issue();
        Some(format!(
            "{KNOWN_COOKIE}={token}; {COOKIE_ATTRIBUTES}; Path=/admin; Max-Age={}",
            KNOWN_COOKIE_LIFETIME.as_secs()
        ))
    }
}

/// `r` with the known-browser cookie, when there is one to give.
fn known(app: &App, r: Response<Body>) -> Response<Body> {
    match app.known_cookie() {
        Some(c) => with_cookie(r, &c),
        None => r,
    }
}

/// Routes one request and adds what every response carries.
async fn respond(app: Arc<App>, req: Request<Incoming>, client: IpAddr) -> Response<Body> {
    let path = req.uri().path().to_string();
    let mut resp = route(&app, req, client).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let cache = if path.starts_with("/static/") {
        "max-age=3600"
    } else {
        "no-store"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

async fn route(app: &Arc<App>, req: Request<Incoming>, client: IpAddr) -> Response<Body> {
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    let put = method == Method::PUT;
    let path = req.uri().path().to_string();
    // A bundled service's own URLs (an upload slot is its own capability; no session).
    if let Some(up) = app.upstreams.iter().find(|u| u.routes(&path)) {
        return proxied(up, req).await;
    }
    // A household member's actor (`/NAME`, its inbox, posts and files): snac's, like the
    // owner's.
    if let Some(up) = household_actor(app, &path) {
        return proxied(&up, req).await;
    }
    if (post || put) && cross_site(&req) {
        return html(
            StatusCode::FORBIDDEN,
            pages::message(
                "Refused",
                "This request came from another site.",
                ("/", "Home"),
            ),
        );
    }
    match path.as_str() {
        "/static/style.css" if get => return asset(pages::STYLE, "text/css; charset=utf-8"),
        "/static/setup.js" if get => return asset(pages::SCRIPT, "text/javascript; charset=utf-8"),
        "/static/admin.js" if get => {
            return asset(pages::ADMIN_SCRIPT, "text/javascript; charset=utf-8")
        }
        "/api/health" if get => return health(app).await,
        _ => {}
    }
    let set_up = app.state().settings.is_some();
    if !set_up {
        return match (path.as_str(), get, post) {
            ("/setup/api/wait", _, true) => wait(app, req).await,
            ("/setup", true, _) => setup_form(app, &req),
            ("/setup", _, true) => setup_submit(app, req).await,
            (_, true, _) => html(StatusCode::OK, pages::press()),
            _ => not_found(),
        };
    }
    match (path.as_str(), get, post) {
        (p, true, _) if owners_path(p) => owners_site(app, p).await,
        (p, true, _) if p == "/setup" || p.starts_with("/setup/") => redirect("/admin/login"),
        ("/admin", true, _) => redirect("/admin/"),
        ("/admin/login", true, _) => match app.session(&req) {
            Some(_) => redirect("/admin/"),
            None => html(StatusCode::OK, pages::login(None)),
        },
        ("/admin/login", _, true) => login(app, req, client).await,
        (p, _, _) if p.starts_with("/admin/") => admin(app, req, client, get, post || put).await,
        _ => not_found(),
    }
}

/// A request for a bundled service, passed on; a refusal or an unreachable service in one line.
async fn proxied(up: &proxy::Upstream, req: Request<Incoming>) -> Response<Body> {
    let refusal = |status: StatusCode, text: String| {
        let mut r = Response::new(Either::Right(proxy::body_of(&text)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if let Some((status, why)) = proxy::precheck(up, &req) {
        return refusal(status, why);
    }
    match proxy::forward(up, req).await {
        Ok(resp) => resp.map(Either::Right),
        Err(e) => {
            tracing::warn!("{}: {e:#}", up.prefix);
            refusal(
                StatusCode::BAD_GATEWAY,
                format!("the service behind {} is not answering", up.prefix),
            )
        }
    }
}

/// The owner's pages, behind a session (and its CSRF token for every change).
async fn admin(
    app: &Arc<App>,
    req: Request<Incoming>,
    client: IpAddr,
    get: bool,
    post: bool,
) -> Response<Body> {
    let Some((session, csrf)) = app.session(&req) else {
        // A page's script (an upload, a poll) cannot follow a redirect to the login: it is
        // told in its own terms, and the page says so.
        if req.method() == Method::PUT || req.uri().path().starts_with("/admin/api/") {
            return json_response(
                StatusCode::UNAUTHORIZED,
                json!({"ok": false, "error": "your session has ended: log in again; nothing was stored"}),
            );
        }
        return redirect("/admin/login");
    };
    let path = req.uri().path().to_string();
    let client = app.login_client(&req, client);
    let confirmed = app
        .state()
        .settings
        .as_ref()
        .is_some_and(|s| s.recovery_confirmed);
    if !confirmed && !RECOVERY_PATHS.contains(&path.as_str()) {
        // Setup ends with the recovery key written down: nothing else until then.
        return redirect("/admin/recovery");
    }
    if get {
        return match path.as_str() {
            "/admin/recovery" => recovery_page(app, &session, &csrf, None),
            "/admin/" => dashboard(app, &csrf).await,
            "/admin/system" => system(app, &csrf).await,
            "/admin/storage" => storage_page(app, &csrf).await,
            "/admin/chat" => chat_page(app, &csrf, None).await,
            "/admin/social" => social_page(app, &csrf, None).await,
            "/admin/api/storage" => storage_api(app).await,
            "/admin/logs" | "/admin/logs/" => redirect("/admin/system"),
            p if p.starts_with(LOGS_PREFIX) => logs(app, &p[LOGS_PREFIX.len()..], &csrf).await,
            "/admin/passphrase" => html(
                StatusCode::OK,
                pages::passphrase(&csrf, &PassphraseErrors::default()),
            ),
            "/admin/files" => files_page(app, &req, &csrf).await,
            "/admin/files/get" => download(app, &req).await,
            "/admin/files/zip" => download_zip(app, &req).await,
            _ => not_found(),
        };
    }
    if !post {
        return not_found();
    }
    if req.method() == Method::PUT {
        let sent = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !tokens_equal(sent, &csrf) {
            return csrf_refused();
        }
        return match path.as_str() {
            "/admin/files/put" => upload(app, req).await,
            "/admin/files/folder" => upload_folder(app, req).await,
            "/admin/site/zip" => site_zip(app, req).await,
            "/admin/update" => update(app, req).await,
            _ => not_found(),
        };
    }
    let header_token = req
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let form = match read_form(req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let sent = header_token.as_deref().unwrap_or(form.get("csrf"));
    if !tokens_equal(sent, &csrf) {
        return csrf_refused();
    }
    let back = back_link(&form);
    match path.as_str() {
        "/admin/logout" => {
            let last = {
                let mut st = app.state();
                st.sessions.end(&session);
                st.sessions.is_empty()
            };
            if last {
                // Nobody logged in: the vault's key leaves memory.
                if let Some(v) = &app.vault {
                    let v = v.clone();
                    let _ = tokio::task::spawn_blocking(move || v.lock()).await;
                }
            }
            with_cookie(redirect("/admin/login"), &clear_cookie(SESSION_COOKIE, "/"))
        }
        "/admin/restart" => {
            let service = form.get("service").to_string();
            if !valid_service_name(&service) {
                return html(
                    StatusCode::BAD_REQUEST,
                    pages::message("Restart", "Which service?", back),
                );
            }
            let s = service.clone();
            match app.call(move |d| d.restart(&s)).await {
                Ok(()) => html(
                    StatusCode::OK,
                    pages::message("Restart", &format!("{service} is restarting."), back),
                ),
                Err(e) => device_error("Restart", &e),
            }
        }
        "/admin/social/add" => social_add(app, &form, &csrf).await,
        "/admin/social/remove" => social_remove(app, &form, &csrf).await,
        "/admin/social/look" | "/admin/social/trust" | "/admin/social/forget" => {
            social_servers(app, &path, &form, &csrf).await
        }
        "/admin/backup" => match app.back_up(true).await {
            Some(Ok(done)) => html(
                StatusCode::OK,
                pages::message("Backup", &pages::backup_done(&done), back),
            ),
            Some(Err(e)) => html(
                StatusCode::UNPROCESSABLE_ENTITY,
                pages::message("Backup", &format!("The backup failed: {e}"), back),
            ),
            None => html(
                StatusCode::NOT_FOUND,
                pages::message("Backup", "This device backs up no services.", back),
            ),
        },
        "/admin/reboot" => match app.call(|d| d.reboot()).await {
            Ok(()) => html(
                StatusCode::OK,
                pages::message(
                    "Rebooting",
                    "The device is rebooting; this page works again in about a minute.",
                    back,
                ),
            ),
            Err(e) => device_error("Reboot", &e),
        },
        "/admin/poweroff" => match app.call(|d| d.poweroff()).await {
            Ok(()) => html(
                StatusCode::OK,
                pages::message(
                    "Powering off",
                    "The device is powering off. Unplug it and plug it in again to start it.",
                    ("/", "Home"),
                ),
            ),
            Err(e) => device_error("Power off", &e),
        },
        "/admin/passphrase" => change_passphrase(app, &form, &csrf, client).await,
        "/admin/reset" => factory_reset(app, &form, client).await,
        "/admin/recovery/show" => show_recovery(app, &session, &form, &csrf, client).await,
        "/admin/recovery/confirm" => confirm_recovery(app, &session, &form, &csrf).await,
        "/admin/chat/add" | "/admin/chat/password" | "/admin/chat/remove" => {
            chat_change(app, &path, &form, &csrf).await
        }
        "/admin/storage/pair" => match app.call(|d| d.pair()).await {
            Ok(_) => redirect("/admin/storage"),
            Err(e) => storage_message("Pairing", &format!("{e:#}"), StatusCode::CONFLICT),
        },
        "/admin/storage/invite" => {
            match app
                .call_node(|n| storage::invite(n, INVITATION_TTL.as_secs()))
                .await
            {
                Ok(inv) => html(StatusCode::OK, pages::invitation(&inv)),
                Err(e) => storage_message("Invitation", &format!("{e:#}"), StatusCode::BAD_GATEWAY),
            }
        }
        "/admin/storage/join" => {
            let code = match storage::clean_code(form.get("code")) {
                Ok(c) => c,
                Err(why) => return storage_message("Invitation", why, StatusCode::BAD_REQUEST),
            };
            match app.call_node(move |n| storage::join(n, &code)).await {
                Ok(peer) => storage_message(
                    "Paired",
                    &format!(
                        "This plug and {peer} are partners now: each keeps shards for the other."
                    ),
                    StatusCode::OK,
                ),
                Err(e) => storage_message("Invitation", &format!("{e:#}"), StatusCode::BAD_GATEWAY),
            }
        }
        "/admin/storage/unpair" => {
            let peer = form.get("peer").to_string();
            if !storage::valid_peer(&peer) {
                return storage_message("Unpair", "Which partner?", StatusCode::BAD_REQUEST);
            }
            let p = peer.clone();
            match app.call_node(move |n| storage::unpair(n, &p)).await {
                Ok(()) => storage_message(
                    "Unpaired",
                    &format!(
                        "{peer} is no longer a partner. What it kept for this plug is placed \
                         on other partners at the next repair."
                    ),
                    StatusCode::OK,
                ),
                Err(e) => storage_message("Unpair", &format!("{e:#}"), StatusCode::BAD_GATEWAY),
            }
        }
        _ => not_found(),
    }
}

/// `POST /admin/reset`: with the passphrase, PID 1 waits for a press of the button to wipe the
/// device (both: neither a stolen session nor a passer-by alone can).
async fn factory_reset(app: &Arc<App>, form: &Form, client: Client) -> Response<Body> {
    let back = ("/admin/system", "Back to System");
    if let Err(limited) = app.state().limiter.attempt(client.clone(), Instant::now()) {
        return html(
            StatusCode::TOO_MANY_REQUESTS,
            pages::message("Factory reset", &limited.message(), back),
        );
    }
    match app.verify(form.get("passphrase").to_string()).await {
        Ok(true) => app.state().limiter.succeeded(client),
        Ok(false) => {
            app.state().limiter.failed(client, Instant::now());
            return html(
                StatusCode::UNAUTHORIZED,
                pages::message("Factory reset", "Wrong passphrase: nothing was done.", back),
            );
        }
        Err(e) => return device_error("Factory reset", &e),
    }
    match app.call(|d| d.reset()).await {
        Ok(_) => html(StatusCode::OK, pages::reset_armed()),
        Err(e) => device_error("Factory reset", &e),
    }
}

/// The query of `req` as a form (fields a browser put in the address).
fn query(req: &Request<Incoming>) -> Form {
    Form::parse(req.uri().query().unwrap_or("").as_bytes()).unwrap_or_default()
}

/// A snapshot number from a query (`snap`): none or not a number is the latest.
fn snapshot_of(q: &Form) -> Option<u64> {
    q.get("snap").parse().ok()
}

/// `GET /admin/files?dir=…&snap=…`: a folder of a snapshot, and the upload.
async fn files_page(app: &Arc<App>, req: &Request<Incoming>, csrf: &str) -> Response<Body> {
    let q = query(req);
    let listing = match files::check_path(q.get("dir"), true) {
        Ok(dir) => {
            let snap = snapshot_of(&q);
            app.with_vault(move |v| files::list(v, snap, &dir))
                .await
                .map_err(|e| format!("{e:#}"))
        }
        Err(e) => Err(format!("{e:#}")),
    };
    let status = if listing.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    html(status, pages::files(&listing, csrf))
}

/// What a download's reader says once it has found what was asked (a file's size).
type Found<T> = Box<dyn FnOnce(T) + Send>;

/// A download from the vault: `send` runs on a blocking thread that keeps the vault for the
/// whole download (other file requests wait for it); it first finds what was asked and says so
/// through its `Found` (before anything is sent, so that a missing file is a page, not a broken
/// body), then writes the bytes into the channel ([`files::DOWNLOAD_QUEUE`] pieces). Returns
/// what was found and the response body, or why nothing was.
async fn stream_from_vault<T: Send + 'static>(
    app: &Arc<App>,
    send: impl FnOnce(
            &mut cairn_vault::Vault,
            Found<T>,
            &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
        ) -> Result<()>
        + Send
        + 'static,
) -> std::result::Result<(T, files::Streamed), String> {
    let (tx, rx) = tokio::sync::mpsc::channel(files::DOWNLOAD_QUEUE);
    let (found_tx, found_rx) = tokio::sync::oneshot::channel();
    let vault = app.vault.clone();
    let reading = tokio::task::spawn_blocking(move || {
        let Some(vault) = vault else {
            return Err(anyhow!("this device keeps no vault"));
        };
        let found: Found<T> = Box::new(move |t| {
            let _ = found_tx.send(t);
        });
        vault.with_unlocked(|v| send(v, found, &tx))
    });
    match found_rx.await {
        Ok(t) => Ok((t, files::Streamed(rx))),
        Err(_) => Err(match reading.await {
            Ok(Err(e)) => format!("{e:#}"),
            _ => "it could not be read".to_string(),
        }),
    }
}

/// `GET /admin/files/get?path=…&snap=…`: the file, streamed as it is read from the vault.
async fn download(app: &Arc<App>, req: &Request<Incoming>) -> Response<Body> {
    let q = query(req);
    let path = match files::check_path(q.get("path"), false) {
        Ok(p) => p,
        Err(e) => return files_message(&format!("{e:#}"), StatusCode::BAD_REQUEST),
    };
    let snap = snapshot_of(&q);
    let p = path.clone();
    let (size, body) =
        match stream_from_vault(app, move |v, found, tx| files::send(v, snap, &p, found, tx)).await
        {
            Ok(found) => found,
            Err(why) => return files_message(&why, StatusCode::NOT_FOUND),
        };
    let name = path.rsplit('/').next().unwrap_or("file");
    let mut r = Response::new(Either::Right(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename*=UTF-8''{}",
        crate::form::percent_encode(name)
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// `PUT /admin/files/put?path=…&mtime=…` (the body is the file): stored in a new snapshot as it
/// arrives; a body cut short stores nothing. Answers JSON: `{ok, snapshot, bytes}` or
/// `{ok: false, error}`.
async fn upload(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let q = query(&req);
    let path = match files::check_path(q.get("path"), false) {
        Ok(p) => p,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"ok": false, "error": format!("{e:#}")}),
            )
        }
    };
    let mtime = files::mtime_from_ms(q.get("mtime").parse().ok());
    let (tx, rx) = tokio::sync::mpsc::channel(files::UPLOAD_QUEUE);
    let vault = app.vault.clone();
    let (p, data_dir) = (path.clone(), app.data_dir.clone());
    let storing = tokio::task::spawn_blocking(move || {
        let Some(vault) = vault else {
            return Err(anyhow!("this device keeps no vault"));
        };
        vault.with_unlocked(|v| {
            let r = files::store(v, &p, files::ChannelReader::new(rx), mtime)?;
            // A file of the owner's site: the served copy follows.
            if p.starts_with(&format!("{}/", site::VAULT_DIR)) {
                site::export(v, &data_dir)?;
            }
            Ok(r)
        })
    });
    pump(req.into_body(), tx).await;
    match storing.await {
        Ok(Ok(r)) => {
            tracing::info!("stored {path} ({} bytes) in snapshot {}", r.bytes, r.seq);
            json_response(
                StatusCode::OK,
                json!({"ok": true, "snapshot": r.seq, "bytes": r.bytes}),
            )
        }
        Ok(Err(e)) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"ok": false, "error": format!("{path}: nothing was stored: {e:#}")}),
        ),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"ok": false, "error": format!("{path}: nothing was stored: {e}")}),
        ),
    }
}

/// `PUT /admin/update` (the body: a signed bundle): streamed to PID 1's installer as it
/// arrives; once installed, the device restarts into it. Answers JSON: `{ok, message,
/// restarting}` or `{ok: false, error}` with the installer's one-line reason.
async fn update(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel(files::UPLOAD_QUEUE);
    let installing = app.call(move |d| d.update(&mut files::ChannelReader::new(rx)));
    let (installed, ()) = tokio::join!(installing, pump(req.into_body(), tx));
    let line = match installed {
        Ok(line) => line,
        Err(e) => {
            tracing::warn!("update: {e:#}");
            return json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"ok": false, "error": format!("{e:#}")}),
            );
        }
    };
    tracing::info!("update: {line}");
    // The slot on trial is the one just written: its version is what the device restarts into.
    let into = match app.call(|d| d.update_status()).await {
        Ok(u) => u
            .trying
            .as_deref()
            .and_then(|t| u.slot(t))
            .map(|v| format!("{} (build {})", v.version, v.build)),
        Err(_) => None,
    }
    .unwrap_or_else(|| "the new system".into());
    match app.call(|d| d.reboot()).await {
        Ok(()) => json_response(
            StatusCode::OK,
            json!({"ok": true, "restarting": true, "message": format!(
                "Installed; restarting into version {into}. This page comes back in a minute or two; \
                 the System page then says whether the new system was kept."
            )}),
        ),
        Err(e) => json_response(
            StatusCode::OK,
            json!({"ok": true, "restarting": false, "message": format!(
                "Installed {into}; reboot to finish (the device could not restart by itself: {e:#})."
            )}),
        ),
    }
}

/// Passes an upload's body frames to `tx` until the body ends, breaks off or stalls (the
/// error goes down the channel), or the receiver stops. A receiver that stopped early (a
/// refusal) leaves the rest of the body to [`drain`], so that the client hears the reason.
async fn pump(mut body: Incoming, tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) {
    loop {
        let frame = tokio::time::timeout(UPLOAD_IDLE, body.frame()).await;
        let piece = match frame {
            Ok(Some(Ok(f))) => match f.into_data() {
                Ok(d) => Ok(d),
                Err(_) => continue,
            },
            Ok(None) => break,
            Ok(Some(Err(e))) => Err(std::io::Error::other(format!("the upload broke off: {e}"))),
            Err(_) => Err(std::io::Error::other(format!(
                "the upload stalled for {} s",
                UPLOAD_IDLE.as_secs()
            ))),
        };
        let failed = piece.is_err();
        if tx.send(piece).await.is_err() {
            if !failed {
                drain(body).await;
            }
            break;
        }
        if failed {
            break;
        }
    }
}

/// Most of a refused upload's body read and thrown away before the connection is closed.
const DRAIN_BYTES_MAX: u64 = 256 << 20;

/// Reads what is left of a refused upload (at most [`DRAIN_BYTES_MAX`], each piece within
/// [`UPLOAD_IDLE`]) and drops it: a server that answers and closes while the client is still
/// sending resets the connection, and the client (a browser too) then loses the answer with
/// its reason. Memory: one frame at a time.
async fn drain(mut body: Incoming) {
    let mut read = 0u64;
    while read <= DRAIN_BYTES_MAX {
        match tokio::time::timeout(UPLOAD_IDLE, body.frame()).await {
            Ok(Some(Ok(f))) => {
                read += f.data_ref().map_or(0, |d| d.len() as u64);
            }
            _ => return,
        }
    }
}

/// `PUT /admin/files/folder?dir=…` (the body: files in [`files::FILES_MEDIA`]): every file
/// stored under `dir` in one new snapshot; anything wrong stores none of them. Answers JSON:
/// `{ok, snapshot, files, bytes}` or `{ok: false, error}`.
async fn upload_folder(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let q = query(&req);
    let fail = |status: StatusCode, e: String| {
        json_response(
            status,
            json!({"ok": false, "error": format!("{e}: nothing was stored")}),
        )
    };
    let dir = match files::check_path(q.get("dir"), true) {
        Ok(d) => d,
        Err(e) => return fail(StatusCode::BAD_REQUEST, format!("{e:#}")),
    };
    let media = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if media != files::FILES_MEDIA {
        return fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("a folder is sent as {}", files::FILES_MEDIA),
        );
    }
    let (tx, rx) = tokio::sync::mpsc::channel(files::UPLOAD_QUEUE);
    let vault = app.vault.clone();
    let data_dir = app.data_dir.clone();
    let storing = tokio::task::spawn_blocking(move || {
        let Some(vault) = vault else {
            return Err(anyhow!("this device keeps no vault"));
        };
        vault.with_unlocked(|v| {
            let stored = files::store_many(v, &dir, files::ChannelReader::new(rx))?;
            if stored.site {
                site::export(v, &data_dir)?;
            }
            Ok(stored)
        })
    });
    pump(req.into_body(), tx).await;
    match storing.await {
        Ok(Ok(s)) => {
            tracing::info!(
                "stored {} files ({} bytes) in snapshot {}",
                s.files,
                s.report.bytes,
                s.report.seq
            );
            json_response(
                StatusCode::OK,
                json!({"ok": true, "snapshot": s.report.seq, "files": s.files, "bytes": s.report.bytes}),
            )
        }
        Ok(Err(e)) => fail(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /admin/files/zip?dir=…&snap=…`: the folder (the whole snapshot when `dir` is empty)
/// as a zip, written as its files are read from the vault.
async fn download_zip(app: &Arc<App>, req: &Request<Incoming>) -> Response<Body> {
    let q = query(req);
    let dir = match files::check_path(q.get("dir"), true) {
        Ok(d) => d,
        Err(e) => return files_message(&format!("{e:#}"), StatusCode::BAD_REQUEST),
    };
    let snap = snapshot_of(&q);
    let d = dir.clone();
    let ((), body) = match stream_from_vault(app, move |v, found, tx| {
        let entries = files::folder(v, snap, &d)?;
        found(());
        files::send_zip(v, &entries, tx);
        Ok(())
    })
    .await
    {
        Ok(found) => found,
        Err(why) => return files_message(&why, StatusCode::NOT_FOUND),
    };
    let name = match dir.rsplit('/').next() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => app
            .state()
            .settings
            .as_ref()
            .map_or_else(|| "cairn".to_string(), |s| s.name.clone()),
    };
    let mut r = Response::new(Either::Right(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename*=UTF-8''{}.zip",
        crate::form::percent_encode(&name)
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// Whether `path` may be the owner's site's (everything but the device's own addresses).
fn owners_path(path: &str) -> bool {
    !["/admin", "/setup", "/static/", "/api/"]
        .iter()
        .any(|p| path.starts_with(p))
}

/// `GET /…`: a file of the owner's site (streamed from its served copy), or `/` the default
/// page until there is a site.
async fn owners_site(app: &Arc<App>, path: &str) -> Response<Body> {
    // Looking the file up touches the disk: on the blocking pool, not the server's thread.
    let (data_dir, decoded) = (app.data_dir.clone(), crate::form::decode_path(path));
    let found = tokio::task::spawn_blocking(move || {
        let file = site::resolve(&data_dir, &decoded.ok()?)?;
        let size = std::fs::metadata(&file).ok()?.len();
        Some((file, size))
    })
    .await
    .ok()
    .flatten();
    let Some((file, size)) = found else {
        if path == "/" {
            let name = app.state().settings.as_ref().map(|s| s.name.clone());
            return html(
                StatusCode::OK,
                pages::owner_site(name.as_deref().unwrap_or("cairn")),
            );
        }
        return not_found();
    };
    let (tx, rx) = tokio::sync::mpsc::channel(files::DOWNLOAD_QUEUE);
    let content_type = site::content_type(&file);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = site::send_file(&file, &tx) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let mut r = Response::new(Either::Right(files::Streamed(rx)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    r
}

/// `PUT /admin/site/zip` (the body is a zip): received into a file (at most
/// [`site::ZIP_BYTES_MAX`]), checked whole, stored as the vault's `site/` in one snapshot, and
/// served. Answers JSON like an upload.
async fn site_zip(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let fail =
        |status: StatusCode, e: String| json_response(status, json!({"ok": false, "error": e}));
    if app.vault.is_none() {
        return fail(StatusCode::NOT_FOUND, "this device keeps no vault".into());
    }
    let tmp = app.data_dir.join("site-upload.zip");
    // The body goes to a file on a blocking thread, through a bounded channel.
    let (tx, rx) = tokio::sync::mpsc::channel(files::UPLOAD_QUEUE);
    let to = tmp.clone();
    let writing = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let mut f = std::fs::File::create(&to)?;
        let n = std::io::copy(
            &mut std::io::Read::take(files::ChannelReader::new(rx), site::ZIP_BYTES_MAX + 1),
            &mut f,
        )?;
        f.sync_all()?;
        Ok(n)
    });
    let mut body = req.into_body();
    let mut broke = None;
    loop {
        let piece = match tokio::time::timeout(UPLOAD_IDLE, body.frame()).await {
            Ok(Some(Ok(f))) => match f.into_data() {
                Ok(d) => Ok(d),
                Err(_) => continue,
            },
            Ok(None) => break,
            Ok(Some(Err(e))) => Err(format!("the upload broke off: {e}")),
            Err(_) => Err("the upload stalled".to_string()),
        };
        match piece {
            Ok(d) => {
                // The writer stopped (the limit, or an error): nothing more to send.
                if tx.send(Ok(d)).await.is_err() {
                    drain(body).await;
                    break;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e.clone()))).await;
                broke = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = writing.await;
    let outcome = match (broke, written) {
        (Some(e), _) => Err((StatusCode::BAD_REQUEST, e)),
        (None, Ok(Ok(n))) if n > site::ZIP_BYTES_MAX => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a site's zip may be {} MiB at most",
                site::ZIP_BYTES_MAX >> 20
            ),
        )),
        (None, Ok(Ok(_))) => Ok(()),
        (None, Ok(Err(e))) => Err((
            StatusCode::INSUFFICIENT_STORAGE,
            format!("receiving the zip: {e}"),
        )),
        (None, Err(e)) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    if let Err((status, e)) = outcome {
        let _ = std::fs::remove_file(&tmp);
        return fail(status, format!("{e}: the site is as it was"));
    }
    let (data_dir, zip) = (app.data_dir.clone(), tmp.clone());
    let stored = app
        .with_vault(move |v| {
            let r = site::store_zip(v, &zip)?;
            let n = site::export(v, &data_dir)?;
            Ok((r, n))
        })
        .await;
    let _ = std::fs::remove_file(&tmp);
    match stored {
        Ok((r, n)) => {
            tracing::info!("the owner's site: {n} files, snapshot {}", r.seq);
            json_response(
                StatusCode::OK,
                json!({"ok": true, "snapshot": r.seq, "files": n}),
            )
        }
        Err(e) => fail(
            StatusCode::BAD_REQUEST,
            format!("{e:#}; the site is as it was"),
        ),
    }
}

/// Longest an upload may pause between two pieces of its body.
const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// A Files action's result page, leading back to Files.
fn files_message(text: &str, status: StatusCode) -> Response<Body> {
    html(
        status,
        pages::message("Files", text, ("/admin/files", "Back to Files")),
    )
}

/// The pages open before the recovery key is confirmed.
const RECOVERY_PATHS: &[&str] = &[
    "/admin/recovery",
    "/admin/recovery/show",
    "/admin/recovery/confirm",
    "/admin/logout",
];

/// `GET /admin/recovery`: the key awaiting confirmation if this session was shown it, else a
/// passphrase to show it (again); once confirmed, the dashboard.
fn recovery_page(app: &Arc<App>, session: &str, csrf: &str, error: Option<&str>) -> Response<Body> {
    let state = app.state();
    if state
        .settings
        .as_ref()
        .is_some_and(|s| s.recovery_confirmed)
    {
        return redirect("/admin/");
    }
    let page = match &state.recovery {
        Some((s, key)) if s == session => pages::recovery_key(key, csrf, error),
        _ => pages::recovery_show(csrf, error),
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    html(status, page)
}

/// `POST /admin/recovery/show`: the passphrase opens the vault and shows its recovery key.
async fn show_recovery(
    app: &Arc<App>,
    session: &str,
    form: &Form,
    csrf: &str,
    client: Client,
) -> Response<Body> {
    if let Err(limited) = app.state().limiter.attempt(client.clone(), Instant::now()) {
        return html(
            StatusCode::TOO_MANY_REQUESTS,
            pages::recovery_show(csrf, Some(&limited.message())),
        );
    }
    let passphrase = form.get("passphrase").to_string();
    match app.verify(passphrase.clone()).await {
        Ok(true) => app.state().limiter.succeeded(client),
        Ok(false) => {
            app.state().limiter.failed(client, Instant::now());
            return html(
                StatusCode::UNAUTHORIZED,
                pages::recovery_show(csrf, Some("Wrong passphrase.")),
            );
        }
        Err(e) => return device_error("Recovery key", &e),
    }
    match app.vault_op(move |v| v.recovery_key(&passphrase)).await {
        Ok(key) => {
            app.state().recovery = Some((session.to_string(), key));
            recovery_page(app, session, csrf, None)
        }
        Err(e) => device_error("Recovery key", &e),
    }
}

/// `POST /admin/recovery/confirm`: the last group typed; setup is done, PID 1 is told (the LED
/// leaves "setup needed").
async fn confirm_recovery(
    app: &Arc<App>,
    session: &str,
    form: &Form,
    csrf: &str,
) -> Response<Body> {
    let pending = app.state().recovery.clone();
    let Some((_, key)) = pending.filter(|(s, _)| s == session) else {
        return recovery_page(app, session, csrf, None);
    };
    if !owner_vault::confirms(&key, form.get("last")) {
        return recovery_page(
            app,
            session,
            csrf,
            Some("That is not the key's last group: check what you wrote down, then type its last four characters."),
        );
    }
    let name = {
        let _writing = app.settings_write.lock().await;
        let Some(mut settings) = app.state().settings.clone() else {
            return redirect("/");
        };
        settings.recovery_confirmed = true;
        let name = settings.name.clone();
        if let Err(e) = app.save(settings).await {
            return device_error("Recovery key", &e);
        }
        name
    };
    app.state().recovery = None;
    tell_claimed(app, name).await;
    redirect("/admin/")
}

/// Tells PID 1 that setup is done (the device's name, the LED to "ready").
async fn tell_claimed(app: &Arc<App>, name: String) {
    let n = name.clone();
    if let Err(err) = app.call(move |d| d.claimed(&n)).await {
        // The settings are the truth: the next start of the service tells PID 1 again.
        tracing::warn!("telling PID 1 the device is claimed: {err:#}");
    }
    tracing::info!("set up as {name}");
}

/// How long an invitation code works.
const INVITATION_TTL: Duration = Duration::from_secs(24 * 3600);

/// A storage action's result page, leading back to Storage.
fn storage_message(title: &str, text: &str, status: StatusCode) -> Response<Body> {
    html(
        status,
        pages::message(title, text, ("/admin/storage", "Back to Storage")),
    )
}

/// The domain Jabber accounts are in (as the services read it from [`share`]).
fn chat_domain(app: &App) -> String {
    let st = app.state();
    share::Site {
        name: st.settings.as_ref().map(|s| s.name.clone()),
        domain: st.settings.as_ref().and_then(|s| s.domain.clone()),
        social_accounts: Vec::new(),
        social_removed: Vec::new(),
    }
    .service_domain()
}

/// After setup: `owner@DOMAIN`, with a random password nobody knows until the owner sets one
/// on the Chat page (the passphrase guards the vault: it never goes to a phone). Jabber is
/// restarting for the new name meanwhile, so this waits for it (two minutes at most).
fn make_owner_account(app: Arc<App>) {
    let Some(prosody) = app.chat.clone() else {
        return;
    };
    let domain = chat_domain(&app);
    tokio::task::spawn_blocking(move || {
        let mut secret = [0u8; 24];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).is_err() {
            return;
        }
        let password = hex::encode(secret);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = String::new();
        while Instant::now() < deadline {
            // A restart may still be stopping the old Prosody: ask the one that answers last.
            std::thread::sleep(Duration::from_secs(2));
            match prosody.create(chat::OWNER, &domain, &password) {
                Ok(()) => {
                    tracing::info!("Jabber: made {}@{domain}", chat::OWNER);
                    return;
                }
                Err(e) if e.to_string().contains("exists already") => return,
                Err(e) => last = format!("{e:#}"),
            }
        }
        tracing::warn!("Jabber: {}@{domain} not made: {last}", chat::OWNER);
    });
}

/// `GET /admin/chat`: the household's Jabber accounts.
async fn chat_page(app: &Arc<App>, csrf: &str, note: Option<(&str, bool)>) -> Response<Body> {
    let domain = chat_domain(app);
    let accounts = match app.chat.clone() {
        None => Err("This device has no Jabber (its image carries no Prosody).".to_string()),
        Some(p) => {
            let d = domain.clone();
            tokio::task::spawn_blocking(move || p.accounts(&d))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| format!("{e:#}")))
        }
    };
    let status = if note.is_some_and(|(_, ok)| !ok) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    html(
        status,
        pages::chat(&domain, &accounts, csrf, note.map(|(t, _)| t)),
    )
}

/// The upstream serving `path` when it is a household fediverse account's actor or below it.
fn household_actor(app: &App, path: &str) -> Option<proxy::Upstream> {
    let owner = app
        .upstreams
        .iter()
        .find(|u| u.prefix.strip_prefix('/') == Some(social::OWNER))?;
    let first = path.strip_prefix('/')?.split('/').next()?;
    let st = app.state();
    let ours = st
        .settings
        .as_ref()
        .is_some_and(|s| s.social_accounts.iter().any(|a| a == first));
    ours.then(|| owner.clone())
}

/// The household's fediverse handles as people follow them, the owner's first; none on a
/// device without snac.
fn social_handles(app: &App) -> Vec<String> {
    if app.social.is_none() {
        return Vec::new();
    }
    let domain = chat_domain(app);
    let mut names = vec![social::OWNER.to_string()];
    if let Some(s) = app.state().settings.as_ref() {
        names.extend(s.social_accounts.iter().cloned());
    }
    names.iter().map(|n| format!("@{n}@{domain}")).collect()
}

/// `GET /admin/social`: the household's fediverse handles, each with its first password.
async fn social_page(app: &Arc<App>, csrf: &str, note: Option<(&str, bool)>) -> Response<Body> {
    social_page_servers(app, csrf, note, None, None).await
}

/// `POST /admin/social/{look,trust,forget}`: a server's certificate shown, trusted (only when
/// it shows again the one the owner saw), or forgotten; the bundle written again.
async fn social_servers(app: &Arc<App>, path: &str, form: &Form, csrf: &str) -> Response<Body> {
    let failed = |text: String| (text, false);
    let address = match trust::Address::parse(form.get("address")) {
        Ok(a) => a,
        Err(why) => {
            let note = failed(format!("Server: {why}."));
            return social_page_servers(app, csrf, None, None, Some(note)).await;
        }
    };
    let data_dir = app.data_dir.clone();
    let (shown, note) = match path {
        "/admin/social/look" => match trust::fetch(&address).await {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(failed(format!("{e}; nothing was stored.")))),
        },
        "/admin/social/trust" => {
            let seen = form.get("fingerprint").trim().to_ascii_uppercase();
            let stored = match trust::fetch(&address).await {
                Err(e) => Err(format!("{e}; nothing was stored.")),
                Ok(s) if s.fingerprint != seen => Err(format!(
                    "{address} now shows another certificate ({}) than the one you saw: look again and compare; nothing was stored.",
                    s.fingerprint
                )),
                Ok(s) => {
                    let _writing = app.settings_write.lock().await;
                    let d = data_dir.clone();
                    match tokio::task::spawn_blocking(move || trust::add(&d, &s)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(format!("{e}; nothing was stored.")),
                        Err(e) => Err(format!("{e}; nothing was stored.")),
                    }
                }
            };
            (
                None,
                Some(stored.map_or_else(failed, |()| {
                    (
                        format!("{address} is trusted: your accounts reach it now."),
                        true,
                    )
                })),
            )
        }
        _ => {
            let _writing = app.settings_write.lock().await;
            let a = address.clone();
            let gone = tokio::task::spawn_blocking(move || trust::forget(&data_dir, &a)).await;
            let note = match gone {
                Ok(Ok(())) => (format!("{address} is no longer trusted."), true),
                Ok(Err(e)) => failed(e),
                Err(e) => failed(e.to_string()),
            };
            (None, Some(note))
        }
    };
    if note.as_ref().is_some_and(|(_, ok)| *ok) {
        if let Err(e) = app.compose_bundle().await {
            let note = failed(format!(
                "the services' certificates were not written again: {e:#}"
            ));
            return social_page_servers(app, csrf, None, None, Some(note)).await;
        }
    }
    social_page_servers(app, csrf, None, shown, note).await
}

/// The Social page with what the last look at a server showed or did.
async fn social_page_servers(
    app: &Arc<App>,
    csrf: &str,
    note: Option<(&str, bool)>,
    shown: Option<trust::Shown>,
    servers_note: Option<(String, bool)>,
) -> Response<Body> {
    let domain = chat_domain(app);
    let mut names = vec![social::OWNER.to_string()];
    if let Some(s) = app.state().settings.as_ref() {
        names.extend(s.social_accounts.iter().cloned());
    }
    let data = app.social.clone();
    let accounts = tokio::task::spawn_blocking(move || {
        names
            .into_iter()
            .map(|name| {
                let password = match &data {
                    None => Err("This device has no fediverse service (its image carries no snac).".into()),
                    Some(d) => std::fs::read_to_string(social::first_password_file(d, &name))
                        .map(|p| p.trim().to_string())
                        .map_err(|_| "being made (snac makes its key at its next start): look again in a minute.".to_string()),
                };
                (name, password)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let d = app.data_dir.clone();
    let trusted = tokio::task::spawn_blocking(move || trust::list(&d))
        .await
        .unwrap_or_default();
    let failed =
        note.is_some_and(|(_, ok)| !ok) || servers_note.as_ref().is_some_and(|(_, ok)| !ok);
    let v = pages::SocialView {
        domain,
        accounts,
        note: note.map(|(t, _)| t.to_string()),
        fingerprint: tls::fingerprint(&app.live.certificate()),
        trusted,
        shown,
        servers_note,
    };
    let status = if failed {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    html(status, pages::social(&v, csrf))
}

/// `POST /admin/social/add`: a household account, made by snac at its restart.
async fn social_add(app: &Arc<App>, form: &Form, csrf: &str) -> Response<Body> {
    if app.social.is_none() {
        return social_page(
            app,
            csrf,
            Some(("This device has no fediverse service.", false)),
        )
        .await;
    }
    let name = match social::clean_name(form.get("name")) {
        Ok(n) => n,
        Err(why) => {
            return social_page(app, csrf, Some((&format!("Account name: {why}."), false))).await
        }
    };
    let done = format!(
        "@{name}@{} is being made: its first password appears here in a minute.",
        chat_domain(app)
    );
    social_change(app, csrf, &done, |s| {
        if s.social_accounts.contains(&name) {
            return Err(format!("{name} exists already."));
        }
        if s.social_accounts.len() >= social::ACCOUNTS_MAX {
            return Err(format!(
                "at most {} household accounts.",
                social::ACCOUNTS_MAX
            ));
        }
        s.social_accounts.push(name.clone());
        // A name removed before is a new account now: snac must not delete it.
        s.social_removed.retain(|r| *r != name);
        Ok(())
    })
    .await
}

/// Changes the household's fediverse accounts in the settings (a refusal of `change` saves
/// nothing and is shown as it is), saves them (snac restarts to follow), then the Social page
/// with `done` or why nothing changed.
async fn social_change(
    app: &Arc<App>,
    csrf: &str,
    done: &str,
    change: impl FnOnce(&mut Settings) -> Result<(), String>,
) -> Response<Body> {
    let saved = {
        let _writing = app.settings_write.lock().await;
        let Some(mut s) = app.state().settings.clone() else {
            return redirect("/admin/login");
        };
        if let Err(why) = change(&mut s) {
            return social_page(app, csrf, Some((&why, false))).await;
        }
        app.save(s).await
    };
    match saved {
        Ok(()) => social_page(app, csrf, Some((done, true))).await,
        Err(e) => {
            let why = format!("nothing was changed: {e:#}");
            social_page(app, csrf, Some((&why, false))).await
        }
    }
}

/// `POST /admin/social/remove`: a household account leaves the list at once (its actor is no
/// longer passed on) and snac deletes it, with its posts, at its restart. The owner's stays.
async fn social_remove(app: &Arc<App>, form: &Form, csrf: &str) -> Response<Body> {
    let typed = form.get("name").trim().to_ascii_lowercase();
    if typed == social::OWNER {
        let why = "the owner's account stays: it is the plug's own.";
        return social_page(app, csrf, Some((why, false))).await;
    }
    let name = match social::clean_name(&typed) {
        Ok(n) => n,
        Err(why) => {
            return social_page(app, csrf, Some((&format!("Account name: {why}."), false))).await
        }
    };
    if app.social.is_none() {
        let why = "This device has no fediverse service.";
        return social_page(app, csrf, Some((why, false))).await;
    }
    let done = format!(
        "@{name}@{} is removed: snac deletes it, with its posts, as it restarts.",
        chat_domain(app)
    );
    social_change(app, csrf, &done, |s| {
        if !s.social_accounts.contains(&name) {
            return Err(format!(
                "there is no household account named {name}: nothing was removed."
            ));
        }
        s.social_accounts.retain(|a| *a != name);
        s.social_removed.retain(|r| *r != name);
        s.social_removed.push(name.clone());
        // Bounded: the oldest were deleted at snac's restart long since.
        let over = s.social_removed.len().saturating_sub(social::REMOVED_MAX);
        s.social_removed.drain(..over);
        Ok(())
    })
    .await
}

/// `POST /admin/chat/{add,password,remove}`: one change, then the page again with what happened.
async fn chat_change(app: &Arc<App>, path: &str, form: &Form, csrf: &str) -> Response<Body> {
    // The values are judged first: a bad one gets its reason whatever the device carries.
    let name = match chat::clean_name(form.get("name")) {
        Ok(n) => n,
        Err(why) => {
            return chat_page(app, csrf, Some((&format!("Account name: {why}."), false))).await
        }
    };
    let password = form.get("password").to_string();
    if path != "/admin/chat/remove" {
        if let Err(why) = chat::check_password(&password) {
            return chat_page(app, csrf, Some((&format!("Password: {why}."), false))).await;
        }
    }
    let Some(prosody) = app.chat.clone() else {
        return chat_page(app, csrf, Some(("This device has no Jabber.", false))).await;
    };
    let domain = chat_domain(app);
    let (p, n, d, action) = (
        path.to_string(),
        name.clone(),
        domain.clone(),
        path.to_string(),
    );
    let done = tokio::task::spawn_blocking(move || match p.as_str() {
        "/admin/chat/add" => prosody.create(&n, &d, &password),
        "/admin/chat/password" => prosody.set_password(&n, &d, &password),
        _ => prosody.delete(&n, &d),
    })
    .await
    .map_err(|e| anyhow!("{e}"))
    .and_then(|r| r);
    let jid = format!("{name}@{domain}");
    match done {
        Ok(()) => {
            let text = match action.as_str() {
                "/admin/chat/add" => format!("{jid} is ready: sign in to it from any Jabber app."),
                "/admin/chat/password" => format!("{jid} has a new password."),
                _ => format!("{jid} is removed, with its contacts and messages."),
            };
            chat_page(app, csrf, Some((&text, true))).await
        }
        Err(e) => {
            // Prosody says only that it could not save: the reason is most often this.
            let full =
                sysinfo::disk(&app.data_dir).is_ok_and(|d| d.available < pages::DISK_FULL_BYTES);
            let why = if full {
                " The data partition is full: make room on it, then try again."
            } else {
                ""
            };
            chat_page(app, csrf, Some((&format!("{jid}: {e:#}.{why}"), false))).await
        }
    }
}

/// `GET /admin/storage`: the node's figures and partners, pairing and invitations.
async fn storage_page(app: &Arc<App>, csrf: &str) -> Response<Body> {
    let status = app
        .call_node(|n| storage::status(n))
        .await
        .map_err(|e| format!("{e:#}"));
    let board = app.call(|d| d.board()).await.map_err(|e| format!("{e:#}"));
    html(StatusCode::OK, pages::storage(&status, &board, csrf))
}

/// `GET /admin/api/storage`: what the Storage page follows live (the window, the pairing, the
/// partners), as JSON.
async fn storage_api(app: &Arc<App>) -> Response<Body> {
    let status = app.call_node(|n| storage::status(n)).await;
    let board = app.call(|d| d.board()).await;
    let mut v = json!({});
    match board {
        Ok(b) => {
            v["window"] = json!(b.window);
            v["pairing"] = json!(b.pairing);
        }
        Err(e) => v["board_error"] = json!(format!("{e:#}")),
    }
    match status {
        Ok(s) => v["storage"] = json!(s),
        Err(e) => v["storage_error"] = json!(format!("{e:#}")),
    }
    json_response(StatusCode::OK, v)
}

/// Backs the services up every [`backup::Backups::every`], the first time
/// [`backup::FIRST_DELAY`] after the start at the earliest; waits while backups are not set up
/// yet (before setup, or until the owner logs in on a plug set up before they existed).
async fn back_up_on_schedule(app: Arc<App>, started: Instant) {
    /// How often an unset backup looks again.
    const NOT_READY_POLL: Duration = Duration::from_secs(60);
    /// After a failed backup (the node away, a full disk), the next try waits this long.
    const RETRY: Duration = Duration::from_secs(15 * 60);
    let Some(b) = app.backups.clone() else {
        return;
    };
    let mut stopping = app.stopping.subscribe();
    loop {
        let wait = if b.ready() {
            b.next_due(started.elapsed())
        } else {
            NOT_READY_POLL
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        // An earlier plug's backups waiting to be restored must stay the latest.
        if b.ready() && b.waiting().is_none() && b.next_due(started.elapsed()).is_zero() {
            // A failure leaves the last backup's time as it was: without a pause it would be
            // due again at once.
            if let Some(Err(_)) = app.back_up(false).await {
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

async fn dashboard(app: &Arc<App>, csrf: &str) -> Response<Body> {
    let name = app
        .state()
        .settings
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let board = app.call(|d| d.board()).await.map_err(|e| format!("{e:#}"));
    let services = app.call(|d| d.status()).await.map_err(|e| format!("{e:#}"));
    let storage = app
        .call_node(|n| storage::status(n))
        .await
        .map_err(|e| format!("{e:#}"));
    // Prosody is asked only while PID 1 says it runs, and briefly: the page never waits on it.
    let prosody_ready = services
        .as_ref()
        .is_ok_and(|l| l.iter().any(|s| s.name == "prosody" && s.state == "ready"));
    let jabber_accounts = match app.chat.clone() {
        Some(p) if prosody_ready => {
            let domain = chat_domain(app);
            Some(
                tokio::task::spawn_blocking(move || p.count(&domain))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| format!("{e:#}"))),
            )
        }
        _ => None,
    };
    let d = pages::Dashboard {
        name,
        board,
        services,
        storage,
        memory: sysinfo::memory(&app.meminfo).map_err(|e| format!("{e:#}")),
        disk: sysinfo::disk(&app.data_dir).map_err(|e| format!("{e:#}")),
        backups: app.backups.as_ref().map(|b| pages::BackupView {
            ready: b.ready(),
            waiting: b.waiting(),
            folders: b
                .sources
                .iter()
                .filter_map(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect(),
            every: b.every,
            last: b.status.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }),
        jabber_accounts,
        social_handles: social_handles(app),
    };
    html(StatusCode::OK, pages::dashboard(&d, csrf))
}

/// `GET /admin/system`.
async fn system(app: &Arc<App>, csrf: &str) -> Response<Body> {
    let services = app.call(|d| d.status()).await.map_err(|e| format!("{e:#}"));
    let update = app
        .call(|d| d.update_status())
        .await
        .map_err(|e| format!("{e:#}"));
    html(StatusCode::OK, pages::system(&services, &update, csrf))
}

/// `GET /admin/logs/SERVICE`: a name PID 1's manifests allow (else 400, and PID 1 is not asked
/// anything), of a service `status` lists (else 404), then its log.
async fn logs(app: &Arc<App>, service: &str, csrf: &str) -> Response<Body> {
    let all = ("/admin/system", "All services");
    if !valid_service_name(service) {
        // The name is not repeated: it may be anything, of any length.
        return html(
            StatusCode::BAD_REQUEST,
            pages::message(
                "Not a service's name",
                &format!(
                    "A service's name is letters, digits, '-' and '_', at most {SERVICE_NAME_BYTES_MAX} of them."
                ),
                all,
            ),
        );
    }
    let services = match app.call(|d| d.status()).await {
        Ok(s) => s,
        Err(e) => return device_error("Log", &e),
    };
    let Some(s) = services.into_iter().find(|s| s.name == service) else {
        return html(
            StatusCode::NOT_FOUND,
            pages::message(
                "No such service",
                &format!("There is no service named {service} on this device."),
                all,
            ),
        );
    };
    let name = s.name.clone();
    match app.call(move |d| d.logs(&name)).await {
        Ok(log) => html(StatusCode::OK, pages::logs(&s, &log, csrf)),
        Err(e) => device_error("Log", &e),
    }
}

/// Where a form's result page leads back to: the page the form was on (`back=system`), else the
/// dashboard. Only pages named here: a form never chooses the address.
fn back_link(form: &Form) -> (&'static str, &'static str) {
    match form.get("back") {
        "system" => ("/admin/system", "Back to System"),
        _ => ("/admin/", "Back to the dashboard"),
    }
}

async fn health(app: &Arc<App>) -> Response<Body> {
    let board = app.call(|d| d.board()).await;
    let services = app.call(|d| d.status()).await;
    match (board, services) {
        (Ok(b), Ok(s)) => json_response(
            StatusCode::OK,
            json!({
                "health": b.health,
                "services": s.iter().map(|s| json!({"name": s.name, "state": s.state})).collect::<Vec<_>>(),
            }),
        ),
        (b, s) => {
            let e = b
                .err()
                .or(s.err())
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"health": "unknown", "error": e}),
            )
        }
    }
}

/// `POST /setup/api/wait`: the claim page's long poll.
async fn wait(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    // A JSON body cannot come from another site's form, and a cross-site fetch of it needs a
    // preflight this server never allows.
    let json_body = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return json_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!({"state": "error", "message": "expected a JSON request"}),
        );
    }
    let known = request_cookie(&req, CLAIM_COOKIE)
        .filter(|id| app.state().claims.knows(id, Instant::now()));
    let id = match known {
        Some(id) => id,
        None => {
            let board = match app.call(|d| d.board()).await {
                Ok(b) => b,
                Err(e) => {
                    return json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"state": "error", "message": format!("the device does not answer: {e:#}")}),
                    )
                }
            };
            let registered = app
                .state()
                .claims
                .register(board.last_window, Instant::now());
            let Ok(id) = registered else {
                return json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"state": "error", "message": "too many browsers are waiting to set up this device: close some and try again"}),
                );
            };
            app.waiter_came.notify_one();
            let cookie = format!("{CLAIM_COOKIE}={id}; {COOKIE_ATTRIBUTES}; Path=/setup");
            // Answered at once, not held: the page says "waiting for the button" only once
            // a press would count for it, so nobody presses before the device knows the page.
            return with_cookie(
                json_response(StatusCode::OK, json!({"state": "waiting"})),
                &cookie,
            );
        }
    };
    let outcome = poll(app, &id).await;
    match outcome {
        None => json_response(StatusCode::OK, json!({"state": "waiting"})),
        Some(Outcome::Granted(token)) => with_cookie(
            with_cookie(
                json_response(StatusCode::OK, json!({"state": "granted"})),
                &format!(
                    "{SETUP_COOKIE}={token}; {COOKIE_ATTRIBUTES}; Path=/setup; Max-Age={}",
                    crate::claim::SETUP_TOKEN_LIFETIME.as_secs()
                ),
            ),
            &clear_cookie(CLAIM_COOKIE, "/setup"),
        ),
        Some(Outcome::Refused(message)) => with_cookie(
            json_response(
                StatusCode::OK,
                json!({"state": "refused", "message": message}),
            ),
            &clear_cookie(CLAIM_COOKIE, "/setup"),
        ),
    }
}

/// Returns once the service is stopping.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await (it is not `Send`).
    let _ = stopping.wait_for(|s| *s).await.map(|_| ());
}

/// Holds the poll open until the waiter's outcome or [`App::wait_poll`].
async fn poll(app: &Arc<App>, id: &str) -> Option<Outcome> {
    /// Marks the poll closed however it ends (answered, or the browser went away).
    struct Open<'a>(&'a App, &'a str);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            self.0.state().claims.poll_closed(self.1, Instant::now());
        }
    }
    let mut decided = app.decided.subscribe();
    let mut stopping = app.stopping.subscribe();
    app.state().claims.poll_opened(id);
    let _open = Open(app, id);
    let deadline = tokio::time::Instant::now() + app.wait_poll;
    loop {
        if let Some(o) = app.state().claims.take_outcome(id) {
            return Some(o);
        }
        tokio::select! {
            r = decided.changed() => {
                if r.is_err() {
                    return None;
                }
            }
            () = tokio::time::sleep_until(deadline) => return None,
            // "Still waiting", so that the service can stop; the page polls again.
            () = stopped(&mut stopping) => return None,
        }
    }
}

/// `GET /setup`: the form, for the browser holding the setup token.
fn setup_form(app: &Arc<App>, req: &Request<Incoming>) -> Response<Body> {
    let Some(csrf) = setup_csrf(app, req) else {
        return redirect("/");
    };
    let max = offer_max_gib(app);
    let values = SetupValues {
        offer_gib: (max / 2).to_string(),
        ..SetupValues::default()
    };
    html(
        StatusCode::OK,
        pages::setup(&values, &SetupErrors::default(), &csrf, max),
    )
}

fn setup_csrf(app: &Arc<App>, req: &Request<Incoming>) -> Option<String> {
    let token = request_cookie(req, SETUP_COOKIE)?;
    app.state().claims.setup_csrf(&token, Instant::now())
}

fn offer_max_gib(app: &Arc<App>) -> u64 {
    sysinfo::disk(&app.data_dir).map_or(0, |d| d.total >> 30)
}

/// `POST /setup`: every field valid, or the form again with what is wrong; then the settings,
/// PID 1's `claimed`, and a session.
async fn setup_submit(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let Some(csrf) = setup_csrf(app, &req) else {
        return html(
            StatusCode::FORBIDDEN,
            pages::message(
                "Setup",
                "This browser may not set the device up (or its time ran out): press the button again.",
                ("/", "Start again"),
            ),
        );
    };
    let form = match read_form(req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    if !tokens_equal(form.get("csrf"), &csrf) {
        return csrf_refused();
    }
    let max = offer_max_gib(app);
    let v = SetupValues {
        name: form.get("name").trim().to_string(),
        passphrase: form.get("passphrase").to_string(),
        passphrase2: form.get("passphrase2").to_string(),
        offer_gib: form.get("offer").trim().to_string(),
        domain: form.get("domain").trim().to_string(),
    };
    let mut e = SetupErrors {
        name: settings::validate_name(&v.name).err(),
        passphrase: settings::validate_passphrase(&v.passphrase, &v.passphrase2).err(),
        ..SetupErrors::default()
    };
    let offer = match v.offer_gib.parse::<u64>() {
        Ok(g) if g <= max => Some(g << 30),
        _ => {
            e.offer = Some(format!("choose between 0 and {max} GiB"));
            None
        }
    };
    let domain = settings::validate_domain(&v.domain).unwrap_or_else(|m| {
        e.domain = Some(m);
        None
    });
    let again = |e: &SetupErrors| html(StatusCode::BAD_REQUEST, pages::setup(&v, e, &csrf, max));
    if !e.is_empty() {
        return again(&e);
    }
    let hash = match app.hash(v.passphrase.clone()).await {
        Ok(h) => h,
        Err(err) => {
            e.form = Some(format!("could not hash the passphrase: {err:#}"));
            return again(&e);
        }
    };
    let settings = Settings {
        name: v.name.clone(),
        passphrase_hash: hash,
        offer_bytes: offer.unwrap_or(0),
        domain,
        // Without a vault there is no key to confirm.
        recovery_confirmed: app.vault.is_none(),
        social_accounts: Vec::new(),
        social_removed: Vec::new(),
        newer: toml::Table::new(),
    };
    let key = {
        let _writing = app.settings_write.lock().await;
        if app.state().settings.is_some() {
            return redirect("/admin/login");
        }
        // The vault first, then the settings: a failure of either leaves neither.
        let key = match app.vault {
            Some(_) => {
                let passphrase = v.passphrase.clone();
                match app.vault_op(move |vault| vault.create(&passphrase)).await {
                    Ok(k) => Some(k),
                    Err(err) => {
                        e.form = Some(format!("nothing was changed: {err:#}"));
                        return again(&e);
                    }
                }
            }
            None => None,
        };
        if let Err(err) = app.save(settings).await {
            if let Some(vault) = &app.vault {
                vault.remove();
            }
            e.form = Some(format!("nothing was changed: {err:#}"));
            return again(&e);
        }
        key
    };
    app.state().claims.finish();
    apply_offer(app.clone(), offer.unwrap_or(0)).await;
    make_owner_account(app.clone());
    app.prepare_backups(true).await;
    let (session_cookie, session) = app.log_in_session();
    let page = match key {
        Some(key) => {
            tracing::info!(
                "set up as {}; waiting for the recovery key's confirmation",
                v.name
            );
            let csrf = app
                .state()
                .sessions
                .touch(&session, Instant::now())
                .unwrap_or_default();
            let page = pages::recovery_key(&key, &csrf, None);
            app.state().recovery = Some((session, key));
            html(StatusCode::OK, page)
        }
        None => {
            tell_claimed(app, v.name.clone()).await;
            redirect("/admin/")
        }
    };
    // The browser that set the device up is the owner's: known from the start.
    known(
        app,
        with_cookie(
            with_cookie(page, &session_cookie),
            &clear_cookie(SETUP_COOKIE, "/setup"),
        ),
    )
}

async fn login(app: &Arc<App>, req: Request<Incoming>, client: IpAddr) -> Response<Body> {
    let client = app.login_client(&req, client);
    let form = match read_form(req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    if let Err(limited) = app.state().limiter.attempt(client.clone(), Instant::now()) {
        return html(
            StatusCode::TOO_MANY_REQUESTS,
            pages::login(Some(&limited.message())),
        );
    }
    let passphrase = form.get("passphrase").to_string();
    match app.verify(passphrase.clone()).await {
        Ok(true) => {
            app.state().limiter.succeeded(client);
            // The owner's files open with the passphrase, for as long as someone is logged in.
            if app.vault.as_ref().is_some_and(OwnerVault::exists) {
                if let Err(e) = app.vault_op(move |v| v.unlock(&passphrase)).await {
                    tracing::warn!("opening the vault at login: {e:#}");
                } else if app.backups.as_ref().is_some_and(|b| !b.ready()) {
                    // Set up before backups existed, or restored: their secret comes now.
                    app.prepare_backups(false).await;
                } else if !app.data_dir.join(site::SERVED_DIR).exists() {
                    // A plug restored from the recovery key: its site comes back from the vault.
                    let d = app.data_dir.clone();
                    if let Err(e) = app.with_vault(move |v| site::export(v, &d)).await {
                        tracing::warn!("serving the site from the vault: {e:#}");
                    }
                }
            }
            known(app, with_cookie(redirect("/admin/"), &app.log_in()))
        }
        Ok(false) => {
            app.state().limiter.failed(client, Instant::now());
            html(
                StatusCode::UNAUTHORIZED,
                pages::login(Some("Wrong passphrase.")),
            )
        }
        Err(e) => html(
            StatusCode::INTERNAL_SERVER_ERROR,
            pages::login(Some(&format!("{e:#}"))),
        ),
    }
}

async fn change_passphrase(
    app: &Arc<App>,
    form: &Form,
    csrf: &str,
    client: Client,
) -> Response<Body> {
    let mut e = PassphraseErrors::default();
    let page = |e: &PassphraseErrors, status| html(status, pages::passphrase(csrf, e));
    if let Err(limited) = app.state().limiter.attempt(client.clone(), Instant::now()) {
        e.old = Some(limited.message());
        return page(&e, StatusCode::TOO_MANY_REQUESTS);
    }
    e.new = settings::validate_passphrase(form.get("new"), form.get("new2")).err();
    match app.verify(form.get("old").to_string()).await {
        Ok(true) => {}
        Ok(false) => {
            app.state().limiter.failed(client, Instant::now());
            e.old = Some("Wrong passphrase.".into());
        }
        Err(err) => e.old = Some(format!("{err:#}")),
    }
    if e.old.is_some() || e.new.is_some() {
        return page(&e, StatusCode::BAD_REQUEST);
    }
    let hash = match app.hash(form.get("new").to_string()).await {
        Ok(h) => h,
        Err(err) => {
            e.new = Some(format!("could not hash the passphrase: {err:#}"));
            return page(&e, StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    {
        let _writing = app.settings_write.lock().await;
        let Some(mut settings) = app.state().settings.clone() else {
            return redirect("/");
        };
        settings.passphrase_hash = hash;
        // The vault's key follows the passphrase; if the settings then fail, it goes back.
        let (old, new) = (form.get("old").to_string(), form.get("new").to_string());
        let rekeyed = app.vault.as_ref().is_some_and(OwnerVault::exists);
        if rekeyed {
            let (o, n) = (old.clone(), new.clone());
            if let Err(err) = app.vault_op(move |v| v.change_passphrase(&o, &n)).await {
                e.new = Some(format!("nothing was changed: {err:#}"));
                return page(&e, StatusCode::INTERNAL_SERVER_ERROR);
            }
        }
        if let Err(err) = app.save(settings).await {
            if rekeyed {
                let back = app.vault_op(move |v| v.change_passphrase(&new, &old)).await;
                if let Err(b) = back {
                    tracing::warn!("putting the vault's passphrase back: {b:#}");
                }
            }
            e.new = Some(format!("nothing was changed: {err:#}"));
            return page(&e, StatusCode::INTERNAL_SERVER_ERROR);
        }
    }
    app.state().sessions.end_all();
    with_cookie(
        html(
            StatusCode::OK,
            pages::message(
                "Passphrase changed",
                "Every session has ended: log in again with the new passphrase.",
                ("/admin/login", "Log in"),
            ),
        ),
        &clear_cookie(SESSION_COOKIE, "/"),
    )
}

/// Whether a state-changing request comes from another site (by the headers browsers set).
/// `Sec-Fetch-Site` is what modern browsers say whatever the referrer policy; an `Origin` naming
/// another site refuses too. `Origin: null` says nothing: browsers send it for this site's own
/// form posts under `Referrer-Policy: no-referrer` (Chromium does, with `Sec-Fetch-Site:
/// same-origin`); SameSite=Strict cookies and the CSRF token still guard those.
fn cross_site(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return true;
        }
    }
    match (get("origin"), get("host")) {
        (None | Some("null"), _) => false,
        (Some(origin), Some(host)) => origin != format!("https://{host}"),
        (Some(_), None) => true,
    }
}

/// Reads a form body of at most [`FORM_BYTES_MAX`] within [`BODY_TIMEOUT`].
async fn read_form(req: Request<Incoming>) -> Result<Form, Response<Body>> {
    let too_large = || {
        let mut r = html(
            StatusCode::PAYLOAD_TOO_LARGE,
            pages::message(
                "Too large",
                &format!("A form may send at most {} KiB.", FORM_BYTES_MAX / 1024),
                ("/", "Home"),
            ),
        );
        // The rest of the body is not read: the connection cannot carry another request.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > FORM_BYTES_MAX as u64) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), FORM_BYTES_MAX);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Err(_) => {
            return Err(html(
                StatusCode::REQUEST_TIMEOUT,
                pages::message(
                    "Too slow",
                    "The form took too long to arrive.",
                    ("/", "Home"),
                ),
            ))
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(_)) => return Err(bad_request("The form did not arrive whole.")),
        Ok(Ok(c)) => c.to_bytes(),
    };
    Form::parse(&bytes).map_err(|e| bad_request(&e))
}

fn request_cookie(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| cookie(h, name))
        .map(str::to_string)
}

fn html(status: StatusCode, page: Markup) -> Response<Body> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(page.into_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(v.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from_static(text.as_bytes()))));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// 303 See Other to a path on this server (relative: whatever host the browser used).
fn redirect(to: &'static str) -> Response<Body> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::new())));
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    r
}

fn with_cookie(mut r: Response<Body>, cookie: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn clear_cookie(name: &str, path: &str) -> String {
    format!("{name}=; {COOKIE_ATTRIBUTES}; Path={path}; Max-Age=0")
}

fn not_found() -> Response<Body> {
    html(StatusCode::NOT_FOUND, pages::not_found())
}

fn bad_request(why: &str) -> Response<Body> {
    html(
        StatusCode::BAD_REQUEST,
        pages::message("Bad request", why, ("/", "Home")),
    )
}

fn csrf_refused() -> Response<Body> {
    html(
        StatusCode::FORBIDDEN,
        pages::message(
            "Refused",
            "This form is out of date or came from elsewhere: go back, reload the page and try again.",
            ("/admin/", "Dashboard"),
        ),
    )
}

fn device_error(what: &str, e: &anyhow::Error) -> Response<Body> {
    html(
        StatusCode::BAD_GATEWAY,
        pages::message(
            what,
            &format!("The device refused: {e:#}"),
            ("/admin/", "Back"),
        ),
    )
}

/// The log pages' paths: this, then the service's name.
const LOGS_PREFIX: &str = "/admin/logs/";
/// Every response's Content-Security-Policy: only this server's own files, never framed.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
/// The owner's session.
pub const SESSION_COOKIE: &str = "cairn_session";
/// A browser waiting for the button.
pub const CLAIM_COOKIE: &str = "cairn_claim";
/// The browser that won the claim, until setup is done.
pub const SETUP_COOKIE: &str = "cairn_setup";
/// A browser that logged in before (its logins are limited apart from its address's).
pub const KNOWN_COOKIE: &str = "cairn_known";
/// How long a browser stays known.
pub const KNOWN_COOKIE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Every cookie's: HTTPS only, never to scripts, never on another site's requests.
const COOKIE_ATTRIBUTES: &str = "Secure; HttpOnly; SameSite=Strict";
/// How often the board is asked while someone waits for the button.
pub const BOARD_POLL: Duration = Duration::from_millis(250);
/// Most connections open at once (more wait in the listen backlog).
pub const CONNECTIONS_MAX: usize = 64;
/// A TLS handshake must finish within this. Generous: a peer's libcurl (another plug's snac
/// delivering) loads its whole CA bundle after our ServerHello, before its Finished; a slow
/// plug takes seconds, and cut off then it sees TLS 1.3's handshake done and fails its first
/// write (curl error 55), its delivery left to a retry minutes later.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// A request's headers must arrive within this (also how long an idle connection stays).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A form's body must arrive within this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest form body.
pub const FORM_BYTES_MAX: usize = 16 * 1024;
/// A connection's read buffer (headers and what is read ahead of the body).
pub const CONNECTION_BUF_BYTES: usize = 32 * 1024;
/// Most headers in one request.
pub const HEADERS_MAX: usize = 48;
/// Longest the open connections may take to finish once the service is asked to stop (PID 1
/// waits `stop_grace_ms`, 3 s for the web, before SIGKILL).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_line_names_an_address_or_else_the_name() {
        let local: SocketAddr = "0.0.0.0:443".parse().unwrap();
        let v4 = [
            "127.0.0.1".parse().unwrap(),
            "192.168.1.23".parse().unwrap(),
        ];
        assert_eq!(
            announcement(&v4, local, Some("plug"), "AB:CD"),
            "https://192.168.1.23/ (plug.local) certificate SHA-256 AB:CD"
        );
        let v6 = ["fd00::23".parse().unwrap()];
        assert_eq!(
            announcement(&v6, "[::]:8443".parse().unwrap(), None, "AB"),
            "https://[fd00::23]:8443/ (cairn.local) certificate SHA-256 AB"
        );
        assert_eq!(
            announcement(&[], local, None, "AB"),
            "https://cairn.local/ certificate SHA-256 AB"
        );
        assert_eq!(
            announcement(&[], "127.0.0.1:8443".parse().unwrap(), None, "AB"),
            "https://127.0.0.1:8443/ (cairn.local) certificate SHA-256 AB"
        );
    }
}
