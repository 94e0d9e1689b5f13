//! `cairn web` as a real process, the way PID 1 starts it: its listening socket inherited
//! (`$CAIRN_LISTEN_FDS`), readiness on `$NOTIFY_FD`, PID 1's control socket played by this test
//! (answering `board` and `say`), and SIGTERM ending it cleanly. The web itself is tested in
//! `services/web/tests`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Kills the service when the test ends, however it ends.
struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// PID 1's control socket: answers every request line, sends each `say` text on `said`.
fn fake_pid1(listener: UnixListener, said: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            let req: serde_json::Value = serde_json::from_str(&line).unwrap();
            let answer = match req["cmd"].as_str() {
                Some("board") => serde_json::json!({"ok": true, "data": {
                    "claimed": false, "name": null, "health": "setup-needed",
                    "window": null, "last_window": 0}}),
                Some("say") => {
                    let _ = said.send(req["text"].as_str().unwrap().to_string());
                    serde_json::json!({"ok": true})
                }
                _ => serde_json::json!({"ok": false, "error": "unknown command"}),
            };
            (&stream)
                .write_all(format!("{answer}\n").as_bytes())
                .unwrap();
        }
    });
}

#[test]
fn the_role_serves_on_the_inherited_socket_and_says_where() {
    let t = tempfile::tempdir().unwrap();
    let control = t.path().join("control.sock");
    let (said_tx, said) = mpsc::channel();
    fake_pid1(UnixListener::bind(&control).unwrap(), said_tx);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fd = listener.as_raw_fd();
    let (mut notify_r, notify_w) = std::io::pipe().unwrap();
    let notify_fd = notify_w.as_raw_fd();
    let data = t.path().join("web");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(["web", "--data"])
        .arg(&data)
        .arg("--control")
        .arg(&control)
        .env("CAIRN_LISTEN_FDS", fd.to_string())
        .env("NOTIFY_FD", notify_fd.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only fcntl, which is async-signal-safe: the two
    // descriptors are passed on (close-on-exec cleared), as PID 1 passes them.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [fd, notify_fd] {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = Killed(cmd.spawn().unwrap());
    drop(notify_w);
    drop(listener);

    let mut ready = [0u8; 6];
    notify_r.read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"ready\n");
    let line = said.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        line.contains(&format!(":{port}/ (cairn.local) certificate SHA-256 ")),
        "{line}"
    );
    let identity = data.join("tls/identity.pem");
    let mode = std::fs::metadata(&identity).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // TLS answers on that port: application data before any handshake gets an alert record.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b[0], 0x15);

    // PID 1 stops it with SIGTERM: it finishes what is under way and exits cleanly (a page
    // being answered is not cut off, and PID 1 sees an exit, not a death by signal).
    let mut child = child;
    // SAFETY: a plain syscall on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn without_a_socket_the_role_says_what_is_missing() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["web", "--data", "/nonexistent/web"])
        .env_remove("CAIRN_LISTEN_FDS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no socket to listen on: PID 1 passed none ($CAIRN_LISTEN_FDS) and --listen is not given"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["web", "--listen", "127.0.0.1:0"])
        .env("CAIRN_LISTEN_FDS", "x")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"x\" is not a descriptor number"));
}
