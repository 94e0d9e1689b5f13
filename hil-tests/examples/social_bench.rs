//! Fediverse figures on the virtual board, for `scripts/bench social`:
//!
//! - `snac_rss_mib_idle`: snac's `VmRSS` (its `/proc/PID/status`, read in the guest by the
//!   `crasher` fixture), the largest of a few samples, left alone after setup made the owner's
//!   account, on the test image with the system layer.
//! - `snac_rss_mib_load`: the largest of its `VmRSS` samples (every 2 s) while a Mastodon client
//!   (Mastodon.py, `hil-tests/clients/mastodon_load.py`, through QEMU's forward of the plug's
//!   HTTPS) posts 100 statuses and reads the home timeline 20 times a minute, for 2 minutes;
//!   `snac_rss_mib_peak` its `VmHWM` after; `post_ms`, `timeline_ms` (median, p90) and the rates
//!   the client kept, host clock, TCG. `snac_memory_mib_idle_pid1`, `…_load_pid1`: what PID 1
//!   reports and the dashboard shows (its cgroup's `memory.current`, the page cache of its
//!   files included), idle and right after the load.
//! - `device_ram_mib_after_ready`: the whole device's memory in use (MemTotal − MemAvailable,
//!   `/proc/meminfo`) after setup with Jabber and the fediverse running, each with the owner's
//!   account, idle; the test image's fixtures included (`fixtures_mib`, their cgroups' memory,
//!   says how much of it is theirs). `device_ram_mib_load`: the largest sample under the load.
//! - `image_xz_mib`: the product image `target/images/cairn-qemu-virt.img.xz`.
//!
//! The figures are merged into OUT (another example adds its own to the same file).
//! Usage: `social_bench [OUT.json]` (default target/bench/social.json).

use cairn_hil::browser::{set_up_through_forward, wait_social_password};
use cairn_hil::{
    free_port, image, images_dir, service, Config, FixturePort, Qemu, BOOT_TIMEOUT,
    SHUTDOWN_TIMEOUT,
};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The owner's passphrase.
const PASSPHRASE: &str = "correct horse battery staple";
/// Left alone this long before the idle figures.
const SETTLE: Duration = Duration::from_secs(20);
/// Memory samples of an idle reading; the largest is reported.
const MEMORY_SAMPLES: usize = 5;
/// Under load, a sample this often.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How long the load lasts, s.
const LOAD_S: u64 = 120;
/// Its pace: posts and home-timeline reads a minute.
const POSTS_PER_MIN: u32 = 100;
/// Timeline reads a minute.
const READS_PER_MIN: u32 = 20;
/// The owner's account after setup (snac restarts and makes its key).
const OWNER_ACCOUNT: Duration = Duration::from_secs(150);
/// The client's login, and its report after the load (a late pace included).
const CLIENT_STEP: Duration = Duration::from_secs(LOAD_S + 600);
/// The test image's own services, not the product's.
const FIXTURES: [&str; 3] = ["crasher", "hog", "stubborn"];

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/bench/social.json".into());

    let mut cfg = Config::new(image("cairn-qemu-virt-test-layer.img")?);
    let https = free_port();
    cfg.https_port = Some(https);
    let mut q = Qemu::boot(&cfg)?;
    let web = q.wait_line("cairn: web: https://", BOOT_TIMEOUT)?;
    q.wait_line("cairn: ready", BOOT_TIMEOUT)?;
    let mut port = FixturePort::plug(&mut q)?;
    let panel = q.panel()?;
    let mut b = set_up_through_forward(&web, https, &panel, "hearth", PASSPHRASE)?;
    let social = format!("https://localhost:{https}/admin/social");
    let (password, _) = wait_social_password(&mut b, &social, "owner", OWNER_ACCOUNT)?;
    // The browser's work is done: what follows is the device at rest, then the client's load.
    drop(b);
    let status = port.status()?;
    let pid = service(&status, "snac")?["pid"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("snac has no process"))?;
    std::thread::sleep(SETTLE);
    let (mut idle, mut device) = (0, 0);
    for _ in 0..MEMORY_SAMPLES {
        idle = idle.max(rss_kib(&mut port, pid)?[0]);
        device = device.max(in_use_kib(&mut port)?);
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = port.status()?;
    let snac_pid1 = service(&status, "snac")?["memory_bytes"]
        .as_u64()
        .unwrap_or(0);
    let fixtures: u64 = FIXTURES
        .iter()
        .filter_map(|f| service(&status, f).ok()?["memory_bytes"].as_u64())
        .sum();
    eprintln!("social bench: snac (pid {pid}) idle {idle} KiB; device {device} KiB in use");

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/mastodon_load.py");
    let base = format!("https://127.0.0.1:{https}");
    let mut child = Command::new("/usr/bin/python3")
        .arg(&script)
        .args([&base, "owner", &password])
        .args([
            LOAD_S.to_string(),
            POSTS_PER_MIN.to_string(),
            READS_PER_MIN.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let (tx, rx) = mpsc::sync_channel(4);
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for l in stdout.lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let line = |wait: Duration| -> anyhow::Result<serde_json::Value> {
        let l = rx.recv_timeout(wait)?;
        let v: serde_json::Value = serde_json::from_str(&l)?;
        anyhow::ensure!(v.get("error").is_none(), "the client: {v}");
        Ok(v)
    };
    let logged_in = line(CLIENT_STEP);
    if logged_in.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    eprintln!("social bench: {}", logged_in?);
    let (mut busy, mut device_busy) = (0, 0);
    let until = Instant::now() + CLIENT_STEP;
    let load = loop {
        busy = busy.max(rss_kib(&mut port, pid)?[0]);
        device_busy = device_busy.max(in_use_kib(&mut port)?);
        match rx.recv_timeout(SAMPLE_EVERY) {
            Ok(l) => break serde_json::from_str::<serde_json::Value>(&l)?,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < until => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("no report from the client within {CLIENT_STEP:?}: {e}");
            }
        }
    };
    let _ = child.wait();
    anyhow::ensure!(load.get("error").is_none(), "the client: {load}");
    eprintln!("social bench: {load}");
    let after = rss_kib(&mut port, pid)?;
    let still = service(&port.status()?, "snac")?.clone();
    let snac_pid1_load = still["memory_bytes"].as_u64().unwrap_or(0);
    anyhow::ensure!(
        still["pid"].as_u64() == Some(pid),
        "snac restarted under the load: {still}"
    );
    port.send("ctl poweroff")?;
    q.wait_exit(SHUTDOWN_TIMEOUT)?;

    let xz = std::fs::metadata(images_dir().join("cairn-qemu-virt.img.xz"))?.len();
    let mib = |kib: u64| (kib as f64 / 1024.0 * 100.0).round() / 100.0;
    let figures = json!({
        "snac_rss_mib_idle": mib(idle),
        "snac_rss_mib_load": mib(busy.max(after[0])),
        "snac_rss_mib_peak": mib(after[1]),
        "snac_memory_mib_idle_pid1": mib(snac_pid1 / 1024),
        "snac_memory_mib_load_pid1": mib(snac_pid1_load / 1024),
        "device_ram_mib_after_ready": mib(device),
        "device_ram_mib_load": mib(device_busy),
        "fixtures_mib": mib(fixtures / 1024),
        "posts": load["posts"],
        "timeline_reads": load["reads"],
        "posts_per_min": load["posts_per_min"],
        "timeline_reads_per_min": load["reads_per_min"],
        "post_ms": load["post_ms"],
        "post_ms_p90": load["post_ms_p90"],
        "timeline_ms": load["timeline_ms"],
        "timeline_ms_p90": load["timeline_ms_p90"],
        "image_xz_mib": (xz as f64 / (1 << 20) as f64 * 100.0).round() / 100.0,
        "image_xz_bytes": xz,
        "targets": {"snac_rss_mib_load": 24, "device_ram_mib_after_ready": 80},
        "setup": format!(
            "qemu-virt (TCG, cortex-a53, 1 CPU, 256 MiB), the test image with the system layer, \
             set up as hearth.local in headless Chromium. snac: VmRSS of its process, largest of \
             {MEMORY_SAMPLES} samples after {} s idle, then every {} s under {LOAD_S} s of \
             {POSTS_PER_MIN} posts and {READS_PER_MIN} home-timeline reads a minute from one \
             Mastodon.py client (python3, host) through QEMU's forward of HTTPS, one request at \
             a time, host clock. Device: MemTotal - MemAvailable, fixtures included",
            SETTLE.as_secs(),
            SAMPLE_EVERY.as_secs()
        ),
        "social_wall_s": started.elapsed().as_secs(),
    });
    cairn_hil::merge_bench(&out, &figures)
}

/// snac's `VmRSS` and `VmHWM`, KiB.
fn rss_kib(port: &mut FixturePort, pid: u64) -> anyhow::Result<Vec<u64>> {
    port.kib_fields(&format!("/proc/{pid}/status"), &["VmRSS:", "VmHWM:"])
}

/// The device's memory in use, MemTotal − MemAvailable, KiB.
fn in_use_kib(port: &mut FixturePort) -> anyhow::Result<u64> {
    let m = port.kib_fields("/proc/meminfo", &["MemTotal:", "MemAvailable:"])?;
    Ok(m[0].saturating_sub(m[1]))
}
