//! The control socket's server side (the protocol is described in [`crate::control`]).
//!
//! At most [`CLIENTS_MAX`] connections are served at once; each holds at most one message
//! (≤ one shard) in memory. The socket is created mode 0600: only the node's own user (and
//! root) may place, fetch or pair.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use libp2p::multiaddr::Protocol;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, Semaphore};

use crate::control::{self, PairOutcome};
use crate::invite::{secret_hash, Invitation};
use crate::owner;
use crate::state::{now_secs, Cmd, Shared};
use crate::wire::{Msg, PAIR_INVITE};

/// Control connections served at once.
pub const CLIENTS_MAX: usize = 16;

/// Longest pairing window a request may open.
const WINDOW_MAX: Duration = Duration::from_secs(600);

/// Binds the socket (replacing a stale one) with mode 0660: the node's group may use it (on a
/// plug the web joins that group); who may reach it at all is its directory's business.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    }
    let l = UnixListener::bind(path).with_context(|| format!("{}: binding", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

/// Accepts and serves control connections forever.
pub async fn serve(shared: Arc<Shared>, listener: UnixListener) {
    let slots = Arc::new(Semaphore::new(CLIENTS_MAX));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(&shared, stream).await {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::warn!("control connection: {e}");
                }
            }
        });
    }
}

async fn read_msg(s: &mut UnixStream) -> std::io::Result<Option<(Value, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut h = vec![0u8; control::header_len(len)?];
    s.read_exact(&mut h).await?;
    let header = control::parse_header(&h)?;
    s.read_exact(&mut len).await?;
    let mut payload = vec![0u8; control::payload_len(len)?];
    s.read_exact(&mut payload).await?;
    Ok(Some((header, payload)))
}

async fn write_msg(s: &mut UnixStream, header: &Value, payload: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(payload.len() + 256);
    crate::control::write_msg(&mut buf, header, payload)?;
    s.write_all(&buf).await
}

async fn connection(shared: &Arc<Shared>, mut s: UnixStream) -> std::io::Result<()> {
    loop {
        let (h, payload) = match read_msg(&mut s).await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(e) => {
                // Tell the client what was wrong, then close: the stream is out of step.
                let _ = write_msg(&mut s, &json!({"ok": false, "error": e.to_string()}), &[]).await;
                return Err(e);
            }
        };
        let (answer, data) = handle(shared, &h, payload).await;
        write_msg(&mut s, &answer, &data).await?;
    }
}

fn fail(e: impl std::fmt::Display) -> (Value, Vec<u8>) {
    (json!({"ok": false, "error": e.to_string()}), Vec::new())
}

fn ok(v: Value) -> (Value, Vec<u8>) {
    let mut v = v;
    v["ok"] = json!(true);
    (v, Vec::new())
}

async fn handle(shared: &Arc<Shared>, h: &Value, payload: Vec<u8>) -> (Value, Vec<u8>) {
    let op = h["op"].as_str().unwrap_or("");
    let owner_key = h["owner"].as_str().and_then(owner::parse_chunk);
    match op {
        // Cheap, unlike status (which walks every record): what an owner signs for.
        // With `owner`: the epoch of this node's statement of it (0: none), which a new
        // statement must exceed.
        "peer" => ok(json!({
            "peer": shared.me.to_string(),
            "epoch": owner_key.and_then(|o| shared.auth_for(&o)).map_or(0, |a| a.epoch),
        })),
        "owner" => register_owner(shared, h),
        "rejoin" => rejoin(shared, h["addr"].as_str().unwrap_or("")).await,
        "put_shard" => match owner_key {
            Some(o) => put_shard(shared, o, payload).await,
            None => fail("put_shard needs owner (the owner key, 64 hex digits)"),
        },
        "get_shard" => {
            let (Some(owner_key), Some(chunk), Some(index)) = (
                owner_key,
                h["chunk"].as_str().and_then(owner::parse_chunk),
                h["index"].as_u64().and_then(|i| u8::try_from(i).ok()),
            ) else {
                return fail(
                    "get_shard needs owner and chunk (64 hex digits each) and index (0-255)",
                );
            };
            let avoid = match owner::parse_avoid(&h["avoid"]) {
                Ok(a) => a,
                Err(e) => return fail(&e),
            };
            match owner::get_shard(shared, owner_key, chunk, index, &avoid).await {
                Ok((data, from)) => (
                    json!({"ok": true, "from": from.map(|p| p.to_base58())}),
                    data,
                ),
                Err(e) => (
                    json!({"ok": false, "missing": e.missing, "error": e.reason}),
                    Vec::new(),
                ),
            }
        }
        "flush" => flush(shared).await,
        "status" => status(shared).await,
        "pair" => {
            let window =
                Duration::from_millis(h["window_ms"].as_u64().unwrap_or(120_000)).min(WINDOW_MAX);
            let (tx, rx) = oneshot::channel();
            if shared
                .cmd
                .send(Cmd::Pair { window, reply: tx })
                .await
                .is_err()
            {
                return fail("node is shutting down");
            }
            match rx.await {
                Ok(Ok(PairOutcome::Paired { peer, code })) => {
                    ok(json!({"outcome": "paired", "peer": peer, "code": code}))
                }
                Ok(Ok(PairOutcome::Unconfirmed { peer })) => ok(json!({
                    "outcome": "unconfirmed",
                    "peer": peer,
                    "message": format!("{peer} was in pairing mode but did not confirm; refused"),
                })),
                Ok(Ok(PairOutcome::Overlap { candidates })) => ok(json!({
                    "outcome": "overlap",
                    "candidates": candidates,
                    "message": format!(
                        "{} plugs are in pairing mode: {}; refused, as nobody can tell which one \
                         is meant — press the buttons again with only two plugs",
                        candidates.len(),
                        candidates.join(", ")
                    ),
                })),
                Ok(Ok(PairOutcome::NoneFound)) => ok(json!({"outcome": "none"})),
                Ok(Err(e)) => fail(e),
                Err(_) => fail("node is shutting down"),
            }
        }
        "invite" => invite(shared, h["ttl_secs"].as_u64().unwrap_or(24 * 3600)),
        "set_capacity" => match h["bytes"].as_u64() {
            Some(bytes) => match shared.set_capacity(bytes) {
                Ok(()) => ok(json!({"capacity": bytes})),
                Err(e) => fail(format!("saving the capacity: {e:#}")),
            },
            None => fail("set_capacity needs bytes (a whole number)"),
        },
        "join" => join(shared, h["code"].as_str().unwrap_or("")).await,
        "audit" => match owner::audit_round(shared, 0).await {
            Ok(r) => {
                if let Err(e) = shared.persist() {
                    return fail(format!("saving audit scores: {e:#}"));
                }
                ok(serde_json::to_value(r).unwrap_or_default())
            }
            Err(e) => fail(e),
        },
        "repair" => match owner::repair_round(shared).await {
            Ok(r) => ok(serde_json::to_value(r).unwrap_or_default()),
            Err(e) => fail(e),
        },
        "unpair" => unpair(shared, h["peer"].as_str().unwrap_or("")),
        "retire" => {
            let within = Duration::from_millis(h["timeout_ms"].as_u64().unwrap_or(5_000))
                .min(Duration::from_secs(30));
            retire(shared, within).await
        }
        other => fail(format!(
            "unknown operation {other:?} (peer, owner, put_shard, get_shard, flush, status, pair, \
             invite, join, rejoin, unpair, retire, set_capacity, audit, repair)"
        )),
    }
}

/// Acts for an owner from now on: `owner` (its key), `epoch` and `sig` (its statement for this
/// plug), hex; see [`crate::identity`].
fn register_owner(shared: &Arc<Shared>, h: &Value) -> (Value, Vec<u8>) {
    let mut auth = crate::wire::OwnerAuth {
        owner: [0; 32],
        epoch: h["epoch"].as_u64().unwrap_or(0),
        sig: [0; 64],
    };
    let parsed = h["owner"]
        .as_str()
        .and_then(|o| hex::decode_to_slice(o, &mut auth.owner).ok())
        .and_then(|()| h["sig"].as_str())
        .and_then(|g| hex::decode_to_slice(g, &mut auth.sig).ok());
    if parsed.is_none() {
        return fail("owner needs owner (64 hex digits) and sig (128 hex digits)");
    }
    match shared.add_owner(auth) {
        Ok(owner) => ok(json!({"owner": hex::encode(owner)})),
        Err(e) => fail(format!("{e:#}")),
    }
}

/// Counts the plug at `addr` (…/p2p/PEER) as a partner again, one-sidedly: after a restore onto
/// a new plug, the owner names the plugs that held its shards. They accept this plug when its
/// requests carry the statement of an owner they held shards for.
async fn rejoin(shared: &Arc<Shared>, addr: &str) -> (Value, Vec<u8>) {
    let Ok(a) = addr.parse::<libp2p::Multiaddr>() else {
        return fail(format!("rejoin: {addr:?} is not a multiaddr"));
    };
    let Some(Protocol::P2p(peer)) = a.iter().last() else {
        return fail(format!("rejoin: {addr} does not end in /p2p/PEERID"));
    };
    if peer == shared.me {
        return fail("rejoin: this is this plug's own address");
    }
    if let Err(e) = shared.add_partner(peer, vec![a.clone()], "rejoin") {
        return fail(format!("{e:#}"));
    }
    let _ = shared
        .cmd
        .send(Cmd::Dial {
            peer,
            addrs: vec![a],
        })
        .await;
    ok(json!({"peer": peer.to_string()}))
}

/// Accepts a shard for placement and answers at once; placement goes on in the background
/// within [`PLACING_BYTES`](crate::state::PLACING_BYTES) (the client waits when it is used up).
async fn put_shard(shared: &Arc<Shared>, owner: [u8; 32], payload: Vec<u8>) -> (Value, Vec<u8>) {
    if shared.auth_for(&owner).is_none() {
        return fail(format!(
            "this node does not act for owner {} (register it first: op owner)",
            hex::encode(owner)
        ));
    }
    let len = u32::try_from(payload.len().max(1)).unwrap_or(u32::MAX);
    let Ok(permit) = shared.placing_budget.clone().acquire_many_owned(len).await else {
        return fail("node is shutting down");
    };
    shared.placing.lock().expect("placing").inflight += 1;
    let s = shared.clone();
    tokio::spawn(async move {
        let r = owner::put_shard(&s, owner, payload).await;
        drop(permit);
        {
            let mut p = s.placing.lock().expect("placing");
            p.inflight -= 1;
            if let Err(e) = r {
                p.failed += 1;
                if p.errors.len() < 4 {
                    p.errors.push(e);
                }
            }
        }
        s.placed.notify_waiters();
    });
    ok(json!({"accepted": true}))
}

/// Waits for every accepted shard to be placed, writes the records, and reports failures.
async fn flush(shared: &Arc<Shared>) -> (Value, Vec<u8>) {
    loop {
        let wait = shared.placed.notified();
        if shared.placing.lock().expect("placing").inflight == 0 {
            break;
        }
        wait.await;
    }
    if let Err(e) = owner::flush(shared).await {
        return fail(e);
    }
    let (failed, errors) = {
        let mut p = shared.placing.lock().expect("placing");
        (std::mem::take(&mut p.failed), std::mem::take(&mut p.errors))
    };
    if failed > 0 {
        return fail(format!(
            "{failed} shards could not be placed: {}",
            errors.join("; ")
        ));
    }
    ok(json!({}))
}

fn invite(shared: &Arc<Shared>, ttl: u64) -> (Value, Vec<u8>) {
    let ttl = ttl.clamp(1, 30 * 24 * 3600);
    let secret: [u8; 16] = rand::random();
    let expires = now_secs() + ttl;
    let addrs: Vec<libp2p::Multiaddr> = {
        let mut st = shared.state();
        let now = now_secs();
        // Expired invitations are dropped whenever a new one is made (bounded list).
        st.saved.invites.retain(|_, t| *t >= now);
        if st.saved.invites.len() >= 64 {
            return fail("64 invitations are open already; wait for some to be used or expire");
        }
        st.saved.invites.insert(secret_hash(&secret), expires);
        // Unspecified addresses (0.0.0.0) are useless to a friend; the concrete ones first.
        let mut a: Vec<_> = st
            .listen
            .iter()
            .filter(|a| {
                !a.iter().any(|p| {
                    matches!(p, Protocol::Ip4(ip) if ip.is_unspecified())
                        || matches!(p, Protocol::Ip6(ip) if ip.is_unspecified())
                })
            })
            .cloned()
            .collect();
        a.sort_by_key(crate::net::is_local);
        a
    };
    if let Err(e) = shared.persist() {
        return fail(format!("{e:#}"));
    }
    let code = Invitation {
        peer: shared.me,
        addrs,
        secret,
        expires,
    }
    .encode();
    ok(json!({"code": code, "expires": expires}))
}

async fn join(shared: &Arc<Shared>, code: &str) -> (Value, Vec<u8>) {
    let inv = match Invitation::decode(code) {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    if inv.expires < now_secs() {
        return fail(format!("the invitation of {} has expired", inv.peer));
    }
    if inv.peer == shared.me {
        return fail("this is this plug's own invitation");
    }
    let _ = shared
        .cmd
        .send(Cmd::Dial {
            peer: inv.peer,
            addrs: inv.addrs.clone(),
        })
        .await;
    let msg = Msg::Pair {
        mode: PAIR_INVITE,
        secret: inv.secret,
    };
    match shared.request(inv.peer, msg).await {
        Ok(Msg::Paired) => match shared.add_partner(inv.peer, inv.addrs, "invitation") {
            Ok(()) => ok(json!({"peer": inv.peer.to_string()})),
            Err(e) => fail(format!("{e:#}")),
        },
        Ok(Msg::Error { reason, .. }) => fail(format!("{} refused: {reason}", inv.peer)),
        Ok(other) => fail(format!("{}: unexpected answer {other:?}", inv.peer)),
        Err(e) => fail(e),
    }
}

/// Forgets a partner (see [`Shared::remove_partner`]); the next repair round places the
/// shards it held for us elsewhere. Answers with the books as they were.
fn unpair(shared: &Arc<Shared>, text: &str) -> (Value, Vec<u8>) {
    let Ok(peer) = text.parse::<libp2p::PeerId>() else {
        return fail(format!("unpair: {text:?} is not a peer id"));
    };
    match shared.remove_partner(&peer) {
        Ok(Some(a)) => ok(json!({
            "peer": peer.to_base58(),
            "held_for_us": a.held_for_us,
            "held_for_them": a.held_for_them,
        })),
        Ok(None) => fail(format!("unpair: {peer} is not a partner of this plug")),
        Err(e) => fail(format!("unpair: {e:#}")),
    }
}

/// Tells every partner that this plug's identity is going (a factory reset is about to
/// destroy its key), all at once, each within `within`; answers how many heard.
async fn retire(shared: &Arc<Shared>, within: Duration) -> (Value, Vec<u8>) {
    let partners: Vec<libp2p::PeerId> = shared.state().saved.partners.keys().copied().collect();
    let told = futures::future::join_all(partners.iter().map(|p| {
        let s = shared.clone();
        let p = *p;
        async move {
            let answer = tokio::time::timeout(within, s.request(p, Msg::Retire)).await;
            matches!(answer, Ok(Ok(Msg::Retired)))
        }
    }))
    .await;
    let heard = told.iter().filter(|t| **t).count();
    tracing::warn!(
        "retiring this identity: {heard} of {} partners told",
        partners.len()
    );
    ok(json!({"partners": partners.len(), "told": heard}))
}

async fn status(shared: &Arc<Shared>) -> (Value, Vec<u8>) {
    let red = owner::redundancy(shared).await;
    let now = now_secs();
    let st = shared.state();
    // Listed in the order of their ids' text form, as partners.json has them.
    let mut partners: Vec<(String, Value)> = st
        .saved
        .partners
        .iter()
        .map(|(id, info)| {
            let a = st.ledger.account(id).unwrap_or_default();
            let connected = st.peers.get(id).is_some_and(|m| m.connections > 0);
            let links: Vec<String> = st
                .peers
                .get(id)
                .map(|m| m.links.iter().map(|(_, a)| a.to_string()).collect())
                .unwrap_or_default();
            let p = id.to_base58();
            let v = json!({
                "peer": p,
                "via": info.via,
                "since": info.since,
                "connected": connected,
                "links": links,
                "health": format!("{:?}", st.tracker.health(id, now)).to_lowercase(),
                "score": st.tracker.score(id),
                "held_for_them": a.held_for_them,
                "held_for_us": a.held_for_us,
            });
            (p, v)
        })
        .collect();
    partners.sort_by(|a, b| a.0.cmp(&b.0));
    let partners: Vec<Value> = partners.into_iter().map(|(_, v)| v).collect();
    let mut v = json!({
        "peer": shared.me.to_string(),
        "listen": st.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "capacity": st.capacity(&shared.cfg),
        "used": st.used,
        "allowance": st.ledger.allowance,
        "partners": partners,
        "frame_budget_free": shared.budget.available(),
        "scrub": serde_json::to_value(&st.scrub).unwrap_or_default(),
    });
    drop(st);
    // The chunk store's own counters: what it holds and what it has written (segments).
    let store = shared.store.stats();
    v["store"] = json!({
        "shards": store.shards,
        "live_bytes": store.live_bytes,
        "dead_bytes": store.dead_bytes,
        "batches": store.batches,
    });
    match red {
        Ok(r) => v["chunks"] = serde_json::to_value(r).unwrap_or_default(),
        Err(e) => v["chunks_error"] = json!(e),
    }
    ok(v)
}
