//! `cairn snac`: the fediverse service role. snac2 (from the system layer) keeps its data in
//! `DATA/base`; this role makes it on the first start (`snac init`, its questions answered),
//! sets its `server.json` from the names the web publishes at every start (the public domain
//! from setup, else `NAME.local`; loopback only), makes the owner's account `owner` once the
//! device is set up, and each household account the Social page added (`snac adduser`; each
//! first password is left for that page in `DATA/first-passwords/NAME`, group-readable), deletes
//! each one the page removed (`snac deluser`), then becomes `snac httpd` (exec), so the
//! supervisor watches snac itself. Cairn's HTTPS fronts it (the web's proxy).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use cairn_web::share::Site;
use clap::Parser;

/// The fediverse service on a plug.
#[derive(Parser, Debug)]
pub struct Args {
    /// Where the web leaves the names (`site.json`).
    #[arg(long, value_name = "DIR", default_value = "/run/web")]
    pub share: PathBuf,
    /// snac's data: `base/` (its own layout) and the owner's first password.
    #[arg(long, value_name = "DIR", default_value = "/data/snac")]
    pub data: PathBuf,
    /// The snac program (from the system layer).
    #[arg(long, value_name = "FILE", default_value = "/usr/bin/snac")]
    pub snac: PathBuf,
}

/// snac's HTTP port, on loopback only: the web passes the fediverse's paths on to it.
pub const HTTP_PORT: u16 = 8001;
pub use cairn_web::social::{first_password_file, OWNER};
/// Largest request body passed on to snac (a post's picture or video through the Mastodon
/// API; an inbox delivery is a few KiB).
pub const BODY_BYTES_MAX: u64 = 16 << 20;

/// Runs as user snac: readies the data, then execs `snac httpd`; returns only on failure.
pub fn run(args: Args) -> Result<()> {
    let site = cairn_web::share::read_site(&args.share)?;
    let domain = site.service_domain();
    // The web (group snac) reads the owner's first password and backs the data up.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o007));
    let base = args.data.join("base");
    if !base.join("server.json").exists() {
        // `snac init` wants a folder that does not exist yet; a start cut short leaves one.
        if base.exists() {
            std::fs::remove_dir_all(&base)
                .with_context(|| format!("{}: removing a half-made one", base.display()))?;
        }
        // Its questions: address, port, host name, URL prefix, admin e-mail.
        let answers = format!("127.0.0.1\n{HTTP_PORT}\n{domain}\n\n\n");
        ask(&args.snac, &["init", path(&base)?], &answers).context("snac init")?;
    }
    configure(&base.join("server.json"), &domain)?;
    eprintln!("cairn-snac: the fediverse for {domain} on 127.0.0.1:{HTTP_PORT}");
    if site.name.is_some() {
        remove_accounts(&args.snac, &base, &args.data, &site)?;
        // The owner's, then the household's the Social page added (each name checked again:
        // site.json is the web's, and a name becomes a path).
        let names = std::iter::once(OWNER.to_string()).chain(
            site.social_accounts
                .iter()
                .filter_map(|n| cairn_web::social::clean_name(n).ok()),
        );
        for name in names {
            if base.join("user").join(&name).exists() {
                continue;
            }
            let said = ask(&args.snac, &["adduser", path(&base)?, &name], "\n")
                .with_context(|| format!("snac adduser {name}"))?;
            let password = first_password(&said)?;
            let file = first_password_file(&args.data, &name);
            std::fs::create_dir_all(file.parent().expect("in a folder"))?;
            cairn_durable::write_mode(&file, password.as_bytes(), 0o640)
                .with_context(|| format!("{}: writing", file.display()))?;
            eprintln!("cairn-snac: made @{name}@{domain}");
        }
    }
    let err = Command::new(&args.snac).arg("httpd").arg(&base).exec();
    Err(err).with_context(|| format!("cannot run {}", args.snac.display()))
}

/// Deletes each household account the Social page removed and the web names in `site.json`
/// (`snac deluser`: its folder with its posts, keys and follows, its follows undone), then its
/// first password. Only named ones: an account the list merely lacks (a settings file out of
/// step with snac's data) is kept. A name listed again is a new account and kept too. A failed
/// deletion is logged and tried again at the next start; the other accounts still get served.
fn remove_accounts(snac: &Path, base: &Path, data: &Path, site: &Site) -> Result<()> {
    let removed = site
        .social_removed
        .iter()
        .filter_map(|n| cairn_web::social::clean_name(n).ok())
        .filter(|n| !site.social_accounts.contains(n));
    for name in removed {
        if base.join("user").join(&name).exists() {
            match ask(snac, &["deluser", path(base)?, &name], "") {
                Ok(_) => eprintln!("cairn-snac: removed @{name}, as the Social page asked"),
                Err(e) => {
                    eprintln!(
                        "cairn-snac: @{name} not removed (tried again at the next start): {e:#}"
                    );
                    continue;
                }
            }
        }
        let file = first_password_file(data, &name);
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("{}: removing", file.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Runs snac with `args`, `answers` on its standard input; its standard output.
fn ask(snac: &Path, args: &[&str], answers: &str) -> Result<String> {
    let mut child = Command::new(snac)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", snac.display()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(answers.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("{}: {}", out.status, text.trim());
    }
    Ok(text)
}

/// The password `snac adduser` prints ("User password is …").
fn first_password(said: &str) -> Result<String> {
    said.lines()
        .find_map(|l| l.trim().strip_prefix("User password is "))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .with_context(|| format!("no password in snac's answer: {said:?}"))
}

/// How long snac waits for another server to take a delivery, in seconds.
const QUEUE_TIMEOUT_S: u64 = 30;

/// Sets what Cairn decides in snac's `server.json` and keeps the rest: the host, loopback
/// only, no path prefix, HTTPS in its URLs (Cairn's), the owner as its admin account.
fn configure(file: &Path, domain: &str) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    let mut v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: malformed", file.display()))?;
    let o = v
        .as_object_mut()
        .with_context(|| format!("{}: not an object", file.display()))?;
    for (k, val) in [
        ("host", serde_json::json!(domain)),
        ("prefix", serde_json::json!("")),
        ("address", serde_json::json!("127.0.0.1")),
        ("port", serde_json::json!(HTTP_PORT)),
        ("protocol", serde_json::json!("https")),
        ("admin_account", serde_json::json!(OWNER)),
        // Few threads: a household's traffic, and each costs a stack on a 256 MiB plug.
        ("num_threads", serde_json::json!(4)),
        // A delivery waits longer than snac's 6 s (8 s on the retry): the receiving plug may
        // first fetch the sender's key from it, each side on a slow CPU, and a timed-out post
        // waits two minutes for its retry.
        ("queue_timeout", serde_json::json!(QUEUE_TIMEOUT_S)),
        ("queue_timeout_2", serde_json::json!(2 * QUEUE_TIMEOUT_S)),
    ] {
        o.insert(k.into(), val);
    }
    let out = serde_json::to_vec_pretty(&v)?;
    cairn_durable::write_mode(file, &out, 0o660).with_context(|| format!("{}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_password_is_read_from_snacs_answer() {
        let said = "Creating RSA key...\nDone.\n\nUser password is Yd3bAVgM76//XUNN\n\nGo to https://hearth.local/owner\n";
        assert_eq!(first_password(said).unwrap(), "Yd3bAVgM76//XUNN");
        assert!(first_password("Done.\n").is_err());
    }

    #[test]
    fn only_the_accounts_the_page_removed_are_deleted() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let (base, data) = (t.path().join("data/base"), t.path().join("data"));
        for n in ["owner", "alex", "kim", "sam", "jo"] {
            std::fs::create_dir_all(base.join("user").join(n)).unwrap();
            let pw = first_password_file(&data, n);
            std::fs::create_dir_all(pw.parent().unwrap()).unwrap();
            std::fs::write(pw, "pw").unwrap();
        }
        // snac's deluser as far as this role sees it: the folder goes; jo's fails.
        let snac = t.path().join("snac");
        std::fs::write(
            &snac,
            "#!/bin/sh\n[ \"$1 $3\" = \"deluser jo\" ] && { echo disk error; exit 1; }\n\
             [ \"$1\" = deluser ] && rm -r \"$2/user/$3\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&snac, std::fs::Permissions::from_mode(0o755)).unwrap();
        let site = Site {
            name: Some("hearth".into()),
            domain: None,
            // kim was removed, then added again: a new account.
            social_accounts: vec!["kim".into(), "sam".into()],
            social_removed: ["alex", "kim", "owner", "../sam", "jo", "gone"]
                .map(String::from)
                .to_vec(),
        };
        remove_accounts(&snac, &base, &data, &site).unwrap();
        let there = |n: &str| base.join("user").join(n).exists();
        let pw = |n: &str| first_password_file(&data, n).exists();
        assert!(!there("alex") && !pw("alex"));
        assert!(there("kim") && pw("kim"));
        assert!(there("owner") && pw("owner"));
        assert!(there("sam") && pw("sam"));
        // A failed deletion keeps everything, for the next start.
        assert!(there("jo") && pw("jo"));
    }

    #[test]
    fn server_json_gets_cairns_fields_and_keeps_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("server.json");
        std::fs::write(
            &f,
            r#"{"host": "cairn.local", "port": 8001, "layout": 2.7, "address": "0.0.0.0"}"#,
        )
        .unwrap();
        configure(&f, "hearth.local").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        assert_eq!(v["host"], "hearth.local");
        assert_eq!(v["address"], "127.0.0.1");
        assert_eq!(v["layout"], 2.7);
        assert_eq!(v["admin_account"], OWNER);
        assert_eq!(v["queue_timeout"], 30);
        std::fs::write(&f, "[1]").unwrap();
        assert!(configure(&f, "x.local").is_err());
    }
}
