//! The owner's settings (`DATA/settings.toml`): the device's name, the admin passphrase's
//! Argon2id hash, the storage offered to friends and the public domain; the rules each field
//! must meet, and the passphrase hash itself.
//!
//! The file is written whole, once every field is valid (nothing half-applied); its presence is
//! what makes the device "set up" for the web.

use std::path::Path;

use anyhow::{bail, Context, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

/// The file, in the data directory.
pub const SETTINGS_FILE: &str = "settings.toml";

/// What setup stores.
///
/// Fields this version does not know are kept, not refused: after an update falls back to the
/// older system, that system must start on the settings the newer one wrote, and its next save
/// must not drop what the newer one will need again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The device's name: its hostname and `NAME.local`.
    pub name: String,
    /// The admin passphrase, Argon2id in the PHC string format (`$argon2id$v=19$m=…`).
    pub passphrase_hash: String,
    /// Storage offered to friends' plugs, in bytes.
    pub offer_bytes: u64,
    /// The public domain name the owner's site answers to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The owner confirmed the recovery key (typed its last group). Until then the admin pages
    /// lead to the recovery key and PID 1 is not told that setup is done (the LED stays at
    /// "setup needed").
    #[serde(default)]
    pub recovery_confirmed: bool,
    /// The household's fediverse accounts besides the owner's (the Social page adds them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub social_accounts: Vec<String>,
    /// Household fediverse accounts the Social page removed: snac deletes each at its next
    /// start. Named, never inferred from what the list lacks: a settings file out of step with
    /// snac's data (a restored plug) must not delete anyone's posts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub social_removed: Vec<String>,
    /// Fields written by a newer version, kept as they were.
    #[serde(flatten, default)]
    pub newer: toml::Table,
}

impl Settings {
    /// The settings in `data_dir`, `None` before setup. A damaged file is an error, never "not
    /// set up" (that would offer the claim again).
    pub fn load(data_dir: &Path) -> Result<Option<Settings>> {
        let path = data_dir.join(SETTINGS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("{}: reading", path.display())),
        };
        let s: Settings =
            toml::from_str(&text).with_context(|| format!("{}: malformed", path.display()))?;
        if let Err(e) = validate_name(&s.name) {
            bail!("{}: name: {e}", path.display());
        }
        Ok(Some(s))
    }

    /// Writes the settings durably, in one write.
    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let text = toml::to_string(self).context("encoding the settings")?;
        let path = data_dir.join(SETTINGS_FILE);
        cairn_durable::write_mode(&path, text.as_bytes(), 0o600)
            .with_context(|| format!("{}: writing", path.display()))
    }
}

/// Checks a device name: 1–63 characters, lowercase letters, digits and hyphens, not starting or
/// ending with a hyphen (a DNS label, so it works as hostname and `NAME.local`).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("give the device a name".into());
    }
    if name.len() > LABEL_CHARS_MAX {
        return Err(format!("at most {LABEL_CHARS_MAX} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only lowercase letters a–z, digits and hyphens".into());
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("cannot start or end with a hyphen".into());
    }
    Ok(())
}

/// Checks a public domain name and returns it in its plain form (lowercase, no final dot);
/// empty means none.
pub fn validate_domain(domain: &str) -> Result<Option<String>, String> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() {
        return Ok(None);
    }
    if d.len() > DOMAIN_CHARS_MAX {
        return Err(format!("at most {DOMAIN_CHARS_MAX} characters"));
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return Err("a full domain name, like example.org".into());
    }
    for label in &labels {
        if label.is_empty() {
            return Err("two dots in a row".into());
        }
        validate_name(label).map_err(|e| format!("`{label}`: {e}"))?;
    }
    // An address is not a domain name: top-level domains are never all digits.
    if labels[labels.len() - 1].bytes().all(|b| b.is_ascii_digit()) {
        return Err("a domain name, not an address".into());
    }
    Ok(Some(d))
}

/// Checks a new passphrase and its repetition.
pub fn validate_passphrase(passphrase: &str, again: &str) -> Result<(), String> {
    let n = passphrase.chars().count();
    if n < PASSPHRASE_CHARS_MIN {
        return Err(format!("at least {PASSPHRASE_CHARS_MIN} characters"));
    }
    if n > PASSPHRASE_CHARS_MAX {
        return Err(format!("at most {PASSPHRASE_CHARS_MAX} characters"));
    }
    if passphrase != again {
        return Err("the two passphrases differ".into());
    }
    Ok(())
}

/// The Argon2id cost of the admin passphrase's hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kdf {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for Kdf {
    /// 19 MiB, 2 passes, 1 lane (OWASP's minimum for Argon2id; about a second on a plug's CPU).
    fn default() -> Self {
        Kdf {
            m_kib: 19 * 1024,
            t: 2,
            p: 1,
        }
    }
}

impl Kdf {
    /// The PHC string of `passphrase` under a fresh random salt.
    pub fn hash(&self, passphrase: &str) -> Result<String> {
        let mut salt = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .map_err(|_| anyhow::anyhow!("no randomness for the salt"))?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
        let params = Params::new(self.m_kib, self.t, self.p, None)
            .map_err(|e| anyhow::anyhow!("Argon2 parameters: {e}"))?;
        let hash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(passphrase.as_bytes(), &salt)
            .map_err(|e| anyhow::anyhow!("hashing the passphrase: {e}"))?;
        Ok(hash.to_string())
    }
}

/// Whether `passphrase` matches the PHC string `hash` (its own parameters, at most
/// [`KDF_MEMORY_KIB_MAX`] of memory: a damaged file must not exhaust RAM).
pub fn verify_passphrase(hash: &str, passphrase: &str) -> Result<bool> {
    let parsed = PasswordHash::new(hash).map_err(|e| anyhow::anyhow!("passphrase hash: {e}"))?;
    let params = Params::try_from(&parsed).map_err(|e| anyhow::anyhow!("passphrase hash: {e}"))?;
    if parsed.hash.is_none() || parsed.salt.is_none() {
        bail!("passphrase hash: no salt or no hash in it");
    }
    if params.m_cost() > KDF_MEMORY_KIB_MAX {
        bail!(
            "passphrase hash asks for {} KiB (at most {KDF_MEMORY_KIB_MAX})",
            params.m_cost()
        );
    }
    match Argon2::default().verify_password(passphrase.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        // Not a wrong passphrase: a damaged hash or no memory for it; say so, not "wrong".
        Err(e) => bail!("checking the passphrase: {e}"),
    }
}

/// A DNS label's length limit (the device name is one label).
pub const LABEL_CHARS_MAX: usize = 63;
/// A domain name's length limit.
pub const DOMAIN_CHARS_MAX: usize = 253;
/// Passphrase length, characters.
pub const PASSPHRASE_CHARS_MIN: usize = 10;
/// Longest passphrase, characters (the hash reads all of it).
pub const PASSPHRASE_CHARS_MAX: usize = 1024;
/// Largest Argon2 memory a stored hash may ask for, KiB (64 MiB).
pub const KDF_MEMORY_KIB_MAX: u32 = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for ok in ["cairn", "a", "my-plug-2", "0", &"x".repeat(63)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        assert!(validate_name("").unwrap_err().contains("name"));
        assert!(validate_name(&"x".repeat(64)).unwrap_err().contains("63"));
        for bad in ["Cairn", "my plug", "my_plug", "<script>", "plüg", "a.b"] {
            assert!(
                validate_name(bad).unwrap_err().contains("lowercase"),
                "{bad}"
            );
        }
        for bad in ["-a", "a-", "-"] {
            assert!(validate_name(bad).unwrap_err().contains("hyphen"), "{bad}");
        }
    }

    #[test]
    fn domains_are_full_dns_names() {
        assert_eq!(validate_domain(""), Ok(None));
        assert_eq!(validate_domain("  "), Ok(None));
        assert_eq!(
            validate_domain("Example.ORG."),
            Ok(Some("example.org".into()))
        );
        assert_eq!(
            validate_domain("my-site.example.co.uk"),
            Ok(Some("my-site.example.co.uk".into()))
        );
        assert!(validate_domain("localhost").unwrap_err().contains("full"));
        assert!(validate_domain("a..b").unwrap_err().contains("dots"));
        assert!(validate_domain("192.168.1.2")
            .unwrap_err()
            .contains("address"));
        assert!(validate_domain("-a.org").unwrap_err().contains("hyphen"));
        assert!(validate_domain("a_b.org").is_err());
        assert!(validate_domain(&format!("{}.org", "x".repeat(64))).is_err());
        let long = vec!["abcdefghi"; 26].join(".");
        assert!(long.len() > 253);
        assert!(validate_domain(&long).unwrap_err().contains("253"));
    }

    #[test]
    fn passphrases_have_bounds_and_must_match() {
        assert_eq!(validate_passphrase("0123456789", "0123456789"), Ok(()));
        assert!(validate_passphrase("short", "short")
            .unwrap_err()
            .contains("at least 10"));
        let long = "x".repeat(1025);
        assert!(validate_passphrase(&long, &long)
            .unwrap_err()
            .contains("at most"));
        assert!(validate_passphrase("0123456789", "0123456780")
            .unwrap_err()
            .contains("differ"));
        // Characters, not bytes.
        assert_eq!(validate_passphrase("ééééééééééé", "ééééééééééé"), Ok(()));
    }

    #[test]
    fn hashes_verify_only_their_passphrase() {
        let kdf = Kdf {
            m_kib: 64,
            t: 1,
            p: 1,
        };
        let h = kdf.hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{h}");
        assert!(verify_passphrase(&h, "correct horse").unwrap());
        assert!(!verify_passphrase(&h, "correct horsE").unwrap());
        assert_ne!(h, kdf.hash("correct horse").unwrap(), "salted");
        let greedy = h.replace("m=64", "m=1048576");
        assert!(verify_passphrase(&greedy, "correct horse").is_err());
        assert!(verify_passphrase("$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ", "x").is_err());
        assert!(verify_passphrase("not a hash", "x").is_err());
    }

    #[test]
    fn settings_round_trip_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Settings::load(dir.path()).unwrap(), None);
        let s = Settings {
            name: "plug".into(),
            passphrase_hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA".into(),
            offer_bytes: 5 << 30,
            domain: Some("example.org".into()),
            recovery_confirmed: true,
            social_accounts: vec!["alex".into()],
            social_removed: vec!["sam".into()],
            newer: toml::Table::new(),
        };
        s.save(dir.path()).unwrap();
        assert_eq!(Settings::load(dir.path()).unwrap(), Some(s));
        std::fs::write(dir.path().join(SETTINGS_FILE), "name = 3").unwrap();
        assert!(Settings::load(dir.path()).is_err());
        std::fs::write(
            dir.path().join(SETTINGS_FILE),
            "name = \"Bad Name\"\npassphrase_hash = \"x\"\noffer_bytes = 0\n",
        )
        .unwrap();
        assert!(format!("{:#}", Settings::load(dir.path()).unwrap_err()).contains("name"));
    }

    #[test]
    fn fields_of_a_newer_version_load_and_survive_a_save() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(SETTINGS_FILE),
            "name = \"plug\"\npassphrase_hash = \"x\"\noffer_bytes = 7\n\
             later_flag = true\n\n[later_table]\nlimit = 3\n",
        )
        .unwrap();
        let mut s = Settings::load(dir.path()).unwrap().unwrap();
        assert_eq!(s.offer_bytes, 7);
        assert_eq!(s.newer.get("later_flag"), Some(&toml::Value::Boolean(true)));
        s.offer_bytes = 8;
        s.save(dir.path()).unwrap();
        let again = Settings::load(dir.path()).unwrap().unwrap();
        assert_eq!(again.offer_bytes, 8);
        assert_eq!(again.newer, s.newer);
        assert_eq!(
            again.newer["later_table"]["limit"],
            toml::Value::Integer(3),
            "{:?}",
            again.newer
        );
    }
}
