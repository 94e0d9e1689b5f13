//! The shard protocol on a libp2p stream: one [`wire`](crate::wire) frame per request and one
//! per response, read under a node-wide byte budget.
//!
//! Memory: the header (10 bytes) is read and checked first; the body buffer is allocated only
//! after the frame's bytes were taken from the [`Budget`], which bounds the bytes of all frames
//! being read or waiting to be handled, whatever the number of peers and streams. A peer that
//! declares a larger body than its kind allows is cut off after 10 bytes.

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::wire::{self, Frame, Msg, HEADER_LEN, MAX_FRAME};

/// The protocol name negotiated on each stream.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn/shard/1");

/// Bytes of frames in memory at once, shared by every stream of the node.
#[derive(Clone, Debug)]
pub struct Budget {
    sem: Arc<Semaphore>,
    bytes: usize,
}

impl Budget {
    /// A budget of `bytes` (at least one largest frame, so every legal frame can be read).
    pub fn new(bytes: usize) -> Self {
        let bytes = bytes.max(MAX_FRAME);
        Budget {
            sem: Arc::new(Semaphore::new(bytes)),
            bytes,
        }
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
    _permit: Option<OwnedSemaphorePermit>,
}

impl Held {
    /// A message that holds no budget (one we send).
    pub fn new(msg: Msg) -> Self {
        Held { msg, _permit: None }
    }
}

/// Reads and writes shard-protocol frames; cheap to clone (shares the budget).
#[derive(Clone, Debug)]
pub struct ShardCodec {
    budget: Budget,
}

impl ShardCodec {
    /// A codec drawing on `budget`.
    pub fn new(budget: Budget) -> Self {
        ShardCodec { budget }
    }

    async fn read<T: AsyncRead + Unpin + Send>(&self, io: &mut T) -> io::Result<Held> {
        let mut head = [0u8; HEADER_LEN];
        io.read_exact(&mut head).await?;
        let h = wire::parse_header(&head).map_err(invalid)?;
        let permit = self.budget.take(HEADER_LEN + h.body_len).await?;
        let mut buf = vec![0u8; HEADER_LEN + h.body_len];
        buf[..HEADER_LEN].copy_from_slice(&head);
        io.read_exact(&mut buf[HEADER_LEN..]).await?;
        let frame = Frame::decode_exact(&buf).map_err(invalid)?;
        Ok(Held {
            msg: frame.msg,
            _permit: Some(permit),
        })
    }

    async fn write<T: AsyncWrite + Unpin + Send>(io: &mut T, msg: Msg) -> io::Result<()> {
        let bytes = Frame { id: 0, msg }.to_bytes().map_err(invalid)?;
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
        Self::write(io, req.msg).await
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
        Self::write(io, res.msg).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn frames_round_trip_and_hold_budget_until_dropped() {
        run(async {
            let budget = Budget::new(0);
            let mut c = ShardCodec::new(budget.clone());
            let mut buf = Vec::new();
            let msg = Msg::Get {
                shard: wire::ShardId([7; 32]),
            };
            c.write_request(
                &PROTOCOL,
                &mut futures::io::Cursor::new(&mut buf),
                Held::new(msg.clone()),
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
            let mut c = ShardCodec::new(budget.clone());
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
            let frame = Frame {
                id: 0,
                msg: Msg::Get {
                    shard: wire::ShardId([1; 32]),
                },
            }
            .to_bytes()
            .unwrap();
            let e = c
                .read_request(&PROTOCOL, &mut futures::io::Cursor::new(&frame[..20]))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
            // A reply sent as a request.
            let reply = Frame {
                id: 0,
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
}
