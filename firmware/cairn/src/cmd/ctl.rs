//! `cairn ctl`: the control client. Sends one request over the supervisor's Unix socket and
//! prints the answer for a person (or as JSON with `status --json`).

use anyhow::{bail, Context};
use cairn_supervisor::proto::Request;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

/// `cairn ctl` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The supervisor's control socket.
    #[arg(long, default_value = cairn_supervisor::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Each service's state, pid, uptime, restarts and memory use.
    Status {
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// Start a service that is down, exited or failed.
    Start { service: String },
    /// Stop a service (SIGTERM, then SIGKILL after its grace period).
    Stop { service: String },
    /// Stop and start a service.
    Restart { service: String },
    /// Print a service's recent output.
    Logs {
        service: String,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
    },
    /// Save every service's log under the state directory now.
    SaveLogs,
    /// Stop all services and power off.
    Poweroff,
    /// Stop all services and reboot.
    Reboot,
}

/// Runs one `cairn ctl` command.
pub fn run(args: Args) -> anyhow::Result<()> {
    let (req, json) = match args.command {
        Command::Status { json } => (request("status", None), json),
        Command::Start { service } => (request("start", Some(service)), false),
        Command::Stop { service } => (request("stop", Some(service)), false),
        Command::Restart { service } => (request("restart", Some(service)), false),
        Command::Logs { service, follow } => (
            Request {
                follow,
                ..request("logs", Some(service))
            },
            false,
        ),
        Command::SaveLogs => (request("save-logs", None), false),
        Command::Poweroff => (request("poweroff", None), false),
        Command::Reboot => (request("reboot", None), false),
    };
    let mut stream = UnixStream::connect(&args.socket).with_context(|| {
        format!(
            "{}: cannot connect to the supervisor",
            args.socket.display()
        )
    })?;
    let mut line = serde_json::to_vec(&req)?;
    line.push(b'\n');
    stream.write_all(&line).context("sending the request")?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    reader
        .read_line(&mut head)
        .context("reading the supervisor's answer")?;
    let resp: Value = serde_json::from_str(&head)
        .with_context(|| format!("{}: malformed answer {head:?}", args.socket.display()))?;
    if resp["ok"] != Value::Bool(true) {
        bail!("{}", resp["error"].as_str().unwrap_or("request failed"));
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    match req.cmd.as_str() {
        "status" if json => writeln!(out, "{}", resp["services"])?,
        "status" => print_status(&mut out, &resp["services"])?,
        "logs" => {
            if let Some(n) = resp["dropped"].as_u64().filter(|&n| n > 0) {
                writeln!(out, "[{n} earlier lines dropped]")?;
            }
            out.flush()?;
            // The text follows until the supervisor closes (at once unless following).
            let mut buf = String::new();
            loop {
                buf.clear();
                if reader.read_line(&mut buf)? == 0 {
                    break;
                }
                out.write_all(buf.as_bytes())?;
                out.flush()?;
            }
        }
        _ => {
            if let Some(m) = resp["message"].as_str() {
                writeln!(out, "{m}")?;
            }
        }
    }
    Ok(())
}

fn request(cmd: &str, service: Option<String>) -> Request {
    Request {
        cmd: cmd.into(),
        service,
        ..Request::default()
    }
}

fn print_status(out: &mut impl Write, services: &Value) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<16} {:<9} {:>7} {:>10} {:>8} {:>9}  NOTE",
        "SERVICE", "STATE", "PID", "UPTIME", "RESTARTS", "MEMORY"
    )?;
    for s in services.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let dash = || "-".to_string();
        let pid = s["pid"].as_u64().map_or_else(dash, |p| p.to_string());
        let uptime = s["uptime_ms"].as_u64().map_or_else(dash, human_duration);
        let memory = s["memory_bytes"]
            .as_u64()
            .map_or_else(dash, |b| format!("{:.1}M", b as f64 / 1048576.0));
        writeln!(
            out,
            "{:<16} {:<9} {:>7} {:>10} {:>8} {:>9}  {}",
            s["name"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            pid,
            uptime,
            s["restarts"].as_u64().unwrap_or(0),
            memory,
            s["reason"].as_str().unwrap_or("")
        )?;
    }
    Ok(())
}

fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s / 60) % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(999), "0s");
        assert_eq!(human_duration(61_000), "1m01s");
        assert_eq!(human_duration(7_260_000), "2h01m");
    }

    #[test]
    fn status_table_has_a_row_per_service() {
        let v: Value = serde_json::from_str(
            r#"[{"name":"web","state":"ready","pid":7,"uptime_ms":5000,"restarts":2,"memory_bytes":2097152,"reason":null},
                {"name":"node","state":"failed","pid":null,"uptime_ms":null,"restarts":5,"memory_bytes":null,"reason":"crash loop"}]"#,
        )
        .unwrap();
        let mut out = Vec::new();
        print_status(&mut out, &v).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].starts_with("web") && lines[1].contains("ready") && lines[1].contains("2.0M")
        );
        assert!(lines[2].contains("failed") && lines[2].ends_with("crash loop"));
    }
}
