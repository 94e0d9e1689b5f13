//! Jabber figures on the virtual board, for `scripts/bench xmpp`:
//!
//! - `ram_mib_after_ready`: the whole device's memory in use at `cairn: ready` (the console's
//!   `cairn: memory in use` line, MemTotal − MemAvailable) on a first boot of the product image,
//!   Prosody included.
//! - `prosody_rss_mib_idle`: Prosody's `VmRSS` (its `/proc/PID/status`, read in the guest by the
//!   `crasher` fixture) left alone after a first boot of the test image with the system layer,
//!   no client connected.
//! - `prosody_rss_mib_20_clients`: the largest of a few samples of its `VmRSS` with 20 slixmpp
//!   clients logged in through QEMU's forward of port 5222 (`hil-tests/clients/xmpp_bench.py`),
//!   after each sent 5 messages round a ring; `prosody_rss_mib_peak` its `VmHWM` then.
//! - `message_ms`: median (and p90) of 30 messages from one of them to another, each timed on
//!   the host from send to receipt (both through the forward), one at a time, TCG.
//! - `image_xz_mib`: the product image `target/images/cairn-qemu-virt.img.xz`, system layer
//!   included.
//!
//! Usage: `xmpp_bench [OUT.json]` (default target/bench/xmpp.json).

use cairn_hil::{
    free_port, image, images_dir, service, Config, FixturePort, Qemu, BOOT_TIMEOUT,
    SHUTDOWN_TIMEOUT,
};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Clients connected at once.
const CLIENTS: usize = 20;
/// Their password (accounts user1 … user20).
const PASSWORD: &str = "bench password";
/// Left alone this long before memory is read.
const SETTLE: Duration = Duration::from_secs(10);
/// Memory samples per reading; the largest is reported.
const MEMORY_SAMPLES: usize = 5;
/// A client step with 20 clients on an emulated CPU.
const STEP: Duration = Duration::from_secs(600);

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/bench/xmpp.json".into());

    // The whole device after ready, on the product image.
    let mut q = Qemu::boot(&Config::new(image("cairn-qemu-virt.img")?))?;
    let line = q.wait_line("cairn: memory in use:", BOOT_TIMEOUT)?;
    let ram_mib: f64 = line
        .split("memory in use: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no figure in {line:?}"))?;
    q.power_button()?;
    q.wait_exit(SHUTDOWN_TIMEOUT)?;
    drop(q);
    eprintln!("xmpp bench: product image, {ram_mib} MiB in use after ready");

    let mut cfg = Config::new(image("cairn-qemu-virt-test-layer.img")?);
    let xmpp = free_port();
    cfg.tcp_forwards.push((xmpp, 5222));
    let mut q = Qemu::boot(&cfg)?;
    q.wait_line("cairn: ready", BOOT_TIMEOUT)?;
    let mut port = FixturePort::plug(&mut q)?;
    port.expect("started")?;
    let pid = service(&port.status()?, "prosody")?["pid"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("Prosody has no process"))?;
    std::thread::sleep(SETTLE);
    let (idle, _) = memory(&mut port, pid)?;
    eprintln!("xmpp bench: Prosody (pid {pid}) idle: {idle} KiB");

    let mut i = 1;
    while i <= CLIENTS {
        port.send(&format!("xmpp-account user{i} cairn.local {PASSWORD}"))?;
        let said = port.expect_within("", STEP)?;
        // Prosody listens on 5222 (ready) a moment before its admin socket is there.
        if said.contains("Jabber is not running") {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        anyhow::ensure!(said.starts_with("account "), "user{i}: {said}");
        i += 1;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/xmpp_bench.py");
    let mut child = Command::new("/usr/bin/python3")
        .arg(&script)
        .args(["127.0.0.1", &xmpp.to_string(), "cairn.local"])
        .args([&CLIENTS.to_string(), PASSWORD])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = mpsc::sync_channel(8);
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for l in stdout.lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let next = || -> anyhow::Result<serde_json::Value> {
        let l = rx.recv_timeout(STEP)?;
        let v: serde_json::Value = serde_json::from_str(&l)?;
        anyhow::ensure!(v.get("error").is_none(), "the clients: {v}");
        Ok(v)
    };
    let online = next()?;
    eprintln!("xmpp bench: {online}");
    writeln!(stdin, "traffic")?;
    let traffic = next()?;
    eprintln!("xmpp bench: {traffic}");
    std::thread::sleep(SETTLE);
    let (busy, peak) = memory(&mut port, pid)?;
    writeln!(stdin, "done")?;
    let _ = next();
    let _ = child.kill();
    let _ = child.wait();
    port.send("ctl poweroff")?;
    q.wait_exit(SHUTDOWN_TIMEOUT)?;

    let xz = std::fs::metadata(images_dir().join("cairn-qemu-virt.img.xz"))?.len();
    let mib = |kib: u64| (kib as f64 / 1024.0 * 100.0).round() / 100.0;
    let figures = json!({
        "prosody_rss_mib_idle": mib(idle),
        "prosody_rss_mib_20_clients": mib(busy),
        "prosody_rss_mib_peak": mib(peak),
        "message_ms": traffic["message_ms"],
        "message_ms_p90": traffic["message_ms_p90"],
        "ring_messages": traffic["ring_messages"],
        "ring_s": traffic["ring_s"],
        "image_xz_mib": (xz as f64 / (1 << 20) as f64 * 100.0).round() / 100.0,
        "image_xz_bytes": xz,
        "ram_mib_after_ready": ram_mib,
        "targets": {"prosody_rss_mib_20_clients": 32, "ram_mib_after_ready": 64},
        "setup": format!(
            "qemu-virt (TCG, cortex-a53, 1 CPU, 256 MiB). RAM after ready: the product image's \
             first boot (console line). Prosody: the test image with the system layer; VmRSS of \
             its process, largest of {MEMORY_SAMPLES} samples after {} s idle; {CLIENTS} \
             slixmpp clients (python3, host) through QEMU's forwarded port, host clock",
            SETTLE.as_secs()
        ),
        "wall_s": started.elapsed().as_secs(),
    });
    cairn_hil::write_bench(&out, &figures)
}

/// Prosody's largest `VmRSS` of a few samples, and its `VmHWM`, KiB.
fn memory(port: &mut FixturePort, pid: u64) -> anyhow::Result<(u64, u64)> {
    let (mut rss, mut hwm) = (0, 0);
    for _ in 0..MEMORY_SAMPLES {
        let status = format!("/proc/{pid}/status");
        let v = port.kib_fields(&status, &["VmRSS:", "VmHWM:"])?;
        rss = rss.max(v[0]);
        hwm = hwm.max(v[1]);
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok((rss, hwm))
}
