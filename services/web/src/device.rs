//! What the web asks of PID 1, behind the [`Device`] trait: the services' status, the board's
//! state (claimed, health, the pairing window), the claim, and the owner's commands. The real
//! implementation, [`ControlSocket`], speaks PID 1's control protocol: one JSON request line,
//! one JSON answer line, and for `logs` the log's text after it until PID 1 closes
//! (`firmware/supervisor/src/proto.rs`).
//!
//! `update` streams a bundle after its request line and half-closes; the installer PID 1 starts
//! for it answers once the bundle is installed (or refused).
//!
//! The calls block (a Unix socket, a short answer): the server makes them on its blocking pool.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One service as `status` reports it (the fields the web shows; others are ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Its manifest's name.
    pub name: String,
    /// `waiting`, `backoff`, `starting`, `ready`, `stopping`, `down`, `exited` or `failed`.
    pub state: String,
    /// Its process, while one runs.
    #[serde(default)]
    pub pid: Option<u32>,
    /// How long the process has run.
    #[serde(default)]
    pub uptime_ms: Option<u64>,
    /// Restarts since boot.
    #[serde(default)]
    pub restarts: u32,
    /// Why it is in its state (e.g. why it failed), when PID 1 says.
    #[serde(default)]
    pub reason: Option<String>,
    /// Its cgroup's memory, when known.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
}

/// An open pairing window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Its number since boot (1, 2, …).
    pub id: u64,
    /// How long it stays open.
    pub remaining_ms: u64,
}

/// The board's state, as `board` answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Board {
    /// Whether setup has finished (`claimed` was sent).
    pub claimed: bool,
    /// The device's name once claimed.
    #[serde(default)]
    pub name: Option<String>,
    /// `booting`, `setup-needed`, `healthy`, `degraded` or `error` (what the LEDs show).
    pub health: String,
    /// The pairing window, while one is open.
    #[serde(default)]
    pub window: Option<Window>,
    /// The number of the last window opened since boot (0: none yet).
    #[serde(default)]
    pub last_window: u64,
    /// The storage node's pairing in the window.
    #[serde(default)]
    pub pairing: Pairing,
}

/// How pairing goes, as `board` tells it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pairing {
    /// An attempt is under way.
    #[serde(default)]
    pub busy: bool,
    /// How the last attempt since boot ended (`paired with …`, `refused: …`, …).
    #[serde(default)]
    pub last: Option<String>,
}

/// The system slots and the boot state, as `cairn update status --json` tells them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// The slot this system runs from (`a` or `b`).
    pub running: String,
    /// The slot known good: the one booted when a trial fails.
    pub active: String,
    /// The slot on trial, if one is.
    #[serde(default)]
    pub trying: Option<String>,
    /// Boots the slot on trial has left.
    #[serde(default)]
    pub tries_left: u32,
    /// How the last update ended (`none`, `committed`, `fallback`, …).
    pub last: String,
    /// What each slot holds, when recorded.
    pub slots: Slots,
}

/// Both slots' contents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slots {
    /// Slot A's.
    #[serde(default)]
    pub a: Option<SlotVersion>,
    /// Slot B's.
    #[serde(default)]
    pub b: Option<SlotVersion>,
}

/// A slot's system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotVersion {
    /// Its version (`0.1.0`).
    pub version: String,
    /// Its build number (updates go up).
    pub build: u64,
}

impl UpdateStatus {
    /// What slot `name` holds, if recorded.
    pub fn slot(&self, name: &str) -> Option<&SlotVersion> {
        match name {
            "a" => self.slots.a.as_ref(),
            "b" => self.slots.b.as_ref(),
            _ => None,
        }
    }
}

/// PID 1, as the web sees it. Every call either did what it says or is an error with PID 1's
/// reason.
pub trait Device: Send + Sync {
    /// Every service's state.
    fn status(&self) -> Result<Vec<Service>>;
    /// The board's state.
    fn board(&self) -> Result<Board>;
    /// Completes a claim in the open pairing window `window` (an error if it is not open).
    fn claim(&self, window: u64) -> Result<()>;
    /// The claim in pairing window `window` was refused (more than one browser waited): PID 1
    /// closes the window, so that the press the page asks for next opens a new one.
    fn refuse(&self, window: u64) -> Result<()>;
    /// Setup is finished: the device is `name` (hostname, `NAME.local`, LEDs to ready).
    fn claimed(&self, name: &str) -> Result<()>;
    /// Restarts one service.
    fn restart(&self, service: &str) -> Result<()>;
    /// One service's log as PID 1 keeps it, oldest line first; a line in brackets says where
    /// older lines were dropped or the text was cut.
    fn logs(&self, service: &str) -> Result<String>;
    /// Stops every service and reboots.
    fn reboot(&self) -> Result<()>;
    /// Stops every service and powers off.
    fn poweroff(&self) -> Result<()>;
    /// Prints `cairn: web: TEXT` on the console.
    fn say(&self, text: &str) -> Result<()>;
    /// Once claimed: opens the pairing window as a press of the button does; PID 1's line.
    fn pair(&self) -> Result<String>;
    /// Once claimed: the next press of the button (within a minute) wipes the device.
    fn reset(&self) -> Result<String>;
    /// Both system slots and the boot state.
    fn update_status(&self) -> Result<UpdateStatus>;
    /// Streams a signed bundle, as `bundle` gives it, to the installer of `cairn update
    /// apply`, which writes it into the slot that is not running and marks it to be tried at
    /// the next restart; its line. An error is the installer's one-line refusal (nothing was
    /// written to the running slot).
    fn update(&self, bundle: &mut dyn Read) -> Result<String>;
}

/// A request line. Fields match `proto::Request`; `text` is the `say` command's.
#[derive(Debug, Default, Serialize)]
struct Request<'a> {
    cmd: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

/// An answer line.
#[derive(Debug, Deserialize)]
struct Response {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    services: Option<Vec<Service>>,
    #[serde(default)]
    data: Option<serde_json::Value>,
    /// For `logs`: lines PID 1 has dropped from the service's ring so far.
    #[serde(default)]
    dropped: Option<u64>,
}

/// Whether `name` can be a service's name, by the rule of PID 1's manifests (ASCII letters,
/// digits, `-` and `_`, 1 to [`SERVICE_NAME_BYTES_MAX`]). A name from a browser is checked with
/// this before it goes to PID 1, so that nothing else (a path, a very long string) ever does.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= SERVICE_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// PID 1's control socket (`/run/cairn/control.sock` on the device).
#[derive(Clone, Debug)]
pub struct ControlSocket(pub PathBuf);

impl ControlSocket {
    /// Sends one request, returns the answer when `ok`, PID 1's error otherwise.
    fn call(&self, req: &Request<'_>) -> Result<Response> {
        self.exchange(req).map(|(resp, _)| resp)
    }

    /// [`ControlSocket::call`], also giving back the connection, for what PID 1 sends after the
    /// answer line (the reader may already hold the start of it).
    fn exchange(&self, req: &Request<'_>) -> Result<(Response, BufReader<UnixStream>)> {
        let path = &self.0;
        let mut stream = UnixStream::connect(path)
            .with_context(|| format!("{}: cannot connect to PID 1", path.display()))?;
        stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .with_context(|| format!("{}: sending `{}`", path.display(), req.cmd))?;
        let mut head = Vec::new();
        let mut reader = BufReader::new(stream);
        (&mut reader)
            .take(ANSWER_BYTES_MAX as u64)
            .read_until(b'\n', &mut head)
            .with_context(|| format!("{}: reading the answer to `{}`", path.display(), req.cmd))?;
        let resp: Response = serde_json::from_slice(&head).with_context(|| {
            format!(
                "{}: malformed answer to `{}`: {:?}",
                path.display(),
                req.cmd,
                String::from_utf8_lossy(&head[..head.len().min(200)])
            )
        })?;
        if !resp.ok {
            bail!(
                "{}",
                resp.error
                    .unwrap_or_else(|| format!("`{}` failed", req.cmd))
            );
        }
        Ok((resp, reader))
    }

    fn command(&self, req: Request<'_>) -> Result<()> {
        self.call(&req).map(drop)
    }
}

impl Device for ControlSocket {
    fn status(&self) -> Result<Vec<Service>> {
        let resp = self.call(&Request {
            cmd: "status",
            ..Request::default()
        })?;
        Ok(resp.services.unwrap_or_default())
    }

    fn board(&self) -> Result<Board> {
        let resp = self.call(&Request {
            cmd: "board",
            ..Request::default()
        })?;
        let data = resp.data.context("`board`: the answer has no data")?;
        serde_json::from_value(data).context("`board`: malformed data")
    }

    fn claim(&self, window: u64) -> Result<()> {
        self.command(Request {
            cmd: "claim",
            window: Some(window),
            ..Request::default()
        })
    }

    fn refuse(&self, window: u64) -> Result<()> {
        self.command(Request {
            cmd: "refuse",
            window: Some(window),
            ..Request::default()
        })
    }

    fn claimed(&self, name: &str) -> Result<()> {
        self.command(Request {
            cmd: "claimed",
            name: Some(name),
            ..Request::default()
        })
    }

    fn restart(&self, service: &str) -> Result<()> {
        self.command(Request {
            cmd: "restart",
            service: Some(service),
            ..Request::default()
        })
    }

    fn logs(&self, service: &str) -> Result<String> {
        let (resp, mut reader) = self.exchange(&Request {
            cmd: "logs",
            service: Some(service),
            ..Request::default()
        })?;
        let (text, cut) =
            read_to_close(&mut reader, LOG_BYTES_MAX, Instant::now() + LOG_TIMEOUT)
                .with_context(|| format!("{}: reading the log of {service}", self.0.display()))?;
        let mut log = String::with_capacity(text.len() + 128);
        // As `cairn ctl logs` says it.
        if let Some(n) = resp.dropped.filter(|&n| n > 0) {
            log.push_str(&format!("[{n} earlier lines dropped]\n"));
        }
        // PID 1 keeps text; a cut may still split a character.
        log.push_str(&String::from_utf8_lossy(&text));
        if cut {
            if !log.ends_with('\n') {
                log.push('\n');
            }
            log.push_str(&format!(
                "[cut here: the log is longer than {} KiB]\n",
                LOG_BYTES_MAX / 1024
            ));
        }
        Ok(log)
    }

    fn reboot(&self) -> Result<()> {
        self.command(Request {
            cmd: "reboot",
            ..Request::default()
        })
    }

    fn poweroff(&self) -> Result<()> {
        self.command(Request {
            cmd: "poweroff",
            ..Request::default()
        })
    }

    fn say(&self, text: &str) -> Result<()> {
        self.command(Request {
            cmd: "say",
            text: Some(text),
            ..Request::default()
        })
    }

    fn pair(&self) -> Result<String> {
        let resp = self.call(&Request {
            cmd: "pair",
            ..Request::default()
        })?;
        Ok(resp.message.unwrap_or_default())
    }

    fn reset(&self) -> Result<String> {
        let resp = self.call(&Request {
            cmd: "reset",
            ..Request::default()
        })?;
        Ok(resp.message.unwrap_or_default())
    }

    fn update_status(&self) -> Result<UpdateStatus> {
        let resp = self.call(&Request {
            cmd: "update-status",
            ..Request::default()
        })?;
        let data = resp
            .data
            .context("`update-status`: the answer has no data")?;
        serde_json::from_value(data).context("`update-status`: malformed data")
    }

    fn update(&self, bundle: &mut dyn Read) -> Result<String> {
        let path = &self.0;
        let mut stream = UnixStream::connect(path)
            .with_context(|| format!("{}: cannot connect to PID 1", path.display()))?;
        stream.set_write_timeout(Some(UPDATE_IDLE))?;
        let mut line = serde_json::to_vec(&Request {
            cmd: "update",
            ..Request::default()
        })?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .with_context(|| format!("{}: sending `update`", path.display()))?;
        let mut buf = vec![0u8; UPDATE_PIECE_BYTES];
        let mut broke = None;
        loop {
            let n = match bundle.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    broke = Some(e);
                    break;
                }
            };
            // The installer stops reading once it refuses: its answer says why.
            if stream.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        drop(buf);
        if let Some(e) = broke {
            // Closed without the rest: the installer refuses a truncated bundle and writes
            // nothing more; its answer is not needed.
            bail!("the upload broke off ({e}); nothing was installed");
        }
        // The end of the bundle: the installer reads to here, reads the slot back, answers.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        stream.set_read_timeout(Some(UPDATE_ANSWER_TIMEOUT))?;
        let mut head = Vec::new();
        BufReader::new(stream)
            .take(ANSWER_BYTES_MAX as u64)
            .read_until(b'\n', &mut head)
            .with_context(|| format!("{}: reading the installer's answer", path.display()))?;
        let resp: Response = serde_json::from_slice(&head).with_context(|| {
            format!(
                "{}: the installer ended without an answer: {:?}",
                path.display(),
                String::from_utf8_lossy(&head[..head.len().min(200)])
            )
        })?;
        if !resp.ok {
            bail!(
                "{}",
                resp.error.unwrap_or_else(|| "the update failed".into())
            );
        }
        Ok(resp.message.unwrap_or_default())
    }
}

/// Reads what PID 1 sends until it closes: at most `max` bytes (and whether there was more),
/// all of it before `deadline` (else an error: a PID 1 that never closes, or sends slowly, must
/// not hold a blocking thread).
fn read_to_close(
    reader: &mut BufReader<UnixStream>,
    max: usize,
    deadline: Instant,
) -> std::io::Result<(Vec<u8>, bool)> {
    let timed_out = || {
        std::io::Error::new(
            ErrorKind::TimedOut,
            "PID 1 did not finish sending it in time",
        )
    };
    let mut text = Vec::new();
    let mut chunk = [0u8; 8 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        reader.get_ref().set_read_timeout(Some(left))?;
        let n = match reader.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A read timeout is `WouldBlock` on Unix: say what it means.
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Err(timed_out()),
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok((text, false));
        }
        let room = max - text.len();
        if n > room {
            text.extend_from_slice(&chunk[..room]);
            return Ok((text, true));
        }
        text.extend_from_slice(&chunk[..n]);
    }
}

/// How long one call may take, each way (PID 1 answers at once; a stuck one must not hold the
/// web's blocking threads).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer line read (a status of 64 services fits many times over).
const ANSWER_BYTES_MAX: usize = 256 * 1024;
/// Most of a log read; the rest is cut (PID 1 keeps at most 64 KiB per service, so this is only
/// reached by a PID 1 that misbehaves).
pub const LOG_BYTES_MAX: usize = 256 * 1024;
/// A whole log must arrive within this (PID 1 writes it at once).
pub const LOG_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the installer may wait for the next piece of a bundle, or the web for the
/// installer to take one (it writes a piece to the slot meanwhile).
pub const UPDATE_IDLE: Duration = Duration::from_secs(60);
/// From the bundle's end to the installer's answer: it reads the whole written slot back.
pub const UPDATE_ANSWER_TIMEOUT: Duration = Duration::from_secs(600);
/// The web's piece of a bundle on its way to the installer (all it holds of it besides the
/// upload's queue).
pub const UPDATE_PIECE_BYTES: usize = 64 * 1024;
/// Longest service name (PID 1's manifests allow no longer).
pub const SERVICE_NAME_BYTES_MAX: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A one-shot PID 1: answers one connection with `answer`, returns the request line.
    fn serve_once(
        dir: &std::path::Path,
        answer: impl Into<Vec<u8>>,
    ) -> (ControlSocket, std::thread::JoinHandle<String>) {
        let answer = answer.into();
        let path = dir.join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            // A client that read enough closes early: PID 1 sees a broken pipe, as here.
            let _ = (&stream).write_all(&answer);
            line
        });
        (ControlSocket(path), handle)
    }

    #[test]
    fn board_answer_is_read_from_data() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, h) = serve_once(
            dir.path(),
            "{\"ok\":true,\"data\":{\"claimed\":false,\"name\":null,\"health\":\"setup-needed\",\
             \"window\":{\"id\":3,\"remaining_ms\":1500},\"last_window\":3}}\n",
        );
        let b = sock.board().unwrap();
        assert_eq!(h.join().unwrap().trim(), "{\"cmd\":\"board\"}");
        assert_eq!(
            b.window,
            Some(Window {
                id: 3,
                remaining_ms: 1500
            })
        );
        assert_eq!((b.claimed, b.last_window), (false, 3));
    }

    #[test]
    fn requests_carry_their_fields_and_errors_are_pid1s() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, h) = serve_once(
            dir.path(),
            "{\"ok\":false,\"error\":\"window 4 is not open\"}\n",
        );
        let e = sock.claim(4).unwrap_err();
        assert_eq!(h.join().unwrap().trim(), "{\"cmd\":\"claim\",\"window\":4}");
        assert_eq!(e.to_string(), "window 4 is not open");

        let dir = tempfile::tempdir().unwrap();
        let (sock, h) = serve_once(dir.path(), "{\"ok\":true}\n");
        sock.say("hello \"there\"").unwrap();
        assert_eq!(
            h.join().unwrap().trim(),
            "{\"cmd\":\"say\",\"text\":\"hello \\\"there\\\"\"}"
        );
    }

    #[test]
    fn status_lists_services_and_ignores_fields_it_does_not_show() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, h) = serve_once(
            dir.path(),
            "{\"ok\":true,\"services\":[{\"name\":\"node\",\"state\":\"ready\",\"pid\":9,\
             \"uptime_ms\":10,\"restarts\":0,\"last_exit\":null,\"reason\":null,\
             \"retry_in_ms\":null,\"memory_bytes\":1024}]}\n",
        );
        let s = sock.status().unwrap();
        h.join().unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].name.as_str(), s[0].memory_bytes),
            ("node", Some(1024))
        );
    }

    #[test]
    fn logs_are_the_text_after_the_answer_line() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, h) = serve_once(
            dir.path(),
            "{\"ok\":true,\"dropped\":3}\nnode: started\nnode: <b>ready</b>\n",
        );
        let log = sock.logs("node").unwrap();
        assert_eq!(
            h.join().unwrap().trim(),
            "{\"cmd\":\"logs\",\"service\":\"node\"}"
        );
        assert_eq!(
            log,
            "[3 earlier lines dropped]\nnode: started\nnode: <b>ready</b>\n"
        );

        let dir = tempfile::tempdir().unwrap();
        let (sock, h) = serve_once(dir.path(), "{\"ok\":true,\"dropped\":0}\n");
        assert_eq!(sock.logs("web").unwrap(), "");
        h.join().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let (sock, h) = serve_once(
            dir.path(),
            "{\"ok\":false,\"error\":\"no service named \\\"x\\\"\"}\n",
        );
        assert_eq!(
            sock.logs("x").unwrap_err().to_string(),
            "no service named \"x\""
        );
        h.join().unwrap();
    }

    #[test]
    fn a_log_longer_than_the_bound_is_cut_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut answer = b"{\"ok\":true}\n".to_vec();
        // Lines of 100 bytes, well past the bound; the cut falls inside one.
        while answer.len() < LOG_BYTES_MAX + 64 * 1024 {
            answer.extend_from_slice(&[b'x'; 99]);
            answer.push(b'\n');
        }
        let (sock, h) = serve_once(dir.path(), answer);
        let log = sock.logs("node").unwrap();
        h.join().unwrap();
        let (text, note) = log.split_at(LOG_BYTES_MAX);
        assert!(text.bytes().all(|b| b == b'x' || b == b'\n'));
        assert_eq!(note, "\n[cut here: the log is longer than 256 KiB]\n");
    }

    #[test]
    fn a_log_that_never_ends_is_an_error_by_the_deadline() {
        let (mut pid1, web) = UnixStream::pair().unwrap();
        pid1.write_all(b"node: started\n").unwrap();
        let started = Instant::now();
        let e = read_to_close(
            &mut BufReader::new(web),
            LOG_BYTES_MAX,
            started + Duration::from_millis(200),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(pid1);
    }

    #[test]
    fn service_names_are_pid1s_manifest_names() {
        for ok in ["node", "web", "a", "Big_one-2", &"x".repeat(32)] {
            assert!(valid_service_name(ok), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "a b",
            "a.b",
            "%2e",
            "é",
            "x\n",
            &"x".repeat(33),
        ] {
            assert!(!valid_service_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_missing_socket_is_named() {
        let e = ControlSocket(PathBuf::from("/nonexistent/control.sock"))
            .board()
            .unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/control.sock"));
    }

    /// PID 1 and its installer for one `update`: reads the request line a byte at a time (as
    /// PID 1 does), runs the real installer on the rest of the connection into `slot`, answers
    /// its line and closes, whatever is left unread.
    fn installer_once(
        dir: &std::path::Path,
        keys: cairn_update::keys::TrustedKeys,
        slot: std::path::PathBuf,
    ) -> (ControlSocket, std::thread::JoinHandle<String>) {
        let path = dir.join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            let policy = cairn_update::install::Policy {
                keys: &keys,
                board: "qemu-virt",
                running_build: 10,
                allow_downgrade: false,
            };
            let mut slot = cairn_update::slot::FileSlot::open(&slot).unwrap();
            let answer = match cairn_update::install::apply(&mut stream, &policy, &mut slot) {
                Ok(m) => format!("{{\"ok\":true,\"message\":\"installed {}\"}}\n", m.version),
                Err(e) => {
                    serde_json::to_string(&serde_json::json!({
                        "ok": false, "error": format!("update refused: {e}")
                    }))
                    .unwrap()
                        + "\n"
                }
            };
            let _ = stream.write_all(answer.as_bytes());
            String::from_utf8(line).unwrap()
        });
        (ControlSocket(path), handle)
    }

    /// A bundle of `bytes` bytes of parts (more than the sockets buffer, when large).
    fn bundle_of(key: &cairn_update::keys::SigningKey, bytes: usize) -> Vec<u8> {
        use cairn_update::bundle::PartSource;
        let part: Vec<u8> = (0..bytes).map(|i| (i % 253) as u8).collect();
        let part: &[u8] = &part;
        let parts: [(&str, &dyn PartSource); 1] = [("boot", &part)];
        let mut out = Vec::new();
        cairn_update::bundle::write(&mut out, key, "qemu-virt", "0.2.0", 11, &parts).unwrap();
        out
    }

    fn keys_of(key: &cairn_update::keys::SigningKey) -> cairn_update::keys::TrustedKeys {
        let mut t = cairn_update::keys::TrustedKeys::default();
        t.add(key.public(), "test").unwrap();
        t
    }

    /// An empty slot file of 8 MiB in `dir`.
    fn empty_slot(dir: &std::path::Path) -> std::path::PathBuf {
        let slot = dir.join("b");
        std::fs::File::create(&slot)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        slot
    }

    fn new_key() -> cairn_update::keys::SigningKey {
        use cairn_update::keys::SigningKey;
        SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap()
    }

    #[test]
    fn an_update_streams_after_its_request_and_the_installers_line_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let key = new_key();
        let slot = empty_slot(dir.path());
        let (sock, h) = installer_once(dir.path(), keys_of(&key), slot.clone());
        let bundle = bundle_of(&key, 3 << 20);
        let line = sock.update(&mut &bundle[..]).unwrap();
        assert_eq!(line, "installed 0.2.0");
        assert_eq!(h.join().unwrap(), "{\"cmd\":\"update\"}");
        assert_eq!(std::fs::read(&slot).unwrap()[252], 252);
    }

    #[test]
    fn a_refusal_before_the_end_of_a_large_bundle_is_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let slot = empty_slot(dir.path());
        // Refused after the manifest: the installer closes with megabytes unread.
        let (sock, h) = installer_once(dir.path(), keys_of(&new_key()), slot.clone());
        let e = sock
            .update(&mut &bundle_of(&new_key(), 6 << 20)[..])
            .unwrap_err();
        assert!(
            format!("{e:#}").starts_with("update refused: signed by an unknown key"),
            "{e:#}"
        );
        h.join().unwrap();
        assert!(std::fs::read(&slot).unwrap().iter().all(|&b| b == 0));
    }

    /// An upload that breaks off after `left` bytes.
    struct BreaksOff<'a>(&'a [u8]);
    impl Read for BreaksOff<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::Error::other("the browser went away"));
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn an_upload_that_breaks_off_is_a_truncated_bundle_to_the_installer() {
        let dir = tempfile::tempdir().unwrap();
        let key = new_key();
        let slot = empty_slot(dir.path());
        let (sock, h) = installer_once(dir.path(), keys_of(&key), slot);
        let bundle = bundle_of(&key, 1 << 20);
        let e = sock
            .update(&mut BreaksOff(&bundle[..bundle.len() / 2]))
            .unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "the upload broke off (the browser went away); nothing was installed"
        );
        h.join().unwrap();
    }
}
