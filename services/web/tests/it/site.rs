//! The owner's web site over real TLS on loopback, with a real vault over directories: a zip
//! becomes the site at `/` (kept in the vault's `site` folder, served from its copy), a zipped
//! folder too; a zip with a path leaving the site, a link, or one that is no zip at all is
//! refused whole and the site stays as it was; files put into `site/` change it.

use crate::common;

use crate::common::{set_up_with_vault, Server};
use std::io::Write;

/// A zip of `files` (stored, no compression).
fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, text) in files {
        w.start_file(*name, opts).unwrap();
        w.write_all(text.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

async fn put_zip(b: &mut common::Browser, csrf: &str, zip: Vec<u8>) -> common::Reply {
    b.send(
        "PUT",
        "/admin/site/zip",
        &[("x-csrf-token", csrf), ("content-type", "application/zip")],
        zip,
    )
    .await
}

#[tokio::test]
async fn a_zip_becomes_the_site_and_is_kept_in_the_vault() {
    let server = Server::unclaimed_with_vault();
    let mut b = set_up_with_vault(&server).await;
    // Until there is a site: the default page.
    let home = server.browser().get("/").await;
    assert!(
        home.body.contains("Nothing is published here yet"),
        "{}",
        home.body
    );
    let csrf = b.get("/admin/").await.csrf();
    let zip = zip_of(&[
        ("mysite/index.html", "<h1>Hello from attic</h1>"),
        ("mysite/css/style.css", "h1 { color: green }"),
        ("mysite/blog/index.html", "blog"),
    ]);
    let r = put_zip(&mut b, &csrf, zip).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["files"], 3);
    // Anyone, no login: the zipped folder's content is the site.
    let mut visitor = server.browser();
    let home = visitor.get("/").await;
    assert_eq!(home.body, "<h1>Hello from attic</h1>");
    assert_eq!(
        home.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let css = visitor.get("/css/style.css").await;
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(visitor.get("/blog/").await.body, "blog");
    assert_eq!(visitor.get("/nothing.html").await.status, 404);
    // Nothing of the device's own leaks through the site's paths.
    assert_eq!(visitor.get("/..%2Fsettings.toml").await.status, 404);
    assert_eq!(visitor.get("/%2e%2e/settings.toml").await.status, 404);
    // The admin stays the admin.
    assert_eq!(
        visitor.get("/admin/").await.header("location"),
        Some("/admin/login")
    );
    // In the vault, as any files: the Files page lists it.
    let listing = b.get("/admin/files?dir=site").await;
    assert!(
        listing.body.contains("index.html") && listing.body.contains("css/"),
        "{}",
        listing.body
    );
    // A file put into site/ changes the site.
    let r = b
        .send(
            "PUT",
            "/admin/files/put?path=site%2Fnews.html",
            &[("x-csrf-token", &csrf)],
            b"news".to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(visitor.get("/news.html").await.body, "news");
}

#[tokio::test]
async fn a_zip_leaving_the_site_or_no_zip_at_all_changes_nothing() {
    let server = Server::unclaimed_with_vault();
    let mut b = set_up_with_vault(&server).await;
    let csrf = b.get("/admin/").await.csrf();
    let r = put_zip(&mut b, &csrf, zip_of(&[("index.html", "first")])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let snapshot = r.json()["snapshot"].clone();
    for (zip, why) in [
        (
            zip_of(&[("index.html", "evil"), ("../../settings.toml", "x")]),
            "would land outside the site",
        ),
        (zip_of(&[("/etc/passwd", "x")]), "outside the site"),
        (b"this is not a zip at all".to_vec(), "not a zip file"),
        // A zip cut short: its directory at the end is missing.
        (
            zip_of(&[("index.html", "cut")])[..40].to_vec(),
            "not a zip file",
        ),
        (zip_of(&[]), "no files"),
    ] {
        let r = put_zip(&mut b, &csrf, zip).await;
        assert_eq!(r.status, 400, "{why}: {}", r.body);
        let e = r.json()["error"].as_str().unwrap().to_string();
        assert!(
            e.contains(why) && e.contains("the site is as it was"),
            "{e}"
        );
    }
    assert_eq!(server.browser().get("/").await.body, "first");
    // No snapshot was written by any refused zip.
    let r = b
        .send(
            "PUT",
            "/admin/files/put?path=x.txt",
            &[("x-csrf-token", &csrf)],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(r.json()["snapshot"], snapshot.as_u64().unwrap() + 1);
    assert!(!server.data.path().join("site-upload.zip").exists());
}
