//! The shard protocol on a libp2p stream: one [`wire`](crate::wire) frame per request and one
//! per response, read under a node-wide byte budget.
//!
//! Memory: the header (10 bytes) is read and checked first; a large body's buffer is allocated
//! only after its bytes were taken from the [`Budget`], which bounds the bytes of all large
//! frames being read or waiting to be handled, whatever the number of peers and streams. Small
//! frames (gets, audits, replies without data: ≤ [`SMALL_BODY`]) do not draw on it — bounded
//! by connections × streams × 4 KiB — so a peer that ties up the budget cannot stop them. A
//! peer that declares a larger body than its kind allows is cut off after 10 bytes; one that
//! cannot have its budget within [`BUDGET_WAIT`], or does not send its body within
//! [`BODY_DEADLINE`], loses the stream and gives the budget back.

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::gate::Gate;
use crate::wire::{self, Frame, Msg, FRAME_BYTES_MAX, HEADER_LEN};

/// Bodies up to this size are read without drawing on the budget.
pub const SMALL_BODY: usize = 4096;

/// How long a large frame waits for budget before its stream is dropped.
pub const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the sender may take over one frame's body (≥ 100 KB/s for the largest).
pub const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// The protocol name negotiated on each stream.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn/shard/1");

/// Bytes of frames in memory at once, shared by every partner's stream of the node
/// (strangers get none of it: see [`Gate`]).
#[derive(Clone, Debug)]
pub struct Budget {
    sem: Arc<Semaphore>,
    bytes: usize,
    gate: Arc<Gate>,
}

impl Budget {
    /// A budget of `bytes` (at least one largest frame, so every legal frame can be read).
    pub fn new(bytes: usize) -> Self {
        let bytes = bytes.max(FRAME_BYTES_MAX);
        Budget {
            sem: Arc::new(Semaphore::new(bytes)),
            bytes,
            gate: Arc::default(),
        }
    }

    /// Who may draw on it (the node sets how partners are told once its state is open).
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The configured size.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes not taken right now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    async fn take(&self, n: usize) -> io::Result<OwnedSemaphorePermit> {
        let n = u32::try_from(n).map_err(|_| io::Error::other("frame too large"))?;
        self.sem
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| io::Error::other("node shutting down"))
    }
}

/// A decoded message and the share of the budget its bytes hold until it is dropped.
#[derive(Debug)]
pub struct Held {
    /// The message.
    pub msg: Msg,
    /// The owner a request is made for (every request but `Pair`; see [`wire::OwnerAuth`]).
    pub auth: Option<wire::OwnerAuth>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Held {
    /// A message that holds no budget (one we send): a reply, or a pairing request.
    pub fn new(msg: Msg) -> Self {
        Held {
            msg,
            auth: None,
            _permit: None,
        }
    }

    /// A request we send for the owner of `auth`.
    pub fn request(auth: wire::OwnerAuth, msg: Msg) -> Self {
        Held {
            msg,
            auth: Some(auth),
            _permit: None,
        }
    }
}

/// Reads and writes shard-protocol frames; cheap to clone (shares the budget).
#[derive(Debug)]
pub struct ShardCodec {
    budget: Budget,
    /// The peer at the other end, once a connection's handler was made with it (see
    /// [`crate::gate::ShardBehaviour`]).
    peer: Option<libp2p::PeerId>,
}

impl Clone for ShardCodec {
    /// A connection's handler clones the behaviour's codec while the gate holds its peer: the
    /// clone keeps it, and every stream of the connection clones that one.
    fn clone(&self) -> Self {
        ShardCodec {
            budget: self.budget.clone(),
            peer: self.peer.or_else(|| self.budget.gate.stamped()),
        }
    }
}

impl ShardCodec {
    /// A codec drawing on `budget`.
    pub fn new(budget: Budget) -> Self {
        ShardCodec { budget, peer: None }
    }

    /// A codec of a stream with `peer` (tests; the node's come from the behaviour).
    pub fn for_peer(budget: Budget, peer: libp2p::PeerId) -> Self {
        ShardCodec {
            budget,
            peer: Some(peer),
        }
    }

    async fn read<T: AsyncRead + Unpin + Send>(&self, io: &mut T) -> io::Result<Held> {
        let mut head = [0u8; HEADER_LEN];
        io.read_exact(&mut head).await?;
        let h = wire::parse_header(&head).map_err(invalid)?;
        let permit = if h.body_len <= SMALL_BODY {
            None
        } else if !self.budget.gate.is_partner(self.peer.as_ref()) {
            // A stranger may only pair (small frames): none of the partners' budget for it.
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "a large frame from a peer that is not a partner",
            ));
        } else {
            let take = self.budget.take(HEADER_LEN + h.body_len);
            Some(
                tokio::time::timeout(BUDGET_WAIT, take)
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "node busy: no room for the frame")
                    })??,
            )
        };
        let mut buf = vec![0u8; HEADER_LEN + h.body_len];
        buf[..HEADER_LEN].copy_from_slice(&head);
        tokio::time::timeout(BODY_DEADLINE, io.read_exact(&mut buf[HEADER_LEN..]))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "frame body too slow"))??;
        let frame = Frame::decode_exact(&buf).map_err(invalid)?;
        Ok(Held {
            msg: frame.msg,
            auth: frame.auth,
            _permit: permit,
        })
    }

    async fn write<T: AsyncWrite + Unpin + Send>(io: &mut T, held: Held) -> io::Result<()> {
        let bytes = Frame {
            id: 0,
            auth: held.auth,
            msg: held.msg,
        }
        .to_bytes()
        .map_err(invalid)?;
        io.write_all(&bytes).await?;
        io.close().await
    }
}

fn invalid(e: wire::WireError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[async_trait]
impl libp2p::request_response::Codec for ShardCodec {
    type Protocol = StreamProtocol;
    type Request = Held;
    type Response = Held;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Held>
    where
        T: AsyncRead + Unpin + Send,
    {
        let held = self.read(io).await?;
        if !held.msg.is_request() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a reply where a request was expected",
            ));
        }
        Ok(held)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Held>
    where
        T: AsyncRead + Unpin + Send,
    {
        let held = self.read(io).await?;
        if held.msg.is_request() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a request where a reply was expected",
            ));
        }
        Ok(held)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Held,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Self::write(io, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Held,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Self::write(io, res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partner's get, a small frame (its owner's statement included).
    fn get_frame() -> Vec<u8> {
        Frame {
            id: 0,
            auth: Some(AUTH),
            msg: Msg::Get {
                shard: wire::ShardId([1; 32]),
            },
        }
        .to_bytes()
        .unwrap()
    }

    /// A codec of a partner's stream (every peer a partner).
    fn partners_codec(budget: &Budget) -> ShardCodec {
        budget.gate().set_partner_check(|_| true);
        ShardCodec::for_peer(budget.clone(), libp2p::PeerId::random())
    }

    #[tokio::test]
    async fn a_strangers_large_frame_is_refused_after_its_header_without_budget() {
        let budget = Budget::new(0);
        budget.gate().set_partner_check(|_| false);
        let mut c = ShardCodec::for_peer(budget.clone(), libp2p::PeerId::random());
        let put = Frame {
            id: 1,
            auth: Some(AUTH),
            msg: Msg::Put {
                shard: wire::ShardId([1; 32]),
                lease_secs: 60,
                data: vec![7; 64 << 10],
            },
        }
        .to_bytes()
        .unwrap();
        let mut io = futures::io::Cursor::new(put);
        let e = c.read_request(&PROTOCOL, &mut io).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert_eq!(io.position(), HEADER_LEN as u64, "read past the header");
        assert_eq!(budget.available(), budget.bytes());
        // A small frame (what pairing needs) is still read, the owner's statement a request
        // carries included: the threshold applies to the whole body.
        let get = get_frame();
        assert!(get.len() - HEADER_LEN <= SMALL_BODY);
        let held = c
            .read_request(&PROTOCOL, &mut futures::io::Cursor::new(get))
            .await
            .unwrap();
        assert!(matches!(held.msg, Msg::Get { .. }));
    }
    use libp2p::request_response::Codec;

    const AUTH: wire::OwnerAuth = wire::OwnerAuth {
        owner: [4; 32],
        epoch: 6,
        sig: [5; 64],
    };

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn frames_round_trip_and_hold_budget_until_dropped() {
        run(async {
            let budget = Budget::new(0);
            let mut c = partners_codec(&budget);
            let mut buf = Vec::new();
            // A small frame holds no budget.
            let get = Msg::Get {
                shard: wire::ShardId([7; 32]),
            };
            let mut small = Vec::new();
            c.write_request(
                &PROTOCOL,
                &mut futures::io::Cursor::new(&mut small),
                Held::request(AUTH, get.clone()),
            )
            .await
            .unwrap();
            let held_get = c
                .read_request(&PROTOCOL, &mut futures::io::Cursor::new(&small))
                .await
                .unwrap();
            assert_eq!(held_get.msg, get);
            assert_eq!(held_get.auth, Some(AUTH));
            assert_eq!(budget.available(), budget.bytes());
            // A large one holds its bytes until it is dropped.
            let msg = Msg::Put {
                shard: wire::ShardId([7; 32]),
                lease_secs: 60,
                data: vec![9; 3 * SMALL_BODY],
            };
            c.write_request(
                &PROTOCOL,
                &mut futures::io::Cursor::new(&mut buf),
                Held::request(AUTH, msg.clone()),
            )
            .await
            .unwrap();
            let held = c
                .read_request(&PROTOCOL, &mut futures::io::Cursor::new(&buf))
                .await
                .unwrap();
            assert_eq!(held.msg, msg);
            assert_eq!(budget.available(), budget.bytes() - buf.len());
            drop(held);
            assert_eq!(budget.available(), budget.bytes());
        });
    }

    #[test]
    fn oversized_claims_and_garbage_are_refused_before_allocation() {
        run(async {
            let budget = Budget::new(0);
            let mut c = partners_codec(&budget);
            // A get (fixed 32-byte body) claiming 4 GiB.
            let mut head = vec![wire::VERSION, 0x02, 0, 0, 0, 0];
            head.extend_from_slice(&u32::MAX.to_le_bytes());
            let e = c
                .read_request(&PROTOCOL, &mut futures::io::Cursor::new(&head))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert_eq!(budget.available(), budget.bytes());
            let e = c
                .read_request(
                    &PROTOCOL,
                    &mut futures::io::Cursor::new(b"GET / HTTP/1.1\r\n"),
                )
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            // Truncated: header promises a body that never comes.
            let frame = get_frame();
            let e = c
                .read_request(&PROTOCOL, &mut futures::io::Cursor::new(&frame[..20]))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
            // A reply sent as a request.
            let reply = Frame {
                id: 0,
                auth: None,
                msg: Msg::Paired,
            }
            .to_bytes()
            .unwrap();
            assert!(c
                .read_request(&PROTOCOL, &mut futures::io::Cursor::new(&reply))
                .await
                .is_err());
            assert_eq!(budget.available(), budget.bytes());
        });
    }

    /// Gives `head`, then never another byte (a peer holding its stream open).
    struct Stalls {
        head: Vec<u8>,
    }

    impl futures::AsyncRead for Stalls {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            if self.head.is_empty() {
                return std::task::Poll::Pending;
            }
            let n = buf.len().min(self.head.len());
            buf[..n].copy_from_slice(&self.head[..n]);
            self.head.drain(..n);
            std::task::Poll::Ready(Ok(n))
        }
    }

    fn put_header(body: u32) -> Vec<u8> {
        let mut h = vec![wire::VERSION, 0x01, 0, 0, 0, 0];
        h.extend_from_slice(&body.to_le_bytes());
        h
    }

    #[test]
    fn a_peer_holding_streams_open_cannot_keep_the_budget_or_stop_small_frames() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(async {
                let budget = Budget::new(0);
                let mut c = partners_codec(&budget);
                // A put header claiming 6 MiB, then silence: dropped at the body deadline,
                // its budget given back.
                let t = tokio::time::Instant::now();
                let e = c
                    .read_request(
                        &PROTOCOL,
                        &mut Stalls {
                            head: put_header(FRAME_BYTES_MAX as u32 - HEADER_LEN as u32),
                        },
                    )
                    .await
                    .unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
                assert!(t.elapsed() >= BODY_DEADLINE);
                assert_eq!(budget.available(), budget.bytes());
                // While the whole budget is taken, a large frame waits at most BUDGET_WAIT …
                let hog = budget.take(budget.bytes()).await.unwrap();
                let e = c
                    .read_request(
                        &PROTOCOL,
                        &mut Stalls {
                            head: put_header(100_000),
                        },
                    )
                    .await
                    .unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
                assert!(e.to_string().contains("busy"), "{e}");
                // … and small frames are read as usual.
                let get = get_frame();
                let held = c
                    .read_request(&PROTOCOL, &mut futures::io::Cursor::new(&get))
                    .await
                    .unwrap();
                assert!(matches!(held.msg, Msg::Get { .. }));
                drop(hog);
                assert_eq!(budget.available(), budget.bytes());
            });
    }
}
