//! Behaviour of the public API as a user of the store sees it: round trips, persistence,
//! leases, owners, compaction, group commit, ENOSPC, corruption and bad metadata.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_store::sim::{SimRng, SimStorage};
use cairn_store::storage::{CountingStorage, FileStorage, Storage, StorageFile};
use cairn_store::{CompactOptions, Config, Damage, Error, Lease, OwnerId, ShardId, Store};

fn small_config(clock: &Arc<AtomicU64>) -> Config {
    let c = clock.clone();
    Config {
        memory_budget_bytes: 256 << 10,
        segment_bytes: 64 << 10,
        max_shard_bytes: 16 << 10,
        max_batch_bytes: 32 << 10,
        reserve_bytes: 256 << 10,
        clock: Arc::new(move || c.load(Ordering::SeqCst)),
    }
}

fn clock() -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(1_000_000))
}

fn id(n: u64) -> ShardId {
    let mut r = SimRng::new(n.wrapping_mul(0x9E37_79B9));
    let mut b = [0u8; 32];
    r.fill(&mut b);
    ShardId(b)
}

fn payload(n: u64, len: usize) -> Vec<u8> {
    let mut r = SimRng::new(n ^ 0xABCD);
    let mut b = vec![0u8; len];
    r.fill(&mut b);
    b
}

const ALICE: OwnerId = OwnerId([0xA1; 32]);
const BOB: OwnerId = OwnerId([0xB0; 32]);

#[test]
fn shards_survive_reopen_across_many_segments_and_index_runs() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    {
        let s = Store::open_dir(dir.path(), small_config(&c)).unwrap();
        for n in 0..3000 {
            s.put(
                id(n),
                &payload(n, (n % 700) as usize),
                ALICE,
                Lease::Forever,
            )
            .unwrap();
        }
        let st = s.stats();
        assert_eq!(st.shards, 3000);
        assert!(st.segments > 10, "{st:?}");
        assert!(st.index_runs >= 1, "{st:?}");
    }
    let s = Store::open_dir(dir.path(), small_config(&c)).unwrap();
    for n in 0..3000 {
        assert_eq!(s.get(id(n)).unwrap(), payload(n, (n % 700) as usize));
    }
    let info = s.info(id(5)).unwrap().expect("present");
    assert_eq!(
        (info.owner, info.lease, info.len),
        (ALICE, Lease::Forever, 5)
    );
    assert!(matches!(s.get(id(99_999)), Err(Error::NotFound { .. })));
    assert!(s.info(id(99_999)).unwrap().is_none());
}

#[test]
fn delete_and_overwrite_are_durable_and_accounted() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let s = Store::open_dir(dir.path(), small_config(&c)).unwrap();
    s.put(id(1), b"one", ALICE, Lease::Forever).unwrap();
    s.put(id(2), b"two", ALICE, Lease::Forever).unwrap();
    s.put(id(2), b"two again", BOB, Lease::Forever).unwrap();
    s.delete(id(1)).unwrap();
    assert!(matches!(s.delete(id(1)), Err(Error::NotFound { .. })));
    let st = s.stats();
    assert_eq!(st.shards, 1);
    assert_eq!(st.live_bytes, 96 + 9);
    drop(s);
    let s = Store::open_dir(dir.path(), small_config(&c)).unwrap();
    assert!(matches!(s.get(id(1)), Err(Error::NotFound { .. })));
    assert_eq!(s.get(id(2)).unwrap(), b"two again");
    assert_eq!(s.info(id(2)).unwrap().unwrap().owner, BOB);
    assert_eq!(s.stats().shards, 1);
}

#[test]
fn too_large_shard_is_refused_with_its_id() {
    let c = clock();
    let s = Store::open(Arc::new(SimStorage::new(1)), small_config(&c)).unwrap();
    let e = s
        .put(id(1), &vec![0; 16 << 10 | 1], ALICE, Lease::Forever)
        .unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }));
    assert!(e.to_string().contains(&id(1).to_string()), "{e}");
}

#[test]
fn leases_expire_and_compaction_reclaims_them() {
    let c = clock();
    let s = Store::open(Arc::new(SimStorage::new(2)), small_config(&c)).unwrap();
    let now = c.load(Ordering::SeqCst);
    s.put(id(1), b"short", ALICE, Lease::Until(now + 10))
        .unwrap();
    s.put(id(2), b"long", ALICE, Lease::Until(now + 1000))
        .unwrap();
    s.put(id(3), b"forever", ALICE, Lease::Forever).unwrap();
    assert_eq!(s.get(id(1)).unwrap(), b"short");
    assert_eq!(
        s.info(id(1)).unwrap().unwrap().lease,
        Lease::Until(now + 10)
    );
    c.store(now + 10, Ordering::SeqCst);
    assert!(matches!(s.get(id(1)), Err(Error::NotFound { .. })));
    assert_eq!(s.shards_of(ALICE, None, 10).unwrap().len(), 2);
    assert!(matches!(s.delete(id(1)), Err(Error::NotFound { .. })));
    let rep = s.compact(CompactOptions::default()).unwrap();
    assert_eq!(rep.expired, 1);
    assert_eq!(s.stats().shards, 2);
    // Renewal: putting again with a later lease keeps the shard.
    s.put(id(2), b"long", ALICE, Lease::Until(now + 5000))
        .unwrap();
    c.store(now + 2000, Ordering::SeqCst);
    assert_eq!(s.get(id(2)).unwrap(), b"long");
}

#[test]
fn shards_of_pages_through_one_owner_only() {
    let c = clock();
    let s = Store::open(Arc::new(SimStorage::new(3)), small_config(&c)).unwrap();
    let mut alice = Vec::new();
    for n in 0..2500 {
        let owner = if n % 3 == 0 { BOB } else { ALICE };
        s.put(id(n), &payload(n, 20), owner, Lease::Forever)
            .unwrap();
        if owner == ALICE {
            alice.push(id(n));
        }
    }
    // Some in index runs, some unsealed: the listing merges both.
    assert!(s.stats().index_runs > 0 && s.stats().unsealed_entries > 0);
    s.delete(alice.pop().unwrap()).unwrap();
    alice.sort();
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let page = s.shards_of(ALICE, after, 100).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 100);
        assert!(page.iter().all(|i| i.owner == ALICE && i.len == 20));
        after = Some(page.last().unwrap().id);
        got.extend(page.into_iter().map(|i| i.id));
    }
    assert_eq!(got, alice);
    assert!(s.shards_of(OwnerId([7; 32]), None, 10).unwrap().is_empty());
}

#[test]
fn compaction_reclaims_deleted_space_and_keeps_the_rest() {
    let c = clock();
    let sim = SimStorage::new(4);
    let s = Store::open(Arc::new(sim.clone()), small_config(&c)).unwrap();
    for n in 0..400 {
        s.put(id(n), &payload(n, 2000), ALICE, Lease::Forever)
            .unwrap();
    }
    for n in 0..400 {
        if n % 5 != 0 {
            s.delete(id(n)).unwrap();
        }
    }
    let before = s.stats();
    assert!(before.dead_bytes > 4 * before.live_bytes, "{before:?}");
    let used_before = sim.used_bytes();
    let rep = s.compact(CompactOptions::default()).unwrap();
    assert!(rep.segments_removed > 5, "{rep:?}");
    let after = s.stats();
    assert_eq!(after.shards, 80);
    assert_eq!(after.live_bytes, before.live_bytes);
    assert!(after.dead_bytes < before.dead_bytes / 3, "{after:?}");
    assert!(sim.used_bytes() < used_before / 2);
    assert_eq!(
        after.index_runs, 1,
        "compaction folds the index into one run"
    );
    drop(s);
    let s = Store::open(Arc::new(sim), small_config(&c)).unwrap();
    for n in 0..400 {
        match s.get(id(n)) {
            Ok(b) => {
                assert_eq!(n % 5, 0);
                assert_eq!(b, payload(n, 2000));
            }
            Err(Error::NotFound { .. }) => assert_ne!(n % 5, 0),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn compaction_is_bounded_by_its_read_budget() {
    let c = clock();
    let s = Store::open(Arc::new(SimStorage::new(5)), small_config(&c)).unwrap();
    for n in 0..400 {
        s.put(id(n), &payload(n, 2000), ALICE, Lease::Forever)
            .unwrap();
    }
    for n in 0..400 {
        if n % 4 != 0 {
            s.delete(id(n)).unwrap();
        }
    }
    let opts = CompactOptions {
        min_dead_ratio: 0.5,
        max_read_bytes: 130 << 10,
    };
    let rep = s.compact(opts).unwrap();
    // Wholly dead segments (tombstones only) cost no reading; of the rest only two fit.
    assert!(
        rep.bytes_copied > 0 && rep.bytes_copied <= 2 * (64 << 10) / 4 + 8192,
        "{rep:?}"
    );
    let again = s.compact(CompactOptions::default()).unwrap();
    assert!(
        again.bytes_copied > rep.bytes_copied,
        "the first call stopped early: {again:?}"
    );
    for n in (0..400).step_by(4) {
        assert_eq!(s.get(id(n)).unwrap(), payload(n, 2000));
    }
}

/// Slows every sync so concurrent puts certainly overlap one.
#[derive(Debug)]
struct SlowSync(Arc<dyn Storage>);
struct SlowFile(Arc<dyn StorageFile>);
impl StorageFile for SlowFile {
    fn read_at(&self, b: &mut [u8], o: u64) -> std::io::Result<()> {
        self.0.read_at(b, o)
    }
    fn write_at(&self, b: &[u8], o: u64) -> std::io::Result<()> {
        self.0.write_at(b, o)
    }
    fn sync(&self) -> std::io::Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(5));
        self.0.sync()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn set_len(&self, l: u64) -> std::io::Result<()> {
        self.0.set_len(l)
    }
}
impl Storage for SlowSync {
    fn open(&self, n: &str) -> std::io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(SlowFile(self.0.open(n)?)))
    }
    fn create(&self, n: &str) -> std::io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(SlowFile(self.0.create(n)?)))
    }
    fn remove(&self, n: &str) -> std::io::Result<()> {
        self.0.remove(n)
    }
    fn rename(&self, a: &str, b: &str) -> std::io::Result<()> {
        self.0.rename(a, b)
    }
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.0.list()
    }
    fn sync_dir(&self) -> std::io::Result<()> {
        self.0.sync_dir()
    }
    fn describe(&self, n: &str) -> String {
        self.0.describe(n)
    }
}

#[test]
fn concurrent_puts_share_fsyncs_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path()).unwrap());
    let counting = CountingStorage::new(Arc::new(SlowSync(fs)));
    let counters = counting.counters();
    let c = clock();
    let s = Arc::new(Store::open(Arc::new(counting), small_config(&c)).unwrap());
    let syncs0 = counters.syncs.load(Ordering::SeqCst);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for k in 0..25 {
                    let n = t * 1000 + k;
                    s.put(id(n), &payload(n, 500), ALICE, Lease::Forever)
                        .unwrap();
                    assert_eq!(s.get(id(n)).unwrap(), payload(n, 500));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let syncs = counters.syncs.load(Ordering::SeqCst) - syncs0;
    assert!(syncs < 200, "200 puts took {syncs} syncs: no group commit");
    assert_eq!(s.stats().shards, 200);
    for t in 0..8 {
        for k in 0..25 {
            let n = t * 1000 + k;
            assert_eq!(s.get(id(n)).unwrap(), payload(n, 500));
        }
    }
}

#[test]
fn full_disk_fails_cleanly_stays_readable_and_resumes() {
    let c = clock();
    let sim = SimStorage::new(6);
    let s = Store::open(Arc::new(sim.clone()), small_config(&c)).unwrap();
    sim.set_capacity(sim.used_bytes() + (300 << 10));
    let mut acked = Vec::new();
    let mut err = None;
    for n in 0..1000 {
        match s.put(id(n), &payload(n, 3000), ALICE, Lease::Forever) {
            Ok(()) => acked.push(n),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let e = err.expect("the disk filled up");
    assert!(matches!(e, Error::NoSpace { .. }), "{e}");
    assert!(e.to_string().contains("no space left"), "{e}");
    assert!(!acked.is_empty());
    // Still readable, still consistent; further writes fail the same way.
    for &n in &acked {
        assert_eq!(s.get(id(n)).unwrap(), payload(n, 3000));
    }
    assert!(matches!(
        s.put(id(5000), &payload(5000, 3000), ALICE, Lease::Forever),
        Err(Error::NoSpace { .. })
    ));
    // Space freed elsewhere on the disk: writes resume.
    sim.set_capacity(u64::MAX);
    s.put(id(5001), b"resumed", ALICE, Lease::Forever).unwrap();
    assert_eq!(s.get(id(5001)).unwrap(), b"resumed");
    drop(s);
    let s = Store::open(Arc::new(sim), small_config(&c)).unwrap();
    for &n in &acked {
        assert_eq!(s.get(id(n)).unwrap(), payload(n, 3000));
    }
    assert!(s.verify().unwrap().damaged.is_empty());
}

#[test]
fn deleting_and_compacting_frees_space_on_a_full_disk() {
    let c = clock();
    let sim = SimStorage::new(7);
    let s = Store::open(Arc::new(sim.clone()), small_config(&c)).unwrap();
    assert!(
        sim.file_bytes("RESERVE").is_some(),
        "the reserve is held from the start"
    );
    sim.set_capacity(sim.used_bytes() + (1 << 20));
    let mut stored = Vec::new();
    for n in 0..10_000 {
        match s.put(id(n), &payload(n, 3000), ALICE, Lease::Forever) {
            Ok(()) => stored.push(n),
            Err(Error::NoSpace { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(stored.len() > 100, "{}", stored.len());
    // Deleting on the full disk still works (drawing on the reserve) and so does compaction.
    let doomed: Vec<ShardId> = stored
        .iter()
        .filter(|n| *n % 10 != 0)
        .map(|&n| id(n))
        .collect();
    for r in s.delete_many(&doomed).unwrap() {
        r.unwrap();
    }
    let rep = s.compact(CompactOptions::default()).unwrap();
    assert!(rep.bytes_reclaimed > 512 << 10, "{rep:?}");
    let mut fresh = 0;
    for n in 20_000..20_100 {
        if s.put(id(n), &payload(n, 3000), ALICE, Lease::Forever)
            .is_ok()
        {
            fresh += 1;
        }
    }
    assert!(fresh > 50, "only {fresh} puts fit after compaction");
    for n in stored.iter().filter(|n| *n % 10 == 0) {
        assert_eq!(s.get(id(*n)).unwrap(), payload(*n, 3000));
    }
}

#[test]
fn the_reserve_can_be_made_after_open_and_then_serves_a_full_disk() {
    let c = clock();
    let sim = SimStorage::new(8);
    let s = Store::open_reserve_later(Arc::new(sim.clone()), small_config(&c)).unwrap();
    assert!(
        sim.file_bytes("RESERVE").is_none(),
        "open_reserve_later writes no reserve"
    );
    s.put(id(1), b"before the reserve", ALICE, Lease::Forever)
        .unwrap();
    assert!(s.ensure_reserve());
    assert_eq!(
        sim.file_bytes("RESERVE").map(|b| b.len()),
        Some(256 << 10),
        "the reserve is held once ensure_reserve returns"
    );
    assert!(s.ensure_reserve(), "a second call finds it held");
    // From then on a full disk behaves as after `Store::open`: deletes draw on the reserve.
    sim.set_capacity(sim.used_bytes() + (256 << 10));
    let mut stored = Vec::new();
    for n in 2..10_000 {
        match s.put(id(n), &payload(n, 3000), ALICE, Lease::Forever) {
            Ok(()) => stored.push(n),
            Err(Error::NoSpace { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(stored.len() > 10, "{}", stored.len());
    let doomed: Vec<ShardId> = stored.iter().map(|&n| id(n)).collect();
    for r in s.delete_many(&doomed).unwrap() {
        r.unwrap();
    }
    assert_eq!(s.get(id(1)).unwrap(), b"before the reserve");
    // A store opened the usual way over it finds the reserve there.
    drop(s);
    sim.set_capacity(u64::MAX);
    let s = Store::open(Arc::new(sim.clone()), small_config(&c)).unwrap();
    assert!(sim.file_bytes("RESERVE").is_some());
    assert_eq!(s.get(id(1)).unwrap(), b"before the reserve");
}

/// Finds where `needle` sits in a file of the simulated medium.
fn find(sim: &SimStorage, file: &str, needle: &[u8]) -> Option<u64> {
    let b = sim.file_bytes(file)?;
    b.windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p as u64)
}

#[test]
fn flipped_bit_gives_an_error_naming_the_shard_and_verify_finds_it() {
    let c = clock();
    let sim = SimStorage::new(8);
    let s = Store::open(Arc::new(sim.clone()), small_config(&c)).unwrap();
    for n in 0..50 {
        s.put(id(n), &payload(n, 1000), ALICE, Lease::Forever)
            .unwrap();
    }
    s.flush_index().unwrap();
    drop(s);
    let victim = 17;
    let (seg, at) = sim
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("seg-"))
        .find_map(|n| find(&sim, &n, &payload(victim, 1000)).map(|a| (n, a)))
        .expect("payload on disk");
    sim.flip_bit(&seg, at + 500, 3).unwrap();
    let s = Store::open(Arc::new(sim.clone()), small_config(&c)).unwrap();
    let e = s.get(id(victim)).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&id(victim).to_string()) && msg.contains(&seg),
        "{msg}"
    );
    for n in (0..50).filter(|&n| n != victim) {
        assert_eq!(s.get(id(n)).unwrap(), payload(n, 1000));
    }
    let rep = s.verify().unwrap();
    assert_eq!(rep.records_checked, 50);
    assert_eq!(rep.damaged.len(), 1, "{:?}", rep.damaged);
    assert!(matches!(&rep.damaged[0], Damage::Shard { id: d, .. } if *d == id(victim)));
}

#[test]
fn random_bit_flips_never_yield_wrong_bytes_and_verify_reports_each_damaged_shard() {
    for seed in 0..40u64 {
        let c = clock();
        let sim = SimStorage::new(seed);
        let s = Store::open(Arc::new(sim.clone()), small_config(&c)).unwrap();
        for n in 0..120 {
            s.put(id(n), &payload(n, 1500), ALICE, Lease::Forever)
                .unwrap();
        }
        s.flush_index().unwrap();
        drop(s);
        for _ in 0..5 {
            sim.flip_random_bit("seg-");
        }
        let s = Store::open(Arc::new(sim.clone()), small_config(&c)).unwrap();
        let mut corrupt = Vec::new();
        for n in 0..120 {
            match s.get(id(n)) {
                Ok(b) => assert_eq!(b, payload(n, 1500), "seed {seed}: wrong bytes"),
                Err(Error::Corrupt { id: d, .. }) => {
                    assert_eq!(d, id(n));
                    corrupt.push(id(n));
                }
                Err(e) => panic!("seed {seed}: {e}"),
            }
        }
        let mut reported: Vec<ShardId> = s
            .verify()
            .unwrap()
            .damaged
            .into_iter()
            .filter_map(|d| match d {
                Damage::Shard { id, .. } => Some(id),
                Damage::IndexPage { .. } => None,
            })
            .collect();
        reported.sort();
        corrupt.sort();
        assert_eq!(reported, corrupt, "seed {seed}");
    }
}

#[test]
fn damaged_index_page_is_named_by_get_and_verify() {
    let c = clock();
    let sim = SimStorage::new(9);
    let s = Store::open(Arc::new(sim.clone()), small_config(&c)).unwrap();
    for n in 0..100 {
        s.put(id(n), &payload(n, 10), ALICE, Lease::Forever)
            .unwrap();
    }
    s.flush_index().unwrap();
    drop(s);
    let run = sim
        .list()
        .unwrap()
        .into_iter()
        .find(|n| n.starts_with("idx-"))
        .expect("an index run");
    sim.flip_bit(&run, 100, 0).unwrap();
    let s = Store::open(Arc::new(sim.clone()), small_config(&c)).unwrap();
    let errors = (0..100).filter(|&n| s.get(id(n)).is_err()).count();
    assert!(errors > 0);
    let e = (0..100).find_map(|n| s.get(id(n)).err()).unwrap();
    assert!(
        e.to_string().contains(&run) && e.to_string().contains("page 0"),
        "{e}"
    );
    let rep = s.verify().unwrap();
    assert!(rep
        .damaged
        .iter()
        .any(|d| matches!(d, Damage::IndexPage { file, page: 0 } if file.contains(&run))));
}

#[test]
fn damaged_manifest_or_run_footer_is_a_clear_error_and_touches_nothing() {
    let c = clock();
    let sim = SimStorage::new(10);
    let s = Store::open(Arc::new(sim.clone()), small_config(&c)).unwrap();
    for n in 0..100 {
        s.put(id(n), &payload(n, 10), ALICE, Lease::Forever)
            .unwrap();
    }
    s.flush_index().unwrap();
    drop(s);
    let files_before: BTreeMap<String, Vec<u8>> = sim
        .list()
        .unwrap()
        .into_iter()
        .map(|n| {
            let b = sim.file_bytes(&n).unwrap();
            (n, b)
        })
        .collect();
    sim.flip_bit("MANIFEST", 20, 1).unwrap();
    let e = Store::open(Arc::new(sim.clone()), small_config(&c)).unwrap_err();
    assert!(
        e.to_string().contains("MANIFEST") && e.to_string().contains("damaged"),
        "{e}"
    );
    sim.flip_bit("MANIFEST", 20, 1).unwrap();
    let run = files_before.keys().find(|n| n.starts_with("idx-")).unwrap();
    let len = files_before[run].len() as u64;
    sim.flip_bit(run, len - 30, 2).unwrap();
    let e = Store::open(Arc::new(sim.clone()), small_config(&c)).unwrap_err();
    assert!(e.to_string().contains(run.as_str()), "{e}");
    sim.flip_bit(run, len - 30, 2).unwrap();
    // Nothing was changed by the failed opens.
    for (n, b) in &files_before {
        assert_eq!(&sim.file_bytes(n).unwrap(), b, "{n} changed");
    }
    let s = Store::open(Arc::new(sim), small_config(&c)).unwrap();
    assert_eq!(s.get(id(3)).unwrap(), payload(3, 10));
}

#[test]
fn missing_manifest_with_data_present_refuses_to_start_over() {
    let c = clock();
    let sim = SimStorage::new(11);
    let s = Store::open(Arc::new(sim.clone()), small_config(&c)).unwrap();
    s.put(id(1), b"x", ALICE, Lease::Forever).unwrap();
    drop(s);
    sim.remove("MANIFEST").unwrap();
    let e = Store::open(Arc::new(sim.clone()), small_config(&c)).unwrap_err();
    assert!(e.to_string().contains("manifest missing"), "{e}");
    assert!(sim.file_bytes("seg-00000001.log").is_some());
}

#[test]
fn bad_config_is_refused() {
    let c = clock();
    let mut cfg = small_config(&c);
    cfg.segment_bytes = 100;
    let e = Store::open(Arc::new(SimStorage::new(1)), cfg).unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
}
