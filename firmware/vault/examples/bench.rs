//! The vault benchmark: single-core MB/s of each put stage and of the whole pipeline, the
//! pipeline's ratio to its serial limit, its scaling on all cores, the same bytes as one stream
//! through `Vault::batch` (a web upload) against `put`, and the peak RSS of a real 4 GiB
//! `cairn vault put` and of a batch of it, each in a child process. Writes one JSON object of
//! named figures.
//!
//! `bench OUT.json [--size-mib N] [--rss-gib G] [--work DIR]`; `--rss-gib 0` skips the RSS run;
//! `CAIRN_BENCH_WORKERS=W` sets the batch RSS run's workers (default: the vault's).
//! (Internal: `bench --child HOME PASSFILE init DIR…|put FILE|batch FILE` does what
//! `cairn vault --quiet init|put` does, or a web upload, through the library, and prints its
//! VmHWM.)

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use cairn_vault::chunker::Chunker;
use cairn_vault::home::{Config, Target};
use cairn_vault::keys::{Kind, OwnerSecret};
use cairn_vault::progress::NoProgress;
use cairn_vault::seal::{nonce_for, seal_in_place, sealed_len};
use cairn_vault::shard::Codec;
use cairn_vault::{AeadKind, DirStore, KdfParams, NoNode, ShardError, ShardId, ShardSink, Vault};
use reed_solomon_erasure::galois_8::ReedSolomon;

/// Counts shard bytes and drops them: the pipeline's compute without the storage under it.
struct Discard(AtomicU64);

impl ShardSink for Discard {
    fn put_shard(&self, _id: &ShardId, shard: &[u8]) -> Result<(), ShardError> {
        self.0.fetch_add(shard.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Best of three runs of `f` over `bytes` bytes, in MB/s.
fn rate(bytes: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    bytes as f64 / best / 1e6
}

fn xorshift_fill(buf: &mut [u8], mut s: u64) {
    for w in buf.chunks_mut(8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let b = s.to_le_bytes();
        w.copy_from_slice(&b[..w.len()]);
    }
}

fn vmhwm_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        if let Err(e) = child(&args[2..]) {
            eprintln!("cairn vault: {e}");
            std::process::exit(1);
        }
        eprintln!("VmHWM_kib {}", vmhwm_kib());
        return;
    }
    let out = PathBuf::from(args.get(1).expect("usage: bench OUT.json [options]"));
    let opt = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(default)
    };
    let size = opt("--size-mib", 256) as usize * 1024 * 1024;
    let rss_gib = opt("--rss-gib", 4);
    let work = args
        .iter()
        .position(|a| a == "--work")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("cairn-vault-bench"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let mut data = vec![0u8; size];
    xorshift_fill(&mut data, 0x1234_5678_9abc_def1);
    let keys = OwnerSecret::from_bytes([7; 32]).keys();
    let mut figures = serde_json::Map::new();
    let mut num = |name: &str, v: f64| {
        eprintln!("{name:>28} {v:10.2}");
        // Three decimals (a non-finite figure becomes null).
        let v: f64 = format!("{v:.3}").parse().unwrap_or(v);
        figures.insert(name.into(), v.into());
    };

    // memcpy, for scale (the chunker's figure includes the copy reading makes).
    let mut dst = vec![0u8; 1 << 20];
    let memcpy = rate(size, || {
        for c in data.chunks(1 << 20) {
            dst[..c.len()].copy_from_slice(c);
            std::hint::black_box(&dst);
        }
    });
    num("memcpy_mb_s", memcpy);

    // FastCDC as the vault runs it: reading 128 KiB at a time into the chunk's buffer (the
    // copy a read from the page cache makes) and cutting with the keyed gear.
    let chunker = Chunker::new(keys.chunker_seed());
    let mut chunks: Vec<(usize, usize)> = Vec::new();
    let (mut cbuf, mut carry) = (Vec::with_capacity(8 << 20), Vec::new());
    let fastcdc = rate(size, || {
        chunks.clear();
        carry.clear();
        let mut r: &[u8] = &data;
        let mut pos = 0;
        while chunker.next_chunk(&mut r, &mut cbuf, &mut carry).unwrap() {
            chunks.push((pos, cbuf.len()));
            pos += cbuf.len();
        }
    });
    num("fastcdc_mb_s", fastcdc);
    num(
        "chunks_per_256mib",
        chunks.len() as f64 * (256 << 20) as f64 / size as f64,
    );

    // The stages after the chunker work on a chunk just copied into its buffer (warm in the
    // cache), as in the pipeline: each is timed per chunk, the copy in is not.
    let mut buf: Vec<u8> =
        Vec::with_capacity(sealed_len(cairn_vault::chunker::CHUNK_BYTES_MAX) + 16);
    let mut per_chunk = |prep: &mut dyn FnMut(&mut Vec<u8>, usize, usize),
                         stage: &mut dyn FnMut(&mut Vec<u8>)| {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let mut secs = 0.0;
            for &(p, l) in &chunks {
                prep(&mut buf, p, l);
                let t = Instant::now();
                stage(&mut buf);
                secs += t.elapsed().as_secs_f64();
            }
            best = best.min(secs);
        }
        size as f64 / best / 1e6
    };
    let mut copy_in = |b: &mut Vec<u8>, p: usize, l: usize| {
        b.clear();
        b.extend_from_slice(&data[p..p + l]);
    };
    let blake3 = per_chunk(&mut copy_in, &mut |b| {
        std::hint::black_box(keys.chunk_id(Kind::Data, b));
    });
    num("blake3_mb_s", blake3);
    let mut seal_with = |aead: AeadKind| {
        per_chunk(&mut copy_in, &mut |b| {
            let id = cairn_vault::ChunkId([1; 32]);
            let nonce = nonce_for(&keys, Kind::Data, &id, b);
            seal_in_place(&keys, aead, Kind::Data, &id, nonce, b);
            std::hint::black_box(&b);
        })
    };
    let chacha = seal_with(AeadKind::ChaCha20Poly1305);
    let aes = seal_with(AeadKind::Aes256Gcm);
    num("chacha20_poly1305_mb_s", chacha);
    num("aes_256_gcm_mb_s", aes);
    let aead = if aes > chacha {
        AeadKind::Aes256Gcm
    } else {
        AeadKind::ChaCha20Poly1305
    };

    // Reed–Solomon parity alone, over 1 MiB stripes.
    let rs_rate = |k: usize, m: usize| {
        let rs = ReedSolomon::new(k, m).unwrap();
        let stripe = 1 << 20;
        let len = stripe / k;
        let mut parity = vec![0u8; len * m];
        rate(size, || {
            for c in data.chunks_exact(len * k) {
                let d: Vec<&[u8]> = c.chunks(len).collect();
                let mut p: Vec<&mut [u8]> = parity.chunks_mut(len).collect();
                rs.encode_sep(&d, &mut p).unwrap();
            }
        })
    };
    num("rs_4_4_mb_s", rs_rate(4, 4));
    num("rs_10_4_mb_s", rs_rate(10, 4));

    // The encode stage as the pipeline runs it: parity plus framing (header, copy, CRC-32C) of
    // all 8 shards of each sealed chunk (MB/s of chunk bytes).
    let codec = Codec::new(4, 8).unwrap();
    let (mut parity, mut frame) = (Vec::new(), Vec::new());
    let encode = per_chunk(
        &mut |b, p, l| {
            copy_in(b, p, l);
            b.resize(sealed_len(l), 0);
        },
        &mut |b| {
            codec
                .encode(
                    &cairn_vault::ChunkId([2; 32]),
                    aead,
                    b,
                    &mut parity,
                    &mut frame,
                    cairn_vault::shard::Authority::Owner(&[2; 32]),
                    |_, s| {
                        std::hint::black_box(s);
                        Ok(())
                    },
                )
                .unwrap();
        },
    );
    num("encode_frame_4_8_mb_s", encode);

    // The whole pipeline: a real put of a file in tmpfs (read = a copy from the page cache),
    // shards handed to a sink that drops them.
    let shm = Path::new("/dev/shm");
    let data_dir = if shm.is_dir() {
        shm.join(format!("cairn-vault-bench-{}", std::process::id()))
    } else {
        work.join("data")
    };
    fs::create_dir_all(&data_dir).unwrap();
    let file = data_dir.join("data.bin");
    fs::write(&file, &data).unwrap();
    drop(data);
    let mut run = 0;
    // Each run puts into a new vault (a new key: nothing deduplicates); only the put is timed;
    // best of five, as the build machine is shared. `batch`: the same bytes as one stream
    // through `Vault::batch` (what a web upload does) instead of `put`.
    let mut pipeline = |workers: usize, batch: bool| {
        let mut best = f64::MAX;
        for _ in 0..5 {
            run += 1;
            let home = work.join(format!("home{run}"));
            let dirs: Vec<PathBuf> = (0..8).map(|i| work.join(format!("t{run}-{i}"))).collect();
            let cfg = Config {
                k: 4,
                n: 8,
                aead,
                targets: dirs.iter().map(|d| Target::Dir(d.clone())).collect(),
            };
            let kdf = KdfParams {
                m_kib: 64,
                t: 1,
                p: 1,
            };
            let mut v = Vault::init(&home, cfg, b"bench", kdf, &NoNode).unwrap();
            v.set_backend(
                Arc::new(Discard(AtomicU64::new(0))),
                Arc::new(DirStore::new(dirs)),
            );
            v.set_workers(workers);
            let t = Instant::now();
            let r = if batch {
                let mut b = v.batch().unwrap();
                let f = fs::File::open(&file).unwrap();
                b.add_file("data.bin", f, 0o644, SystemTime::now(), &mut NoProgress)
                    .unwrap();
                b.commit().unwrap()
            } else {
                v.put(&[&file], &mut NoProgress).unwrap()
            };
            best = best.min(t.elapsed().as_secs_f64());
            assert_eq!(r.bytes as usize, size);
        }
        size as f64 / best / 1e6
    };
    let one = pipeline(0, false);
    let all = pipeline(cores, false);
    let batch_all = pipeline(cores, true);
    let _ = fs::remove_dir_all(&data_dir);
    let aead_rate = if aead == AeadKind::Aes256Gcm {
        aes
    } else {
        chacha
    };
    // The pipeline's stages: read+cut, id, seal, encode+frame.
    let serial = 1.0 / (1.0 / fastcdc + 1.0 / blake3 + 1.0 / aead_rate + 1.0 / encode);
    num("serial_limit_mb_s", serial);
    num("pipeline_mb_s", one);
    num("pipeline_vs_serial_limit", one / serial);
    num("cores", cores as f64);
    num("pipeline_all_cores_mb_s", all);
    num("scaling_all_cores", all / (cores as f64 * one));
    num("batch_all_cores_mb_s", batch_all);
    num("batch_vs_put_all_cores", batch_all / all);

    if rss_gib > 0 {
        num("peak_rss_mib_4g", rss_put(&work, rss_gib, "put"));
        num("peak_rss_mib_4g_batch", rss_put(&work, rss_gib, "batch"));
    }

    figures.insert("aead_chosen".into(), aead.name().into());
    figures.insert("bench_size_mib".into(), (size >> 20).into());
    figures.insert("rss_put_gib".into(), rss_gib.into());
    let json = serde_json::to_string_pretty(&figures).expect("figures are JSON") + "\n";
    if let Some(p) = out.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(&out, json).unwrap();
    let _ = fs::remove_dir_all(&work);
    eprintln!("wrote {}", out.display());
}

/// `HOME PASSFILE init DIR…`, `HOME PASSFILE put FILE` or `… batch FILE`: what `cairn vault --quiet init` (4-of-8,
/// the faster AEAD here) and `cairn vault --quiet put` do, in this process.
fn child(args: &[String]) -> cairn_vault::Result<()> {
    let [home, pass, cmd, rest @ ..] = args else {
        panic!("usage: bench --child HOME PASSFILE init DIR…|put FILE|batch FILE");
    };
    let home = Path::new(home);
    let pass = fs::read(pass).unwrap();
    let pass = pass.split(|&b| b == b'\n').next().unwrap_or(&[]);
    match cmd.as_str() {
        "init" => {
            let config = Config {
                k: 4,
                n: 8,
                aead: AeadKind::fastest_here(50),
                targets: rest.iter().map(|d| Target::Dir(d.into())).collect(),
            };
            Vault::init(home, config, pass, KdfParams::default(), &NoNode).map(drop)
        }
        "put" => Vault::open(home, pass, &NoNode)?
            .put(rest, &mut NoProgress)
            .map(drop),
        // What a web upload does: the file as one stream through a batch. The peak is reset
        // once the vault is open, so it is the batch's own (not Argon2's, which a web service
        // pays at login).
        "batch" => {
            let mut v = Vault::open(home, pass, &NoNode)?;
            if let Some(w) = std::env::var("CAIRN_BENCH_WORKERS")
                .ok()
                .and_then(|w| w.parse().ok())
            {
                v.set_workers(w);
            }
            let _ = fs::write("/proc/self/clear_refs", "5");
            let mut b = v.batch()?;
            let f = fs::File::open(&rest[0]).unwrap();
            b.add_file("big.bin", f, 0o644, SystemTime::now(), &mut NoProgress)?;
            b.commit().map(drop)
        }
        c => panic!("bench --child: unknown command {c}"),
    }
}

/// Puts a `gib` GiB random file in a child process as `cairn vault put` does (4-of-8 over
/// directories; `cmd` "batch": as a web upload does) and returns the child's peak RSS in MiB.
fn rss_put(work: &Path, gib: u64, cmd: &str) -> f64 {
    let dir = work.join("rss");
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("big.bin");
    {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(&file).unwrap());
        let mut block = vec![0u8; 1 << 20];
        for i in 0..gib * 1024 {
            xorshift_fill(&mut block, 0x9e37_79b9_7f4a_7c15 ^ i);
            f.write_all(&block).unwrap();
        }
        f.flush().unwrap();
    }
    let pass = dir.join("pass");
    fs::write(&pass, "bench passphrase\n").unwrap();
    let exe = std::env::current_exe().unwrap();
    let base = |cmd: &[&str]| {
        let mut c = std::process::Command::new(&exe);
        c.arg("--child").arg(dir.join("home")).arg(&pass).args(cmd);
        c
    };
    let mut init = base(&["init"]);
    for i in 0..8 {
        init.arg(dir.join(format!("t{i}")));
    }
    init.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    assert!(init.status().unwrap().success(), "vault init failed");
    let t = Instant::now();
    let out = base(&[cmd, file.to_str().unwrap()]).output().unwrap();
    let secs = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vault {cmd} failed: {err}");
    eprintln!("{} GiB {cmd} with shards to disk in {secs:.1} s", gib);
    let kib: f64 = err
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM_kib "))
        .and_then(|v| v.trim().parse().ok())
        .expect("child reports VmHWM");
    let _ = fs::remove_dir_all(&dir);
    kib / 1024.0
}
