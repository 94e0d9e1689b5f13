//! What the web asks of PID 1, behind the [`Device`] trait: the services' status, the board's
//! state (claimed, health, the pairing window), the claim, and the owner's commands. The real
//! implementation, [`ControlSocket`], speaks PID 1's control protocol: one JSON request line,
//! one JSON answer line (`firmware/supervisor/src/proto.rs`).
//!
//! The calls block (a Unix socket, a short answer): the server makes them on its blocking pool.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One service as `status` reports it (the fields the web shows; others are ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    /// `waiting`, `backoff`, `starting`, `ready`, `stopping`, `down`, `exited` or `failed`.
    pub state: String,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub uptime_ms: Option<u64>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
}

/// An open pairing window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Its number since boot (1, 2, …).
    pub id: u64,
    pub remaining_ms: u64,
}

/// The board's state, as `board` answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Board {
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
    /// Stops every service and reboots.
    fn reboot(&self) -> Result<()>;
    /// Stops every service and powers off.
    fn poweroff(&self) -> Result<()>;
    /// Prints `cairn: web: TEXT` on the console.
    fn say(&self, text: &str) -> Result<()>;
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
    services: Option<Vec<Service>>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

/// PID 1's control socket (`/run/cairn/control.sock` on the device).
#[derive(Clone, Debug)]
pub struct ControlSocket(pub PathBuf);

impl ControlSocket {
    /// Sends one request, returns the answer when `ok`, PID 1's error otherwise.
    fn call(&self, req: &Request) -> Result<Response> {
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
        BufReader::new(stream)
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
        Ok(resp)
    }

    fn command(&self, req: Request) -> Result<()> {
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
}

/// How long one call may take, each way (PID 1 answers at once; a stuck one must not hold the
/// web's blocking threads).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer line read (a status of 64 services fits many times over).
const ANSWER_BYTES_MAX: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A one-shot PID 1: answers one connection with `answer`, returns the request line.
    fn serve_once(
        dir: &std::path::Path,
        answer: &'static str,
    ) -> (ControlSocket, std::thread::JoinHandle<String>) {
        let path = dir.join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            (&stream).write_all(answer.as_bytes()).unwrap();
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
    fn a_missing_socket_is_named() {
        let e = ControlSocket(PathBuf::from("/nonexistent/control.sock"))
            .board()
            .unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/control.sock"));
    }
}
