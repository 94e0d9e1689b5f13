//! The control protocol between `cairn ctl` and the supervisor: one JSON request line, one JSON
//! response line, then (for `logs`) the log text until the connection closes.

use crate::machine::ServiceStatus;
use serde::{Deserialize, Serialize};

/// A client's request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// `status`, `start`, `stop`, `restart`, `logs`, `save-logs`, `poweroff` or `reboot`.
    pub cmd: String,
    /// The service, for commands about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// For `logs`: keep the connection and send new lines as they come.
    #[serde(default)]
    pub follow: bool,
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
