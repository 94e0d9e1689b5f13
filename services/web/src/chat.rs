//! Jabber accounts, through Prosody's admin socket (`mod_admin_shell`: an XML stream of
//! `<repl-input>` commands answered by `<repl-output>` lines and one `<repl-result>`). The web
//! joins Prosody's group to reach it; nothing else of Prosody's is touched.
//!
//! The calls block (a Unix socket, a few milliseconds); the server makes them on its blocking
//! pool.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Longest an admin command may take (Prosody hashes a new password: SCRAM, 10 000 rounds on
/// an emulated CPU).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest the dashboard waits for the number of accounts.
const COUNT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most bytes read of one answer: thousands of accounts fit.
const ANSWER_BYTES_MAX: usize = 256 << 10;
/// The owner's own account, made at setup: `owner@DOMAIN`.
pub const OWNER: &str = "owner";
/// Account names: short, lowercase, what a person types on a phone.
pub const NAME_CHARS_MAX: usize = 32;
/// Passwords: long enough to be worth having, short enough to type.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Longest password accepted.
pub const PASSWORD_CHARS_MAX: usize = 128;

/// Prosody's admin socket.
#[derive(Clone, Debug)]
pub struct Prosody {
    /// The socket's path (`/run/prosody/admin.sock`).
    pub socket: PathBuf,
}

/// An account name the way Cairn allows it, or why not (for the page).
pub fn clean_name(name: &str) -> Result<String, &'static str> {
    let n = lowercase_name(
        name,
        |c| matches!(c, '.' | '-' | '_'),
        "letters a–z, digits, '.', '-' and '_' only",
    )?;
    if !n.starts_with(|c: char| c.is_ascii_alphanumeric()) || n.ends_with('.') {
        return Err("it must begin with a letter or digit and not end with '.'");
    }
    Ok(n)
}

/// A household account's name, trimmed and lower-cased: 1 to 32 characters, each a letter
/// a–z, a digit or one `other` allows (`why` says which when one is not), or why not.
pub(crate) fn lowercase_name(
    name: &str,
    other: fn(char) -> bool,
    why: &'static str,
) -> Result<String, &'static str> {
    let n = name.trim().to_ascii_lowercase();
    if n.is_empty() {
        return Err("a name, like alex");
    }
    if n.chars().count() > NAME_CHARS_MAX {
        return Err("at most 32 characters");
    }
    if !n
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || other(c))
    {
        return Err(why);
    }
    Ok(n)
}

/// A password the way Cairn allows it, or why not.
pub fn check_password(password: &str) -> Result<(), &'static str> {
    let n = password.chars().count();
    if n < PASSWORD_CHARS_MIN {
        return Err("at least 8 characters");
    }
    if n > PASSWORD_CHARS_MAX {
        return Err("at most 128 characters");
    }
    if password.chars().any(char::is_control) {
        return Err("no control characters");
    }
    Ok(())
}

impl Prosody {
    /// The accounts of `domain`, as full addresses, sorted.
    pub fn accounts(&self, domain: &str) -> Result<Vec<String>> {
        self.accounts_within(domain, ANSWER_TIMEOUT)
    }

    /// How many accounts `domain` has, for the dashboard (a short wait).
    pub fn count(&self, domain: &str) -> Result<usize> {
        Ok(self.accounts_within(domain, COUNT_TIMEOUT)?.len())
    }

    fn accounts_within(&self, domain: &str, timeout: Duration) -> Result<Vec<String>> {
        let (lines, _) = self.run_within(&format!("user:list({})", lua_string(domain)), timeout)?;
        let mut all: Vec<String> = lines
            .into_iter()
            .filter(|l| l.ends_with(&format!("@{domain}")))
            .collect();
        all.sort();
        Ok(all)
    }

    /// Makes `name@domain` with `password`; an existing account is an error.
    pub fn create(&self, name: &str, domain: &str, password: &str) -> Result<()> {
        let jid = format!("{name}@{domain}");
        if self.accounts(domain)?.contains(&jid) {
            bail!("exists already");
        }
        self.run(&format!(
            "user:create({}, {})",
            lua_string(&jid),
            lua_string(password)
        ))
        .map(|_| ())
    }

    /// Gives `name@domain` a new password.
    pub fn set_password(&self, name: &str, domain: &str, password: &str) -> Result<()> {
        let jid = format!("{name}@{domain}");
        self.run(&format!(
            "user:password({}, {})",
            lua_string(&jid),
            lua_string(password)
        ))
        .map(|_| ())
    }

    /// Removes `name@domain` with everything Prosody keeps for it.
    pub fn delete(&self, name: &str, domain: &str) -> Result<()> {
        self.run(&format!(
            "user:delete({})",
            lua_string(&format!("{name}@{domain}"))
        ))
        .map(|_| ())
    }

    /// Sends one command; its output lines and its result's text, or the error it answered.
    fn run(&self, code: &str) -> Result<(Vec<String>, String)> {
        self.run_within(code, ANSWER_TIMEOUT)
    }

    fn run_within(&self, code: &str, timeout: Duration) -> Result<(Vec<String>, String)> {
        let mut s = UnixStream::connect(&self.socket).with_context(|| {
            format!(
                "Jabber is not running (no answer on {})",
                self.socket.display()
            )
        })?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        write!(
            s,
            "<stream:stream xmlns='xmpp:prosody.im/admin' \
             xmlns:stream='http://etherx.jabber.org/streams'>\
             <repl-input>{}</repl-input>",
            xml_escape(code)
        )?;
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let text = String::from_utf8_lossy(&got);
            if text.contains("</repl-result>") {
                break;
            }
            if got.len() > ANSWER_BYTES_MAX {
                bail!("Jabber's answer is over {ANSWER_BYTES_MAX} bytes");
            }
            let n = s.read(&mut buf).context("Jabber did not answer")?;
            if n == 0 {
                bail!("Jabber closed the admin connection without an answer");
            }
            got.extend_from_slice(&buf[..n]);
        }
        let _ = s.write_all(b"</stream:stream>");
        parse(&String::from_utf8_lossy(&got))
    }
}

/// The output lines and the result of an admin answer; an error result is an `Err`.
fn parse(answer: &str) -> Result<(Vec<String>, String)> {
    let mut lines = Vec::new();
    let mut rest = answer;
    while let Some(at) = rest.find("<repl-") {
        rest = &rest[at..];
        let Some(open_end) = rest.find('>') else {
            break;
        };
        let open = &rest[..open_end];
        let name = open[1..]
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("");
        let close = format!("</{name}>");
        let (text, after) = if open.ends_with('/') {
            ("", &rest[open_end + 1..])
        } else {
            let body = &rest[open_end + 1..];
            let Some(end) = body.find(&close) else {
                break;
            };
            (&body[..end], &body[end + close.len()..])
        };
        let text = xml_unescape(text);
        let error = open.contains("type='error'") || open.contains("type=\"error\"");
        match name {
            "repl-output" => lines.push(text),
            "repl-result" if error => bail!("Jabber refused: {text}"),
            "repl-result" => return Ok((lines, text)),
            _ => {}
        }
        rest = after;
    }
    bail!("Jabber's answer is malformed")
}

/// A Lua string literal that keeps any text inside it (for Prosody's admin commands and its
/// configuration file).
pub fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\{}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// XML's five entities; `&` first when escaping, last when unescaping.
const ENTITIES: [(&str, &str); 5] = [
    ("&", "&amp;"),
    ("<", "&lt;"),
    (">", "&gt;"),
    ("'", "&apos;"),
    ("\"", "&quot;"),
];

fn xml_escape(s: &str) -> String {
    ENTITIES
        .iter()
        .fold(s.to_string(), |t, (c, e)| t.replace(c, e))
}

fn xml_unescape(s: &str) -> String {
    ENTITIES
        .iter()
        .rev()
        .fold(s.to_string(), |t, (c, e)| t.replace(e, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_what_a_person_types_and_nothing_else() {
        assert_eq!(clean_name(" Alex "), Ok("alex".into()));
        assert_eq!(clean_name("sam.w-2_x"), Ok("sam.w-2_x".into()));
        for bad in [
            "",
            "a b",
            "a@b",
            "ünï",
            "a/b",
            ".a",
            "a.",
            "<x>",
            &"a".repeat(33),
        ] {
            assert!(clean_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_password("short").is_err());
        assert!(check_password("long enough").is_ok());
        assert!(check_password("with\nnewline").is_err());
    }

    #[test]
    fn answers_are_read_and_errors_named() {
        let ok = "<?xml version='1.0'?><stream:stream xmlns='xmpp:prosody.im/admin'>\
                  <repl-output>alex@hearth.local</repl-output>\
                  <repl-output>sam@hearth.local</repl-output>\
                  <repl-result>OK: Showing all 2 users</repl-result>";
        let (lines, result) = parse(ok).unwrap();
        assert_eq!(lines, ["alex@hearth.local", "sam@hearth.local"]);
        assert_eq!(result, "OK: Showing all 2 users");
        let err = "<repl-result type='error'>User exists &amp; more</repl-result>";
        assert_eq!(
            parse(err).unwrap_err().to_string(),
            "Jabber refused: User exists & more"
        );
        assert!(parse("<repl-output>cut").is_err());
    }

    #[test]
    fn a_password_cannot_leave_its_lua_string_nor_its_xml() {
        let code = format!(
            "user:create({}, {})",
            lua_string("a@b"),
            lua_string("p\"); os.exit(1) --<&>")
        );
        assert_eq!(code, r#"user:create("a@b", "p\"); os.exit(1) --<&>")"#);
        let x = xml_escape(&code);
        assert!(!x.contains('<') && !x.contains('>'), "{x}");
        assert_eq!(xml_unescape(&x), code);
    }
}
