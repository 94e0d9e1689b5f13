//! Boot figures for `scripts/bench boot`: QEMU start → `cairn: ready` and its phases, against a
//! floor measured in the same run; the compressed image size, the stripped `cairn` size, RAM in
//! use after ready (MemTotal − MemAvailable, as the guest reports it on its console).
//!
//! Phases (host clock, when each console line arrives):
//! - `uboot_s`: QEMU start → u-boot's "Starting kernel";
//! - `kernel_s`: "Starting kernel" → the first line of /init (`cairn: stage 1: starting …`);
//! - `stage1_s`: /init start → `cairn: stage 2: …` (supervision begins);
//! - `services_s`: stage 2 start → `cairn: ready`.
//!
//! The floor is `cairn-qemu-virt-floor.img`: the same bootloader and kernel with a /init that
//! prints `floor: ready` at once (`hil-tests/floor-init`, built by `scripts/bench.d/boot`);
//! `floor_uboot_s` is its u-boot phase (a smaller initramfs to load).
//! Cairn and floor boots alternate, so machine load weighs on both alike; every figure is the
//! median of its boots, `*_all` lists each boot's. `boot_vs_floor` = boot_to_ready ÷ floor.
//!
//! The boards QEMU emulates with their own bootloader boot their product cards too, each time a
//! fresh copy (a user's first boot, partition growth included), power-on → `cairn: ready`:
//! `boot_to_ready_s_rpi3` (raspi3b, four A53s), `boot_to_ready_s_rpi4` (raspi4b, four A72s)
//! and `boot_to_ready_s_bpi_m2u` (bpim2u, one A7 running: QEMU does not start the R40's others), medians of `CAIRN_CARD_BOOTS` (default 3).
//! `image_xz_mib_BOARD`: each board's compressed card, as a user downloads it.
//!
//! Usage: `boot_bench [OUT.json]` (default target/bench/boot.json); `CAIRN_BOOTS=N` boots
//! each N times (default 5). Beside OUT it writes OUT's stem + `-console.txt`: the console of
//! the median Cairn boot, each line with its arrival time, to see where the time goes.

use cairn_hil::{emulated_card, image, images_dir, Config, Qemu, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};
use std::path::{Path, PathBuf};
use std::time::Duration;

const STARTING_KERNEL: &str = "Starting kernel";
const STAGE1: &str = "cairn: stage 1: starting";
const STAGE2: &str = "cairn: stage 2:";
const READY: &str = "cairn: ready";
const MEMORY: &str = "cairn: memory in use:";
const FLOOR_READY: &str = "floor: ready";
/// The emulated SoCs run their cores in software and enumerate slowly: the card boots' bound.
const CARD_BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The boards whose product cards boot under QEMU with their own bootloader.
const CARD_BOARDS: [&str; 3] = ["rpi3", "rpi4", "bpi-m2u"];
/// Every board with a card image.
const BOARDS: [&str; 5] = ["qemu-virt", "rpi3", "rpi4", "bpi-m2u", "lime2"];

/// One Cairn boot's figures, in seconds from QEMU's start.
struct Boot {
    starting_kernel: f64,
    stage1: f64,
    stage2: f64,
    ready: f64,
    ram_mib: f64,
    /// Each console line with its arrival time.
    console: Vec<(f64, String)>,
}

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/bench/boot.json".into()),
    );
    let count = |var: &str, default: usize| -> anyhow::Result<usize> {
        let n = match std::env::var(var) {
            Ok(v) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("{var}={v}: not a number"))?,
            Err(_) => default,
        };
        anyhow::ensure!(n > 0, "{var} must be at least 1");
        Ok(n)
    };
    let n = count("CAIRN_BOOTS", 5)?;
    let card_boots = count("CAIRN_CARD_BOOTS", 3)?;
    let cairn = Config::new(image("cairn-qemu-virt.img")?);
    let floor_image = images_dir().join("cairn-qemu-virt-floor.img");
    anyhow::ensure!(
        floor_image.is_file(),
        "{} is missing: scripts/bench boot builds it",
        floor_image.display()
    );
    let floor = Config::new(floor_image);
    let mut boots = Vec::new();
    let mut floors = Vec::new();
    for i in 0..n {
        // Alternate which goes first, so neither always follows the other's shutdown.
        if i % 2 == 0 {
            boots.push(boot_cairn(&cairn)?);
            floors.push(boot_floor(&floor)?);
        } else {
            floors.push(boot_floor(&floor)?);
            boots.push(boot_cairn(&cairn)?);
        }
        let b = boots.last().unwrap();
        eprintln!(
            "boot {}/{n}: ready {:.2} s (u-boot {:.2}, kernel {:.2}, stage 1 {:.2}, services {:.2}); floor {:.2} s",
            i + 1,
            b.ready,
            b.starting_kernel,
            b.stage1 - b.starting_kernel,
            b.stage2 - b.stage1,
            b.ready - b.stage2,
            floors.last().unwrap().1
        );
    }

    let all = |f: &dyn Fn(&Boot) -> f64| -> Vec<f64> { boots.iter().map(f).collect() };
    let ready = all(&|b| b.ready);
    let uboot = all(&|b| b.starting_kernel);
    let kernel = all(&|b| b.stage1 - b.starting_kernel);
    let stage1 = all(&|b| b.stage2 - b.stage1);
    let services = all(&|b| b.ready - b.stage2);
    let ram = all(&|b| b.ram_mib);
    let floor_uboot: Vec<f64> = floors.iter().map(|f| f.0).collect();
    let floors: Vec<f64> = floors.iter().map(|f| f.1).collect();
    let boot_to_ready = median(&ready);
    let floor_s = median(&floors);

    let mib = |p: PathBuf| -> anyhow::Result<f64> {
        Ok(std::fs::metadata(&p)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            .len() as f64
            / (1 << 20) as f64)
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut report = serde_json::json!({
        "boots": n,
        "boot_to_ready_s": round(boot_to_ready),
        "boot_to_ready_s_all": rounded(&ready),
        "uboot_s": round(median(&uboot)),
        "uboot_s_all": rounded(&uboot),
        "kernel_s": round(median(&kernel)),
        "kernel_s_all": rounded(&kernel),
        "stage1_s": round(median(&stage1)),
        "stage1_s_all": rounded(&stage1),
        "services_s": round(median(&services)),
        "services_s_all": rounded(&services),
        "floor_s": round(floor_s),
        "floor_s_all": rounded(&floors),
        "floor_uboot_s": round(median(&floor_uboot)),
        "boot_vs_floor": round(boot_to_ready / floor_s),
        "image_xz_mib": mib(images_dir().join("cairn-qemu-virt.img.xz"))?,
        "binary_mib": mib(root.join("target/aarch64-unknown-linux-musl/firmware/cairn.product"))?,
        "ram_used_after_ready_mib": median(&ram),
    });
    for board in CARD_BOARDS {
        let flashed = image(&format!("cairn-{board}.img"))?;
        let mut ready = Vec::new();
        for i in 0..card_boots {
            let dir = tempfile::tempdir()?;
            let mut q = Qemu::boot(&emulated_card(board, &flashed, dir.path())?)?;
            q.wait_line(READY, CARD_BOOT_TIMEOUT)?;
            let t = q.time_of(READY).expect("waited for").as_secs_f64();
            eprintln!("{board} card boot {}/{card_boots}: ready {t:.2} s", i + 1);
            ready.push(t);
            // Neither machine has a power button QEMU can press: the power is pulled.
            q.pull_power();
        }
        let key = format!("boot_to_ready_s_{}", board.replace('-', "_"));
        report[&key] = round(median(&ready)).into();
        report[format!("{key}_all")] = rounded(&ready).into();
    }
    for board in BOARDS {
        let xz = images_dir().join(format!("cairn-{board}.img.xz"));
        report[format!("image_xz_mib_{}", board.replace('-', "_"))] = round(mib(xz)?).into();
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;

    // The console of the median boot, timed.
    let mid = boots
        .iter()
        .min_by(|a, b| {
            (a.ready - boot_to_ready)
                .abs()
                .total_cmp(&(b.ready - boot_to_ready).abs())
        })
        .unwrap();
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    let console_out = out.with_file_name(format!("{stem}-console.txt"));
    let text: String = mid
        .console
        .iter()
        .map(|(t, l)| format!("{t:8.3} {l}\n"))
        .collect();
    std::fs::write(&console_out, text)?;
    Ok(())
}

/// Boots the Cairn image to ready, reads its figures, and shuts it down with the power button.
fn boot_cairn(cfg: &Config) -> anyhow::Result<Boot> {
    let mut q = Qemu::boot(cfg)?;
    let line = q.wait_line(MEMORY, BOOT_TIMEOUT)?;
    let at = |needle: &str| -> anyhow::Result<f64> {
        q.time_of(needle)
            .map(|t| t.as_secs_f64())
            .ok_or_else(|| anyhow::anyhow!("no console line with {needle:?} before ready"))
    };
    let boot = Boot {
        starting_kernel: at(STARTING_KERNEL)?,
        stage1: at(STAGE1)?,
        stage2: at(STAGE2)?,
        ready: at(READY)?,
        ram_mib: line
            .split("in use:")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("unreadable memory line: {line}"))?,
        console: timed_console(&q),
    };
    q.power_button()?;
    q.wait_exit(SHUTDOWN_TIMEOUT)?;
    Ok(boot)
}

/// Boots the floor image to its ready line: (QEMU start → "Starting kernel", → ready). The
/// power is pulled when `q` drops.
fn boot_floor(cfg: &Config) -> anyhow::Result<(f64, f64)> {
    let q = Qemu::boot(cfg)?;
    q.wait_line(FLOOR_READY, BOOT_TIMEOUT)?;
    let at = |needle: &str| q.time_of(needle).unwrap_or(Duration::ZERO).as_secs_f64();
    Ok((at(STARTING_KERNEL), at(FLOOR_READY)))
}

/// The console so far, each line with the time it arrived. The harness times the first line
/// containing a text, so a line also contained in an earlier one (a repeat, an empty line) takes
/// the time of the line before it.
fn timed_console(q: &Qemu) -> Vec<(f64, String)> {
    let mut last = 0.0f64;
    q.console()
        .into_iter()
        .map(|l| {
            let t = q.time_of(&l).map_or(last, |t| t.as_secs_f64()).max(last);
            last = t;
            (t, l)
        })
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Milliseconds are all a boot on an emulated CPU resolves.
fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().copied().map(round).collect()
}
