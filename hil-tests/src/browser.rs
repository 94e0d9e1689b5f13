//! A real browser for the web UI tests: Debian's headless Chromium, driven over WebDriver by
//! its own chromedriver, trusting the device only by the certificate its console printed.
//!
//! The device's certificate is self-signed, so no CA vouches for it. Instead of turning
//! certificate checks off ([`pin_from_fingerprint`] reads the certificate whose SHA-256 the
//! console printed and turns it into an SPKI pin), each [`Browser`] accepts exactly that key
//! (`--ignore-certificate-errors-spki-list`) and still refuses any other certificate error.
//!
//! Every wait is bounded; chromedriver and the browser it started are killed when their
//! [`Browser`] is dropped. The browser reaches nothing beyond this host: its background
//! services are off and every name but `localhost` fails to resolve.

use anyhow::{bail, Context};
use base64::Engine as _;
use cairn_web::trust::HandshakeOnly;
use fantoccini::{wd::Capabilities, wd::TimeoutConfiguration, Client, ClientBuilder, Locator};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConnection;
use std::fmt;
use std::future::Future;
use std::io::Read;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The SPKI pin Chromium takes: base64 of the SHA-256 of the certificate's
/// SubjectPublicKeyInfo (DER). It names the key, so it holds across a renewed certificate
/// with the same key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpkiPin(String);

impl SpkiPin {
    /// The pin of a certificate (DER).
    pub fn of_certificate(der: &[u8]) -> anyhow::Result<SpkiPin> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).context("parsing the certificate")?;
        let spki = cert.tbs_certificate.subject_pki.raw;
        let digest = ring::digest::digest(&ring::digest::SHA256, spki);
        Ok(SpkiPin(
            base64::engine::general_purpose::STANDARD.encode(digest.as_ref()),
        ))
    }

    /// The pin as Chromium's `--ignore-certificate-errors-spki-list` takes it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A certificate's SHA-256 fingerprint as consoles and `openssl x509 -fingerprint` print it
/// (`AA:BB:…`, upper case).
pub fn fingerprint_of(der: &[u8]) -> String {
    Fingerprint::of(der).to_string()
}

/// A certificate's SHA-256.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fingerprint([u8; 32]);

impl Fingerprint {
    fn of(der: &[u8]) -> Fingerprint {
        let d = ring::digest::digest(&ring::digest::SHA256, der);
        Fingerprint(d.as_ref().try_into().expect("SHA-256 is 32 bytes"))
    }

    /// `AA:BB:…` (either case) or 64 plain hex digits.
    fn parse(s: &str) -> anyhow::Result<Fingerprint> {
        let t = s.trim();
        let plain = if t.contains(':') {
            let parts: Vec<&str> = t.split(':').collect();
            anyhow::ensure!(
                parts.iter().all(|p| p.len() == 2),
                "'{s}' is not a SHA-256 fingerprint (AA:BB:… or 64 hex digits)"
            );
            parts.concat()
        } else {
            t.to_string()
        };
        let bytes = hex::decode(&plain)
            .ok()
            .filter(|b| b.len() == 32)
            .with_context(|| {
                format!("'{s}' is not a SHA-256 fingerprint (AA:BB:… or 64 hex digits)")
            })?;
        Ok(Fingerprint(bytes.try_into().expect("checked: 32 bytes")))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = hex::encode_upper(self.0);
        let pairs: Vec<&str> = (0..hex.len()).step_by(2).map(|i| &hex[i..i + 2]).collect();
        f.write_str(&pairs.join(":"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Connects to `host:port` with TLS, accepting exactly the certificate whose SHA-256 is
/// `sha256_fingerprint` (`AA:BB:…` or plain hex, as the device's console printed it), and
/// returns the pin of that certificate's key for [`Browser::open`].
pub fn pin_from_fingerprint(
    host: &str,
    port: u16,
    sha256_fingerprint: &str,
) -> anyhow::Result<SpkiPin> {
    let (conn, _sock) = pinned_handshake(host, port, sha256_fingerprint)?;
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .context("the server sent no certificate")?;
    SpkiPin::of_certificate(cert)
}

/// A finished TLS handshake with `host:port` that accepted exactly the certificate whose
/// SHA-256 is `sha256_fingerprint`: the connection and its socket (reads and writes bounded by
/// [`TLS_TIMEOUT`]), for [`pin_from_fingerprint`] and [`crate::https`].
pub(crate) fn pinned_handshake(
    host: &str,
    port: u16,
    sha256_fingerprint: &str,
) -> anyhow::Result<(ClientConnection, TcpStream)> {
    let want = Fingerprint::parse(sha256_fingerprint)?;
    let seen = Arc::new(Mutex::new(None));
    let saw = seen.clone();
    // Trusts one certificate, by its SHA-256, as SSH trusts a known host: no CA, name or
    // dates (the device makes its own certificate; its console's fingerprint is what vouches
    // for it). The handshake's signature is still checked, so only the holder of the key gets
    // through.
    let config = HandshakeOnly::client_config(move |end: &CertificateDer<'_>, _: &[_]| {
        let got = Fingerprint::of(end);
        *saw.lock().unwrap() = Some(got);
        if got == want {
            Ok(())
        } else {
            Err(rustls::Error::General(format!(
                "certificate {got} is not the pinned {want}"
            )))
        }
    });
    let name = ServerName::try_from(host.to_string())
        .with_context(|| format!("'{host}' is not a host name or address"))?;
    let mut sock = connect(host, port)?;
    let mut conn = ClientConnection::new(Arc::new(config), name)?;
    let deadline = Instant::now() + TLS_TIMEOUT;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut sock) {
            if let Some(got) = *seen.lock().unwrap() {
                if got != want {
                    bail!(
                        "{host}:{port} presented a certificate with SHA-256 fingerprint {got}, \
                         not the expected {want}: it is not the device whose console printed that"
                    );
                }
            }
            return Err(e).with_context(|| format!("TLS handshake with {host}:{port}"));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "TLS handshake with {host}:{port} took over {TLS_TIMEOUT:?}"
        );
    }
    Ok((conn, sock))
}

/// An HTTP response as [`https_request`] read it.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The header lines, as sent (`Name: value`).
    pub headers: Vec<String>,
    /// The body, as text (lossy).
    pub body: String,
}

impl HttpResponse {
    /// The value of the first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends one raw HTTP/1.1 request (`head`: request line and headers, without the final empty
/// line; `Host`, `Content-Length` and `Connection: close` are added) to `host:port` over TLS
/// pinned to the certificate with SHA-256 `sha256_fingerprint`, as a script would rather than a
/// browser: no `Origin`, no `Sec-Fetch-*`, only the cookies it is given. Reads the whole answer.
pub fn https_request(
    host: &str,
    port: u16,
    sha256_fingerprint: &str,
    head: &str,
    body: &str,
) -> anyhow::Result<HttpResponse> {
    use std::io::Write as _;
    let (mut conn, mut sock) = pinned_handshake(host, port, sha256_fingerprint)?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let request = format!(
        "{}\r\nHost: {host}:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        head.trim_end(),
        body.len()
    );
    tls.write_all(request.as_bytes())
        .with_context(|| format!("sending to {host}:{port}"))?;
    let mut answer = Vec::new();
    let deadline = Instant::now() + TLS_TIMEOUT;
    loop {
        let mut chunk = [0u8; 4096];
        match tls.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            // A server may close without TLS's close_notify once it has said all
            // (`Connection: close`): the answer is whole.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e).with_context(|| format!("reading from {host}:{port}")),
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{host}:{port} took over {TLS_TIMEOUT:?} to answer"
        );
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{host}:{port} answered no HTTP response: {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{host}:{port} answered no status line: {head:?}"))?;
    Ok(HttpResponse {
        status,
        headers: lines.map(str::to_string).collect(),
        body: body.to_string(),
    })
}

/// TCP to the first address of `host` that answers, with bounded connect and I/O.
fn connect(host: &str, port: u16) -> anyhow::Result<TcpStream> {
    let mut last = None;
    for addr in (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
    {
        match TcpStream::connect_timeout(&addr, TLS_TIMEOUT) {
            Ok(s) => {
                s.set_read_timeout(Some(TLS_TIMEOUT))?;
                s.set_write_timeout(Some(TLS_TIMEOUT))?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e).with_context(|| format!("connecting to {host}:{port}")),
        None => bail!("{host} has no address"),
    }
}

/// The browser window's size in CSS pixels (the device scale factor is 1, so screenshots
/// are this many pixels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Viewport {
    /// Width in CSS pixels.
    pub width: u32,
    /// Height in CSS pixels.
    pub height: u32,
}

impl Viewport {
    /// A current phone (iPhone 12–14 class), where the UI must work first.
    pub const PHONE: Viewport = Viewport {
        width: 390,
        height: 844,
    };
    /// A laptop screen.
    pub const DESKTOP: Viewport = Viewport {
        width: 1280,
        height: 800,
    };
}

/// Where [`Browser::wait_for_text`] looks.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// The whole page's visible text.
    Page,
    /// The first element matching this CSS selector.
    Css(&'a str),
}

/// A headless Chromium with a profile of its own (cookies, storage, cache), so two are two
/// independent browsers; its chromedriver and it are killed on drop.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    // Dropped in this order: the processes, then their files.
    _driver: Driver,
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile, trusting the key
    /// `pin` names (and no other untrusted certificate), at `viewport`'s size.
    pub fn open(pin: &SpkiPin, viewport: Viewport) -> anyhow::Result<Browser> {
        let dir = tempfile::tempdir()?;
        let driver = Driver::start(&dir.path().join("chromedriver.log"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let profile = dir.path().join("profile");
        let args = chromium_args(pin, viewport, &profile);
        let mut caps = Capabilities::new();
        caps.insert("browserName".into(), "chrome".into());
        // Explicit: only the pinned key is trusted, never every certificate.
        caps.insert("acceptInsecureCerts".into(), false.into());
        // `--window-size` sizes the window, and headless Chromium still takes its (invisible)
        // toolbar off the page and keeps desktop windows at least 500 pixels wide: the
        // viewport itself is set by device emulation, a phone's as a mobile device with touch.
        let phone = viewport.width < DESKTOP_WIDTH_MIN;
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": args,
                // Downloads land in the browser's own directory, without asking.
                "prefs": {
                    "download.default_directory": dir.path().join("downloads"),
                    "download.prompt_for_download": false,
                },
                "mobileEmulation": { "deviceMetrics": {
                    "width": viewport.width,
                    "height": viewport.height,
                    "pixelRatio": 1.0,
                    "mobile": phone,
                    "touch": phone,
                }},
            }),
        );
        let url = format!("http://127.0.0.1:{}", driver.port);
        let client = rt
            .block_on(async {
                tokio::time::timeout(
                    SESSION_TIMEOUT,
                    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                        .capabilities(caps)
                        .connect(&url),
                )
                .await
            })
            .map_err(|_| anyhow::anyhow!("no browser session within {SESSION_TIMEOUT:?}"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| {
                format!(
                    "starting {CHROMIUM} through chromedriver (run scripts/setup); its log:\n{}",
                    driver.log_tail()
                )
            })?;
        let mut b = Browser {
            rt,
            client: Some(client),
            _driver: driver,
            dir,
        };
        let timeouts = TimeoutConfiguration::new(
            Some(COMMAND_TIMEOUT),
            Some(PAGE_LOAD_TIMEOUT),
            Some(Duration::ZERO),
        );
        b.run("setting timeouts", |c| async move {
            c.update_timeouts(timeouts).await
        })?;
        Ok(b)
    }

    /// Runs one WebDriver command, bounded by [`COMMAND_TIMEOUT`].
    fn run<T, F, Fut>(&mut self, what: &str, f: F) -> anyhow::Result<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, fantoccini::error::CmdError>>,
    {
        let client = self.client.clone().context("the browser is closed")?;
        match self
            .rt
            .block_on(async { tokio::time::timeout(COMMAND_TIMEOUT, f(client)).await })
        {
            Ok(r) => r.with_context(|| what.to_string()),
            Err(_) => bail!("{what}: no answer from the browser within {COMMAND_TIMEOUT:?}"),
        }
    }

    /// Navigates to `url` and waits for the page to load; fails if Chromium shows an error
    /// page instead, its certificate warning included (naming its `NET::ERR_CERT_…` code).
    pub fn goto(&mut self, url: &str) -> anyhow::Result<()> {
        let u = url.to_string();
        self.run(
            &format!("loading {url}"),
            |c| async move { c.goto(&u).await },
        )?;
        // chromedriver reports a refused certificate as a loaded page: Chromium's interstitial.
        let refused = self.run("looking for a certificate error page", |c| async move {
            c.execute(CERT_ERROR_SCRIPT, vec![]).await
        })?;
        if let Some(code) = refused.as_str() {
            bail!(
                "Chromium refused the certificate of {url} ({code}) and shows its \"not private\" \
                 page: is the pin the key of the certificate this server presents?"
            );
        }
        Ok(())
    }

    /// The page's title.
    pub fn title(&mut self) -> anyhow::Result<String> {
        self.run("reading the title", |c| async move { c.title().await })
    }

    /// The current page's URL.
    pub fn url(&mut self) -> anyhow::Result<String> {
        self.run("reading the URL", |c| async move {
            c.current_url().await.map(|u| u.to_string())
        })
    }

    /// The visible text of the first element matching `css`.
    pub fn text_of(&mut self, css: &str) -> anyhow::Result<String> {
        let sel = css.to_string();
        self.run(&format!("reading the text of {css}"), |c| async move {
            c.find(Locator::Css(&sel)).await?.text().await
        })
    }

    /// Waits until `scope`'s visible text contains `text`, polling every [`POLL`]; returns
    /// the whole text then. An element that does not exist yet is waited for too.
    pub fn wait_for_text(
        &mut self,
        scope: Scope<'_>,
        text: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let css = match scope {
            Scope::Page => "body",
            Scope::Css(css) => css,
        };
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.text_of(css);
            match &seen {
                Ok(t) if t.contains(text) => return Ok(t.clone()),
                _ if Instant::now() >= deadline => {
                    let seen = match seen {
                        Ok(t) => format!("its text is {t:?}"),
                        Err(e) => format!("{e:#}"),
                    };
                    bail!("no {text:?} in {scope:?} within {timeout:?}: {seen}");
                }
                _ => std::thread::sleep(POLL),
            }
        }
    }

    /// Loads `url` again and again (every 2 s, as a person reloads) until its `main` says
    /// `text` (a dashboard catching up with the device); returns that text then.
    pub fn reload_until(
        &mut self,
        url: &str,
        text: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.goto(url)?;
            let body = self.text_of("main")?;
            if body.contains(text) {
                return Ok(body);
            }
            if Instant::now() >= deadline {
                bail!("{url} does not say {text:?} within {timeout:?}: {body}");
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Clicks the first element matching `css`.
    pub fn click(&mut self, css: &str) -> anyhow::Result<()> {
        let sel = css.to_string();
        self.run(&format!("clicking {css}"), |c| async move {
            c.find(Locator::Css(&sel)).await?.click().await
        })
    }

    /// Clicks the first element matching `css`, which leads to another page (a form's submit
    /// button, a link), and waits up to `timeout` until that page has loaded. A plain
    /// [`click`](Browser::click) may return while the old page still shows: reading it then
    /// finds the old page's text, and its elements go stale under the reader.
    pub fn click_to_next_page(&mut self, css: &str, timeout: Duration) -> anyhow::Result<()> {
        // A mark only this document carries: gone once another document has loaded.
        self.run("marking the page", |c| async move {
            c.execute("window.cairnOldPage = true; return null;", vec![])
                .await
        })?;
        self.click(css)?;
        let deadline = Instant::now() + timeout;
        loop {
            let loaded = self.run("waiting for the next page", |c| async move {
                c.execute(
                    "return window.cairnOldPage === undefined \
                     && document.readyState === 'complete';",
                    vec![],
                )
                .await
            });
            match loaded {
                Ok(serde_json::Value::Bool(true)) => return Ok(()),
                // Between two pages, scripts may fail to run: look again.
                Ok(_) | Err(_) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(_) => bail!("clicking {css}: no next page within {timeout:?}"),
                Err(e) => return Err(e.context(format!("clicking {css}: no next page"))),
            }
        }
    }

    /// Replaces the value of the field matching `css` with `text`, typed as keys.
    pub fn fill(&mut self, css: &str, text: &str) -> anyhow::Result<()> {
        let (sel, t) = (css.to_string(), text.to_string());
        self.run(&format!("filling {css}"), |c| async move {
            let field = c.find(Locator::Css(&sel)).await?;
            field.clear().await?;
            field.send_keys(&t).await
        })
    }

    /// Types `keys` into the element matching `css` without clearing it first (a slider takes
    /// arrow keys: `"\u{E011}"` is Home, `"\u{E014}"` the right arrow, as WebDriver names them).
    pub fn type_keys(&mut self, css: &str, keys: &str) -> anyhow::Result<()> {
        let (sel, k) = (css.to_string(), keys.to_string());
        self.run(&format!("typing into {css}"), |c| async move {
            c.find(Locator::Css(&sel)).await?.send_keys(&k).await
        })
    }

    /// The current value of the form field matching `css`: what its box shows.
    pub fn value_of(&mut self, css: &str) -> anyhow::Result<String> {
        let sel = css.to_string();
        self.run(&format!("reading the value of {css}"), |c| async move {
            c.find(Locator::Css(&sel))
                .await?
                .prop("value")
                .await
                .map(Option::unwrap_or_default)
        })
    }

    /// How many elements match `css` on the page.
    pub fn count(&mut self, css: &str) -> anyhow::Result<usize> {
        let sel = css.to_string();
        self.run(&format!("counting {css}"), |c| async move {
            c.find_all(Locator::Css(&sel)).await.map(|v| v.len())
        })
    }

    /// The text of the dialog (`alert`, `confirm`, `prompt`) the page has open, if any.
    pub fn alert_text(&mut self) -> anyhow::Result<Option<String>> {
        let client = self.client.clone().context("the browser is closed")?;
        let r = self.rt.block_on(async {
            tokio::time::timeout(COMMAND_TIMEOUT, client.get_alert_text()).await
        });
        match r {
            Ok(Ok(text)) => Ok(Some(text)),
            Ok(Err(e)) if e.is_no_such_alert() => Ok(None),
            Ok(Err(e)) => Err(e).context("reading the open dialog"),
            Err(_) => bail!("reading the open dialog: no answer within {COMMAND_TIMEOUT:?}"),
        }
    }

    /// The value of the cookie `name` the browser holds for the current page, as WebDriver
    /// reads it (`HttpOnly` ones too, which the page's scripts cannot see).
    pub fn cookie(&mut self, name: &str) -> anyhow::Result<Option<String>> {
        let cookies = self.run("reading the cookies", |c| async move {
            c.get_all_cookies().await
        })?;
        Ok(cookies
            .iter()
            .find(|c| c.name() == name)
            .map(|c| c.value().to_string()))
    }

    /// Writes what the viewport shows to `<target>/screens/NAME.png` (see [`target_dir`]);
    /// returns the path.
    pub fn screenshot(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !name.starts_with('.'),
            "screenshot name {name:?}: use letters, digits, '-', '_' and '.'"
        );
        let png = self.run(
            "taking a screenshot",
            |c| async move { c.screenshot().await },
        )?;
        let dir = target_dir().join("screens");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Waits until the browser has finished downloading a file named `name` (Chromium writes
    /// `NAME.crdownload` first, and renames it whole), and returns its bytes.
    pub fn downloaded(&self, name: &str, timeout: Duration) -> anyhow::Result<Vec<u8>> {
        let dir = self.dir.path().join("downloads");
        let path = dir.join(name);
        let deadline = Instant::now() + timeout;
        while !path.exists() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no download {name} within {timeout:?}; {} holds {:?}",
                dir.display(),
                std::fs::read_dir(&dir)
                    .map(|d| d
                        .filter_map(|e| e.ok().map(|e| e.file_name()))
                        .collect::<Vec<_>>())
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// The profile directory: this browser's cookies and storage, nobody else's.
    pub fn profile_dir(&self) -> PathBuf {
        self.dir.path().join("profile")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session so chromedriver quits the browser; the driver's kill is the
        // backstop.
        if let Some(c) = self.client.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(CLOSE_TIMEOUT, c.close()).await });
        }
    }
}

/// The error code Chromium's certificate interstitial shows (`NET::ERR_CERT_…`), or null on
/// any other page.
const CERT_ERROR_SCRIPT: &str = "const e = document.getElementById('error-code'); \
     const c = e ? e.textContent.trim().toUpperCase() : ''; \
     return c.startsWith('NET::ERR_CERT_') ? c : null;";

/// Chromium's command line, each flag with its reason.
fn chromium_args(pin: &SpkiPin, viewport: Viewport, profile: &Path) -> Vec<String> {
    let mut args = vec![
        // The new headless mode is the real browser without a window (the old one was a
        // separate implementation).
        "--headless=new".to_string(),
        // Tests run as root, and Chromium's sandbox refuses to start as root.
        "--no-sandbox".to_string(),
        format!("--window-size={},{}", viewport.width, viewport.height),
        // Screenshots at the viewport's pixels, whatever the host's display settings.
        "--force-device-scale-factor=1".to_string(),
        // A fresh profile per browser: separate cookies. Chromium also honours the SPKI list
        // only with an explicit user data directory.
        format!("--user-data-dir={}", profile.display()),
        format!("--ignore-certificate-errors-spki-list={pin}"),
        // Containers often have a 64 MiB /dev/shm, too small for Chromium's shared memory
        // (Debian's launcher adds this too; the binary is started directly, without it).
        "--disable-dev-shm-usage".to_string(),
        "--no-first-run".to_string(),
        "--no-default-browser-check".to_string(),
    ];
    // Nothing beyond this host: no update checks, sync, metrics or other Google services, and
    // no name but localhost (and link-local addresses) resolves.
    args.extend(
        [
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--no-pings",
            // Link-local addresses: the boards on a test's own LAN (`PrivateLan`).
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 169.254.*",
        ]
        .map(String::from),
    );
    args
}

/// A chromedriver on a free loopback port, in its own process group so that the browser it
/// starts is killed with it.
struct Driver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Driver {
    fn start(log: &Path) -> anyhow::Result<Driver> {
        // A port the kernel just handed out and took back: free unless another process takes
        // it in this instant (chromedriver then exits, and the wait below says so).
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let out = std::fs::File::create(log)?;
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {CHROMEDRIVER} (run scripts/setup)"))?;
        let mut d = Driver {
            child,
            port,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + DRIVER_START_TIMEOUT;
        loop {
            let listening = TcpStream::connect(("127.0.0.1", port)).is_ok();
            if let Some(status) = d.child.try_wait()? {
                bail!(
                    "chromedriver exited ({status}) before listening on port {port}:\n{}",
                    d.log_tail()
                );
            }
            if listening {
                return Ok(d);
            }
            if Instant::now() >= deadline {
                bail!(
                    "chromedriver did not listen on port {port} within {DRIVER_START_TIMEOUT:?}:\n{}",
                    d.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of chromedriver's log, for error messages.
    fn log_tail(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Driver {
    /// Kills chromedriver and everything in its process group (the browser).
    fn drop(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: a plain syscall. chromedriver is not reaped yet, so its pid, the group's id,
        // cannot have been reused.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A page's reaction to a click or a press on a loaded 2-core machine.
pub const SETUP_REACT: Duration = Duration::from_secs(20);

/// The certificate fingerprint in the web's console line (`cairn: web: https://… certificate
/// SHA-256 AB:CD:…`).
pub fn web_fingerprint(line: &str) -> anyhow::Result<&str> {
    line.split_once("certificate SHA-256 ")
        .map(|(_, f)| f.trim())
        .ok_or_else(|| anyhow::anyhow!("no fingerprint in the web's console line: {line:?}"))
}

/// The claim page's status once the device knows the page (a press from then on is its).
pub const WAITING: &str = "Waiting for the button…";
/// Setup's answer: it hashes the passphrase (Argon2id, 19 MiB, on an emulated CPU) and makes
/// the owner's vault.
pub const SETUP_HASHING: Duration = Duration::from_secs(90);

/// Opens a browser on a plug booted with its HTTPS forwarded to `https_port` on the host,
/// trusting the certificate the console named (`web_line`: the `cairn: web: https://…`
/// line), then claims it with a press of its button through `panel` and sets it up as `name`
/// ([`claim_and_set_up`]). Returns the logged-in browser.
pub fn set_up_through_forward(
    web_line: &str,
    https_port: u16,
    panel: &cairn_bsp::panel::PanelLink,
    name: &str,
    passphrase: &str,
) -> anyhow::Result<Browser> {
    let pin = pin_from_fingerprint("localhost", https_port, web_fingerprint(web_line)?)?;
    let mut b = Browser::open(&pin, Viewport::DESKTOP)?;
    let press = || panel.press(Duration::from_millis(300)).unwrap();
    claim_and_set_up(
        &mut b,
        &format!("https://localhost:{https_port}"),
        press,
        name,
        passphrase,
    )?;
    Ok(b)
}

/// Claims a new plug at `origin` (`https://HOST[:PORT]`) with a press of its button (`press`)
/// and sets it up as `name`, as its owner does in a browser: the form, then the recovery key's
/// last group. The browser is logged in afterwards.
pub fn claim_and_set_up(
    b: &mut Browser,
    origin: &str,
    press: impl FnOnce(),
    name: &str,
    passphrase: &str,
) -> anyhow::Result<()> {
    b.goto(&format!("{origin}/"))?;
    let h1 = b.text_of("h1")?;
    anyhow::ensure!(
        h1 == "Press the button on your Cairn",
        "a new plug's page says {h1:?}"
    );
    // The page says so once a press would count for it.
    b.wait_for_text(Scope::Css("#status"), WAITING, SETUP_REACT)?;
    press();
    b.wait_for_text(Scope::Css("h1"), "Set up your Cairn", SETUP_REACT)?;
    b.fill("#name", name)?;
    b.fill("#passphrase", passphrase)?;
    b.fill("#passphrase2", passphrase)?;
    b.click_to_next_page("button[type=submit]", SETUP_HASHING)?;
    let key = b.text_of("#recovery-key")?;
    let last = key.rsplit('-').next().unwrap_or_default().to_string();
    b.fill("#last", &last)?;
    b.click_to_next_page("button[type=submit]", SETUP_REACT)?;
    let h1 = b.text_of("h1")?;
    anyhow::ensure!(h1 == name, "after setup the page says {h1:?}, not {name:?}");
    Ok(())
}

/// Adds a Jabber account on the Chat page (open in `b`); returns what the page said.
pub fn add_chat_account(b: &mut Browser, name: &str, password: &str) -> anyhow::Result<String> {
    b.fill("#new-account input[name=name]", name)?;
    b.fill("#new-account input[name=password]", password)?;
    b.click_to_next_page("#new-account button[type=submit]", SETUP_REACT)?;
    b.text_of("#chat-note")
}

/// Reloads the Chat page at `chat` until its account list shows `jid`, at most `timeout`:
/// after setup Prosody restarts for the device's new name, then the owner's account is made.
pub fn wait_chat_account(
    b: &mut Browser,
    chat: &str,
    jid: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        b.goto(chat)?;
        let list = b.text_of("#accounts")?;
        if list.contains(jid) {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "no {jid} on the Chat page within {timeout:?}: {list}"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// A backup of the services' data through the plug's storage node, on an emulated CPU.
pub const BACKUP: Duration = Duration::from_secs(180);

/// "Back up now" on the dashboard at `dashboard` (open in `b`, logged in); returns what the
/// page said and the number of files it stored, checking the dashboard says the same after.
pub fn back_up_now(b: &mut Browser, dashboard: &str) -> anyhow::Result<(String, u64)> {
    b.goto(dashboard)?;
    b.click_to_next_page("form[action='/admin/backup'] button", BACKUP)?;
    let done = b.text_of("main p")?;
    let files: u64 = done
        .strip_prefix("Backed up: snapshot")
        .and_then(|rest| rest.split_once(" files"))
        .and_then(|(head, _)| head.rsplit(' ').next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no backup: {done}"))?;
    b.goto(dashboard)?;
    let said = b.text_of("#backups")?;
    anyhow::ensure!(
        said.contains(&format!("{files} files")),
        "the dashboard says {said:?} after {done:?}"
    );
    Ok((said, files))
}

/// Waits on the Social page (`social`: its URL) for `name`'s first password (snac makes the
/// account at its next start) and returns it, with the row's text (its handle).
pub fn wait_social_password(
    b: &mut Browser,
    social: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<(String, String)> {
    let start = Instant::now();
    let row = format!("#social-accounts tr[data-name={name}]");
    loop {
        b.goto(social)?;
        let said = b.text_of(&row).unwrap_or_default();
        if let Ok(p) = b.text_of(&format!("{row} code.password")) {
            return Ok((p, said));
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "no first password for {name} within {timeout:?}: {said}"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// Without a DHCP server a plug takes its link-local address after 30 s.
pub const ADDRESSED: Duration = Duration::from_secs(120);

/// A product image booted on a [`crate::PrivateLan`], reached by its link-local address, and
/// how its owner's browser trusts it.
pub struct LanPlug {
    /// The board.
    pub q: crate::Qemu,
    /// Its front panel.
    pub panel: cairn_bsp::panel::PanelLink,
    /// Its link-local address.
    pub address: String,
    /// `https://ADDRESS`
    pub origin: String,
    /// Its certificate's pin, from its console.
    pub pin: SpkiPin,
}

impl LanPlug {
    /// Boots the product image on `tap` with `mac`; returns once it has its address.
    pub fn boot(tap: &str, mac: &str) -> anyhow::Result<LanPlug> {
        let mut cfg = crate::Config::new(crate::image("cairn-qemu-virt.img")?);
        cfg.ethernet = crate::Ethernet::Tap {
            ifname: tap.into(),
            mac: mac.into(),
        };
        let q = crate::Qemu::boot(&cfg)?;
        let panel = q.panel()?;
        // The web's line names the certificate; the address comes later, without DHCP
        // (`cairn: net: eth0 169.254.X.Y/16 link-local`).
        let web = q.wait_line("cairn: web: https://", crate::BOOT_TIMEOUT)?;
        let fingerprint = web_fingerprint(&web)?.to_string();
        let net = q
            .wait_line("cairn: net: eth0 169.254.", ADDRESSED)
            .with_context(|| format!("console:\n{}", q.console().join("\n")))?;
        let address = net
            .split_whitespace()
            .find_map(|w| w.strip_suffix("/16"))
            .with_context(|| format!("no address in {net:?}"))?
            .to_string();
        let pin = pin_from_fingerprint(&address, 443, &fingerprint)?;
        Ok(LanPlug {
            q,
            panel,
            origin: format!("https://{address}"),
            address,
            pin,
        })
    }

    /// `https://ADDRESS/PATH`
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// Claims the plug with a press and sets it up as `name`; the browser, logged in.
    pub fn set_up(&self, name: &str, passphrase: &str) -> anyhow::Result<Browser> {
        let mut b = Browser::open(&self.pin, Viewport::DESKTOP)?;
        claim_and_set_up(&mut b, &self.origin, || self.press(), name, passphrase)?;
        Ok(b)
    }

    /// A short press of its button.
    pub fn press(&self) {
        // A panel gone means the board is gone: the next wait says so.
        let _ = self.panel.press(Duration::from_millis(300));
    }
}

/// The workspace's target directory: `$CARGO_TARGET_DIR` (relative to the repository, if
/// relative) or `<repo>/target`.
pub fn target_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root.join(d),
        _ => root.join("target"),
    }
}

/// Narrower viewports are phones: emulated as mobile devices with touch.
pub const DESKTOP_WIDTH_MIN: u32 = 600;

/// Debian's Chromium binary itself: its launcher `/usr/bin/chromium` adds Google API keys and
/// flags from /etc/chromium.d that the harness sets, or does not want, itself.
pub const CHROMIUM: &str = "/usr/lib/chromium/chromium";
/// Debian's chromedriver (package chromium-driver, the same build as the browser).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How often [`Browser::wait_for_text`] looks again.
pub const POLL: Duration = Duration::from_millis(100);
// Generous bounds for a loaded 2-core machine.
/// chromedriver listening.
pub const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Chromium's first start with a fresh profile.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// One page load.
pub const PAGE_LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Any other WebDriver command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Ending the session.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The TCP connect, each read and write, and the whole handshake of [`pin_from_fingerprint`].
pub const TLS_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits on the Social page at `page` for `name`'s first password (snac makes the account at
/// its next start, after setup or the page's Add), at most `bound`; `@name@domain` must head
/// its row.
pub fn social_first_password(
    b: &mut Browser,
    page: &str,
    name: &str,
    domain: &str,
    bound: Duration,
) -> anyhow::Result<String> {
    let (password, row) = wait_social_password(b, page, name, bound)?;
    anyhow::ensure!(row.contains(&format!("@{name}@{domain}")), "{row}");
    Ok(password)
}

/// This plug's certificate's fingerprint as its Social page shows it (`page`).
pub fn social_fingerprint(b: &mut Browser, page: &str) -> anyhow::Result<String> {
    b.goto(page)?;
    Ok(b.text_of("#own-fingerprint code")?.trim().to_string())
}

/// On the Social page at `page`, looks at `server` and trusts it if it shows `fingerprint`
/// (what its owner read on their side), as an owner comparing the two does.
pub fn trust_on_social_page(
    b: &mut Browser,
    page: &str,
    server: &str,
    fingerprint: &str,
) -> anyhow::Result<()> {
    b.goto(page)?;
    b.fill("#look-server input[name=address]", server)?;
    b.click_to_next_page("#look-server button[type=submit]", SETUP_REACT)?;
    let shown = b
        .text_of("#shown-fingerprint")
        .with_context(|| format!("looking at {server}: {:?}", b.text_of("#servers-note")))?;
    anyhow::ensure!(
        shown.trim() == fingerprint,
        "{server} shows {shown}, its owner sees {fingerprint}"
    );
    b.click_to_next_page("#trust-server button[type=submit]", SETUP_REACT)?;
    let said = b.text_of("#servers-note")?;
    anyhow::ensure!(said.contains("is trusted"), "trusting {server}: {said}");
    Ok(())
}

/// The certificate `host:port` shows, as PEM, if its SHA-256 is `sha256_fingerprint` (what
/// another server's administrator adds to what it trusts, having compared the fingerprint).
pub fn certificate_pem(host: &str, port: u16, sha256_fingerprint: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let (conn, _sock) = pinned_handshake(host, port, sha256_fingerprint)?;
    let der = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .context("the server sent no certificate")?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = (0..b64.len())
        .step_by(64)
        .map(|i| &b64[i..(i + 64).min(b64.len())])
        .collect();
    Ok(format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    ))
}
