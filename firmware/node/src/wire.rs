//! The shard protocol's wire codec: compact, versioned, length-bounded binary frames.
//!
//! Every frame is a fixed 10-byte header — version (u8), kind (u8), request id (u32 LE), body
//! length (u32 LE) — followed by the body. The header is checked on its own
//! ([`parse_header`]) so that a stream reader validates the declared length against the bound for
//! that kind *before* it allocates a buffer for the body; a hostile peer can therefore make us
//! allocate at most [`FRAME_BYTES_MAX`] bytes per frame in flight. Shard bytes are the only variable
//! payload (≤ [`SHARD_BYTES_MAX`]), plus a short error reason (≤ [`REASON_BYTES_MAX`]).
//!
//! Every request but `Pair` opens its body with an [`OwnerAuth`] (104 bytes): the owner it is
//! made for, the statement's epoch and the owner's signature binding both to the sender's peer id. Holders keep shards apart by
//! owner and serve an owner's shards only to requests made for it (see `holder`).

use thiserror::Error;

/// Protocol version spoken by this node; frames with any other version are refused (version 2:
/// requests carry the owner's statement; 3: the statement carries an epoch, and a holder
/// reports the shards its scrub dropped, `LostQuery`/`Lost`).
pub const VERSION: u8 = 3;
/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 10;
/// Largest shard carried in one frame (6 MiB).
pub const SHARD_BYTES_MAX: usize = 6 * 1024 * 1024;
/// Longest error reason, in bytes of UTF-8.
pub const REASON_BYTES_MAX: usize = 256;
/// Largest body of any frame: a shard plus the owner's statement, its id and lease.
pub const BODY_BYTES_MAX: usize = OWNER_AUTH_LEN + SHARD_ID_LEN + 4 + SHARD_BYTES_MAX;
/// Largest complete frame: the most a reader ever buffers for one frame.
pub const FRAME_BYTES_MAX: usize = HEADER_LEN + BODY_BYTES_MAX;
/// Length of a shard identifier, in bytes.
pub const SHARD_ID_LEN: usize = 32;
/// Length of an [`OwnerAuth`] on the wire.
pub const OWNER_AUTH_LEN: usize = 32 + 8 + 64;

/// The owner a request is made for: its Ed25519 public key (derived from the owner's secret,
/// see `cairn_vault::keys::OwnerKey`) and its signature over the epoch and the sender's peer id
/// (`identity::statement`). Holders check the signature against the connection's peer id
/// (authenticated by Noise), so a statement is useless to any other peer; a statement of a
/// higher epoch for another plug supersedes it (`holder::admit`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerAuth {
    /// The owner's public key.
    pub owner: [u8; 32],
    /// The statement's epoch: the owner's newest statement names its current plug.
    pub epoch: u64,
    /// Its signature over the statement naming the sender's peer id.
    pub sig: [u8; 64],
}

impl std::fmt::Debug for OwnerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OwnerAuth({}, epoch {})",
            hex::encode(&self.owner[..8]),
            self.epoch
        )
    }
}

/// A shard's identifier on the network. The vault's shards are stored under a key derived from
/// their chunk id and index (`records::shard_key`), checked against the shard's own header
/// (`records::check_vault_shard`); [`ShardId::of`] and [`check_shard`] serve content-addressed
/// shards (audit tests, the wire's own tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub [u8; SHARD_ID_LEN]);

impl ShardId {
    /// The identifier of `bytes` (their BLAKE3 hash).
    pub fn of(bytes: &[u8]) -> Self {
        ShardId(*blake3::hash(bytes).as_bytes())
    }
}

/// Refuses shard bytes that do not hash to the id they were sent under.
pub fn check_shard(shard: &ShardId, data: &[u8]) -> Result<(), WireError> {
    let actual = ShardId::of(data);
    if actual != *shard {
        return Err(WireError::HashMismatch {
            shard: *shard,
            actual,
        });
    }
    Ok(())
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why a peer refused a request; travels in an [`Msg::Error`] reply with a human reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorCode {
    /// The owner already uses more than it contributes (plus allowance).
    QuotaExceeded = 1,
    /// No such shard here.
    NotFound = 2,
    /// The shard's bytes do not hash to its id.
    HashMismatch = 3,
    /// A request was too large or the store is full.
    TooLarge = 4,
    /// The request was malformed or not allowed.
    BadRequest = 5,
    /// Too many requests in flight; retry later.
    Busy = 6,
    /// The node failed internally (e.g. storage I/O).
    Internal = 7,
}

impl ErrorCode {
    fn from_u8(b: u8) -> Result<Self, WireError> {
        Ok(match b {
            1 => Self::QuotaExceeded,
            2 => Self::NotFound,
            3 => Self::HashMismatch,
            4 => Self::TooLarge,
            5 => Self::BadRequest,
            6 => Self::Busy,
            7 => Self::Internal,
            other => return Err(WireError::UnknownErrorCode(other)),
        })
    }
}

/// One protocol message; requests and their replies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// Store `data` as shard `shard` for `lease_secs` seconds.
    Put {
        /// The shard's id.
        shard: ShardId,
        /// How long to keep it, in seconds from now.
        lease_secs: u32,
        /// The shard's bytes (at most [`SHARD_BYTES_MAX`]).
        data: Vec<u8>,
    },
    /// Fetch a shard's bytes.
    Get {
        /// The shard wanted.
        shard: ShardId,
    },
    /// Drop a shard (only its owner may).
    Delete {
        /// The shard to drop.
        shard: ShardId,
    },
    /// Extend a shard's lease to `lease_secs` from now.
    RenewLease {
        /// The shard whose lease is extended.
        shard: ShardId,
        /// The new lease, in seconds from now.
        lease_secs: u32,
    },
    /// Prove possession: keyed hash over `len` bytes at `offset` of `shard`, keyed by `nonce`.
    AuditChallenge {
        /// The shard challenged.
        shard: ShardId,
        /// Fresh randomness, the key of the hash.
        nonce: [u8; 32],
        /// Start of the range hashed.
        offset: u64,
        /// Length of the range hashed.
        len: u32,
    },
    /// Ask how much space the peer has free and offers.
    FreeSpaceQuery,
    /// Ask which of the shards we put the peer has lost since we last asked (its scrub found
    /// them damaged and dropped them).
    LostQuery,
    /// Ask to become partners: during both plugs' pairing windows (`mode` [`PAIR_WINDOW`],
    /// `secret` zero) or with an invitation's one-time secret (`mode` [`PAIR_INVITE`]).
    Pair {
        /// [`PAIR_WINDOW`] or [`PAIR_INVITE`].
        mode: u8,
        /// The invitation's secret; for the pairing window the commitment to the session's
        /// nonce, then the nonce itself ([`PAIR_REVEAL`]).
        secret: [u8; 16],
    },
    /// Reply to `Put`: the shard is durably stored.
    Stored {
        /// The shard stored.
        shard: ShardId,
    },
    /// Reply to `Get`: the shard's bytes.
    ShardData {
        /// The shard fetched.
        shard: ShardId,
        /// Its bytes.
        data: Vec<u8>,
    },
    /// Reply to `Delete`.
    Deleted {
        /// The shard dropped.
        shard: ShardId,
    },
    /// Reply to `RenewLease`: seconds until the lease now expires.
    LeaseRenewed {
        /// The shard whose lease was extended.
        shard: ShardId,
        /// Seconds until the lease now expires.
        lease_secs: u32,
    },
    /// Reply to `AuditChallenge`.
    AuditResponse {
        /// The shard challenged.
        shard: ShardId,
        /// The keyed hash over the challenged range.
        proof: [u8; 32],
    },
    /// Reply to `FreeSpaceQuery`, in bytes.
    FreeSpace {
        /// Bytes the peer would store for us now (its free space, capped by our quota).
        free: u64,
        /// Bytes the peer offers to all its partners together.
        offered: u64,
    },
    /// A refusal with its reason.
    Error {
        /// What kind of refusal.
        code: ErrorCode,
        /// Why, for people (at most [`REASON_BYTES_MAX`] bytes).
        reason: String,
    },
    /// Reply to `LostQuery`: the chunk-store ids (`records::held_id`, per owner) of the shards
    /// dropped since, at most [`LOST_MAX`]; the holder forgets them once told.
    Lost {
        /// The ids of the shards lost.
        ids: Vec<ShardId>,
    },
    /// Reply to `Pair`: the peer recorded us as a partner.
    Paired,
    /// The sender's identity is being destroyed (a factory reset): it is no partner of ours
    /// from now on. Only the holder of the identity's key can send it (Noise authenticates it).
    Retire,
    /// Reply to `Retire`: the peer forgot us as a partner.
    Retired,
}

/// [`Msg::Pair`] mode: both plugs' pairing windows are open.
pub const PAIR_WINDOW: u8 = 1;
/// [`Msg::Pair`] mode: the secret of an invitation code.
pub const PAIR_INVITE: u8 = 2;
/// [`Msg::Pair`] mode: the button session's nonce, revealed to the one candidate (its probe
/// carried the commitment).
pub const PAIR_REVEAL: u8 = 3;

/// A message with the request id that pairs a reply with its request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Chosen by the requester; echoed in the reply.
    pub id: u32,
    /// The owner a request is made for: present on every request but `Pair`, on nothing else.
    pub auth: Option<OwnerAuth>,
    /// The message.
    pub msg: Msg,
}

/// A frame header, validated: the body length is within the bound for its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message kind byte.
    pub kind: u8,
    /// Request id.
    pub id: u32,
    /// Body length in bytes (already checked against the kind's bound).
    pub body_len: usize,
}

/// Why a frame was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the frame needs.
    #[error("truncated frame: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the frame needs.
        need: usize,
        /// Bytes there are.
        have: usize,
    },
    /// A protocol version this node does not speak.
    #[error("unsupported protocol version {0} (this node speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// A kind byte that names no message.
    #[error("unknown message kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A declared or actual length over the bound for its kind.
    #[error("{kind} frame too large: {len} bytes, limit {max}")]
    Oversized {
        /// The message kind's name.
        kind: &'static str,
        /// The length declared or found.
        len: usize,
        /// The bound for the kind.
        max: usize,
    },
    /// A fixed-size body of the wrong length.
    #[error("{kind} frame body has {len} bytes, expected {expected}")]
    BadLength {
        /// The message kind's name.
        kind: &'static str,
        /// The body's length.
        len: usize,
        /// The kind's fixed body length.
        expected: usize,
    },
    /// An error reply with an unknown code.
    #[error("unknown error code {0}")]
    UnknownErrorCode(u8),
    /// An error reason that is not UTF-8.
    #[error("error reason is not valid UTF-8")]
    BadReason,
    /// Shard bytes that do not match their id.
    #[error("shard {shard}: bytes hash to {actual}, not to the shard's id")]
    HashMismatch {
        /// The id the bytes were sent under.
        shard: ShardId,
        /// The id the bytes hash to.
        actual: ShardId,
    },
    /// Bytes left after a complete frame where exactly one was expected.
    #[error("{0} unexpected bytes after the frame")]
    Trailing(usize),
    /// A request without the owner's statement it needs.
    #[error("a {0} request needs the owner's statement")]
    MissingOwner(&'static str),
    /// An owner's statement on a frame that carries none.
    #[error("a {0} frame carries no owner's statement")]
    StrayOwner(&'static str),
}

/// Body shape per kind: fixed length, or variable with a maximum and a fixed prefix.
enum Shape {
    Fixed(usize),
    Var { min: usize, max: usize },
}

const K_PUT: u8 = 0x01;
const K_GET: u8 = 0x02;
const K_DELETE: u8 = 0x03;
const K_RENEW: u8 = 0x04;
const K_AUDIT: u8 = 0x05;
const K_FREE_Q: u8 = 0x06;
const K_PAIR: u8 = 0x07;
const K_LOST_Q: u8 = 0x08;
const K_RETIRE: u8 = 0x0f;
const K_STORED: u8 = 0x81;
const K_DATA: u8 = 0x82;
const K_DELETED: u8 = 0x83;
const K_RENEWED: u8 = 0x84;
const K_PROOF: u8 = 0x85;
const K_FREE: u8 = 0x86;
const K_ERROR: u8 = 0x87;
const K_PAIRED: u8 = 0x88;
const K_LOST: u8 = 0x89;
const K_RETIRED: u8 = 0x8f;

/// Most shard ids one [`Msg::Lost`] reply carries.
pub const LOST_MAX: usize = 64;

fn shape(kind: u8) -> Result<(&'static str, Shape), WireError> {
    const S: usize = SHARD_ID_LEN;
    Ok(match kind {
        K_PUT => (
            "put",
            Shape::Var {
                min: S + 4,
                max: S + 4 + SHARD_BYTES_MAX,
            },
        ),
        K_GET => ("get", Shape::Fixed(S)),
        K_DELETE => ("delete", Shape::Fixed(S)),
        K_RENEW => ("renew-lease", Shape::Fixed(S + 4)),
        K_AUDIT => ("audit-challenge", Shape::Fixed(S + 32 + 8 + 4)),
        K_FREE_Q => ("free-space-query", Shape::Fixed(0)),
        K_LOST_Q => ("lost-query", Shape::Fixed(0)),
        K_LOST => (
            "lost",
            Shape::Var {
                min: 0,
                max: LOST_MAX * S,
            },
        ),
        K_PAIR => ("pair", Shape::Fixed(17)),
        K_PAIRED => ("paired", Shape::Fixed(0)),
        K_RETIRE => ("retire", Shape::Fixed(0)),
        K_RETIRED => ("retired", Shape::Fixed(0)),
        K_STORED => ("stored", Shape::Fixed(S)),
        K_DATA => (
            "shard-data",
            Shape::Var {
                min: S,
                max: S + SHARD_BYTES_MAX,
            },
        ),
        K_DELETED => ("deleted", Shape::Fixed(S)),
        K_RENEWED => ("lease-renewed", Shape::Fixed(S + 4)),
        K_PROOF => ("audit-response", Shape::Fixed(S + 32)),
        K_FREE => ("free-space", Shape::Fixed(16)),
        K_ERROR => (
            "error",
            Shape::Var {
                min: 1,
                max: 1 + REASON_BYTES_MAX,
            },
        ),
        other => return Err(WireError::UnknownKind(other)),
    })
}

/// Whether frames of `kind` open with an [`OwnerAuth`]: every request but `Pair` and
/// `Retire` (which concern the peer itself, not an owner).
fn authed(kind: u8) -> bool {
    kind < 0x80 && kind != K_PAIR && kind != K_RETIRE
}

/// The body shape of `kind`, the owner's statement included.
fn full_shape(kind: u8) -> Result<(&'static str, Shape), WireError> {
    let (name, s) = shape(kind)?;
    if !authed(kind) {
        return Ok((name, s));
    }
    Ok((
        name,
        match s {
            Shape::Fixed(n) => Shape::Fixed(n + OWNER_AUTH_LEN),
            Shape::Var { min, max } => Shape::Var {
                min: min + OWNER_AUTH_LEN,
                max: max + OWNER_AUTH_LEN,
            },
        },
    ))
}

fn check_len(kind: u8, len: usize) -> Result<(), WireError> {
    let (name, s) = full_shape(kind)?;
    match s {
        Shape::Fixed(expected) if len != expected => Err(WireError::BadLength {
            kind: name,
            len,
            expected,
        }),
        Shape::Var { max, .. } if len > max => Err(WireError::Oversized {
            kind: name,
            len,
            max,
        }),
        Shape::Var { min, .. } if len < min => Err(WireError::BadLength {
            kind: name,
            len,
            expected: min,
        }),
        _ => Ok(()),
    }
}

/// Validates a frame header: version, kind, and body length against the kind's bound.
///
/// Call this on the first [`HEADER_LEN`] bytes before allocating the body buffer.
pub fn parse_header(buf: &[u8]) -> Result<Header, WireError> {
    if buf.len() < HEADER_LEN {
        return Err(WireError::Truncated {
            need: HEADER_LEN,
            have: buf.len(),
        });
    }
    if buf[0] != VERSION {
        return Err(WireError::UnsupportedVersion(buf[0]));
    }
    let kind = buf[1];
    let id = u32::from_le_bytes([buf[2], buf[3], buf[4], buf[5]]);
    let body_len = u32::from_le_bytes([buf[6], buf[7], buf[8], buf[9]]) as usize;
    check_len(kind, body_len)?;
    Ok(Header { kind, id, body_len })
}

/// Reads fixed-size fields from a body whose length was already validated.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        out
    }
    fn shard(&mut self) -> ShardId {
        ShardId(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn rest(self) -> &'a [u8] {
        self.0
    }
}

impl Frame {
    /// Decodes one frame from the front of `buf`; returns it and the bytes consumed.
    pub fn decode(buf: &[u8]) -> Result<(Frame, usize), WireError> {
        let h = parse_header(buf)?;
        let total = HEADER_LEN + h.body_len;
        if buf.len() < total {
            return Err(WireError::Truncated {
                need: total,
                have: buf.len(),
            });
        }
        let (auth, msg) = decode_body(h.kind, &buf[HEADER_LEN..total])?;
        Ok((
            Frame {
                id: h.id,
                auth,
                msg,
            },
            total,
        ))
    }

    /// Decodes exactly one frame; trailing bytes are an error.
    pub fn decode_exact(buf: &[u8]) -> Result<Frame, WireError> {
        let (f, used) = Self::decode(buf)?;
        if used != buf.len() {
            return Err(WireError::Trailing(buf.len() - used));
        }
        Ok(f)
    }

    /// Appends the encoded frame to `out`; refuses messages over the bounds the decoder enforces.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let start = out.len();
        out.extend_from_slice(&[VERSION, self.msg.kind()]);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let body = out.len();
        let kind = self.msg.kind();
        match (authed(kind), &self.auth) {
            (true, Some(a)) => {
                out.extend_from_slice(&a.owner);
                out.extend_from_slice(&a.epoch.to_le_bytes());
                out.extend_from_slice(&a.sig);
            }
            (true, None) => {
                out.truncate(start);
                return Err(WireError::MissingOwner(shape(kind)?.0));
            }
            (false, Some(_)) => {
                out.truncate(start);
                return Err(WireError::StrayOwner(shape(kind)?.0));
            }
            (false, None) => {}
        }
        match &self.msg {
            Msg::Put {
                shard,
                lease_secs,
                data,
            } => {
                out.extend_from_slice(&shard.0);
                out.extend_from_slice(&lease_secs.to_le_bytes());
                out.extend_from_slice(data);
            }
            Msg::Get { shard }
            | Msg::Delete { shard }
            | Msg::Stored { shard }
            | Msg::Deleted { shard } => out.extend_from_slice(&shard.0),
            Msg::RenewLease { shard, lease_secs } | Msg::LeaseRenewed { shard, lease_secs } => {
                out.extend_from_slice(&shard.0);
                out.extend_from_slice(&lease_secs.to_le_bytes());
            }
            Msg::AuditChallenge {
                shard,
                nonce,
                offset,
                len,
            } => {
                out.extend_from_slice(&shard.0);
                out.extend_from_slice(nonce);
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
            Msg::FreeSpaceQuery | Msg::LostQuery | Msg::Paired | Msg::Retire | Msg::Retired => {}
            Msg::Lost { ids } => {
                for id in ids {
                    out.extend_from_slice(&id.0);
                }
            }
            Msg::Pair { mode, secret } => {
                out.push(*mode);
                out.extend_from_slice(secret);
            }
            Msg::ShardData { shard, data } => {
                out.extend_from_slice(&shard.0);
                out.extend_from_slice(data);
            }
            Msg::AuditResponse { shard, proof } => {
                out.extend_from_slice(&shard.0);
                out.extend_from_slice(proof);
            }
            Msg::FreeSpace { free, offered } => {
                out.extend_from_slice(&free.to_le_bytes());
                out.extend_from_slice(&offered.to_le_bytes());
            }
            Msg::Error { code, reason } => {
                out.push(*code as u8);
                out.extend_from_slice(reason.as_bytes());
            }
        }
        let len = out.len() - body;
        if let Err(e) = check_len(self.msg.kind(), len) {
            out.truncate(start);
            return Err(e);
        }
        // The bound check above keeps `len` far below u32::MAX.
        out[body - 4..body].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(())
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        let mut v = Vec::new();
        self.encode(&mut v)?;
        Ok(v)
    }
}

impl Msg {
    fn kind(&self) -> u8 {
        match self {
            Msg::Put { .. } => K_PUT,
            Msg::Get { .. } => K_GET,
            Msg::Delete { .. } => K_DELETE,
            Msg::RenewLease { .. } => K_RENEW,
            Msg::AuditChallenge { .. } => K_AUDIT,
            Msg::FreeSpaceQuery => K_FREE_Q,
            Msg::LostQuery => K_LOST_Q,
            Msg::Lost { .. } => K_LOST,
            Msg::Stored { .. } => K_STORED,
            Msg::ShardData { .. } => K_DATA,
            Msg::Deleted { .. } => K_DELETED,
            Msg::LeaseRenewed { .. } => K_RENEWED,
            Msg::AuditResponse { .. } => K_PROOF,
            Msg::FreeSpace { .. } => K_FREE,
            Msg::Error { .. } => K_ERROR,
            Msg::Pair { .. } => K_PAIR,
            Msg::Paired => K_PAIRED,
            Msg::Retire => K_RETIRE,
            Msg::Retired => K_RETIRED,
        }
    }

    /// True for messages a requester sends (as opposed to replies).
    pub fn is_request(&self) -> bool {
        self.kind() < 0x80
    }
}

/// Decodes a body whose length `check_len` already accepted for `kind`.
fn decode_body(kind: u8, body: &[u8]) -> Result<(Option<OwnerAuth>, Msg), WireError> {
    let mut r = Reader(body);
    let auth = authed(kind).then(|| OwnerAuth {
        owner: r.take(),
        epoch: r.u64(),
        sig: r.take(),
    });
    let msg = match kind {
        K_PUT => {
            let shard = r.shard();
            let lease_secs = r.u32();
            Msg::Put {
                shard,
                lease_secs,
                data: r.rest().to_vec(),
            }
        }
        K_GET => Msg::Get { shard: r.shard() },
        K_DELETE => Msg::Delete { shard: r.shard() },
        K_RENEW => Msg::RenewLease {
            shard: r.shard(),
            lease_secs: r.u32(),
        },
        K_AUDIT => Msg::AuditChallenge {
            shard: r.shard(),
            nonce: r.take(),
            offset: r.u64(),
            len: r.u32(),
        },
        K_FREE_Q => Msg::FreeSpaceQuery,
        K_LOST_Q => Msg::LostQuery,
        K_LOST => {
            let rest = r.rest();
            if rest.len() % SHARD_ID_LEN != 0 {
                return Err(WireError::BadLength {
                    kind: "lost",
                    len: rest.len(),
                    expected: rest.len() / SHARD_ID_LEN * SHARD_ID_LEN,
                });
            }
            Msg::Lost {
                ids: rest
                    .chunks_exact(SHARD_ID_LEN)
                    .map(|c| ShardId(c.try_into().expect("32 bytes")))
                    .collect(),
            }
        }
        K_PAIR => {
            let [mode] = r.take::<1>();
            Msg::Pair {
                mode,
                secret: r.take(),
            }
        }
        K_PAIRED => Msg::Paired,
        K_RETIRE => Msg::Retire,
        K_RETIRED => Msg::Retired,
        K_STORED => Msg::Stored { shard: r.shard() },
        K_DATA => {
            let shard = r.shard();
            Msg::ShardData {
                shard,
                data: r.rest().to_vec(),
            }
        }
        K_DELETED => Msg::Deleted { shard: r.shard() },
        K_RENEWED => Msg::LeaseRenewed {
            shard: r.shard(),
            lease_secs: r.u32(),
        },
        K_PROOF => Msg::AuditResponse {
            shard: r.shard(),
            proof: r.take(),
        },
        K_FREE => Msg::FreeSpace {
            free: r.u64(),
            offered: r.u64(),
        },
        K_ERROR => {
            let [code] = r.take::<1>();
            let code = ErrorCode::from_u8(code)?;
            let reason = std::str::from_utf8(r.rest())
                .map_err(|_| WireError::BadReason)?
                .to_owned();
            Msg::Error { code, reason }
        }
        other => return Err(WireError::UnknownKind(other)),
    };
    Ok((auth, msg))
}

/// Why reading a frame from a byte stream failed.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The stream failed or ended mid-frame.
    #[error("reading frame: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid frame.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Reads one frame from a byte stream; `Ok(None)` on a clean end of stream between frames.
///
/// The header is validated before the body buffer is allocated, so a peer declaring a huge
/// length costs us [`HEADER_LEN`] bytes, and the largest buffer ever allocated is [`BODY_BYTES_MAX`].
pub fn read_frame<R: std::io::Read>(r: &mut R) -> Result<Option<Frame>, ReadError> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(WireError::Truncated {
                    need: HEADER_LEN,
                    have: got,
                }
                .into())
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let h = parse_header(&head)?;
    let mut body = vec![0u8; h.body_len];
    r.read_exact(&mut body)?;
    let (auth, msg) = decode_body(h.kind, &body)?;
    Ok(Some(Frame {
        id: h.id,
        auth,
        msg,
    }))
}

/// Decodes arbitrary bytes as a sequence of frames until the first error; never panics.
///
/// The body of the `node_wire` fuzz target, kept here so ordinary tests exercise it too.
/// Returns the number of frames decoded; each decoded frame must re-encode to its own bytes.
pub fn fuzz_decode(data: &[u8]) -> usize {
    let mut rest = data;
    let mut n = 0;
    while let Ok((frame, used)) = Frame::decode(rest) {
        let again = frame.to_bytes().expect("a decoded frame re-encodes");
        assert_eq!(again, rest[..used], "decode/encode is not canonical");
        rest = &rest[used..];
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_shard() -> impl Strategy<Value = ShardId> {
        any::<[u8; 32]>().prop_map(ShardId)
    }

    fn arb_code() -> impl Strategy<Value = ErrorCode> {
        (1u8..=7).prop_map(|c| ErrorCode::from_u8(c).unwrap())
    }

    fn arb_msg() -> impl Strategy<Value = Msg> {
        let data = proptest::collection::vec(any::<u8>(), 0..512);
        prop_oneof![
            (arb_shard(), any::<u32>(), data.clone()).prop_map(|(shard, lease_secs, data)| {
                Msg::Put {
                    shard,
                    lease_secs,
                    data,
                }
            }),
            arb_shard().prop_map(|shard| Msg::Get { shard }),
            arb_shard().prop_map(|shard| Msg::Delete { shard }),
            (arb_shard(), any::<u32>())
                .prop_map(|(shard, lease_secs)| Msg::RenewLease { shard, lease_secs }),
            (arb_shard(), any::<[u8; 32]>(), any::<u64>(), any::<u32>()).prop_map(
                |(shard, nonce, offset, len)| Msg::AuditChallenge {
                    shard,
                    nonce,
                    offset,
                    len
                }
            ),
            Just(Msg::FreeSpaceQuery),
            Just(Msg::LostQuery),
            proptest::collection::vec(arb_shard(), 0..=LOST_MAX).prop_map(|ids| Msg::Lost { ids }),
            Just(Msg::Paired),
            Just(Msg::Retire),
            Just(Msg::Retired),
            (any::<u8>(), any::<[u8; 16]>()).prop_map(|(mode, secret)| Msg::Pair { mode, secret }),
            arb_shard().prop_map(|shard| Msg::Stored { shard }),
            (arb_shard(), data).prop_map(|(shard, data)| Msg::ShardData { shard, data }),
            arb_shard().prop_map(|shard| Msg::Deleted { shard }),
            (arb_shard(), any::<u32>())
                .prop_map(|(shard, lease_secs)| Msg::LeaseRenewed { shard, lease_secs }),
            (arb_shard(), any::<[u8; 32]>())
                .prop_map(|(shard, proof)| Msg::AuditResponse { shard, proof }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(free, offered)| Msg::FreeSpace { free, offered }),
            (arb_code(), "[a-z é]{0,80}").prop_map(|(code, reason)| Msg::Error { code, reason }),
        ]
    }

    /// The statement requests carry in these tests (its signature is not checked here).
    const AUTH: OwnerAuth = OwnerAuth {
        owner: [4; 32],
        epoch: 6,
        sig: [5; 64],
    };

    /// A frame as a node sends it: the statement on requests but `Pair`.
    fn frame(id: u32, msg: Msg) -> Frame {
        let auth =
            (msg.is_request() && !matches!(msg, Msg::Pair { .. } | Msg::Retire)).then_some(AUTH);
        Frame { id, auth, msg }
    }

    proptest! {
        // 256 cases each (proptest default); frames up to ~600 bytes keep this well under a second.
        #[test]
        fn round_trip(id in any::<u32>(), msg in arb_msg()) {
            let f = frame(id, msg);
            let bytes = f.to_bytes().unwrap();
            prop_assert_eq!(Frame::decode_exact(&bytes).unwrap(), f);
        }

        #[test]
        fn every_truncation_is_rejected(id in any::<u32>(), msg in arb_msg()) {
            let bytes = frame(id, msg).to_bytes().unwrap();
            for cut in 0..bytes.len() {
                let err = Frame::decode(&bytes[..cut]).unwrap_err();
                let is_truncated = matches!(err, WireError::Truncated { .. });
                prop_assert!(is_truncated, "cut {}: {}", cut, err);
            }
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            fuzz_decode(&data);
        }

        #[test]
        fn random_bodies_behind_valid_headers_never_panic(
            kind in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..128)
        ) {
            let mut bytes = vec![VERSION, kind, 0, 0, 0, 0];
            bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&body);
            fuzz_decode(&bytes);
        }
    }

    fn header(kind: u8, len: u32) -> Vec<u8> {
        let mut h = vec![VERSION, kind, 7, 0, 0, 0];
        h.extend_from_slice(&len.to_le_bytes());
        h
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        // Only the header is present: the bound check must fire before any wait for the body.
        let err = Frame::decode(&header(K_PUT, u32::MAX)).unwrap_err();
        assert_eq!(
            err,
            WireError::Oversized {
                kind: "put",
                len: u32::MAX as usize,
                max: BODY_BYTES_MAX
            }
        );
        assert_eq!(
            err.to_string(),
            format!("put frame too large: 4294967295 bytes, limit {BODY_BYTES_MAX}")
        );
        let err =
            parse_header(&header(K_DATA, (SHARD_ID_LEN + SHARD_BYTES_MAX + 1) as u32)).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Oversized {
                    kind: "shard-data",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn largest_shard_is_accepted_and_one_more_byte_is_not() {
        let shard = ShardId([1; 32]);
        let f = frame(
            1,
            Msg::Put {
                shard,
                lease_secs: 60,
                data: vec![9; SHARD_BYTES_MAX],
            },
        );
        let bytes = f.to_bytes().unwrap();
        assert_eq!(bytes.len(), FRAME_BYTES_MAX);
        assert_eq!(Frame::decode_exact(&bytes).unwrap(), f);
        let big = frame(
            1,
            Msg::Put {
                shard,
                lease_secs: 60,
                data: vec![9; SHARD_BYTES_MAX + 1],
            },
        );
        let mut out = vec![0xAA];
        assert!(matches!(
            big.encode(&mut out),
            Err(WireError::Oversized { .. })
        ));
        assert_eq!(
            out,
            vec![0xAA],
            "a refused encode leaves the buffer as it was"
        );
    }

    #[test]
    fn a_lost_reply_carries_whole_ids_up_to_its_bound() {
        let ids: Vec<ShardId> = (0..LOST_MAX as u8).map(|i| ShardId([i; 32])).collect();
        let f = frame(3, Msg::Lost { ids: ids.clone() });
        assert_eq!(Frame::decode_exact(&f.to_bytes().unwrap()).unwrap(), f);
        let mut more = ids;
        more.push(ShardId([0xff; 32]));
        assert!(matches!(
            frame(3, Msg::Lost { ids: more }).to_bytes(),
            Err(WireError::Oversized { .. })
        ));
        // A body that is not a whole number of ids.
        let mut b = header(K_LOST, 33);
        b.extend_from_slice(&[7; 33]);
        assert!(matches!(
            Frame::decode(&b),
            Err(WireError::BadLength { kind: "lost", .. })
        ));
    }

    #[test]
    fn unknown_version_kind_and_code_are_named() {
        let mut b = frame(1, Msg::FreeSpaceQuery).to_bytes().unwrap();
        b[0] = 1;
        assert_eq!(
            Frame::decode(&b).unwrap_err().to_string(),
            "unsupported protocol version 1 (this node speaks 3)"
        );
        b[0] = VERSION;
        b[1] = 0x42;
        assert_eq!(
            Frame::decode(&b).unwrap_err().to_string(),
            "unknown message kind 0x42"
        );
        let mut e = header(K_ERROR, 3);
        e.extend_from_slice(&[99, b'h', b'i']);
        assert_eq!(
            Frame::decode(&e).unwrap_err(),
            WireError::UnknownErrorCode(99)
        );
        let mut e = header(K_ERROR, 2);
        e.extend_from_slice(&[1, 0xff]);
        assert_eq!(Frame::decode(&e).unwrap_err(), WireError::BadReason);
    }

    #[test]
    fn fixed_size_bodies_must_match_exactly() {
        let err = Frame::decode(&header(K_GET, 135)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "get frame body has 135 bytes, expected 136"
        );
        let err = Frame::decode(&header(K_FREE_Q, 1)).unwrap_err();
        assert!(matches!(
            err,
            WireError::BadLength {
                kind: "free-space-query",
                ..
            }
        ));
    }

    #[test]
    fn stream_reader_checks_the_length_before_reading_the_body() {
        let a = frame(
            3,
            Msg::FreeSpace {
                free: 1,
                offered: 2,
            },
        );
        let b = frame(
            4,
            Msg::ShardData {
                shard: ShardId::of(b"x"),
                data: b"x".to_vec(),
            },
        );
        let mut buf = a.to_bytes().unwrap();
        b.encode(&mut buf).unwrap();
        let mut cur = std::io::Cursor::new(&buf);
        assert_eq!(read_frame(&mut cur).unwrap(), Some(a));
        assert_eq!(read_frame(&mut cur).unwrap(), Some(b));
        assert!(read_frame(&mut cur).unwrap().is_none());

        // A header claiming a 4 GiB put followed by endless bytes: refused after the header.
        let mut hostile = std::io::Read::chain(
            std::io::Cursor::new(header(K_PUT, u32::MAX)),
            std::io::repeat(0),
        );
        let err = read_frame(&mut hostile).unwrap_err();
        assert!(
            matches!(err, ReadError::Wire(WireError::Oversized { .. })),
            "{err}"
        );

        let mut cut = std::io::Cursor::new(&buf[..5]);
        let err = read_frame(&mut cut).unwrap_err();
        assert_eq!(err.to_string(), "truncated frame: need 10 bytes, have 5");
        let mut cut = std::io::Cursor::new(&buf[..HEADER_LEN + 3]);
        assert!(matches!(read_frame(&mut cut), Err(ReadError::Io(_))));
    }

    #[test]
    fn shard_bytes_must_match_their_id() {
        let id = ShardId::of(b"shard bytes");
        check_shard(&id, b"shard bytes").unwrap();
        let err = check_shard(&id, b"shard bytez").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("shard {id}: bytes hash to ")),
            "{msg}"
        );
        assert_eq!(
            err,
            WireError::HashMismatch {
                shard: id,
                actual: ShardId::of(b"shard bytez")
            }
        );
    }

    #[test]
    fn overlong_reason_is_refused_on_encode() {
        let f = frame(
            0,
            Msg::Error {
                code: ErrorCode::Busy,
                reason: "x".repeat(REASON_BYTES_MAX + 1),
            },
        );
        assert!(matches!(
            f.to_bytes(),
            Err(WireError::Oversized { kind: "error", .. })
        ));
    }

    #[test]
    fn frames_decode_back_to_back_and_trailing_bytes_are_flagged() {
        let a = frame(
            1,
            Msg::Get {
                shard: ShardId::of(b"a"),
            },
        );
        let b = frame(
            2,
            Msg::Stored {
                shard: ShardId::of(b"b"),
            },
        );
        let mut buf = a.to_bytes().unwrap();
        b.encode(&mut buf).unwrap();
        assert_eq!(fuzz_decode(&buf), 2);
        let (first, used) = Frame::decode(&buf).unwrap();
        assert_eq!(first, a);
        assert_eq!(Frame::decode_exact(&buf[used..]).unwrap(), b);
        assert_eq!(
            Frame::decode_exact(&buf).unwrap_err(),
            WireError::Trailing(buf.len() - used)
        );
        assert!(a.msg.is_request() && !b.msg.is_request());
    }

    #[test]
    fn requests_carry_the_owners_statement_and_nothing_else_does() {
        let get = Msg::Get {
            shard: ShardId([1; 32]),
        };
        let bytes = frame(1, get.clone()).to_bytes().unwrap();
        assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + 32], &AUTH.owner);
        let bare = Frame {
            id: 1,
            auth: None,
            msg: get,
        };
        assert_eq!(
            bare.to_bytes().unwrap_err().to_string(),
            "a get request needs the owner's statement"
        );
        let stray = Frame {
            id: 1,
            auth: Some(AUTH),
            msg: Msg::Paired,
        };
        assert_eq!(
            stray.to_bytes().unwrap_err(),
            WireError::StrayOwner("paired")
        );
        let pair = frame(
            1,
            Msg::Pair {
                mode: PAIR_WINDOW,
                secret: [0; 16],
            },
        );
        assert_eq!(pair.auth, None);
        assert_eq!(pair.to_bytes().unwrap().len(), HEADER_LEN + 17);
    }
}
