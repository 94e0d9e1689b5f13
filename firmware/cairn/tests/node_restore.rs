//! A plug destroyed and replaced: its owner stores data on six partners, the plug's home (node
//! and vault) is deleted, and a fresh plug is given only the recovery key (through the vault)
//! and the partners' addresses. It restores the data byte-identical, then audits, renews and
//! repairs the old data as the same owner — the partners never paired with it — and takes over
//! the old plug's books on every partner, while a copy of the old plug's card made before the
//! reset is refused by all of them. The same again with one of the six partners forging every
//! shard it is asked for (a test build's fault switch). The services' backups (Jabber's data,
//! under their own key derived from the owner's) come back too, through `cairn backup restore`.
//!
//! Real `cairn` processes on loopback TCP (see `cairn_node::testnet`). The data size is
//! `CAIRN_RESTORE_TEST_MIB` MiB (default [`MIB_DEFAULT`]; see the README's tests list for how
//! long the 256 MiB takes on two cores).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_node::control::Client;
use cairn_node::records::hex;
use cairn_node::testnet::{random_file, same_file, Node, Transport, Vault};
use cairn_vault::seal::AeadKind;
use cairn_vault::shard::{encode_shard, ShardAuth, ShardHeader};
use cairn_vault::ChunkId;
use serde_json::{json, Value};

/// Data stored, in MiB, unless `CAIRN_RESTORE_TEST_MIB` says otherwise.
const MIB_DEFAULT: usize = 256;

/// Seconds a partner may be unseen before its shards are rebuilt elsewhere (short for the test).
const GRACE_SECS: u64 = 3;

/// The scenarios run one at a time: each is eight processes moving the whole data set, and two
/// at once on two cores would only make both slow.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn start(dir: &Path, name: &str, extra: &[&str]) -> Node {
    let grace = GRACE_SECS.to_string();
    let mut flags = vec![
        "--grace",
        grace.as_str(),
        // Rounds run when the test asks for them.
        "--repair-every",
        "100000",
        "--audit-every",
        "100000",
    ];
    flags.extend_from_slice(extra);
    Node::start(
        Path::new(env!("CARGO_BIN_EXE_cairn")),
        dir,
        name,
        Transport::Tcp,
        &flags,
    )
}

/// What `holder`'s books say it holds for `peer` (0 if `peer` is no partner of it).
fn held_for(holder: &Node, peer: &str) -> u64 {
    let st = holder.status();
    st["partners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == peer)
        .map_or(0, |p| n(&p["held_for_them"]))
}

/// Copies the directory `from` to `to` (files only one level down, as a node's home has them
/// but for its store directory, copied one level deeper).
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else if e.file_type().unwrap().is_file() {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A post in snac's data, and its name in the owner's timeline (one file, two names).
const POST: &str = "object/ab/abc.json";
const SHOWN: &str = "user/owner/private/abc.json";

/// The services' backups of `sources`, kept in `web` and placed through the node at `socket`
/// (3-of-6, as the owner's vault here).
fn services_backups(web: &Path, socket: &Path, sources: &[&Path]) -> cairn_web::backup::Backups {
    let nodes = |sock: &Path, owner: &cairn_vault::keys::OwnerKey| {
        let b = std::sync::Arc::new(
            cairn_node::control::NodeBackend::new(sock, owner).map_err(|e| e.to_string())?,
        );
        Ok::<cairn_vault::vault::Backend, String>((b.clone(), b))
    };
    cairn_web::backup::Backups {
        dir: web.join("backup"),
        sources: sources.iter().map(|s| s.to_path_buf()).collect(),
        place: cairn_web::owner_vault::Placement {
            targets: vec![cairn_vault::home::Target::Node(socket.to_path_buf())],
            nodes: std::sync::Arc::new(nodes),
            k: 3,
            n: 6,
        },
        every: Duration::from_secs(86_400),
        status: Default::default(),
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn a_fresh_plug_with_only_the_recovery_key_restores_then_audits_renews_and_repairs() {
    restore(false);
}

/// The same while one of the six partners forges every shard it is asked for: the restore
/// refuses its forgeries, names it and is byte-identical all the same.
#[cfg(feature = "test-fixtures")]
#[test]
fn the_same_restore_succeeds_while_one_of_the_six_partners_forges_every_shard() {
    restore(true);
}

/// The scenario; with `forger`, the last of the six partners forges every shard asked of it.
fn restore(forger: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let began = Instant::now();
    let mib: usize = std::env::var("CAIRN_RESTORE_TEST_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(MIB_DEFAULT);
    let t = tempfile::tempdir().unwrap();
    let mut old = start(t.path(), "old", &[]);
    let mut holders: Vec<Node> = (0..6)
        .map(|i| {
            let hostile: &[&str] = if forger && i == 5 {
                &["--hostile", "forge"]
            } else {
                &[]
            };
            start(t.path(), &format!("h{i}"), hostile)
        })
        .collect();
    let forger_peer = forger.then(|| holders[5].peer());
    for h in &holders {
        old.invite(h);
    }
    // 3-of-6: one shard of every chunk on each partner.
    let v = Vault::init(t.path(), &old, 3, 6);
    let file = t.path().join("data.bin");
    random_file(&file, mib << 20, 11);
    let t0 = Instant::now();
    v.ok(&["put", file.to_str().unwrap()]);
    let put_secs = t0.elapsed().as_secs_f64();
    let chunks = n(&old.status()["chunks"]["full"]);
    assert!(chunks >= (mib / 4) as u64, "{}", old.status());
    let key = v
        .ok(&["recovery-key"])
        .lines()
        .find_map(|l| l.strip_prefix("recovery key:"))
        .expect("recovery key printed")
        .trim()
        .to_owned();

    // The services' backups, as the web makes them, through the same node: another owner key.
    // With honest partners only: a second owner's restore reads from whichever holders answer
    // first, so whether the forger ever hears from the fresh plug for that owner (and refuses
    // the card's copy for it below) is chance, the known gap that a new statement reaches only
    // the holders the new plug asks.
    let prosody = t.path().join("prosody");
    let snac = t.path().join("snac");
    if !forger {
        fs::create_dir_all(prosody.join("hearth%2elocal/accounts")).unwrap();
        fs::write(
            prosody.join("hearth%2elocal/accounts/ada.dat"),
            "return { };",
        )
        .unwrap();
        random_file(&prosody.join("hearth%2elocal/archive.list"), 200_000, 12);
        // snac keeps a post once and links it into each timeline that shows it.
        let (post, shown) = (snac.join(POST), snac.join(SHOWN));
        for name in [&post, &shown] {
            fs::create_dir_all(name.parent().unwrap()).unwrap();
        }
        fs::write(&post, "{}").unwrap();
        fs::hard_link(&post, &shown).unwrap();
        let services = services_backups(&t.path().join("web-old"), &old.sock(), &[&prosody, &snac]);
        let owner = cairn_vault::OwnerSecret::from_recovery_key(&key).unwrap();
        services.prepare(&owner, true).unwrap();
        assert!(matches!(
            services.run_once().unwrap(),
            // Two of Prosody's, two names of snac's post, the list of snac's links.
            cairn_web::backup::Done::Stored { files: 5, .. }
        ));
        copy_dir(&prosody, &t.path().join("prosody-before"));
    }
    // The plug's records: the owner's chunks and the backups' (both owners act through it).
    let chunks = n(&old.status()["chunks"]["full"]);

    // What each partner holds for the old plug, on its books.
    let old_peer = old.peer();
    let booked: Vec<u64> = holders.iter().map(|h| held_for(h, &old_peer)).collect();
    assert!(booked.iter().all(|b| *b > 0), "{booked:?}");

    // A copy of the card is made (its identity key, owners.json, records), then the plug is
    // destroyed: process gone, home (node and vault) gone.
    old.stop();
    copy_dir(&old.home, &t.path().join("card-copy"));
    fs::remove_dir_all(&old.home).unwrap();
    fs::remove_dir_all(&v.home).unwrap();

    // A fresh plug: a new identity, no records, no partners; the owner names the partners.
    let fresh = start(t.path(), "fresh", &[]);
    assert_ne!(fresh.peer(), old_peer);
    for h in &holders {
        let out = fresh.ctl(&["rejoin", &format!("{}/p2p/{}", h.listen, h.peer())]);
        assert!(out.contains(&h.peer()), "{out}");
    }
    let v2 = Vault::at(
        Path::new(env!("CARGO_BIN_EXE_cairn")),
        &t.path().join("vault2"),
    );
    let target = format!("node:{}", fresh.sock().display());
    let restored = t.path().join("restored");
    let t0 = Instant::now();
    let out = v2.ok(&[
        "restore",
        "--recovery-key",
        &key,
        "--target",
        &target,
        restored.to_str().unwrap(),
    ]);
    let restore_secs = t0.elapsed().as_secs_f64();
    assert!(out.contains("snapshot 1, 3-of-6"), "{out}");
    assert!(
        same_file(&file, &restored.join("data.bin")),
        "restored bytes differ"
    );
    if let Some(f) = &forger_peer {
        assert!(
            out.contains("forged") && out.contains(f),
            "the forger {f} is not named: {out}"
        );
    }
    // The services' backups: the owner logged in on the fresh plug first (the old plug's
    // backups are found and wait), then their folders moved away and back from the partners.
    if !forger {
        let owner = cairn_vault::OwnerSecret::from_recovery_key(&key).unwrap();
        let login = services_backups(&t.path().join("web-fresh"), &fresh.sock(), &[]);
        assert!(login.prepare(&owner, false).unwrap());
        assert_eq!(login.waiting(), Some(1));
        fs::remove_dir_all(&prosody).unwrap();
        fs::remove_dir_all(&snac).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["backup", "restore", "--recovery-key", &key, "--data"])
            .arg(t.path().join("web-fresh"))
            .arg("--node")
            .arg(fresh.sock())
            .arg("--source")
            .arg(&prosody)
            .arg("--source")
            .arg(&snac)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("backup snapshot 1 restored"), "{said}");
        assert_eq!(login.waiting(), None);
        let file = |p: &str| fs::metadata(snac.join(p)).unwrap();
        assert_eq!(file(POST).nlink(), 2);
        assert_eq!(file(POST).ino(), file(SHOWN).ino());
        for f in ["accounts/ada.dat", "archive.list"] {
            let f = Path::new("hearth%2elocal").join(f);
            assert!(
                same_file(&t.path().join("prosody-before").join(&f), &prosody.join(&f)),
                "{} differs",
                f.display()
            );
        }
    }

    // The partners took the fresh plug as the same owner's, without pairing.
    for h in &holders {
        let st = h.status();
        let me = st["partners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer"] == fresh.peer())
            .unwrap_or_else(|| panic!("{} does not know the fresh plug: {st}", h.peer()))
            .clone();
        assert_eq!(me["via"], "owner key", "{st}");
    }

    // The fresh plug learnt where every shard is: all chunks recorded, none stuck. Honest
    // partners only: nothing to rebuild. With the forger, the slots it answered forged shards
    // for are bad: rebuilt, but with six partners for six shards only kept here for now.
    let r = json(&fresh.ctl(&["repair"]));
    assert_eq!(r["stuck"], serde_json::json!([]), "{r}");
    let st = fresh.status();
    let recorded = n(&st["chunks"]["chunks"]);
    assert_eq!(recorded, chunks, "{st}");
    if forger {
        assert_eq!(n(&r["repaired"]), recorded, "{r}");
        assert_eq!(n(&r["kept_here"]), recorded, "{r}");
    } else {
        assert_eq!(n(&r["repaired"]), 0, "{r}");
        assert_eq!(n(&st["chunks"]["full"]), recorded, "{st}");
    }

    // Audits: every holder challenged and passing, and every lease renewed by the new plug.
    // (The forger's slots are bad and skipped: their shards are kept here until a partner
    // without one of the chunk comes.)
    let a = json(&fresh.ctl(&["audit"]));
    let holding = if forger { 5 } else { 6 };
    assert_eq!(n(&a["checked"]), recorded * holding, "{a}");
    assert_eq!(n(&a["passed"]), n(&a["checked"]), "{a}");
    assert_eq!(n(&a["renewed"]), n(&a["checked"]), "{a}");

    // Every partner booked what the old plug had placed on it to the fresh plug.
    for (h, b) in holders.iter().zip(&booked) {
        assert_eq!(held_for(h, &fresh.peer()), *b, "{}", h.status());
        assert_eq!(held_for(h, &old_peer), 0, "{}", h.status());
    }
    // Kept across a restart (the holder counts its store again at start).
    holders[1].stop();
    holders[1].spawn();
    assert_eq!(held_for(&holders[1], &fresh.peer()), booked[1]);

    // The card's copy comes back with the old identity: every partner refuses it, saying why.
    let mut copy = start(t.path(), "card-copy", &[]);
    assert_eq!(copy.peer(), old_peer);
    let wait = Instant::now();
    while copy.status()["partners"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["connected"] != true)
    {
        assert!(
            wait.elapsed() < Duration::from_secs(30),
            "{}",
            copy.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // (Each refusal halves the copy's view of a partner's score: it stops asking partners it
    // then counts as gone, so not every shard is challenged.)
    // A read of the snapshot's root record and a put of one of its shards (as the fresh plug
    // reads it) through the copy: refused by the holders, the reason passed on.
    let keys = cairn_vault::OwnerSecret::from_recovery_key(&key)
        .unwrap()
        .keys();
    let owner = hex(&keys.owner_key().public());
    let get = json!({"op": "get_shard", "owner": owner, "chunk": hex(&keys.head_id(1).0),
        "index": 0});
    let (got, _) = Client::connect(&fresh.sock())
        .unwrap()
        .call(get.clone(), &[])
        .unwrap();
    assert_eq!(got["ok"], true, "{got}");
    let refused = Client::connect(&copy.sock()).unwrap().call(get, &[]);
    let e = refused.expect_err("the copy read a shard").to_string();
    assert!(
        e.contains("is superseded by epoch") && e.contains(&fresh.peer()),
        "{e}"
    );
    // A put of a new chunk's shard through the copy: no holder takes it (the copy keeps it,
    // unprotected) and none books anything to the old plug.
    let h = ShardHeader {
        aead: AeadKind::ChaCha20Poly1305,
        k: 2,
        n: 4,
        index: 0,
        sealed_len: 8192,
        chunk: ChunkId([0x7a; 32]),
    };
    let auth = ShardAuth::new(&[0; 32], &h.chunk, vec![[0; 32]; 4]);
    let mut new_shard = Vec::new();
    encode_shard(&h, &[0x42; 4096], &auth, &mut new_shard);
    let mut c = Client::connect(&copy.sock()).unwrap();
    let (put, _) = c
        .call(json!({"op": "put_shard", "owner": owner}), &new_shard)
        .unwrap();
    assert_eq!(put["accepted"], true, "{put}");
    c.call(json!({"op": "flush"}), &[]).unwrap();
    assert_eq!(
        n(&copy.status()["chunks"]["held_here"]),
        1,
        "{}",
        copy.status()
    );
    for h in &holders {
        assert_eq!(held_for(h, &old_peer), 0, "{}", h.status());
    }
    let a = json(&copy.ctl(&["audit"]));
    assert!(n(&a["checked"]) >= 6, "{a}");
    assert_eq!(n(&a["passed"]), 0, "{a}");
    assert_eq!(n(&a["renewed"]), 0, "{a}");
    assert_eq!(n(&a["failed"]), n(&a["checked"]), "{a}");
    let log = copy.log();
    assert!(
        log.contains("is superseded") && log.contains(&fresh.peer()),
        "{log}"
    );
    copy.kill();

    // A partner dies; a newcomer pairs with the fresh plug; repair rebuilds onto it.
    holders[0].kill();
    let newcomer = start(t.path(), "newcomer", &[]);
    fresh.invite(&newcomer);
    std::thread::sleep(Duration::from_secs(GRACE_SECS + 1));
    let t0 = Instant::now();
    let r = json(&fresh.ctl(&["repair"]));
    let repair_secs = t0.elapsed().as_secs_f64();
    assert_eq!(n(&r["repaired"]), recorded, "{r}");
    if forger {
        // The shards kept here go out to the newcomer; those lost with the dead partner are
        // rebuilt and kept here (no partner without a shard of the chunk is left).
        assert_eq!(n(&r["moved_out"]), recorded, "{r}");
        assert_eq!(n(&r["kept_here"]), recorded, "{r}");
    } else {
        assert_eq!(n(&r["shards_placed"]), recorded, "{r}");
        assert_eq!(n(&fresh.status()["chunks"]["full"]), recorded);
    }
    assert_eq!(r["stuck"], serde_json::json!([]), "{r}");

    // Two more partners die: three of six shards are left, the newcomer's among them (with
    // the forger, three honest ones besides it).
    holders[1].kill();
    holders[2].kill();
    let again = t.path().join("again.bin");
    v2.ok(&["get", "data.bin", again.to_str().unwrap()]);
    assert!(same_file(&file, &again), "bytes differ after repair");
    eprintln!(
        "{mib} MiB{}: put {put_secs:.1} s, restore {restore_secs:.1} s ({:.1} MB/s), repair of \
         {recorded} chunks {repair_secs:.1} s, all {:.1} s",
        if forger { " with a forger" } else { "" },
        (mib << 20) as f64 / 1e6 / restore_secs,
        began.elapsed().as_secs_f64()
    );
}
