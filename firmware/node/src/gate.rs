//! Whose stream the shard codec reads: partners share the frame budget, strangers get none of
//! it. A stranger may only pair (small frames), so any large frame from one is refused after
//! its 10-byte header, before it can draw on the bytes partners' requests need.
//!
//! The request-response behaviour gives its codec no peer id. [`ShardBehaviour`] wraps it and
//! stamps the peer of each new connection while the inner behaviour clones the codec for that
//! connection's handler; the clone keeps it, and every stream of the connection clones that.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::request_response;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use crate::codec::ShardCodec;

/// How partners are told: by the node's state.
type PartnerCheck = Box<dyn Fn(&PeerId) -> bool + Send + Sync>;

/// Tells partners from strangers for the codec.
#[derive(Default)]
pub struct Gate {
    /// Whether a peer is a partner; unset until the node's state is open (no one is served
    /// before: nothing listens yet).
    is_partner: OnceLock<PartnerCheck>,
    /// The peer of the connection whose handler is being made right now.
    stamp: Mutex<Option<PeerId>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

impl Gate {
    /// Sets how partners are told (once; later calls are ignored).
    pub fn set_partner_check(&self, f: impl Fn(&PeerId) -> bool + Send + Sync + 'static) {
        let _ = self.is_partner.set(Box::new(f));
    }

    /// Whether `peer` is a partner (a stream of unknown peer is a stranger's).
    pub fn is_partner(&self, peer: Option<&PeerId>) -> bool {
        match (peer, self.is_partner.get()) {
            (Some(p), Some(f)) => f(p),
            _ => false,
        }
    }

    /// The peer stamped for the handler being made.
    pub(crate) fn stamped(&self) -> Option<PeerId> {
        *self.stamp.lock().expect("gate lock")
    }

    fn stamp(&self, peer: Option<PeerId>) {
        *self.stamp.lock().expect("gate lock") = peer;
    }
}

/// The shard protocol's behaviour, whose connections' codecs know their peer.
pub struct ShardBehaviour {
    inner: request_response::Behaviour<ShardCodec>,
    gate: Arc<Gate>,
}

impl ShardBehaviour {
    /// Wraps `inner`, whose codec shares `gate`.
    pub fn new(inner: request_response::Behaviour<ShardCodec>, gate: Arc<Gate>) -> Self {
        ShardBehaviour { inner, gate }
    }

    /// Runs `f` (which makes a connection's handler) with `peer` stamped.
    fn stamped<T>(&mut self, peer: PeerId, f: impl FnOnce(&mut Self) -> T) -> T {
        self.gate.stamp(Some(peer));
        let r = f(self);
        self.gate.stamp(None);
        r
    }
}

impl Deref for ShardBehaviour {
    type Target = request_response::Behaviour<ShardCodec>;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl DerefMut for ShardBehaviour {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

type Inner = request_response::Behaviour<ShardCodec>;

impl NetworkBehaviour for ShardBehaviour {
    type ConnectionHandler = <Inner as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = <Inner as NetworkBehaviour>::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.stamped(peer, |s| {
            s.inner
                .handle_established_inbound_connection(id, peer, local, remote)
        })
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.stamped(peer, |s| {
            s.inner
                .handle_established_outbound_connection(id, peer, addr, role, port_use)
        })
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}
