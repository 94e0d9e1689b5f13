//! `scripts/bench node`: the vault through storage nodes on loopback against the vault to local
//! directories, in one run: three rounds, each into fresh vaults, medians compared (this
//! machine's page cache makes single local timings swing several-fold).
//!
//! usage: node_bench CAIRN_BINARY OUT.json [SIZE_MIB]
//!
//! Figures: `put_vs_local` / `get_vs_local` (MB/s of `cairn vault put/get` with 4-of-8 over 8
//! partner nodes ÷ the same with 8 local directories), `node_rss_mib_max` (peak RSS of any node,
//! VmHWM), `wire_overhead` (bytes sent over loopback during the put ÷ bytes of shards placed).

use std::path::PathBuf;
use std::time::Instant;

use cairn_node::testnet::{random_file, same_file, Node, Transport, Vault};
use serde_json::json;

fn lo_tx_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/net/dev").expect("/proc/net/dev");
    text.lines()
        .find_map(|l| {
            let (name, rest) = l.trim().split_once(':')?;
            (name == "lo").then(|| rest.split_whitespace().nth(8)?.parse().ok())?
        })
        .expect("no lo in /proc/net/dev")
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process used so far.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 of stat(5), counted after the command name.
    (f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) as f64 / 100.0
}

/// CPU seconds of waited-for children (the vault commands).
fn children_cpu_s() -> f64 {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct we pass, which outlives the call.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Rounds of each measurement; the figures compare medians.
const ROUNDS: usize = 3;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Bytes the owner's partners hold for it.
fn held_total(owner: &Node) -> u64 {
    owner.status()["partners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["held_for_us"].as_u64().unwrap())
        .sum()
}

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cairn = PathBuf::from(&args[1]);
    let out = PathBuf::from(&args[2]);
    let mib: usize = args.get(3).map_or(512, |s| s.parse().expect("SIZE_MIB"));
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let file = w.join("data.bin");
    random_file(&file, mib << 20, 11);
    let mb = (mib << 20) as f64 / 1e6;

    // Through nodes: an owner and 8 partners (TCP unless NODE_BENCH_TRANSPORT=quic).
    let transport = match std::env::var("NODE_BENCH_TRANSPORT").as_deref() {
        Ok("quic") => Transport::Quic,
        _ => Transport::Tcp,
    };
    let extra = ["--capacity", "16G", "--allowance", "16G"];
    let owner = Node::start(&cairn, w, "owner", Transport::Tcp, &extra);
    let holders: Vec<Node> = (0..8)
        .map(|i| Node::start(&cairn, w, &format!("h{i}"), transport, &extra))
        .collect();
    for h in &holders {
        owner.invite(h);
    }
    let pids: Vec<u32> = std::iter::once(&owner)
        .chain(holders.iter())
        .filter_map(Node::pid)
        .collect();
    let cpu = |pids: &[u32]| -> (f64, f64) {
        (cpu_s(pids[0]), pids[1..].iter().map(|&p| cpu_s(p)).sum())
    };
    let back = w.join("back.bin");
    let settle = || {
        // Write-back of the previous phase must not bill the next one.
        // SAFETY: sync(2) takes no arguments.
        unsafe { libc::sync() };
    };

    // Rounds of: the vault's local pipeline (8 directories on this disk) and the same vault
    // through the nodes, each into a fresh vault, then both read back. Medians are compared.
    let (mut lp, mut lg, mut np, mut ng) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut wire, mut shard_bytes) = (0u64, 0u64);
    let (mut put_cpu, mut get_cpu) = ([0f64; 3], [0f64; 3]);
    for round in 0..ROUNDS {
        let dirs: Vec<String> = (0..8)
            .map(|i| format!("dir:{}", w.join(format!("r{round}-d{i}")).display()))
            .collect();
        let local =
            Vault::init_targets(&cairn, &w.join(format!("vault-local-{round}")), &dirs, 4, 8);
        let net = Vault::init_targets(
            &cairn,
            &w.join(format!("vault-net-{round}")),
            &[format!("node:{}", owner.sock().display())],
            4,
            8,
        );
        settle();
        lp.push(timed(|| {
            local.ok(&["put", file.to_str().unwrap()]);
        }));
        settle();
        let before: u64 = held_total(&owner);
        let (o0, h0, v0) = (cpu(&pids).0, cpu(&pids).1, children_cpu_s());
        let lo0 = lo_tx_bytes();
        np.push(timed(|| {
            net.ok(&["put", file.to_str().unwrap()]);
        }));
        wire += lo_tx_bytes() - lo0;
        let (o1, h1, v1) = (cpu(&pids).0, cpu(&pids).1, children_cpu_s());
        put_cpu = [
            put_cpu[0] + v1 - v0,
            put_cpu[1] + o1 - o0,
            put_cpu[2] + h1 - h0,
        ];
        shard_bytes += held_total(&owner) - before;
        settle();
        lg.push(timed(|| {
            local.ok(&["get", "data.bin", back.to_str().unwrap()]);
        }));
        assert!(same_file(&file, &back));
        std::fs::remove_file(&back).unwrap();
        settle();
        let (o1, h1, v1) = (cpu(&pids).0, cpu(&pids).1, children_cpu_s());
        ng.push(timed(|| {
            net.ok(&["get", "data.bin", back.to_str().unwrap()]);
        }));
        let (o2, h2, v2) = (cpu(&pids).0, cpu(&pids).1, children_cpu_s());
        get_cpu = [
            get_cpu[0] + v2 - v1,
            get_cpu[1] + o2 - o1,
            get_cpu[2] + h2 - h1,
        ];
        assert!(same_file(&file, &back));
        std::fs::remove_file(&back).unwrap();
    }
    let (local_put, local_get, net_put, net_get) =
        (median(&lp), median(&lg), median(&np), median(&ng));
    let per_round = |x: f64| x / ROUNDS as f64;
    let rss_max_kib = std::iter::once(&owner)
        .chain(holders.iter())
        .filter_map(Node::pid)
        .map(vm_hwm_kib)
        .max()
        .unwrap_or(0);

    let figures = json!({
        "put_vs_local": (mb / net_put) / (mb / local_put),
        "get_vs_local": (mb / net_get) / (mb / local_get),
        "node_rss_mib_max": rss_max_kib as f64 / 1024.0,
        "wire_overhead": wire as f64 / shard_bytes as f64,
        "put_mb_s": mb / net_put,
        "get_mb_s": mb / net_get,
        "local_put_mb_s": mb / local_put,
        "local_get_mb_s": mb / local_get,
        "size_mib": mib,
        "rounds": ROUNDS,
        "samples_s": {"local_put": lp, "node_put": np, "local_get": lg, "node_get": ng},
        "put_cpu_s_per_round": {
            "vault": per_round(put_cpu[0]),
            "owner_node": per_round(put_cpu[1]),
            "partner_nodes": per_round(put_cpu[2]),
        },
        "get_cpu_s_per_round": {
            "vault": per_round(get_cpu[0]),
            "owner_node": per_round(get_cpu[1]),
            "partner_nodes": per_round(get_cpu[2]),
        },
        "nodes": 9,
        "code": "4-of-8",
    });
    std::fs::write(&out, serde_json::to_string_pretty(&figures).unwrap() + "\n").unwrap();
    println!("{}", serde_json::to_string_pretty(&figures).unwrap());
}
