//! `cairn prosody`: the Jabber service role. Writes Prosody's configuration from the names the
//! web publishes (the public domain from setup, else `NAME.local`) and the device's certificate,
//! then becomes Prosody (exec), so the supervisor watches Prosody itself. The configuration is
//! written anew at every start: nobody edits it by hand.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cairn_web::chat::lua_string;
use clap::Parser;

/// The Jabber (XMPP) service on a plug.
#[derive(Parser, Debug)]
pub struct Args {
    /// Where the web leaves the certificate and the names (`tls.pem`, `site.json`).
    #[arg(long, value_name = "DIR", default_value = "/run/web")]
    pub share: PathBuf,
    /// Prosody's data: accounts, rosters, archives.
    #[arg(long, value_name = "DIR", default_value = "/data/prosody")]
    pub data: PathBuf,
    /// Its runtime directory: the configuration, the admin socket.
    #[arg(long, value_name = "DIR", default_value = "/run/prosody")]
    pub run: PathBuf,
    /// The Lua interpreter Prosody runs on (from the system layer).
    #[arg(long, value_name = "FILE", default_value = "/usr/bin/lua5.4")]
    pub lua: PathBuf,
    /// Prosody's entry script (from the system layer).
    #[arg(long, value_name = "FILE", default_value = "/usr/bin/prosody")]
    pub prosody: PathBuf,
    /// The root certificates federation peers are checked against.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/usr/share/cairn/ca-certificates.crt"
    )]
    pub cafile: PathBuf,
}

/// Prosody's admin socket in its runtime directory (the web adds and removes accounts there).
pub const ADMIN_SOCKET: &str = "admin.sock";

/// Largest file shared in a chat (XEP-0363); the web's proxy refuses bigger bodies before
/// reading them.
pub const FILE_SHARE_BYTES_MAX: u64 = 16 << 20;
/// Prosody's HTTP port, on loopback only: the web passes `/file_share/` on to it.
pub const HTTP_PORT: u16 = 5280;

/// Cairn's Prosody module that throttles wrong passwords (Prosody 0.12 has none), written
/// beside the configuration at every start.
const THROTTLE: &str = include_str!("mod_cairn_auth_throttle.lua");
/// Its file name in the runtime directory (`plugin_paths`).
const THROTTLE_FILE: &str = "mod_cairn_auth_throttle.lua";

/// Prosody's CPU priority (nice): below PID 1's threads and the other services.
const NICE: libc::c_int = 5;

/// What the configuration is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    /// The XMPP domain: accounts are `NAME@DOMAIN`, group chats at `conference.DOMAIN`.
    pub domain: String,
    /// Certificate and key, PEM, one file.
    pub tls: PathBuf,
    /// Root certificates.
    pub cafile: PathBuf,
    /// Data directory.
    pub data: PathBuf,
    /// Runtime directory.
    pub run: PathBuf,
}

/// Writes the configuration and execs Prosody; returns only on failure.
pub fn run(args: Args) -> Result<()> {
    let site = cairn_web::share::read_site(&args.share)?;
    let setup = Setup {
        domain: site.service_domain(),
        tls: args.share.join(cairn_web::share::TLS_FILE),
        cafile: args.cafile,
        data: args.data,
        run: args.run.clone(),
    };
    match carry_over(&setup.data, &setup.domain) {
        Ok(Some(old)) => eprintln!(
            "cairn-prosody: the accounts of {old} now belong to {} (the device's domain changed)",
            setup.domain
        ),
        Ok(None) => {}
        Err(e) => eprintln!("cairn-prosody: the accounts stay under the old domain: {e:#}"),
    }
    let file = args.run.join("prosody.cfg.lua");
    write_config(&args.run.join(THROTTLE_FILE), THROTTLE)?;
    write_config(&file, &config(&setup)?)?;
    eprintln!(
        "cairn-prosody: Jabber for {} ({})",
        setup.domain,
        file.display()
    );
    // Chat yields to the board's LEDs and button, the web and the storage node on a one-core
    // plug: Prosody's start takes seconds of CPU there.
    // SAFETY: setpriority(2) on this process; no memory involved.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
    // Prosody may make its admin socket before it applies `umask`: the same one from the start.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o007));
    let err = std::process::Command::new(&args.lua)
        .arg(&args.prosody)
        .arg("--config")
        .arg(&file)
        .exec();
    Err(err).with_context(|| format!("cannot run {}", args.lua.display()))
}

/// Prosody's name for a host's folder in its data: every byte but letters and digits as
/// `%xx` (`hearth.local` → `hearth%2elocal`).
fn host_folder(domain: &str) -> String {
    domain
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

/// When the device's domain changed (a new name, or a public domain given later), moves the
/// one earlier domain's data — accounts, passwords, contacts, archives — and its group chats'
/// to the new domain's folders, so that the household keeps them under the new addresses.
/// Nothing moves when the new domain has data already or there is not exactly one earlier
/// domain with accounts. Returns the earlier domain's folder name if it moved.
fn carry_over(data: &Path, domain: &str) -> Result<Option<String>> {
    let new = data.join(host_folder(domain));
    if new.exists() {
        return Ok(None);
    }
    let Ok(entries) = std::fs::read_dir(data) else {
        return Ok(None);
    };
    let earlier: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("accounts").is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let [old] = earlier.as_slice() else {
        return Ok(None);
    };
    std::fs::rename(data.join(old), &new)
        .with_context(|| format!("{}: moving to {}", data.join(old).display(), new.display()))?;
    let (old_muc, new_muc) = (
        data.join(format!("conference{}{old}", host_folder("."))),
        data.join(host_folder(&format!("conference.{domain}"))),
    );
    if old_muc.exists() && !new_muc.exists() {
        std::fs::rename(&old_muc, &new_muc)
            .with_context(|| format!("{}: moving", old_muc.display()))?;
    }
    Ok(Some(old.clone()))
}

fn write_config(file: &Path, text: &str) -> Result<()> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("{}: writing", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("{}: writing", file.display()))
}

fn path(p: &Path) -> Result<String> {
    Ok(lua_string(p.to_str().with_context(|| {
        format!("{} is not UTF-8", p.display())
    })?))
}

/// Prosody's configuration (Lua) for `setup`. The modules are the XMPP Compliance Suites'
/// (XEP-0479) "Advanced IM Server" ones that Prosody 0.12 ships.
pub fn config(setup: &Setup) -> Result<String> {
    anyhow::ensure!(
        !setup.domain.is_empty() && setup.domain.len() <= 253,
        "no usable domain for Jabber: {:?}",
        setup.domain
    );
    let domain = lua_string(&setup.domain);
    let muc = lua_string(&format!("conference.{}", setup.domain));
    let external = lua_string(&format!("https://{}/", setup.domain));
    let (http_port, share_max, share_daily) =
        (HTTP_PORT, FILE_SHARE_BYTES_MAX, 8 * FILE_SHARE_BYTES_MAX);
    let (tls, cafile, data, run, socket) = (
        path(&setup.tls)?,
        path(&setup.cafile)?,
        path(&setup.data)?,
        path(&setup.run)?,
        path(&setup.run.join(ADMIN_SOCKET))?,
    );
    Ok(format!(
        r#"-- Written by `cairn prosody` at every start of the service: edits here are lost.
-- What it is made from: the names the web publishes and the device's certificate.

data_path = {data}
certificates = {run}
-- The web (group prosody) reaches the admin socket and reads the data for backups.
umask = "007"
admin_socket = {socket}
-- Lines go to the supervisor's log (`cairn ctl logs prosody`).
log = {{ {{ levels = {{ min = "info" }}, to = "console" }} }}
network_backend = "epoll"

modules_enabled = {{
  "roster"; "saslauth"; "tls"; "dialback"; "disco"; "carbons"; "pep"; "private";
  "blocklist"; "vcard4"; "vcard_legacy"; "bookmarks"; "mam"; "csi_simple"; "smacks";
  "version"; "uptime"; "time"; "ping"; "admin_shell"; "http_file_share";
  "cairn_auth_throttle";
}}
-- Wrong passwords are throttled by Cairn's module, written beside this file.
plugin_paths = {{ {run} }}
-- Accounts are made by the owner (the web's Chat page), never by strangers.
allow_registration = false

authentication = "internal_hashed"
storage = "internal"
archive_expires_after = "1y"
default_archive_policy = true

-- Files shared in chats (XEP-0363): served on loopback, reached through Cairn's HTTPS.
http_ports = {{ {http_port} }}
http_interfaces = {{ "127.0.0.1" }}
https_ports = {{ }}
http_default_host = {domain}
http_external_url = {external}
http_file_share_size_limit = {share_max}
http_file_share_daily_quota = {share_daily}
http_file_share_expires_after = 30 * 24 * 60 * 60

c2s_ports = {{ 5222 }}
s2s_ports = {{ 5269 }}
c2s_require_encryption = true
s2s_require_encryption = true
-- Plugs have self-signed certificates: federate with them by dialback.
s2s_secure_auth = false

ssl = {{
  certificate = {tls};
  key = {tls};
  cafile = {cafile};
}}

VirtualHost {domain}

Component {muc} "muc"
  modules_enabled = {{ "muc_mam" }}
  restrict_room_creation = "local"
  -- A room is usable at once (XEP-0045 "instant room"): clients need not configure it first.
  muc_room_locking = false
"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_domain_takes_the_earlier_ones_accounts_and_group_chats_once() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        assert_eq!(host_folder("hearth.local"), "hearth%2elocal");
        assert_eq!(carry_over(d, "hearth.local").unwrap(), None);
        std::fs::create_dir_all(d.join("cairn%2elocal/accounts")).unwrap();
        std::fs::write(d.join("cairn%2elocal/accounts/owner.dat"), "x").unwrap();
        std::fs::create_dir_all(d.join("conference%2ecairn%2elocal/config")).unwrap();
        std::fs::create_dir_all(d.join("http_file_share")).unwrap();
        assert_eq!(
            carry_over(d, "hearth.example.org").unwrap().as_deref(),
            Some("cairn%2elocal")
        );
        assert!(d
            .join("hearth%2eexample%2eorg/accounts/owner.dat")
            .is_file());
        assert!(d
            .join("conference%2ehearth%2eexample%2eorg/config")
            .is_dir());
        assert!(!d.join("cairn%2elocal").exists());
        assert!(d.join("http_file_share").is_dir());
        // Its own data now: nothing more moves.
        assert_eq!(carry_over(d, "hearth.example.org").unwrap(), None);
        // Two earlier domains with accounts: which one is meant is not guessed.
        std::fs::create_dir_all(d.join("a%2elocal/accounts")).unwrap();
        assert_eq!(carry_over(d, "c.local").unwrap(), None);
        assert!(d.join("a%2elocal").exists() && !d.join("c%2elocal").exists());
    }

    fn setup(domain: &str) -> Setup {
        Setup {
            domain: domain.into(),
            tls: "/run/web/tls.pem".into(),
            cafile: "/usr/share/cairn/ca-certificates.crt".into(),
            data: "/data/prosody".into(),
            run: "/run/prosody".into(),
        }
    }

    #[test]
    fn the_configuration_names_the_domain_its_group_chats_and_the_certificate() {
        let c = config(&setup("hearth.local")).unwrap();
        assert!(c.contains("VirtualHost \"hearth.local\""), "{c}");
        assert!(c.contains("Component \"conference.hearth.local\" \"muc\""));
        assert!(c.contains("certificate = \"/run/web/tls.pem\""));
        assert!(c.contains("data_path = \"/data/prosody\""));
        assert!(c.contains("admin_socket = \"/run/prosody/admin.sock\""));
        assert!(c.contains("plugin_paths = { \"/run/prosody\" }"), "{c}");
        for module in [
            "\"cairn_auth_throttle\"",
            "\"mam\"",
            "\"smacks\"",
            "\"carbons\"",
            "\"pep\"",
            "\"csi_simple\"",
        ] {
            assert!(c.contains(module), "{module} is not enabled");
        }
    }

    #[test]
    fn the_manifest_runs_the_role_with_its_defaults_and_parses() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../services/prosody.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let m = cairn_supervisor::manifest::parse(&path, &text).unwrap();
        let args = Args::try_parse_from(m.exec.iter().skip(1)).unwrap();
        assert_eq!(m.exec[0], "/bin/cairn");
        assert_eq!(args.share, std::path::Path::new("/run/web"));
        assert_eq!(m.workdir.as_deref(), Some(args.data.as_path()));
        assert_eq!(args.run, std::path::Path::new("/run/prosody"));
        assert!(
            m.runtime_dir,
            "its configuration and admin socket live in /run/prosody"
        );
        assert_eq!(m.groups, ["web"], "it reads the certificate in /run/web");
        assert_eq!(m.depends_on, ["web"]);
        // Without the system layer (test images) it is not started.
        assert!(m.requires.contains(&args.lua) && m.requires.contains(&args.prosody));
    }

    #[test]
    fn a_hostile_name_cannot_leave_its_string() {
        let c = config(&setup("a\"; os.execute(\"x\") --\n")).unwrap();
        assert!(
            c.contains(r#"VirtualHost "a\"; os.execute(\"x\") --\10""#),
            "{c}"
        );
        assert!(config(&setup("")).is_err());
    }
}
