//! A plug destroyed and replaced: its owner stores data on six partners, the plug's home (node
//! and vault) is deleted, and a fresh plug is given only the recovery key (through the vault)
//! and the partners' addresses. It restores the data byte-identical, then audits, renews and
//! repairs the old data as the same owner — the partners never paired with it.
//!
//! Real `cairn` processes on loopback TCP (see `cairn_node::testnet`). The data size is
//! `CAIRN_RESTORE_TEST_MIB` MiB (default [`MIB_DEFAULT`], so the test stays well under a minute on
//! two cores; the 256 MiB is `CAIRN_RESTORE_TEST_MIB=256`).

use std::fs;
use std::path::Path;
use std::time::Duration;

use cairn_node::testnet::{random_file, same_file, Node, Transport, Vault};
use serde_json::Value;

/// Data stored, in MiB, unless `CAIRN_RESTORE_TEST_MIB` says otherwise.
const MIB_DEFAULT: usize = 64;

/// Seconds a partner may be unseen before its shards are rebuilt elsewhere (short for the test).
const GRACE_SECS: u64 = 3;

fn start(dir: &Path, name: &str) -> Node {
    let grace = GRACE_SECS.to_string();
    let flags = [
        "--grace",
        grace.as_str(),
        // Rounds run when the test asks for them.
        "--repair-every",
        "100000",
        "--audit-every",
        "100000",
    ];
    Node::start(
        Path::new(env!("CARGO_BIN_EXE_cairn")),
        dir,
        name,
        Transport::Tcp,
        &flags,
    )
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn a_fresh_plug_with_only_the_recovery_key_restores_then_audits_renews_and_repairs() {
    let mib: usize = std::env::var("CAIRN_RESTORE_TEST_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(MIB_DEFAULT);
    let t = tempfile::tempdir().unwrap();
    let mut old = start(t.path(), "old");
    let mut holders: Vec<Node> = (0..6).map(|i| start(t.path(), &format!("h{i}"))).collect();
    for h in &holders {
        old.invite(h);
    }
    // 3-of-6: one shard of every chunk on each partner.
    let v = Vault::init(t.path(), &old, 3, 6);
    let file = t.path().join("data.bin");
    random_file(&file, mib << 20, 11);
    v.ok(&["put", file.to_str().unwrap()]);
    let chunks = n(&old.status()["chunks"]["full"]);
    assert!(chunks >= (mib / 4) as u64, "{}", old.status());
    let key = v
        .ok(&["recovery-key"])
        .lines()
        .find_map(|l| l.strip_prefix("recovery key:"))
        .expect("recovery key printed")
        .trim()
        .to_owned();

    // The plug is destroyed: process gone, home (node and vault) gone.
    let old_peer = old.peer();
    old.kill();
    fs::remove_dir_all(&old.home).unwrap();
    fs::remove_dir_all(&v.home).unwrap();

    // A fresh plug: a new identity, no records, no partners; the owner names the partners.
    let fresh = start(t.path(), "fresh");
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
    let out = v2.ok(&[
        "restore",
        "--recovery-key",
        &key,
        "--target",
        &target,
        restored.to_str().unwrap(),
    ]);
    assert!(out.contains("snapshot 1, 3-of-6"), "{out}");
    assert!(
        same_file(&file, &restored.join("data.bin")),
        "restored bytes differ"
    );
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

    // The fresh plug learnt where every shard is: nothing to rebuild, all chunks full.
    let r = json(&fresh.ctl(&["repair"]));
    assert_eq!(n(&r["repaired"]), 0, "{r}");
    assert_eq!(r["stuck"], serde_json::json!([]), "{r}");
    // Every chunk the old plug had (data, manifest, root record) is recorded again, in full.
    let st = fresh.status();
    let recorded = n(&st["chunks"]["chunks"]);
    assert_eq!(recorded, chunks, "{st}");
    assert_eq!(n(&st["chunks"]["full"]), recorded, "{st}");

    // Audits: every holder challenged and passing, and every lease renewed by the new plug.
    let a = json(&fresh.ctl(&["audit"]));
    assert_eq!(n(&a["checked"]), recorded * 6, "{a}");
    assert_eq!(n(&a["passed"]), n(&a["checked"]), "{a}");
    assert_eq!(n(&a["renewed"]), n(&a["checked"]), "{a}");

    // A partner dies; a newcomer pairs with the fresh plug; repair rebuilds onto it.
    holders[0].kill();
    let newcomer = start(t.path(), "newcomer");
    fresh.invite(&newcomer);
    std::thread::sleep(Duration::from_secs(GRACE_SECS + 1));
    let r = json(&fresh.ctl(&["repair"]));
    assert_eq!(n(&r["repaired"]), recorded, "{r}");
    assert_eq!(n(&r["shards_placed"]), recorded, "{r}");
    assert_eq!(r["stuck"], serde_json::json!([]), "{r}");
    assert_eq!(n(&fresh.status()["chunks"]["full"]), recorded);

    // Two more partners die: three of six shards are left, the newcomer's among them.
    holders[1].kill();
    holders[2].kill();
    let again = t.path().join("again.bin");
    v2.ok(&["get", "data.bin", again.to_str().unwrap()]);
    assert!(same_file(&file, &again), "bytes differ after repair");
}
