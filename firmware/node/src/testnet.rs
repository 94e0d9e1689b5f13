//! A harness that runs storage nodes and vaults as real processes of the `cairn` binary on
//! loopback, for the integration tests and `scripts/bench node`. Nothing here is used by a
//! running plug.

use std::fs;
use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A free TCP port on loopback.
pub fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free UDP port on loopback.
pub fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How a test node listens.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    /// TCP.
    Tcp,
    /// QUIC.
    Quic,
}

/// A node process (killed on drop).
pub struct Node {
    cairn: PathBuf,
    /// Its home directory.
    pub home: PathBuf,
    /// Its listen address.
    pub listen: String,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Node {
    /// Starts `cairn node run` in `dir/name` and waits until its control socket answers.
    pub fn start(cairn: &Path, dir: &Path, name: &str, t: Transport, extra: &[&str]) -> Node {
        let listen = match t {
            Transport::Tcp => format!("/ip4/127.0.0.1/tcp/{}", free_tcp()),
            Transport::Quic => format!("/ip4/127.0.0.1/udp/{}/quic-v1", free_udp()),
        };
        let mut n = Node {
            cairn: cairn.to_owned(),
            home: dir.join(name),
            listen,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        n.spawn();
        n
    }

    /// Its control socket.
    pub fn sock(&self) -> PathBuf {
        self.home.join(crate::config::SOCKET_FILE)
    }

    /// (Re)starts the process.
    pub fn spawn(&mut self) {
        fs::create_dir_all(&self.home).unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.with_extension("log"))
            .unwrap();
        let _ = fs::remove_file(self.sock());
        let child = Command::new(&self.cairn)
            .args(["node", "run", "--home"])
            .arg(&self.home)
            .args(["--listen", &self.listen, "--no-mdns"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t = Instant::now();
        while self
            .try_ctl(&["status", "--json"])
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "node {} did not come up: {}",
                self.home.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its standard error so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.home.with_extension("log")).unwrap_or_default()
    }

    /// Runs `cairn node --node SOCK ARGS`.
    pub fn try_ctl(&self, args: &[&str]) -> Option<Output> {
        Command::new(&self.cairn)
            .arg("node")
            .arg("--node")
            .arg(self.sock())
            .args(args)
            .output()
            .ok()
    }

    /// Runs `cairn node ARGS` against this node; returns stdout, panics with stderr on failure.
    pub fn ctl(&self, args: &[&str]) -> String {
        let o = self.try_ctl(args).unwrap();
        assert!(
            o.status.success(),
            "cairn node {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// `cairn node status --json`.
    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ctl(&["status", "--json"])).unwrap()
    }

    /// Its peer id.
    pub fn peer(&self) -> String {
        self.status()["peer"].as_str().unwrap().to_owned()
    }

    /// Pairs `other` with this node by an invitation this node makes.
    pub fn invite(&self, other: &Node) {
        let code = self.ctl(&["invite"]);
        let out = other.ctl(&["join", code.trim()]);
        assert!(out.contains(&self.peer()), "{out}");
    }

    /// Kills it (SIGKILL: a plug losing power).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the node as the supervisor would (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            term(c.id());
            let t = Instant::now();
            while c.try_wait().unwrap().is_none() {
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "node ignored SIGTERM"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn term(pid: u32) {
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A vault of one owner, using the owner node.
pub struct Vault {
    cairn: PathBuf,
    /// Its home.
    pub home: PathBuf,
}

impl Vault {
    /// The vault in `home` run by `cairn` (one not made yet, for `restore`).
    pub fn at(cairn: &Path, home: &Path) -> Vault {
        Vault {
            cairn: cairn.to_owned(),
            home: home.to_owned(),
        }
    }

    /// `cairn vault init` in `dir/vault`, k-of-n, shards through `node`.
    pub fn init(dir: &Path, node: &Node, k: u32, n: u32) -> Vault {
        let target = format!("node:{}", node.sock().display());
        Self::init_targets(&node.cairn, &dir.join("vault"), &[target], k, n)
    }

    /// `cairn vault init` in `home` with these targets.
    pub fn init_targets(cairn: &Path, home: &Path, targets: &[String], k: u32, n: u32) -> Vault {
        let v = Vault {
            cairn: cairn.to_owned(),
            home: home.to_owned(),
        };
        let (k, n) = (k.to_string(), n.to_string());
        let mut args = vec!["init", "--k", &k, "--n", &n];
        for t in targets {
            args.push("--target");
            args.push(t);
        }
        v.ok(&args);
        v
    }

    /// Runs `cairn vault --home H -q ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.cairn)
            .arg("vault")
            .arg("--home")
            .arg(&self.home)
            .arg("-q")
            .args(args)
            .env("CAIRN_VAULT_PASSPHRASE", "correct horse")
            .output()
            .unwrap()
    }

    /// Like `run`, panicking with its error output on failure; returns standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "cairn vault {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// Writes `len` pseudo-random bytes (incompressible, seeded) to `path`.
pub fn random_file(path: &Path, len: usize, seed: u64) {
    let mut f = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for w in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
}

/// Whether two files have the same bytes.
pub fn same_file(a: &Path, b: &Path) -> bool {
    let (fa, fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    use std::io::Read;
    let (mut ra, mut rb) = (std::io::BufReader::new(fa), std::io::BufReader::new(fb));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = ra.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        rb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}
