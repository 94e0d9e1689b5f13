//! PID 1's helper threads (DHCP, power button, LEDs, setup button, front panel, pairing, status
//! LED): how they start, and what a panic on one of them does.
//!
//! Every helper starts with PID 1's handled signals blocked (`spawn`), whichever thread starts
//! it, so only the supervisor's signalfd ever takes SIGCHLD and the reboot/poweroff signals.
//!
//! A panic on a helper is contained to it (`contain`, called by init's panic hook): one
//! `cairn: error:` line on the console, the status LED at error where the board has one, and the
//! thread parks for good. The hook never returns: under the firmware profile's
//! `panic = "abort"` a returning hook would abort PID 1 (and panic the kernel); host builds
//! unwind, and park the same way. Only a panic of the supervisor itself (the main thread, which
//! runs stages 1 to 3) enters the emergency state.
//!
//! Known limit: nothing unwinds, so a lock the helper held when it panicked stays held, and the
//! next thread to take it waits for good (the board UI's lock would freeze the LEDs; a panic
//! inside a console write would hold the console's lock, stalling the next line there).

use super::{console, handled_signals};
use cairn_bsp::linux::BootClock;
use cairn_bsp::{Health, SharedUi};
use nix::sys::signal::SigmaskHow;
use std::panic::PanicHookInfo;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Set once a helper has panicked: the status LED stays at error from then on.
static FAILED: AtomicBool = AtomicBool::new(false);
/// The board's UI once it has started (the device only), for the hook to show the error on.
static UI: Mutex<Option<Arc<SharedUi<BootClock>>>> = Mutex::new(None);

/// Starts a helper thread named `name` with PID 1's handled signals blocked. A new thread
/// inherits its creator's mask, so they are blocked around the spawn and the creator gets its
/// own mask back.
pub(crate) fn spawn(
    name: &str,
    stack: usize,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    let old = handled_signals().thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .stack_size(stack)
        .spawn(f);
    let _ = old.thread_set_mask();
    spawned.map(drop)
}

/// The supervisor's thread is the main one (stages 1 to 3 run on it): its tid is the pid.
pub(crate) fn is_supervisor_thread() -> bool {
    nix::unistd::gettid() == nix::unistd::getpid()
}

/// Whether any helper has panicked.
pub(crate) fn failed() -> bool {
    FAILED.load(Ordering::SeqCst)
}

/// From now on a helper's panic shows on `ui`; one that happened already shows at once.
pub(crate) fn show_failures_on(ui: Arc<SharedUi<BootClock>>) {
    // Decided under the lock, so a panic racing with this is shown either here or by `contain`.
    let failed_already = {
        let mut slot = UI.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(ui.clone());
        failed()
    };
    if failed_already {
        ui.set_health(Health::Error);
    }
}

/// The panic hook on a helper thread: one console line, the status LED at error, then parked
/// for good (see the module's note on locks held).
pub(crate) fn contain(info: &PanicHookInfo<'_>) -> ! {
    let thread = std::thread::current();
    console(&format!(
        "error: helper thread '{}' {}; the thread is stopped, services go on",
        thread.name().unwrap_or("unnamed"),
        describe_panic(info)
    ));
    FAILED.store(true, Ordering::SeqCst);
    let ui = UI.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(ui) = ui {
        ui.set_health(Health::Error);
    }
    loop {
        std::thread::park();
    }
}

/// `panicked: MESSAGE (at FILE:LINE)`, on one line.
pub(crate) fn describe_panic(info: &PanicHookInfo<'_>) -> String {
    let message = info.payload_as_str().unwrap_or("(no message)");
    let at = info
        .location()
        .map(|l| format!(" (at {}:{})", l.file(), l.line()))
        .unwrap_or_default();
    one_line(&format!("panicked: {message}{at}"))
}

/// Line breaks become spaces: a console line is one line.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// Test builds only (feature `test-fixtures`, never the product): with
/// `CAIRN_TEST_PANIC_HELPER_MS=N` in init's environment, a helper thread named `fault-switch`
/// (started like every helper) panics N ms after init starts.
#[cfg(feature = "test-fixtures")]
pub(crate) fn arm_fault_switch() {
    const VAR: &str = "CAIRN_TEST_PANIC_HELPER_MS";
    let Some(value) = std::env::var_os(VAR) else {
        return;
    };
    let Some(ms) = value.to_str().and_then(|v| v.parse::<u64>().ok()) else {
        console(&format!(
            "error: {VAR}={value:?} is not a number of milliseconds; no fault switch"
        ));
        return;
    };
    console(&format!(
        "fault switch: helper thread 'fault-switch' panics in {ms} ms"
    ));
    let spawned = spawn("fault-switch", 64 * 1024, move || {
        std::thread::sleep(std::time::Duration::from_millis(ms));
        panic!("fault switch: a helper panic on purpose");
    });
    if let Err(e) = spawned {
        console(&format!("error: fault-switch thread: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::SigSet;

    #[test]
    fn helpers_start_with_the_handled_signals_blocked_and_the_creator_keeps_its_mask() {
        // The test thread has them unblocked: the helper must not inherit that.
        let before = SigSet::thread_get_mask().unwrap();
        assert!(!before.contains(nix::sys::signal::Signal::SIGCHLD));
        let (tx, rx) = std::sync::mpsc::channel();
        spawn("mask-check", 64 * 1024, move || {
            tx.send(SigSet::thread_get_mask().unwrap()).unwrap();
        })
        .unwrap();
        let mask = rx.recv().unwrap();
        for s in handled_signals().iter() {
            assert!(mask.contains(s), "{s:?} not blocked in the helper");
        }
        assert_eq!(SigSet::thread_get_mask().unwrap(), before);
    }

    #[test]
    fn a_panic_message_is_one_line() {
        assert_eq!(one_line("a\nb\r\nc"), "a b  c");
    }
}
