//! The network half of `cairn bench` (test images only): a home uplink shaped in the guest,
//! the link's own rate, and `cairn vault put` / restore / get through the storage node over it.
//! Each command prints one `round {…}` line of raw measurements; the host's bench
//! (`hil-tests/examples/device_bench.rs`) turns them into ratios.
//!
//! - `shape`: a netem qdisc (rate and delay) as eth0's root, by netlink ([`netem_request`]):
//!   the guest has no `tc`;
//! - `sink` / `send`: a raw TCP transfer between two plugs through the same shape, the limit
//!   the node's transfers are measured against;
//! - `put`: `cairn vault put` of a file through the node (as `cairn vault` does it, with the
//!   node's flush), with the shard bytes the partners took (the node's books), eth0's counters
//!   and the device's RAM in use sampled throughout;
//! - `restore`: the vault restored from its recovery key onto this (fresh) plug and its files
//!   read back, then read once more (a `get`), through the node from its partners;
//! - `ceiling`: the same put and get with the shards kept in this plug's memory: what its
//!   CPU and card allow, the limit below the link's when the emulated CPU is the slower.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_node::control::Client;
use cairn_vault::home::{Config, Target};
use cairn_vault::keys::{KdfParams, OwnerSecret, RECOVERY_PREFIX};
use cairn_vault::progress::NoProgress;
use cairn_vault::{ShardError, ShardId, ShardSink, ShardSource, Vault};
use serde_json::json;

use super::bench::cpu_jiffies;
use crate::sys::paths::NODE_SOCKET;

/// The uplink's interface (the board's only Ethernet).
const DEV: &str = "eth0";
/// Bytes per write of `send` (and per read of `sink`).
const BUF: usize = 64 << 10;
/// How long `send` keeps trying to reach a `sink` that is still starting.
const CONNECT_FOR: Duration = Duration::from_secs(30);
/// The RAM sampler's period during a put.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The bench vault's passphrase hashing: cheap, the bench measures the transfer.
const KDF: KdfParams = KdfParams {
    m_kib: 64,
    t: 1,
    p: 1,
};
/// Where the put's file and vaults live for a round (removed after).
const WORK: &str = "/data/bench-link";

/// Prints one round's figures.
fn round(v: serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "round {v}")?;
    out.flush()?;
    Ok(())
}

/// eth0's (rx, tx) byte counters.
fn net_bytes() -> anyhow::Result<(u64, u64)> {
    let n = |f: &str| -> anyhow::Result<u64> {
        let p = format!("/sys/class/net/{DEV}/statistics/{f}");
        Ok(std::fs::read_to_string(&p)?.trim().parse()?)
    };
    Ok((n("rx_bytes")?, n("tx_bytes")?))
}

/// MemTotal − MemAvailable, MiB.
fn ram_in_use_mib() -> anyhow::Result<f64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let kib = |key: &str| -> anyhow::Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {key} in /proc/meminfo"))
    };
    Ok((kib("MemTotal:")? - kib("MemAvailable:")?) / 1024.0)
}

/// Samples [`ram_in_use_mib`] until dropped; [`RamPeak::stop`] gives the highest seen.
struct RamPeak {
    run: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<f64>>,
}

impl RamPeak {
    fn start() -> RamPeak {
        let run = Arc::new(AtomicBool::new(true));
        let r = run.clone();
        let thread = std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while r.load(Ordering::Relaxed) {
                peak = peak.max(ram_in_use_mib().unwrap_or(0.0));
                std::thread::sleep(SAMPLE_EVERY);
            }
            peak
        });
        RamPeak {
            run,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> f64 {
        self.run.store(false, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for RamPeak {
    fn drop(&mut self) {
        self.run.store(false, Ordering::Relaxed);
    }
}

/// `cairn bench shape`: eth0's egress through netem at `rate_kbit` (0: no rate limit) with
/// `delay_us` added to every packet, `limit` packets queued at most.
pub fn shape(rate_kbit: u64, delay_us: u64, limit: u32) -> anyhow::Result<()> {
    let name = std::ffi::CString::new(DEV)?;
    // SAFETY: if_nametoindex reads the NUL-terminated name, which outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    anyhow::ensure!(ifindex != 0, "{DEV}: {}", std::io::Error::last_os_error());
    let rate = u32::try_from(rate_kbit * 1000 / 8)
        .map_err(|_| anyhow::anyhow!("{rate_kbit} kbit/s is beyond netem's 32-bit rate"))?;
    let msg = netem_request(ifindex as i32, rate, delay_us * 1000, limit);
    netlink_ack(&msg)?;
    round(json!({"dev": DEV, "rate_bytes_s": rate, "delay_us": delay_us, "limit": limit}))
}

/// An `RTM_NEWQDISC` request making netem the root qdisc of interface `ifindex` (replacing
/// what is there): what `tc qdisc replace dev DEV root handle 1: netem rate R delay D limit L`
/// sends. Built by hand: netlink-packet-route (in the tree through libp2p's if-watch) has typed
/// options for fq_codel and ingress only, and netem's `TCA_OPTIONS` is not a list of attributes
/// but a fixed `struct tc_netem_qopt` followed by attributes, which its option list cannot
/// express; the bytes would be raw either way. Layouts: `linux/netlink.h`, `linux/rtnetlink.h`,
/// `linux/pkt_sched.h`; native byte order.
pub fn netem_request(ifindex: i32, rate_bytes_s: u32, delay_ns: u64, limit: u32) -> Vec<u8> {
    const RTM_NEWQDISC: u16 = 36;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_ACK: u16 = 0x4;
    const NLM_F_REPLACE: u16 = 0x100;
    const NLM_F_CREATE: u16 = 0x400;
    const TCA_KIND: u16 = 1;
    const TCA_OPTIONS: u16 = 2;
    const TCA_NETEM_RATE: u16 = 6;
    const TCA_NETEM_LATENCY64: u16 = 10;
    const TC_H_ROOT: u32 = 0xFFFF_FFFF;
    // Attribute: length (header included, padding not), type, value, padded to 4 bytes.
    fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
        out.extend_from_slice(&(4 + value.len() as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    // struct tc_netem_qopt: latency (in 64 ns ticks; LATENCY64 below says it in ns and wins),
    // limit (packets), loss, gap, duplicate, jitter.
    let mut opts = Vec::new();
    for v in [(delay_ns >> 6) as u32, limit, 0, 0, 0, 0] {
        opts.extend_from_slice(&v.to_ne_bytes());
    }
    // struct tc_netem_rate: rate (bytes/s; 0 is none), packet_overhead, cell_size,
    // cell_overhead. Always sent: replacing a netem qdisc changes it, and netem keeps its old
    // rate when the attribute is missing.
    let mut r = Vec::new();
    for v in [rate_bytes_s, 0, 0, 0] {
        r.extend_from_slice(&v.to_ne_bytes());
    }
    attr(&mut opts, TCA_NETEM_RATE, &r);
    attr(
        &mut opts,
        TCA_NETEM_LATENCY64,
        &(delay_ns as i64).to_ne_bytes(),
    );

    // struct tcmsg: family, 3 pad bytes, ifindex, handle (1:0), parent (root), info.
    let mut body = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    body.extend_from_slice(&ifindex.to_ne_bytes());
    body.extend_from_slice(&0x0001_0000u32.to_ne_bytes());
    body.extend_from_slice(&TC_H_ROOT.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut body, TCA_KIND, b"netem\0");
    attr(&mut body, TCA_OPTIONS, &opts);

    // struct nlmsghdr: length, type, flags, sequence, port (0: the kernel).
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&(16 + body.len() as u32).to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWQDISC.to_ne_bytes());
    msg.extend_from_slice(
        &(NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE).to_ne_bytes(),
    );
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// Sends one rtnetlink request and reads the kernel's acknowledgement (`NLMSG_ERROR` with
/// error 0), failing with the kernel's errno otherwise.
fn netlink_ack(msg: &[u8]) -> anyhow::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket(2) takes no pointers; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    anyhow::ensure!(
        fd >= 0,
        "netlink socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_nl is valid (port 0, groups 0: the kernel).
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: `msg` and `to` outlive the call; the lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&to as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    anyhow::ensure!(
        sent == msg.len() as isize,
        "netlink send: {}",
        std::io::Error::last_os_error()
    );
    let mut buf = [0u8; 4096];
    // SAFETY: `buf` outlives the call and is as long as said.
    let got = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    anyhow::ensure!(
        got >= 20,
        "netlink answer: {}",
        std::io::Error::last_os_error()
    );
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    anyhow::ensure!(
        kind == libc::NLMSG_ERROR as u16,
        "netlink answer of type {kind}"
    );
    let errno = -i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    anyhow::ensure!(
        errno == 0,
        "RTM_NEWQDISC: {}",
        std::io::Error::from_raw_os_error(errno)
    );
    Ok(())
}

/// `cairn bench sink`: takes one TCP connection on `port` and reads it to its end, counting
/// and dropping the bytes, then closes it: the sender's clock stops then.
pub fn sink(port: u16) -> anyhow::Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port))?;
    // Bounded: a sender that never comes must not hold the fixture's port.
    l.set_nonblocking(true)?;
    let waited = Instant::now();
    let (mut s, from) = loop {
        match l.accept() {
            Ok(c) => break c,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && waited.elapsed() < CONNECT_FOR * 2 =>
            {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => anyhow::bail!("no sender on port {port}: {e}"),
        }
    };
    s.set_nonblocking(false)?;
    let started = Instant::now();
    let mut buf = vec![0u8; BUF];
    let mut bytes = 0u64;
    loop {
        match s.read(&mut buf)? {
            0 => break,
            n => bytes += n as u64,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    drop(s);
    round(json!({"from": from.to_string(), "bytes": bytes, "s": secs}))
}

/// `cairn bench send`: `bytes` to a `sink` at `to`, timed from the connection to the sink's
/// close (everything delivered), with eth0's transmitted bytes over it.
pub fn send(to: SocketAddr, bytes: u64) -> anyhow::Result<()> {
    let tried = Instant::now();
    let mut s = loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
            Ok(s) => break s,
            Err(_) if tried.elapsed() < CONNECT_FOR => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => anyhow::bail!("connecting to {to}: {e}"),
        }
    };
    let (_, tx0) = net_bytes()?;
    let started = Instant::now();
    let buf = vec![0x5au8; BUF];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(BUF as u64) as usize;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut rest = [0u8; 64];
    while s.read(&mut rest)? > 0 {}
    let secs = started.elapsed().as_secs_f64();
    let (_, tx1) = net_bytes()?;
    round(json!({"to": to.to_string(), "bytes": bytes, "s": secs, "tx_bytes": tx1 - tx0}))
}

/// The guest CPU's busy share since `from` (`/proc/stat`): near 1, the emulated CPU and not
/// the link was the limit.
fn busy_since(from: (u64, u64)) -> anyhow::Result<f64> {
    let (busy, total) = cpu_jiffies()?;
    Ok((busy - from.0) as f64 / (total - from.1).max(1) as f64)
}

/// CPU time of every thread on the plug, as [user, system] clock ticks and minor page faults,
/// keyed by its process's first two arguments and the thread's name (`cairn node/tokio-rt-worker`).
fn thread_ticks() -> std::collections::BTreeMap<String, [u64; 3]> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let path = p.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let cmd: Vec<String> = cmdline
            .split(|b| *b == 0)
            .take(2)
            .map(|a| {
                let a = String::from_utf8_lossy(a);
                a.rsplit('/').next().unwrap_or_default().to_owned()
            })
            .collect();
        let Ok(tasks) = std::fs::read_dir(path.join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            // pid (comm) state … minflt (10) … utime stime (14, 15), counted after the ")".
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let comm = head.split_once('(').map_or("", |(_, c)| c);
            let f: Vec<u64> = rest
                .split_whitespace()
                .skip(7)
                .take(6)
                .filter_map(|w| w.parse().ok())
                .collect();
            if f.len() == 6 {
                let e: &mut [u64; 3] = out.entry(format!("{}/{comm}", cmd.join(" "))).or_default();
                e[0] += f[4];
                e[1] += f[5];
                e[2] += f[0];
            }
        }
    }
    out
}

/// The threads that took the most CPU between two [`thread_ticks`], in seconds.
/// Each as `[thread, user s, system s, minor faults]`.
fn busiest(
    before: &std::collections::BTreeMap<String, [u64; 3]>,
    after: &std::collections::BTreeMap<String, [u64; 3]>,
) -> serde_json::Value {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut used: Vec<(&String, [u64; 3])> = after
        .iter()
        .map(|(k, v)| {
            let b = before.get(k).copied().unwrap_or_default();
            (k, std::array::from_fn(|i| v[i].saturating_sub(b[i])))
        })
        .filter(|(_, v)| v[0] + v[1] > 0)
        .collect();
    used.sort_by_key(|u| std::cmp::Reverse(u.1[0] + u.1[1]));
    used.truncate(8);
    let s = |t: u64| (t as f64 / hz * 100.0).round() / 100.0;
    used.into_iter()
        .map(|(k, v)| json!([k, s(v[0]), s(v[1]), v[2]]))
        .collect()
}

/// `cairn bench idle`: sleeps `seconds` while the plug runs as it is, then prints the share of
/// CPU time that was busy and the threads that used it (what keeps an idle plug awake).
pub fn idle(seconds: u64) -> anyhow::Result<()> {
    let cpu0 = cpu_jiffies()?;
    let threads0 = thread_ticks();
    let disks0 = disk_writes()?;
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    let disks1 = disk_writes()?;
    // Writes wake the flush workers and, on a card, wear it: an idle plug should make none.
    let written: Vec<serde_json::Value> = disks1
        .iter()
        .filter_map(|(dev, [ios, sectors])| {
            let [ios0, sectors0] = disks0.get(dev).copied().unwrap_or_default();
            (*ios > ios0).then(|| json!([dev, ios - ios0, (sectors - sectors0) / 2]))
        })
        .collect();
    round(json!({
        "s": seconds,
        "cpu_busy": busy_since(cpu0)?,
        "cpu_s_by_thread": busiest(&threads0, &thread_ticks()),
        "writes_ios_kib_by_disk": written,
    }))
}

/// Each block device's (write requests, sectors written) from `/proc/diskstats`.
fn disk_writes() -> anyhow::Result<std::collections::BTreeMap<String, [u64; 2]>> {
    let text = std::fs::read_to_string("/proc/diskstats")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse().ok());
            Some((f.get(2)?.to_string(), [n(7)?, n(9)?]))
        })
        .collect())
}

/// What the node's partners hold for this plug, in all (its books: `held_for_us`).
fn held_by_partners() -> anyhow::Result<u64> {
    let (st, _) = Client::connect(Path::new(NODE_SOCKET))?.call(json!({"op": "status"}), &[])?;
    Ok(st["partners"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["held_for_us"].as_u64()).sum())
        .unwrap_or(0))
}

/// `cairn bench put`: a new vault (k-of-n through the node) and `cairn vault put` of `mib`
/// MiB of the bench's bytes (`seed`), timed until the node has placed every shard (its
/// flush). Prints the seconds, the bytes, the shard bytes the partners took, eth0's counters,
/// the RAM in use before and at its peak, and the vault's recovery key (the second word of
/// `cairn vault recovery-key`'s: the restore's).
pub fn put(mib: usize, seed: u64, k: usize, n: usize) -> anyhow::Result<()> {
    let dir = Path::new(WORK);
    let (file, mut v) = bench_vault(dir, mib, seed, k, n, vec![Target::Node(NODE_SOCKET.into())])?;
    let key = v.secret().recovery_key();
    // Written and synced: the put starts with a clean page cache's worth of dirty data.
    nix::unistd::sync();
    let ram_before = ram_in_use_mib()?;
    let held0 = held_by_partners()?;
    let (rx0, tx0) = net_bytes()?;
    let peak = RamPeak::start();
    let cpu0 = cpu_jiffies()?;
    let threads0 = thread_ticks();
    let started = Instant::now();
    let r = v.put(&[&file], &mut NoProgress)?;
    let put_s = started.elapsed().as_secs_f64();
    Client::connect(Path::new(NODE_SOCKET))?.call(json!({"op": "flush"}), &[])?;
    let secs = started.elapsed().as_secs_f64();
    let ram_peak = peak.stop();
    let cpu = busy_since(cpu0)?;
    let threads = busiest(&threads0, &thread_ticks());
    let (rx1, tx1) = net_bytes()?;
    let held1 = held_by_partners()?;
    drop(v);
    std::fs::remove_dir_all(dir)?;
    round(json!({
        "bytes": r.bytes,
        "chunks": r.stored_chunks,
        "put_s": put_s,
        "s": secs,
        "shard_bytes_out": held1.saturating_sub(held0),
        "tx_bytes": tx1 - tx0,
        "rx_bytes": rx1 - rx0,
        "ram_mib_before": ram_before,
        "ram_mib_peak": ram_peak,
        "cpu_busy": cpu,
        "cpu_s_by_thread": threads,
        "key": key.split_whitespace().last().unwrap_or_default(),
    }))
}

/// The shards a vault needs to read its chunks back (indices below k), kept in memory; the
/// parity shards are counted and dropped (a 1-of-2 put makes twice its bytes in shards, which
/// a 256 MiB plug cannot hold).
struct Memory {
    k: u8,
    kept: std::sync::Mutex<std::collections::HashMap<ShardId, Vec<u8>>>,
}

impl ShardSink for Memory {
    fn put_shard(&self, id: &ShardId, shard: &[u8]) -> Result<(), ShardError> {
        if id.index < self.k {
            let mut kept = self.kept.lock().expect("shards");
            kept.insert(*id, shard.to_vec());
        }
        Ok(())
    }
}

impl ShardSource for Memory {
    fn get_shard(&self, id: &ShardId) -> Result<Vec<u8>, ShardError> {
        let kept = self.kept.lock().expect("shards");
        kept.get(id).cloned().ok_or_else(|| ShardError::Missing {
            id: *id,
            place: "memory".into(),
        })
    }
}

/// `cairn bench ceiling`: `put` and `restore`'s get of `mib` MiB, k-of-n, as they run through
/// the node, but with the shards kept in memory ([`Memory`]): the file read from the card and
/// chunked, hashed, sealed and coded, then read back, opened and written to the card, all on
/// this plug's CPU with no network. Prints each half's seconds and CPU share.
pub fn ceiling(mib: usize, seed: u64, k: usize, n: usize) -> anyhow::Result<()> {
    let dir = Path::new(WORK);
    // Placeholders: the backend is replaced before anything is stored.
    let unused = (0..n)
        .map(|i| Target::Dir(dir.join(format!("unused{i}"))))
        .collect();
    let (file, mut v) = bench_vault(dir, mib, seed, k, n, unused)?;
    let memory = Arc::new(Memory {
        k: u8::try_from(k)?,
        kept: Default::default(),
    });
    v.set_backend(memory.clone(), memory);
    // Both halves start from the card, as the node's put and get do.
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")?;
    let cpu0 = cpu_jiffies()?;
    let started = Instant::now();
    let r = v.put(&[&file], &mut NoProgress)?;
    let put_s = started.elapsed().as_secs_f64();
    let put_cpu = busy_since(cpu0)?;
    std::fs::remove_file(&file)?;
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")?;
    let out = dir.join("got");
    let cpu0 = cpu_jiffies()?;
    let started = Instant::now();
    let got = v.get(None, "/", &out, &mut NoProgress)?;
    let get_s = started.elapsed().as_secs_f64();
    let get_cpu = busy_since(cpu0)?;
    check(&out.join("data.bin"), mib, seed)?;
    drop(v);
    std::fs::remove_dir_all(dir)?;
    // What the node's own transfers cost here: libp2p's Noise seals with ChaCha20-Poly1305
    // (ring), the vault with the faster of the two.
    let mb_s = |a: cairn_vault::seal::AeadKind| (a.rate_here(300) / 1e4).round() / 100.0;
    round(json!({
        "chacha20poly1305_mb_s": mb_s(cairn_vault::seal::AeadKind::ChaCha20Poly1305),
        "aes256gcm_mb_s": mb_s(cairn_vault::seal::AeadKind::Aes256Gcm),
        "bytes": r.bytes,
        "put_s": put_s,
        "put_cpu_busy": put_cpu,
        "get_bytes": got.bytes,
        "get_s": get_s,
        "get_cpu_busy": get_cpu,
    }))
}

/// `cairn bench restore`: asks the node to rejoin `partner` (a multiaddr ending in
/// /p2p/PEER: the owner names a partner, as after losing a plug), restores the vault of
/// recovery key `key` (its groups) through the node and reads all its files (`cairn vault
/// restore --recovery-key … DEST`), timed; then reads them all again (`cairn vault get`),
/// timed. The files are checked against the bench's bytes of `mib` and `seed`.
pub fn restore(partner: &str, key: &str, mib: usize, seed: u64) -> anyhow::Result<()> {
    let (r, _) = Client::connect(Path::new(NODE_SOCKET))?
        .call(json!({"op": "rejoin", "addr": partner}), &[])?;
    anyhow::ensure!(r["ok"] != false, "rejoin {partner}: {r}");
    let dir = Path::new(WORK);
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let secret = OwnerSecret::from_recovery_key(&format!("{RECOVERY_PREFIX} {key}"))?;
    let targets = vec![Target::Node(NODE_SOCKET.into())];
    let (rx0, _) = net_bytes()?;
    let cpu0 = cpu_jiffies()?;
    let started = Instant::now();
    let v = Vault::restore(
        &dir.join("vault"),
        secret,
        None,
        targets,
        b"bench",
        KDF,
        &super::vault::NodeSockets,
    )?;
    let head = v.head()?;
    let first = dir.join("restored");
    let got = v.get(Some(head), "/", &first, &mut NoProgress)?;
    let restore_s = started.elapsed().as_secs_f64();
    let restore_cpu = busy_since(cpu0)?;
    let (rx1, _) = net_bytes()?;
    check(&first.join("data.bin"), mib, seed)?;
    std::fs::remove_dir_all(&first)?;
    // Nothing of the first read may help the second: written back and dropped.
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")?;
    let again = dir.join("again");
    let cpu0 = cpu_jiffies()?;
    let threads0 = thread_ticks();
    let started = Instant::now();
    let got2 = v.get(Some(head), "/", &again, &mut NoProgress)?;
    let get_s = started.elapsed().as_secs_f64();
    let get_cpu = busy_since(cpu0)?;
    let get_threads = busiest(&threads0, &thread_ticks());
    let (rx2, _) = net_bytes()?;
    check(&again.join("data.bin"), mib, seed)?;
    drop(v);
    std::fs::remove_dir_all(dir)?;
    round(json!({
        "bytes": got.bytes,
        "restore_s": restore_s,
        "restore_rx_bytes": rx1 - rx0,
        "restore_cpu_busy": restore_cpu,
        "get_cpu_busy": get_cpu,
        "get_cpu_s_by_thread": get_threads,
        "shards_missing": got.shards_missing,
        "get_bytes": got2.bytes,
        "get_s": get_s,
        "get_rx_bytes": rx2 - rx1,
        "get_shards_missing": got2.shards_missing,
    }))
}

/// A fresh folder `dir` with the bench's bytes of `mib` and `seed` in `data.bin`, and a new
/// k-of-n vault on `targets` in `vault`: what `put`, `ceiling` and `cairn fixture vault-put`
/// start from.
pub fn bench_vault(
    dir: &Path,
    mib: usize,
    seed: u64,
    k: usize,
    n: usize,
    targets: Vec<Target>,
) -> anyhow::Result<(std::path::PathBuf, Vault)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let file = dir.join("data.bin");
    write_bench_file(&file, mib, seed)?;
    let config = Config {
        k,
        n,
        aead: cairn_vault::seal::AeadKind::fastest_here(50),
        targets,
    };
    let v = Vault::init(
        &dir.join("vault"),
        config,
        b"bench",
        KDF,
        &super::vault::NodeSockets,
    )?;
    Ok((file, v))
}

/// Writes the bench's bytes of `mib` and `seed` to `file`, synced.
fn write_bench_file(file: &Path, mib: usize, seed: u64) -> anyhow::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(file)?);
    for b in super::fixture::bench_bytes(mib, seed) {
        w.write_all(&b)?;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

/// `file` holds the bench's bytes of `mib` and `seed`, read in bounded pieces.
fn check(file: &Path, mib: usize, seed: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufReader::new(std::fs::File::open(file)?);
    let mut word = [0u8; 8];
    for (i, want) in super::fixture::bench_bytes(mib, seed).enumerate() {
        f.read_exact(&mut word)?;
        anyhow::ensure!(
            word == want,
            "{}: differs at byte {}",
            file.display(),
            i * 8
        );
    }
    anyhow::ensure!(
        f.read(&mut word)? == 0,
        "{}: longer than {mib} MiB",
        file.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tc qdisc replace dev eth0 root handle 1: netem rate 25mbit delay 20ms`, field by field
    /// at the offsets the kernel's headers give (ifindex 2).
    #[test]
    fn the_netem_request_is_laid_out_as_tc_lays_it_out() {
        let m = netem_request(2, 3_125_000, 20_000_000, 1000);
        let u32_at = |i: usize| u32::from_ne_bytes(m[i..i + 4].try_into().unwrap());
        let u16_at = |i: usize| u16::from_ne_bytes(m[i..i + 2].try_into().unwrap());
        assert_eq!(u32_at(0) as usize, m.len());
        assert_eq!(m.len() % 4, 0);
        assert_eq!(u16_at(4), 36, "RTM_NEWQDISC");
        assert_eq!(u16_at(6), 0x505, "REQUEST | ACK | REPLACE | CREATE");
        // tcmsg at 16: ifindex, handle 1:0, parent root.
        assert_eq!(u32_at(20), 2);
        assert_eq!(u32_at(24), 0x1_0000);
        assert_eq!(u32_at(28), u32::MAX);
        // TCA_KIND "netem\0" (10 bytes, padded to 12), then TCA_OPTIONS.
        assert_eq!((u16_at(36), u16_at(38)), (10, 1));
        assert_eq!(&m[40..46], b"netem\0");
        assert_eq!((u16_at(48), u16_at(50)), (4 + 24 + 20 + 12, 2));
        // tc_netem_qopt: latency in 64 ns ticks, limit.
        assert_eq!(u32_at(52), 20_000_000 / 64);
        assert_eq!(u32_at(56), 1000);
        // TCA_NETEM_RATE: bytes per second; then TCA_NETEM_LATENCY64 in ns.
        assert_eq!((u16_at(76), u16_at(78)), (20, 6));
        assert_eq!(u32_at(80), 3_125_000);
        assert_eq!((u16_at(96), u16_at(98)), (12, 10));
        assert_eq!(
            i64::from_ne_bytes(m[100..108].try_into().unwrap()),
            20_000_000
        );
        assert_eq!(m.len(), 108);
        // Without a rate: TCA_NETEM_RATE of 0 all the same (an old rate must not stay).
        let m = netem_request(2, 0, 1_000_000, 1000);
        assert_eq!(m.len(), 108);
        assert_eq!(u32::from_ne_bytes(m[80..84].try_into().unwrap()), 0);
    }
}
