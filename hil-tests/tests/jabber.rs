//! Jabber on the plug, as a household uses it: the product image mounts its system layer
//! (Debian's Prosody and what it runs on) read-only, PID 1 supervises Prosody configured by
//! Cairn, the owner adds accounts on the Chat page in a real browser, and a real XMPP client
//! library nobody here wrote (slixmpp) logs two of them in through QEMU's forward of port 5222:
//! TLS, a message, the archive (MAM) after a reconnect, carbons, a group chat, a resumed stream
//! (stream management), a picture shared over the plug's HTTPS (XEP-0363), and a wrong password
//! refused.
//!
//! One boot carries every step, in the order a household meets them.

use cairn_bsp::panel::PanelLink;
use cairn_hil::browser::{
    add_chat_account, back_up_now, set_up_through_forward, wait_chat_account, Browser,
};
use cairn_hil::{free_port, image, run_client, Config, Qemu, BOOT_TIMEOUT};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The owner's passphrase.
const PASSPHRASE: &str = "correct horse battery staple";
/// A stream's opening and features from Prosody on an emulated CPU.
const ANSWER: Duration = Duration::from_secs(30);
/// After setup Prosody restarts for the device's new name, then the owner's account is made.
const OWNER_ACCOUNT: Duration = Duration::from_secs(150);
/// The whole client session (each of its steps is bounded by 60 s inside).
const CLIENTS: Duration = Duration::from_secs(540);

/// Opens a client stream to `domain` and reads until the server's features are complete (or
/// the server closes the stream).
fn stream_features(port: u16, domain: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(ANSWER)).unwrap();
    write!(
        s,
        "<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' \
         xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    while !String::from_utf8_lossy(&got).contains("</stream:features>") {
        assert!(start.elapsed() < ANSWER, "no features in {ANSWER:?}");
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "reading the stream: {e}; so far: {}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn shot(b: &mut Browser, name: &str) {
    let path = b.screenshot(name).unwrap();
    eprintln!("screenshot: {}", path.display());
}

#[test]
fn a_household_chats_through_prosody_on_the_plug() {
    let mut cfg = Config::new(image("cairn-qemu-virt.img").unwrap());
    let (https, xmpp) = (free_port(), free_port());
    cfg.https_port = Some(https);
    cfg.tcp_forwards.push((xmpp, 5222));
    let q = Qemu::boot(&cfg).unwrap();
    let panel: PanelLink = q.panel().unwrap();
    let web = q.wait_line("cairn: web: https://", BOOT_TIMEOUT).unwrap();
    q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();

    // 1. The system layer is mounted read-only and Prosody runs from it (`cairn: ready` means
    // every service is up, Prosody's port 5222 included).
    let console = q.console();
    let layer = console
        .iter()
        .find(|l| l.contains("system layer /dev/vda3"))
        .unwrap_or_else(|| panic!("no system layer line: {console:#?}"));
    assert!(layer.contains("mounted read-only on /usr"), "{layer}");
    assert!(!layer.contains(" 0 packages"), "{layer}");

    // 2. Before setup it answers for the default name, and only over TLS.
    let features = stream_features(xmpp, "cairn.local");
    assert!(features.contains("from='cairn.local'"), "{features}");
    assert!(
        features.contains("urn:ietf:params:xml:ns:xmpp-tls") && features.contains("<required/>"),
        "TLS is not required: {features}"
    );
    let other = stream_features(xmpp, "elsewhere.example");
    assert!(other.contains("host-unknown"), "{other}");

    // 3. The owner sets the plug up as "hearth" in a browser; Jabber follows the new name and
    // the owner's own account appears on the Chat page.
    let url = |p: &str| format!("https://localhost:{https}{p}");
    let mut b = set_up_through_forward(&web, https, &panel, "hearth", PASSPHRASE).unwrap();
    wait_chat_account(
        &mut b,
        &url("/admin/chat"),
        "owner@hearth.local",
        OWNER_ACCOUNT,
    )
    .unwrap();
    shot(&mut b, "jabber-1-owner");

    // 4. Two household accounts; a name with a space and a short password are refused.
    let said = add_chat_account(&mut b, "al ex", "long enough password").unwrap();
    assert!(said.contains("Account name: letters a–z"), "{said}");
    let said = add_chat_account(&mut b, "alex", "short").unwrap();
    assert!(said.contains("Password: at least 8"), "{said}");
    let said = add_chat_account(&mut b, "alex", "alex's long password").unwrap();
    assert!(said.contains("alex@hearth.local is ready"), "{said}");
    let said = add_chat_account(&mut b, "sam", "sam's long password").unwrap();
    assert!(said.contains("sam@hearth.local is ready"), "{said}");
    let said = add_chat_account(&mut b, "sam", "another long password").unwrap();
    assert!(said.contains("exists already"), "{said}");
    assert_eq!(b.count("#accounts a[href^='xmpp:']").unwrap(), 3);
    shot(&mut b, "jabber-2-accounts");

    // 5. They chat, with a client library nobody here wrote.
    let seen = run_client(
        "xmpp_household.py",
        &[
            "127.0.0.1",
            &xmpp.to_string(),
            "hearth.local",
            "alex",
            "alex's long password",
            "sam",
            "sam's long password",
            "not the password",
            &format!("https://127.0.0.1:{https}"),
        ],
        CLIENTS,
    )
    .unwrap();
    assert!(seen.get("error").is_none(), "{seen:#}");
    assert_eq!(seen["tls"], true, "{seen:#}");
    assert_eq!(
        seen["logged_in"],
        serde_json::json!(["alex@hearth.local", "sam@hearth.local"])
    );
    assert_eq!(seen["stream_management"], true, "{seen:#}");
    assert_eq!(seen["carbons"], true, "{seen:#}");
    assert_eq!(seen["delivered_from"], "alex@hearth.local", "{seen:#}");
    assert_eq!(seen["archive_has_both"], true, "{seen:#}");
    assert_eq!(
        seen["groupchat_from"], "family@conference.hearth.local",
        "{seen:#}"
    );
    assert_eq!(seen["resumed"], true, "{seen:#}");
    // A file shared in the chat goes over the plug's HTTPS, and comes back the same.
    let link = seen["upload_url"].as_str().unwrap_or_default();
    assert!(
        link.starts_with("https://hearth.local/file_share/"),
        "{seen:#}"
    );
    assert_eq!(seen["upload_status"], 201, "{seen:#}");
    assert_eq!(seen["download_same"], true, "{seen:#}");
    assert_eq!(seen["oversized_upload"], 413, "{seen:#}");
    assert_eq!(seen["wrong_password"], "refused", "{seen:#}");
    let features: Vec<&str> = seen["server_features"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    for f in [
        "urn:xmpp:blocking",
        "urn:xmpp:carbons:2",
        "vcard-temp",
        "urn:xmpp:ping",
    ] {
        assert!(features.contains(&f), "{f} not offered: {features:?}");
    }

    // 6. The owner sees Prosody's own log on the System pages.
    b.goto(&url("/admin/logs/prosody")).unwrap();
    let log = b.text_of("pre.log").unwrap();
    assert!(log.contains("Prosody version 0.12"), "{log}");
    assert!(log.contains("Jabber for hearth.local"), "{log}");

    // 7. Jabber's data goes into the services' own vault through the plug's storage node: the
    // dashboard says so, and "Back up now" stores the accounts, archives and the shared file.
    b.goto(&url("/admin/")).unwrap();
    let said = b.text_of("#backups").unwrap();
    assert!(said.contains("(prosody, snac)"), "{said}");
    let (_, files) = back_up_now(&mut b, &url("/admin/")).unwrap();
    // Three accounts, their rosters and archives, the group chat and the shared picture.
    assert!(files >= 5, "{files} files");
}
