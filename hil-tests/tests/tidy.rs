//! Tidy: rules over the repository's Rust sources that neither rustc nor clippy checks (after
//! rust-analyzer's `xtask/src/tidy.rs`). Every `.rs` file of the repository, `fuzz/` included
//! (it is outside the workspace, so the workspace lints miss it), except build output
//! (`target*/`) and `.git`:
//!
//! - starts with a `//!` line saying what the file is for;
//! - has no ignored tests and no tests that pass by panicking (they hide which panic happened);
//! - has no debugging macro left in;
//! - names a constant with its bound last (`FRAME_BYTES_MAX`, `FREE_MS_MIN`), never first.
//!
//! The needles are built by concatenation so that this file does not trip its own check.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

const IGNORE_ATTR: &str = concat!("#", "[ignore");
const SHOULD_PANIC_ATTR: &str = concat!("#", "[should_panic");
const DBG_CALL: &str = concat!("db", "g!(");
const BOUNDS_FIRST: [&str; 2] = [concat!("MA", "X_"), concat!("MI", "N_")];

/// The repository's top directory.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("hil-tests has a parent")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, sorted, skipping `.git` and build output (`target`,
/// `target-…`, `fuzz/target`).
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != ".git" && !name.starts_with("target") {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// The violations in one file's `text`, each as `path:line: what`.
fn check(path: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut report = |line: usize, what: &str| found.push(format!("{path}:{line}: {what}"));
    if !text.starts_with("//!") {
        report(
            1,
            "the file does not start with a `//!` line saying what it is for",
        );
    }
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        // A trailing comment may name what it likes.
        let code = code.split("//").next().unwrap_or("");
        if code.starts_with(IGNORE_ATTR) {
            report(n, "an ignored test: make it pass, or delete it");
        }
        if code.starts_with(SHOULD_PANIC_ATTR) {
            report(
                n,
                "a test that passes on any panic: catch_unwind and check the message",
            );
        }
        if code.contains(DBG_CALL) {
            report(n, "a debugging macro left in");
        }
        if let Some(name) = const_name(code) {
            if BOUNDS_FIRST.iter().any(|b| name.starts_with(b)) {
                let what =
                    format!("constant `{name}` puts its bound first (bound last: `X_BYTES_MAX`)");
                report(n, &what);
            }
        }
    }
    found
}

/// The name a `const` or `static` item on this line declares, if any.
fn const_name(code: &str) -> Option<&str> {
    let mut words = code.split_whitespace();
    while let Some(w) = words.next() {
        if w == "const" || w == "static" {
            let mut name = words.next()?;
            if name == "mut" {
                name = words.next()?;
            }
            let end = name
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(name.len());
            return Some(&name[..end]);
        }
    }
    None
}

#[test]
fn tidy() {
    let root = repo_root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(
        files.len() > 50,
        "only {} .rs files under {}",
        files.len(),
        root.display()
    );
    let mut found = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let rel = file.strip_prefix(&root).unwrap_or(file);
        found.extend(check(&rel.display().to_string(), &text));
    }
    let mut msg = String::new();
    for f in &found {
        writeln!(msg, "{f}").unwrap();
    }
    assert!(found.is_empty(), "tidy: {} problems:\n{msg}", found.len());
}

/// Each rule reports its violation, with the line, so the test above can fail.
#[test]
fn tidy_reports_each_rule() {
    let text = [
        "use std::fmt;",
        concat!("#", "[ignore]"),
        concat!("    #", "[should_panic(expected = \"boom\")]"),
        concat!("    let x = db", "g!(1);"),
        concat!("pub const MA", "X_FRAME: usize = 1;"),
        concat!("pub(crate) static mut MI", "N_FREE_MS: u64 = 2;"),
        concat!("    const MA", "X_DEPTH: usize = 3; // in an impl"),
    ]
    .join("\n");
    let found = check("x.rs", &text);
    let at = |line: usize, what: &str| {
        assert!(
            found
                .iter()
                .any(|f| f.starts_with(&format!("x.rs:{line}: ")) && f.contains(what)),
            "no report of {what:?} at line {line} in {found:#?}"
        );
    };
    at(1, "does not start with a `//!`");
    at(2, "ignored test");
    at(3, "passes on any panic");
    at(4, "debugging macro");
    at(5, concat!("`MA", "X_FRAME`"));
    at(6, concat!("`MI", "N_FREE_MS`"));
    at(7, concat!("`MA", "X_DEPTH`"));
    assert_eq!(found.len(), 7, "{found:#?}");
}

/// What the rules allow: names with the bound last, and the needles in comments and docs.
#[test]
fn tidy_passes_clean_code() {
    let text = [
        "//! A clean file.",
        "",
        concat!(
            "/// Unlike `#",
            "[should_panic]`, this names the panic; see `db",
            "g!(`."
        ),
        "pub const FRAME_BYTES_MAX: usize = 1;",
        "static mut FREE_MS_MIN: u64 = 2;",
        "const fn clamp(x: u32) -> u32 { x.min(u32::MAX) }",
        "let p: *const u8 = std::ptr::null();",
        concat!("// #", "[ignore] in a comment"),
        concat!("let n = 1; // db", "g!(n) was here"),
    ]
    .join("\n");
    assert_eq!(check("y.rs", &text), Vec::<String>::new());
}
