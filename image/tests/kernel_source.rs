//! The kernel source pin and `cairn-image kernel` as `scripts/image` uses it: stdout carries
//! exactly the Image's path, everything else goes to stderr, and a pin that cannot be had is
//! one line naming what the archive has now and the file to change.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn boards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../board/boards")
}

fn kernel(cache: &Path, source: Option<&Path>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn-image"));
    c.arg("--boards")
        .arg(boards())
        .args(["kernel", "qemu-virt", "--cache"])
        .arg(cache);
    if let Some(s) = source {
        c.arg("--source").arg(s);
    }
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The real pin, with one field changed.
fn pin_with(dir: &Path, field: &str, value: &str) -> PathBuf {
    let real = std::fs::read_to_string(boards().join("../kernel-source.toml")).unwrap();
    let text: String = real
        .lines()
        .map(|l| {
            if l.starts_with(&format!("{field} = ")) {
                format!("{field} = \"{value}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let p = dir.join("kernel-source.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_pin_that_left_the_archive_names_the_versions_there_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pin = pin_with(dir.path(), "version", "0.0-0");
    let out = kernel(&dir.path().join("cache"), Some(&pin));
    assert_eq!(out.status.code(), Some(1));
    // apt prints its progress on stdout; none of it may reach ours.
    assert_eq!(text(&out.stdout), "", "stdout must carry only the answer");
    let err = text(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("linux-source-6.1 0.0-0 is no longer in the Debian archive")
            && last.contains("available now: 6.1.")
            && last.contains(&pin.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_corrupt_cached_tarball_is_named_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let tarball = cache.join("src/linux-source-6.1_6.1.192-2.tar.xz");
    std::fs::create_dir_all(tarball.parent().unwrap()).unwrap();
    std::fs::write(&tarball, b"not a kernel").unwrap();
    let out = kernel(&cache, None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{} is corrupt", tarball.display()))
            && err.contains("delete it and run again"),
        "{err}"
    );
    assert_eq!(std::fs::read(&tarball).unwrap(), b"not a kernel");
}

#[test]
fn a_malformed_pin_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let pin = pin_with(dir.path(), "sha256", "x");
    std::fs::write(&pin, "package = \"linux-source-6.1\"\nversoin = \"1\"\n").unwrap();
    let out = kernel(&dir.path().join("cache"), Some(&pin));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&pin.display().to_string()) && err.contains("versoin"),
        "{err}"
    );
}

/// The kernel `scripts/image` uses (its cache, `CAIRN_CACHE`, is warm after `scripts/image`;
/// if it is cold, this is the cold build): stdout is the Image's path and nothing else.
#[test]
fn the_kernel_command_prints_exactly_one_path() {
    let cache = std::env::var_os("CAIRN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
            home.join("cairn")
        });
    let out = kernel(&cache, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let path = stdout.strip_suffix('\n').expect("one line");
    assert!(!path.contains('\n'), "more than a path on stdout: {stdout}");
    let image = Path::new(path);
    assert!(image.is_file(), "{path} is not a file");
    // An arm64 Linux Image: its header's magic "ARM\x64" at byte 56.
    let head = std::fs::read(image).unwrap();
    assert_eq!(&head[56..60], b"ARM\x64");
}

/// `scripts/setup` with a host package pinned at a version Debian does not have: one line
/// naming the versions the archive has and the file to change, and nothing installed.
#[test]
fn a_host_package_pin_that_left_the_archive_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("host-packages");
    std::fs::write(&list, "# a pin Debian never had\nbc=0.0-0\n").unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let before = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "bc"])
        .output()
        .unwrap()
        .stdout;
    let out = Command::new(root.join("scripts/setup"))
        .env("CAIRN_HOST_PACKAGES", &list)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("bc 0.0-0 (pinned in ")
            && last.contains(&list.display().to_string())
            && last.contains("is no longer in the Debian archive (available now: 1."),
        "{err}"
    );
    let after = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "bc"])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(before, after, "setup changed bc");
}
