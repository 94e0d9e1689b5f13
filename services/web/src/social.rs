//! The household's fediverse accounts (snac2, run by `cairn snac`): what the web and that role
//! agree on. The owner's account and the ones the Social page adds (kept in the settings and
//! published in `site.json`) are made by the role at its next start; each one's first password
//! is left in snac's data folder for the Social page.

use std::path::{Path, PathBuf};

/// The owner's account: `@owner@DOMAIN`.
pub const OWNER: &str = "owner";
/// Where each account's first password is, in snac's data folder (mode 0640, group snac).
pub const FIRST_PASSWORDS_DIR: &str = "first-passwords";
/// Household accounts, at most (each is a path the web passes on to snac).
pub const ACCOUNTS_MAX: usize = 32;
/// Removed accounts remembered for snac's next start, at most (it deletes them at once; the
/// oldest are long gone).
pub const REMOVED_MAX: usize = 64;
/// Names that would take a path of the web's or snac's own.
const RESERVED: [&str; 9] = [
    OWNER,
    "admin",
    "api",
    "setup",
    "static",
    "oauth",
    "file_share",
    "nodeinfo_2_0",
    "s",
];

/// `NAME`'s first password file under snac's data folder `data`.
pub fn first_password_file(data: &Path, name: &str) -> PathBuf {
    data.join(FIRST_PASSWORDS_DIR).join(name)
}

/// A household account's name as snac and the web's paths allow it (`@NAME@DOMAIN`, its actor
/// at `/NAME`), or why not.
pub fn clean_name(name: &str) -> Result<String, &'static str> {
    let n = crate::chat::lowercase_name(name, |c| c == '_', "letters a–z, digits and '_' only")?;
    if RESERVED.contains(&n.as_str()) {
        return Err("that name is taken by the plug's own pages");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_what_snac_and_the_paths_allow() {
        assert_eq!(clean_name(" Alex ").unwrap(), "alex");
        assert_eq!(clean_name("sam_2").unwrap(), "sam_2");
        for bad in [
            "",
            "al ex",
            "al.ex",
            "al-ex",
            "admin",
            "owner",
            "ö",
            &"a".repeat(33),
        ] {
            assert!(clean_name(bad).is_err(), "{bad:?}");
        }
    }
}
