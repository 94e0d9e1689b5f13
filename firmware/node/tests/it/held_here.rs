//! The owner's shards on a plug without (enough) partners: kept in its own chunk store and read
//! back from there, counted as unprotected, moved out to partners by the repair round once they
//! come; and `unpair`, after which repair places the shards the partner held elsewhere.
//!
//! Nodes run in this process (`common::Running`: `node::run_until`, each on its own thread)
//! on loopback TCP and pair by invitation through their control sockets, as `cairn node invite`
//! and `join` do. The shards are real vault shards (erasure-coded by the vault's codec), so
//! repair really rebuilds them. Background audits and repairs are off: each round is asked for.

use std::time::Duration;

use crate::common;

use cairn_node::control::Client;
use cairn_node::records::{hex, OWN_SHARDS};
use cairn_vault::seal::AeadKind;
use cairn_vault::shard::{Authority, Codec};
use cairn_vault::ChunkId;
use serde_json::{json, Value};

/// A node running on its own thread in this process (see `common`); stopped on drop.
struct Node {
    run: common::Running,
    peer: String,
    /// The owner key (hex) it puts and gets for.
    owner: String,
}

impl Node {
    fn start() -> Node {
        let run = common::Running::start(|cfg| {
            // Rounds run when the test asks, never on their own in between.
            cfg.audit_every = Duration::from_secs(24 * 3600);
            cfg.repair_every = Duration::from_secs(24 * 3600);
        });
        let owner = run.new_owner().1;
        let mut n = Node {
            run,
            peer: String::new(),
            owner,
        };
        n.peer = n.status()["peer"].as_str().expect("peer").to_owned();
        n
    }

    fn client(&self) -> Client {
        self.run.client()
    }

    /// One control request; the node's one-line reason on refusal.
    fn op(&self, req: Value) -> Result<Value, String> {
        self.run.op(req)
    }

    fn ok(&self, req: Value) -> Value {
        let what = req.to_string();
        self.op(req).unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    fn status(&self) -> Value {
        self.ok(json!({"op": "status"}))
    }

    /// `other` joins this node's invitation: both are partners of each other.
    fn invite(&self, other: &Node) {
        let code = self.ok(json!({"op": "invite"}))["code"]
            .as_str()
            .expect("code")
            .to_owned();
        let v = other.ok(json!({"op": "join", "code": code}));
        assert_eq!(v["peer"], json!(self.peer), "{v}");
    }

    /// Puts every shard as the vault does, then flushes.
    fn put_all(&self, shards: &[Vec<u8>]) {
        let mut c = self.client();
        for s in shards {
            c.call(json!({"op": "put_shard", "owner": self.owner}), s)
                .expect("put_shard");
        }
        c.op(json!({"op": "flush"})).expect("flush");
    }

    fn get(&self, chunk: &[u8; 32], index: usize) -> Vec<u8> {
        let (_, data) = self
            .client()
            .call(
                json!({"op": "get_shard", "owner": self.owner, "chunk": hex(chunk), "index": index}),
                &[],
            )
            .unwrap_or_else(|e| panic!("get_shard {index}: {e}"));
        data
    }

    /// This node's books of `peer` as `status` shows them; `None` if it is no partner.
    fn partner(&self, peer: &str) -> Option<Value> {
        self.status()["partners"]
            .as_array()
            .expect("partners")
            .iter()
            .find(|p| p["peer"] == json!(peer))
            .cloned()
    }

    /// Stops the node and checks that it stopped cleanly.
    fn stop(&mut self) {
        self.run.stop();
    }

    /// Ids of the owner's shards kept in this (stopped) node's chunk store.
    fn kept_here(&self) -> usize {
        assert!(!self.run.is_running(), "stop the node first");
        let store = cairn_store::Store::open_dir_reserve_later(
            self.run.home().join("store"),
            cairn_store::Config {
                memory_budget_bytes: 1 << 20,
                max_shard_bytes: cairn_node::wire::SHARD_BYTES_MAX as u32,
                ..Default::default()
            },
        )
        .expect("chunk store");
        store
            .shards_of(OWN_SHARDS, None, 1024)
            .expect("listing")
            .len()
    }
}

/// A chunk's `n` shards as the vault makes them: `sealed` bytes (derived from `seed`)
/// erasure-coded `k`-of-`n`.
fn chunk_shards(chunk: [u8; 32], k: usize, n: usize, sealed: usize, seed: &str) -> Vec<Vec<u8>> {
    let mut bytes = vec![0u8; sealed];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .update(&chunk)
        .finalize_xof()
        .fill(&mut bytes);
    let codec = Codec::new(k, n).expect("code");
    let (mut parity, mut frame) = (Vec::new(), Vec::new());
    let mut out = Vec::new();
    codec
        .encode(
            &ChunkId(chunk),
            AeadKind::ChaCha20Poly1305,
            &mut bytes,
            &mut parity,
            &mut frame,
            // The owner's key is the vault's business: any key makes well-formed shards.
            Authority::Owner(&[0x0a; 32]),
            |i, f| {
                assert_eq!(usize::from(i), out.len());
                out.push(f.to_vec());
                Ok(())
            },
        )
        .expect("encode");
    out
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn a_lone_node_keeps_a_vault_chunk_here_returns_it_and_says_it_is_unprotected() {
    let node = Node::start();
    // The vault's largest chunk, 4-of-8 as it makes them by default: eight 1 MiB shards.
    let chunk = [7u8; 32];
    let shards = chunk_shards(chunk, 4, 8, 4 << 20, "lone");
    let bytes: u64 = shards.iter().map(|s| s.len() as u64).sum();
    node.put_all(&shards);
    for (i, s) in shards.iter().enumerate() {
        assert!(node.get(&chunk, i) == *s, "shard {i} read back differs");
    }
    let st = node.status();
    let c = &st["chunks"];
    assert_eq!(u(&c["chunks"]), 1, "{st}");
    assert_eq!(u(&c["held_here"]), 8, "{st}");
    assert_eq!(u(&c["held_here_bytes"]), bytes, "{st}");
    // Readable, but nothing protects it: below full redundancy, and not even degraded.
    assert_eq!(u(&c["full"]), 0, "{st}");
    assert_eq!(u(&c["degraded"]), 0, "{st}");
    assert_eq!(u(&c["unprotected"]), 1, "{st}");
    assert_eq!(u(&c["unreadable"]), 0, "{st}");
    // The owner's own shards take nothing of what the plug offers its partners.
    assert_eq!(u(&st["used"]), 0, "{st}");
    // Nothing to audit, nowhere to move them; no error either.
    let a = node.ok(json!({"op": "audit"}));
    assert_eq!(u(&a["checked"]), 0, "{a}");
    let r = node.ok(json!({"op": "repair"}));
    assert_eq!(u(&r["moved_out"]), 0, "{r}");
    assert_eq!(u(&r["waiting"]), 1, "{r}");
    assert_eq!(u(&r["healthy"]), 0, "{r}");
    assert_eq!(r["stuck"], json!([]), "{r}");
    // Putting the same shard again changes nothing.
    node.put_all(&shards[..1]);
    assert_eq!(u(&node.status()["chunks"]["held_here"]), 8);
}

#[test]
fn repair_moves_the_shards_kept_here_out_to_new_partners_and_drops_the_local_copies() {
    let mut owner = Node::start();
    let chunks = [[1u8; 32], [2u8; 32]];
    let shards: Vec<Vec<Vec<u8>>> = chunks
        .iter()
        .map(|c| chunk_shards(*c, 2, 4, 600 << 10, "move"))
        .collect();
    for s in &shards {
        owner.put_all(s);
    }
    assert_eq!(u(&owner.status()["chunks"]["held_here"]), 8);

    let partners: Vec<Node> = (0..4).map(|_| Node::start()).collect();
    for p in &partners {
        owner.invite(p);
    }
    let r = owner.ok(json!({"op": "repair"}));
    assert_eq!(u(&r["moved_out"]), 8, "{r}");
    assert_eq!(u(&r["healthy"]), 2, "{r}");
    assert_eq!(u(&r["waiting"]), 0, "{r}");
    assert_eq!(r["stuck"], json!([]), "{r}");
    let st = owner.status();
    assert_eq!(u(&st["chunks"]["held_here"]), 0, "{st}");
    assert_eq!(u(&st["chunks"]["held_here_bytes"]), 0, "{st}");
    assert_eq!(u(&st["chunks"]["full"]), 2, "{st}");
    // One shard of each chunk on each partner (distinct holders per chunk), booked.
    for p in &partners {
        let b = owner.partner(&p.peer).expect("partner");
        let want: u64 = shards.iter().map(|s| s[0].len() as u64).sum();
        assert_eq!(u(&b["held_for_us"]), want, "{st}");
        assert_eq!(u(&p.status()["used"]), want);
    }
    for (c, s) in chunks.iter().zip(&shards) {
        for (i, bytes) in s.iter().enumerate() {
            assert!(owner.get(c, i) == *bytes, "shard {i} read back differs");
        }
    }
    // The copies kept here are gone from the chunk store, not just from the records.
    owner.stop();
    assert_eq!(owner.kept_here(), 0);
}

#[test]
fn after_unpair_repair_places_the_partners_shards_on_another_partner() {
    let owner = Node::start();
    let partners: Vec<Node> = (0..5).map(|_| Node::start()).collect();
    for p in &partners {
        owner.invite(p);
    }
    let chunk = [9u8; 32];
    let shards = chunk_shards(chunk, 2, 4, 800 << 10, "unpair");
    owner.put_all(&shards);
    let held = |n: &Node| u(&owner.partner(&n.peer).expect("partner")["held_for_us"]);
    let gone = partners.iter().find(|p| held(p) > 0).expect("a holder");
    let idle = partners
        .iter()
        .find(|p| held(p) == 0)
        .expect("one of five idle");
    let shard_len = shards[0].len() as u64;

    let v = owner.client().unpair(&gone.peer).expect("unpair");
    assert_eq!(v["peer"], json!(gone.peer), "{v}");
    assert_eq!(u(&v["held_for_us"]), shard_len, "{v}");
    assert!(owner.partner(&gone.peer).is_none());
    // Saved at once: partners.json no longer names it.
    let saved = std::fs::read_to_string(owner.run.home().join("partners.json")).expect("partners");
    assert!(!saved.contains(&gone.peer), "{saved}");
    // Its slot counts as lost until repair.
    let st = owner.status();
    assert_eq!(u(&st["chunks"]["degraded"]), 1, "{st}");

    let r = owner.ok(json!({"op": "repair"}));
    assert_eq!(u(&r["repaired"]), 1, "{r}");
    assert_eq!(u(&r["shards_placed"]), 1, "{r}");
    assert_eq!(u(&r["kept_here"]), 0, "{r}");
    assert_eq!(r["stuck"], json!([]), "{r}");
    assert_eq!(held(idle), shard_len);
    let st = owner.status();
    assert_eq!(u(&st["chunks"]["full"]), 1, "{st}");
    assert_eq!(u(&st["chunks"]["held_here"]), 0, "{st}");
    for (i, s) in shards.iter().enumerate() {
        assert!(owner.get(&chunk, i) == *s, "shard {i} read back differs");
    }
    // Unpairing is one-sided: the former partner still names the owner, whose holder now
    // refuses it as a stranger, so its own new shards stay with it.
    assert!(gone.partner(&owner.peer).is_some());
    gone.put_all(&chunk_shards([5u8; 32], 1, 2, 64 << 10, "gone"));
    assert_eq!(u(&gone.status()["chunks"]["held_here"]), 2);
    assert_eq!(u(&owner.status()["used"]), 0);
}

#[test]
fn unpairing_a_peer_that_is_no_partner_is_refused_naming_it() {
    let node = Node::start();
    let stranger = libp2p::PeerId::random().to_base58();
    let e = node
        .op(json!({"op": "unpair", "peer": stranger}))
        .unwrap_err();
    assert!(e.contains(&stranger) && e.contains("not a partner"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let e = node.op(json!({"op": "unpair", "peer": "xyz"})).unwrap_err();
    assert!(e.contains("\"xyz\"") && e.contains("not a peer id"), "{e}");
    let e = node.op(json!({"op": "unpair"})).unwrap_err();
    assert!(e.contains("not a peer id"), "{e}");
    let e = node.op(json!({"op": "nope"})).unwrap_err();
    assert!(e.contains("unpair"), "{e}");
}

#[test]
fn the_owners_offer_sets_the_capacity_and_is_kept() {
    let a = Node::start();
    let before = u(&a.status()["capacity"]);
    let offer = before * 3 + 7;
    let r = a.op(json!({"op": "set_capacity", "bytes": offer})).unwrap();
    assert_eq!(u(&r["capacity"]), offer);
    assert_eq!(u(&a.status()["capacity"]), offer);
    // Kept where the partners are, so a restart offers the same.
    let saved: Value =
        serde_json::from_slice(&std::fs::read(a.run.home().join("partners.json")).unwrap())
            .unwrap();
    assert_eq!(u(&saved["capacity"]), offer);
    let e = a
        .op(json!({"op": "set_capacity", "bytes": "lots"}))
        .unwrap_err();
    assert!(e.contains("set_capacity needs bytes"), "{e}");
    assert_eq!(u(&a.status()["capacity"]), offer);
}

#[test]
fn owner_and_rejoin_requests_with_bad_input_are_refused_with_one_line() {
    let node = Node::start();
    let one_line = |e: &str| assert!(!e.contains('\n'), "{e}");
    // A statement that does not verify for this plug, and malformed ones.
    let e = node
        .op(json!({"op": "owner", "owner": "00".repeat(32), "sig": "00".repeat(64)}))
        .unwrap_err();
    assert!(e.contains("not signed for this plug"), "{e}");
    one_line(&e);
    let e = node.op(json!({"op": "owner", "owner": "xyz"})).unwrap_err();
    assert!(e.contains("owner needs owner"), "{e}");
    // Shards of an owner the node does not act for.
    let stranger = "11".repeat(32);
    let e = node
        .client()
        .call(json!({"op": "put_shard", "owner": stranger}), b"x")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not act for owner") && e.contains(&stranger),
        "{e}"
    );
    let e = node
        .op(json!({"op": "get_shard", "owner": stranger, "chunk": "22".repeat(32), "index": 0}))
        .unwrap_err();
    assert!(e.contains("does not act for owner"), "{e}");
    let e = node.op(json!({"op": "put_shard"})).unwrap_err();
    assert!(e.contains("put_shard needs owner"), "{e}");
    // Rejoin names a peer by a full address.
    let e = node
        .op(json!({"op": "rejoin", "addr": "/ip4/127.0.0.1/tcp/1"}))
        .unwrap_err();
    assert!(e.contains("does not end in /p2p/PEERID"), "{e}");
    let e = node
        .op(json!({"op": "rejoin", "addr": "nope"}))
        .unwrap_err();
    assert!(e.contains("\"nope\" is not a multiaddr"), "{e}");
    one_line(&e);
    let own = format!("/ip4/127.0.0.1/tcp/1/p2p/{}", node.peer);
    let e = node.op(json!({"op": "rejoin", "addr": own})).unwrap_err();
    assert!(e.contains("own address"), "{e}");
    // A good one: a partner from now on, on this side.
    let other = libp2p::PeerId::random().to_base58();
    let v = node.ok(json!({"op": "rejoin", "addr": format!("/ip4/127.0.0.1/tcp/1/p2p/{other}")}));
    assert_eq!(v["peer"], json!(other), "{v}");
    assert_eq!(
        node.partner(&other).expect("partner")["via"],
        json!("rejoin")
    );
}
