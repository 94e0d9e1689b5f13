//! Benchmarks that run on the device (`cairn bench …`, test images only: feature
//! `test-fixtures`). Each prints its raw measurements, one JSON object per round on a line
//! `round {…}`; the host's bench (`hil-tests/examples/device_bench.rs`) turns them into ratios.
//!
//! `cairn bench card`: the chunk store on a card, against what the card itself allows, all on
//! one ext4 file system on one block device, in the same round:
//! - `dd`: a sequential write of N bytes in 1 MiB writes, one `fsync` at the end (what
//!   `dd bs=1M conv=fsync` does); then random `O_DIRECT` reads of 4 KiB and of one shard's size
//!   from that file (the card's random-read limits, past every cache);
//! - `store_{256,64}k`: durable ingest of N bytes of shards into `cairn-store`, opened with the
//!   node's configuration, from [`WRITERS`] threads, each put as the node stores a partner's
//!   shard (`put_many` of its lease record and the shard: one group-commit entry);
//! - `files_256k`: the same shards as one file each: write a temp file, `fsync` it, rename it
//!   into one of 256 fan-out directories, `fsync` that directory (a naive but durable store);
//! - `get_256k`: random `get`s of the 256 KiB store after dropping the page cache and reopening
//!   it, one at a time.
//!
//! Each phase reports its seconds, the block device's counters over it (`/sys/block/DEV/stat`:
//! sectors and requests written, flushes) and the guest CPU's busy share (`/proc/stat`), so a
//! phase limited by the CPU rather than the card shows as such.
//!
//! `cairn bench shape | sink | send | put | restore`: the home uplink and the node over it, see
//! [`super::bench_link`].

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn_store::{CountingStorage, FileStorage, Lease, OwnerId, ShardId, Store};

/// Concurrent writers of shards (the "4 writers": a node taking shards from several
/// partners at once).
const WRITERS: u64 = 4;
/// Random bytes that payloads are sliced from, so making them costs nothing while timed.
const POOL_BYTES: usize = 4 << 20;
/// The partner the shards are booked to.
const PAYER: OwnerId = OwnerId([0x42; 32]);

/// `cairn bench` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    /// The chunk store on the card: the disk whose serial number is SERIAL, an ext4 file
    /// system on the whole device, mounted at MOUNT for the run and unmounted after.
    Card {
        #[arg(long)]
        serial: String,
        #[arg(long, default_value = "/run/bench-card")]
        mount: PathBuf,
        /// Bytes written by each write phase, in MiB.
        #[arg(long, default_value_t = 64)]
        mib: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Random reads (and gets) per round.
        #[arg(long, default_value_t = 200)]
        reads: u64,
    },
    /// eth0's egress through netem: RATE_KBIT kbit/s (0: unlimited) and DELAY_US added to
    /// every packet (`bench_link::shape`).
    Shape {
        #[arg(long)]
        rate_kbit: u64,
        #[arg(long)]
        delay_us: u64,
        /// Packets queued at most (tc's default).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Takes one TCP connection on PORT and reads it to its end.
    Sink {
        #[arg(long)]
        port: u16,
    },
    /// Sends MIB MiB to a `sink` at TO, timed until the sink has them all.
    Send {
        #[arg(long)]
        to: std::net::SocketAddr,
        #[arg(long)]
        mib: u64,
    },
    /// Nothing happening for SECONDS: the guest's busy share and its busiest threads.
    Idle {
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// `cairn vault put` of MIB MiB of the bench's bytes through the node, K-of-N.
    Put(Load),
    /// The same put and get of MIB MiB, K-of-N, with the shards kept in memory instead of
    /// sent: what this plug's CPU and card allow with no network.
    Ceiling(Load),
    /// Restores the vault of recovery key KEY (its groups) through the node after rejoining
    /// PARTNER, reads its files, then reads them again; checks them against MIB and SEED.
    Restore {
        #[arg(long)]
        partner: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        mib: usize,
        #[arg(long)]
        seed: u64,
    },
}

/// What `put` and `ceiling` store: MIB MiB of the bench's bytes (SEED), K-of-N.
#[derive(clap::Args, Debug)]
struct Load {
    #[arg(long)]
    mib: usize,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    k: usize,
    #[arg(long)]
    n: usize,
}

/// Runs a benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        What::Card {
            serial,
            mount,
            mib,
            rounds,
            reads,
        } => {
            let dev = disk_by_serial(&serial)?;
            card(&dev, &mount, mib.clamp(4, 1024) << 20, rounds, reads.max(1))
        }
        What::Shape {
            rate_kbit,
            delay_us,
            limit,
        } => super::bench_link::shape(rate_kbit, delay_us, limit),
        What::Sink { port } => super::bench_link::sink(port),
        What::Send { to, mib } => super::bench_link::send(to, mib.clamp(1, 1024) << 20),
        What::Idle { seconds } => super::bench_link::idle(seconds.clamp(1, 600)),
        What::Put(Load { mib, seed, k, n }) => {
            super::bench_link::put(mib.clamp(1, 1024), seed, k, n)
        }
        What::Ceiling(Load { mib, seed, k, n }) => {
            super::bench_link::ceiling(mib.clamp(1, 64), seed, k, n)
        }
        What::Restore {
            partner,
            key,
            mib,
            seed,
        } => super::bench_link::restore(&partner, &key, mib, seed),
    }
}

/// `/dev/NAME` of the disk whose `/sys/block/NAME/serial` is `serial`.
fn disk_by_serial(serial: &str) -> anyhow::Result<PathBuf> {
    fs::read_dir("/sys/block")?
        .flatten()
        .find(|e| fs::read_to_string(e.path().join("serial")).is_ok_and(|s| s.trim() == serial))
        .map(|e| Path::new("/dev").join(e.file_name()))
        .ok_or_else(|| anyhow::anyhow!("no disk with serial {serial:?} in /sys/block"))
}

fn card(dev: &Path, mount: &Path, bytes: u64, rounds: usize, reads: u64) -> anyhow::Result<()> {
    use nix::mount::{mount as do_mount, umount, MsFlags};
    let name = dev
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("{}: not a device path", dev.display()))?
        .to_string();
    fs::create_dir_all(mount)?;
    // The data partition's mount flags (init/data.rs), so ext4 behaves as under the node.
    do_mount(
        Some(dev),
        mount,
        Some("ext4"),
        MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("mount {} on {}: {e}", dev.display(), mount.display()))?;
    let result = (|| -> anyhow::Result<()> {
        let pool = pool();
        for round in 0..rounds {
            let r = Round::new(&name, mount, bytes, reads, &pool);
            let figures = r.run(round)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "round {figures}")?;
            out.flush()?;
        }
        Ok(())
    })();
    let unmounted = umount(mount);
    result?;
    unmounted.map_err(|e| anyhow::anyhow!("umount {}: {e}", mount.display()))
}

/// One round's setting.
struct Round<'a> {
    dev: &'a str,
    dir: &'a Path,
    bytes: u64,
    reads: u64,
    pool: &'a [u8],
}

/// Counters of the device and the CPU at one instant.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    /// `/sys/block/DEV/stat`: write requests, sectors written, flush requests.
    write_ios: u64,
    write_sectors: u64,
    flushes: u64,
    read_ios: u64,
    /// `/proc/stat`'s first line: busy and total jiffies.
    cpu_busy: u64,
    cpu_total: u64,
}

impl Round<'_> {
    fn new<'a>(dev: &'a str, dir: &'a Path, bytes: u64, reads: u64, pool: &'a [u8]) -> Round<'a> {
        Round {
            dev,
            dir,
            bytes,
            reads,
            pool,
        }
    }

    fn sample(&self) -> anyhow::Result<Sample> {
        let stat = fs::read_to_string(format!("/sys/block/{}/stat", self.dev))?;
        let f: Vec<u64> = stat
            .split_whitespace()
            .map(|w| w.parse().unwrap_or(0))
            .collect();
        anyhow::ensure!(f.len() >= 11, "/sys/block/{}/stat: {stat}", self.dev);
        let (cpu_busy, cpu_total) = cpu_jiffies()?;
        Ok(Sample {
            at: Instant::now(),
            read_ios: f[0],
            write_ios: f[4],
            write_sectors: f[6],
            // Kernels since 5.5 count flush requests in fields 15–16.
            flushes: f.get(14).copied().unwrap_or(0),
            cpu_busy,
            cpu_total,
        })
    }

    /// Runs `phase` between two samples; returns its measurements as JSON fields.
    fn measure(
        &self,
        phase: impl FnOnce() -> anyhow::Result<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        // Nothing of an earlier phase may still be in flight when this one starts.
        quiesce()?;
        let a = self.sample()?;
        let extra = phase()?;
        let b = self.sample()?;
        let mut v = serde_json::json!({
            "s": b.at.duration_since(a.at).as_secs_f64(),
            "write_bytes": (b.write_sectors - a.write_sectors) * 512,
            "write_ios": b.write_ios - a.write_ios,
            "flushes": b.flushes - a.flushes,
            "read_ios": b.read_ios - a.read_ios,
            "cpu_busy": (b.cpu_busy - a.cpu_busy) as f64 / (b.cpu_total - a.cpu_total).max(1) as f64,
        });
        if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
            v.extend(extra);
        }
        Ok(v)
    }

    fn run(&self, round: usize) -> anyhow::Result<serde_json::Value> {
        let dd_file = self.dir.join("dd.bin");
        let dd = self.measure(|| {
            let mut f = File::create(&dd_file)?;
            let mut left = self.bytes;
            let mut i = 0u64;
            while left > 0 {
                let n = left.min(1 << 20) as usize;
                f.write_all(slice(self.pool, i, n))?;
                left -= n as u64;
                i += 1;
            }
            f.sync_all()?;
            Ok(serde_json::json!({ "payload_bytes": self.bytes }))
        })?;
        // Ten times as many small reads: QEMU's throttle lets a short burst through, and the
        // 4 KiB phase must outlast it to show the card's IOPS.
        let read_4k =
            self.measure(|| raw_reads(&dd_file, self.bytes, 4096, self.reads * 10, round))?;
        let read_256k =
            self.measure(|| raw_reads(&dd_file, self.bytes, 256 << 10, self.reads, round))?;
        fs::remove_file(&dd_file)?;

        // Opening the store (manifest, reserve) and making the fan-out directories happen
        // before the clock and the counters start: only the puts are measured.
        let store_dir = self.dir.join("store");
        let store = open_store(&store_dir)?;
        let store_256k = self.measure(|| ingest_store(&store, self.pool, 256 << 10, self.bytes))?;
        drop(store);
        let get_256k =
            self.measure(|| gets(&store_dir, 256 << 10, self.bytes, self.reads, round))?;
        fs::remove_dir_all(&store_dir)?;
        let store = open_store(&store_dir)?;
        let store_64k = self.measure(|| ingest_store(&store, self.pool, 64 << 10, self.bytes))?;
        drop(store);
        fs::remove_dir_all(&store_dir)?;

        let files_dir = self.dir.join("files");
        for i in 0..256 {
            fs::create_dir_all(files_dir.join(format!("{i:02x}")))?;
        }
        let files_256k =
            self.measure(|| ingest_files(&files_dir, self.pool, 256 << 10, self.bytes))?;
        fs::remove_dir_all(&files_dir)?;
        quiesce()?;
        // Whether the kernel sends the card flushes at all (`write back`) or not (`write
        // through`), and how many fields its counters have (flushes are fields 15–16).
        let queue = |f: &str| fs::read_to_string(format!("/sys/block/{}/{f}", self.dev));
        let write_cache = queue("queue/write_cache").unwrap_or_default();
        let stat_fields = queue("stat").unwrap_or_default().split_whitespace().count();
        Ok(serde_json::json!({
            "round": round,
            "write_cache": write_cache.trim(),
            "stat_fields": stat_fields,
            "dd": dd,
            "read_4k": read_4k,
            "read_256k": read_256k,
            "store_256k": store_256k,
            "get_256k": get_256k,
            "store_64k": store_64k,
            "files_256k": files_256k,
        }))
    }
}

/// Writes back everything dirty and drops the page cache, so the next phase starts cold and
/// pays for its own writes only.
fn quiesce() -> anyhow::Result<()> {
    nix::unistd::sync();
    fs::write("/proc/sys/vm/drop_caches", "3")?;
    Ok(())
}

/// (busy, total) jiffies of all CPUs: `/proc/stat`'s `cpu` line; idle and iowait are not busy.
pub fn cpu_jiffies() -> anyhow::Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow::anyhow!("no cpu line in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse().unwrap_or(0))
        .collect();
    anyhow::ensure!(v.len() >= 5, "short cpu line in /proc/stat: {line}");
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    Ok((total - idle, total))
}

fn pool() -> Vec<u8> {
    let mut x = Rng(0x5eed_cafe);
    let mut b = vec![0u8; POOL_BYTES];
    for c in b.chunks_mut(8) {
        c.copy_from_slice(&x.next().to_le_bytes()[..c.len()]);
    }
    b
}

/// `len` bytes of the pool for item `n` (different items start at different places).
fn slice(pool: &[u8], n: u64, len: usize) -> &[u8] {
    let start = (n.wrapping_mul(7919) as usize * 64) % (pool.len() - len + 1);
    &pool[start..start + len]
}

/// xorshift64: ids, offsets and payload bytes need no more.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn shard_id(n: u64, size: usize) -> ShardId {
    let mut r = Rng((n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ size as u64);
    let mut b = [0u8; 32];
    for c in b.chunks_mut(8) {
        c.copy_from_slice(&r.next().to_le_bytes());
    }
    ShardId(b)
}

/// Runs `WRITERS` threads, each doing its share of `count` items through `put`.
fn parallel(count: u64, put: impl Fn(u64) -> anyhow::Result<()> + Sync) -> anyhow::Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let put = &put;
                s.spawn(move || -> anyhow::Result<()> {
                    let mut n = w;
                    while n < count {
                        put(n)?;
                        n += WRITERS;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| anyhow::anyhow!("a writer panicked"))?)
    })
}

/// The node's store: its configuration, opened (reserve included) before the clock starts.
fn open_store(dir: &Path) -> anyhow::Result<Store> {
    let _ = fs::remove_dir_all(dir);
    let memory = cairn_node::config::Config::new(PathBuf::new()).store_memory;
    Ok(Store::open_dir(
        dir,
        cairn_node::node::store_config(memory),
    )?)
}

fn ingest_store(
    store: &Store,
    pool: &[u8],
    size: usize,
    bytes: u64,
) -> anyhow::Result<serde_json::Value> {
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 90 * 24 * 3600;
    let count = bytes / size as u64;
    let before = store.stats();
    let started = Instant::now();
    parallel(count, |n| {
        let id = shard_id(n, size);
        let expiry = until.to_le_bytes();
        // As the node stores a partner's shard (cairn_node::leases::put): its lease record and
        // the shard in one batch.
        let items = [
            (
                cairn_node::leases::lease_id(id),
                &expiry[..],
                cairn_node::leases::LEASES,
                Lease::Until(until),
            ),
            (id, slice(pool, n, size), PAYER, Lease::Forever),
        ];
        store
            .put_many(&items)?
            .into_iter()
            .collect::<Result<(), _>>()?;
        Ok(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    let after = store.stats();
    Ok(serde_json::json!({
        "put_s": secs,
        "payload_bytes": count * size as u64,
        "shards": count,
        "batches": after.batches - before.batches,
        "batched_records": after.batched_records - before.batched_records,
    }))
}

fn ingest_files(
    dir: &Path,
    pool: &[u8],
    size: usize,
    bytes: u64,
) -> anyhow::Result<serde_json::Value> {
    let count = bytes / size as u64;
    let started = Instant::now();
    parallel(count, |n| {
        let id = hex(&shard_id(n, size).0);
        let sub = dir.join(&id[..2]);
        let tmp = sub.join(format!("{id}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(slice(pool, n, size))?;
        f.sync_all()?;
        fs::rename(&tmp, sub.join(&id))?;
        File::open(&sub)?.sync_all()?;
        Ok(())
    })?;
    Ok(serde_json::json!({
        "put_s": started.elapsed().as_secs_f64(),
        "payload_bytes": count * size as u64,
        "shards": count,
    }))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `reads` random reads of `len` bytes, `len`-aligned, past the page cache (`O_DIRECT`), one at
/// a time, from the first `bytes` of `file`.
fn raw_reads(
    file: &Path,
    bytes: u64,
    len: usize,
    reads: u64,
    round: usize,
) -> anyhow::Result<serde_json::Value> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(file)?;
    let mut buf = Aligned::new(len)?;
    let slots = bytes / len as u64;
    let mut r = Rng(0xd1ce + round as u64 * 7 + len as u64);
    let started = Instant::now();
    for _ in 0..reads {
        let at = (r.next() % slots) * len as u64;
        f.read_exact_at(buf.as_mut(), at)?;
    }
    Ok(serde_json::json!({
        "read_s": started.elapsed().as_secs_f64(),
        "reads": reads,
        "len": len,
    }))
}

/// `gets` random gets of the store's shards with a cold cache (dropped by `measure`), through
/// the store's own reads, counted.
fn gets(
    dir: &Path,
    size: usize,
    bytes: u64,
    gets: u64,
    round: usize,
) -> anyhow::Result<serde_json::Value> {
    let counting = CountingStorage::new(std::sync::Arc::new(FileStorage::new(dir)?));
    let counters = counting.counters();
    let memory = cairn_node::config::Config::new(PathBuf::new()).store_memory;
    let started = Instant::now();
    let store = Store::open(
        std::sync::Arc::new(counting),
        cairn_node::node::store_config(memory),
    )?;
    let opened = started.elapsed().as_secs_f64();
    // Opening scans the unsealed segment (recovery), which leaves it in the page cache: drop
    // it again, so every get reads the card.
    quiesce()?;
    let reads0 = counters.reads.load(std::sync::atomic::Ordering::Relaxed);
    let count = bytes / size as u64;
    // Distinct shards (a shuffle's first `gets`), so no get finds its shard in the page cache.
    let mut r = Rng(0x9e7 + round as u64);
    let mut order: Vec<u64> = (0..count).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (r.next() % (i as u64 + 1)) as usize);
    }
    order.truncate(gets as usize);
    let gets = order.len() as u64;
    let t = Instant::now();
    for &n in &order {
        let got = store.get(shard_id(n, size))?;
        anyhow::ensure!(
            got.len() == size,
            "shard {n}: {} bytes, not {size}",
            got.len()
        );
    }
    let get_s = t.elapsed().as_secs_f64();
    let reads = counters.reads.load(std::sync::atomic::Ordering::Relaxed) - reads0;
    Ok(serde_json::json!({
        "open_s": opened,
        "get_s": get_s,
        "gets": gets,
        "store_reads": reads,
    }))
}

/// A page-aligned buffer for `O_DIRECT`.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> anyhow::Result<Aligned> {
        let layout = std::alloc::Layout::from_size_align(len, 4096)?;
        anyhow::ensure!(len > 0, "an empty read buffer");
        // SAFETY: the layout has a non-zero size (checked above).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        anyhow::ensure!(!ptr.is_null(), "out of memory for a {len}-byte buffer");
        Ok(Aligned { ptr, layout })
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised bytes this value owns.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}
