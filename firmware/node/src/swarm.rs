//! The swarm task: the one owner of the libp2p swarm. It runs the event loop — connections,
//! discovery (mDNS, Identify, Kademlia), redials of partners, requests sent for the owner's
//! side ([`Cmd`]) and their answers — and hands partners' requests to the holder's side
//! ([`crate::holder`]) and pairing requests to [`crate::pairing`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, mdns, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};

use crate::codec::Held;
use crate::holder;
use crate::net::{self, Behaviour, BehaviourEvent};
use crate::pairing::{self, PairSession, Step};
use crate::state::{now_secs, Cmd, PeerMeta, Shared};
use crate::wire::{ErrorCode, Msg};

/// How often an open pairing window probes and steps.
const PAIRING_TICK: Duration = Duration::from_millis(250);
/// How often saved partners that are not connected are dialled again.
const REDIAL_EVERY: Duration = Duration::from_secs(15);

/// An interval whose first tick is one period away and which skips the ticks it missed while
/// not polled (a pairing window opened after an hour gets no burst of stale ticks).
fn quiet_interval(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    i
}

/// The swarm and everything only it touches.
pub struct SwarmTask {
    shared: Arc<Shared>,
    /// The libp2p swarm.
    pub swarm: Swarm<Behaviour>,
    rx: mpsc::Receiver<Cmd>,
    done_tx: mpsc::Sender<(ResponseChannel<Held>, Msg, PeerId)>,
    done_rx: mpsc::Receiver<(ResponseChannel<Held>, Msg, PeerId)>,
    outstanding: HashMap<OutboundRequestId, Outstanding>,
    pairing: Option<PairSession>,
    /// Steps an open pairing window (polled only while one is open).
    tick: tokio::time::Interval,
    /// Dials saved partners that are not connected.
    redial: tokio::time::Interval,
    /// True once at least one listener is up.
    pub listening: bool,
    /// Strangers' connections closed at once for being over their limit (not counted).
    uncounted: HashSet<libp2p::swarm::ConnectionId>,
}

enum Outstanding {
    Reply(oneshot::Sender<Result<Held, String>>),
    PairProbe(PeerId),
    PairReveal(PeerId),
}

impl SwarmTask {
    pub(crate) fn new(
        shared: Arc<Shared>,
        swarm: Swarm<Behaviour>,
        rx: mpsc::Receiver<Cmd>,
    ) -> Self {
        // One answer per request served; bounded by the requests in flight.
        let (done_tx, done_rx) = mpsc::channel(256);
        SwarmTask {
            shared,
            swarm,
            rx,
            done_tx,
            done_rx,
            outstanding: HashMap::new(),
            pairing: None,
            tick: quiet_interval(PAIRING_TICK),
            redial: quiet_interval(REDIAL_EVERY),
            listening: false,
            uncounted: HashSet::new(),
        }
    }

    pub(crate) fn start(&mut self) -> Result<()> {
        let cfg = self.shared.cfg.clone();
        for a in &cfg.listen {
            self.swarm
                .listen_on(a.clone())
                .with_context(|| format!("listening on {a}"))?;
        }
        for r in &cfg.relays {
            let a = r.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
            if let Err(e) = self.swarm.listen_on(a.clone()) {
                tracing::warn!("relay {r}: {e}");
            }
        }
        for b in &cfg.bootstrap {
            if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = b.iter().last() {
                self.swarm.behaviour_mut().kad.add_address(&peer, b.clone());
            }
            if let Err(e) = self.swarm.dial(b.clone()) {
                tracing::warn!("bootstrap {b}: {e}");
            }
        }
        if !cfg.bootstrap.is_empty() {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
        self.redial_partners();
        Ok(())
    }

    fn redial_partners(&mut self) {
        let partners: Vec<(PeerId, Vec<Multiaddr>)> = {
            let st = self.shared.state();
            st.saved
                .partners
                .iter()
                .map(|(peer, info)| {
                    let addrs = info.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                    (*peer, addrs)
                })
                .collect()
        };
        for (peer, addrs) in partners {
            self.dial_known(peer, addrs);
        }
    }

    /// Remembers `peer`'s addresses and connects to it unless it is connected or being dialled
    /// already: one address at a time, in [`net::dial_order`] (TCP first), so the first
    /// connection that succeeds is the cheaper one whenever TCP reaches the peer.
    fn dial_known(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        for a in &addrs {
            self.swarm.behaviour_mut().kad.add_address(&peer, a.clone());
        }
        if !self.swarm.is_connected(&peer) && !addrs.is_empty() {
            let one = std::num::NonZeroU8::MIN;
            let _ = self.swarm.dial(
                DialOpts::peer_id(peer)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .addresses(net::dial_order(addrs))
                    .override_dial_concurrency_factor(one)
                    .build(),
            );
        }
    }

    /// Handles one event of any source.
    pub async fn step(&mut self) {
        tokio::select! {
            ev = self.swarm.select_next_some() => self.on_swarm(ev),
            Some(cmd) = self.rx.recv() => self.on_cmd(cmd),
            Some((chan, msg, peer)) = self.done_rx.recv() => {
                holder::finished(&self.shared, &peer);
                let _ = self.swarm.behaviour_mut().shard.send_response(chan, Held::new(msg));
            }
            // Only while a pairing window is open: an idle node wakes for nothing else.
            _ = self.tick.tick(), if self.pairing.is_some() => self.on_tick(),
            _ = self.redial.tick() => self.redial_partners(),
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Request {
                peer,
                auth,
                msg,
                reply,
            } => {
                let unreachable = self
                    .shared
                    .state()
                    .peers
                    .get(&peer)
                    .is_some_and(PeerMeta::unreachable);
                if unreachable {
                    let _ = reply.send(Err(format!("partner {peer} is unreachable")));
                    return;
                }
                let held = match auth {
                    Some(a) => Held::request(a, msg),
                    None => Held::new(msg),
                };
                let id = self.swarm.behaviour_mut().shard.send_request(&peer, held);
                self.outstanding.insert(id, Outstanding::Reply(reply));
            }
            Cmd::Pair { window, reply } => {
                if self.pairing.is_some() {
                    let _ = reply.send(Err("a pairing window is already open".into()));
                    return;
                }
                self.pairing = Some(PairSession::open(self.shared.me, window, reply));
            }
            Cmd::Dial { peer, addrs } => {
                self.dial_known(peer, addrs);
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(s) = self.pairing.as_mut() else {
            return;
        };
        // Probe every plug on the local network we have not asked yet.
        for p in s.unprobed(&self.shared) {
            let id = self
                .swarm
                .behaviour_mut()
                .shard
                .send_request(&p, Held::new(s.probe()));
            self.outstanding.insert(id, Outstanding::PairProbe(p));
        }
        match s.step(Instant::now()) {
            Step::Wait => {}
            Step::Reveal(peer, msg) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .shard
                    .send_request(&peer, Held::new(msg));
                self.outstanding.insert(id, Outstanding::PairReveal(peer));
            }
            Step::Finish => {
                let s = self.pairing.take().expect("session");
                let shared = self.shared.clone();
                s.finish(&shared, |p| addrs_in(&mut self.swarm, p));
            }
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!("listening on {address}");
                self.listening = true;
                self.shared.state().listen.push(address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                {
                    let st = self.shared.state();
                    if !st.is_partner(&peer_id) {
                        let strangers: u32 = st
                            .peers
                            .iter()
                            .filter(|(p, _)| !st.is_partner(p))
                            .map(|(_, m)| m.connections)
                            .sum();
                        if strangers >= self.shared.cfg.limits.max_stranger_connections {
                            drop(st);
                            // Not counted: the close event finds no connection to take off.
                            self.uncounted.insert(connection_id);
                            self.swarm.close_connection(connection_id);
                            return;
                        }
                    }
                }
                let mut st = self.shared.state();
                let m = st.peers.entry(peer_id).or_default();
                m.connections += 1;
                if m.links.len() < crate::state::LINKS_SHOWN {
                    m.links.push((connection_id, addr.clone()));
                }
                m.dial_failed_at = None;
                if net::is_local(&addr) {
                    m.local = true;
                }
                if let Some(ip) = net::public_ip(&addr) {
                    m.public_ip = Some(ip);
                }
                st.tracker.seen(&peer_id, now_secs());
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                ..
            } => {
                let mut st = self.shared.state();
                let m = st.peers.entry(peer).or_default();
                if m.connections == 0 {
                    m.dial_failed_at = Some(Instant::now());
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                ..
            } => {
                if self.uncounted.remove(&connection_id) {
                    return;
                }
                let mut st = self.shared.state();
                if let Some(m) = st.peers.get_mut(&peer_id) {
                    m.connections = m.connections.saturating_sub(1);
                    m.links.retain(|(id, _)| *id != connection_id);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Shard(ev)) => self.on_shard(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                // A peer's addresses together, so that one dial orders them.
                let mut found: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in list {
                    found.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in found {
                    self.shared.state().peers.entry(peer).or_default().local = true;
                    self.dial_known(peer, addrs);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let partner = self.shared.state().is_partner(&peer_id);
                for a in info.listen_addrs.iter().take(8) {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, a.clone());
                }
                if partner {
                    let mut st = self.shared.state();
                    let mut changed = false;
                    if let Some(p) = st.saved.partners.get_mut(&peer_id) {
                        for a in info.listen_addrs.iter().take(8) {
                            let s = a.to_string();
                            if !p.addrs.contains(&s) && p.addrs.len() < 8 {
                                p.addrs.push(s);
                                changed = true;
                            }
                        }
                    }
                    drop(st);
                    if changed {
                        let _ = self.shared.persist();
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(libp2p::ping::Event {
                peer,
                result: Ok(_),
                ..
            })) => {
                self.shared.state().tracker.seen(&peer, now_secs());
            }
            _ => {}
        }
    }

    fn on_shard(&mut self, ev: request_response::Event<Held, Held>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_request(peer, request, channel),
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => match self.outstanding.remove(&request_id) {
                Some(Outstanding::Reply(tx)) => {
                    let _ = tx.send(Ok(response));
                }
                Some(Outstanding::PairProbe(p)) => {
                    if matches!(response.msg, Msg::Paired) {
                        pairing::answered(&self.shared, self.pairing.as_mut(), p);
                    }
                }
                Some(Outstanding::PairReveal(p)) => {
                    if let Msg::Error { reason, .. } = &response.msg {
                        tracing::warn!("pairing: {p} refused our reveal: {reason}");
                    }
                }
                None => {}
            },
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(Outstanding::Reply(tx)) = self.outstanding.remove(&request_id) {
                    let _ = tx.send(Err(format!("peer {peer}: {error}")));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::warn!("request from {peer} failed: {error}");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_request(&mut self, peer: PeerId, request: Held, channel: ResponseChannel<Held>) {
        let reply = |sw: &mut Swarm<Behaviour>, channel, msg: Msg| {
            let _ = sw
                .behaviour_mut()
                .shard
                .send_response(channel, Held::new(msg));
        };
        // Pairing requests are the only ones a non-partner may make.
        if let Msg::Pair { mode, secret } = request.msg {
            let answer = self.on_pair(peer, mode, secret);
            reply(&mut self.swarm, channel, answer);
            return;
        }
        // A retirement is about this peer's identity, not an owner's: no statement.
        if matches!(request.msg, Msg::Retire) {
            let answer = retire(&self.shared, peer);
            reply(&mut self.swarm, channel, answer);
            return;
        }
        let owner = match holder::admit(&self.shared, peer, request.auth.as_ref()) {
            Ok(owner) => owner,
            Err(refusal) => {
                reply(&mut self.swarm, channel, refusal);
                return;
            }
        };
        let shared = self.shared.clone();
        let done = self.done_tx.clone();
        tokio::task::spawn_blocking(move || {
            let msg = holder::serve(&shared, peer, owner, request);
            let _ = done.blocking_send((channel, msg, peer));
        });
    }

    fn on_pair(&mut self, peer: PeerId, mode: u8, secret: [u8; 16]) -> Msg {
        let shared = self.shared.clone();
        let session = self.pairing.as_mut();
        let swarm = &mut self.swarm;
        pairing::answer(&shared, session, peer, mode, secret, |p| addrs_in(swarm, p))
    }
}

/// A partner's identity is being destroyed (its factory reset): forgotten as a partner at
/// once, as an unpair does, so that its key, if found later on its old card, opens nothing
/// here. What it placed here stays until its leases run out (its owner may come back with
/// the recovery key).
fn retire(shared: &Shared, peer: PeerId) -> Msg {
    match shared.remove_partner(&peer) {
        Ok(None) => crate::holder::err(
            ErrorCode::BadRequest,
            format!("peer {peer} is not a partner of {}", shared.me),
        ),
        Ok(Some(_)) => {
            tracing::warn!(
                "partner {peer} retired its identity (a factory reset): no longer a partner"
            );
            Msg::Retired
        }
        Err(e) => crate::holder::err(ErrorCode::Internal, format!("forgetting {peer}: {e:#}")),
    }
}

/// The addresses Kademlia knows for `peer` (at most 8).
fn addrs_in(swarm: &mut Swarm<Behaviour>, peer: &PeerId) -> Vec<Multiaddr> {
    let mut out = Vec::new();
    for bucket in swarm.behaviour_mut().kad.kbuckets() {
        for e in bucket.iter() {
            if e.node.key.preimage() == peer {
                out.extend(e.node.value.iter().cloned());
            }
        }
    }
    out.truncate(8);
    out
}
