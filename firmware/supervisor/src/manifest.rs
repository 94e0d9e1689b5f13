//! Service manifests (`services/NAME.toml`): parsing and validation.
//!
//! A manifest that does not parse or validate yields one [`ManifestError`] naming the file, the
//! line and the field at fault; loading a directory keeps going, so one bad file never stops the
//! other services.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Largest manifest file read; a manifest is a dozen lines, so anything bigger is a mistake.
pub const MANIFEST_BYTES_MAX: u64 = 64 * 1024;
/// Most manifests loaded from one directory (bounds the supervisor's tables).
pub const SERVICES_MAX: usize = 64;
/// Grace between SIGTERM and SIGKILL when a manifest does not set `stop_grace_ms`.
pub const STOP_GRACE_MS_DEFAULT: u64 = 5000;
/// How long a service may take to become ready when a manifest does not set `ready_timeout_ms`.
pub const READY_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// The control requests a service that is not root may be allowed (`control = [...]`): the
/// supervisor's read-only and service commands, the board's (answered by PID 1's extension)
/// and the update's (answered by the installer PID 1 starts: `Handoff`).
pub const CONTROL_COMMANDS: &[&str] = &[
    "status",
    "start",
    "stop",
    "restart",
    "logs",
    "poweroff",
    "reboot",
    "board",
    "claim",
    "refuse",
    "claimed",
    "say",
    "pair",
    "reset",
    "update",
    "update-status",
];
/// Most listening sockets one service may be handed.
pub const LISTEN_MAX: usize = 4;
/// Most supplementary groups a service may join (`groups`).
pub const GROUPS_MAX: usize = 8;

/// How the supervisor learns that a service is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Ready as soon as it runs.
    None,
    /// Ready once it writes a line to the inherited fd named by `$NOTIFY_FD`.
    Notify,
    /// Ready once `127.0.0.1:PORT` accepts a TCP connection.
    Tcp(u16),
}

/// When a service that exited on its own is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// After every exit.
    Always,
    /// After an exit with a non-zero code or by a signal.
    OnFailure,
    /// Never: the service runs once.
    Never,
}

/// Resource limits applied to a service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// cgroup v2 `memory.max` in bytes.
    pub memory_bytes: Option<u64>,
    /// cgroup v2 `pids.max`.
    pub pids: Option<u64>,
    /// `RLIMIT_NOFILE` (soft and hard).
    pub nofile: Option<u64>,
}

/// One validated service manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Unique name, equal to the file name without `.toml`.
    pub name: String,
    /// argv; `exec[0]` is a path or a name looked up in `PATH`.
    pub exec: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// User to run as (created if missing); `None` keeps the supervisor's user.
    pub user: Option<String>,
    /// Group to run as (created if missing); defaults to a group named like the user.
    pub group: Option<String>,
    /// Supplementary groups (created if missing): how one service reaches another's socket
    /// (the web joins `node` to talk to the storage node).
    pub groups: Vec<String>,
    /// Whether `/run/NAME` is made for the service at boot (mode 0750, its user and group):
    /// where it puts sockets that a group may reach, outside its private workdir.
    pub runtime_dir: bool,
    /// Files the service cannot run without that only some images carry (the system layer's
    /// programs): when one is missing the service is not started, and the log says why.
    pub requires: Vec<PathBuf>,
    /// Working directory; `None` keeps `/`.
    pub workdir: Option<PathBuf>,
    /// Whether the service's group may read its workdir (`cairn init` makes it 0750, not
    /// 0700): services in that group read its data (the web backs Prosody's up).
    pub workdir_group_read: bool,
    /// Services that must be ready before this one starts.
    pub depends_on: Vec<String>,
    /// How readiness is signalled.
    pub ready: Readiness,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// SIGTERM → this long → SIGKILL of the process group.
    pub stop_grace_ms: u64,
    /// Starting longer than this counts as a failure.
    pub ready_timeout_ms: u64,
    /// Resource limits.
    pub limits: Limits,
    /// Sockets the supervisor binds for the service (`listen = ["tcp:443", "udp:127.0.0.1:53"]`)
    /// and hands it as inherited descriptors, in this order, so it needs no privilege to serve a
    /// low port.
    pub listen: Vec<Listen>,
    /// Control requests the service's user may make over the control socket (`control`).
    pub control: Vec<String>,
}

/// A socket the supervisor binds for a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `tcp:PORT`: a TCP listener on every address.
    Tcp(u16),
    /// `udp:127.0.0.1:PORT`: a UDP socket on loopback only (a service for this device alone,
    /// such as its name resolver).
    LoopbackUdp(u16),
}

impl Listen {
    fn parse(s: &str) -> Option<Listen> {
        let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p != 0);
        if let Some(p) = s.strip_prefix("tcp:") {
            port(p).map(Listen::Tcp)
        } else {
            s.strip_prefix("udp:127.0.0.1:")
                .and_then(port)
                .map(Listen::LoopbackUdp)
        }
    }
}

/// A manifest that cannot be used, with the place at fault; displays as one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// 1-based line of the fault (1 when the whole file is at fault).
    pub line: usize,
    /// The field at fault (`-` for a syntax error outside any field).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: field `{}`: {}",
            self.file.display(),
            self.line,
            self.field,
            self.message
        )
    }
}

impl std::error::Error for ManifestError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    exec: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    user: Option<String>,
    group: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    runtime_dir: bool,
    #[serde(default)]
    requires: Vec<PathBuf>,
    workdir: Option<PathBuf>,
    #[serde(default)]
    workdir_group_read: bool,
    #[serde(default)]
    depends_on: Vec<String>,
    ready: Option<String>,
    restart: Option<RestartPolicy>,
    stop_grace_ms: Option<u64>,
    ready_timeout_ms: Option<u64>,
    limits: Option<RawLimits>,
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    control: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<String>,
    pids: Option<u64>,
    nofile: Option<u64>,
}

/// Parses one manifest's text; `file` names it in errors and its stem must equal `name`.
pub fn parse(file: &Path, text: &str) -> Result<Manifest, ManifestError> {
    let raw: RawManifest = toml::from_str(text).map_err(|e| toml_error(file, text, &e))?;
    let fail = |field: &str, message: String| ManifestError {
        file: file.to_path_buf(),
        line: line_of_key(text, field),
        field: field.to_string(),
        message,
    };
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if !valid_name(&raw.name) {
        return Err(fail(
            "name",
            format!(
                "{:?} is not a service name (letters, digits, '-', '_'; at most 32)",
                raw.name
            ),
        ));
    }
    if raw.name != stem {
        return Err(fail(
            "name",
            format!("{:?} differs from the file name {stem:?}", raw.name),
        ));
    }
    if raw.exec.is_empty() || raw.exec[0].is_empty() {
        return Err(fail("exec", "must name a program".into()));
    }
    if raw.exec.iter().any(|a| a.contains('\0')) {
        return Err(fail("exec", "contains a NUL byte".into()));
    }
    for (k, v) in &raw.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(fail("env", format!("{k:?} is not a valid variable")));
        }
    }
    for (field, value) in [("user", &raw.user), ("group", &raw.group)] {
        if let Some(v) = value {
            if !valid_account(v) {
                return Err(fail(
                    field,
                    format!("{v:?} is not a valid name (lowercase letters, digits, '-', '_')"),
                ));
            }
        }
    }
    if raw.groups.len() > GROUPS_MAX {
        return Err(fail("groups", format!("at most {GROUPS_MAX} groups")));
    }
    for (i, g) in raw.groups.iter().enumerate() {
        if !valid_account(g) || raw.groups[..i].contains(g) {
            return Err(fail(
                "groups",
                format!("{g:?} is not a valid group name (each once; lowercase letters, digits, '-', '_')"),
            ));
        }
    }
    if (!raw.groups.is_empty() || raw.runtime_dir)
        && raw.user.as_deref().is_none_or(|u| u == "root")
    {
        let field = if raw.runtime_dir {
            "runtime_dir"
        } else {
            "groups"
        };
        return Err(fail(
            field,
            "only a service with its own user needs it (root reaches everything)".into(),
        ));
    }
    if let Some(r) = raw.requires.iter().find(|r| !r.is_absolute()) {
        return Err(fail(
            "requires",
            format!("{} is not an absolute path", r.display()),
        ));
    }
    if raw.workdir_group_read && raw.workdir.is_none() {
        return Err(fail(
            "workdir_group_read",
            "there is no workdir to share".into(),
        ));
    }
    if let Some(w) = &raw.workdir {
        if !w.is_absolute() {
            return Err(fail(
                "workdir",
                format!("{} is not an absolute path", w.display()),
            ));
        }
    }
    for d in &raw.depends_on {
        if d == &raw.name {
            return Err(fail(
                "depends_on",
                "a service cannot depend on itself".into(),
            ));
        }
        if !valid_name(d) {
            return Err(fail("depends_on", format!("{d:?} is not a service name")));
        }
    }
    let ready = match raw.ready.as_deref() {
        None | Some("none") => Readiness::None,
        Some("notify") => Readiness::Notify,
        Some(s) => match s.strip_prefix("tcp:").map(str::parse::<u16>) {
            Some(Ok(port)) if port != 0 => Readiness::Tcp(port),
            _ => {
                return Err(fail(
                    "ready",
                    format!("{s:?} is not \"notify\", \"tcp:PORT\" or \"none\""),
                ))
            }
        },
    };
    if raw.listen.len() > LISTEN_MAX {
        return Err(fail(
            "listen",
            format!("at most {LISTEN_MAX} sockets per service"),
        ));
    }
    let mut listen = Vec::with_capacity(raw.listen.len());
    for l in &raw.listen {
        match Listen::parse(l) {
            Some(socket) if !listen.contains(&socket) => listen.push(socket),
            _ => {
                return Err(fail(
                    "listen",
                    format!(
                        "{l:?} is not \"tcp:PORT\" or \"udp:127.0.0.1:PORT\" (each socket once)"
                    ),
                ))
            }
        }
    }
    for c in &raw.control {
        if !CONTROL_COMMANDS.contains(&c.as_str()) {
            return Err(fail(
                "control",
                format!(
                    "{c:?} is not a request a service may make (one of {})",
                    CONTROL_COMMANDS.join(", ")
                ),
            ));
        }
    }
    if !raw.control.is_empty() && raw.user.as_deref().is_none_or(|u| u == "root") {
        return Err(fail(
            "control",
            "only a service with its own user needs it (root may make every request)".into(),
        ));
    }
    let mut limits = Limits::default();
    if let Some(l) = raw.limits {
        if let Some(m) = l.memory {
            limits.memory_bytes = Some(
                parse_size(&m)
                    .ok_or_else(|| fail("memory", format!("{m:?} is not a size like \"64M\"")))?,
            );
        }
        for (field, v) in [("pids", l.pids), ("nofile", l.nofile)] {
            if v == Some(0) {
                return Err(fail(field, "must be at least 1".into()));
            }
        }
        limits.pids = l.pids;
        limits.nofile = l.nofile;
    }
    Ok(Manifest {
        name: raw.name,
        exec: raw.exec,
        env: raw.env,
        user: raw.user,
        group: raw.group,
        groups: raw.groups,
        runtime_dir: raw.runtime_dir,
        requires: raw.requires,
        workdir: raw.workdir,
        workdir_group_read: raw.workdir_group_read,
        depends_on: raw.depends_on,
        ready,
        restart: raw.restart.unwrap_or(RestartPolicy::Always),
        stop_grace_ms: raw.stop_grace_ms.unwrap_or(STOP_GRACE_MS_DEFAULT),
        ready_timeout_ms: raw.ready_timeout_ms.unwrap_or(READY_TIMEOUT_MS_DEFAULT),
        limits,
        listen,
        control: raw.control,
    })
}

impl Manifest {
    /// The first file in `requires` that is not there: the service cannot run in this image.
    pub fn missing_requirement(&self) -> Option<&Path> {
        self.requires
            .iter()
            .find(|p| !p.exists())
            .map(PathBuf::as_path)
    }
}

/// Loads every `*.toml` in `dir`, in name order; bad files become errors, the rest still load.
pub fn load_dir(dir: &Path) -> (Vec<Manifest>, Vec<ManifestError>) {
    let whole = |message: String| ManifestError {
        file: dir.to_path_buf(),
        line: 1,
        field: "-".into(),
        message,
    };
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), Vec::new()),
        Err(e) => return (Vec::new(), vec![whole(format!("cannot read: {e}"))]),
    };
    files.sort();
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        if manifests.len() >= SERVICES_MAX {
            errors.push(ManifestError {
                file,
                line: 1,
                field: "-".into(),
                message: format!("more than {SERVICES_MAX} services; ignored"),
            });
            continue;
        }
        match read_bounded(&file) {
            Ok(text) => match parse(&file, &text) {
                Ok(m) => manifests.push(m),
                Err(e) => errors.push(e),
            },
            Err(message) => errors.push(ManifestError {
                file,
                line: 1,
                field: "-".into(),
                message,
            }),
        }
    }
    (manifests, errors)
}

fn read_bounded(file: &Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(file).map_err(|e| format!("cannot read: {e}"))?;
    let mut text = String::new();
    f.take(MANIFEST_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > MANIFEST_BYTES_MAX {
        return Err(format!("larger than {MANIFEST_BYTES_MAX} bytes"));
    }
    Ok(text)
}

/// Turns a TOML/serde error into file, line and field.
fn toml_error(file: &Path, text: &str, e: &toml::de::Error) -> ManifestError {
    let message = e.message().trim().replace('\n', " ");
    let (line, key_on_line) = match e.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            (line, key_at_line(text, line))
        }
        None => (1, None),
    };
    // serde names the field in "unknown field `x`" / "missing field `x`"; prefer that.
    let named = message
        .split('`')
        .nth(1)
        .filter(|_| message.starts_with("unknown field") || message.starts_with("missing field"))
        .map(str::to_string);
    let field = named.or(key_on_line).unwrap_or_else(|| "-".into());
    let line = if message.starts_with("missing field") {
        1
    } else {
        line
    };
    ManifestError {
        file: file.to_path_buf(),
        line,
        field,
        message,
    }
}

/// The key assigned on 1-based `line`, if that line is `key = …`.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let (key, _) = l.split_once('=')?;
    let key = key.trim().trim_matches('"');
    let key = key.rsplit('.').next().unwrap_or(key);
    (!key.is_empty() && !key.contains(char::is_whitespace)).then(|| key.to_string())
}

/// The first line assigning `key` (at top level, in a table, or dotted); 1 if none.
fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("limits.").unwrap_or(l);
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
                || l.contains(&format!("{{ {key} ="))
                || l.contains(&format!(", {key} ="))
        })
        .map_or(1, |i| i + 1)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_account(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.as_bytes()[0] != b'-'
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Fuzz body: any bytes give a manifest or a one-line error naming the file, never a panic.
pub fn fuzz_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = parse(Path::new("/fuzz/a.toml"), &text) {
        let line = e.to_string();
        assert!(
            !line.contains('\n') && line.starts_with("/fuzz/a.toml:"),
            "{line}"
        );
    }
}

/// Parses `"64M"`, `"512K"`, `"1G"` or a plain byte count (binary units).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(mult).filter(|&b| b > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, text: &str) -> Result<Manifest, ManifestError> {
        parse(Path::new(&format!("/s/{name}.toml")), text)
    }

    #[test]
    fn full_manifest_parses() {
        let m = p(
            "web",
            r#"
name = "web"
exec = ["/bin/cairn", "web"]
env = { RUST_LOG = "info" }
user = "web"
group = "www"
workdir = "/data/web"
depends_on = ["node"]
ready = "tcp:443"
restart = "on-failure"
stop_grace_ms = 2000
ready_timeout_ms = 900
[limits]
memory = "64M"
pids = 64
nofile = 1024
"#,
        )
        .unwrap();
        assert_eq!(m.exec, vec!["/bin/cairn", "web"]);
        assert_eq!(m.env["RUST_LOG"], "info");
        assert_eq!(m.user.as_deref(), Some("web"));
        assert_eq!(m.group.as_deref(), Some("www"));
        assert_eq!(m.workdir, Some(PathBuf::from("/data/web")));
        assert_eq!(m.depends_on, vec!["node"]);
        assert_eq!(m.ready, Readiness::Tcp(443));
        assert_eq!(m.restart, RestartPolicy::OnFailure);
        assert_eq!(m.stop_grace_ms, 2000);
        assert_eq!(m.ready_timeout_ms, 900);
        assert_eq!(m.limits.memory_bytes, Some(64 << 20));
        assert_eq!(m.limits.pids, Some(64));
        assert_eq!(m.limits.nofile, Some(1024));
    }

    #[test]
    fn groups_and_runtime_dir_parse_and_are_checked() {
        let m = p(
            "web",
            "name = \"web\"\nexec = [\"x\"]\nuser = \"web\"\ngroups = [\"node\", \"www\"]\nruntime_dir = true\n",
        )
        .unwrap();
        assert_eq!(m.groups, vec!["node", "www"]);
        assert!(m.runtime_dir);
        let e = p(
            "web",
            "name = \"web\"\nexec = [\"x\"]\nuser = \"web\"\ngroups = [\"node\", \"node\"]\n",
        )
        .unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (4, "groups"), "{e}");
        let e = p(
            "web",
            "name = \"web\"\nexec = [\"x\"]\ngroups = [\"Node\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "groups", "{e}");
        // Root needs neither: refused rather than silently meaningless.
        let e = p(
            "web",
            "name = \"web\"\nexec = [\"x\"]\ngroups = [\"node\"]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("own user"), "{e}");
        let e = p(
            "web",
            "name = \"web\"\nexec = [\"x\"]\nruntime_dir = true\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "runtime_dir", "{e}");
    }

    #[test]
    fn defaults_apply() {
        let m = p("a", "name = \"a\"\nexec = [\"x\"]\n").unwrap();
        assert_eq!(m.ready, Readiness::None);
        assert_eq!(m.restart, RestartPolicy::Always);
        assert_eq!(m.stop_grace_ms, STOP_GRACE_MS_DEFAULT);
        assert_eq!(m.user, None);
        assert_eq!(m.limits, Limits::default());
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let e = p("a", "name = \"a\"\nexec = [\"x\"]\nrestrat = \"always\"\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.field, "restrat");
        let line = e.to_string();
        assert!(
            line.starts_with("/s/a.toml:3: field `restrat`: unknown field"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn unknown_limit_field_is_an_error() {
        let e = p(
            "a",
            "name = \"a\"\nexec = [\"x\"]\n[limits]\nmemroy = \"1M\"\n",
        )
        .unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (4, "memroy"));
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = p(
            "a",
            "name = \"a\"\nexec = [\"x\"]\nstop_grace_ms = \"soon\"\n",
        )
        .unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (3, "stop_grace_ms"));
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            ("ready = \"tcp:http\"", "ready", 3),
            ("ready = \"socket\"", "ready", 3),
            ("restart = \"sometimes\"", "restart", 3),
            ("user = \"Root!\"", "user", 3),
            ("workdir = \"data\"", "workdir", 3),
            ("workdir_group_read = true", "workdir_group_read", 3),
            ("depends_on = [\"a\"]", "depends_on", 3),
            ("[limits]\nmemory = \"lots\"", "memory", 4),
            ("[limits]\npids = 0", "pids", 4),
            ("listen = [\"udp:53\"]", "listen", 3),
            ("listen = [\"udp:0.0.0.0:53\"]", "listen", 3),
            ("listen = [\"tcp:443\", \"tcp:443\"]", "listen", 3),
        ];
        for (extra, field, line) in cases {
            let text = format!("name = \"a\"\nexec = [\"x\"]\n{extra}\n");
            let e = p("a", &text).unwrap_err();
            assert_eq!((e.field.as_str(), e.line), (field, line), "{extra}: {e}");
        }
    }

    #[test]
    fn listening_sockets_keep_their_order_and_udp_stays_on_loopback() {
        let m = p(
            "a",
            "name = \"a\"\nexec = [\"x\"]\nlisten = [\"udp:127.0.0.1:53\", \"tcp:443\"]\n",
        )
        .unwrap();
        assert_eq!(m.listen, [Listen::LoopbackUdp(53), Listen::Tcp(443)]);
    }

    #[test]
    fn missing_and_mismatched_fields() {
        let e = p("a", "name = \"a\"\n").unwrap_err();
        assert_eq!(e.field, "exec");
        let e = p("a", "name = \"b\"\nexec = [\"x\"]\n").unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("name", 1));
        let e = p("a", "name = \"a\"\nexec = []\n").unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("exec", 2));
    }

    #[test]
    fn syntax_error_gives_a_line() {
        let e = p("a", "name = \"a\"\nexec = [\"x\"\n").unwrap_err();
        assert!(e.line >= 2, "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("99999999999999G"), None);
    }

    #[test]
    fn load_dir_keeps_good_manifests_beside_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("good.toml"),
            "name = \"good\"\nexec = [\"x\"]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("bad.toml"),
            "name = \"bad\"\nexec = [\"x\"]\nfoo = 1\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let (ok, errs) = load_dir(dir.path());
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].name, "good");
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].to_string().contains("bad.toml:3: field `foo`"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn a_service_whose_required_file_is_missing_says_which() {
        let dir = tempfile::tempdir().unwrap();
        let there = dir.path().join("lua5.4");
        std::fs::write(&there, "").unwrap();
        let text = format!(
            "name = \"chat\"\nexec = [\"x\"]\nrequires = [{:?}, \"/usr/bin/nowhere\"]\n",
            there.display().to_string()
        );
        let m = parse(Path::new("chat.toml"), &text).unwrap();
        assert_eq!(m.missing_requirement(), Some(Path::new("/usr/bin/nowhere")));
        let m = parse(
            Path::new("chat.toml"),
            &format!(
                "name = \"chat\"\nexec = [\"x\"]\nrequires = [{:?}]\n",
                there.display().to_string()
            ),
        )
        .unwrap();
        assert_eq!(m.missing_requirement(), None);
        let e = parse(
            Path::new("chat.toml"),
            "name = \"chat\"\nexec = [\"x\"]\nrequires = [\"usr/bin/lua\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("requires") && e.contains("not an absolute path"),
            "{e}"
        );
    }

    proptest::proptest! {
        /// The fuzz target's body on random bytes.
        #[test]
        fn fuzz_body_on_random_bytes(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            fuzz_parse(&data);
        }

        /// Near-valid manifests with a random field value.
        #[test]
        fn random_field_values(key in "[a-z_]{1,12}", value in "[ -~]{0,20}") {
            fuzz_parse(format!("name = \"a\"\nexec = [\"x\"]\n{key} = {value}\n").as_bytes());
        }

        /// Any text gives a manifest or a one-line error, never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,200}") {
            if let Err(e) = p("a", &text) {
                proptest::prop_assert!(!e.to_string().contains('\n'));
            }
        }
    }
}
