//! The fediverse between servers, as people on them use it: two product images and the host
//! on one LAN of the test's own (link-local addresses, no DHCP, no DNS), each plug set up
//! through its page as its owner would, as `attic` and `cellar`. Each owner trusts the other
//! plug on the Social page, comparing the fingerprint the other's page shows; then, in a
//! Mastodon client library nobody here wrote (Mastodon.py), owner@attic and a household
//! member on attic follow owner@cellar, cellar's post reaches attic's timeline, attic's reply
//! reaches cellar, and after the owner's unfollow the next post reaches the member (the
//! control) and not the owner.
//!
//! Then a different ActivityPub implementation: Fedify (npm, at the version its lock pins,
//! installed by scripts/setup), run by the test on the host at 169.254.0.1 as `fedify.local`
//! (announced by mDNS from the test, as avahi would on a computer), with its own self-signed
//! certificate, which attic's owner trusts on the Social page while Fedify trusts attic's
//! (`NODE_EXTRA_CA_CERTS`). Each follows the other and each one's post reaches the other,
//! every delivery signed and checked by the receiving side.

use cairn_hil::browser::{
    certificate_pem, social_fingerprint, social_first_password, trust_on_social_page, Browser,
    LanPlug, SETUP_REACT,
};
use cairn_hil::{run_client, PrivateLan};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Both owners' passphrase.
const PASSPHRASE: &str = "correct horse battery staple";
/// After setup snac restarts for the device's new name and makes the owner's key.
const ACCOUNT_MADE: Duration = Duration::from_secs(150);
/// One client session (its waits are bounded inside: 120 s each).
const CLIENTS: Duration = Duration::from_secs(900);
/// Fedify's server starting to listen.
const FEDIFY_START: Duration = Duration::from_secs(60);
/// Its domain on the LAN.
const FEDIFY_DOMAIN: &str = "fedify.local";

/// A plug's Social page, the owner's first password and the page's certificate fingerprint.
fn social(b: &mut Browser, plug: &LanPlug, domain: &str) -> (String, String) {
    let page = plug.url("/admin/social");
    let password = social_first_password(b, &page, "owner", domain, ACCOUNT_MADE).unwrap();
    (password, social_fingerprint(b, &page).unwrap())
}

/// A service's log on the plug's System pages.
fn log(b: &mut Browser, plug: &LanPlug, service: &str) -> String {
    b.goto(&plug.url(&format!("/admin/logs/{service}")))
        .unwrap();
    b.text_of("pre.log").unwrap_or_default()
}

/// Fails with what the client saw and the plugs' snac logs, unless it saw no error.
fn fine(seen: &serde_json::Value, plugs: &mut [(&mut Browser, &LanPlug)]) {
    if seen.get("error").is_none() {
        return;
    }
    let mut logs = String::new();
    for (b, plug) in plugs.iter_mut() {
        let text = log(b, plug, "snac");
        logs.push_str(&format!("--- {} snac:\n{text}\n", plug.address));
    }
    panic!("{seen:#}\n{logs}");
}

/// Where scripts/setup installed Fedify (`$CAIRN_CACHE/fedify`).
fn fedify_dir() -> PathBuf {
    let cache = std::env::var_os("CAIRN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/cairn")
        });
    cache.join("fedify")
}

/// Fedify's server on the host, in the test's network namespace; stopped when dropped.
struct Fedify {
    child: Child,
    control: String,
    dir: tempfile::TempDir,
}

impl Fedify {
    /// Starts it for [`FEDIFY_DOMAIN`] on `address`, knowing `hosts` (name → address) and
    /// trusting `trusted` (PEM), and waits for it.
    fn start(address: &str, hosts: &serde_json::Value, trusted: &str) -> Fedify {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        cairn_hil::self_signed(d, FEDIFY_DOMAIN).unwrap();
        std::fs::write(d.join("trusted.pem"), trusted).unwrap();
        // Node resolves the script's imports beside it: next to the installed modules.
        let installed = fedify_dir();
        let script = installed.join("server.mjs");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/fedify/server.mjs"),
            &script,
        )
        .unwrap();
        let port = cairn_hil::free_port();
        let child = Command::new("node")
            .arg(&script)
            .args([FEDIFY_DOMAIN, address])
            .arg(d.join("cert.pem"))
            .arg(d.join("key.pem"))
            .arg(port.to_string())
            .arg(hosts.to_string())
            .env("NODE_EXTRA_CA_CERTS", d.join("trusted.pem"))
            .stdout(Stdio::null())
            .spawn()
            .expect("node (the machine's Node.js) with Fedify (scripts/setup installs it)");
        let control = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + FEDIFY_START;
        while TcpStream::connect(&control).is_err() || TcpStream::connect((address, 443)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Fedify not listening in {FEDIFY_START:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        Fedify {
            child,
            control: format!("http://{control}"),
            dir,
        }
    }
}

impl Fedify {
    /// Its certificate's SHA-256 fingerprint, as its administrator reads it.
    fn fingerprint(&self) -> String {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(self.dir.path().join("cert.pem"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .rsplit('=')
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Fedify {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn people_on_two_plugs_and_on_fedify_follow_post_and_reply() {
    let lan = PrivateLan::new(2).unwrap();
    let a = LanPlug::boot(&lan.taps[0], "52:54:00:00:00:4a").unwrap();
    let c = LanPlug::boot(&lan.taps[1], "52:54:00:00:00:4b").unwrap();
    let mut ba = a.set_up("attic", PASSPHRASE).unwrap();
    let mut bc = c.set_up("cellar", PASSPHRASE).unwrap();
    let (attic_pw, attic_fp) = social(&mut ba, &a, "attic.local");
    let (cellar_pw, cellar_fp) = social(&mut bc, &c, "cellar.local");

    // 1. Each owner trusts the other plug, comparing what the other's page shows.
    let start = Instant::now();
    trust_on_social_page(&mut ba, &a.url("/admin/social"), "cellar.local", &cellar_fp).unwrap();
    trust_on_social_page(&mut bc, &c.url("/admin/social"), "attic.local", &attic_fp).unwrap();
    eprintln!("both trusted: {:?}", start.elapsed());
    let path = ba.screenshot("social-federation-1-trusted").unwrap();
    eprintln!("screenshot: {}", path.display());

    // A household member on attic: the control for the unfollow.
    ba.goto(&a.url("/admin/social")).unwrap();
    ba.fill("#new-social input[name=name]", "alex").unwrap();
    ba.click_to_next_page("#new-social button[type=submit]", SETUP_REACT)
        .unwrap();
    let alex_pw = social_first_password(
        &mut ba,
        &a.url("/admin/social"),
        "alex",
        "attic.local",
        ACCOUNT_MADE,
    )
    .unwrap();

    // 2. Follow, post, reply, unfollow between the plugs.
    let start = Instant::now();
    let seen = run_client(
        "mastodon_federation.py",
        &[
            "plugs", &a.origin, &attic_pw, &alex_pw, &c.origin, &cellar_pw,
        ],
        CLIENTS,
    )
    .unwrap();
    fine(&seen, &mut [(&mut ba, &a), (&mut bc, &c)]);
    eprintln!("attic ⇄ cellar: {:?}", start.elapsed());
    assert_eq!(
        seen["cellar_followers"],
        serde_json::json!(["alex@attic.local", "owner@attic.local"]),
        "{seen:#}"
    );
    assert_eq!(seen["cellar_notified"], true, "{seen:#}");
    assert_eq!(seen["post_on_attic"], true, "{seen:#}");
    assert_eq!(seen["reply_on_cellar"], true, "{seen:#}");
    assert_eq!(seen["unfollowed"], true, "{seen:#}");
    assert_eq!(seen["control_got_it"], true, "{seen:#}");
    assert_eq!(seen["owner_got_it"], false, "{seen:#}");

    // 3. Fedify on the host, announced on the LAN by mDNS as a computer's avahi would.
    let mdns = mdns_sd::ServiceDaemon::new().unwrap();
    let service = mdns_sd::ServiceInfo::new(
        "_https._tcp.local.",
        "fedify",
        &format!("{FEDIFY_DOMAIN}."),
        PrivateLan::HOST,
        443,
        None::<std::collections::HashMap<String, String>>,
    )
    .unwrap();
    mdns.register(service).unwrap();
    let attic_pem = certificate_pem(&a.address, 443, &attic_fp).unwrap();
    let fedify = Fedify::start(
        PrivateLan::HOST,
        &serde_json::json!({ "attic.local": a.address }),
        &attic_pem,
    );
    let fedify_fp = fedify.fingerprint();
    trust_on_social_page(&mut ba, &a.url("/admin/social"), FEDIFY_DOMAIN, &fedify_fp).unwrap();
    let start = Instant::now();
    let seen = run_client(
        "mastodon_federation.py",
        &[
            "other",
            &a.origin,
            &attic_pw,
            &format!("robin@{FEDIFY_DOMAIN}"),
            &fedify.control,
        ],
        CLIENTS,
    )
    .unwrap();
    fine(&seen, &mut [(&mut ba, &a)]);
    eprintln!("Fedify ⇄ attic: {:?}", start.elapsed());
    for step in [
        "follow_there",
        "following",
        "followed_back",
        "post_on_attic",
        "post_there",
    ] {
        assert_eq!(seen[step], true, "{step}: {seen:#}");
    }
    drop(fedify);
    let _ = mdns.shutdown();
}
