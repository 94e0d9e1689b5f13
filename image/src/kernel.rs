//! The board's kernel, built from Debian's kernel source package with the board's config
//! fragment merged over `tinyconfig`, and cached by the hash of everything that goes in.
//! A cache entry is only ever found by that hash, so changed inputs always rebuild.

use cairn_bsp::Board;
use serde::Deserialize;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Bump when the build recipe below changes, so old cache entries are not reused.
/// v2: fixed build identity (KBUILD_BUILD_*), so kernels from two caches are the same bytes.
const RECIPE: &str = "tinyconfig+fragment/v2";

/// Where the one kernel source pin lives, relative to the boards directory.
pub const SOURCE_PIN: &str = "../kernel-source.toml";

/// The Debian kernel source every board is built from (`board/kernel-source.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Debian source package, `linux-source-X.Y`.
    pub package: String,
    /// Exact version of that package: fetched as pinned, never "the newest".
    pub version: String,
    /// sha256 of the tarball the package ships (`/usr/src/linux-source-X.Y.tar.xz`).
    pub sha256: String,
    /// The pin file, named in errors (so a person knows which file to change).
    #[serde(skip)]
    pub file: PathBuf,
}

impl Source {
    /// Reads the pin file.
    pub fn load(file: &Path) -> anyhow::Result<Source> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let mut s: Source =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        anyhow::ensure!(
            s.package.starts_with("linux-source-"),
            "{}: package {} is not a linux-source-X.Y package",
            file.display(),
            s.package
        );
        s.file = file.to_path_buf();
        Ok(s)
    }

    /// The pin of the boards in `boards_dir`.
    pub fn for_boards(boards_dir: &Path) -> anyhow::Result<Source> {
        Self::load(&boards_dir.join(SOURCE_PIN))
    }

    /// The tarball's path in the cache (by package and version).
    pub fn cached(&self, cache: &Path) -> PathBuf {
        cache
            .join("src")
            .join(format!("{}_{}.tar.xz", self.package, self.version))
    }

    /// The pinned tarball, fetched into `cache` if it is not there yet, checked against the pin.
    pub fn fetch(&self, cache: &Path) -> anyhow::Result<PathBuf> {
        let dest = self.cached(cache);
        if !dest.is_file() {
            let work = cache.join(format!("fetch-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&work);
            std::fs::create_dir_all(&work)?;
            let result = self.fetch_in(&work, &dest);
            let _ = std::fs::remove_dir_all(&work);
            result?;
        }
        let sum = sha256_file(&dest).map_err(|e| anyhow::anyhow!("{}: {e}", dest.display()))?;
        anyhow::ensure!(
            sum == self.sha256,
            "{} is corrupt (sha256 {sum}, {} pins {}): delete it and run again to fetch it anew",
            dest.display(),
            self.file.display(),
            self.sha256
        );
        Ok(dest)
    }

    fn fetch_in(&self, work: &Path, dest: &Path) -> anyhow::Result<()> {
        eprintln!(
            "cairn-image: fetching {} {} from the Debian archive",
            self.package, self.version
        );
        let spec = format!("{}={}", self.package, self.version);
        if run(
            Command::new("apt-get")
                .args(["download", "-q", &spec])
                .current_dir(work),
            "apt-get download",
        )
        .is_err()
        {
            return Err(self.unavailable());
        }
        let deb = std::fs::read_dir(work)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| anyhow::anyhow!("apt-get download {spec} left no .deb"))?;
        let root = work.join("root");
        run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
            "unpacking the kernel source package",
        )?;
        let tarball = root.join(format!("usr/src/{}.tar.xz", self.package));
        let sum =
            sha256_file(&tarball).map_err(|e| anyhow::anyhow!("{}: {e}", tarball.display()))?;
        anyhow::ensure!(
            sum == self.sha256,
            "{spec} from the archive ships a tarball with sha256 {sum}, but {} pins {}",
            self.file.display(),
            self.sha256
        );
        std::fs::create_dir_all(dest.parent().unwrap_or(work))?;
        std::fs::rename(&tarball, dest)?; // same file system: the tarball appears whole
        Ok(())
    }

    /// The one-line error for a pin apt could not fetch, naming what the archive has now.
    fn unavailable(&self) -> anyhow::Error {
        let listed = Command::new("apt-cache")
            .args(["madison", &self.package])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut versions: Vec<&str> = listed
            .lines()
            .filter_map(|l| l.split('|').nth(1).map(str::trim))
            .collect();
        versions.dedup();
        if versions.is_empty() {
            anyhow::anyhow!(
                "{} {}: apt knows no {} at all: run `apt-get update` (scripts/setup does)",
                self.package,
                self.version,
                self.package
            )
        } else if versions.contains(&self.version.as_str()) {
            anyhow::anyhow!(
                "{} {} is listed but could not be downloaded (see apt's message above): check \
                 the network to the Debian mirror, or run `apt-get update` if the lists are old",
                self.package,
                self.version
            )
        } else {
            anyhow::anyhow!(
                "{} {} is no longer in the Debian archive (available now: {}): pin one of them, \
                 with its tarball's sha256, in {}",
                self.package,
                self.version,
                versions.join(", "),
                self.file.display()
            )
        }
    }
}

/// Inputs of one kernel build.
pub struct KernelInputs {
    /// The board's config fragment, as an absolute path (the build runs in the source tree).
    pub fragment: PathBuf,
    /// The fragment's text, part of the cache key.
    pub fragment_text: String,
    /// The `CROSS_COMPILE` prefix for the board's architecture.
    pub cross_compile: String,
    /// Whether the device trees are built too (`make dtbs`: those of the SoCs the config
    /// enables), for boards whose bootloader does not bring its own.
    pub dtbs: bool,
    /// Names the cache entry: the fragment's directory, so boards sharing a fragment (the
    /// Raspberry Pis) share one build.
    pub name: String,
    /// The `*.patch` files beside the fragment, in name order, each with its text (part of the
    /// cache key): fixes the pinned source lacks, applied with `patch -p1` after unpacking.
    pub patches: Vec<(PathBuf, String)>,
}

impl KernelInputs {
    /// The board's config fragment and cross compiler.
    pub fn new(board: &Board, boards_dir: &Path) -> anyhow::Result<KernelInputs> {
        let k = &board.kernel;
        let fragment = boards_dir.join(&k.config_fragment);
        let fragment_text = std::fs::read_to_string(&fragment)
            .map_err(|e| anyhow::anyhow!("{}: {e}", fragment.display()))?;
        // The build runs inside the unpacked source tree: the fragment must be named absolutely.
        let fragment = fragment.canonicalize()?;
        let cross_compile = match k.arch.as_str() {
            "arm64" => "aarch64-linux-gnu-",
            "arm" => "arm-linux-gnueabihf-",
            other => anyhow::bail!("board {}: unsupported kernel arch {other}", board.name),
        }
        .to_string();
        let name = Path::new(&k.config_fragment)
            .parent()
            .and_then(|p| p.file_name())
            .map_or_else(|| board.name.clone(), |n| n.to_string_lossy().into_owned());
        let patches = patches_beside(&fragment)?;
        Ok(KernelInputs {
            fragment,
            fragment_text,
            cross_compile,
            dtbs: k.dtb.is_some(),
            name,
            patches,
        })
    }

    /// The cache key: source checksum, arch, fragment, recipe. Known without the source, so a
    /// warm cache needs no download.
    pub fn key(&self, board: &Board, source: &Source) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [
            source.sha256.as_str(),
            board.kernel.arch.as_str(),
            &self.fragment_text,
            RECIPE,
        ] {
            hash_part(&mut ctx, part);
        }
        // Boards with a DTB build them too; the key of the others stays what it was.
        if self.dtbs {
            ctx.update(DTBS.as_bytes());
        }
        // Likewise the patches: a fragment without any keeps its key.
        for (path, text) in &self.patches {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            hash_part(&mut ctx, &name);
            hash_part(&mut ctx, text);
        }
        hex::encode(ctx.finish().as_ref())[..16].to_string()
    }
}

/// One input of a cache key, with its length first, so inputs cannot run into each other.
fn hash_part(ctx: &mut ring::digest::Context, part: &str) {
    ctx.update(&(part.len() as u64).to_le_bytes());
    ctx.update(part.as_bytes());
}

/// The `*.patch` files in the fragment's directory, sorted by name, with their text.
fn patches_beside(fragment: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let dir = fragment.parent().unwrap_or(Path::new("."));
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "patch"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            Ok((p, text))
        })
        .collect()
}

/// Returns the path of the board's kernel Image, building it if the cache has none.
pub fn build(
    board: &Board,
    boards_dir: &Path,
    source: &Source,
    cache: &Path,
    jobs: usize,
) -> anyhow::Result<PathBuf> {
    let inputs = KernelInputs::new(board, boards_dir)?;
    let dir = cache.join(format!(
        "kernel-{}-{}",
        inputs.name,
        inputs.key(board, source)
    ));
    let image = dir.join("Image");
    if image.is_file() {
        return with_dtb(board, image);
    }
    let tarball = source.fetch(cache)?;
    eprintln!(
        "cairn-image: building the {} kernel (a few minutes, once; cached in {})",
        board.name,
        dir.display()
    );
    let work = cache.join(format!("build-{}-{}", board.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = build_in(&inputs, &tarball, board, &work, jobs);
    let built = result.and_then(|src| {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("Image.tmp");
        let boot = src.join("arch").join(&board.kernel.arch).join("boot");
        std::fs::copy(boot.join(make_target(&board.kernel.arch)), &tmp)?;
        std::fs::copy(src.join(".config"), dir.join("config"))?;
        if inputs.dtbs {
            let _ = std::fs::remove_dir_all(dir.join(DTBS));
            copy_dtbs(&boot.join("dts"), &dir.join(DTBS))?;
        }
        std::fs::rename(&tmp, &image)?; // the Image appears only when complete
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&work);
    built?;
    with_dtb(board, image)
}

/// What `make` builds for the kernel of `arch`, under `arch/ARCH/boot`: the uncompressed
/// `Image` on arm64 (u-boot's `booti`), the self-decompressing `zImage` on 32-bit arm
/// (`bootz`). The cache keeps either as `Image`.
pub fn make_target(arch: &str) -> &'static str {
    if arch == "arm" {
        "zImage"
    } else {
        "Image"
    }
}

/// The directory beside the Image that holds the built device trees, by their path below
/// `arch/ARCH/boot/dts` (`broadcom/bcm2837-rpi-3-b.dtb`; 32-bit arm's are flat in 6.1:
/// `sun8i-r40-bananapi-m2-ultra.dtb`).
pub const DTBS: &str = "dtbs";

/// The board's DTB as `build` leaves it beside `image`.
pub fn dtb_path(board: &Board, image: &Path) -> Option<PathBuf> {
    let dtb = board.kernel.dtb.as_ref()?;
    Some(
        image
            .parent()
            .unwrap_or(Path::new("."))
            .join(DTBS)
            .join(dtb),
    )
}

/// `image`, once the board's DTB is known to be beside it.
fn with_dtb(board: &Board, image: PathBuf) -> anyhow::Result<PathBuf> {
    if let Some(dtb) = dtb_path(board, &image) {
        anyhow::ensure!(
            dtb.is_file(),
            "board {}: the kernel build made no {} (does its config fragment enable the SoC?)",
            board.name,
            dtb.display()
        );
    }
    Ok(image)
}

/// Copies every `*.dtb` below `from` to the same place below `to`.
fn copy_dtbs(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from)?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_dtbs(&path, &to.join(entry.file_name()))?;
        } else if path.extension().is_some_and(|x| x == "dtb") {
            std::fs::create_dir_all(to)?;
            std::fs::copy(&path, to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn build_in(
    inputs: &KernelInputs,
    tarball: &Path,
    board: &Board,
    work: &Path,
    jobs: usize,
) -> anyhow::Result<PathBuf> {
    run(
        Command::new("tar")
            .arg("-xf")
            .arg(tarball)
            .arg("-C")
            .arg(work),
        "unpacking the kernel source",
    )?;
    let src = std::fs::read_dir(work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .ok_or_else(|| anyhow::anyhow!("kernel tarball had no directory"))?;
    for (patch, _) in &inputs.patches {
        run(
            Command::new("patch")
                .current_dir(&src)
                .args(["-p1", "--batch", "--forward", "--quiet", "-i"])
                .arg(patch),
            &format!(
                "applying {} (does it still fit the pinned source?)",
                patch.display()
            ),
        )?;
    }
    let make = |args: &[&str]| {
        let mut c = Command::new("make");
        // A fixed build identity: otherwise the build's time, user and host are in the Image.
        c.current_dir(&src)
            .env("KBUILD_BUILD_TIMESTAMP", "Thu Jan  1 00:00:00 UTC 2026")
            .env("KBUILD_BUILD_USER", "cairn")
            .env("KBUILD_BUILD_HOST", "cairn")
            .env("KBUILD_BUILD_VERSION", "1")
            .arg(format!("ARCH={}", board.kernel.arch))
            .arg(format!("CROSS_COMPILE={}", inputs.cross_compile))
            .args(args);
        c
    };
    run(&mut make(&["-s", "tinyconfig"]), "make tinyconfig")?;
    run(
        Command::new("scripts/kconfig/merge_config.sh")
            .current_dir(&src)
            .env("ARCH", &board.kernel.arch)
            .args(["-m", ".config"])
            .arg(&inputs.fragment),
        "merging the config fragment",
    )?;
    run(&mut make(&["-s", "olddefconfig"]), "make olddefconfig")?;
    let config = std::fs::read_to_string(src.join(".config"))?;
    let lost = lost_options(&inputs.fragment_text, &config);
    anyhow::ensure!(
        lost.is_empty(),
        "{}: these options did not survive Kconfig (missing dependencies?): {}",
        inputs.fragment.display(),
        lost.join(", ")
    );
    let jobs = format!("-j{jobs}");
    let mut targets = vec!["-s", &jobs, make_target(&board.kernel.arch)];
    if inputs.dtbs {
        targets.push("dtbs");
    }
    run(&mut make(&targets), "building the kernel")?;
    Ok(src)
}

/// Options the fragment sets to y that the final .config does not have as y.
pub fn lost_options(fragment: &str, config: &str) -> Vec<String> {
    fragment
        .lines()
        .filter_map(|l| l.trim().strip_suffix("=y"))
        .filter(|opt| !config.lines().any(|c| c.trim() == format!("{opt}=y")))
        .map(String::from)
        .collect()
}

/// Runs a build step. Its output goes to our stderr: stdout carries only the tool's answer
/// (`cairn-image kernel` prints one path, which `scripts/image` reads).
fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .status()
        .map_err(|e| anyhow::anyhow!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    anyhow::ensure!(status.success(), "{what} failed ({status})");
    Ok(())
}

/// The SHA-256 of the file at `path`, in lowercase hex (read in 1 MiB pieces).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_that_kconfig_dropped_are_reported() {
        let frag = "# comment\nCONFIG_A=y\nCONFIG_B=y\nCONFIG_C=n\n";
        let cfg = "CONFIG_A=y\n# CONFIG_B is not set\n";
        assert_eq!(lost_options(frag, cfg), vec!["CONFIG_B".to_string()]);
    }

    #[test]
    fn a_patch_beside_the_fragment_changes_the_cache_key() {
        let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board/boards");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sunxi")).unwrap();
        for f in ["sunxi/kernel.config", "bpi-m2u.toml"] {
            std::fs::copy(real.join(f), dir.path().join(f)).unwrap();
        }
        let board = Board::load(dir.path(), "bpi-m2u").unwrap();
        let source = Source::for_boards(&real).unwrap();
        let bare = KernelInputs::new(&board, dir.path()).unwrap();
        assert!(bare.patches.is_empty());
        std::fs::write(dir.path().join("sunxi/fix.patch"), "--- a/x\n+++ b/x\n").unwrap();
        let patched = KernelInputs::new(&board, dir.path()).unwrap();
        assert_eq!(patched.patches.len(), 1);
        assert_ne!(bare.key(&board, &source), patched.key(&board, &source));
        // The real sunxi kernel carries the stmmac fix.
        let real_inputs =
            KernelInputs::new(&Board::load(&real, "bpi-m2u").unwrap(), &real).unwrap();
        assert!(real_inputs
            .patches
            .iter()
            .any(|(p, _)| p.ends_with("stmmac-keep-statistics.patch")));
    }
}
