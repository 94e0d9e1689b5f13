//! Jabber between servers (federation, XMPP server-to-server), as people on them use it: two
//! product images and the host on one LAN of the test's own (a bridge in a private network
//! namespace, no DHCP server, no DNS: link-local addresses), each plug set up through its page
//! as its owner would, as `attic` and `cellar`, so two domains, `attic.local` and
//! `cellar.local`. A person on each, with a real client library (slixmpp), writes to the
//! other and gets an answer: each plug's Prosody finds the other by mDNS (through the plug's own
//! name server, `cairn names`), and the servers authenticate by dialback over TLS (the plugs'
//! certificates are self-signed).
//!
//! Then a different implementation: Debian's ejabberd, run by the test on the host at
//! 169.254.0.1 as `ejabberd.local` (announced by mDNS from the test, as avahi would on a
//! computer), with its own self-signed certificate; a person there and one on attic write to
//! each other. ejabberd resolves names by DNS (SRV by Erlang's resolver, addresses by
//! getaddrinfo): the test gives it, in its own mount namespace, a resolv.conf naming a name
//! server of the test's that knows `attic.local` (Cairn's DNS code over the test's table: the
//! test's setup, as an administrator's DNS would be).

use cairn_hil::browser::{add_chat_account, wait_chat_account, Browser, LanPlug};
use cairn_hil::{run_client, PrivateLan};
use cairn_web::names;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Both owners' passphrase.
const PASSPHRASE: &str = "correct horse battery staple";
/// After setup Prosody restarts for the device's new name, then the owner's account is made.
const OWNER_ACCOUNT: Duration = Duration::from_secs(150);
/// One client session (its logins and deliveries are bounded inside: 2 × 60 s + 3 × 180 s).
const CLIENTS: Duration = Duration::from_secs(700);
/// ejabberd (Erlang) starting to listen.
const EJABBERD_START: Duration = Duration::from_secs(90);
/// ejabberd's domain on the LAN.
const EJABBERD_DOMAIN: &str = "ejabberd.local";
/// ejabberd's configuration: DOMAIN, ADDRESS and TLS (its certificate and key) filled in.
const EJABBERD_YML: &str = r#"hosts:
  - "DOMAIN"
loglevel: info
certfiles:
  - "TLS"
listen:
  - port: 5222
    ip: "ADDRESS"
    module: ejabberd_c2s
    starttls_required: true
  - port: 5269
    ip: "ADDRESS"
    module: ejabberd_s2s_in
# Offered TLS is used; a self-signed certificate is then not trusted, and dialback proves the
# domain instead.
s2s_use_starttls: optional
auth_method: internal
auth_password_format: scram
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  s2s:
    allow: all
api_permissions:
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"
modules:
  mod_disco: {}
  mod_roster: {}
  mod_s2s_dialback: {}
  mod_ping: {}
"#;

/// Makes `name@DOMAIN` on the plug's Chat page once the owner's account is there.
fn account(b: &mut Browser, plug: &LanPlug, domain: &str, name: &str, password: &str) {
    let chat = plug.url("/admin/chat");
    wait_chat_account(b, &chat, &format!("owner@{domain}"), OWNER_ACCOUNT).unwrap();
    let said = add_chat_account(b, name, password).unwrap();
    assert!(
        said.contains(&format!("{name}@{domain} is ready")),
        "{said}"
    );
}

/// Runs the federation client between two accounts `(host, jid, password)`; what it saw.
fn exchange(one: (&str, &str, &str), two: (&str, &str, &str)) -> serde_json::Value {
    let args = [one.0, "5222", one.1, one.2, two.0, "5222", two.1, two.2];
    run_client("xmpp_federation.py", &args, CLIENTS).unwrap()
}

/// Asserts both messages arrived, each from the other side; else shows the plugs' logs of
/// Prosody and of their name server.
fn both_ways(
    seen: &serde_json::Value,
    one: &str,
    two: &str,
    plugs: &mut [(&mut Browser, &LanPlug)],
) {
    let fine = seen.get("error").is_none()
        && seen["logged_in"] == serde_json::json!([one, two])
        && seen["there_from"] == one
        && seen["back_from"] == two;
    if !fine {
        let mut logs = String::new();
        for (b, plug) in plugs.iter_mut() {
            for service in ["prosody", "names"] {
                logs.push_str(&format!(
                    "--- {} {service}:\n{}\n",
                    plug.address,
                    log(b, plug, service)
                ));
            }
        }
        panic!("{seen:#}\n{logs}");
    }
}

/// A service's log on the plug's System pages.
fn log(b: &mut Browser, plug: &LanPlug, service: &str) -> String {
    b.goto(&plug.url(&format!("/admin/logs/{service}")))
        .unwrap();
    b.text_of("pre.log").unwrap()
}

/// Runs `cmd` to its end, failing the test with what it said.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// ejabberd on the host, in the test's network namespace; stopped (its whole process group,
/// and the Erlang port mapper the test started for it) when dropped.
struct Ejabberd {
    dir: tempfile::TempDir,
    server: Child,
    epmd: Child,
}

/// `ejabberdctl` with the files of the instance in `d`.
fn ejabberdctl(d: &Path) -> Command {
    let mut c = Command::new("/usr/sbin/ejabberdctl");
    c.arg("--config-dir")
        .arg(d)
        .arg("--logs")
        .arg(d.join("log"))
        .arg("--spool")
        .arg(d.join("spool"));
    c
}

impl Ejabberd {
    fn ctl(&self) -> Command {
        ejabberdctl(self.dir.path())
    }

    /// Starts ejabberd for [`EJABBERD_DOMAIN`] on `address`, asking the name server on
    /// 127.0.0.1:53 (of the test's LAN) for other servers' names, and waits for its client port.
    fn start(address: &str) -> Ejabberd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["log", "spool"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let tls = d.join("tls.pem");
        cairn_hil::self_signed(d, EJABBERD_DOMAIN).unwrap();
        let pem =
            [d.join("cert.pem"), d.join("key.pem")].map(|f| std::fs::read_to_string(f).unwrap());
        std::fs::write(&tls, pem.concat()).unwrap();
        let config = EJABBERD_YML
            .replace("DOMAIN", EJABBERD_DOMAIN)
            .replace("ADDRESS", address)
            .replace("TLS", &tls.display().to_string());
        std::fs::write(d.join("ejabberd.yml"), config).unwrap();
        // ejabberd asks DNS for SRV records (Erlang's resolver) and the system's resolver for
        // addresses (getaddrinfo): both read /etc/resolv.conf, which in ejabberd's own mount
        // namespace is this one, naming the test's name server (the host's is unreachable from
        // the test's LAN anyway).
        std::fs::write(d.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        // ejabberdctl points Erlang at an inetrc here: nothing to add to its defaults.
        std::fs::write(d.join("inetrc"), "").unwrap();
        run(Command::new("chown")
            .args(["-R", "ejabberd:ejabberd"])
            .arg(d));
        // Erlang's port mapper, started here (not daemonised) so the test owns and ends it.
        let epmd = Command::new("/usr/bin/epmd")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("epmd (ejabberd's dependency erlang-base)");
        let ctl = ejabberdctl(d);
        let mut server = Command::new("unshare");
        server
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/resolv.conf && shift && exec "$@""#)
            .arg("sh")
            .arg(d.join("resolv.conf"))
            .arg(ctl.get_program())
            .args(ctl.get_args())
            .arg("foreground")
            // A process group of its own: the shell, su and Erlang's VM end together.
            .process_group(0)
            .stdout(Stdio::null());
        let e = Ejabberd {
            server: server
                .spawn()
                .expect("ejabberdctl (scripts/setup installs ejabberd)"),
            dir,
            epmd,
        };
        wait_port(&format!("{address}:5222"), EJABBERD_START);
        e
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        let _ = self.ctl().arg("stop").output();
        // SAFETY: kill(2) on the process group this test started; no memory involved.
        unsafe { libc::kill(-(self.server.id() as i32), libc::SIGKILL) };
        let _ = self.server.wait();
        let _ = self.epmd.kill();
        let _ = self.epmd.wait();
    }
}

/// Waits for a TCP port to accept, at most `timeout`.
fn wait_port(addr: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing on {addr} in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn people_on_two_plugs_and_on_ejabberd_write_to_each_other() {
    let lan = PrivateLan::new(2).unwrap();
    let a = LanPlug::boot(&lan.taps[0], "52:54:00:00:00:3a").unwrap();
    let b = LanPlug::boot(&lan.taps[1], "52:54:00:00:00:3b").unwrap();
    let mut ba = a.set_up("attic", PASSPHRASE).unwrap();
    let mut bb = b.set_up("cellar", PASSPHRASE).unwrap();
    account(&mut ba, &a, "attic.local", "alex", "alex's long password");
    account(&mut bb, &b, "cellar.local", "sam", "sam's long password");

    // 1. Plug to plug, both ways.
    let start = Instant::now();
    let seen = exchange(
        (&a.address, "alex@attic.local", "alex's long password"),
        (&b.address, "sam@cellar.local", "sam's long password"),
    );
    both_ways(
        &seen,
        "alex@attic.local",
        "sam@cellar.local",
        &mut [(&mut ba, &a), (&mut bb, &b)],
    );
    eprintln!("attic ⇄ cellar: {:?}", start.elapsed());
    // What Prosody and the name server hold, as the dashboard shows it (measured, not a bound
    // of this test).
    ba.goto(&a.url("/admin")).unwrap();
    let table = ba.text_of("table").unwrap();
    for row in table
        .lines()
        .filter(|l| l.starts_with("prosody") || l.starts_with("names"))
    {
        eprintln!("attic after federating: {row}");
    }
    let names = log(&mut ba, &a, "names");
    assert!(names.contains("cellar.local is at "), "{names}");

    // 2. ejabberd on the host, announced on the LAN by mDNS as a computer's avahi would.
    let mdns = mdns_sd::ServiceDaemon::new().unwrap();
    let service = mdns_sd::ServiceInfo::new(
        "_xmpp-server._tcp.local.",
        "ejabberd",
        &format!("{EJABBERD_DOMAIN}."),
        PrivateLan::HOST,
        5269,
        None::<std::collections::HashMap<String, String>>,
    )
    .unwrap();
    mdns.register(service).unwrap();
    // ejabberd's name server: the test answers for the plug from its own table, through
    // Cairn's DNS code.
    // Port 53 of this namespace's own loopback: the test's, as root.
    let dns = std::net::UdpSocket::bind("127.0.0.1:53").unwrap();
    let attic: std::net::Ipv4Addr = a.address.parse().unwrap();
    std::thread::spawn(move || {
        let table = move |name: &str| Ok((name == "attic.local").then_some(attic));
        let _ = names::serve(dns, names::Resolver::new(table), Path::new("/nonexistent"));
    });
    let ejabberd = Ejabberd::start(PrivateLan::HOST);
    run(ejabberd.ctl().args([
        "register",
        "robin",
        EJABBERD_DOMAIN,
        "robin's long password",
    ]));
    let start = Instant::now();
    let robin = format!("robin@{EJABBERD_DOMAIN}");
    let seen = exchange(
        (PrivateLan::HOST, &robin, "robin's long password"),
        (&a.address, "alex@attic.local", "alex's long password"),
    );
    if seen.get("error").is_some() {
        let log = std::fs::read_to_string(ejabberd.dir.path().join("log/ejabberd.log"));
        eprintln!("--- ejabberd's log:\n{}", log.unwrap_or_default());
    }
    both_ways(&seen, &robin, "alex@attic.local", &mut [(&mut ba, &a)]);
    eprintln!("ejabberd ⇄ attic: {:?}", start.elapsed());
    // attic found ejabberd's domain on the LAN by mDNS, through its name server.
    let names = log(&mut ba, &a, "names");
    assert!(
        names.contains(&format!("{EJABBERD_DOMAIN} is at {}", PrivateLan::HOST)),
        "{names}"
    );
    drop(ejabberd);
    let _ = mdns.shutdown();
}
