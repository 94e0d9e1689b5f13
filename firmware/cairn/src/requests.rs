//! PID 1's answers to the board's control requests, which the supervisor passes on (its
//! `Extension`): the web service asks through them whether the device is claimed, completes a
//! claim in the pairing window a button press opened, records the owner's device name, and
//! prints its address and certificate fingerprint on the console.
//!
//! - `board` → `data: {claimed, name, health, window: {id, remaining_ms} | null, last_window}`
//! - `claim` + `window` → completes that window with a claim (refused once claimed, or when
//!   that window is not the open one: a claim needs a press)
//! - `refuse` + `window` → the web refused the claim in that window (more than one browser
//!   waited for the press): the window closes without a claim, so the press the page asks for
//!   next opens a new one (refused once claimed: windows are then for friends' plugs)
//! - `claimed` + `name` → after a granted claim (or to rename a claimed device): writes the
//!   `CLAIMED` marker holding the name, sets the hostname, and the LED leaves "setup needed"
//! - `say` + `text` → one console line `cairn: USER: TEXT`
//! - `reset` → once claimed, the next short press within [`RESET_ARM_MS`] wipes the device
//!   (the web asks after checking the owner's passphrase: passphrase and press together)
//! - `pair` → once claimed, opens the pairing window as a short press does and asks the node
//!   to pair in it (the owner's page instead of a trip to the plug); `board` then carries
//!   `pairing: {busy, last}`, how the attempt goes and how the last one ended
//!
//! Which service may make which request is its manifest's `control` list (the supervisor
//! checks); everything here runs on the supervisor's loop, so nothing blocks.

use crate::board::{BoardUi, CLAIMED};
use crate::sys::log;
use cairn_bsp::{Completion, Health, WindowStatus};
use cairn_supervisor::proto::{Request, Response};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A granted claim whose setup has not finished yet (the owner still confirms the recovery
/// key): kept on the data partition, so that a reboot in between does not ask for the press
/// again. Removed when `claimed` writes the claim marker.
pub const GRANTED: &str = "cairn/granted";

/// How long a factory reset from the page waits for the press.
pub const RESET_ARM_MS: u64 = 60_000;

/// Longest console line a service may print (characters).
const SAY_CHARS_MAX: usize = 300;

/// The supervisor extension answering the board's requests.
pub fn extension(board: BoardUi) -> cairn_supervisor::Extension {
    let granted = Arc::new(AtomicBool::new(false));
    cairn_supervisor::Extension(Arc::new(move |req: &Request, asker: Option<&str>| {
        answer(&board, &granted, req, asker)
    }))
}

fn answer(
    board: &BoardUi,
    granted: &AtomicBool,
    req: &Request,
    asker: Option<&str>,
) -> Option<Response> {
    let data_dir = board.data_dir();
    Some(match req.cmd.as_str() {
        "board" => {
            let window = match board.ui.pairing_status() {
                WindowStatus::Open { id, remaining_ms } => {
                    serde_json::json!({ "id": id, "remaining_ms": remaining_ms })
                }
                WindowStatus::Closed => serde_json::Value::Null,
            };
            let name = claimed_name(data_dir);
            Response {
                data: Some(serde_json::json!({
                    "claimed": name.is_some(),
                    "name": name,
                    "health": health_name(board.ui.health()),
                    "window": window,
                    "last_window": board.ui.last_window(),
                    "pairing": {
                        "busy": board.pairing().busy(),
                        "last": board.pairing().last(),
                    },
                })),
                ..Response::ok("")
            }
        }
        "claim" => {
            let Some(id) = req.window else {
                return Some(Response::error("claim: which pairing window? (window)"));
            };
            if claimed_name(data_dir).is_some() {
                return Some(Response::error("this device already has an owner"));
            }
            match board.ui.complete_window(id, Completion::Claim) {
                Ok(_) => {
                    granted.store(true, Ordering::SeqCst);
                    if let Err(e) = write_marker(&data_dir.join(GRANTED), "") {
                        log!("error: {e}; a reboot before setup ends asks for the press again");
                    }
                    log!("setup: claimed from the setup page (pairing window {id})");
                    Response::ok(&format!("claimed in pairing window {id}"))
                }
                Err(e) => Response::error(&e.to_string()),
            }
        }
        "refuse" => {
            let Some(id) = req.window else {
                return Some(Response::error("refuse: which pairing window? (window)"));
            };
            if claimed_name(data_dir).is_some() {
                return Some(Response::error("this device already has an owner"));
            }
            match board.ui.refuse_window(id) {
                Ok(_) => {
                    log!(
                        "button: pairing window {id} closed: more than one browser was waiting \
                         to set the device up"
                    );
                    Response::ok(&format!("pairing window {id} closed"))
                }
                Err(e) => Response::error(&e.to_string()),
            }
        }
        "claimed" => {
            let Some(name) = req.name.as_deref() else {
                return Some(Response::error(
                    "claimed: the device's name is missing (name)",
                ));
            };
            if let Err(e) = check_name(name) {
                return Some(Response::error(&e));
            }
            let before = claimed_name(data_dir);
            let was_granted = granted.load(Ordering::SeqCst) || data_dir.join(GRANTED).exists();
            if before.is_none() && !was_granted {
                return Some(Response::error(
                    "no claim was granted: press the device's button while the setup page waits",
                ));
            }
            if let Err(e) = write_marker(&data_dir.join(CLAIMED), name) {
                return Some(Response::error(&e));
            }
            // The claim marker stands for it now.
            let _ = std::fs::remove_file(data_dir.join(GRANTED));
            if board.sets_hostname() {
                if let Err(e) = nix::unistd::sethostname(name) {
                    log!("error: sethostname {name}: {e}");
                }
            }
            if board.ui.health() == Health::SetupNeeded {
                board.ui.set_health(Health::Healthy);
            }
            if before.is_none() {
                log!("setup: done; this device is {name}");
            }
            Response::ok(&format!("this device is {name}"))
        }
        "reset" => {
            if claimed_name(data_dir).is_none() {
                return Some(Response::error(
                    "this device is not set up: a factory reset is for its owner",
                ));
            }
            board.arm_reset(RESET_ARM_MS);
            log!(
                "factory reset: asked from the owner's page; a short press within {} s wipes \
                 the device",
                RESET_ARM_MS / 1000
            );
            Response::ok(&format!(
                "press the device's button within {} s to wipe it",
                RESET_ARM_MS / 1000
            ))
        }
        "pair" => {
            if claimed_name(data_dir).is_none() {
                return Some(Response::error(
                    "this device is not set up yet: its first pairing window is for the claim",
                ));
            }
            match board.open_pairing() {
                Ok(left) => {
                    log!(
                        "pairing: window open for {} s, from the owner's page",
                        left.div_ceil(1000)
                    );
                    Response::ok(&format!(
                        "pairing window open for {} s: press the other plug's button",
                        left.div_ceil(1000)
                    ))
                }
                Err(e) => Response::error(&e),
            }
        }
        "say" => {
            let text: String = req
                .text
                .as_deref()
                .unwrap_or("")
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(SAY_CHARS_MAX)
                .collect();
            log!("{}: {text}", asker.unwrap_or("root"));
            Response::ok("")
        }
        _ => return None,
    })
}

/// The owner's name for the device, once claimed (the `CLAIMED` marker's content).
pub fn claimed_name(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join(CLAIMED)).ok()?;
    let name = text.trim();
    // A marker from before names were kept still means "claimed".
    Some(if check_name(name).is_ok() {
        name.to_string()
    } else {
        String::new()
    })
}

/// A device name is a hostname label: 1–63 lowercase letters, digits and inner hyphens.
fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a device name (1 to 63 lowercase letters, digits and inner hyphens)"
        ))
    }
}

/// Writes the marker so that a power cut leaves the old one or the new one, never a torn one.
fn write_marker(path: &Path, name: &str) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    cairn_durable::write_mode(path, format!("{name}\n").as_bytes(), 0o644).map_err(err)
}

/// The health as the `board` answer names it.
fn health_name(h: Health) -> &'static str {
    match h {
        Health::Booting => "booting",
        Health::SetupNeeded => "setup-needed",
        Health::Healthy => "healthy",
        Health::Degraded => "degraded",
        Health::Error => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_bsp::linux::BootClock;
    use cairn_bsp::{ButtonEvent, SharedUi, Ui, UiConfig};

    /// A node double that finds nobody (answers at once).
    struct Nobody;

    impl crate::board::Pairer for Nobody {
        fn pair(&self, _: std::time::Duration) -> Result<cairn_node::control::PairOutcome, String> {
            Ok(cairn_node::control::PairOutcome::NoneFound)
        }
    }

    fn board(dir: &Path) -> BoardUi {
        let ui = Arc::new(SharedUi::new(Ui::new(UiConfig::default()), BootClock));
        ui.set_health(Health::SetupNeeded);
        BoardUi::new(ui, dir.to_path_buf(), Arc::new(Nobody))
    }

    fn ask(x: &cairn_supervisor::Extension, req: serde_json::Value) -> serde_json::Value {
        let req: Request = serde_json::from_value(req).unwrap();
        serde_json::to_value((x.0)(&req, Some("web")).expect("answered")).unwrap()
    }

    #[test]
    fn a_claim_needs_the_press_and_the_name_needs_the_claim() {
        let dir = tempfile::tempdir().unwrap();
        let b = board(dir.path());
        let x = extension(b.clone());
        let state = ask(&x, serde_json::json!({"cmd": "board"}));
        assert_eq!(state["data"]["claimed"], false);
        assert_eq!(state["data"]["window"], serde_json::Value::Null);
        assert_eq!(state["data"]["last_window"], 0);
        assert_eq!(state["data"]["health"], "setup-needed");

        let r = ask(&x, serde_json::json!({"cmd": "claim", "window": 1}));
        assert_eq!(r["ok"], false, "no press, no claim: {r}");
        let r = ask(&x, serde_json::json!({"cmd": "claimed", "name": "attic"}));
        assert_eq!(r["ok"], false, "no claim, no owner: {r}");
        assert!(!dir.path().join(CLAIMED).exists());

        b.ui.on_button(ButtonEvent::ShortPress);
        let state = ask(&x, serde_json::json!({"cmd": "board"}));
        assert_eq!(state["data"]["window"]["id"], 1);
        assert_eq!(state["data"]["last_window"], 1);
        let r = ask(&x, serde_json::json!({"cmd": "claim", "window": 2}));
        assert_eq!(r["ok"], false, "another window's claim: {r}");
        let r = ask(&x, serde_json::json!({"cmd": "claim", "window": 1}));
        assert_eq!(r["ok"], true, "{r}");

        let r = ask(
            &x,
            serde_json::json!({"cmd": "claimed", "name": "<script>"}),
        );
        assert_eq!(r["ok"], false, "{r}");
        let r = ask(&x, serde_json::json!({"cmd": "claimed", "name": "attic"}));
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(claimed_name(dir.path()).as_deref(), Some("attic"));
        assert_eq!(b.ui.health(), Health::Healthy);
        let state = ask(&x, serde_json::json!({"cmd": "board"}));
        assert_eq!(state["data"]["claimed"], true);
        assert_eq!(state["data"]["name"], "attic");

        b.ui.on_button(ButtonEvent::ShortPress);
        let r = ask(&x, serde_json::json!({"cmd": "claim", "window": 2}));
        assert_eq!(r["ok"], false, "a second claim after the owner's: {r}");
        assert!(r["error"]
            .as_str()
            .unwrap()
            .contains("already has an owner"));
    }

    #[test]
    fn a_refused_claim_closes_its_window_for_the_next_press() {
        let dir = tempfile::tempdir().unwrap();
        let b = board(dir.path());
        let x = extension(b.clone());
        let r = ask(&x, serde_json::json!({"cmd": "refuse", "window": 1}));
        assert_eq!(r["ok"], false, "no window is open: {r}");
        let r = ask(&x, serde_json::json!({"cmd": "refuse"}));
        assert_eq!(r["ok"], false, "{r}");

        b.ui.on_button(ButtonEvent::ShortPress);
        let r = ask(&x, serde_json::json!({"cmd": "refuse", "window": 1}));
        assert_eq!(r["ok"], true, "{r}");
        let state = ask(&x, serde_json::json!({"cmd": "board"}));
        assert_eq!(state["data"]["window"], serde_json::Value::Null);
        assert_eq!(b.ui.pattern().0, cairn_bsp::Pattern::SetupNeeded);
        let r = ask(&x, serde_json::json!({"cmd": "claim", "window": 1}));
        assert_eq!(r["ok"], false, "a refused window grants nothing: {r}");
        let r = ask(&x, serde_json::json!({"cmd": "claimed", "name": "attic"}));
        assert_eq!(r["ok"], false, "{r}");

        // The next press: a new window, and its claim goes through.
        b.ui.on_button(ButtonEvent::ShortPress);
        let state = ask(&x, serde_json::json!({"cmd": "board"}));
        assert_eq!(state["data"]["window"]["id"], 2);
        let r = ask(&x, serde_json::json!({"cmd": "claim", "window": 2}));
        assert_eq!(r["ok"], true, "{r}");
        let r = ask(&x, serde_json::json!({"cmd": "claimed", "name": "attic"}));
        assert_eq!(r["ok"], true, "{r}");

        // Once claimed, windows are for friends' plugs: the web cannot close them.
        b.ui.on_button(ButtonEvent::ShortPress);
        let r = ask(&x, serde_json::json!({"cmd": "refuse", "window": 3}));
        assert_eq!(r["ok"], false, "{r}");
        assert!(matches!(
            b.ui.pairing_status(),
            cairn_bsp::WindowStatus::Open { id: 3, .. }
        ));
    }

    #[test]
    fn the_owners_page_opens_the_pairing_window_once_claimed_and_hears_how_it_ended() {
        let dir = tempfile::tempdir().unwrap();
        let b = board(dir.path());
        let x = extension(b.clone());
        let a = ask(&x, serde_json::json!({"cmd": "pair"}));
        assert_eq!(a["ok"], false);
        assert!(
            a["error"].as_str().unwrap().contains("not set up yet"),
            "{a}"
        );
        assert_eq!(b.ui.pairing_status(), WindowStatus::Closed);
        write_marker(&dir.path().join(CLAIMED), "attic").unwrap();
        let a = ask(&x, serde_json::json!({"cmd": "pair"}));
        assert_eq!(a["ok"], true, "{a}");
        assert!(matches!(b.ui.pairing_status(), WindowStatus::Open { .. }));
        // A second click while it is open: refused, with the time left.
        let a = ask(&x, serde_json::json!({"cmd": "pair"}));
        assert!(a["error"].as_str().unwrap().contains("already open"), "{a}");
        // The node found nobody: `board` says so once the attempt has ended.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let last = loop {
            let a = ask(&x, serde_json::json!({"cmd": "board"}));
            if a["data"]["pairing"]["busy"] == false && !a["data"]["pairing"]["last"].is_null() {
                break a["data"]["pairing"]["last"].clone();
            }
            assert!(std::time::Instant::now() < deadline, "{a}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(last, "no other plug in pairing mode on this network");
    }

    #[test]
    fn a_granted_claim_outlives_a_reboot_until_setup_ends() {
        let dir = tempfile::tempdir().unwrap();
        let b = board(dir.path());
        b.ui.on_button(ButtonEvent::ShortPress);
        let r = ask(
            &extension(b),
            serde_json::json!({"cmd": "claim", "window": 1}),
        );
        assert_eq!(r["ok"], true, "{r}");
        assert!(dir.path().join(GRANTED).exists());
        // PID 1 anew (a reboot before the owner confirmed the recovery key): no press needed.
        let x = extension(board(dir.path()));
        let r = ask(&x, serde_json::json!({"cmd": "claimed", "name": "attic"}));
        assert_eq!(r["ok"], true, "{r}");
        assert!(!dir.path().join(GRANTED).exists());
        assert_eq!(claimed_name(dir.path()).as_deref(), Some("attic"));
    }

    #[test]
    fn a_reset_from_the_page_needs_an_owner_and_waits_for_one_press() {
        let dir = tempfile::tempdir().unwrap();
        let b = board(dir.path());
        let x = extension(b.clone());
        let r = ask(&x, serde_json::json!({"cmd": "reset"}));
        assert_eq!(r["ok"], false, "{r}");
        assert!(!b.take_reset(), "not armed for a device nobody owns");
        write_marker(&dir.path().join(CLAIMED), "attic").unwrap();
        let r = ask(&x, serde_json::json!({"cmd": "reset"}));
        assert_eq!(r["ok"], true, "{r}");
        // The press takes it; a second press is an ordinary one again.
        assert!(b.take_reset());
        assert!(!b.take_reset());
        // Expired: the press is an ordinary one.
        b.arm_reset(0);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(!b.take_reset());
    }

    #[test]
    fn unknown_commands_are_left_to_the_supervisor() {
        let dir = tempfile::tempdir().unwrap();
        let x = extension(board(dir.path()));
        let req = Request {
            cmd: "frobnicate".into(),
            ..Request::default()
        };
        assert!((x.0)(&req, None).is_none());
    }
}
