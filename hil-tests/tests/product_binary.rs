//! The shipped binary has no test fixture: the product firmware build (`scripts/image qemu-virt`,
//! kept as `target/aarch64-unknown-linux-musl/firmware/cairn.product`), run under
//! `qemu-aarch64-static`, has no `cairn fixture` subcommand and none of its code, while the test
//! image's build (feature `test-fixtures`, `cairn.test-fixtures` beside it) does.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The product build of the firmware, where `scripts/image` leaves it (`$CARGO_TARGET_DIR`, as
/// for scripts/image, relative to the checkout; `target` when unset).
fn product_cairn() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tdir = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root.join(d) })
        .unwrap_or_else(|| root.join("target"));
    let exe = tdir.join("aarch64-unknown-linux-musl/firmware/cairn.product");
    assert!(
        exe.is_file(),
        "{} is missing: `scripts/image qemu-virt` builds it (scripts/test does)",
        exe.display()
    );
    exe
}

/// Runs the aarch64 binary with `args` under qemu-aarch64-static, killing it after `limit`.
fn run(exe: &Path, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new("qemu-aarch64-static")
        .arg(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("qemu-aarch64-static: {e} (scripts/setup installs it)"));
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`cairn {}` still runs after {limit:?}: the product binary runs it",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn the_product_binary_has_no_fixture_subcommand() {
    let exe = product_cairn();
    let help = run(&exe, &["--help"], Duration::from_secs(60));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "cairn --help failed: {help:?}");
    for sub in ["init", "ctl", "vault", "node"] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(sub)),
            "`{sub}` is not listed by cairn --help:\n{text}"
        );
    }
    assert!(
        !text
            .lines()
            .any(|l| l.split_whitespace().next() == Some("fixture")),
        "cairn --help lists `fixture`:\n{text}"
    );

    let o = run(&exe, &["fixture", "sleep"], Duration::from_secs(60));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("unrecognized subcommand 'fixture'"),
        "`cairn fixture sleep` is not an error in the product binary: {o:?}"
    );

    // Nor the benchmarks run on the device (`cairn bench`, test images only).
    let o = run(&exe, &["bench", "card"], Duration::from_secs(60));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("unrecognized subcommand 'bench'"),
        "`cairn bench card` is not an error in the product binary: {o:?}"
    );

    // Nor is the fixtures' code in it (their role names are in the test build's strings).
    let bytes = std::fs::read(&exe).unwrap();
    assert!(
        !bytes.windows(16).any(|w| w == b"crash-on-command"),
        "{}: the fixtures' code is in the product binary",
        exe.display()
    );

    // Nor the storage node's fault switch (`--hostile`, a misbehaving holder). Its home is a
    // file, so a binary that took the switch fails at once too, for another reason.
    let home = exe.to_str().unwrap();
    let o = run(
        &exe,
        &[
            "node",
            "run",
            "--home",
            home,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--hostile",
            "wrong-bytes",
        ],
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("unexpected argument '--hostile'"),
        "`cairn node run --hostile` is accepted by the product binary: {o:?}"
    );
    assert!(
        !bytes.windows(11).any(|w| w == b"wrong-bytes"),
        "{}: the node's fault switch is in the product binary",
        exe.display()
    );
}
