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
//!   `/proc/stat` (idle + iowait over all; `cairn bench idle`, which also names the busiest
//!   threads: `idle_cpu_s_by_thread`); target ≥ 99;
//! - `device_ram_mib_after_ready`: MemTotal − MemAvailable after ready and the idle spell.
//!
//! Beside them: the absolute rates (`dd_mb_s`, `store_mb_s_*`, `files_mb_s_256k`,
//! `read_4k_iops`, …), the guest CPU's busy share in each phase (`cpu_busy_*`: near 1 means the
//! emulated CPU, not the card, was the limit), shards per fsync and write requests per MiB.
//!
//! Phase 2, the node over a home uplink ([`link`]): two test-image plugs (256 MiB) on a virtual
//! cable, paired by their buttons; the putting plug's eth0 shaped *in the guest* by netem
//! (`cairn bench shape`, netlink: 25 Mbit/s, 20 ms added on the way out). Each round measures
//! the link with a raw TCP transfer between the two plugs through the same shape (`send` →
//! `sink`), then `cairn vault put` of the round's data through the node (1-of-2: with one
//! partner, the only layout a fresh plug restores from). The putting plug is then switched
//! off and a fresh third plug takes its place on the cable; the partner's eth0 gets the LAN
//! shape (100 Mbit/s, 1 ms); each round again measures the link, then restores the round's
//! vault from its recovery key onto the fresh plug and reads it once more (a get):
//! - `put_vs_link`: shard bytes the partner took (the node's books) per second of the put,
//!   until the node's flush, ÷ the raw TCP rate; target ≥ 0.9;
//! - `restore_vs_link`, `get_vs_link`: data bytes per second ÷ the raw TCP rate of the LAN shape;
//! - `device_ram_mib_peak`: MemTotal − MemAvailable on the putting plug, sampled every 100 ms
//!   during the put by the bench itself; target ≤ 128;
//! - `put_vs_ceiling`, `restore_vs_ceiling`, `get_vs_ceiling`: data bytes per second ÷ what
//!   the plug allows with no network (each round, the putting plug's `cairn bench ceiling`:
//!   the same put and a get with the shards kept in its memory); `*_vs_limit`: ÷ the tighter
//!   of the link and that ceiling. When the emulated CPU is slower than the link, these say
//!   how much of what the plug can do the node delivers.
//!
//! After the rounds, one more put (24 MiB: the partner's allowance) with the shape taken off
//! (`put_unshaped_vs_shaped`, its data rate ÷ the shaped puts' median): if it is no faster,
//! the link was not what held the put back. Beside the ratios: the absolute rates and the
//! guest CPU's busy share on each plug (`cpu_busy_*`).
//!
//! Usage: `device_bench [OUT.json]` (default target/bench/device.json). `CAIRN_DEVICE_ROUNDS`
//! (default 3), `CAIRN_DEVICE_MIB` (bytes per write phase, default 64), `CAIRN_DEVICE_LINK_MIB`
//! (data per put, default 64), `CAIRN_DEVICE_PHASES` (`card,link`, the default, or either).

use cairn_hil::{
    claim_as, image, write_bench, Config, FixturePort, Qemu, SecondDisk, Throttle, BOOT_TIMEOUT,
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
    let link_mib = env("CAIRN_DEVICE_LINK_MIB", 64)?.clamp(4, 256);
    let phases = std::env::var("CAIRN_DEVICE_PHASES").unwrap_or_else(|_| "card,link".into());
    if phases.split(',').any(|p| p == "card") {
        card(&out, rounds, mib)?;
    }
    if phases.split(',').any(|p| p == "link") {
        link::run(&out, rounds, link_mib)?;
    }
    Ok(())
}

/// Phase 1: the store on the card (see the module's comment); writes `out` afresh.
fn card(out: &str, rounds: u64, mib: u64) -> anyhow::Result<()> {
    // The card lives beside the output, on a real disk: `cache=none` needs O_DIRECT, which a
    // tmpfs /tmp refuses.
    let out_dir = PathBuf::from(out)
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| ".".into());
    std::fs::create_dir_all(&out_dir)?;
    let work = tempfile::tempdir_in(&out_dir)?;
    // Not `card.img`: that is the plug's own disk (`claimed_plug` below, the plug named card).
    let card = work.path().join("sd-card.img");
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

    // Claimed, as an owner's plug at rest is: its LED steady, not the setup blink.
    let mut cfg = Config::new(claimed_plug(work.path(), "card")?);
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
    // The front panel (test images only) is watched, as the tests watch it: unwatched, its
    // thread looks for a watcher each second, which a product image has no thread for.
    let _panel = q.panel()?;
    std::thread::sleep(Duration::from_secs(5));
    let mut idle = Vec::new();
    let mut ram = Vec::new();
    // What kept the plug busy in each spell: its busiest threads (`cairn bench idle`).
    let mut idle_threads = Vec::new();
    for i in 0..rounds {
        let args = format!("idle --seconds {}", IDLE.as_secs());
        let (lines, code) = port.bench(&args, IDLE * 2)?;
        let spell = link::one_round(&args, lines, code)?;
        let pct = 100.0 * (1.0 - link::f(&spell, "cpu_busy")?);
        ram.push(ram_mib(&mut port)?);
        eprintln!(
            "idle {}/{rounds}: {pct:.2} % idle, {:.1} MiB in use, threads {}, writes {}",
            i + 1,
            ram[ram.len() - 1],
            spell["cpu_s_by_thread"],
            spell["writes_ios_kib_by_disk"]
        );
        idle.push(pct);
        idle_threads.push(spell["cpu_s_by_thread"].clone());
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
    figures.insert("idle_cpu_s_by_thread".into(), idle_threads.into());
    write_bench(out, &serde_json::Value::Object(figures))
}

/// A fresh copy of the test image in `dir`, claimed by `name` as an owner's plug is.
fn claimed_plug(dir: &std::path::Path, name: &str) -> anyhow::Result<PathBuf> {
    let disk = dir.join(format!("{name}.img"));
    std::fs::copy(image("cairn-qemu-virt-test.img")?, &disk)?;
    claim_as(&disk, name)?;
    Ok(disk)
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

/// Phase 2: plugs on a cable with a home uplink shaped in the guest (see the module's comment).
mod link {
    use super::median;
    use cairn_hil::{
        append_cmdline, merge_bench, Config, Ethernet, FixturePort, Qemu, BOOT_TIMEOUT,
        SHUTDOWN_TIMEOUT,
    };
    use serde_json::{json, Value};
    use std::net::UdpSocket;
    use std::path::Path;
    use std::time::{Duration, Instant};

    /// The home uplink a put goes through: the seed author's VDSL line, 25 Mbit/s up, and
    /// 20 ms of round trip to a partner's home (all of it added on the way out: the
    /// acknowledgements come back unshaped).
    const UPLINK_KBIT: u64 = 25_000;
    const UPLINK_DELAY_US: u64 = 20_000;
    /// The LAN shape a get and a restore read through: 100 Mbit/s Ethernet, 1 ms.
    const LAN_KBIT: u64 = 100_000;
    const LAN_DELAY_US: u64 = 1_000;
    /// Two plugs, so one partner: the node puts at most one shard of a chunk on a partner,
    /// and a fresh plug restores from that partner alone only if one shard is a whole chunk.
    const K: u32 = 1;
    const N: u32 = 2;
    /// One more put with the shape taken off, to tell the link's limit from the plug's own.
    const UNSHAPED_MIB: u64 = 24;
    /// The raw TCP transfer that measures the link, per round.
    const LINK_PROBE_MIB: u64 = 24;
    /// The put and get with the shards in the putting plug's memory, per round: what its CPU
    /// and card allow (`cairn bench ceiling`); small enough to hold in 256 MiB beside the
    /// services.
    const CEILING_MIB: u64 = 24;
    const PROBE_PORT: u16 = 5201;
    /// The storage node's libp2p port.
    const NODE_PORT: u16 = 4001;
    /// The plugs' disks: room for the rounds' data and shards.
    const DISK_BYTES: u64 = 2 << 30;
    const PAIRING_WINDOW_S: u64 = 60;
    /// One bench command's bound (a put of 256 MiB at 25 Mbit/s takes ~90 s on a fast host).
    const STEP: Duration = Duration::from_secs(900);

    /// One plug: QEMU, its fixture port, its link-local address.
    struct Plug {
        q: Qemu,
        port: FixturePort,
        ip: String,
    }

    fn boot(dir: &Path, name: &str, ends: (u16, u16), mac: &str) -> anyhow::Result<Plug> {
        // Claimed, as only a claimed plug pairs.
        let disk = super::claimed_plug(dir, name)?;
        append_cmdline(&disk, &format!("cairn.pairing_window_s={PAIRING_WINDOW_S}"))?;
        let mut cfg = Config::new(disk);
        cfg.memory_mib = 256;
        cfg.disk_bytes = Some(DISK_BYTES);
        cfg.ethernet = Ethernet::Cable {
            local_port: ends.0,
            remote_port: ends.1,
            mac: mac.into(),
        };
        let mut q = Qemu::boot(&cfg)?;
        q.wait_line("cairn: ready", BOOT_TIMEOUT * 2)?;
        // "cairn: net: eth0 169.254.X.Y/16 link-local"
        let line = q.wait_line("cairn: net: eth0", BOOT_TIMEOUT)?;
        let ip = line
            .split_whitespace()
            .nth(3)
            .and_then(|a| a.split('/').next())
            .filter(|a| a.starts_with("169.254."))
            .ok_or_else(|| anyhow::anyhow!("{name}: no link-local address in {line:?}"))?
            .to_string();
        let mut port = FixturePort::plug(&mut q)?;
        port.expect("started")?;
        eprintln!("link: {name} up at {ip}");
        Ok(Plug { q, port, ip })
    }

    /// The node's peer id, from its log (`cairn-node: PEERID starting, …`).
    fn peer_id(p: &mut Plug) -> anyhow::Result<String> {
        let (logs, code) = p.port.ctl("logs node")?;
        anyhow::ensure!(code == 0, "logs node: {logs}");
        logs.lines()
            .find_map(|l| {
                let id = l.strip_prefix("cairn-node: ")?.split(' ').next()?;
                id.starts_with("12D3KooW").then(|| id.to_string())
            })
            .ok_or_else(|| anyhow::anyhow!("no peer id in {logs}"))
    }

    /// Runs `cairn bench ARGS` on `p` and returns its one `round {…}` object.
    fn bench(p: &mut Plug, args: &str) -> anyhow::Result<Value> {
        let (lines, code) = p.port.bench(args, STEP)?;
        one_round(args, lines, code)
    }

    pub fn one_round(args: &str, lines: Vec<String>, code: i32) -> anyhow::Result<Value> {
        anyhow::ensure!(
            code == 0,
            "cairn bench {args} failed ({code}): {}",
            lines.join("\n")
        );
        let line = lines
            .iter()
            .find_map(|l| l.strip_prefix("round "))
            .ok_or_else(|| anyhow::anyhow!("cairn bench {args}: no round in {lines:?}"))?;
        Ok(serde_json::from_str(line)?)
    }

    /// A raw TCP transfer from `from` to `to` through the shape: the link's rate as TCP
    /// delivers it, bytes per second.
    fn probe(from: &mut Plug, to: &mut Plug) -> anyhow::Result<Value> {
        let sink = format!("sink --port {PROBE_PORT}");
        to.port.bench_start(&sink)?;
        let sent = bench(
            from,
            &format!("send --to {}:{PROBE_PORT} --mib {LINK_PROBE_MIB}", to.ip),
        );
        let (lines, code) = to.port.bench_finish(&sink, STEP)?;
        let got = one_round(&sink, lines, code)?;
        let sent = sent?;
        anyhow::ensure!(
            got["bytes"] == sent["bytes"],
            "the sink got {} of {} bytes",
            got["bytes"],
            sent["bytes"]
        );
        Ok(sent)
    }

    pub fn f(v: &Value, k: &str) -> anyhow::Result<f64> {
        v[k].as_f64()
            .ok_or_else(|| anyhow::anyhow!("no number {k} in {v}"))
    }

    pub fn run(out: &str, rounds: u64, mib: u64) -> anyhow::Result<()> {
        // A partner takes as much as the plug holds for it plus an allowance of 256 MiB (the
        // node's default); every round's shards stay on it.
        anyhow::ensure!(
            rounds * mib + UNSHAPED_MIB <= 240,
            "{rounds} rounds of {mib} MiB would pass the partner's 256 MiB allowance"
        );
        let began = Instant::now();
        let dir = tempfile::tempdir()?;
        let (a_end, b_end) = {
            let a = UdpSocket::bind("127.0.0.1:0")?;
            let b = UdpSocket::bind("127.0.0.1:0")?;
            (a.local_addr()?.port(), b.local_addr()?.port())
        };
        let mut a = boot(dir.path(), "a", (a_end, b_end), "52:54:00:00:01:0a")?;
        let mut b = boot(dir.path(), "b", (b_end, a_end), "52:54:00:00:01:0b")?;
        let b_peer = peer_id(&mut b)?;

        // Paired as owners pair them: both buttons pressed.
        let panels = [a.q.panel()?, b.q.panel()?];
        // The front panel speaks first (the LEDs' state): then the guest reads the button.
        for p in &panels {
            p.wait_pattern(0, "healthy", BOOT_TIMEOUT)
                .ok_or_else(|| anyhow::anyhow!("a panel never showed healthy"))?;
        }
        let lines = [a.q.line_count(), b.q.line_count()];
        for p in &panels {
            p.press(Duration::from_millis(300))?;
        }
        for (q, from) in [(&a.q, lines[0]), (&b.q, lines[1])] {
            let (_, line) = q.wait_line_from(
                from,
                "cairn: pairing: ",
                Duration::from_secs(PAIRING_WINDOW_S + 15),
            )?;
            anyhow::ensure!(line.contains("paired with"), "{line}");
        }

        let shaped = bench(
            &mut a,
            &format!("shape --rate-kbit {UPLINK_KBIT} --delay-us {UPLINK_DELAY_US}"),
        )?;
        eprintln!("link: a's uplink {shaped}");
        let mut puts = Vec::new();
        let mut ceilings = Vec::new();
        for r in 0..rounds {
            let link = probe(&mut a, &mut b)?;
            let b0 = super::cpu(&mut b.port)?;
            let mut put = bench(
                &mut a,
                &format!("put --mib {mib} --seed {} --k {K} --n {N}", r + 1),
            )?;
            // The partner's CPU over the put: its side of the transfer (Noise, storing).
            let b1 = super::cpu(&mut b.port)?;
            put["partner_cpu_busy"] = json!((b1.0 - b0.0) as f64 / (b1.1 - b0.1).max(1) as f64);
            eprintln!("link: round {}/{rounds}: probe {link}, put {put}", r + 1);
            let ceiling = bench(
                &mut a,
                &format!(
                    "ceiling --mib {CEILING_MIB} --seed {} --k {K} --n {N}",
                    100 + r
                ),
            )?;
            eprintln!("link: round {}/{rounds}: ceiling {ceiling}", r + 1);
            puts.push((link, put));
            ceilings.push(ceiling);
        }
        // The same plugs without the shape: if the put goes no faster, the link was not what
        // held it back.
        bench(&mut a, "shape --rate-kbit 0 --delay-us 0")?;
        let unshaped_link = probe(&mut a, &mut b)?;
        let unshaped = bench(
            &mut a,
            &format!(
                "put --mib {UNSHAPED_MIB} --seed {} --k {K} --n {N}",
                rounds + 1
            ),
        )?;
        eprintln!("link: unshaped: probe {unshaped_link}, put {unshaped}");
        // The plug is lost: a fresh one takes its place on the cable, and only the recovery
        // keys and the partner's address are known.
        a.q.power_button()?;
        a.q.wait_exit(SHUTDOWN_TIMEOUT)?;
        drop(a);
        let mut c = boot(dir.path(), "c", (a_end, b_end), "52:54:00:00:01:0c")?;
        let shaped = bench(
            &mut b,
            &format!("shape --rate-kbit {LAN_KBIT} --delay-us {LAN_DELAY_US}"),
        )?;
        eprintln!("link: b's LAN {shaped}");
        let partner = format!("/ip4/{}/tcp/{NODE_PORT}/p2p/{b_peer}", b.ip);
        let mut gets = Vec::new();
        for (r, (_, put)) in puts.iter().enumerate() {
            let link = probe(&mut b, &mut c)?;
            let key = put["key"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("no key in {put}"))?;
            let b0 = super::cpu(&mut b.port)?;
            let mut got = bench(
                &mut c,
                &format!(
                    "restore --partner {partner} --key {key} --mib {mib} --seed {}",
                    r + 1
                ),
            )?;
            let b1 = super::cpu(&mut b.port)?;
            got["partner_cpu_busy"] = json!((b1.0 - b0.0) as f64 / (b1.1 - b0.1).max(1) as f64);
            eprintln!(
                "link: round {}/{rounds}: probe {link}, restore {got}",
                r + 1
            );
            gets.push((link, got));
        }
        for mut p in [b, c] {
            p.q.power_button()?;
            p.q.wait_exit(SHUTDOWN_TIMEOUT)?;
        }

        let mut figures = serde_json::Map::new();
        let mut put_fig = |name: &str, v: Vec<f64>| {
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
        let rate = |v: &Value, bytes: &str, secs: &str| -> anyhow::Result<f64> {
            Ok(f(v, bytes)? / f(v, secs)?)
        };
        let mbit = |bytes_s: f64| bytes_s * 8.0 / 1e6;
        let each = |pairs: &[(Value, Value)],
                    g: &dyn Fn(&Value, &Value) -> anyhow::Result<f64>|
         -> anyhow::Result<Vec<f64>> {
            pairs.iter().map(|(l, x)| g(l, x)).collect()
        };
        // Shard bytes the partner took per second of the put (until the node's flush) ÷ what
        // raw TCP delivered through the same shape just before.
        put_fig(
            "put_vs_link",
            each(&puts, &|l, p| {
                Ok(rate(p, "shard_bytes_out", "s")? / rate(l, "bytes", "s")?)
            })?,
        );
        // Data bytes read per second ÷ raw TCP through the LAN shape (1-of-2: each chunk comes
        // as one shard, its sealed bytes a little more than the data's).
        put_fig(
            "restore_vs_link",
            each(&gets, &|l, g| {
                Ok(rate(g, "bytes", "restore_s")? / rate(l, "bytes", "s")?)
            })?,
        );
        put_fig(
            "get_vs_link",
            each(&gets, &|l, g| {
                Ok(rate(g, "get_bytes", "get_s")? / rate(l, "bytes", "s")?)
            })?,
        );
        // The same against what the plug itself allows: the put and the get with the shards
        // in its memory (round r's ceiling beside round r's put and restore). Near 1, the
        // node and the network cost nothing beyond the plug's CPU and card; `_vs_limit` is the
        // rate ÷ the tighter of the link and that ceiling.
        let ceiling = |r: usize, bytes: &str, secs: &str| rate(&ceilings[r], bytes, secs);
        let vs =
            |pairs: &[(Value, Value)], bytes: &str, secs: &str, c: (&str, &str), link: bool| {
                pairs
                    .iter()
                    .enumerate()
                    .map(|(r, (l, x))| {
                        let limit = ceiling(r, c.0, c.1)?;
                        let limit = if link {
                            limit.min(rate(l, "bytes", "s")?)
                        } else {
                            limit
                        };
                        Ok(rate(x, bytes, secs)? / limit)
                    })
                    .collect::<anyhow::Result<Vec<f64>>>()
            };
        for (name, pairs, bytes, secs, c) in [
            ("put", &puts, "bytes", "s", ("bytes", "put_s")),
            (
                "restore",
                &gets,
                "bytes",
                "restore_s",
                ("get_bytes", "get_s"),
            ),
            ("get", &gets, "get_bytes", "get_s", ("get_bytes", "get_s")),
        ] {
            put_fig(
                &format!("{name}_vs_ceiling"),
                vs(pairs, bytes, secs, c, false)?,
            );
            put_fig(
                &format!("{name}_vs_limit"),
                vs(pairs, bytes, secs, c, true)?,
            );
        }
        put_fig(
            "ceiling_put_data_mb_s",
            ceilings
                .iter()
                .map(|c| Ok(rate(c, "bytes", "put_s")? / 1e6))
                .collect::<anyhow::Result<_>>()?,
        );
        put_fig(
            "ceiling_get_data_mb_s",
            ceilings
                .iter()
                .map(|c| Ok(rate(c, "get_bytes", "get_s")? / 1e6))
                .collect::<anyhow::Result<_>>()?,
        );
        for (name, key) in [
            ("cpu_busy_ceiling_put", "put_cpu_busy"),
            ("cpu_busy_ceiling_get", "get_cpu_busy"),
        ] {
            put_fig(
                name,
                ceilings
                    .iter()
                    .map(|c| f(c, key))
                    .collect::<anyhow::Result<_>>()?,
            );
        }
        put_fig(
            "device_ram_mib_peak",
            each(&puts, &|_, p| f(p, "ram_mib_peak"))?,
        );
        put_fig(
            "device_ram_mib_before_put",
            each(&puts, &|_, p| f(p, "ram_mib_before"))?,
        );
        // The absolute rates, to read the ratios by.
        put_fig(
            "link_up_mbit_s",
            each(&puts, &|l, _| Ok(mbit(rate(l, "bytes", "s")?)))?,
        );
        put_fig(
            "put_shard_mbit_s",
            each(&puts, &|_, p| Ok(mbit(rate(p, "shard_bytes_out", "s")?)))?,
        );
        put_fig(
            "put_wire_mbit_s",
            each(&puts, &|_, p| Ok(mbit(rate(p, "tx_bytes", "s")?)))?,
        );
        put_fig(
            "put_data_mb_s",
            each(&puts, &|_, p| Ok(rate(p, "bytes", "s")? / 1e6))?,
        );
        // How much of the put's time the vault's own put took before the node's flush.
        put_fig(
            "put_flush_share",
            each(&puts, &|_, p| Ok(1.0 - f(p, "put_s")? / f(p, "s")?))?,
        );
        put_fig(
            "link_lan_mbit_s",
            each(&gets, &|l, _| Ok(mbit(rate(l, "bytes", "s")?)))?,
        );
        put_fig(
            "restore_mbit_s",
            each(&gets, &|_, g| Ok(mbit(rate(g, "bytes", "restore_s")?)))?,
        );
        put_fig(
            "get_mbit_s",
            each(&gets, &|_, g| Ok(mbit(rate(g, "get_bytes", "get_s")?)))?,
        );
        for (name, key) in [
            ("cpu_busy_put", "cpu_busy"),
            ("cpu_busy_put_partner", "partner_cpu_busy"),
        ] {
            put_fig(name, each(&puts, &|_, p| f(p, key))?);
        }
        for (name, key) in [
            ("cpu_busy_restore", "restore_cpu_busy"),
            ("cpu_busy_get", "get_cpu_busy"),
            ("cpu_busy_restore_get_partner", "partner_cpu_busy"),
        ] {
            put_fig(name, each(&gets, &|_, g| f(g, key))?);
        }
        // One round (the partner's allowance): no spread.
        let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
        let unshaped_rate = rate(&unshaped, "bytes", "s")?;
        let mut shaped: Vec<f64> = puts
            .iter()
            .map(|(_, p)| rate(p, "bytes", "s"))
            .collect::<anyhow::Result<_>>()?;
        shaped.sort_by(f64::total_cmp);
        figures.insert(
            "put_unshaped_data_mb_s".into(),
            r3(unshaped_rate / 1e6).into(),
        );
        figures.insert(
            "put_unshaped_vs_shaped".into(),
            r3(unshaped_rate / median(&shaped)).into(),
        );
        figures.insert(
            "link_unshaped_mbit_s".into(),
            r3(mbit(rate(&unshaped_link, "bytes", "s")?)).into(),
        );
        figures.insert(
            "cpu_busy_put_unshaped".into(),
            r3(f(&unshaped, "cpu_busy")?).into(),
        );
        figures.insert("link_mib_per_round".into(), mib.into());
        figures.insert("link_rounds".into(), puts.len().into());
        figures.insert(
            "link".into(),
            json!({
                "plugs": "two on a QEMU dgram cable (put), then the partner and a fresh third \
                          (restore, get)",
                "put_shape": {"netem_rate_kbit": UPLINK_KBIT, "netem_delay_us": UPLINK_DELAY_US,
                              "on": "the putting plug's eth0"},
                "get_shape": {"netem_rate_kbit": LAN_KBIT, "netem_delay_us": LAN_DELAY_US,
                              "on": "the partner's eth0"},
                "k": K, "n": N,
                "probe_mib": LINK_PROBE_MIB,
                "ceiling_mib": CEILING_MIB,
                "seconds": began.elapsed().as_secs(),
            }),
        );
        figures.insert(
            "targets".into(),
            json!({"put_vs_link": 0.9, "device_ram_mib_peak": 128}),
        );
        figures.insert(
            "link_rounds_raw".into(),
            json!({"puts": puts, "gets": gets, "ceilings": ceilings,
                   "unshaped": [unshaped_link, unshaped]}),
        );
        merge_bench(out, &Value::Object(figures))
    }
}
