//! The board's kernel, built from Debian's kernel source package with the board's config
//! fragment merged over `tinyconfig`, and cached by the hash of everything that goes in.
//! A cache entry is only ever found by that hash, so changed inputs always rebuild.

use cairn_bsp::Board;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bump when the build recipe below changes, so old cache entries are not reused.
const RECIPE: &str = "tinyconfig+fragment/v1";

/// Inputs of one kernel build.
pub struct KernelInputs {
    pub tarball: PathBuf,
    pub fragment: PathBuf,
    pub fragment_text: String,
    pub cross_compile: String,
}

impl KernelInputs {
    /// Checks the installed source package against the board's pinned version and sha256.
    pub fn check(board: &Board, boards_dir: &Path) -> anyhow::Result<KernelInputs> {
        let k = &board.kernel;
        let pkg = &k.source_package;
        let out = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", pkg])
            .output();
        let installed = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            _ => anyhow::bail!("kernel source package {pkg} is not installed: run scripts/setup"),
        };
        anyhow::ensure!(
            installed == k.source_version,
            "{pkg} {installed} is installed but board {} pins {}: pin the new version and its \
             sha256 in board/boards/{}.toml once it boots, or install the pinned one",
            board.name,
            k.source_version,
            board.name
        );
        let version = pkg
            .strip_prefix("linux-source-")
            .ok_or_else(|| anyhow::anyhow!("{pkg}: not a linux-source-X.Y package"))?;
        let tarball = PathBuf::from(format!("/usr/src/linux-source-{version}.tar.xz"));
        let sum = sha256_file(&tarball).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}: reinstall with `apt-get install --reinstall {pkg}`",
                tarball.display()
            )
        })?;
        anyhow::ensure!(
            sum == k.source_sha256,
            "{} is corrupt (sha256 {sum}, want {}): reinstall with `apt-get install --reinstall {pkg}`",
            tarball.display(),
            k.source_sha256
        );
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
        Ok(KernelInputs {
            tarball,
            fragment,
            fragment_text,
            cross_compile,
        })
    }

    /// The cache key: source checksum, fragment, recipe.
    pub fn key(&self, board: &Board) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [
            board.kernel.source_sha256.as_str(),
            board.kernel.arch.as_str(),
            &self.fragment_text,
            RECIPE,
        ] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part.as_bytes());
        }
        hex(ctx.finish().as_ref())[..16].to_string()
    }
}

/// Returns the path of the board's kernel Image, building it if the cache has none.
pub fn build(
    board: &Board,
    boards_dir: &Path,
    cache: &Path,
    jobs: usize,
) -> anyhow::Result<PathBuf> {
    let inputs = KernelInputs::check(board, boards_dir)?;
    let dir = cache.join(format!("kernel-{}-{}", board.name, inputs.key(board)));
    let image = dir.join("Image");
    if image.is_file() {
        return Ok(image);
    }
    eprintln!(
        "cairn-image: building the {} kernel (a few minutes, once; cached in {})",
        board.name,
        dir.display()
    );
    let work = cache.join(format!("build-{}-{}", board.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = build_in(&inputs, board, &work, jobs);
    let built = result.and_then(|src| {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("Image.tmp");
        std::fs::copy(src.join("arch/arm64/boot/Image"), &tmp)?;
        std::fs::copy(src.join(".config"), dir.join("config"))?;
        std::fs::rename(&tmp, &image)?; // the Image appears only when complete
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&work);
    built?;
    Ok(image)
}

fn build_in(
    inputs: &KernelInputs,
    board: &Board,
    work: &Path,
    jobs: usize,
) -> anyhow::Result<PathBuf> {
    run(
        Command::new("tar")
            .arg("-xf")
            .arg(&inputs.tarball)
            .arg("-C")
            .arg(work),
        "unpacking the kernel source",
    )?;
    let src = std::fs::read_dir(work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .ok_or_else(|| anyhow::anyhow!("kernel tarball had no directory"))?;
    let make = |args: &[&str]| {
        let mut c = Command::new("make");
        c.current_dir(&src)
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
    run(
        &mut make(&["-s", &format!("-j{jobs}"), "Image"]),
        "building the kernel",
    )?;
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

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    anyhow::ensure!(status.success(), "{what} failed ({status})");
    Ok(())
}

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
    Ok(hex(ctx.finish().as_ref()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
}
