//! The real `cairn init` as PID 1 of a new PID namespace (`unshare --fork --pid --mount-proc`),
//! supervising real processes (`cairn fixture …`), driven through `cairn ctl` as a person would.
//! Needs root (as the test machine has) for the PID namespace.

mod common;

use common::{collect, kill, manifest, Init, CAIRN};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn malformed_manifest_gets_one_line_and_the_others_start() {
    let mut init = Init::start(&[
        manifest("good", "sleep", "ready = \"notify\""),
        (
            "bad".into(),
            "name = \"bad\"\nexec = [\"/bin/true\"]\nrestrat = \"always\"\n".into(),
        ),
    ]);
    init.wait_state("good", "ready");
    assert_eq!(
        init.status("bad"),
        Value::Null,
        "a bad manifest is not loaded"
    );
    let (out, err) = init.poweroff();
    let bad: Vec<&String> = err.iter().filter(|l| l.contains("bad.toml")).collect();
    assert_eq!(bad.len(), 1, "{err:#?}");
    assert!(
        bad[0].contains("bad.toml:3: field `restrat`: unknown field"),
        "{}",
        bad[0]
    );
    assert_eq!(
        out.iter().filter(|l| *l == "cairn: ready").count(),
        1,
        "{out:#?}"
    );
}

#[test]
fn ready_is_announced_with_no_services() {
    let mut init = Init::start(&[]);
    init.wait_for("cairn: ready", || {
        init.stdout
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "cairn: ready")
    });
    init.poweroff();
}

#[test]
fn killed_service_is_restarted() {
    let mut init = Init::start(&[manifest("svc", "sleep", "ready = \"notify\"")]);
    let first = init.wait_state("svc", "ready");
    let ns_pid = first["pid"].as_u64().unwrap() as u32;
    let host = init.host_pid_of(ns_pid).expect("the service process");
    kill(host.pid, "-9");
    init.wait_for("a new pid", || {
        let s = init.status("svc");
        s["state"] == "ready" && s["pid"].as_u64() != Some(ns_pid as u64)
    });
    let s = init.status("svc");
    assert_eq!(s["restarts"], 1);
    assert_eq!(s["last_exit"]["signal"], 9);
    assert!(init
        .logs("svc")
        .contains(&format!("svc: pid {ns_pid} ended with signal 9")));
    init.poweroff();
}

#[test]
fn orphans_are_reaped() {
    let mut init = Init::start(&[manifest(
        "orphans",
        "orphan --linger-ms 1500",
        "ready = \"notify\"",
    )]);
    init.wait_state("orphans", "ready");
    let logs = init.logs("orphans");
    let ns_pid: u32 = logs
        .lines()
        .find_map(|l| l.strip_prefix("orphan: pid "))
        .expect("the orphan's pid in the log")
        .parse()
        .unwrap();
    let orphan = init.host_pid_of(ns_pid).expect("the orphan, alive");
    assert_eq!(
        orphan.ppid,
        init.host_pid(),
        "the orphan was re-parented to PID 1"
    );
    // Once it exits, PID 1 must reap it: no zombie may stay behind.
    init.wait_for("the orphan to be reaped", || {
        init.host_pid_of(ns_pid).is_none()
    });
    assert!(init.descendants().iter().all(|p| p.state != 'Z'));
    init.poweroff();
}

#[test]
fn stop_kills_the_whole_process_group_after_the_grace() {
    let mut init = Init::start(&[manifest(
        "grp",
        "group --children 3 --ignore-term",
        "ready = \"notify\"\nstop_grace_ms = 300",
    )]);
    init.wait_state("grp", "ready");
    let members = || {
        init.descendants()
            .iter()
            .filter(|p| p.cmdline.contains("fixture group"))
            .count()
    };
    init.wait_for("four group processes", || members() == 4);
    assert!(init.ctl_ok(&["stop", "grp"]).contains("stopping"));
    init.wait_state("grp", "down");
    init.wait_for("the group to be gone", || members() == 0);
    assert!(init
        .logs("grp")
        .contains("grp: still running after its grace period; killed"));
    // Stopped means stopped: it is not restarted.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(init.status("grp")["state"], "down");
    init.poweroff();
}

#[test]
fn log_ring_keeps_the_newest_lines_and_counts_drops() {
    let mut init = Init::start(&[manifest(
        "chatty",
        "log-lines --count 5000 --width 64",
        "ready = \"notify\"",
    )]);
    init.wait_state("chatty", "ready");
    init.wait_for("all lines", || {
        init.logs("chatty").contains("log-lines: done")
    });
    let logs = init.logs("chatty");
    let first = logs.lines().next().unwrap();
    let dropped: u64 = first
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(" earlier lines dropped]"))
        .expect("a drop count first")
        .parse()
        .unwrap();
    assert!(dropped > 3000, "{first}");
    assert!(logs.contains("line 00004999 "));
    assert!(!logs.contains("line 00000000 "));
    assert!(
        logs.len() <= cairn_ring_bound(),
        "{} bytes of log",
        logs.len()
    );
    // Saved on demand and at shutdown, under the state directory.
    init.ctl_ok(&["save-logs"]);
    let saved = std::fs::read_to_string(init.state().join("logs/chatty.log")).unwrap();
    assert!(saved.contains("line 00004999 "));
    let state = init.state();
    std::fs::remove_file(state.join("logs/chatty.log")).unwrap();
    init.poweroff();
    // `init` still holds the temporary directory.
    let saved = std::fs::read_to_string(state.join("logs/chatty.log")).unwrap();
    assert!(saved.contains("log-lines: done"));
}

/// The ring's bound (64 KiB of text) plus a line per line for newlines and the drop note.
fn cairn_ring_bound() -> usize {
    64 * 1024 + 64 * 1024 / 64 + 100
}

#[test]
fn control_socket_commands() {
    let port = free_port();
    let mut init = Init::start(&[
        manifest("a", "sleep", "ready = \"notify\""),
        manifest(
            "b",
            &format!("crash-on-command --port {port}"),
            &format!("ready = \"tcp:{port}\"\ndepends_on = [\"a\"]"),
        ),
    ]);
    init.wait_state("b", "ready");
    let mode = std::fs::metadata(init.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let table = init.ctl_ok(&["status"]);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[0].starts_with("SERVICE") && rows[0].contains("MEMORY"));
    assert!(
        rows[1].starts_with("a ") && rows[1].contains("ready"),
        "{table}"
    );
    let a = init.status("a");
    assert!(a["uptime_ms"].as_u64().is_some());
    assert!(a["memory_bytes"].as_u64().unwrap() > 0);

    // A crash on command: restarted (immediately, the first time).
    let old = init.status("b")["pid"].clone();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut conn, b"crash\n").unwrap();
    init.wait_for("b restarted", || {
        let s = init.status("b");
        s["state"] == "ready" && s["pid"] != old
    });
    assert_eq!(init.status("b")["last_exit"]["signal"], 6);

    // logs -f follows new lines.
    let mut follow = Command::new(CAIRN)
        .arg("ctl")
        .arg("--socket")
        .arg(init.socket())
        .args(["logs", "-f", "a"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let followed = collect(follow.stdout.take().unwrap());
    init.wait_for("the backlog", || {
        followed
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("a: ready"))
    });
    assert!(init.ctl_ok(&["restart", "a"]).contains("restarting"));
    init.wait_for("a followed restart", || {
        followed
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("a: pid") && l.contains("ended with signal 15"))
    });
    let _ = follow.kill();
    let _ = follow.wait();

    assert!(init.ctl_ok(&["stop", "a"]).contains("a: stopping"));
    init.wait_state("a", "down");
    assert!(init.ctl_ok(&["start", "a"]).contains("a: starting"));
    init.wait_state("a", "ready");

    let out = init.ctl(&["restart", "nosuch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service named \"nosuch\""));

    // Peer credentials are checked even if the socket's mode were opened up.
    std::fs::set_permissions(init.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new(CAIRN)
        .arg("ctl")
        .arg("--socket")
        .arg(init.socket())
        .arg("status")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("root only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    init.poweroff();
}

#[test]
fn shutdown_kills_a_term_ignoring_service_and_completes() {
    let mut init = Init::start(&[
        manifest(
            "stubborn",
            "ignore-term",
            "ready = \"notify\"\nstop_grace_ms = 400",
        ),
        manifest("polite", "sleep", ""),
    ]);
    init.wait_state("stubborn", "ready");
    init.wait_state("polite", "ready");
    let (_, err) = init.poweroff();
    assert!(
        err.iter()
            .any(|l| l == "cairn: stubborn: still running after its grace period; killed"),
        "{err:#?}"
    );
    assert!(err.iter().any(|l| l == "cairn: polite: stopped"));
}

#[test]
fn sigterm_to_init_means_reboot() {
    let init = Init::start(&[manifest("svc", "sleep", "")]);
    init.wait_state("svc", "ready");
    kill(init.host_pid(), "-TERM");
    init.wait_for("the reboot request", || {
        init.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "cairn: reboot requested by signal")
    });
    init.wait_for("services stopped", || {
        init.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "cairn: svc: stopped")
    });
}

#[test]
fn missing_program_fails_naming_it() {
    let mut init = Init::start(&[(
        "ghost".into(),
        "name = \"ghost\"\nexec = [\"/nonexistent/ghostd\"]\n".into(),
    )]);
    let s = init.wait_state("ghost", "failed");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("crash loop") && reason.contains("/nonexistent/ghostd"),
        "{reason}"
    );
    init.poweroff();
}

#[test]
fn service_gets_its_account_directory_limits_and_session() {
    let mut init = Init::start(&[manifest(
        "svc",
        "sleep",
        "ready = \"notify\"\nuser = \"svcuser\"\ngroup = \"svcgroup\"\nworkdir = \"/tmp\"\n\
         env = { FIXTURE_NOTE = \"hello\" }\n[limits]\nnofile = 77",
    )]);
    let pid = init.wait_state("svc", "ready")["pid"].as_u64().unwrap();
    let logs = init.logs("svc");
    let line = logs
        .lines()
        .find(|l| l.starts_with("sleep: pid"))
        .expect("the fixture's report");
    // Own session and process group; the account was created (host runs keep it under STATE/etc).
    let passwd = std::fs::read_to_string(init.state().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(init.state().join("etc/group")).unwrap();
    let uid: u32 = passwd
        .lines()
        .find_map(|l| l.strip_prefix("svcuser:x:"))
        .and_then(|r| r.split(':').next())
        .and_then(|u| u.parse().ok())
        .expect("svcuser in passwd");
    let gid: u32 = group
        .lines()
        .find_map(|l| l.strip_prefix("svcgroup:x:"))
        .and_then(|r| r.split(':').next())
        .and_then(|g| g.parse().ok())
        .expect("svcgroup in group");
    assert_eq!(
        line,
        format!(
            "sleep: pid {pid} pgid {pid} sid {pid} uid {uid} gid {gid} cwd /tmp nofile 77 note hello"
        )
    );
    init.poweroff();
}

#[test]
fn a_service_gets_its_port_from_the_supervisor_and_may_ask_only_what_its_manifest_lists() {
    let port = free_port();
    let mut init = Init::start(&[manifest(
        "web",
        "crash-on-command --inherited",
        &format!(
            "user = \"websvc\"\ngroups = [\"nodesvc\"]\nlisten = [\"tcp:{port}\"]\nready = \"tcp:{port}\"\n\
             control = [\"status\"]"
        ),
    )]);
    init.wait_state("web", "ready");
    // Open to services now; each request is still judged by the asker's uid.
    let mode = std::fs::metadata(init.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666);
    // The test's temporary directory is root's alone; the service's user must reach the socket.
    for dir in [
        init.socket().parent().unwrap(),
        init.state().parent().unwrap(),
    ] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let ask = |line: &str| -> Vec<String> {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        std::io::Write::write_all(&mut conn, format!("{line}\n").as_bytes()).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut conn, &mut text).unwrap();
        text.lines().map(str::to_string).collect()
    };
    // The service runs as its own user, on the socket the supervisor bound for it.
    let fds = ask(&format!("fds {}", init.status("web")["pid"]));
    assert!(fds[0].contains("socket:"), "{fds:?}");
    // In its own group and the one `groups` names (to reach another service's socket). The
    // fixture reads its own status (one line: the file's lines joined by spaces).
    let status = ask("read /proc/self/status").join(" ");
    let ids = |field: &str| -> Vec<String> {
        let rest = &status[status.find(field).unwrap() + field.len()..];
        rest.split_whitespace()
            .take_while(|w| !w.ends_with(':'))
            .map(str::to_string)
            .collect()
    };
    let groups = ids("Groups:");
    assert_eq!(groups.len(), 2, "{status}");
    assert!(groups.contains(&ids("Gid:")[0]), "{status}");
    let socket = init.socket().display().to_string();
    let allowed = ask(&format!("ctl --socket {socket} status"));
    assert_eq!(allowed.last().unwrap(), "ctl-done 0", "{allowed:?}");
    assert!(allowed
        .iter()
        .any(|l| l.contains("web") && l.contains("ready")));
    let refused = ask(&format!("ctl --socket {socket} reboot"));
    assert_ne!(refused.last().unwrap(), "ctl-done 0", "{refused:?}");
    assert!(
        refused
            .iter()
            .any(|l| l.contains("root only") && l.contains("websvc")),
        "{refused:?}"
    );

    // A restart keeps the same socket: the port never goes unbound.
    let old = init.status("web")["pid"].clone();
    assert!(init.ctl_ok(&["restart", "web"]).contains("restarting"));
    init.wait_for("web back", || {
        let s = init.status("web");
        s["state"] == "ready" && s["pid"] != old
    });
    assert!(ask("rss")[0].starts_with("rss "));
    init.poweroff();
}

#[test]
fn a_manifest_asking_for_unknown_requests_or_a_bad_port_is_refused_with_its_field() {
    let mut init = Init::start(&[
        manifest(
            "greedy",
            "sleep",
            "user = \"greedy\"\ncontrol = [\"status\", \"format-disk\"]",
        ),
        manifest("badport", "sleep", "listen = [\"udp:53\"]"),
        manifest("ok", "sleep", ""),
    ]);
    init.wait_state("ok", "ready");
    let (_, errors) = init.poweroff();
    assert!(
        errors.iter().any(|l| l.contains("greedy.toml")
            && l.contains("`control`")
            && l.contains("format-disk")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|l| l.contains("badport.toml") && l.contains("`listen`") && l.contains("udp:53")),
        "{errors:?}"
    );
}

#[test]
fn a_service_with_few_files_gets_its_loopback_udp_port_and_the_name_server_answers_on_it() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The real role: `cairn names`, with no upstream name server to ask.
    let text = format!(
        "name = \"names\"\nexec = [\"{CAIRN}\", \"names\", \"--resolv-conf\", \"/nonexistent\"]\n\
         user = \"namesvc\"\nlisten = [\"udp:127.0.0.1:{port}\"]\nready = \"notify\"\n\
         [limits]\nnofile = 16\n"
    );
    let mut init = Init::start(&[("names".to_string(), text)]);
    init.wait_state("names", "ready");
    // A question for a name not on the LAN, with nobody upstream: "server failure", same id.
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut q = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(b"\x07example\x03org\x00\x00\x01\x00\x01");
    s.send_to(&q, ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).unwrap();
    assert!(n >= 12, "{:?}", &buf[..n]);
    assert_eq!(&buf[..2], &[0x12, 0x34]);
    assert_eq!((buf[2] & 0x80, buf[3] & 0x0F), (0x80, 2), "{:?}", &buf[..n]);
    init.poweroff();
}
