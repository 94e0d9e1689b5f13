//! Figures on the device for `scripts/bench device` (issue 19, phase 1: the store on an SD
//! card's limits): the qemu-virt test image with 256 MiB of RAM and a second virtio disk, the
//! "card", throttled by QEMU to a class-10 / A1 card's published minimums with no host cache
//! (`cache=none`: the guest's flushes reach the host's disk). The measurements run inside the
//! guest (`cairn bench card`, test builds only: `firmware/cairn/src/cmd/bench.rs`), each round
//! measuring the card itself and the store on it, so every figure is a ratio against a limit
//! measured in the same round.
//!
//! The card (SD Association, "Speed Class" and "Application Performance Class" (SD 5.1)):
//! - Speed Class 10 / UHS Speed Class U1 / Video Speed Class V10: 10 MB/s minimum sequential
//!   write → `throttling.bps-write=10000000`;
//! - A1: 1500 random-read IOPS and 500 random-write IOPS (4 KiB), 10 MB/s sustained sequential
//!   → `throttling.iops-read=1500`, `throttling.iops-write=500`, `throttling.bps-read=10000000`
//!   (cards read faster than this; the minimum is what every A1 card promises).
//!
//! QEMU counts a request as one I/O whatever its size, as a card's random IOPS are for small
//! requests while long writes run at its sequential rate.
//!
//! Why a second disk rather than the data partition: the bench's writes, and only they, are in
//! that disk's counters (`/sys/block/vdb/stat`: write amplification), the throttling slows the
//! bench and not the boot or the services, and the file system is made the same way as the
//! image's data partition (`mke2fs -t ext4 -b 4096 -O ^metadata_csum_seed`, as
//! `image/src/lib.rs` does), mounted with the data partition's flags.
//!
//! Figures (median of the rounds, with `_min`, `_max` and `_all`):
//! - `store_vs_dd_256k`, `store_vs_dd_64k`: durable ingest of shards into the chunk store (the
//!   node's configuration, 4 writers, each put as the node stores a partner's shard) ÷ a
//!   sequential write of the same bytes with one final fsync (`dd bs=1M conv=fsync`), MB/s ÷
//!   MB/s; target ≥ 0.9;
//! - `store_vs_files_256k`: a file per shard (temp file, fsync, rename, fsync of its directory;
//!   4 writers) ÷ the store, time ÷ time; target ≥ 2;
//! - `get_vs_read_iops`: random cold `get`s of 256 KiB shards per second ÷ random `O_DIRECT`
//!   reads of 256 KiB per second from the card, one at a time;
//! - `write_amplification`: bytes the card was asked to write during the 256 KiB ingest ÷ the
//!   shard bytes (`write_amplification_64k` for the 64 KiB one);
//! - `device_cpu_idle_pct`: the guest's idle share over 30 s with nothing happening, from
//!   `/proc/stat` (idle + iowait over all); target ≥ 99;
//! - `device_ram_mib_after_ready`: MemTotal − MemAvailable after ready and the idle spell.
//!
//! Beside them: the absolute rates (`dd_mb_s`, `store_mb_s_*`, `files_mb_s_256k`,
//! `read_4k_iops`, …), the guest CPU's busy share in each phase (`cpu_busy_*`: near 1 means the
//! emulated CPU, not the card, was the limit), shards per fsync and write requests per MiB.
//!
//! Usage: `device_bench [OUT.json]` (default target/bench/device.json). `CAIRN_DEVICE_ROUNDS`
//! (default 3), `CAIRN_DEVICE_MIB` (bytes per write phase, default 64).

use cairn_hil::{
    image, write_bench, Config, FixturePort, Qemu, SecondDisk, Throttle, BOOT_TIMEOUT,
    SHUTDOWN_TIMEOUT,
};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The card's published minimums (see the module's comment).
const CARD: Throttle = Throttle {
    bps_read: 10_000_000,
    bps_write: 10_000_000,
    iops_read: 1500,
    iops_write: 500,
};
const CARD_BYTES: u64 = 1 << 30;
const SERIAL: &str = "cairn-bench-card";
/// The idle spell, as the issue names it.
const IDLE: Duration = Duration::from_secs(30);
/// Random reads and gets per round.
const READS: u64 = 200;
/// A round's bound on a loaded 2-core machine emulating ARM: ~5 × 64 MiB at 10 MB/s is under a
/// minute on the card; the emulated CPU may take several times that.
const ROUND_TIMEOUT: Duration = Duration::from_secs(600);

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/bench/device.json".into());
    let env = |k: &str, d: u64| -> anyhow::Result<u64> {
        match std::env::var(k) {
            Ok(v) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("{k}={v}: not a number")),
            Err(_) => Ok(d),
        }
    };
    let rounds = env("CAIRN_DEVICE_ROUNDS", 3)?.max(1);
    let mib = env("CAIRN_DEVICE_MIB", 64)?.clamp(4, 512);

    // The card lives beside the output, on a real disk: `cache=none` needs O_DIRECT, which a
    // tmpfs /tmp refuses.
    let out_dir = PathBuf::from(&out)
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| ".".into());
    std::fs::create_dir_all(&out_dir)?;
    let work = tempfile::tempdir_in(&out_dir)?;
    let card = work.path().join("card.img");
    std::fs::File::create(&card)?.set_len(CARD_BYTES)?;
    let made = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", "cairn-card"])
        .args(["-O", "^metadata_csum_seed"])
        .arg(&card)
        .output()?;
    anyhow::ensure!(
        made.status.success(),
        "mke2fs: {}",
        String::from_utf8_lossy(&made.stderr)
    );

    let mut cfg = Config::new(image("cairn-qemu-virt-test.img")?);
    cfg.memory_mib = 256;
    cfg.second_disk = Some(SecondDisk {
        file: card,
        serial: SERIAL.into(),
        throttle: CARD,
    });
    let mut q = Qemu::boot(&cfg)?;
    q.wait_line("cairn: ready", BOOT_TIMEOUT * 2)?;
    let mut port = FixturePort::plug(&mut q)?;
    port.expect("started")?;

    // Nothing happening: the services have settled, no test command runs during a spell.
    std::thread::sleep(Duration::from_secs(5));
    let mut idle = Vec::new();
    let mut ram = Vec::new();
    for i in 0..rounds {
        let a = cpu(&mut port)?;
        std::thread::sleep(IDLE);
        let b = cpu(&mut port)?;
        let pct = 100.0 * (1.0 - (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64);
        ram.push(ram_mib(&mut port)?);
        eprintln!(
            "idle {}/{rounds}: {pct:.2} % idle, {:.1} MiB in use",
            i + 1,
            ram[ram.len() - 1]
        );
        idle.push(pct);
    }

    let (lines, code) = port.bench(
        &format!("card --serial {SERIAL} --mib {mib} --rounds {rounds} --reads {READS}"),
        ROUND_TIMEOUT * rounds as u32,
    )?;
    anyhow::ensure!(
        code == 0,
        "cairn bench card failed ({code}): {}",
        lines.join("\n")
    );
    let rounds: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("round "))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(!rounds.is_empty(), "no rounds from the guest: {lines:?}");
    q.power_button()?;
    q.wait_exit(SHUTDOWN_TIMEOUT)?;

    let mut figures = serde_json::Map::new();
    let mut put = |name: &str, v: Vec<f64>| {
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        figures.insert(name.into(), r(median(&s)).into());
        figures.insert(format!("{name}_min"), r(s[0]).into());
        figures.insert(format!("{name}_max"), r(s[s.len() - 1]).into());
        figures.insert(
            format!("{name}_all"),
            v.iter().copied().map(r).collect::<Vec<_>>().into(),
        );
    };
    let each = |f: &dyn Fn(&serde_json::Value) -> Option<f64>| -> anyhow::Result<Vec<f64>> {
        rounds
            .iter()
            .map(|r| f(r).ok_or_else(|| anyhow::anyhow!("a round lacks a field: {r}")))
            .collect()
    };
    let n = |r: &serde_json::Value, phase: &str, k: &str| r[phase][k].as_f64();
    // Payload bytes per second of a write phase; its own timer when it has one (the puts
    // alone), else the phase's.
    let rate = |r: &serde_json::Value, phase: &str| -> Option<f64> {
        let secs = n(r, phase, "put_s").or_else(|| n(r, phase, "s"))?;
        Some(n(r, phase, "payload_bytes")? / secs)
    };
    let dd = |r: &serde_json::Value| rate(r, "dd");
    put(
        "store_vs_dd_256k",
        each(&|r| Some(rate(r, "store_256k")? / dd(r)?))?,
    );
    put(
        "store_vs_dd_64k",
        each(&|r| Some(rate(r, "store_64k")? / dd(r)?))?,
    );
    put(
        "store_vs_files_256k",
        each(&|r| Some(rate(r, "store_256k")? / rate(r, "files_256k")?))?,
    );
    let per_s = |r: &serde_json::Value, phase: &str, count: &str, secs: &str| -> Option<f64> {
        Some(n(r, phase, count)? / n(r, phase, secs)?)
    };
    put(
        "get_vs_read_iops",
        each(&|r| {
            Some(per_s(r, "get_256k", "gets", "get_s")? / per_s(r, "read_256k", "reads", "read_s")?)
        })?,
    );
    let amplification = |r: &serde_json::Value, phase: &str| -> Option<f64> {
        Some(n(r, phase, "write_bytes")? / n(r, phase, "payload_bytes")?)
    };
    put(
        "write_amplification",
        each(&|r| amplification(r, "store_256k"))?,
    );
    put(
        "write_amplification_64k",
        each(&|r| amplification(r, "store_64k"))?,
    );
    put(
        "write_amplification_files_256k",
        each(&|r| amplification(r, "files_256k"))?,
    );
    put("write_amplification_dd", each(&|r| amplification(r, "dd"))?);
    put("device_cpu_idle_pct", idle);
    put("device_ram_mib_after_ready", ram);

    // The absolute rates and where each phase's time went, to read the ratios by.
    let mb = |x: f64| x / 1e6;
    put("dd_mb_s", each(&|r| dd(r).map(mb))?);
    for phase in ["store_256k", "store_64k", "files_256k"] {
        put(&format!("{phase}_mb_s"), each(&|r| rate(r, phase).map(mb))?);
    }
    put(
        "read_4k_iops",
        each(&|r| per_s(r, "read_4k", "reads", "read_s"))?,
    );
    put(
        "read_256k_per_s",
        each(&|r| per_s(r, "read_256k", "reads", "read_s"))?,
    );
    put(
        "get_256k_per_s",
        each(&|r| per_s(r, "get_256k", "gets", "get_s"))?,
    );
    put(
        "reads_per_get_256k",
        each(&|r| Some(n(r, "get_256k", "store_reads")? / n(r, "get_256k", "gets")?))?,
    );
    for k in ["256k", "64k"] {
        let phase = format!("store_{k}");
        // Two records per put (the lease and the shard): shards per fsync is half the records.
        put(
            &format!("shards_per_fsync_{k}"),
            each(&|r| {
                Some(n(r, &phase, "batched_records")? / 2.0 / n(r, &phase, "batches")?.max(1.0))
            })?,
        );
    }
    // Write requests per MiB of payload: what small scattered writes would cost a card's
    // flash translation layer, which QEMU's throttle does not model. (The kernel's flush
    // counter stays 0 here: the journal's flushes ride on its writes, uncounted.)
    for phase in ["dd", "store_256k", "store_64k", "files_256k"] {
        put(
            &format!("write_ios_per_mib_{phase}"),
            each(&|r| {
                Some(n(r, phase, "write_ios")? / (n(r, phase, "payload_bytes")? / (1 << 20) as f64))
            })?,
        );
    }
    for phase in [
        "dd",
        "read_256k",
        "store_256k",
        "get_256k",
        "store_64k",
        "files_256k",
    ] {
        put(
            &format!("cpu_busy_{phase}"),
            each(&|r| n(r, phase, "cpu_busy"))?,
        );
    }
    figures.insert("rounds".into(), rounds.len().into());
    figures.insert("mib_per_phase".into(), mib.into());
    figures.insert(
        "card".into(),
        serde_json::json!({
            "bps_write": CARD.bps_write,
            "bps_read": CARD.bps_read,
            "iops_write": CARD.iops_write,
            "iops_read": CARD.iops_read,
            "source": "SD Association: Speed Class 10 / U1 / V10 (10 MB/s sequential write), \
                       Application Performance Class A1 (1500 read / 500 write IOPS of 4 KiB, \
                       10 MB/s sustained sequential)",
            "qemu": "cache=none, throttling.*",
        }),
    );
    figures.insert("rounds_raw".into(), rounds.clone().into());
    write_bench(&out, &serde_json::Value::Object(figures))
}

/// The guest's (busy, total) jiffies, from `/proc/stat` through the fixture (idle and iowait
/// are not busy).
fn cpu(port: &mut FixturePort) -> anyhow::Result<(u64, u64)> {
    port.send("read /proc/stat")?;
    let text = port.expect("file ")?;
    let v: Vec<u64> = text
        .split_whitespace()
        .skip_while(|w| *w != "cpu")
        .skip(1)
        .take(8)
        .map(|w| w.parse().unwrap_or(0))
        .collect();
    anyhow::ensure!(v.len() >= 5, "no cpu line in /proc/stat: {text}");
    let total: u64 = v.iter().sum();
    Ok((total - v[3] - v[4], total))
}

/// MemTotal − MemAvailable in MiB, from `/proc/meminfo` through the fixture.
fn ram_mib(port: &mut FixturePort) -> anyhow::Result<f64> {
    port.send("read /proc/meminfo")?;
    let text = port.expect("file ")?;
    let words: Vec<&str> = text.split_whitespace().collect();
    let kib = |key: &str| -> anyhow::Result<f64> {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no {key} in /proc/meminfo"))
    };
    Ok((kib("MemTotal:")? - kib("MemAvailable:")?) / 1024.0)
}

fn median(sorted: &[f64]) -> f64 {
    let m = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[m]
    } else {
        (sorted[m - 1] + sorted[m]) / 2.0
    }
}
