//! Real crash test: a child process (`examples/crash_child.rs`) writes and deletes shards
//! from four threads on the real filesystem and is killed with SIGKILL at random moments,
//! many times over the same store. After each kill the store is reopened and every
//! acknowledged put and delete is checked.
//!
//! Size: 25 kills, each after 5–600 acknowledged operations (a few seconds in release).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use cairn_store::sim::SimRng;
use cairn_store::{Config, Error, ShardId, Store};

fn child_binary() -> PathBuf {
    // Tests live in target/<profile>/deps; examples in target/<profile>/examples.
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = profile_dir.join("examples").join("crash_child");
    assert!(
        p.exists(),
        "{} missing: cargo test builds examples",
        p.display()
    );
    p
}

fn parse_id(hex: &str) -> ShardId {
    let mut b = [0u8; 32];
    for (i, c) in b.iter_mut().enumerate() {
        *c = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex id");
    }
    ShardId(b)
}

fn payload_of(id: &ShardId, len: usize) -> Vec<u8> {
    let mut r = SimRng::new(u64::from_le_bytes(id.0[..8].try_into().unwrap()));
    let mut b = vec![0u8; len];
    r.fill(&mut b);
    b
}

#[test]
fn kill_dash_nine_at_random_points_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let bin = child_binary();
    let mut rng = SimRng::new(0x5EED);
    // id → Some(len) if acknowledged present, None if acknowledged deleted.
    let mut acked: BTreeMap<ShardId, Option<usize>> = BTreeMap::new();
    // Deletes started but not acknowledged when the child died: either outcome is right.
    let mut in_flight: BTreeSet<ShardId> = BTreeSet::new();
    for round in 0..25u64 {
        let mut child = Command::new(&bin)
            .arg(dir.path())
            .arg(round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn crash_child");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let kill_after = 5 + rng.below(600);
        let mut seen = 0;
        let record = |line: &str,
                      acked: &mut BTreeMap<ShardId, Option<usize>>,
                      in_flight: &mut BTreeSet<ShardId>| {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts[0] {
                "P" => {
                    acked.insert(parse_id(parts[1]), Some(parts[2].parse().unwrap()));
                }
                "d" => {
                    in_flight.insert(parse_id(parts[1]));
                }
                "D" => {
                    let id = parse_id(parts[1]);
                    in_flight.remove(&id);
                    acked.insert(id, None);
                }
                other => panic!("unexpected line from child: {other}"),
            }
        };
        for line in lines.by_ref() {
            let line = line.unwrap();
            record(&line, &mut acked, &mut in_flight);
            seen += 1;
            if seen >= kill_after {
                break;
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        // Lines printed before the kill are acknowledgements too.
        for line in lines {
            let Ok(line) = line else { break };
            if line.is_empty() {
                continue;
            }
            record(&line, &mut acked, &mut in_flight);
        }
        let store = Store::open_dir(dir.path(), Config::default())
            .unwrap_or_else(|e| panic!("round {round}: reopen after kill: {e}"));
        for (id, v) in acked.iter_mut() {
            if in_flight.remove(id) {
                match store.get(*id) {
                    Ok(_) => {}
                    Err(Error::NotFound { .. }) => *v = None,
                    Err(e) => panic!("round {round}: {id}: {e}"),
                }
            }
            match (&*v, store.get(*id)) {
                (Some(len), Ok(b)) => {
                    assert_eq!(b, payload_of(id, *len), "round {round}: wrong bytes for {id}")
                }
                (None, Err(Error::NotFound { .. })) => {}
                (v, g) => panic!(
                    "round {round} (killed after {kill_after} acks): {id}: expected {v:?}, got {:?}; {:?}",
                    g.map(|b| b.len()),
                    store.stats()
                ),
            }
        }
        assert!(store.verify().unwrap().damaged.is_empty(), "round {round}");
    }
    assert!(
        acked.len() > 100,
        "the child acknowledged only {} operations",
        acked.len()
    );
}
