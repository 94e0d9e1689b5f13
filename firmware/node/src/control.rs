//! The node's local control socket: how the vault, the `cairn node` commands and PID 1 (for the
//! button's pairing window) talk to a running node.
//!
//! One Unix stream socket (mode 0600 in the node's home or where `--control` says). Each message
//! is `u32 LE header length | JSON header | u32 LE payload length | payload`; a request gets
//! exactly one answer of the same shape. The header names the operation (`"op"`); answers carry
//! `"ok": true` or `"ok": false` with `"error"` (one line for a person) and `"missing": true`
//! when a shard is simply not there. Headers are bounded by [`HEADER_BYTES_MAX`] and payloads by the
//! wire's [`SHARD_BYTES_MAX`], checked before anything is allocated.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use cairn_vault::sink::{Served, ShardError, ShardId, ShardSink, ShardSource};
use cairn_vault::OwnerKey;
use serde_json::{json, Value};

use crate::wire::SHARD_BYTES_MAX;

/// Largest JSON header accepted.
pub const HEADER_BYTES_MAX: usize = 64 * 1024;

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be reached or the connection broke.
    #[error("node control socket {path}: {err}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        err: io::Error,
    },
    /// The node refused or failed the request; its one-line reason.
    #[error("{0}")]
    Refused(String),
    /// The shard asked for is not held anywhere the node knows of; where it looked.
    #[error("{0}")]
    Missing(String),
    /// The node answered something this client cannot read.
    #[error("node control socket {0}: malformed answer")]
    Malformed(PathBuf),
}

/// Writes one message.
pub fn write_msg<W: Write>(w: &mut W, header: &Value, payload: &[u8]) -> io::Result<()> {
    let h = serde_json::to_vec(header).map_err(io::Error::other)?;
    if h.len() > HEADER_BYTES_MAX || payload.len() > SHARD_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message too large",
        ));
    }
    let mut buf = Vec::with_capacity(8 + h.len() + payload.len());
    buf.extend_from_slice(&(h.len() as u32).to_le_bytes());
    buf.extend_from_slice(&h);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)
}

/// The header length a message announces, refused over [`HEADER_BYTES_MAX`].
pub fn header_len(raw: [u8; 4]) -> io::Result<usize> {
    let n = u32::from_le_bytes(raw) as usize;
    if n > HEADER_BYTES_MAX {
        return Err(bad(format!(
            "header of {n} bytes (limit {HEADER_BYTES_MAX})"
        )));
    }
    Ok(n)
}

/// The payload length a message announces, refused over [`SHARD_BYTES_MAX`].
pub fn payload_len(raw: [u8; 4]) -> io::Result<usize> {
    let n = u32::from_le_bytes(raw) as usize;
    if n > SHARD_BYTES_MAX {
        return Err(bad(format!(
            "payload of {n} bytes (limit {SHARD_BYTES_MAX})"
        )));
    }
    Ok(n)
}

/// Parses a message's JSON header.
pub fn parse_header(bytes: &[u8]) -> io::Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| bad(format!("header is not JSON: {e}")))
}

/// Reads one message; `Ok(None)` at a clean end of stream. Sizes are checked before allocation.
pub fn read_msg<R: Read>(r: &mut R) -> io::Result<Option<(Value, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut h = vec![0u8; header_len(len)?];
    r.read_exact(&mut h)?;
    let header = parse_header(&h)?;
    r.read_exact(&mut len)?;
    let mut payload = vec![0u8; payload_len(len)?];
    r.read_exact(&mut payload)?;
    Ok(Some((header, payload)))
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// How a pairing attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairOutcome {
    /// Paired with exactly one plug that was in pairing mode too.
    Paired {
        /// Its peer id.
        peer: String,
        /// The six digits both plugs show (`123 456`), for the owners to compare.
        code: String,
    },
    /// One plug was in pairing mode, but it did not confirm (its reveal did not come, or did
    /// not match its probe): refused.
    Unconfirmed {
        /// Its peer id.
        peer: String,
    },
    /// More than one plug was in pairing mode: refused, as nobody can tell which one is meant.
    Overlap {
        /// Their peer ids.
        candidates: Vec<String>,
    },
    /// The window ended with no other plug in pairing mode.
    NoneFound,
}

/// A blocking client of the control socket.
pub struct Client {
    path: PathBuf,
    stream: UnixStream,
}

impl Client {
    /// Connects to the node's socket.
    pub fn connect(path: &Path) -> Result<Client, ControlError> {
        let stream = UnixStream::connect(path).map_err(|err| ControlError::Io {
            path: path.to_owned(),
            err,
        })?;
        Ok(Client {
            path: path.to_owned(),
            stream,
        })
    }

    /// Sends a request and waits for its answer; `Refused` carries the node's reason.
    pub fn call(
        &mut self,
        header: Value,
        payload: &[u8],
    ) -> Result<(Value, Vec<u8>), ControlError> {
        let io = |err| ControlError::Io {
            path: self.path.clone(),
            err,
        };
        write_msg(&mut self.stream, &header, payload).map_err(io)?;
        let (h, p) = read_msg(&mut self.stream)
            .map_err(|err| ControlError::Io {
                path: self.path.clone(),
                err,
            })?
            .ok_or_else(|| ControlError::Io {
                path: self.path.clone(),
                err: io::Error::new(io::ErrorKind::UnexpectedEof, "node closed the connection"),
            })?;
        if h["ok"].as_bool() == Some(true) {
            return Ok((h, p));
        }
        let reason = h["error"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ControlError::Malformed(self.path.clone()))?;
        if h["missing"].as_bool() == Some(true) {
            Err(ControlError::Missing(reason))
        } else {
            Err(ControlError::Refused(reason))
        }
    }

    /// Opens this node's pairing window for `window` and blocks until it pairs, refuses an
    /// overlap, or the window ends.
    pub fn pair(&mut self, window: Duration) -> Result<PairOutcome, ControlError> {
        self.stream
            .set_read_timeout(Some(window + Duration::from_secs(10)))
            .ok();
        let (h, _) = self.call(
            json!({"op": "pair", "window_ms": window.as_millis() as u64}),
            &[],
        )?;
        self.stream.set_read_timeout(None).ok();
        let strs = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        match h["outcome"].as_str() {
            Some("paired") => Ok(PairOutcome::Paired {
                peer: h["peer"].as_str().unwrap_or_default().to_owned(),
                code: h["code"].as_str().unwrap_or_default().to_owned(),
            }),
            Some("unconfirmed") => Ok(PairOutcome::Unconfirmed {
                peer: h["peer"].as_str().unwrap_or_default().to_owned(),
            }),
            Some("overlap") => Ok(PairOutcome::Overlap {
                candidates: strs(&h["candidates"]),
            }),
            Some("none") => Ok(PairOutcome::NoneFound),
            _ => Err(ControlError::Malformed(self.path.clone())),
        }
    }

    /// Forgets partner `peer` (base58): nothing more is placed on it, the next repair round
    /// places the shards it held for us elsewhere, and its own requests are refused. The answer
    /// carries the books as they were (`held_for_us`, `held_for_them`).
    pub fn unpair(&mut self, peer: &str) -> Result<Value, ControlError> {
        self.op(json!({"op": "unpair", "peer": peer}))
    }

    /// Tells every partner this plug's identity is going (before a factory reset destroys
    /// its key), waiting at most `within`; returns how many partners there were and how many
    /// heard it.
    pub fn retire(&mut self, within: Duration) -> Result<(u64, u64), ControlError> {
        self.stream
            .set_read_timeout(Some(within + Duration::from_secs(2)))
            .ok();
        let h = self.op(json!({"op": "retire", "timeout_ms": within.as_millis() as u64}))?;
        self.stream.set_read_timeout(None).ok();
        Ok((
            h["partners"].as_u64().unwrap_or(0),
            h["told"].as_u64().unwrap_or(0),
        ))
    }

    /// Lets the node act for the owner of `owner` (a vault's owner key): signs the statement
    /// naming the node's peer id here, in the caller's process, and hands the node only that.
    /// Its epoch is later than any the node had for the owner (see `identity::next_epoch`), so
    /// holders take this plug as the owner's current one from its first request on.
    /// Returns the owner key in hex, as `put_shard` and `get_shard` name it.
    pub fn register_owner(&mut self, owner: &OwnerKey) -> Result<String, ControlError> {
        let st = self.op(json!({"op": "peer", "owner": hex::encode(owner.public())}))?;
        let peer: libp2p::PeerId = st["peer"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| ControlError::Malformed(self.path.clone()))?;
        // Each statement a later epoch: the newest names the owner's current plug.
        let epoch = crate::identity::next_epoch(st["epoch"].as_u64().unwrap_or(0));
        let sig = owner.sign(&crate::identity::statement(epoch, &peer));
        let h = self.op(json!({
            "op": "owner",
            "owner": hex::encode(owner.public()),
            "epoch": epoch,
            "sig": hex::encode(sig),
        }))?;
        h["owner"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ControlError::Malformed(self.path.clone()))
    }

    /// A simple request with no payload; returns the answer's header.
    pub fn op(&mut self, header: Value) -> Result<Value, ControlError> {
        self.call(header, &[]).map(|(h, _)| h)
    }
}

/// The vault's shard backend through a running node: shards go to partners, not to disk here.
///
/// Keeps a few connections open (one per vault worker thread at most; memory: one socket and
/// no buffers between calls each).
pub struct NodeBackend {
    path: PathBuf,
    /// The owner key (hex) the shards are put and fetched for.
    owner: String,
    pool: Mutex<Vec<Client>>,
}

/// Connections kept for reuse.
const POOL: usize = 8;

impl NodeBackend {
    /// A backend using the node at `path` for the owner of `owner` (registered with the node:
    /// see [`Client::register_owner`]). Several vaults may use one node, each for its owner.
    pub fn new(path: &Path, owner: &OwnerKey) -> Result<Self, ControlError> {
        let mut c = Client::connect(path)?;
        let owner = c.register_owner(owner)?;
        Ok(NodeBackend {
            path: path.to_owned(),
            owner,
            pool: Mutex::new(vec![c]),
        })
    }

    fn with<T>(
        &self,
        id: &ShardId,
        f: impl FnOnce(&mut Client) -> Result<T, ControlError>,
    ) -> Result<T, ShardError> {
        let pooled = self.pool.lock().expect("pool lock").pop();
        let mut c = match pooled {
            Some(c) => c,
            None => Client::connect(&self.path).map_err(|e| self.failed(id, e))?,
        };
        let r = f(&mut c);
        // A broken connection is dropped; a refused request leaves it usable.
        if !matches!(r, Err(ControlError::Io { .. })) {
            let mut pool = self.pool.lock().expect("pool lock");
            if pool.len() < POOL {
                pool.push(c);
            }
        }
        r.map_err(|e| self.failed(id, e))
    }

    fn failed(&self, id: &ShardId, e: ControlError) -> ShardError {
        match e {
            ControlError::Missing(place) => ShardError::Missing { id: *id, place },
            e => ShardError::Failed {
                id: *id,
                place: format!("node {}", self.path.display()),
                reason: e.to_string(),
            },
        }
    }
}

fn chunk_hex(id: &ShardId) -> String {
    crate::records::hex(&id.chunk.0)
}

impl ShardSink for NodeBackend {
    fn put_shard(&self, id: &ShardId, shard: &[u8]) -> Result<(), ShardError> {
        self.with(id, |c| {
            c.call(
                json!({"op": "put_shard", "owner": self.owner, "chunk": chunk_hex(id), "index": id.index}),
                shard,
            )
            .map(|_| ())
        })
    }

    fn flush(&self) -> Result<(), ShardError> {
        let id = ShardId {
            chunk: cairn_vault::ChunkId([0; 32]),
            index: 0,
        };
        self.with(&id, |c| c.op(json!({"op": "flush"})).map(|_| ()))
    }
}

impl ShardSource for NodeBackend {
    fn get_shard(&self, id: &ShardId) -> Result<Vec<u8>, ShardError> {
        self.get_shard_avoiding(id, &[]).map(|s| s.bytes)
    }

    fn get_shard_avoiding(&self, id: &ShardId, avoid: &[String]) -> Result<Served, ShardError> {
        self.with(id, |c| {
            c.call(
                json!({"op": "get_shard", "owner": self.owner, "chunk": chunk_hex(id),
                       "index": id.index, "avoid": avoid}),
                &[],
            )
            .map(|(h, bytes)| Served {
                bytes,
                place: h["from"].as_str().map(str::to_owned),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bounds_hold() {
        let mut buf = Vec::new();
        write_msg(&mut buf, &json!({"op": "x"}), b"abc").unwrap();
        let (h, p) = read_msg(&mut buf.as_slice()).unwrap().unwrap();
        assert_eq!(h["op"], "x");
        assert_eq!(p, b"abc");
        assert!(read_msg(&mut &b""[..]).unwrap().is_none());
        // A 4 GiB header claim is refused from its length alone.
        let e = read_msg(&mut &[0xff, 0xff, 0xff, 0xff, 0][..]).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        let mut big = Vec::new();
        big.extend_from_slice(&2u32.to_le_bytes());
        big.extend_from_slice(b"{}");
        big.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_msg(&mut big.as_slice())
            .unwrap_err()
            .to_string()
            .contains("payload"));
        let mut notjson = Vec::new();
        notjson.extend_from_slice(&3u32.to_le_bytes());
        notjson.extend_from_slice(b"{{{");
        assert!(read_msg(&mut notjson.as_slice()).is_err());
    }

    #[test]
    fn missing_socket_is_an_error_naming_it() {
        let e = Client::connect(Path::new("/nonexistent/node.sock"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent/node.sock"), "{e}");
    }
}
