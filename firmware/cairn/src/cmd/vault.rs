//! `cairn vault …`: the vault's command line over the `cairn-vault` library. `node:SOCKET`
//! targets and `--node` reach the storage node through the connector this module hands to the
//! vault ([`NodeSockets`], over `cairn-node`'s control client).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use cairn_vault::home::{Config, Target};
use cairn_vault::keys::{KdfParams, OwnerKey, OwnerSecret, RootCapability};
use cairn_vault::manifest::EntryKind;
use cairn_vault::progress::{human_bytes, utc_time, LinePrinter, NoProgress, Progress};
use cairn_vault::seal::AeadKind;
use cairn_vault::vault::{Backend, NodeConnector};
use cairn_vault::{GetReport, Vault};

/// Environment variable that may hold the passphrase (for scripts; prefer the prompt).
pub const PASSPHRASE_ENV: &str = "CAIRN_VAULT_PASSPHRASE";

/// Encrypted, erasure-coded storage of your files; only you hold the key.
#[derive(Parser, Debug)]
pub struct Args {
    /// Where the vault keeps its state (default: $XDG_DATA_HOME/cairn/vault or
    /// ~/.local/share/cairn/vault).
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Read the passphrase from this file's first line (default: $CAIRN_VAULT_PASSPHRASE, or a
    /// prompt).
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// No progress lines.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Use the storage node whose control socket is SOCKET for shards, whatever targets the
    /// vault was created with (on a plug: /run/node/node.sock).
    #[arg(long, global = true, value_name = "SOCKET")]
    pub node: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The vault's commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a vault: a new key, k-of-n erasure coding over n targets.
    Init {
        /// Shards needed to read a chunk.
        #[arg(long, default_value_t = 4)]
        k: usize,
        /// Shards written per chunk (one per target).
        #[arg(long, default_value_t = 8)]
        n: usize,
        /// Where shards go, `dir:PATH`; give it n times.
        #[arg(long = "target", value_name = "dir:PATH", required = true)]
        targets: Vec<Target>,
        /// `auto` (measure both here and take the faster), `chacha20-poly1305` or `aes-256-gcm`.
        #[arg(long, default_value = "auto")]
        aead: String,
    },
    /// Store files and directories in a new snapshot.
    Put {
        /// Files or directories; each is stored under its name at the top of the vault.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List what the vault holds (below PATH).
    Ls {
        /// A path in the vault.
        path: Option<String>,
        /// Snapshot number (default: the latest).
        #[arg(long)]
        snapshot: Option<u64>,
    },
    /// Copy PATH out of the vault to DEST (`/` for everything).
    Get {
        /// A path in the vault.
        path: String,
        /// Where to write it.
        dest: PathBuf,
        /// Snapshot number (default: the latest).
        #[arg(long)]
        snapshot: Option<u64>,
    },
    /// List snapshots, newest first.
    Snapshots,
    /// Print the recovery key and the root capability (keep them offline).
    RecoveryKey,
    /// Set up this device's vault from a recovery key (or capability) and the shards, and
    /// optionally write every file to DEST.
    Restore {
        /// The recovery key (asked for when neither it nor --capability is given).
        #[arg(long, conflicts_with = "capability")]
        recovery_key: Option<String>,
        /// A root capability (`cairn:root:1:…`): restores that snapshot.
        #[arg(long)]
        capability: Option<String>,
        /// Where the shards are, `dir:PATH`, one per target.
        #[arg(long = "target", value_name = "dir:PATH", required = true)]
        targets: Vec<Target>,
        /// Write the restored tree here.
        dest: Option<PathBuf>,
    },
}

fn default_home() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("cairn/vault"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/cairn/vault")),
        None => bail!("no --home given and neither XDG_DATA_HOME nor HOME is set"),
    }
}

/// Reads the passphrase: the file, the environment, or a prompt (asked twice when `confirm`).
fn passphrase(args: &Args, confirm: bool) -> anyhow::Result<Vec<u8>> {
    if let Some(f) = &args.passphrase_file {
        let text = std::fs::read(f).with_context(|| format!("{}", f.display()))?;
        let line = text.split(|&b| b == b'\n').next().unwrap_or(&[]).to_vec();
        return Ok(line);
    }
    if let Some(p) = std::env::var_os(PASSPHRASE_ENV) {
        return Ok(std::os::unix::ffi::OsStringExt::into_vec(p));
    }
    let first = prompt("Vault passphrase: ", true)?;
    if confirm && std::io::stdin().is_terminal() {
        let again = prompt("Again: ", true)?;
        if again != first {
            bail!("the two passphrases differ");
        }
    }
    Ok(first.into_bytes())
}

/// Reads one line from the terminal (echo off when `secret`) or from standard input.
pub(crate) fn prompt(text: &str, secret: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprint!("{text}");
        let _ = std::io::stderr().flush();
    }
    let _echo = (tty && secret).then(EchoOff::new).flatten();
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading standard input")?;
    if tty && secret {
        eprintln!();
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Turns terminal echo off until dropped.
struct EchoOff(libc::termios);

impl EchoOff {
    fn new() -> Option<Self> {
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0 or fails.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let old = t;
            t.c_lflag &= !libc::ECHO;
            (libc::tcsetattr(0, libc::TCSANOW, &t) == 0).then_some(Self(old))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.0);
        }
    }
}

/// The storage nodes this binary reaches: a `node:SOCKET` target (or `--node SOCKET`) is the
/// running node's control socket, spoken to by `cairn-node`'s client.
pub struct NodeSockets;

impl NodeConnector for NodeSockets {
    fn connect(&self, socket: &Path, owner: &OwnerKey) -> Result<Backend, String> {
        let b = std::sync::Arc::new(
            cairn_node::control::NodeBackend::new(socket, owner).map_err(|e| e.to_string())?,
        );
        Ok((b.clone(), b))
    }
}

/// Opens the vault, switched to the node of `--node` if given.
fn open_vault(
    args: &Args,
    home: &Path,
    pass: &[u8],
    nodes: &dyn NodeConnector,
) -> anyhow::Result<Vault> {
    let mut v = Vault::open(home, pass, nodes)?;
    if let Some(sock) = &args.node {
        let owner = v.secret().keys();
        let (sink, source) = cairn_vault::vault::node_backend(nodes, sock, owner.owner_key())?;
        v.set_backend(sink, source);
    }
    Ok(v)
}

/// Runs a vault command, printing its results on standard output.
pub fn run(args: Args) -> anyhow::Result<()> {
    run_to(args, &NodeSockets, &mut std::io::stdout().lock())
}

/// Runs a vault command with `nodes` for `node:` targets and `--node`, printing its results to
/// `out` (progress goes to standard error).
pub fn run_to(args: Args, nodes: &dyn NodeConnector, out: &mut dyn Write) -> anyhow::Result<()> {
    let home = match &args.home {
        Some(h) => h.clone(),
        None => default_home()?,
    };
    let mut printer = LinePrinter::new();
    let mut quiet = NoProgress;
    let progress: &mut dyn Progress = if args.quiet { &mut quiet } else { &mut printer };
    match &args.command {
        Command::Init {
            k,
            n,
            targets,
            aead,
        } => {
            let aead = match aead.as_str() {
                "auto" => AeadKind::fastest_here(50),
                name => AeadKind::from_name(name).with_context(|| {
                    format!("--aead {name}: expected auto, chacha20-poly1305 or aes-256-gcm")
                })?,
            };
            let config = Config {
                k: *k,
                n: *n,
                aead,
                targets: targets.clone(),
            };
            if home.join("key").exists() {
                bail!("{}: a vault already exists here", home.display());
            }
            let pass = passphrase(&args, true)?;
            let v = Vault::init(&home, config, &pass, KdfParams::default(), nodes)?;
            writeln!(
                out,
                "vault created in {} ({k}-of-{n}, {})",
                home.display(),
                aead.name()
            )?;
            writeln!(
                out,
                "Write down this recovery key and keep it offline; with it and the shards, \
                 everything comes back:\n\n  {}\n",
                v.secret().recovery_key()
            )?;
        }
        Command::Put { paths } => {
            let pass = passphrase(&args, false)?;
            let mut v = open_vault(&args, &home, &pass, nodes)?;
            let r = v.put(paths, progress)?;
            writeln!(
                out,
                "snapshot {}: {} files, {} ({} chunks stored, {} already stored, {} as holes), \
                 {} of shards written",
                r.seq,
                r.files,
                human_bytes(r.bytes),
                r.stored_chunks,
                r.dedup_chunks,
                human_bytes(r.zero_bytes),
                human_bytes(r.shard_bytes)
            )?;
        }
        Command::Ls { path, snapshot } => {
            let pass = passphrase(&args, false)?;
            let v = open_vault(&args, &home, &pass, nodes)?;
            let tree = v.tree(*snapshot)?;
            let base = path.as_deref().unwrap_or("").trim_matches('/');
            if !base.is_empty() && tree.find(base.as_bytes()).is_none() {
                bail!("{base}: not in the vault");
            }
            for e in tree.subtree(base.as_bytes()) {
                let (t, suffix) = match &e.kind {
                    EntryKind::Dir => ('d', "/".to_string()),
                    EntryKind::File { .. } => ('-', String::new()),
                    EntryKind::Symlink { target } => {
                        ('l', format!(" -> {}", String::from_utf8_lossy(target)))
                    }
                };
                writeln!(
                    out,
                    "{t}{} {:>12} {} {}{suffix}",
                    mode_string(e.mode),
                    e.size,
                    utc_time(e.mtime),
                    String::from_utf8_lossy(&e.path)
                )?;
            }
        }
        Command::Get {
            path,
            dest,
            snapshot,
        } => {
            let pass = passphrase(&args, false)?;
            let v = open_vault(&args, &home, &pass, nodes)?;
            let r = v.get(*snapshot, path, dest, progress)?;
            report_get(out, &r, dest)?;
        }
        Command::Snapshots => {
            let pass = passphrase(&args, false)?;
            let v = open_vault(&args, &home, &pass, nodes)?;
            writeln!(
                out,
                "{:>6}  {:<19}  {:>8}  {:>10}",
                "seq", "time (UTC)", "files", "bytes"
            )?;
            for r in v.snapshots()? {
                writeln!(
                    out,
                    "{:>6}  {:<19}  {:>8}  {:>10}",
                    r.seq,
                    utc_time(r.time),
                    r.files,
                    human_bytes(r.bytes)
                )?;
            }
        }
        Command::RecoveryKey => {
            let pass = passphrase(&args, false)?;
            let v = open_vault(&args, &home, &pass, nodes)?;
            writeln!(out, "recovery key:     {}", v.secret().recovery_key())?;
            writeln!(out, "root capability:  {}", v.capability()?)?;
            writeln!(
                out,
                "Either one gives full access to everything in this vault: keep them offline."
            )?;
        }
        Command::Restore {
            recovery_key,
            capability,
            targets,
            dest,
        } => {
            let (secret, seq) = match (recovery_key, capability) {
                (_, Some(c)) => {
                    let cap: RootCapability = c.parse()?;
                    (cap.secret, Some(cap.seq))
                }
                (Some(k), None) => (OwnerSecret::from_recovery_key(k)?, None),
                (None, None) => (
                    OwnerSecret::from_recovery_key(&prompt("Recovery key: ", false)?)?,
                    None,
                ),
            };
            let pass = passphrase(&args, true)?;
            let v = Vault::restore(
                &home,
                secret,
                seq,
                targets.clone(),
                &pass,
                KdfParams::default(),
                nodes,
            )?;
            let head = v.head()?;
            writeln!(
                out,
                "vault restored in {}: snapshot {head}, {}-of-{}",
                home.display(),
                v.config().k,
                v.config().n
            )?;
            if let Some(d) = dest {
                let r = v.get(Some(head), "/", d, progress)?;
                report_get(out, &r, d)?;
            }
        }
    }
    Ok(())
}

fn report_get(out: &mut dyn Write, r: &GetReport, dest: &Path) -> anyhow::Result<()> {
    writeln!(
        out,
        "{} files, {} written to {}",
        r.files,
        human_bytes(r.bytes),
        dest.display()
    )?;
    if r.shards_missing + r.shards_corrupt > 0 {
        writeln!(
            out,
            "warning: {} shards missing and {} corrupt on the way: redundancy is degraded \
             (data intact): check the targets",
            r.shards_missing, r.shards_corrupt
        )?;
    }
    if !r.bad_places.is_empty() {
        writeln!(
            out,
            "warning: forged or altered shards were served by {}: the vault refused them and \
             read the others",
            r.bad_places.join(", ")
        )?;
    }
    Ok(())
}

fn mode_string(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let m = (mode >> shift) & 7;
        s.push(if m & 4 != 0 { 'r' } else { '-' });
        s.push(if m & 2 != 0 { 'w' } else { '-' });
        s.push(if m & 1 != 0 { 'x' } else { '-' });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn modes_print_like_ls() {
        assert_eq!(mode_string(0o754), "rwxr-xr--");
    }

    #[test]
    fn command_line_parses_as_documented() {
        let a = Args::try_parse_from([
            "vault", "--home", "/h", "init", "--k", "2", "--n", "3", "--target", "dir:/a",
            "--target", "dir:/b", "--target", "dir:/c",
        ])
        .unwrap();
        match a.command {
            Command::Init { k, n, targets, .. } => {
                assert_eq!((k, n, targets.len()), (2, 3, 3));
            }
            c => panic!("{c:?}"),
        }
        let e = Args::try_parse_from(["vault", "init", "--target", "usb:/x"]).unwrap_err();
        assert!(e.to_string().contains("usb:/x"), "{e}");
    }

    // The `cairn vault` command line end to end, in process: init, put, ls, get, snapshots,
    // recovery-key and restore on a new home, as a user would type them.
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
        run_to(Args::try_parse_from(argv)?, &NodeSockets, &mut out)?;
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
}
