//! Reproducible across checkouts: a second copy of this tree at another, longer path, built
//! later by its own `scripts/image`, gives the same `cairn-qemu-virt.img` bytes as this tree's
//! (built by `scripts/image` before the tests). The two share cargo's output directory so that
//! only the workspace's own crates are compiled again; the output directory is named the same
//! way in both, so what it proves is that the checkout's path, the time and the build order do
//! not reach the bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// The files of this checkout (tracked and new, not ignored), copied to `to`.
fn copy_checkout(from: &Path, to: &Path) {
    let out = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(from)
        .output()
        .expect("git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).unwrap();
        let src = from.join(name);
        if !src.exists() {
            continue; // deleted in the work tree, not yet in git
        }
        let dst = to.join(name);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&src, &dst).unwrap(); // keeps the mode: scripts stay executable
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

#[test]
fn a_second_checkout_at_another_path_builds_the_same_image() {
    let root = root();
    let ours = root.join("target/images/cairn-qemu-virt.img");
    assert!(
        ours.is_file(),
        "{} is missing: scripts/image builds it (scripts/test does)",
        ours.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp
        .path()
        .join("a/much/longer/path/to/another/clone-of-cairn");
    copy_checkout(&root, &other);
    // The build number comes from the checkout's history, which a copy of its files has not:
    // the same number, as a release build would be given it.
    let count = Command::new("git")
        .args(["rev-list", "--count", "HEAD"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(count.status.success(), "git rev-list in {}", root.display());
    let build = String::from_utf8(count.stdout).unwrap();
    let status = Command::new(other.join("scripts/image"))
        .arg("qemu-virt")
        .current_dir(&other)
        .env("CAIRN_BUILD", build.trim())
        .env("CAIRN_SKIP_SETUP", "1")
        .env("CARGO_TARGET_DIR", root.join("target"))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "scripts/image in the second checkout failed"
    );
    for name in ["cairn-qemu-virt.img", "qemu-virt-uboot-env.bin"] {
        let a = std::fs::read(root.join("target/images").join(name)).unwrap();
        let b = std::fs::read(other.join("target/images").join(name)).unwrap();
        assert!(
            a == b,
            "{name} differs between {} and {} from byte {:?} on",
            root.display(),
            other.display(),
            first_difference(&a, &b)
        );
    }
}
