//! What the web hands the bundled third-party services (Prosody, snac): the device's certificate
//! and key, the names the owner gave, and the certificates they trust ([`crate::trust`]), in the
//! web's runtime directory (`/run/web`, readable by
//! the group `web` that those services join). They never see the owner's passphrase or keys.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::settings::Settings;
use crate::tls::{DEFAULT_HOST, IDENTITY_FILE};

/// The certificate and key (PEM), group-readable.
pub const TLS_FILE: &str = "tls.pem";
/// The names ([`Site`], JSON).
pub const SITE_FILE: &str = "site.json";

/// The services that read these files when they start (restarted when the names change).
pub const SERVICES: [&str; 2] = ["prosody", "snac"];

/// The names services are configured for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Site {
    /// The device's name (`NAME.local`); none before setup.
    pub name: Option<String>,
    /// The public domain from setup, if the owner gave one.
    pub domain: Option<String>,
    /// The household's fediverse accounts besides the owner's.
    #[serde(default)]
    pub social_accounts: Vec<String>,
    /// Household accounts removed on the Social page, for snac to delete.
    #[serde(default)]
    pub social_removed: Vec<String>,
}

impl Site {
    /// The domain services answer for: the public one, else `NAME.local`, else the default.
    pub fn service_domain(&self) -> String {
        match (&self.domain, &self.name) {
            (Some(d), _) => d.clone(),
            (None, Some(n)) => format!("{n}.local"),
            (None, None) => DEFAULT_HOST.to_string(),
        }
    }
}

/// Writes both files into `dir` (each whole, by rename) from the web's `data_dir`.
pub fn publish(dir: &Path, data_dir: &Path, settings: Option<&Settings>) -> Result<()> {
    let pem = std::fs::read(data_dir.join(IDENTITY_FILE))
        .with_context(|| format!("{}: reading", data_dir.join(IDENTITY_FILE).display()))?;
    write(dir, TLS_FILE, &pem, 0o640)?;
    let site = Site {
        name: settings.map(|s| s.name.clone()),
        domain: settings.and_then(|s| s.domain.clone()),
        social_accounts: settings.map_or(Vec::new(), |s| s.social_accounts.clone()),
        social_removed: settings.map_or(Vec::new(), |s| s.social_removed.clone()),
    };
    write(dir, SITE_FILE, &serde_json::to_vec_pretty(&site)?, 0o644)
}

/// Reads what [`publish`] wrote.
pub fn read_site(dir: &Path) -> Result<Site> {
    let path = dir.join(SITE_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("{}: reading", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: malformed", path.display()))
}

/// Writes `name` in `dir` whole (a temporary file renamed over it) with `mode`.
pub(crate) fn write(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("{}: writing", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, dir.join(name))
        .with_context(|| format!("{}: renaming", dir.join(name).display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_domain_is_the_public_one_else_the_local_name() {
        let mut site = Site {
            name: None,
            domain: None,
            social_accounts: Vec::new(),
            social_removed: Vec::new(),
        };
        assert_eq!(site.service_domain(), DEFAULT_HOST);
        site.name = Some("hearth".into());
        assert_eq!(site.service_domain(), "hearth.local");
        site.domain = Some("example.org".into());
        assert_eq!(site.service_domain(), "example.org");
    }

    #[test]
    fn published_files_are_whole_and_the_key_is_not_world_readable() {
        let t = tempfile::tempdir().unwrap();
        let (data, share) = (t.path().join("data"), t.path().join("share"));
        std::fs::create_dir_all(data.join("tls")).unwrap();
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(data.join(IDENTITY_FILE), b"-----BEGIN PRIVATE KEY-----\n").unwrap();
        publish(&share, &data, None).unwrap();
        let mode = std::fs::metadata(share.join(TLS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(
            read_site(&share).unwrap(),
            Site {
                name: None,
                domain: None,
                social_accounts: Vec::new(),
                social_removed: Vec::new(),
            }
        );
        std::fs::write(share.join(SITE_FILE), b"{\"name\":").unwrap();
        let e = read_site(&share).unwrap_err().to_string();
        assert!(e.contains("malformed"), "{e}");
    }
}
