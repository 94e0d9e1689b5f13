//! Boot figures for `scripts/bench boot`: median QEMU start → `cairn: ready` over 5 boots,
//! the compressed image size, the stripped `cairn` size, RAM in use after ready (MemTotal −
//! MemAvailable, as the guest reports it on its console).

use cairn_hil::{image, images_dir, Config, Qemu, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/bench/boot.json".into());
    let cfg = Config::new(image("cairn-qemu-virt.img")?);
    let mut boots = Vec::new();
    let mut ram = Vec::new();
    for _ in 0..5 {
        let mut q = Qemu::boot(&cfg)?;
        let line = q.wait_line("cairn: memory in use:", BOOT_TIMEOUT)?;
        boots.push(q.time_of("cairn: ready").expect("ready seen").as_secs_f64());
        let used: f64 = line
            .split("in use:")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("unreadable memory line: {line}"))?;
        ram.push(used);
        q.power_button()?;
        q.wait_exit(SHUTDOWN_TIMEOUT)?;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let mib = |p: std::path::PathBuf| -> anyhow::Result<f64> {
        Ok(std::fs::metadata(&p)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            .len() as f64
            / (1 << 20) as f64)
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let report = serde_json::json!({
        "boot_to_ready_s": median(&mut boots.clone()),
        "boot_to_ready_s_all": boots,
        "image_xz_mib": mib(images_dir().join("cairn-qemu-virt.img.xz"))?,
        "binary_mib": mib(root.join("target/aarch64-unknown-linux-musl/firmware/cairn"))?,
        "ram_used_after_ready_mib": median(&mut ram.clone()),
    });
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    Ok(())
}
