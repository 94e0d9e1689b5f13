//! The long churn simulation: writes its figures as JSON to the path given as first argument.
//!
//! `cargo run --release -p cairn-node --example churn -- target/bench/churn.json [SEED]`

use cairn_node::sim::{self, SimConfig};
use std::time::Instant;

fn main() {
    if let Err(e) = run() {
        eprintln!("churn: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .ok_or("usage: churn OUT.json [SEED] [quick|long]")?;
    let seed = match args.next() {
        Some(s) => s.parse().map_err(|e| format!("seed {s:?}: {e}"))?,
        None => 1,
    };
    let cfg = match args.next().as_deref() {
        None | Some("long") => SimConfig::long(seed),
        Some("quick") => SimConfig::quick(seed),
        Some(other) => return Err(format!("unknown preset {other:?} (quick or long)")),
    };
    let t0 = Instant::now();
    let r = sim::run(&cfg).map_err(|e| e.to_string())?;
    let wall_s = t0.elapsed().as_secs_f64();
    eprintln!("{r:#?}");
    let json = serde_json::json!({
        "durability": r.durability,
        "chunks_lost": r.chunks_lost,
        "repairs": r.repairs,
        "shards_moved_per_chunk": r.shards_moved as f64 / r.chunks_stored.max(1) as f64,
        "sim_weeks": r.sim_weeks,
        "nodes": r.nodes,
        "wall_s": wall_s,
        "report": r,
    });
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&out, text + "\n").map_err(|e| format!("{out}: {e}"))?;
    Ok(())
}
