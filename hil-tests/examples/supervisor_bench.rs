//! Supervisor figures on the virtual board (test image): PID 1's resident memory while it
//! supervises the image's services, and the time from a service's crash to its restarted
//! process running (median of several first restarts).
//! Usage: supervisor_bench OUT.json   (run by scripts/bench.d/supervisor)

use cairn_hil::{image, Config, FixturePort, Qemu, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};
use serde_json::json;
use std::time::Duration;

/// Crash/restart rounds; the median is reported.
const ROUNDS: usize = 9;
/// PID 1 memory samples; the largest is reported.
const RSS_SAMPLES: usize = 5;

/// The first word of a fixture answer, as a number.
fn number(answer: anyhow::Result<String>) -> anyhow::Result<u64> {
    let answer = answer?;
    let word = answer.split_whitespace().next().unwrap_or("");
    word.parse()
        .map_err(|_| anyhow::anyhow!("bad answer {answer:?}"))
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/bench/supervisor.json".into());
    let mut q = Qemu::boot(&Config::new(image("cairn-qemu-virt-test.img")?))?;
    q.wait_line("cairn: ready", BOOT_TIMEOUT)?;
    let mut port = FixturePort::plug(&mut q)?;
    number(port.expect("started"))?;

    let mut restart_ms = Vec::new();
    for _ in 0..ROUNDS {
        port.send("crash")?;
        let crashed = number(port.expect("crashing"))?;
        let started = number(port.expect("started"))?;
        restart_ms.push(started.saturating_sub(crashed));
        // An administrator's restart clears the backoff, so every crash is a first restart.
        port.send("ctl restart crasher")?;
        number(port.expect("started"))?;
    }

    let mut rss_kib = Vec::new();
    for _ in 0..RSS_SAMPLES {
        std::thread::sleep(Duration::from_millis(200));
        port.send("rss")?;
        rss_kib.push(number(port.expect("rss"))?);
    }
    let rss_max_kib = rss_kib.iter().copied().max().unwrap_or(0);

    port.send("ctl poweroff")?;
    q.wait_exit(SHUTDOWN_TIMEOUT)?;

    let figures = json!({
        "pid1_rss_mib": (rss_max_kib as f64 / 1024.0 * 100.0).round() / 100.0,
        "restart_ms": median(&mut restart_ms),
        "restart_ms_samples": restart_ms,
        "pid1_rss_kib_samples": rss_kib,
        "targets": {"pid1_rss_mib": 4, "restart_ms": 100},
        "setup": "qemu-virt (TCG, cortex-a53, 256 MiB), test image: bundled services + fixtures crasher, hog, stubborn; restart = crash (abort) to the new process's main, guest CLOCK_MONOTONIC",
    });
    if let Some(parent) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&figures)? + "\n")?;
    println!("{}", serde_json::to_string_pretty(&figures)?);
    Ok(())
}
