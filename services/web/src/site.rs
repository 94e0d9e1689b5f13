//! The owner's web site: kept in the vault under `site/` (so it comes back with the recovery key)
//! and served at `/` from a copy on the data partition (`DATA/site`), which the web writes
//! whenever the vault's `site/` changes, and again at a login when the copy is missing (a plug
//! restored from the recovery key). Until there is one, `/` is the default page.
//!
//! A site arrives as a zip (or as files uploaded into the `site` folder on the Files page). A zip
//! is received into a file first (at most [`ZIP_BYTES_MAX`]), then every entry's name is
//! checked before anything is stored: one entry leaving the site (`..`, an absolute path), a
//! link, or a damaged archive refuses the whole zip, and the site stays as it was. Its files
//! replace the vault's `site/` in one snapshot.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use cairn_vault::manifest::EntryKind;
use cairn_vault::progress::NoProgress;
use cairn_vault::{PutReport, Vault};

use crate::files::check_path;

/// The site's folder in the vault.
pub const VAULT_DIR: &str = "site";
/// The served copy, in the data directory.
pub const SERVED_DIR: &str = "site";
/// Largest zip accepted.
pub const ZIP_BYTES_MAX: u64 = 256 << 20;
/// Most entries in a zip.
pub const ZIP_ENTRIES_MAX: usize = 10_000;
/// Most bytes a zip's files may unpack to (a zip bomb is refused before anything is stored).
pub const SITE_BYTES_MAX: u64 = 1 << 30;

/// The files of a checked zip: each entry's index and its path in the site.
struct Checked {
    files: Vec<(usize, String)>,
}

/// Checks every entry of `archive`: names inside the site, no links, sizes bounded. A single
/// folder holding everything (a zipped folder) is taken off the names.
fn check(archive: &mut zip::ZipArchive<File>) -> Result<Checked> {
    if archive.len() > ZIP_ENTRIES_MAX {
        bail!(
            "the zip has {} entries (at most {ZIP_ENTRIES_MAX})",
            archive.len()
        );
    }
    let mut files = Vec::new();
    let mut total = 0u64;
    for i in 0..archive.len() {
        let f = archive
            .by_index_raw(i)
            .with_context(|| format!("entry {i} of the zip is damaged"))?;
        let name = f.name().to_string();
        if f.enclosed_name().is_none() || name.starts_with('/') {
            bail!("{name:?} would land outside the site: nothing was stored");
        }
        if f.is_symlink() {
            bail!("{name:?} is a link: a site's zip holds files and folders only");
        }
        if f.is_dir() {
            continue;
        }
        let path = check_path(&name, false).with_context(|| format!("{name:?}"))?;
        total = total.saturating_add(f.size());
        if total > SITE_BYTES_MAX {
            bail!("the zip unpacks to more than {} MiB", SITE_BYTES_MAX >> 20);
        }
        files.push((i, path));
    }
    if files.is_empty() {
        bail!("the zip holds no files");
    }
    // A zipped folder: `mysite/index.html`, … → `index.html`, ….
    let first = files[0].1.split('/').next().unwrap_or("").to_string();
    let prefix = format!("{first}/");
    if files.iter().all(|(_, p)| p.starts_with(&prefix)) {
        for (_, p) in &mut files {
            *p = p[prefix.len()..].to_string();
        }
    }
    Ok(Checked { files })
}

/// Replaces the vault's `site/` with the zip at `zip_path`, in one snapshot; a zip that fails
/// its checks (or breaks while read) stores nothing.
pub fn store_zip(vault: &mut Vault, zip_path: &Path) -> Result<PutReport> {
    let file = File::open(zip_path).with_context(|| format!("{}", zip_path.display()))?;
    let mut archive = zip::ZipArchive::new(file).context("this is not a zip file")?;
    let checked = check(&mut archive)?;
    let mut batch = vault.batch()?;
    // The first site has nothing to replace.
    let _ = batch.remove(VAULT_DIR);
    for (i, path) in &checked.files {
        let entry = archive
            .by_index(*i)
            .with_context(|| format!("{path}: damaged in the zip"))?;
        batch
            .add_file(
                &format!("{VAULT_DIR}/{path}"),
                entry,
                0o644,
                SystemTime::now(),
                &mut NoProgress,
            )
            .with_context(|| format!("{path}: from the zip"))?;
    }
    Ok(batch.commit()?)
}

/// Writes the vault's latest `site/` to `DATA/site` (through `DATA/site.new`, so that a failure
/// leaves the served copy as it was); returns the number of files. No `site/`: no served copy.
pub fn export(vault: &Vault, data_dir: &Path) -> Result<u64> {
    let tree = vault.tree(None)?;
    let new = data_dir.join(format!("{SERVED_DIR}.new"));
    let served = data_dir.join(SERVED_DIR);
    let _ = fs::remove_dir_all(&new);
    let prefix = format!("{VAULT_DIR}/");
    let mut n = 0;
    for e in &tree.entries {
        let path = String::from_utf8_lossy(&e.path);
        let Some(rel) = path.strip_prefix(&prefix) else {
            continue;
        };
        let to = new.join(rel);
        match &e.kind {
            EntryKind::Dir => fs::create_dir_all(&to)?,
            EntryKind::File { .. } => {
                if let Some(parent) = to.parent() {
                    fs::create_dir_all(parent)?;
                }
                let mut r = vault.open_entry(e)?;
                let mut w = File::create(&to).with_context(|| format!("{}", to.display()))?;
                io::copy(&mut r, &mut w).with_context(|| format!("{}", to.display()))?;
                w.flush()?;
                n += 1;
            }
            EntryKind::Symlink { .. } => {}
        }
    }
    let old = data_dir.join(format!("{SERVED_DIR}.old"));
    let _ = fs::remove_dir_all(&old);
    if served.exists() {
        fs::rename(&served, &old)?;
    }
    if n > 0 {
        fs::rename(&new, &served)?;
    } else {
        let _ = fs::remove_dir_all(&new);
    }
    let _ = fs::remove_dir_all(&old);
    Ok(n)
}

/// The served file for a request's path (already percent-decoded): `/` and folders give their
/// `index.html`; `None` for anything not in the site, or a path that is not a clean one.
pub fn resolve(data_dir: &Path, path: &str) -> Option<PathBuf> {
    let root = data_dir.join(SERVED_DIR);
    let rel = check_path(path, true).ok()?;
    let mut p = if rel.is_empty() {
        root.clone()
    } else {
        root.join(&rel)
    };
    if p.is_dir() {
        p = p.join("index.html");
    }
    // No link may lead out (the copy is written by the web, but be sure).
    let meta = fs::symlink_metadata(&p).ok()?;
    meta.is_file().then_some(p)
}

/// The `Content-Type` for a served file, by its extension.
pub fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("pdf") => "application/pdf",
        Some("xml") => "application/xml",
        _ => "application/octet-stream",
    }
}

/// Reads `path` in pieces into `out` until it ends or the receiver goes away.
pub fn send_file(
    path: &Path,
    out: &tokio::sync::mpsc::Sender<io::Result<hyper::body::Bytes>>,
) -> io::Result<()> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; crate::files::DOWNLOAD_PIECE];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if out
            .blocking_send(Ok(hyper::body::Bytes::copy_from_slice(&buf[..n])))
            .is_err()
        {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_the_site_only() {
        let d = tempfile::tempdir().unwrap();
        let site = d.path().join(SERVED_DIR);
        fs::create_dir_all(site.join("blog")).unwrap();
        fs::write(site.join("index.html"), "home").unwrap();
        fs::write(site.join("blog/index.html"), "blog").unwrap();
        fs::write(d.path().join("settings.toml"), "secret").unwrap();
        assert_eq!(resolve(d.path(), "/"), Some(site.join("index.html")));
        assert_eq!(
            resolve(d.path(), "/blog/"),
            Some(site.join("blog/index.html"))
        );
        assert_eq!(
            resolve(d.path(), "/blog"),
            Some(site.join("blog/index.html"))
        );
        assert_eq!(resolve(d.path(), "/../settings.toml"), None);
        assert_eq!(resolve(d.path(), "/nothing.html"), None);
        assert_eq!(
            content_type(Path::new("a/b.CSS")),
            "text/css; charset=utf-8"
        );
    }
}
