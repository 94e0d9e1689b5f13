//! The system layer: a read-only squashfs of pinned Debian packages (`services/packages.toml`)
//! for one architecture, mounted on `/usr` by `cairn init`. Fetched through a private APT
//! configuration (own sources, lists, cache and an empty dpkg status: the host's dpkg and its
//! architectures are untouched; apt checks the archive's signatures), unpacked, merged into
//! `/usr`, pruned and packed reproducibly. Cached by the hash of everything that goes in.

use crate::run;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bump when the recipe below changes, so old cache entries are not reused.
const RECIPE: &str = "system/v1";

/// The pin file's name beside the service manifests.
pub const PINS: &str = "packages.toml";

/// Paths left out of the layer (below `usr/` after the merge): nothing a server runs reads them.
const PRUNED: &[&str] = &[
    "share/doc",
    "share/doc-base",
    "share/man",
    "share/info",
    "share/locale",
    "share/lintian",
    "share/bug",
    "share/menu",
    "lib/systemd",
    // glibc's iconv modules (20 MiB): the servers convert only UTF-8, which glibc has built in.
    "lib/aarch64-linux-gnu/gconv",
    "lib/arm-linux-gnueabihf/gconv",
];

/// Where the layer's root-certificate bundle is (from `ca-certificates`, joined at build time).
pub const CA_BUNDLE: &str = "share/cairn/ca-certificates.crt";
/// Where the layer lists its packages and versions (for `cairn` and for people on the device).
pub const MANIFEST: &str = "share/cairn/packages";

/// `services/packages.toml` (every table but `apt` is an architecture).
#[derive(Debug, Deserialize)]
pub struct Pins {
    /// The private APT configuration's sources.
    pub apt: AptSources,
    /// Per architecture (Debian's names: arm64, armhf).
    #[serde(flatten)]
    pub arch: BTreeMap<String, ArchPins>,
    /// The file, named in errors.
    #[serde(skip)]
    pub file: PathBuf,
}

/// Where packages come from.
#[derive(Debug, Deserialize, Hash)]
#[serde(deny_unknown_fields)]
pub struct AptSources {
    /// The keyring apt checks the archive's signatures with.
    pub keyring: PathBuf,
    /// `URI SUITE COMPONENT…` lines.
    pub sources: Vec<String>,
}

/// One architecture's pins.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchPins {
    /// Package → exact version.
    pub packages: BTreeMap<String, String>,
    /// Package → why the layer does without it although apt's closure names it.
    #[serde(default)]
    pub left_out: BTreeMap<String, String>,
}

impl Pins {
    /// Reads the pin file.
    pub fn load(file: &Path) -> anyhow::Result<Pins> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let mut p: Pins =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        for (arch, pins) in &p.arch {
            for name in pins.packages.keys() {
                anyhow::ensure!(
                    !pins.left_out.contains_key(name),
                    "{}: {arch}: {name} is both pinned and left out",
                    file.display()
                );
            }
        }
        p.file = file.to_path_buf();
        Ok(p)
    }

    /// The cache key of `arch`'s layer: recipe, sources and pins.
    pub fn key(&self, arch: &str) -> anyhow::Result<String> {
        let pins = self.for_arch(arch)?;
        let text = format!(
            "{RECIPE}\n{arch}\n{}\n{:?}\n{:?}\n{:?}\n",
            self.apt.keyring.display(),
            self.apt.sources,
            pins.packages,
            pins.left_out.keys().collect::<Vec<_>>()
        );
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        Ok(hex::encode(&digest.as_ref()[..8]))
    }

    fn for_arch(&self, arch: &str) -> anyhow::Result<&ArchPins> {
        self.arch.get(arch).ok_or_else(|| {
            anyhow::anyhow!(
                "{} pins no packages for {arch} (it has: {})",
                self.file.display(),
                self.arch.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// Debian's name for the board's architecture.
pub fn debian_arch(board: &cairn_bsp::Board) -> anyhow::Result<&'static str> {
    match board.target.split('-').next() {
        Some("aarch64") => Ok("arm64"),
        Some("armv7") => Ok("armhf"),
        _ => anyhow::bail!(
            "board {}: no Debian architecture is known for target {}",
            board.name,
            board.target
        ),
    }
}

/// What one package adds to the layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    /// Package name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Bytes of its files that stay in the layer (after pruning).
    pub bytes: u64,
}

/// The layer for `arch` in `cache` (built if it is not there); its path and what each package
/// costs unpacked.
pub fn build(pins: &Pins, arch: &str, cache: &Path) -> anyhow::Result<(PathBuf, Vec<Cost>)> {
    let key = pins.key(arch)?;
    let dir = cache.join("system");
    let out = dir.join(format!("{arch}-{key}.sqfs"));
    let costs_file = dir.join(format!("{arch}-{key}.costs"));
    if out.is_file() {
        if let Ok(costs) = read_costs(&costs_file) {
            return Ok((out, costs));
        }
    }
    std::fs::create_dir_all(&dir)?;
    let apt = Apt::new(&cache.join("apt").join(arch), &pins.apt, arch)?;
    let wanted = pins.for_arch(arch)?;
    apt.check_closure(wanted, pins)?;
    let debs = cache.join("debs").join(arch);
    std::fs::create_dir_all(&debs)?;
    let mut files = Vec::new();
    for (name, version) in &wanted.packages {
        files.push((name, version, apt.fetch(name, version, &debs)?));
    }

    let work = dir.join(format!("work-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let result = (|| -> anyhow::Result<Vec<Cost>> {
        let mut costs = Vec::new();
        let root = work.join("root");
        std::fs::create_dir_all(root.join("usr"))?;
        for (name, version, deb) in &files {
            // Each package alone first, to measure it; then moved into the merged tree.
            let one = work.join("one");
            let _ = std::fs::remove_dir_all(&one);
            run(
                Command::new("dpkg-deb").arg("-x").arg(deb).arg(&one),
                &format!("unpacking {name} {version}"),
            )?;
            merge_usr(&one)?;
            prune(&one.join("usr"))?;
            costs.push(Cost {
                name: name.to_string(),
                version: version.to_string(),
                bytes: tree_bytes(&one.join("usr"))?,
            });
            move_tree(&one.join("usr"), &root.join("usr"))?;
        }
        ca_bundle(&root.join("usr"))?;
        let manifest: String = costs
            .iter()
            .map(|c| format!("{} {}\n", c.name, c.version))
            .collect();
        let m = root.join("usr").join(MANIFEST);
        std::fs::create_dir_all(m.parent().unwrap())?;
        std::fs::write(&m, manifest)?;
        let tmp = work.join("layer.sqfs");
        run(
            Command::new("mksquashfs")
                .arg(root.join("usr"))
                .arg(&tmp)
                .args(["-noappend", "-quiet", "-no-progress", "-comp", "xz"])
                // 256 KiB blocks: 4 % smaller than the default 128 KiB; 1 MiB would save 6 % more
                // but make every cold read of the mapped ICU data decompress a whole MiB.
                .args(["-b", "256K"])
                .args(["-all-root", "-no-xattrs", "-no-exports"])
                .args(["-mkfs-time", &crate::EPOCH.to_string()])
                .args(["-all-time", &crate::EPOCH.to_string()]),
            "mksquashfs",
        )?;
        std::fs::rename(&tmp, &out)?;
        write_costs(&costs_file, &costs)?;
        Ok(costs)
    })();
    let _ = std::fs::remove_dir_all(&work);
    Ok((out, result?))
}

/// The pinned packages of `arch` in `pins` (`board/boot-packages.toml`), each unpacked into
/// its own directory `DIR/NAME/` (cached by the pins' hash); returns `DIR`. For files that go
/// on a card as they are (bootloaders, firmware), not into the layer.
pub fn unpack(pins: &Pins, arch: &str, cache: &Path) -> anyhow::Result<PathBuf> {
    let key = pins.key(arch)?;
    let out = cache.join("boot").join(format!("{arch}-{key}"));
    if out.is_dir() {
        return Ok(out);
    }
    // Its own APT directory: other sources than the layer's, whose lists stay as they are.
    let apt = Apt::new(
        &cache.join("apt").join(format!("{arch}-boot")),
        &pins.apt,
        arch,
    )?;
    let wanted = pins.for_arch(arch)?;
    apt.check_closure(wanted, pins)?;
    let debs = cache.join("debs").join(arch);
    std::fs::create_dir_all(&debs)?;
    let work = cache
        .join("boot")
        .join(format!("work-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let result = (|| -> anyhow::Result<()> {
        std::fs::create_dir_all(&work)?;
        for (name, version) in &wanted.packages {
            let deb = apt.fetch(name, version, &debs)?;
            run(
                Command::new("dpkg-deb")
                    .arg("-x")
                    .arg(&deb)
                    .arg(work.join(name)),
                &format!("unpacking {name} {version}"),
            )?;
        }
        std::fs::rename(&work, &out)?; // the directory appears only when complete
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result?;
    Ok(out)
}

/// A private APT configuration for one architecture under `dir`.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(dir: &Path, sources: &AptSources, arch: &str) -> anyhow::Result<Apt> {
        for d in [
            "lists/partial",
            "cache/archives/partial",
            "etc/sources.list.d",
        ] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        anyhow::ensure!(
            sources.keyring.is_file(),
            "{}: no such keyring: install debian-archive-keyring (scripts/setup does)",
            sources.keyring.display()
        );
        let list: String = sources
            .sources
            .iter()
            .map(|s| {
                format!(
                    "deb [arch={arch} signed-by={}] {s}\n",
                    sources.keyring.display()
                )
            })
            .collect();
        let list_file = dir.join("etc/sources.list");
        // New sources mean the lists on disk are of other suites: fetch them anew.
        if std::fs::read_to_string(&list_file).ok().as_deref() != Some(list.as_str()) {
            let _ = std::fs::remove_dir_all(dir.join("lists"));
            std::fs::create_dir_all(dir.join("lists/partial"))?;
            std::fs::write(&list_file, &list)?;
        }
        std::fs::write(dir.join("status"), "")?;
        std::fs::write(dir.join("etc/arch"), arch)?;
        Ok(Apt {
            dir: dir.to_path_buf(),
        })
    }

    fn command(&self, program: &str) -> Command {
        let d = |p: &str| self.dir.join(p).display().to_string();
        let arch = std::fs::read_to_string(self.dir.join("etc/arch")).unwrap_or_default();
        let mut c = Command::new(program);
        for (k, v) in [
            ("Dir::Etc::SourceList", d("etc/sources.list")),
            ("Dir::Etc::SourceParts", d("etc/sources.list.d")),
            ("Dir::Etc::Preferences", d("etc/preferences")),
            ("Dir::Etc::PreferencesParts", d("etc/preferences.d")),
            ("Dir::State::Lists", d("lists")),
            ("Dir::State::status", d("status")),
            ("Dir::Cache", d("cache")),
            ("APT::Architecture", arch.clone()),
            ("APT::Architectures", arch),
            ("APT::Install-Recommends", "false".into()),
        ] {
            c.arg("-o").arg(format!("{k}={v}"));
        }
        c
    }

    fn has_lists(&self) -> bool {
        std::fs::read_dir(self.dir.join("lists"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
            })
            .unwrap_or(false)
    }

    fn update(&self) -> anyhow::Result<()> {
        eprintln!(
            "cairn-image: reading the Debian archive's package lists into {}",
            self.dir.display()
        );
        run(
            self.command("apt-get").args(["update", "-q"]),
            "apt-get update (the system layer's private configuration)",
        )
    }

    /// Every package apt's closure of the pins names must be pinned or left out; every pin must
    /// be in the archive at its version.
    fn check_closure(&self, wanted: &ArchPins, pins: &Pins) -> anyhow::Result<()> {
        if !self.has_lists() {
            self.update()?;
        }
        let specs: Vec<String> = wanted
            .packages
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        let simulate = |apt: &Apt| {
            apt.command("apt-get")
                .args(["install", "-s", "-q"])
                .args(&specs)
                .output()
        };
        let mut out = simulate(self)?;
        if !out.status.success() {
            // Old lists may not know a newer pin: read them again once.
            self.update()?;
            out = simulate(self)?;
        }
        if !out.status.success() {
            for (name, version) in &wanted.packages {
                let listed = self.versions(name);
                if !listed.contains(version) {
                    anyhow::bail!(
                        "{name} {version} is not in the archive (available: {}): pin one of them in {}",
                        if listed.is_empty() { "none".into() } else { listed.join(", ") },
                        pins.file.display()
                    );
                }
            }
            anyhow::bail!(
                "apt cannot resolve the system layer's packages: {}",
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .chain(String::from_utf8_lossy(&out.stderr).lines())
                    .filter(|l| l.starts_with("E:") || l.contains("Depends:"))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        for (name, version) in closure(&String::from_utf8_lossy(&out.stdout)) {
            match wanted.packages.get(&name) {
                Some(v) if *v == version => {}
                Some(v) => anyhow::bail!(
                    "apt wants {name} {version} where {} pins {v}",
                    pins.file.display()
                ),
                None if wanted.left_out.contains_key(&name) => {}
                None => anyhow::bail!(
                    "{name} {version} is needed by the pinned packages: pin it in {} (or leave it out there, saying why)",
                    pins.file.display()
                ),
            }
        }
        Ok(())
    }

    fn versions(&self, name: &str) -> Vec<String> {
        let out = self
            .command("apt-cache")
            .args(["madison", name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| l.split('|').nth(1).map(|s| s.trim().to_string()))
            .collect();
        v.dedup();
        v
    }

    /// The package's .deb in `debs` (downloaded, signature-checked by apt, if not there yet).
    fn fetch(&self, name: &str, version: &str, debs: &Path) -> anyhow::Result<PathBuf> {
        let dest = debs.join(format!("{name}_{}.deb", version.replace(':', "%3a")));
        if dest.is_file() {
            return Ok(dest);
        }
        let work = debs.join(format!("fetch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let got = run(
            self.command("apt-get")
                .args(["download", "-q", &format!("{name}={version}")])
                .current_dir(&work),
            &format!("apt-get download {name}={version}"),
        )
        .and_then(|()| {
            std::fs::read_dir(&work)?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
                .ok_or_else(|| anyhow::anyhow!("apt-get download {name}={version} left no .deb"))
        })
        .and_then(|deb| Ok(std::fs::rename(deb, &dest)?));
        let _ = std::fs::remove_dir_all(&work);
        got?;
        Ok(dest)
    }
}

/// `(name, version)` of each `Inst` line of `apt-get install -s`.
pub fn closure(simulation: &str) -> Vec<(String, String)> {
    simulation
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Inst ")?;
            let (name, rest) = rest.split_once(' ')?;
            let version = rest.strip_prefix('(')?.split_whitespace().next()?;
            let name = name.split(':').next()?; // "libc6:arm64" in multi-arch output
            Some((name.to_string(), version.to_string()))
        })
        .collect()
}

/// Moves `/bin`, `/sbin`, `/lib` (and any other top-level directory a package ships, such as
/// `/etc` or `/var`, which are dropped) so that only `usr/` remains: the layer is mounted on
/// `/usr` and the initramfs links `/lib` to `usr/lib`.
fn merge_usr(root: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join("usr"))?;
    for entry in std::fs::read_dir(root)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        match name.as_str() {
            "usr" => {}
            "bin" | "sbin" | "lib" | "lib64" if path.is_dir() && !path.is_symlink() => {
                move_tree(&path, &root.join("usr").join(&name))?;
                std::fs::remove_dir(&path)?;
            }
            _ => {
                if path.is_dir() && !path.is_symlink() {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
            }
        }
    }
    Ok(())
}

fn prune(usr: &Path) -> anyhow::Result<()> {
    for p in PRUNED {
        let path = usr.join(p);
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}

/// Moves every entry of `from` into `to`, merging directories that exist on both sides.
fn move_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)?.flatten() {
        let src = entry.path();
        let dest = to.join(entry.file_name());
        let is_dir = src.is_dir() && !src.is_symlink();
        if is_dir && dest.is_dir() && !dest.is_symlink() {
            move_tree(&src, &dest)?;
            std::fs::remove_dir(&src)?;
        } else {
            // The same link twice is harmless; any other clash would lose one package's file.
            let same_link = src.is_symlink()
                && dest.is_symlink()
                && std::fs::read_link(&src)? == std::fs::read_link(&dest)?;
            anyhow::ensure!(
                dest.symlink_metadata().is_err() || same_link,
                "two packages ship {}",
                dest.display()
            );
            std::fs::rename(&src, &dest)?;
        }
    }
    Ok(())
}

/// Joins ca-certificates' root certificates into one bundle (what `update-ca-certificates`
/// would write to /etc/ssl/certs), and drops the single files.
fn ca_bundle(usr: &Path) -> anyhow::Result<()> {
    let dir = usr.join("share/ca-certificates");
    if !dir.is_dir() {
        return Ok(());
    }
    let mut certs = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "crt") {
                certs.push(p);
            }
        }
    }
    certs.sort();
    let mut bundle = Vec::new();
    for c in &certs {
        bundle.extend(std::fs::read(c)?);
        if !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
    }
    let out = usr.join(CA_BUNDLE);
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::write(out, bundle)?;
    std::fs::remove_dir_all(&dir)?;
    let sbin = usr.join("sbin/update-ca-certificates");
    if sbin.exists() {
        std::fs::remove_file(sbin)?;
    }
    Ok(())
}

fn tree_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let m = e.path().symlink_metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    Ok(total)
}

fn write_costs(file: &Path, costs: &[Cost]) -> anyhow::Result<()> {
    let text: String = costs
        .iter()
        .map(|c| format!("{} {} {}\n", c.name, c.version, c.bytes))
        .collect();
    Ok(std::fs::write(file, text)?)
}

fn read_costs(file: &Path) -> anyhow::Result<Vec<Cost>> {
    std::fs::read_to_string(file)?
        .lines()
        .map(|l| {
            let mut w = l.split(' ');
            match (w.next(), w.next(), w.next().and_then(|b| b.parse().ok())) {
                (Some(n), Some(v), Some(bytes)) => Ok(Cost {
                    name: n.into(),
                    version: v.into(),
                    bytes,
                }),
                _ => Err(anyhow::anyhow!("{}: malformed line {l:?}", file.display())),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closure_is_read_from_apts_simulation() {
        let sim = "NOTE: This is only a simulation!\n\
                   Inst libc6 (2.36-9+deb12u14 Debian-Security:12/stable-security [arm64])\n\
                   Inst zlib1g (1:1.2.13.dfsg-1+deb12u1 Debian:12.12/stable [arm64])\n\
                   Conf libc6 (2.36-9+deb12u14 Debian-Security:12/stable-security [arm64])\n";
        assert_eq!(
            closure(sim),
            vec![
                ("libc6".to_string(), "2.36-9+deb12u14".to_string()),
                ("zlib1g".to_string(), "1:1.2.13.dfsg-1+deb12u1".to_string()),
            ]
        );
    }

    #[test]
    fn merging_moves_lib_into_usr_and_drops_etc() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("lib/aarch64-linux-gnu")).unwrap();
        std::fs::write(root.join("lib/ld-linux-aarch64.so.1"), b"ld").unwrap();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::write(root.join("usr/lib/x"), b"x").unwrap();
        std::fs::create_dir_all(root.join("etc/prosody")).unwrap();
        std::fs::write(root.join("etc/prosody/prosody.cfg.lua"), b"--").unwrap();
        merge_usr(root).unwrap();
        assert!(root.join("usr/lib/ld-linux-aarch64.so.1").is_file());
        assert!(root.join("usr/lib/aarch64-linux-gnu").is_dir());
        assert!(root.join("usr/lib/x").is_file());
        assert!(!root.join("etc").exists() && !root.join("lib").exists());
    }

    #[test]
    fn a_file_two_packages_ship_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d.join("bin")).unwrap();
            std::fs::write(d.join("bin/tool"), b"t").unwrap();
        }
        let e = move_tree(&a, &b).unwrap_err().to_string();
        assert!(
            e.contains("two packages ship") && e.contains("bin/tool"),
            "{e}"
        );
    }
}
