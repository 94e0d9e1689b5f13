//! Benchmark of the chunk store, run by `scripts/bench store`; writes named figures as JSON.
//!
//! Every ratio is measured in the same run on the same disk (the directory given):
//! durable ingest with 4 writers against `dd conv=fsync` of the same bytes, against a
//! file-per-shard store (temp file, fsync, rename, fsync dir) and against redb (one
//! committed transaction per shard, fsync'd, so equally durable); random gets with a cold
//! page cache and the reads each costs through the `Storage` trait; RAM per shard from the
//! RSS of a child process opening stores of 250 k and 1 M shards; write amplification from
//! `/proc/self/io`; open time after a `kill -9` of a writer of the 1 M-shard store.
//!
//! Usage: `bench OUT.json [WORKDIR]`. Internal child modes: `bench ram DIR`,
//! `bench crashwrite DIR`.

use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_store::sim::SimRng;
use cairn_store::{
    CompactOptions, Config, CountingStorage, FileStorage, Lease, OwnerId, ShardId, Store,
};

const WRITERS: u64 = 4;
const OWNER: OwnerId = OwnerId([0x42; 32]);
/// Shards in the RAM and open-time store (64-byte payloads).
const MILLION: u64 = 1_000_000;

fn id_of(n: u64, salt: u64) -> ShardId {
    let mut r = SimRng::new(n ^ salt.rotate_left(40));
    let mut b = [0u8; 32];
    r.fill(&mut b);
    ShardId(b)
}

/// A pool of random bytes that shard payloads are sliced from (so generating them costs
/// nothing during timing).
fn pool() -> Arc<Vec<u8>> {
    let mut b = vec![0u8; 16 << 20];
    SimRng::new(99).fill(&mut b);
    Arc::new(b)
}

fn payload(pool: &[u8], n: u64, len: usize) -> &[u8] {
    let start = (n.wrapping_mul(7919) as usize * 64) % (pool.len() - len);
    &pool[start..start + len]
}

fn rss_bytes() -> u64 {
    let s = fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn io_write_bytes() -> u64 {
    let s = fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    s.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .expect("write_bytes")
        .trim()
        .parse()
        .unwrap()
}

/// Drops the page cache of every file in `dir` (clean pages only; they all are after fsync).
fn evict(dir: &Path) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        if let Ok(f) = fs::File::open(e.path()) {
            let _ = f.sync_all();
            // SAFETY: a plain advisory call on an open descriptor.
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn fresh_dir(p: &Path) -> PathBuf {
    let _ = fs::remove_dir_all(p);
    fs::create_dir_all(p).unwrap();
    p.to_path_buf()
}

fn dd_secs(dir: &Path, total: u64) -> f64 {
    let f = dir.join("dd.bin");
    let t = Instant::now();
    let st = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", f.display()))
        .arg("bs=1M")
        .arg(format!("count={}", total >> 20))
        .arg("conv=fsync")
        .arg("status=none")
        .status()
        .expect("dd");
    let secs = t.elapsed().as_secs_f64();
    assert!(st.success(), "dd failed");
    fs::remove_file(f).unwrap();
    secs
}

/// Runs `WRITERS` threads, each putting its share of `count` shards through `put`.
fn parallel(count: u64, put: impl Fn(u64) + Sync) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let put = &put;
            s.spawn(move || {
                let mut n = w;
                while n < count {
                    put(n);
                    n += WRITERS;
                }
            });
        }
    });
    t.elapsed().as_secs_f64()
}

fn store_cfg() -> Config {
    Config {
        reserve_bytes: 0,
        ..Config::default()
    }
}

/// Returns (seconds, device bytes written, shards per fsync).
fn ingest_ours(dir: &Path, pool: &[u8], size: usize, count: u64) -> (f64, u64, f64) {
    let store = Store::open_dir(dir, store_cfg()).unwrap();
    let w0 = io_write_bytes();
    let secs = parallel(count, |n| {
        store
            .put(
                id_of(n, size as u64),
                payload(pool, n, size),
                OWNER,
                Lease::Forever,
            )
            .unwrap()
    });
    let st = store.stats();
    (
        secs,
        io_write_bytes() - w0,
        st.batched_records as f64 / st.batches.max(1) as f64,
    )
}

fn ingest_file_per_shard(dir: &Path, pool: &[u8], size: usize, count: u64) -> f64 {
    for i in 0..256 {
        fs::create_dir_all(dir.join(format!("{i:02x}"))).unwrap();
    }
    parallel(count, |n| {
        let id = id_of(n, size as u64).to_string();
        let sub = dir.join(&id[..2]);
        let tmp = sub.join(format!("{id}.tmp"));
        let mut f = fs::File::create(&tmp).unwrap();
        f.write_all(payload(pool, n, size)).unwrap();
        f.sync_all().unwrap();
        fs::rename(&tmp, sub.join(&id)).unwrap();
        fs::File::open(&sub).unwrap().sync_all().unwrap();
    })
}

const TABLE: redb::TableDefinition<'_, &[u8; 32], &[u8]> = redb::TableDefinition::new("shards");

fn ingest_redb(dir: &Path, pool: &[u8], size: usize, count: u64) -> f64 {
    let db = redb::Database::create(dir.join("shards.redb")).unwrap();
    // One transaction per shard, committed with redb's default durability (fsync before
    // commit returns): the same promise as our put.
    parallel(count, |n| {
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(TABLE).unwrap();
            t.insert(&id_of(n, size as u64).0, payload(pool, n, size))
                .unwrap();
        }
        tx.commit().unwrap();
    })
}

/// Random gets with a cold page cache; returns (MB/s, reads per get).
fn random_gets(dir: &Path, salt: u64, count: u64, gets: u64, expect_len: usize) -> (f64, f64) {
    evict(dir);
    let counting = CountingStorage::new(Arc::new(FileStorage::new(dir).unwrap()));
    let counters = counting.counters();
    let store = Store::open(Arc::new(counting), store_cfg()).unwrap();
    let mut rng = SimRng::new(salt ^ 0xD1CE);
    let reads0 = counters.reads.load(Ordering::SeqCst);
    let t = Instant::now();
    let mut bytes = 0u64;
    for _ in 0..gets {
        let n = rng.below(count);
        let b = store.get(id_of(n, salt)).unwrap();
        assert_eq!(b.len(), expect_len);
        bytes += b.len() as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    let reads = counters.reads.load(Ordering::SeqCst) - reads0;
    (bytes as f64 / 1e6 / secs, reads as f64 / gets as f64)
}

fn build_small_shards(dir: &Path, from: u64, to: u64) {
    let store = Store::open_dir(dir, store_cfg()).unwrap();
    let body = [0x5Au8; 64];
    let mut n = from;
    while n < to {
        let end = (n + 8192).min(to);
        let items: Vec<(ShardId, &[u8], OwnerId, Lease)> = (n..end)
            .map(|k| (id_of(k, 64), &body[..], OWNER, Lease::Forever))
            .collect();
        for r in store.put_many(&items).unwrap() {
            r.unwrap();
        }
        n = end;
    }
    store.flush_index().unwrap();
}

/// RSS growth of a fresh process opening the store at `dir` (child mode `ram`).
fn ram_probe(me: &Path, dir: &Path) -> (u64, f64) {
    let out = Command::new(me).arg("ram").arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "ram probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    let mut it = s.split_whitespace();
    let delta: u64 = it.next().unwrap().parse().unwrap();
    let ms: f64 = it.next().unwrap().parse().unwrap();
    (delta, ms)
}

fn child_ram(dir: &str) {
    let before = rss_bytes();
    let t = Instant::now();
    let store = Store::open_dir(dir, store_cfg()).unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    // Touch the summaries the way gets do.
    for n in 0..1000 {
        let _ = store.get(id_of(n, 64));
    }
    let after = rss_bytes();
    println!("{} {ms}", after.saturating_sub(before));
}

fn child_crashwrite(dir: &str) {
    let store = Store::open_dir(dir, store_cfg()).unwrap();
    let body = [0xC3u8; 64];
    let mut n = 10_000_000u64;
    let mut first = true;
    loop {
        let items: Vec<(ShardId, &[u8], OwnerId, Lease)> = (n..n + 4096)
            .map(|k| (id_of(k, 65), &body[..], OWNER, Lease::Forever))
            .collect();
        for r in store.put_many(&items).unwrap() {
            r.unwrap();
        }
        n += 4096;
        if first {
            println!("ready");
            std::io::stdout().flush().unwrap();
            first = false;
        }
    }
}

/// The named figures, written as one JSON object.
struct Figures(serde_json::Map<String, serde_json::Value>);

impl Figures {
    fn num(&mut self, k: &str, v: f64) {
        eprintln!("  {k} = {v:.4}");
        // Four decimals, the figure as printed (a non-finite one becomes null).
        let v: f64 = format!("{v:.4}").parse().unwrap_or(v);
        self.0.insert(k.into(), v.into());
    }
    fn int(&mut self, k: &str, v: u64) {
        eprintln!("  {k} = {v}");
        self.0.insert(k.into(), v.into());
    }
    fn json(&self) -> String {
        serde_json::to_string_pretty(&self.0).expect("figures are JSON") + "\n"
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("ram") => return child_ram(&args[2]),
        Some("crashwrite") => return child_crashwrite(&args[2]),
        Some(_) => {}
        None => {
            eprintln!("usage: bench OUT.json [WORKDIR]");
            std::process::exit(2);
        }
    }
    let out = PathBuf::from(&args[1]);
    let work = args
        .get(2)
        .map(PathBuf::from)
        .unwrap_or_else(|| out.parent().unwrap_or(Path::new(".")).join("store-work"));
    let me = std::env::current_exe().unwrap();
    let pool = pool();
    let mut f = Figures(serde_json::Map::new());
    let started = Instant::now();

    // 1. Durable ingest, 256 KiB and 64 KiB shards, 4 writers, against dd and baselines.
    for (size, total) in [(256usize << 10, 2u64 << 30), (64 << 10, 2 << 30)] {
        let count = total / size as u64;
        let k = size >> 10;
        eprintln!("ingest {count} shards of {k} KiB ({} MiB)", total >> 20);
        // dd before and after ours: the disk's write cache makes single runs noisy.
        let d = fresh_dir(&work.join("dd"));
        let dd_before = dd_secs(&d, total);
        let ours_dir = fresh_dir(&work.join(format!("ours-{k}k")));
        let (ours, written, per_sync) = ingest_ours(&ours_dir, &pool, size, count);
        let dd_after = dd_secs(&d, total);
        let dd = (dd_before + dd_after) / 2.0;
        f.num(&format!("ingest_vs_dd_{k}k"), dd / ours);
        f.num(&format!("ingest_mb_s_{k}k"), total as f64 / 1e6 / ours);
        f.num(&format!("dd_mb_s_{k}k"), total as f64 / 1e6 / dd);
        f.num(&format!("shards_per_fsync_{k}k"), per_sync);
        if size == 256 << 10 {
            f.num("write_amplification", written as f64 / total as f64);
            let fps_dir = fresh_dir(&work.join("file-per-shard"));
            let fps = ingest_file_per_shard(&fps_dir, &pool, size, count);
            f.num("vs_file_per_shard_256k", fps / ours);
            let _ = fs::remove_dir_all(&fps_dir);
            let kv_dir = fresh_dir(&work.join("redb"));
            let kv = ingest_redb(&kv_dir, &pool, size, count);
            f.num("vs_kv_256k", kv / ours);
            let _ = fs::remove_dir_all(&kv_dir);
            let (mb_s, rpg) = random_gets(&ours_dir, size as u64, count, 1000, size);
            f.num("get_mb_s", mb_s);
            f.num("reads_per_get_256k", rpg);
        }
        let _ = fs::remove_dir_all(&ours_dir);
    }

    // 2. A million small shards: RAM per shard (two sizes give the slope), reads per get.
    eprintln!("building a store of {MILLION} small shards");
    let mdir = fresh_dir(&work.join("million"));
    build_small_shards(&mdir, 0, MILLION / 4);
    let (delta_q, _) = ram_probe(&me, &mdir);
    build_small_shards(&mdir, MILLION / 4, MILLION);
    let (delta_m, open_ms) = ram_probe(&me, &mdir);
    let slope = (delta_m as f64 - delta_q as f64) / (MILLION as f64 * 0.75);
    f.num("ram_bytes_per_shard", slope);
    f.int("ram_rss_delta_bytes_1m", delta_m);
    f.int("ram_rss_delta_bytes_250k", delta_q);
    f.num("ram_fixed_bytes", delta_m as f64 - slope * MILLION as f64);
    f.num("open_clean_ms_1m", open_ms);
    let (_, rpg) = random_gets(&mdir, 64, MILLION, 20_000, 64);
    f.num("reads_per_get", rpg);
    {
        let store = Store::open_dir(&mdir, store_cfg()).unwrap();
        f.int("index_runs_before_compact", store.stats().index_runs);
        store.compact(CompactOptions::default()).unwrap();
    }
    let (_, rpg) = random_gets(&mdir, 64, MILLION, 20_000, 64);
    f.num("reads_per_get_after_compact", rpg);

    // 3. Open after kill -9 of a writer of the large store.
    let mut child = Command::new(&me)
        .arg("crashwrite")
        .arg(&mdir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    std::thread::sleep(Duration::from_millis(700));
    child.kill().unwrap();
    child.wait().unwrap();
    evict(&mdir);
    let t = Instant::now();
    let store = Store::open_dir(&mdir, store_cfg()).unwrap();
    f.num("open_after_crash_ms", t.elapsed().as_secs_f64() * 1e3);
    f.int("open_after_crash_store_bytes", dir_bytes(&mdir));
    f.int("open_after_crash_shards", store.stats().shards);
    drop(store);
    let _ = fs::remove_dir_all(&work);
    f.num("bench_seconds", started.elapsed().as_secs_f64());
    fs::create_dir_all(out.parent().unwrap_or(Path::new("."))).unwrap();
    fs::write(&out, f.json()).unwrap();
    eprintln!("wrote {}", out.display());
}
