//! Kernel modules a board lists, loaded with their dependencies first. Dependencies come from
//! the kernel's `modules.dep` (written by depmod at build time); no modprobe on the device.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Loads `names` from /lib/modules/$(uname -r). Already-loaded modules are fine.
pub fn load_all(names: &[String]) -> anyhow::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let release = nix::sys::utsname::uname()?
        .release()
        .to_string_lossy()
        .into_owned();
    let dir = PathBuf::from("/lib/modules").join(release);
    let dep_path = dir.join("modules.dep");
    let deps = std::fs::read_to_string(&dep_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dep_path.display()))?;
    let order = load_order(&deps, names)?;
    for rel in order {
        let path = dir.join(&rel);
        let file =
            std::fs::File::open(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => super::log!("loaded module {rel}"),
            Err(e) => anyhow::bail!("loading module {}: {e}", path.display()),
        }
    }
    Ok(())
}

/// A module's name as the kernel knows it: file stem, `-` read as `_`.
fn module_name(path: &str) -> String {
    let base = Path::new(path)
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// The files to load, in order, so that each module's dependencies come before it.
pub fn load_order(modules_dep: &str, wanted: &[String]) -> anyhow::Result<Vec<String>> {
    // name → (file, deps' files), from lines "kernel/a.ko: kernel/b.ko kernel/c.ko".
    let mut by_name: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for (i, line) in modules_dep.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (file, deps) = line
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("modules.dep:{}: no ':' in '{line}'", i + 1))?;
        let deps = deps.split_whitespace().map(String::from).collect();
        by_name.insert(module_name(file), (file.to_string(), deps));
    }
    let by_file: BTreeMap<&str, &Vec<String>> =
        by_name.values().map(|(f, d)| (f.as_str(), d)).collect();
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    for name in wanted {
        let (file, _) = by_name
            .get(&name.replace('-', "_"))
            .ok_or_else(|| anyhow::anyhow!("module '{name}' is not in modules.dep"))?;
        visit(file, &by_file, &mut done, &mut BTreeSet::new(), &mut order)?;
    }
    Ok(order)
}

fn visit(
    file: &str,
    by_file: &BTreeMap<&str, &Vec<String>>,
    done: &mut BTreeSet<String>,
    path: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) -> anyhow::Result<()> {
    if done.contains(file) {
        return Ok(());
    }
    if !path.insert(file.to_string()) {
        anyhow::bail!("modules.dep: dependency cycle through {file}");
    }
    for dep in by_file.get(file).map(|d| d.as_slice()).unwrap_or(&[]) {
        visit(dep, by_file, done, path, order)?;
    }
    path.remove(file);
    done.insert(file.to_string());
    order.push(file.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko\n\
kernel/fs/jbd2/jbd2.ko:\n\
kernel/fs/mbcache.ko:\n\
kernel/lib/crc16.ko:\n\
kernel/drivers/virtio/virtio-mmio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n\
kernel/drivers/virtio/virtio.ko:\n";

    #[test]
    fn dependencies_come_first_and_once() {
        let order =
            load_order(DEP, &["virtio_mmio".into(), "ext4".into(), "virtio".into()]).unwrap();
        let pos = |f: &str| order.iter().position(|o| o.ends_with(f)).unwrap();
        assert!(pos("/virtio.ko") < pos("virtio_ring.ko"));
        assert!(pos("virtio_ring.ko") < pos("virtio-mmio.ko"));
        assert!(pos("jbd2.ko") < pos("ext4.ko"));
        assert!(pos("crc16.ko") < pos("ext4.ko"));
        assert_eq!(order.len(), 7, "{order:?}");
    }

    #[test]
    fn unknown_module_and_cycle_are_clear_errors() {
        let e = load_order(DEP, &["nosuch".into()]).unwrap_err().to_string();
        assert_eq!(e, "module 'nosuch' is not in modules.dep");
        let e = load_order("a.ko: b.ko\nb.ko: a.ko\n", &["a".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cycle"), "{e}");
        let e = load_order("garbage line\n", &["a".into()])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("modules.dep:1:"), "{e}");
    }
}
