//! The control protocol between `cairn ctl` (or a service allowed to ask) and the supervisor: one
//! JSON request line, one JSON response line, then (for `logs`) the log text until the
//! connection closes.
//!
//! Besides the supervisor's own commands, PID 1 answers the board's (`board`, `claim`,
//! `claimed`) through an extension the binary installs; their answers carry `data`.

use crate::machine::ServiceStatus;
use serde::{Deserialize, Serialize};

/// A client's request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// `status`, `start`, `stop`, `restart`, `logs`, `save-logs`, `poweroff` or `reboot`; or
    /// one of the board's: `board` (claimed?, health, the pairing window), `claim` (complete a
    /// claim in the open window `window`), `refuse` (close window `window`: its claim was
    /// refused), `claimed` (setup finished: the device is `name`), `say` (print `text` on the console).
    pub cmd: String,
    /// The service, for commands about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// For `logs`: keep the connection and send new lines as they come.
    #[serde(default)]
    pub follow: bool,
    /// For `claim` and `refuse`: the pairing window the claim belongs to (a later window
    /// refuses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    /// For `claimed`: the device's name (its hostname and `NAME.local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// For `say`: one line for PID 1 to print on the console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// The supervisor's answer line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// What happened (on success).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What went wrong (on failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceStatus>>,
    /// For `logs`: lines dropped from the ring so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    /// The answer to an extension's command (e.g. `board`), as that command defines it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Response {
    /// Success with a message (empty: none).
    pub fn ok(message: &str) -> Self {
        Response {
            ok: true,
            message: (!message.is_empty()).then(|| message.to_string()),
            ..Default::default()
        }
    }

    /// Failure.
    pub fn error(error: &str) -> Self {
        Response {
            ok: false,
            error: Some(error.to_string()),
            ..Default::default()
        }
    }
}

impl From<Result<String, String>> for Response {
    fn from(r: Result<String, String>) -> Self {
        match r {
            Ok(m) => Response::ok(&m),
            Err(e) => Response::error(&e),
        }
    }
}
