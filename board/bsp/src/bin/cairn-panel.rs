//! `cairn-panel SOCKET`: the qemu-virt board's front panel at a terminal. Connects to the
//! Unix socket QEMU serves the `cairn.panel` virtio-serial port on, shows the LEDs on one
//! status line, and presses the button on command:
//!
//! ```text
//! p (or Enter)  short press          h SECONDS  hold the button that long
//! d / u         button down / up     l          ask for the LEDs' state
//! q             quit
//! ```

use cairn_bsp::panel::{PanelLink, ToGuest, ToHost};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

const HELP: &str =
    "p/Enter: short press · h SECONDS: hold · d/u: button down/up · l: LEDs · q: quit";

fn main() {
    let path = match std::env::args().nth(1) {
        Some(p) if p != "-h" && p != "--help" => p,
        _ => {
            eprintln!("usage: cairn-panel SOCKET\n{HELP}");
            std::process::exit(2);
        }
    };
    let stream = connect(&path);
    let writer = stream.try_clone().unwrap_or_else(|e| fail(&path, e));
    let link = Arc::new(PanelLink::new(stream, writer).unwrap_or_else(|e| fail(&path, e)));
    println!("front panel on {path}: {HELP}");
    let l = link.clone();
    std::thread::spawn(move || show(&l));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let result = match words.as_slice() {
            [] | ["p"] => link.press(Duration::from_millis(200)),
            ["h", secs] => match secs.parse::<f64>() {
                Ok(s) if (0.0..=600.0).contains(&s) => link.press(Duration::from_secs_f64(s)),
                _ => {
                    println!("h takes seconds (0–600), e.g. `h 5`");
                    Ok(())
                }
            },
            ["d"] => link.send(ToGuest::ButtonDown),
            ["u"] => link.send(ToGuest::ButtonUp),
            ["l"] => link.send(ToGuest::Leds),
            ["q"] => break,
            _ => {
                println!("{HELP}");
                Ok(())
            }
        };
        if let Err(e) = result {
            fail(&path, e);
        }
    }
}

/// Connects, waiting a little for QEMU to create the socket.
fn connect(path: &str) -> UnixStream {
    for _ in 0..50 {
        if let Ok(s) = UnixStream::connect(path) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    UnixStream::connect(path).unwrap_or_else(|e| fail(path, e))
}

fn fail(path: &str, e: std::io::Error) -> ! {
    eprintln!("cairn-panel: {path}: {e}");
    std::process::exit(1);
}

/// Redraws the status line on every report.
fn show(link: &PanelLink) {
    let mut leds: BTreeMap<String, bool> = BTreeMap::new();
    let mut pattern = String::from("?");
    let mut next = 0;
    loop {
        let Some((seq, msg)) = link.wait_for(next, Duration::from_secs(3600), |m| Some(m.clone()))
        else {
            if link.is_closed() {
                println!("\nthe device closed the panel");
                std::process::exit(0);
            }
            continue;
        };
        next = seq + 1;
        match msg {
            ToHost::Led { name, on, .. } => {
                leds.insert(name, on);
            }
            ToHost::Leds(all) => leds.extend(all),
            ToHost::Pattern { name, .. } => pattern = name,
        }
        // The status LED first: it is the one every pattern is read from.
        let mut order: Vec<(&String, &bool)> = leds.iter().collect();
        order.sort_by_key(|(n, _)| (n.as_str() != "status", n.as_str()));
        let lamps: Vec<String> = order
            .into_iter()
            .map(|(n, on)| format!("{n} {}", if *on { "●" } else { "○" }))
            .collect();
        print!("\r\x1b[K{}   [{pattern}]", lamps.join("  "));
        let _ = std::io::stdout().flush();
    }
}
