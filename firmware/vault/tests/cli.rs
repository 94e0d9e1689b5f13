//! The `cairn vault` command line end to end, in process: init, put, ls, get, snapshots,
//! recovery-key and restore on a new home, as a user would type them.

use std::fs;
use std::path::Path;

use cairn_vault::cli::{run_to, Args};
use clap::Parser;

fn vault(home: &Path, pass: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut argv = vec![
        "vault".to_string(),
        "--quiet".into(),
        "--home".into(),
        home.display().to_string(),
        "--passphrase-file".into(),
        pass.display().to_string(),
    ];
    argv.extend(args.iter().map(|s| s.to_string()));
    let mut out = Vec::new();
    run_to(Args::try_parse_from(argv)?, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn init_put_ls_get_snapshots_recovery_and_restore() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let pass = root.join("pass");
    fs::write(&pass, "hunter2 but longer\n").unwrap();
    let home = root.join("home");
    let sticks: Vec<String> = (0..4)
        .map(|i| format!("dir:{}", root.join(format!("usb{i}")).display()))
        .collect();
    let mut init = vec!["init", "--k", "2", "--n", "4"];
    for s in &sticks {
        init.extend(["--target", s.as_str()]);
    }
    let out = vault(&home, &pass, &init).unwrap();
    assert!(out.contains("2-of-4"), "{out}");
    let key_line = out
        .lines()
        .find(|l| l.trim().starts_with("cairn-recovery-1"))
        .expect("recovery key printed")
        .trim()
        .to_string();
    let e = vault(&home, &pass, &init).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");

    let docs = root.join("docs");
    fs::create_dir_all(docs.join("sub")).unwrap();
    fs::write(docs.join("a.txt"), "alpha").unwrap();
    fs::write(docs.join("sub/b.txt"), vec![b'b'; 300_000]).unwrap();
    let out = vault(&home, &pass, &["put", docs.to_str().unwrap()]).unwrap();
    assert!(out.starts_with("snapshot 1: 2 files"), "{out}");

    let out = vault(&home, &pass, &["ls"]).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].starts_with('d') && lines[0].ends_with(" docs/"),
        "{out}"
    );
    assert!(
        lines[3].contains("300000") && lines[3].ends_with("docs/sub/b.txt"),
        "{out}"
    );
    let out = vault(&home, &pass, &["ls", "docs/sub"]).unwrap();
    assert_eq!(out.lines().count(), 2, "{out}");
    let e = vault(&home, &pass, &["ls", "nope"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope: not in the vault"), "{e}");

    let dest = root.join("got.txt");
    vault(&home, &pass, &["get", "docs/a.txt", dest.to_str().unwrap()]).unwrap();
    assert_eq!(fs::read_to_string(&dest).unwrap(), "alpha");

    fs::write(docs.join("a.txt"), "alpha 2").unwrap();
    vault(&home, &pass, &["put", docs.to_str().unwrap()]).unwrap();
    let out = vault(&home, &pass, &["snapshots"]).unwrap();
    let seqs: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(seqs, ["2", "1"], "{out}");

    let out = vault(&home, &pass, &["recovery-key"]).unwrap();
    assert!(out.contains(&key_line), "{out}");
    assert!(out.contains("cairn:root:1:"), "{out}");

    let bad = root.join("bad");
    fs::write(&bad, "wrong").unwrap();
    let e = vault(&home, &bad, &["ls"]).unwrap_err().to_string();
    assert!(e.contains("wrong passphrase"), "{e}");

    // A new device: the recovery key, the sticks, and everything comes back.
    let home2 = root.join("home2");
    let restored = root.join("restored");
    let mut restore = vec!["restore", "--recovery-key", key_line.as_str()];
    for s in sticks.iter().rev() {
        restore.extend(["--target", s.as_str()]);
    }
    restore.push(restored.to_str().unwrap());
    let out = vault(&home2, &pass, &restore).unwrap();
    assert!(out.contains("snapshot 2, 2-of-4"), "{out}");
    assert_eq!(
        fs::read_to_string(restored.join("docs/a.txt")).unwrap(),
        "alpha 2"
    );
    assert_eq!(
        fs::read(restored.join("docs/sub/b.txt")).unwrap(),
        vec![b'b'; 300_000]
    );

    // A typo in the key is caught before anything is touched.
    let mut typo = key_line.clone().into_bytes();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).unwrap();
    let e = vault(
        &root.join("home3"),
        &pass,
        &["restore", "--recovery-key", &typo, "--target", &sticks[0]],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("checksum"), "{e}");
    assert!(!root.join("home3").exists());
}
