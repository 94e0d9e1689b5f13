//! Storage nodes as real processes of the `cairn` binary on loopback (TCP and QUIC): pairing,
//! placing a vault across partners, losing nodes, repair, hostile and freeloading partners,
//! restarts. Each node gets its own home in a temporary directory and is killed on drop.

use std::fs;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use cairn_node::testnet::{random_file, same_file, Node, Transport, Vault};
use serde_json::Value;

fn start(dir: &Path, name: &str, t: Transport, extra: &[&str]) -> Node {
    Node::start(Path::new(env!("CARGO_BIN_EXE_cairn")), dir, name, t, extra)
}

fn partner<'a>(status: &'a Value, peer: &str) -> &'a Value {
    status["partners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == peer)
        .unwrap_or_else(|| panic!("{peer} is not a partner: {status}"))
}

#[test]
fn two_plugs_pair_by_their_pairing_windows_and_a_third_makes_it_an_overlap() {
    let t = tempfile::tempdir().unwrap();
    let a = start(t.path(), "a", Transport::Tcp, &[]);
    let b_boot = format!("{}/p2p/{}", a.listen, a.peer());
    let b = start(t.path(), "b", Transport::Quic, &["--bootstrap", &b_boot]);
    // Both buttons pressed: both windows open at about the same time.
    let (pa, pb) = std::thread::scope(|s| {
        let ha = s.spawn(|| a.ctl(&["pair", "--window", "20"]));
        let hb = s.spawn(|| b.ctl(&["pair", "--window", "20"]));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    // Each names the other, and both show the same six digits for their owners to compare.
    let code = |said: &str, peer: &str| -> String {
        let rest = said
            .trim()
            .strip_prefix(&format!("paired with {peer}, code "))
            .unwrap_or_else(|| panic!("{said}"));
        let code = rest
            .strip_suffix(" (the other plug shows the same)")
            .unwrap_or_else(|| panic!("{said}"));
        assert!(
            code.len() == 7
                && code.chars().enumerate().all(|(i, c)| if i == 3 {
                    c == ' '
                } else {
                    c.is_ascii_digit()
                }),
            "{said}"
        );
        code.to_string()
    };
    assert_eq!(code(&pa, &b.peer()), code(&pb, &a.peer()));
    assert_eq!(partner(&a.status(), &b.peer())["via"], "button");
    assert_eq!(partner(&b.status(), &a.peer())["via"], "button");
    // The node's log lines (`tracing` events, printed by `cairn node run` on stderr) as a person,
    // the plug's log ring and the QEMU tests read them.
    let log = a.log();
    for line in [
        format!(
            "cairn-node: {} starting, control {}",
            a.peer(),
            a.sock().display()
        ),
        format!("cairn-node: listening on {}", a.listen),
        format!("cairn-node: paired with {} (button)", b.peer()),
    ] {
        assert!(log.lines().any(|l| l == line), "{line:?} not in:\n{log}");
    }

    // A window that nobody else opens ends with a clear message, and pairs with nobody.
    let o = a.try_ctl(&["pair", "--window", "2"]).unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no other plug"));

    // Three plugs in pairing mode at once: nobody can tell which is meant, so all refuse.
    let c = start(t.path(), "c", Transport::Tcp, &["--bootstrap", &b_boot]);
    let d_boot = format!("{}/p2p/{}", c.listen, c.peer());
    let d = start(
        t.path(),
        "d",
        Transport::Tcp,
        &["--bootstrap", &b_boot, "--bootstrap", &d_boot],
    );
    let outs: Vec<Output> = std::thread::scope(|s| {
        let hs: Vec<_> = [&a, &c, &d]
            .iter()
            .map(|n| s.spawn(|| n.try_ctl(&["pair", "--window", "20"]).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &outs {
        assert!(
            !o.status.success(),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.contains("refused") && e.contains("plugs are in pairing mode"),
            "{e}"
        );
    }
    assert_eq!(c.status()["partners"].as_array().unwrap().len(), 0);
    assert_eq!(a.status()["partners"].as_array().unwrap().len(), 1);
}

#[test]
fn one_gib_on_eight_partners_survives_four_losses_and_repair_restores_full_redundancy() {
    let t = tempfile::tempdir().unwrap();
    let fast = [
        "--grace",
        "3",
        "--repair-every",
        "100000",
        "--capacity",
        "2G",
        "--allowance",
        "1G",
    ];
    let owner = start(t.path(), "owner", Transport::Tcp, &fast);
    let mut holders: Vec<Node> = (0..8)
        .map(|i| {
            let tr = if i % 2 == 0 {
                Transport::Tcp
            } else {
                Transport::Quic
            };
            start(t.path(), &format!("h{i}"), tr, &fast)
        })
        .collect();
    for h in &holders {
        owner.invite(h);
    }
    let v = Vault::init(t.path(), &owner, 4, 8);
    let file = t.path().join("big.bin");
    random_file(&file, 1 << 30, 7);
    v.ok(&["put", file.to_str().unwrap()]);
    let st = owner.status();
    let chunks = st["chunks"]["chunks"].as_u64().unwrap();
    assert!(chunks >= 512, "{st}");
    assert_eq!(st["chunks"]["full"].as_u64().unwrap(), chunks, "{st}");
    // Every holder got an eighth: one shard of every chunk.
    for h in &holders {
        let held = partner(&st, &h.peer())["held_for_us"].as_u64().unwrap();
        assert!(
            held > (1 << 30) / 4 / 8 * 7 / 8,
            "{} holds only {held}",
            h.peer()
        );
    }

    // Four plugs die. Any four shards of each chunk are enough.
    for h in holders.iter_mut().take(4) {
        h.kill();
    }
    let out = t.path().join("restored.bin");
    v.ok(&["get", "big.bin", out.to_str().unwrap()]);
    assert!(same_file(&file, &out), "restored bytes differ");
    fs::remove_file(&out).unwrap();

    // Newcomers join; once the grace period is over, repair rebuilds the lost shards on them.
    let newcomers: Vec<Node> = (0..4)
        .map(|i| start(t.path(), &format!("new{i}"), Transport::Tcp, &fast))
        .collect();
    for n in &newcomers {
        owner.invite(n);
    }
    std::thread::sleep(Duration::from_secs(4));
    let r: Value = serde_json::from_str(&owner.ctl(&["repair"])).unwrap();
    assert_eq!(r["repaired"].as_u64().unwrap(), chunks, "{r}");
    assert_eq!(r["stuck"].as_array().unwrap().len(), 0, "{r}");
    let st = owner.status();
    assert_eq!(st["chunks"]["full"].as_u64().unwrap(), chunks, "{st}");

    // Full redundancy again: the four survivors may now fail too, the newcomers carry it.
    for h in holders.iter_mut().skip(4) {
        h.kill();
    }
    v.ok(&["get", "big.bin", out.to_str().unwrap()]);
    assert!(same_file(&file, &out), "restored bytes differ after repair");
}

/// The liar is a test build's fault switch (`--hostile`, feature `test-fixtures`).
#[cfg(feature = "test-fixtures")]
#[test]
fn a_partner_returning_wrong_bytes_fails_audits_is_scored_down_and_reads_still_succeed() {
    let t = tempfile::tempdir().unwrap();
    let mut owner = start(t.path(), "owner", Transport::Tcp, &[]);
    let honest: Vec<Node> = (0..3)
        .map(|i| start(t.path(), &format!("h{i}"), Transport::Tcp, &[]))
        .collect();
    let liar = start(
        t.path(),
        "liar",
        Transport::Quic,
        &["--hostile", "wrong-bytes"],
    );
    for h in honest.iter().chain([&liar]) {
        owner.invite(h);
    }
    let v = Vault::init(t.path(), &owner, 2, 4);
    let file = t.path().join("f.bin");
    random_file(&file, 20 << 20, 3);
    v.ok(&["put", file.to_str().unwrap()]);
    let a: Value = serde_json::from_str(&owner.ctl(&["audit"])).unwrap();
    let liar_fails = a["failed_by"][liar.peer()].as_u64().unwrap_or(0);
    assert!(liar_fails > 0, "{a}");
    assert_eq!(
        a["failed"].as_u64().unwrap(),
        liar_fails,
        "only the liar fails: {a}"
    );
    let st = owner.status();
    // Below the minimum score the liar counts as gone: its shards are due for repair elsewhere.
    let liar = partner(&st, &liar.peer());
    assert!(liar["score"].as_f64().unwrap() < 0.2, "{st}");
    assert_eq!(liar["health"], "gone", "{st}");
    for h in &honest {
        let p = partner(&st, &h.peer());
        assert!(p["score"].as_f64().unwrap() > 0.5, "{st}");
        assert_eq!(p["health"], "live", "{st}");
    }
    assert_eq!(st["chunks"]["degraded"], st["chunks"]["chunks"], "{st}");
    // The record survives a restart of the owner's node.
    let liar_peer = liar["peer"].as_str().unwrap().to_owned();
    owner.stop();
    owner.spawn();
    let st = owner.status();
    assert_eq!(partner(&st, &liar_peer)["health"], "gone", "{st}");
    let out = t.path().join("out.bin");
    v.ok(&["get", "f.bin", out.to_str().unwrap()]);
    assert!(same_file(&file, &out));
}

/// A restore with no placement records (the owner's node lost its chunk store, as a new plug
/// with the same partners has none) while one partner forges every shard it is asked for: the
/// right header and checksum around its own payload, the chunk's digests and tag copied. The
/// vault refuses each forgery by its tag, asks the node again around the forger, restores the
/// file byte-identical and names the forger. The forger is a test build's fault switch.
#[cfg(feature = "test-fixtures")]
#[test]
fn a_restore_without_records_succeeds_while_a_partner_forges_every_shard_and_names_it() {
    let t = tempfile::tempdir().unwrap();
    let mut owner = start(t.path(), "owner", Transport::Tcp, &[]);
    let honest: Vec<Node> = (0..3)
        .map(|i| start(t.path(), &format!("h{i}"), Transport::Tcp, &[]))
        .collect();
    let forger = start(t.path(), "forger", Transport::Tcp, &["--hostile", "forge"]);
    for h in honest.iter().chain([&forger]) {
        owner.invite(h);
    }
    let v = Vault::init(t.path(), &owner, 2, 4);
    let file = t.path().join("f.bin");
    random_file(&file, 6 << 20, 11);
    v.ok(&["put", file.to_str().unwrap()]);

    owner.stop();
    fs::remove_dir_all(owner.home.join("store")).unwrap();
    owner.spawn();
    let t0 = std::time::Instant::now();
    loop {
        let st = owner.status();
        assert_eq!(st["chunks"]["chunks"], 0, "records survived: {st}");
        let partners = st["partners"].as_array().unwrap();
        if partners.len() == 4 && partners.iter().all(|p| p["connected"] == true) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "partners not back: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = t.path().join("out.bin");
    let said = v.ok(&["get", "f.bin", out.to_str().unwrap()]);
    assert!(same_file(&file, &out), "restored bytes differ");
    assert!(
        said.contains("forged") && said.contains(&forger.peer()),
        "the forger {} is not named: {said}\nowner: {}\nforger: {}",
        forger.peer(),
        owner.log(),
        forger.log()
    );
    for h in &honest {
        assert!(
            !said.contains(&h.peer()),
            "an honest partner is named: {said}"
        );
    }
}

/// The largest segment of a holder's chunk store (`seg-….log`): mostly shard payloads.
fn largest_segment(home: &Path) -> std::path::PathBuf {
    fs::read_dir(home.join("store"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("seg-") && name.ends_with(".log")
        })
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .expect("a segment")
}

#[test]
fn a_shard_damaged_on_a_holders_disk_fails_its_audit_and_the_next_repair_places_it_again() {
    let t = tempfile::tempdir().unwrap();
    let owner = start(t.path(), "owner", Transport::Tcp, &[]);
    let holders: Vec<Node> = (0..3)
        .map(|i| start(t.path(), &format!("h{i}"), Transport::Tcp, &[]))
        .collect();
    for h in &holders {
        owner.invite(h);
    }
    let v = Vault::init(t.path(), &owner, 2, 3);
    let file = t.path().join("f.bin");
    random_file(&file, 3 << 20, 7);
    v.ok(&["put", file.to_str().unwrap()]);
    let st = owner.status();
    let chunks = st["chunks"]["chunks"].as_u64().unwrap();
    assert_eq!(st["chunks"]["full"].as_u64().unwrap(), chunks, "{st}");

    // One byte flipped in the middle of h0's largest segment, under the running process.
    let seg = largest_segment(&holders[0].home);
    let mut bytes = fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();

    let a: Value = serde_json::from_str(&owner.ctl(&["audit"])).unwrap();
    assert_eq!(a["failed"].as_u64().unwrap(), 1, "{a}");
    assert_eq!(a["failed_by"][holders[0].peer()].as_u64(), Some(1), "{a}");
    let st = owner.status();
    assert_eq!(st["chunks"]["degraded"].as_u64().unwrap(), 1, "{st}");

    let r: Value = serde_json::from_str(&owner.ctl(&["repair"])).unwrap();
    assert_eq!(r["repaired"].as_u64().unwrap(), 1, "{r}");
    assert_eq!(r["shards_placed"].as_u64().unwrap(), 1, "{r}");
    whole_again(&owner, &v, t.path(), &file, chunks);
}

/// Flips one bit in the middle of the largest segment of `home`'s chunk store, in place (the
/// node may be reading the file: no moment without it).
/// After a damaged shard was placed again: every shard, the new one included, passes its audit
/// twice (the prepared challenges of a new placement, then whole-shard reads), all `chunks`
/// are fully redundant, and `f.bin` reads back the same as `file`.
fn whole_again(owner: &Node, v: &Vault, dir: &Path, file: &Path, chunks: u64) {
    for _ in 0..2 {
        let a: Value = serde_json::from_str(&owner.ctl(&["audit"])).unwrap();
        assert_eq!(a["failed"].as_u64().unwrap(), 0, "{a}");
        assert_eq!(a["passed"], a["checked"], "{a}");
    }
    let st = owner.status();
    assert_eq!(st["chunks"]["full"].as_u64().unwrap(), chunks, "{st}");
    let out = dir.join("out.bin");
    v.ok(&["get", "f.bin", out.to_str().unwrap()]);
    assert!(same_file(file, &out));
}

fn flip_a_bit(home: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let seg = largest_segment(home);
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    let mid = f.metadata().unwrap().len() / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(mid)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(mid)).unwrap();
    f.write_all(&[b[0] ^ 0x01]).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn a_shard_damaged_on_a_holders_disk_is_found_by_its_scrub_and_the_owner_places_it_again() {
    let t = tempfile::tempdir().unwrap();
    let owner = start(t.path(), "owner", Transport::Tcp, &[]);
    // h0 scrubs every second, as fast as it can read; the others once a day.
    let scrubbing = ["--scrub-every", "1", "--scrub-rate", "1G"];
    let holders: Vec<Node> = (0..3)
        .map(|i| {
            let extra: &[&str] = if i == 0 { &scrubbing } else { &[] };
            start(t.path(), &format!("h{i}"), Transport::Tcp, extra)
        })
        .collect();
    for h in &holders {
        owner.invite(h);
    }
    let v = Vault::init(t.path(), &owner, 2, 3);
    let file = t.path().join("f.bin");
    random_file(&file, 3 << 20, 11);
    v.ok(&["put", file.to_str().unwrap()]);
    let st = owner.status();
    let chunks = st["chunks"]["chunks"].as_u64().unwrap();
    assert_eq!(st["chunks"]["full"].as_u64().unwrap(), chunks, "{st}");

    // A bit flipped under the running h0; nobody reads or audits that shard: h0's scrub finds
    // it (bounded wait: a pass every second).
    flip_a_bit(&holders[0].home);
    let mut found = Value::Null;
    for _ in 0..300 {
        found = holders[0].status()["scrub"].clone();
        if found["damaged"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(found["damaged"].as_u64(), Some(1), "h0's scrub: {found}");
    assert!(found["checked"].as_u64().unwrap() > 1, "{found}");

    // The owner's next repair round hears of it from h0 and places the shard again.
    let r: Value = serde_json::from_str(&owner.ctl(&["repair"])).unwrap();
    assert_eq!(r["lost"].as_u64().unwrap(), 1, "{r}");
    assert_eq!(r["repaired"].as_u64().unwrap(), 1, "{r}");
    assert_eq!(r["shards_placed"].as_u64().unwrap(), 1, "{r}");
    // Told once: the next round hears nothing more and has nothing to do.
    let r: Value = serde_json::from_str(&owner.ctl(&["repair"])).unwrap();
    assert_eq!(r["lost"].as_u64().unwrap(), 0, "{r}");
    assert_eq!(r["repaired"].as_u64().unwrap(), 0, "{r}");
    whole_again(&owner, &v, t.path(), &file, chunks);
}

#[test]
fn a_freeloader_is_refused_beyond_its_allowance_with_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let tight = ["--allowance", "2M"];
    let freeloader = start(t.path(), "freeloader", Transport::Tcp, &[]);
    let holders: Vec<Node> = (0..2)
        .map(|i| start(t.path(), &format!("h{i}"), Transport::Tcp, &tight))
        .collect();
    for h in &holders {
        h.invite(&freeloader);
    }
    let v = Vault::init(t.path(), &freeloader, 1, 2);
    let small = t.path().join("small.bin");
    random_file(&small, 1 << 20, 1);
    v.ok(&["put", small.to_str().unwrap()]);
    let big = t.path().join("big.bin");
    random_file(&big, 16 << 20, 2);
    let o = v.run(&["put", big.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("refusing") && e.contains("allowance 2097152"),
        "{e}"
    );
    // The holders kept serving: what was stored within the allowance still reads back.
    let out = t.path().join("out.bin");
    v.ok(&["get", "small.bin", out.to_str().unwrap()]);
    assert!(same_file(&small, &out));
    for h in &holders {
        let held = partner(&h.status(), &freeloader.peer())["held_for_them"]
            .as_u64()
            .unwrap();
        assert!(
            held <= 2 << 20,
            "holder keeps {held} bytes beyond the allowance"
        );
    }
}

#[test]
fn every_node_restarts_and_everything_is_still_readable() {
    let t = tempfile::tempdir().unwrap();
    let mut owner = start(t.path(), "owner", Transport::Tcp, &[]);
    let mut holders: Vec<Node> = (0..4)
        .map(|i| {
            let tr = if i % 2 == 0 {
                Transport::Quic
            } else {
                Transport::Tcp
            };
            start(t.path(), &format!("h{i}"), tr, &[])
        })
        .collect();
    for h in &holders {
        owner.invite(h);
    }
    let v = Vault::init(t.path(), &owner, 2, 4);
    let file = t.path().join("f.bin");
    random_file(&file, 30 << 20, 9);
    v.ok(&["put", file.to_str().unwrap()]);
    let before = owner.status();
    owner.stop();
    for h in holders.iter_mut() {
        h.stop();
    }
    for h in holders.iter_mut() {
        h.spawn();
    }
    owner.spawn();
    let after = owner.status();
    assert_eq!(after["peer"], before["peer"], "identity kept");
    assert_eq!(after["chunks"]["chunks"], before["chunks"]["chunks"]);
    for h in &holders {
        assert_eq!(
            partner(&after, &h.peer())["held_for_us"],
            partner(&before, &h.peer())["held_for_us"],
            "books rebuilt from the records"
        );
    }
    let out = t.path().join("out.bin");
    v.ok(&["get", "f.bin", out.to_str().unwrap()]);
    assert!(same_file(&file, &out));
}

#[test]
fn an_invitation_pairs_once_and_not_after_it_expires() {
    let t = tempfile::tempdir().unwrap();
    let a = start(t.path(), "a", Transport::Tcp, &[]);
    let b = start(t.path(), "b", Transport::Quic, &[]);
    let c = start(t.path(), "c", Transport::Tcp, &[]);
    let code = a.ctl(&["invite"]);
    assert!(b.ctl(&["join", code.trim()]).contains(&a.peer()));
    // The same code again, from another plug: single use.
    let o = c.try_ctl(&["join", code.trim()]).unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("unknown or already used invitation"), "{e}");
    // An expired one.
    let code = a.ctl(&["invite", "--ttl", "1"]);
    std::thread::sleep(Duration::from_millis(2100));
    let o = c.try_ctl(&["join", code.trim()]).unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("expired"));
    // A damaged one says so.
    let o = c.try_ctl(&["join", "cairn1-00ff"]).unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("cut short"));
    assert_eq!(a.status()["partners"].as_array().unwrap().len(), 1);
    assert_eq!(c.status()["partners"].as_array().unwrap().len(), 0);
}

/// Without `test-fixtures` the fault switch is not there: `--hostile` is an unknown argument
/// and no hostile mode's name is in the binary (scripts/test builds with the feature;
/// `hil-tests/tests/product_binary.rs` checks the product image's build the same way).
#[cfg(not(feature = "test-fixtures"))]
#[test]
fn the_build_without_test_fixtures_has_no_fault_switch() {
    let exe = Path::new(env!("CARGO_BIN_EXE_cairn"));
    // A home that cannot be one (a file): a binary that took the switch fails at once too.
    let o = std::process::Command::new(exe)
        .args(["node", "run", "--home"])
        .arg(exe)
        .args([
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--hostile",
            "wrong-bytes",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("unexpected argument '--hostile'"),
        "--hostile is accepted: {o:?}"
    );
    let bytes = fs::read(exe).unwrap();
    assert!(
        !bytes.windows(11).any(|w| w == b"wrong-bytes"),
        "{}: the fault switch's code is in the binary",
        exe.display()
    );
}

/// The remote addresses of `peer`'s open connections, as `status` shows them, once there is one.
fn links_once_connected(node: &Node, peer: &str) -> Vec<String> {
    let t = std::time::Instant::now();
    loop {
        let links: Vec<String> = partner(&node.status(), peer)["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_owned())
            .collect();
        if !links.is_empty() {
            return links;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "never connected to {peer}: {}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Rewrites `peer`'s saved addresses in `node`'s partners.json (the node stopped).
fn set_partner_addrs(node: &Node, peer: &str, addrs: &[String]) {
    let path = node.home.join("partners.json");
    let mut saved: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    saved["partners"][peer]["addrs"] = serde_json::json!(addrs);
    fs::write(&path, serde_json::to_vec(&saved).unwrap()).unwrap();
}

#[test]
fn a_partner_on_tcp_and_quic_is_reached_over_tcp_and_over_quic_when_its_tcp_port_is_silent() {
    let t = tempfile::tempdir().unwrap();
    let quic = |_| {
        format!(
            "/ip4/127.0.0.1/udp/{}/quic-v1",
            cairn_node::testnet::free_udp()
        )
    };
    let (a_quic, b_quic) = (quic(0), quic(1));
    let mut a = start(t.path(), "a", Transport::Tcp, &["--listen", &a_quic]);
    let mut b = start(t.path(), "b", Transport::Tcp, &["--listen", &b_quic]);
    // b joins with a's invitation, which names both of a's addresses.
    a.invite(&b);
    let (a_peer, b_peer) = (a.peer(), b.peer());
    // TCP is dialled first, one address at a time: the connection is TCP, on both sides.
    let on_b = links_once_connected(&b, &a_peer);
    assert!(on_b.iter().all(|l| l.contains("/tcp/")), "{on_b:?}");
    let on_a = links_once_connected(&a, &b_peer);
    assert!(on_a.iter().all(|l| l.contains("/tcp/")), "{on_a:?}");

    // a's TCP port stops answering (accepted, then silence, as behind a NAT that swallows
    // it): b gives it up after its setup timeout and reaches a over QUIC. a forgets b's
    // addresses, so that only b dials.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = format!("/ip4/127.0.0.1/tcp/{}", silent.local_addr().unwrap().port());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming() {
            held.push(c);
        }
    });
    a.stop();
    b.stop();
    set_partner_addrs(&a, &b_peer, &[]);
    set_partner_addrs(&b, &a_peer, &[silent_addr, a_quic.clone()]);
    a.spawn();
    b.spawn();
    let on_b = links_once_connected(&b, &a_peer);
    assert!(
        on_b.iter().all(|l| l.contains("/quic-v1")),
        "{on_b:?}: {}",
        b.log()
    );
}
