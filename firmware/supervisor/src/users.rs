//! Service accounts: looks up users and groups in `/etc/passwd` and `/etc/group` and adds the
//! missing ones, so manifests can name a user nobody created by hand (the device's `/etc` is a
//! tmpfs filled at boot).

use std::path::Path;

/// First uid/gid handed out to service accounts (below are the system's own).
pub const SERVICE_ID_MIN: u32 = 200;
/// Last uid/gid handed out to service accounts.
pub const SERVICE_ID_MAX: u32 = 999;

/// Returns the uid and gid to run as for `user` (and `group`, defaulting to the user's own
/// group, created with the user's name when the user is new), adding missing entries to
/// `etc/passwd` and `etc/group`.
pub fn ensure_account(
    etc: &Path,
    user: Option<&str>,
    group: Option<&str>,
) -> Result<(Option<u32>, Option<u32>), String> {
    let passwd_path = etc.join("passwd");
    let group_path = etc.join("group");
    let mut passwd = read_or_empty(&passwd_path)?;
    let mut groups = read_or_empty(&group_path)?;
    let existing_user = user.and_then(|u| find(&passwd, u));
    // The group: named, or the existing user's primary group, or a new one named like the user.
    let gid = match (group, existing_user) {
        (Some(g), _) => Some(ensure_entry(&mut groups, &group_path, g, |gid| {
            format!("{g}:x:{gid}:")
        })?),
        (None, Some(fields)) => Some(parse_id(&fields, 3, &passwd_path)?),
        (None, None) => match user {
            Some(u) => Some(ensure_entry(&mut groups, &group_path, u, |gid| {
                format!("{u}:x:{gid}:")
            })?),
            None => None,
        },
    };
    let uid = match user {
        Some(u) => {
            let g = gid.unwrap_or(65534);
            Some(ensure_entry(&mut passwd, &passwd_path, u, |uid| {
                format!("{u}:x:{uid}:{g}:{u} service:/var/empty:/bin/false")
            })?)
        }
        None => None,
    };
    Ok((uid, gid))
}

/// The gids of supplementary `groups` in `etc/group`, adding the missing ones (a group made
/// here is the one its service's account later takes, as that account looks it up by name).
pub fn ensure_groups(etc: &Path, groups: &[String]) -> Result<Vec<u32>, String> {
    let group_path = etc.join("group");
    let mut text = read_or_empty(&group_path)?;
    groups
        .iter()
        .map(|g| ensure_entry(&mut text, &group_path, g, |gid| format!("{g}:x:{gid}:")))
        .collect()
}

/// The name of the account with `uid` in `etc/passwd`, if any.
pub fn user_of(etc: &Path, uid: u32) -> Option<String> {
    let text = std::fs::read_to_string(etc.join("passwd")).ok()?;
    let uid = uid.to_string();
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&uid.as_str()))
        .map(|f| f[0].to_string())
}

fn read_or_empty(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
    }
}

/// The `:`-separated fields of the entry named `name`.
fn find(text: &str, name: &str) -> Option<Vec<String>> {
    text.lines()
        .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
        .find(|f| f.first().is_some_and(|n| n == name))
}

fn parse_id(fields: &[String], i: usize, file: &Path) -> Result<u32, String> {
    fields
        .get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{}: entry {:?} has no valid id", file.display(), fields[0]))
}

/// The id (third field) of `name` in `text`, adding `make(free id)` to the file if missing.
fn ensure_entry(
    text: &mut String,
    path: &Path,
    name: &str,
    make: impl Fn(u32) -> String,
) -> Result<u32, String> {
    if let Some(fields) = find(text, name) {
        return parse_id(&fields, 2, path);
    }
    let used: Vec<u32> = text
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect();
    let id = (SERVICE_ID_MIN..=SERVICE_ID_MAX)
        .find(|id| !used.contains(id))
        .ok_or_else(|| format!("{}: no free id for {name}", path.display()))?;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&make(id));
    text.push('\n');
    write_atomically(path, text.as_bytes())
        .map_err(|e| format!("{}: cannot add {name}: {e}", path.display()))?;
    Ok(id)
}

/// Replaces `path` durably (readers never see half a file), making its directory if need be.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    cairn_durable::write(path, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_user_and_group_once() {
        let etc = tempfile::tempdir().unwrap();
        std::fs::write(etc.path().join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(etc.path().join("group"), "root:x:0:\n").unwrap();
        let first = ensure_account(etc.path(), Some("web"), None).unwrap();
        assert_eq!(first, (Some(SERVICE_ID_MIN), Some(SERVICE_ID_MIN)));
        let again = ensure_account(etc.path(), Some("web"), None).unwrap();
        assert_eq!(again, first);
        let node = ensure_account(etc.path(), Some("node"), Some("web")).unwrap();
        assert_eq!(node, (Some(SERVICE_ID_MIN + 1), Some(SERVICE_ID_MIN)));
        let passwd = std::fs::read_to_string(etc.path().join("passwd")).unwrap();
        assert_eq!(passwd.lines().count(), 3);
        assert!(passwd.contains("web:x:200:200:"));
        assert!(passwd.contains("node:x:201:200:"));
        let group = std::fs::read_to_string(etc.path().join("group")).unwrap();
        assert_eq!(group.lines().count(), 2);
    }

    #[test]
    fn supplementary_groups_are_found_or_made_and_agree_with_accounts_made_later() {
        let etc = tempfile::tempdir().unwrap();
        std::fs::write(etc.path().join("group"), "root:x:0:\nnode:x:205:\n").unwrap();
        let gids = ensure_groups(etc.path(), &["node".into(), "www".into()]).unwrap();
        assert_eq!(gids, vec![205, 200]);
        // An account made after another service joined its group gets that same group.
        let (_, gid) = ensure_account(etc.path(), Some("www"), None).unwrap();
        assert_eq!(gid, Some(200));
        let group = std::fs::read_to_string(etc.path().join("group")).unwrap();
        assert_eq!(group.lines().count(), 3);
    }

    #[test]
    fn existing_entries_are_used() {
        let etc = tempfile::tempdir().unwrap();
        std::fs::write(etc.path().join("passwd"), "daemon:x:1:1::/:/bin/false").unwrap();
        std::fs::write(etc.path().join("group"), "daemon:x:1:\nstaff:x:50:\n").unwrap();
        assert_eq!(
            ensure_account(etc.path(), Some("daemon"), None).unwrap(),
            (Some(1), Some(1))
        );
        assert_eq!(
            ensure_account(etc.path(), Some("daemon"), Some("staff")).unwrap(),
            (Some(1), Some(50))
        );
        assert_eq!(
            ensure_account(etc.path(), None, Some("staff")).unwrap(),
            (None, Some(50))
        );
        assert_eq!(
            ensure_account(etc.path(), None, None).unwrap(),
            (None, None)
        );
    }

    #[test]
    fn missing_files_are_created() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        assert_eq!(
            ensure_account(&etc, Some("svc"), None).unwrap(),
            (Some(SERVICE_ID_MIN), Some(SERVICE_ID_MIN))
        );
        assert!(etc.join("group").exists());
    }

    #[test]
    fn corrupt_entry_is_named() {
        let etc = tempfile::tempdir().unwrap();
        std::fs::write(
            etc.path().join("passwd"),
            "web:x:notanumber:1::/:/bin/false\n",
        )
        .unwrap();
        let e = ensure_account(etc.path(), Some("web"), Some("web")).unwrap_err();
        assert!(e.contains("passwd") && e.contains("web"), "{e}");
    }
}
