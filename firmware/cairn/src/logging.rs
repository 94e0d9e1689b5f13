//! The console's log lines. The libraries (supervisor, node, vault) emit `tracing` events and
//! never print; this binary installs the one subscriber of the process ([`install`], from
//! `main`, per role) and prints each event as the role's console has always shown it:
//! `PREFIX: message` on stderr — no timestamp, no level, no colour — because the console, the
//! supervisor's log rings and the tests read these lines.
//!
//! Which events: `cairn=info` (every Cairn crate: targets match by prefix), or whatever
//! `RUST_LOG` says instead (`info`, `cairn_node=debug,libp2p_kad=warn`: target prefixes and
//! levels, no regexes). Events of other crates (libp2p, only when `RUST_LOG` lets them through)
//! also name their level and target: `cairn-node: DEBUG libp2p_swarm: …`. Release builds have
//! no trace level (compiled out: the root Cargo.toml), so `debug` is the most there is.
//!
//! PID 1 logs through this as well, so a line never panics: it is formatted into a string
//! first (a failing `Display` only cuts the line short), then written in one call whose error
//! is dropped. No lock is held while formatting, so a panic there cannot leave the console
//! locked. The panic hook does not come here at all (`sys::console`).

use std::fmt::Write as _;
use std::io::Write as _;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// What is logged when `RUST_LOG` is unset: Cairn's own events at info and above.
const DEFAULT: &str = "cairn=info";

/// Installs the console subscriber for this process: lines `PREFIX: …` on stderr. A second
/// call (a test that runs two roles in one process) keeps the first.
pub fn install(prefix: &'static str) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, bad) = match filter(rust_log.as_deref()) {
        Ok(f) => (f, None),
        Err(e) => (default_filter(), Some(e)),
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(Console { prefix });
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        if let Some(e) = bad {
            tracing::warn!("RUST_LOG: {e}; logging {DEFAULT}");
        }
    }
}

/// The filter `RUST_LOG` asks for; unset or blank: [`DEFAULT`].
fn filter(rust_log: Option<&str>) -> Result<Targets, String> {
    // Empty directives ("info,", ",,") would otherwise parse as the target "" — everything.
    let directives: Vec<&str> = rust_log
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Ok(default_filter());
    }
    let text = directives.join(",");
    text.parse().map_err(|e| format!("{text:?}: {e}"))
}

fn default_filter() -> Targets {
    DEFAULT.parse().unwrap_or_default()
}

/// Prints every event it is given as one console line.
struct Console {
    prefix: &'static str,
}

impl<S: Subscriber> Layer<S> for Console {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let line = line(self.prefix, event);
        // One write per line, so lines from several threads never interleave; an error is
        // dropped, as a console that fails must not take the program (PID 1) down with it.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// `PREFIX: message key=value…\n`; for other crates' events `PREFIX: LEVEL target: message…`.
fn line(prefix: &str, event: &Event<'_>) -> String {
    let meta = event.metadata();
    let mut line = String::with_capacity(128);
    line.push_str(prefix);
    line.push_str(": ");
    if !meta.target().starts_with("cairn") {
        let _ = write!(line, "{} {}: ", meta.level(), meta.target());
    }
    let start = line.len();
    let mut fields = Fields {
        message: &mut line,
        rest: String::new(),
    };
    event.record(&mut fields);
    let rest = fields.rest;
    // Some events are fields only (libp2p's `local_peer_id=…`): no blank before the first.
    line.push_str(if line.len() == start {
        rest.trim_start()
    } else {
        &rest
    });
    line.push('\n');
    line
}

/// Collects an event's message, and its other fields as ` key=value` after it.
struct Fields<'a> {
    message: &'a mut String,
    rest: String,
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `write!` into a String returns a `Display` error instead of panicking like `format!`.
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::Level;

    /// Collects lines as [`Console`] formats them (the real one writes to stderr).
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            self.0.lock().unwrap().push(line("cairn-node", event));
        }
    }

    fn captured(rust_log: Option<&str>, f: impl FnOnce()) -> Vec<String> {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(filter(rust_log).unwrap())
            .with(Capture(lines.clone()));
        tracing::subscriber::with_default(subscriber, f);
        let out = lines.lock().unwrap().clone();
        out
    }

    #[test]
    fn cairn_lines_are_prefix_and_message_and_fields_follow() {
        let lines = captured(None, || {
            let peer = "12D3KooWpeer";
            tracing::info!(target: "cairn_node::node", "{peer} starting, control /x.sock");
            tracing::warn!(target: "cairn_node::owner", %peer, shard = "ab", "audit failed");
            tracing::debug!(target: "cairn_node::owner", "not at the default level");
            tracing::info!(target: "libp2p_swarm", "not ours: off by default");
        });
        assert_eq!(
            lines,
            [
                "cairn-node: 12D3KooWpeer starting, control /x.sock\n",
                "cairn-node: audit failed peer=12D3KooWpeer shard=ab\n",
            ]
        );
    }

    #[test]
    fn rust_log_replaces_the_default_and_other_crates_name_level_and_target() {
        let lines = captured(Some(" libp2p_kad=debug, ,cairn_node=warn,"), || {
            tracing::debug!(target: "libp2p_kad::behaviour", "bootstrap");
            tracing::debug!(target: "libp2p_swarm", "not asked for");
            tracing::info!(target: "libp2p_kad", peer = "12D3KooWpeer");
            tracing::info!(target: "cairn_node::node", "below warn");
            tracing::warn!(target: "cairn_node::node", "shown");
        });
        assert_eq!(
            lines,
            [
                "cairn-node: DEBUG libp2p_kad::behaviour: bootstrap\n",
                "cairn-node: INFO libp2p_kad: peer=12D3KooWpeer\n",
                "cairn-node: shown\n",
            ]
        );
    }

    #[test]
    fn blank_rust_log_is_the_default_and_a_bad_one_is_an_error() {
        for blank in [None, Some(""), Some(" , ")] {
            let f = filter(blank).unwrap();
            assert!(f.would_enable("cairn_supervisor::runtime", &Level::INFO));
            assert!(!f.would_enable("cairn_supervisor::runtime", &Level::DEBUG));
            assert!(!f.would_enable("libp2p_swarm", &Level::ERROR));
        }
        let e = filter(Some("cairn=loud")).unwrap_err();
        assert!(e.starts_with("\"cairn=loud\": "), "{e}");
    }

    #[test]
    fn a_failing_display_cuts_the_line_short_instead_of_panicking() {
        struct Broken;
        impl std::fmt::Display for Broken {
            fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                Err(std::fmt::Error)
            }
        }
        let lines = captured(None, || {
            tracing::info!(target: "cairn", "before {}", Broken);
        });
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("cairn-node: before"), "{lines:?}");
    }
}
