//! Web service figures on the virtual board (test image), for `scripts/bench web`: the web's
//! memory when idle, unclaimed after boot and again after a claim, setup and login; and the
//! time to first byte of the owner's dashboard against a static file of the same server in the
//! same run.
//!
//! The bench is a browser without a browser: it registers on `POST /setup/api/wait`, presses
//! the board's button on the front panel, polls again until it is granted the setup, fills the
//! setup form with the CSRF token the form page carries, logs in, and then times requests over
//! one kept-alive HTTPS connection through QEMU's forwarded port, trusting the device by the
//! fingerprint its console printed (read again after setup, which certifies the new name). The
//! TLS handshake is done before the first timed request and counted in none.
//!
//! - `web_rss_mib_idle`, `web_rss_mib_idle_unclaimed`: the web process's `VmRSS` (its
//!   `/proc/PID/status`, read in the guest by the `crasher` fixture), the largest of a few
//!   samples after it has been left alone for a moment. It splits into `…_anon_…` (its own
//!   heap and stacks) and `web_rss_shared_mib_idle` (the multi-call binary's pages, mapped from
//!   the initramfs and shared with PID 1 and the node, so no extra memory). `…_pid1` is what
//!   PID 1 reports for the service and the dashboard shows: its cgroup's `memory.current`, which
//!   charges shared pages to whoever touched them first (PID 1), so it is about the anonymous
//!   part plus the kernel's memory for the process.
//! - `web_rss_mib_peak`: its `VmHWM` at the end, the passphrase hashes of setup and login
//!   included.
//! - `dashboard_ms`: median (and p90) time to first byte of `GET /admin/` with the session;
//!   `dashboard_ms_floor`: the same for `GET /static/style.css` (no session, template or PID 1
//!   call: the server's and the forwarding's own cost); `health_ms`: `GET /api/health` (two
//!   PID 1 calls, no template). Each round asks for all three, in a rotating order, so load on
//!   the host weighs on each alike. `dashboard_vs_static` = dashboard ÷ floor.
//! - `web_rss_mib_upload`: the web's `VmHWM` over a 1 GiB upload (`PUT /admin/files/put`, the
//!   body streamed into the owner's vault and its shards to the storage node, which keeps them
//!   on this plug: it has no partners), its peak reset just before (`clear_refs`).
//!   `upload_mb_s` is that upload's speed (bytes ÷ seconds from the request's first byte to the
//!   answer, which comes once the snapshot is written); `vault_put_mb_s` the speed of `cairn
//!   vault put` of the same bytes from a file on the same device in the same run (a vault of
//!   its own, shards to the same node: the `vault-put` fixture); `upload_vs_vault` the ratio
//!   (target ≥ 0.5). `CAIRN_BENCH_UPLOAD_MIB` changes the size (default 1024).
//!
//! Usage: `web_bench [OUT.json]` (default target/bench/web.json).

use cairn_bsp::panel::PanelLink;
use cairn_hil::browser::web_fingerprint;
use cairn_hil::https::{form, input_value, Connection, Cookies, Response};
use cairn_hil::{image, service, Config, FixturePort, Qemu, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};
use serde_json::json;
use std::time::{Duration, Instant};

/// Timed rounds (each: dashboard, static file, health); medians and p90s are over these.
const ROUNDS: usize = 60;
/// Untimed rounds first: the connection's and the server's first requests do one-off work.
const WARMUP_ROUNDS: usize = 10;
/// Memory samples per reading; the largest is reported.
const MEMORY_SAMPLES: usize = 5;
/// Left alone this long before memory is read.
const SETTLE: Duration = Duration::from_secs(3);
/// Long polls after the press before giving up on the claim.
const POLLS: usize = 3;
/// Each answer's bound: the long poll answers within 25 s, a little more for a loaded host.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(40);
/// Bound for the pairing pattern to follow a press.
const REACT: Duration = Duration::from_secs(10);
/// The owner's passphrase for this run.
const PASSPHRASE: &str = "correct horse battery staple";
/// The device's name for this run.
const NAME: &str = "bench";
/// The upload's size by default (MiB).
const UPLOAD_MIB: usize = 1024;
/// The bench's bytes' seed (the fixture makes the same bytes).
const UPLOAD_SEED: u64 = 7;
/// Longest the upload, or the vault's put of the same bytes, may take on an emulated CPU.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);
/// The disk: the upload's shards (4-of-8: twice its size), the file and the CLI vault's shards.
const DISK_BYTES: u64 = 8 << 30;
/// The host name the bench connects to (QEMU forwards the port on the host's loopback).
const HOST: &str = "127.0.0.1";

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/bench/web.json".into());

    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("disk.img");
    std::fs::copy(image("cairn-qemu-virt-test.img")?, &disk)?;
    let mut cfg = Config::new(disk);
    cfg.disk_bytes = Some(DISK_BYTES);
    let https_port = free_port()?;
    cfg.https_port = Some(https_port);
    let mut q = Qemu::boot(&cfg)?;
    let panel = q.panel()?;
    let line = q.wait_line("cairn: web: https://", BOOT_TIMEOUT)?;
    let fingerprint = web_fingerprint(&line)?.to_string();
    q.wait_line("cairn: ready", BOOT_TIMEOUT)?;
    let mut port = FixturePort::plug(&mut q)?;
    port.expect("started")?;
    eprintln!("web bench: booted, web at 127.0.0.1:{https_port}, certificate {fingerprint}");

    std::thread::sleep(SETTLE);
    let unclaimed = memory(&mut port)?;
    eprintln!("web bench: unclaimed, idle: {unclaimed:?}");

    let mut device = Device {
        port: https_port,
        fingerprint,
    };
    let mut jar = Cookies::default();
    claim(&device, &panel, &mut jar)?;
    setup(&mut device, &q, &mut jar)?;
    log_in(&device, &mut jar)?;
    eprintln!("web bench: claimed, set up and logged in");

    std::thread::sleep(SETTLE);
    let idle = memory(&mut port)?;
    eprintln!("web bench: set up, idle: {idle:?}");

    let timed = time_requests(&device, &jar)?;
    let end = memory(&mut port)?;

    let upload_mib = std::env::var("CAIRN_BENCH_UPLOAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(UPLOAD_MIB);
    let upload = upload(&device, &mut jar, &mut port, upload_mib)?;
    eprintln!("web bench: upload: {upload:?}");
    port.send(&format!("vault-put {upload_mib} {UPLOAD_SEED}"))?;
    let answer = port.expect_within("vault-put ", UPLOAD_TIMEOUT)?;
    let (put_s, put_bytes) = answer
        .split_once(' ')
        .and_then(|(s, b)| Some((s.parse::<f64>().ok()?, b.parse::<u64>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("the fixture's vault-put answered {answer:?}"))?;
    anyhow::ensure!(
        put_bytes == upload.bytes,
        "the vault put {put_bytes} bytes, the upload {}",
        upload.bytes
    );
    let upload_mb_s = upload.bytes as f64 / 1e6 / upload.secs;
    let vault_put_mb_s = put_bytes as f64 / 1e6 / put_s;
    eprintln!("web bench: vault put: {vault_put_mb_s:.2} MB/s, upload {upload_mb_s:.2} MB/s");

    port.send("ctl poweroff")?;
    q.wait_exit(SHUTDOWN_TIMEOUT)?;

    let dashboard = median(&timed.dashboard);
    let floor = median(&timed.floor);
    let figures = json!({
        "web_rss_mib_idle": mib(idle.rss_kib),
        "web_rss_mib_idle_unclaimed": mib(unclaimed.rss_kib),
        "web_rss_anon_mib_idle": mib(idle.anon_kib),
        "web_rss_anon_mib_idle_unclaimed": mib(unclaimed.anon_kib),
        "web_rss_shared_mib_idle": mib(idle.shared_kib),
        "web_memory_mib_idle_pid1": mib(idle.pid1_bytes / 1024),
        "web_memory_mib_idle_unclaimed_pid1": mib(unclaimed.pid1_bytes / 1024),
        "web_rss_mib_peak": mib(end.hwm_kib),
        "dashboard_ms": round(dashboard),
        "dashboard_ms_p90": round(p90(&timed.dashboard)),
        "dashboard_ms_floor": round(floor),
        "dashboard_ms_floor_p90": round(p90(&timed.floor)),
        "health_ms": round(median(&timed.health)),
        "health_ms_p90": round(p90(&timed.health)),
        "dashboard_vs_static": (dashboard / floor * 100.0).round() / 100.0,
        "dashboard_bytes": timed.dashboard_bytes,
        "requests": ROUNDS,
        "dashboard_ms_all": rounded(&timed.dashboard),
        "dashboard_ms_floor_all": rounded(&timed.floor),
        "health_ms_all": rounded(&timed.health),
        "web_rss_mib_upload": mib(upload.hwm_kib),
        "upload_mib": upload_mib,
        "upload_mb_s": round(upload_mb_s),
        "vault_put_mb_s": round(vault_put_mb_s),
        "upload_vs_vault": (upload_mb_s / vault_put_mb_s * 100.0).round() / 100.0,
        "targets": {"web_rss_mib_idle": 16, "web_rss_mib_upload": 32, "upload_vs_vault": 0.5},
        "setup": format!(
            "qemu-virt (TCG, cortex-a53, 1 CPU, 256 MiB), test image; host → QEMU's forwarded \
             port → the web's 443. Memory: VmRSS (VmHWM for the peak; RssAnon; RssFile + \
             RssShmem for shared) of the web process, largest of {MEMORY_SAMPLES} samples after \
             {} s idle; _pid1: what PID 1 reports for the service (its cgroup's memory.current). \
             Times: time to first byte over one kept-alive TLS connection (the handshake not \
             counted), {ROUNDS} rounds of dashboard, static file and health after \
             {WARMUP_ROUNDS} untimed, host clock",
            SETTLE.as_secs()
        ),
        "wall_s": started.elapsed().as_secs(),
    });
    cairn_hil::write_bench(&out, &figures)
}

/// Where the device's web answers on the host.
struct Device {
    port: u16,
    fingerprint: String,
}

impl Device {
    fn connect(&self) -> anyhow::Result<Connection> {
        Connection::open(HOST, self.port, &self.fingerprint)
    }
}

/// A fresh connection's answer to one request carrying the jar's cookies; the jar takes the
/// cookies it sets.
fn ask(
    device: &Device,
    jar: &mut Cookies,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<Response> {
    let form = body.map(|b| ("application/x-www-form-urlencoded", b.as_bytes()));
    send(device, jar, method, path, form)
}

/// One request on a fresh connection with the jar's cookies and, if any, a body of its content
/// type; the jar takes the cookies it sets.
fn send(
    device: &Device,
    jar: &mut Cookies,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> anyhow::Result<Response> {
    let mut c = device.connect()?;
    c.set_timeout(ANSWER_TIMEOUT)?;
    let cookie = jar.header();
    let mut headers = vec![
        ("Cookie", cookie.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    if let Some((content_type, _)) = body {
        headers.push(("Content-Type", content_type));
    }
    let r = c.request(method, path, &headers, body.map_or(&[][..], |(_, b)| b))?;
    jar.take(&r);
    Ok(r)
}

/// Claims the device as a browser on the claim page does: its first poll registers it (the
/// answer comes at once), the button is pressed, and its next polls wait for the grant (its
/// `cairn_setup` cookie).
fn claim(device: &Device, panel: &PanelLink, jar: &mut Cookies) -> anyhow::Result<()> {
    let first = wait_poll(device, jar)?;
    anyhow::ensure!(
        first["state"] == "waiting" && jar.get("cairn_claim").is_some(),
        "the first poll did not register this browser: {first}"
    );
    let seq = panel.cursor();
    panel.press(Duration::from_millis(300))?;
    panel
        .wait_pattern(seq, "pairing-open", REACT)
        .ok_or_else(|| anyhow::anyhow!("no pairing window after the press"))?;
    for _ in 0..POLLS {
        let answer = wait_poll(device, jar)?;
        if answer["state"] == "granted" {
            anyhow::ensure!(
                jar.get("cairn_setup").is_some(),
                "granted without a setup cookie: {answer}"
            );
            return Ok(());
        }
        anyhow::ensure!(
            answer["state"] == "waiting",
            "the device refused the claim: {answer}"
        );
    }
    anyhow::bail!("no claim after {POLLS} polls")
}

/// One poll of the claim page, with the jar's cookies; the jar takes the ones it sets.
fn wait_poll(device: &Device, jar: &mut Cookies) -> anyhow::Result<serde_json::Value> {
    let json = Some(("application/json", &b"{}"[..]));
    let r = send(device, jar, "POST", "/setup/api/wait", json)?;
    serde_json::from_slice(&r.body)
        .map_err(|e| anyhow::anyhow!("wait answered {} {:?}: {e}", r.status, r.text()))
}

/// Fills the setup form (name, passphrase twice, no storage offered) with its CSRF token, and
/// confirms the recovery key it shows.
fn setup(device: &mut Device, q: &Qemu, jar: &mut Cookies) -> anyhow::Result<()> {
    let page = ask(device, jar, "GET", "/setup", None)?;
    anyhow::ensure!(page.status == 200, "GET /setup: {}", page.status);
    let csrf = input_value(&page.text(), "csrf")
        .ok_or_else(|| anyhow::anyhow!("no CSRF token in the setup form"))?;
    let body = form(&[
        ("csrf", &csrf),
        ("name", NAME),
        ("passphrase", PASSPHRASE),
        ("passphrase2", PASSPHRASE),
        ("offer", "0"),
        ("domain", ""),
    ]);
    let lines = q.line_count();
    let r = ask(device, jar, "POST", "/setup", Some(&body))?;
    let page = r.text();
    anyhow::ensure!(r.status == 200, "setup answered {}: {page}", r.status);
    // The new name is certified anew (same key): the console says the new fingerprint.
    let (_, line) = q.wait_line_from(lines, "cairn: web: https://", REACT)?;
    device.fingerprint = web_fingerprint(&line)?.to_string();
    // Setup ends with the recovery key: its last group confirms it.
    let key = page
        .split_once("cairn-recovery-1 ")
        .and_then(|(_, rest)| rest.split('<').next())
        .ok_or_else(|| anyhow::anyhow!("no recovery key after setup: {page}"))?;
    let last = key
        .trim()
        .rsplit('-')
        .next()
        .unwrap_or_default()
        .to_string();
    let csrf = input_value(&page, "csrf")
        .ok_or_else(|| anyhow::anyhow!("no CSRF token on the recovery key's page"))?;
    let body = form(&[("csrf", &csrf), ("last", &last)]);
    let r = ask(device, jar, "POST", "/admin/recovery/confirm", Some(&body))?;
    anyhow::ensure!(
        r.status == 303 && r.header("location") == Some("/admin/"),
        "confirming the recovery key answered {} {:?}: {}",
        r.status,
        r.header("location"),
        r.text()
    );
    Ok(())
}

/// Logs in with the passphrase: a session of its own, as the owner's next visit gets.
fn log_in(device: &Device, jar: &mut Cookies) -> anyhow::Result<()> {
    let before = jar.get("cairn_session").map(str::to_string);
    let body = form(&[("passphrase", PASSPHRASE)]);
    let r = ask(device, jar, "POST", "/admin/login", Some(&body))?;
    anyhow::ensure!(
        r.status == 303 && r.header("location") == Some("/admin/"),
        "login answered {}: {}",
        r.status,
        r.text()
    );
    anyhow::ensure!(
        jar.get("cairn_session").is_some()
            && jar.get("cairn_session").map(str::to_string) != before,
        "login set no new session"
    );
    Ok(())
}

/// One upload's figures.
#[derive(Debug)]
struct Uploaded {
    bytes: u64,
    secs: f64,
    /// The web's peak resident size over the upload.
    hwm_kib: u64,
}

/// Uploads `mib` MiB of the bench's bytes as `bench.bin` through the Files page's PUT, with
/// the web's peak memory reset just before; reads the peak after.
fn upload(
    device: &Device,
    jar: &mut Cookies,
    port: &mut FixturePort,
    mib: usize,
) -> anyhow::Result<Uploaded> {
    let page = ask(device, jar, "GET", "/admin/", None)?;
    let csrf = input_value(&page.text(), "csrf")
        .ok_or_else(|| anyhow::anyhow!("no CSRF token on the dashboard"))?;
    let body: Vec<u8> = bench_bytes(mib, UPLOAD_SEED).flatten().collect();
    let status = port.status()?;
    let pid = service(&status, "web")?["pid"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no pid for the web"))?;
    port.send(&format!("clear-hwm {pid}"))?;
    port.expect("cleared")?;
    let mut c = device.connect()?;
    c.set_timeout(UPLOAD_TIMEOUT)?;
    let cookie = jar.header();
    let started = Instant::now();
    let r = c.request(
        "PUT",
        "/admin/files/put?path=bench.bin",
        &[
            ("Cookie", cookie.as_str()),
            ("X-CSRF-Token", csrf.as_str()),
            ("Sec-Fetch-Site", "same-origin"),
            ("Content-Type", "application/octet-stream"),
        ],
        &body,
    )?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        r.status == 200,
        "the upload answered {}: {}",
        r.status,
        r.text()
    );
    let answer: serde_json::Value = serde_json::from_slice(&r.body)?;
    let bytes = answer["bytes"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("the upload's answer names no bytes: {answer}"))?;
    anyhow::ensure!(
        bytes == body.len() as u64,
        "stored {bytes} of {} bytes",
        body.len()
    );
    let after = memory(port)?;
    Ok(Uploaded {
        bytes,
        secs,
        hwm_kib: after.hwm_kib,
    })
}

/// The bench's bytes, as the guest's `vault-put` fixture makes them (xorshift64).
fn bench_bytes(mib: usize, seed: u64) -> impl Iterator<Item = [u8; 8]> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..mib * (1 << 20) / 8).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x.to_le_bytes()
    })
}

/// Times to first byte, in milliseconds.
struct Timed {
    dashboard: Vec<f64>,
    floor: Vec<f64>,
    health: Vec<f64>,
    dashboard_bytes: usize,
}

/// Times [`ROUNDS`] rounds of dashboard, static file and health on one kept-alive connection.
fn time_requests(device: &Device, jar: &Cookies) -> anyhow::Result<Timed> {
    let mut c = device.connect()?;
    let cookie = jar.header();
    let headers = [("Cookie", cookie.as_str())];
    let paths = ["/admin/", "/static/style.css", "/api/health"];
    let mut ms: [Vec<f64>; 3] = Default::default();
    let mut dashboard_bytes = 0;
    for round in 0..WARMUP_ROUNDS + ROUNDS {
        for k in 0..paths.len() {
            let i = (round + k) % paths.len();
            let r = c.request("GET", paths[i], &headers, b"")?;
            anyhow::ensure!(
                r.status == 200,
                "GET {} answered {}: {}",
                paths[i],
                r.status,
                r.text()
            );
            if i == 0 {
                // The dashboard itself, not the login page a lost session gets.
                anyhow::ensure!(
                    r.text().contains(NAME) && r.text().contains("csrf"),
                    "GET /admin/ is not the dashboard: {}",
                    r.text()
                );
                dashboard_bytes = r.body.len();
            }
            if round >= WARMUP_ROUNDS {
                ms[i].push(r.first_byte.as_secs_f64() * 1000.0);
            }
        }
    }
    let [dashboard, floor, health] = ms;
    Ok(Timed {
        dashboard,
        floor,
        health,
        dashboard_bytes,
    })
}

/// The web service's memory as read once.
#[derive(Debug, Clone, Copy)]
struct Memory {
    /// `VmRSS` of its process.
    rss_kib: u64,
    /// `VmHWM` of its process: the largest `VmRSS` it has had.
    hwm_kib: u64,
    /// Of `rss_kib`, the process's own (heap, stacks)…
    anon_kib: u64,
    /// … and the pages of files it maps: the multi-call binary's, shared with PID 1 and the
    /// node (the root file system is the initramfs, so these count as shared memory).
    shared_kib: u64,
    /// What PID 1 reports for the service.
    pid1_bytes: u64,
}

/// The largest of [`MEMORY_SAMPLES`] readings of the web's memory.
fn memory(port: &mut FixturePort) -> anyhow::Result<Memory> {
    let mut m = Memory {
        rss_kib: 0,
        hwm_kib: 0,
        anon_kib: 0,
        shared_kib: 0,
        pid1_bytes: 0,
    };
    for _ in 0..MEMORY_SAMPLES {
        let status = port.status()?;
        let web = service(&status, "web")?;
        anyhow::ensure!(web["state"] == "ready", "the web is not ready: {web}");
        let pid = web["pid"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no pid for the web: {web}"))?;
        port.send(&format!("read /proc/{pid}/status"))?;
        let text = port.expect("file")?;
        let field = |name: &str| -> anyhow::Result<u64> {
            text.split(name)
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("no {name} in the web's status: {text}"))
        };
        m.rss_kib = m.rss_kib.max(field("VmRSS:")?);
        m.hwm_kib = m.hwm_kib.max(field("VmHWM:")?);
        m.anon_kib = m.anon_kib.max(field("RssAnon:")?);
        m.shared_kib = m.shared_kib.max(field("RssFile:")? + field("RssShmem:")?);
        m.pid1_bytes = m.pid1_bytes.max(web["memory_bytes"].as_u64().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(m)
}

/// A TCP port free on the host's loopback: the kernel hands one out and takes it back, and
/// QEMU binds it a moment later (another process taking it in between makes QEMU fail loudly).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((HOST, 0))?.local_addr()?.port())
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 100.0).round() / 100.0
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

fn median(v: &[f64]) -> f64 {
    let v = sorted(v);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The 90th percentile, nearest rank.
fn p90(v: &[f64]) -> f64 {
    let v = sorted(v);
    let rank = (v.len() * 9).div_ceil(10).max(1);
    v[rank - 1]
}

/// Hundredths of a millisecond: the static file's answer takes about one.
fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().copied().map(round).collect()
}
