//! Yamux with bounded memory: few streams per connection, and a node-wide pool of the streams
//! peers open.
//!
//! Every Yamux stream may hold 256 KiB its reader has not read yet (the protocol's initial
//! window; no implementation offers less), whoever opened it. A cap per connection alone would
//! still let `connections × streams` windows fill, so the streams peers open are also drawn from
//! two node-wide pools, one for partners and a small one for everyone else: a stream beyond its
//! pool is dropped at once (Yamux resets it and frees what it buffered). Relayed connections
//! draw from the strangers' pool (their peer is not known when their muxer is made).
//!
//! libp2p-yamux 0.47 offers no connection window on its Yamux 0.13 implementation; any setting
//! selects Yamux 0.12, whose window is fixed at 256 KiB and credited only as the reader reads
//! (back-pressure), which is what the bound needs.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::{yamux, PeerId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::gate::Gate;

/// Bytes a Yamux stream may hold unread (the protocol's initial window, never less).
pub const STREAM_WINDOW: usize = 256 << 10;

/// The node-wide pools of streams peers open.
#[derive(Debug)]
pub struct Pools {
    partners: Arc<Semaphore>,
    strangers: Arc<Semaphore>,
    gate: Arc<Gate>,
}

impl Pools {
    /// Pools of `partners` and `strangers` streams, told apart by `gate`.
    pub fn new(partners: usize, strangers: usize, gate: Arc<Gate>) -> Arc<Self> {
        Arc::new(Pools {
            partners: Arc::new(Semaphore::new(partners)),
            strangers: Arc::new(Semaphore::new(strangers)),
            gate,
        })
    }

    /// A place for a stream `peer` opened, if its pool has one.
    fn admit(&self, peer: Option<&PeerId>) -> Option<OwnedSemaphorePermit> {
        let pool = if self.gate.is_partner(peer) {
            &self.partners
        } else {
            &self.strangers
        };
        pool.clone().try_acquire_owned().ok()
    }
}

/// The Yamux configuration for `streams` streams per connection.
pub fn yamux_config(streams: usize) -> yamux::Config {
    let mut cfg = yamux::Config::default();
    cfg.set_max_num_streams(streams);
    #[allow(
        deprecated,
        reason = "the only bound on the one frame body Yamux 0.12 reads at a time (1 MiB by default); with back-pressure a stream never holds more than its window anyway"
    )]
    cfg.set_max_buffer_size(STREAM_WINDOW);
    cfg
}

/// Yamux whose connections draw the streams peers open from [`Pools`].
#[derive(Clone, Debug)]
pub struct PooledYamux {
    cfg: yamux::Config,
    pools: Arc<Pools>,
}

impl PooledYamux {
    /// Yamux with `streams` streams per connection, drawing from `pools`.
    pub fn new(streams: usize, pools: Arc<Pools>) -> Self {
        PooledYamux {
            cfg: yamux_config(streams),
            pools,
        }
    }
}

impl UpgradeInfo for PooledYamux {
    type Info = <yamux::Config as UpgradeInfo>::Info;
    type InfoIter = <yamux::Config as UpgradeInfo>::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.cfg.protocol_info()
    }
}

impl<C> InboundConnectionUpgrade<C> for PooledYamux
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Pooled<yamux::Muxer<C>>;
    type Error = io::Error;
    type Future = futures::future::Ready<Result<Self::Output, io::Error>>;

    fn upgrade_inbound(self, io: C, info: Self::Info) -> Self::Future {
        let pools = self.pools;
        let muxer = self.cfg.upgrade_inbound(io, info).into_inner();
        futures::future::ready(muxer.map(|m| Pooled::new(m, pools)))
    }
}

impl<C> OutboundConnectionUpgrade<C> for PooledYamux
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Pooled<yamux::Muxer<C>>;
    type Error = io::Error;
    type Future = futures::future::Ready<Result<Self::Output, io::Error>>;

    fn upgrade_outbound(self, io: C, info: Self::Info) -> Self::Future {
        let pools = self.pools;
        let muxer = self.cfg.upgrade_outbound(io, info).into_inner();
        futures::future::ready(muxer.map(|m| Pooled::new(m, pools)))
    }
}

/// A muxer whose inbound streams hold a place in a pool while they live.
pub struct Pooled<M> {
    inner: M,
    /// The remote peer, once the transport tells it (unknown: a stranger).
    peer: Option<PeerId>,
    pools: Arc<Pools>,
}

impl<M> Pooled<M> {
    fn new(inner: M, pools: Arc<Pools>) -> Self {
        Pooled {
            inner,
            peer: None,
            pools,
        }
    }

    /// Names the remote peer (after authentication), so a partner's streams use its pool.
    pub fn with_peer(mut self, peer: PeerId) -> Self {
        self.peer = Some(peer);
        self
    }
}

impl<M> StreamMuxer for Pooled<M>
where
    M: StreamMuxer + Unpin,
    M::Substream: Unpin,
{
    type Substream = PooledStream<M::Substream>;
    type Error = M::Error;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        loop {
            let stream = ready!(Pin::new(&mut this.inner).poll_inbound(cx))?;
            match this.pools.admit(this.peer.as_ref()) {
                Some(permit) => {
                    return Poll::Ready(Ok(PooledStream {
                        inner: stream,
                        _place: Some(permit),
                    }))
                }
                // Dropped unread: the muxer resets it and frees its window.
                None => tracing::debug!(peer = ?this.peer, "stream pool full, stream dropped"),
            }
        }
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        // Our own streams: bounded by what the node asks, per connection by the muxer's cap.
        let stream = ready!(Pin::new(&mut self.get_mut().inner).poll_outbound(cx))?;
        Poll::Ready(Ok(PooledStream {
            inner: stream,
            _place: None,
        }))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

/// A stream holding its place in a pool until dropped.
pub struct PooledStream<S> {
    inner: S,
    _place: Option<OwnedSemaphorePermit>,
}

impl<S: AsyncRead + Unpin> AsyncRead for PooledStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PooledStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}
