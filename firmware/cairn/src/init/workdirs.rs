//! Service working directories on the data partition, made before the services start: a
//! service that runs as its own user (the storage node as `node`) keeps its state in its
//! `workdir` (`/data/node`), which root-owned `/data` would not let it create. A service with
//! `runtime_dir = true` also gets `/run/NAME` (0750: its group may enter, to reach a socket).
//!
//! The accounts are created here, in manifest order, with the supervisor's own
//! `ensure_account`, so the supervisor later finds the same uid. A uid can change between boots
//! (`/etc/passwd` is rebuilt from the image each boot, and a new service may take an earlier
//! number): then the directory's tree is handed over to the new uid once.

use cairn_supervisor::{manifest, users};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Deepest directory level walked when handing a tree to a new uid (the chunk store nests two).
const DEPTH_MAX: usize = 8;

/// Makes the workdirs under `data` of the manifests in `services` that name a user, owned by
/// that user, and their runtime directories under `run`; returns one line per directory made
/// or handed over, and per problem.
pub fn prepare(services: &Path, etc: &Path, data: &Path, run: &Path) -> Vec<String> {
    let (manifests, _) = manifest::load_dir(services); // bad manifests: the supervisor says why
    let mut lines = Vec::new();
    for m in manifests {
        let Some(user) = m.user.as_deref().filter(|u| *u != "root") else {
            continue;
        };
        let dirs: Vec<(PathBuf, u32)> = m
            .workdir
            .iter()
            .filter(|d| d.starts_with(data))
            .map(|d| (d.clone(), if m.workdir_group_read { 0o750 } else { 0o700 }))
            .chain(m.runtime_dir.then(|| (run.join(&m.name), 0o750)))
            .collect();
        if dirs.is_empty() {
            continue;
        }
        let ids = users::ensure_account(etc, Some(user), m.group.as_deref());
        let (uid, gid) = match ids {
            Ok((Some(u), Some(g))) => (u, g),
            Ok(_) => continue,
            Err(e) => {
                lines.push(format!("error: {}: account {user}: {e}", m.name));
                continue;
            }
        };
        for (dir, mode) in dirs {
            match ensure_dir(&dir, mode, uid, gid) {
                Ok(Some(what)) => lines.push(format!("{}: {} {what}", m.name, dir.display())),
                Ok(None) => {}
                Err(e) => lines.push(format!("error: {}: {}: {e}", m.name, dir.display())),
            }
        }
    }
    lines
}

/// Creates `dir` (with `mode`) owned by `uid:gid`, or hands an existing tree owned by someone
/// else to them; an existing `dir` gets `mode` (a manifest that starts or stops sharing it).
/// Returns what was done, if anything.
fn ensure_dir(dir: &Path, mode: u32, uid: u32, gid: u32) -> std::io::Result<Option<String>> {
    let (u, g) = (
        nix::unistd::Uid::from_raw(uid),
        nix::unistd::Gid::from_raw(gid),
    );
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
            nix::unistd::chown(dir, Some(u), Some(g))?;
            Ok(Some(format!("made for uid {uid}")))
        }
        Err(e) => Err(e),
        Ok(meta) => {
            let mut done = None;
            if meta.uid() != uid || meta.gid() != gid {
                let n = chown_tree(dir, u, g, 0)?;
                done = Some(format!(
                    "handed from uid {} to uid {uid} ({n} entries)",
                    meta.uid()
                ));
            }
            if meta.mode() & 0o777 != mode {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
                let was = format!("mode {:o} (was {:o})", mode, meta.mode() & 0o777);
                done = Some(done.map_or(was.clone(), |d| format!("{d}, {was}")));
            }
            Ok(done)
        }
    }
}

fn chown_tree(
    path: &Path,
    u: nix::unistd::Uid,
    g: nix::unistd::Gid,
    depth: usize,
) -> std::io::Result<u64> {
    // lchown: a symlink is changed itself, never what it points to.
    std::os::unix::fs::lchown(path, Some(u.as_raw()), Some(g.as_raw()))?;
    let mut n = 1;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() && depth < DEPTH_MAX {
        for entry in std::fs::read_dir(path)? {
            n += chown_tree(&entry?.path(), u, g, depth + 1)?;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root (the tests' user here and in CI) the directory is made and handed over; the
    /// accounts go to a test `etc`.
    #[test]
    fn a_service_user_gets_its_workdir_and_keeps_it_when_its_uid_changes() {
        if !nix::unistd::geteuid().is_root() {
            // chown needs root; the QEMU test covers the device.
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (services, etc, data, run) = (
            t.path().join("s"),
            t.path().join("etc"),
            t.path().join("data"),
            t.path().join("run"),
        );
        for d in [&services, &etc, &data, &run] {
            std::fs::create_dir_all(d).unwrap();
        }
        let home = data.join("node");
        std::fs::write(
            services.join("node.toml"),
            format!(
                "name = \"node\"\nexec = [\"/bin/true\"]\nuser = \"node\"\nworkdir = \"{}\"\n\
                 runtime_dir = true\n",
                home.display()
            ),
        )
        .unwrap();
        // Not under data, or root: left alone.
        std::fs::write(
            services.join("web.toml"),
            "name = \"web\"\nexec = [\"/bin/true\"]\nuser = \"web\"\nworkdir = \"/srv/web\"\n",
        )
        .unwrap();
        let lines = prepare(&services, &etc, &data, &run);
        assert_eq!(
            lines,
            vec![
                format!("node: {} made for uid 200", home.display()),
                format!("node: {} made for uid 200", run.join("node").display()),
            ]
        );
        let meta = std::fs::metadata(&home).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (200, 200, 0o700)
        );
        // Its group may enter the runtime directory (to reach the socket there), others not.
        let meta = std::fs::metadata(run.join("node")).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (200, 200, 0o750)
        );
        // Second boot: nothing to do.
        assert!(prepare(&services, &etc, &data, &run).is_empty());
        std::fs::remove_dir(run.join("node")).unwrap();
        // A boot where another account took uid 200 first: the tree moves to node's new uid.
        std::fs::create_dir_all(home.join("store/seg")).unwrap();
        std::fs::write(home.join("store/seg/1"), b"x").unwrap();
        nix::unistd::chown(
            &home.join("store/seg/1"),
            Some(nix::unistd::Uid::from_raw(200)),
            None,
        )
        .unwrap();
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0::/:/bin/false\nweb:x:200:200::/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(etc.join("group"), "root:x:0:\nweb:x:200:\n").unwrap();
        let lines = prepare(&services, &etc, &data, &run);
        assert_eq!(
            lines,
            vec![
                format!(
                    "node: {} handed from uid 200 to uid 201 (4 entries)",
                    home.display()
                ),
                // /run is a tmpfs: remade at each boot.
                format!("node: {} made for uid 201", run.join("node").display()),
            ]
        );
        assert_eq!(
            std::fs::metadata(home.join("store/seg/1")).unwrap().uid(),
            201
        );

        // A manifest that lets its group read the workdir: the existing one opens to it.
        let text = std::fs::read_to_string(services.join("node.toml")).unwrap();
        std::fs::write(
            services.join("node.toml"),
            format!("{text}workdir_group_read = true\n"),
        )
        .unwrap();
        let lines = prepare(&services, &etc, &data, &run);
        assert!(
            lines.contains(&format!("node: {} mode 750 (was 700)", home.display())),
            "{lines:?}"
        );
        assert_eq!(std::fs::metadata(&home).unwrap().mode() & 0o777, 0o750);
    }

    #[test]
    fn a_missing_services_dir_prepares_nothing() {
        let t = tempfile::tempdir().unwrap();
        assert!(prepare(&t.path().join("none"), t.path(), t.path(), t.path()).is_empty());
    }
}
