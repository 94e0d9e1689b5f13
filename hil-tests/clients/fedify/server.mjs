// The federation test's other ActivityPub server: Fedify (an implementation nobody here wrote:
// WebFinger, actors, HTTP signatures made and checked, delivery) serving one person, `robin`,
// over HTTPS with a certificate of its own. This file only wires Fedify to Node's HTTPS server
// and gives the test three controls on loopback: follow someone, post, and what arrived.
//
// Usage: node server.mjs DOMAIN ADDRESS CERT KEY CONTROL_PORT HOSTS_JSON
//   HOSTS_JSON: {"attic.local": "169.254.x.y"}, the LAN's names (the host has no mDNS
//   resolver; an administrator's DNS would hold them). The plugs' certificates are trusted
//   through NODE_EXTRA_CA_CERTS, as the owner of such a server would add them.
import dns from "node:dns";
import fs from "node:fs";
import http from "node:http";
import https from "node:https";
import {
  Accept,
  createFederation,
  Create,
  Endpoints,
  Follow,
  generateCryptoKeyPair,
  MemoryKvStore,
  Note,
  Person,
  PUBLIC_COLLECTION,
  Undo,
} from "@fedify/fedify";
import { Temporal } from "@js-temporal/polyfill";

const [domain, address, certFile, keyFile, controlPort, hostsJson] = process.argv.slice(2);
const hosts = JSON.parse(hostsJson);
const lookup = dns.lookup;
dns.lookup = (host, opts, cb) => {
  if (typeof opts === "function") [cb, opts] = [opts, {}];
  const ip = hosts[host];
  if (ip === undefined) return lookup(host, opts, cb);
  return opts?.all ? cb(null, [{ address: ip, family: 4 }]) : cb(null, ip, 4);
};

const ME = "robin";
const BODY_BYTES_MAX = 1 << 20;
const keys = await generateCryptoKeyPair("RSASSA-PKCS1-v1_5");
const followers = new Map(); // actor id → actor
const following = new Set(); // actor ids whose Accept arrived
const inbox = []; // {actor, content} of each Create received
const notes = new Map(); // id → Note
let next = 0;

const federation = createFederation({
  kv: new MemoryKvStore(),
  // The test's LAN is link-local.
  allowPrivateAddress: true,
});
federation
  .setActorDispatcher("/users/{identifier}", async (ctx, identifier) => {
    if (identifier !== ME) return null;
    const pairs = await ctx.getActorKeyPairs(identifier);
    return new Person({
      id: ctx.getActorUri(identifier),
      preferredUsername: identifier,
      name: "Robin",
      inbox: ctx.getInboxUri(identifier),
      endpoints: new Endpoints({ sharedInbox: ctx.getInboxUri() }),
      url: ctx.getActorUri(identifier),
      publicKey: pairs[0].cryptographicKey,
      assertionMethods: pairs.map((p) => p.multikey),
    });
  })
  .setKeyPairsDispatcher(async (_ctx, identifier) => (identifier === ME ? [keys] : []));
federation.setObjectDispatcher(Note, "/users/{identifier}/posts/{id}", (_ctx, v) =>
  notes.get(v.id) ?? null,
);
federation
  .setInboxListeners("/users/{identifier}/inbox", "/inbox")
  .on(Follow, async (ctx, follow) => {
    const follower = await follow.getActor(ctx);
    if (follower?.id == null) return;
    followers.set(follower.id.href, follower);
    await ctx.sendActivity(
      { identifier: ME },
      follower,
      new Accept({
        id: new URL(`#accepts/${next++}`, ctx.getActorUri(ME)),
        actor: ctx.getActorUri(ME),
        object: follow,
      }),
    );
  })
  .on(Accept, async (_ctx, accept) => {
    if (accept.actorId) following.add(accept.actorId.href);
  })
  .on(Undo, async (_ctx, undo) => {
    if (undo.actorId) followers.delete(undo.actorId.href);
  })
  .on(Create, async (ctx, create) => {
    const object = await create.getObject(ctx);
    inbox.push({ actor: create.actorId?.href, content: String(object?.content ?? "") });
  })
  .onError((_ctx, e) => console.error("inbox:", e));

/** A request of Node's as the Fetch API's, its body bounded. */
async function request(req, base) {
  const chunks = [];
  let size = 0;
  for await (const c of req) {
    size += c.length;
    if (size > BODY_BYTES_MAX) throw new Error("body too large");
    chunks.push(c);
  }
  const headers = new Headers();
  for (const [k, v] of Object.entries(req.headers)) headers.set(k, [v].flat().join(", "));
  const body = chunks.length ? Buffer.concat(chunks) : undefined;
  return new Request(new URL(req.url, base), { method: req.method, headers, body });
}

/** Writes a Fetch API response to Node's. */
async function reply(res, response) {
  res.writeHead(response.status, Object.fromEntries(response.headers));
  res.end(Buffer.from(await response.arrayBuffer()));
}

const tls = { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) };
https
  .createServer(tls, async (req, res) => {
    try {
      await reply(res, await federation.fetch(await request(req, `https://${domain}`), {
        contextData: undefined,
      }));
    } catch (e) {
      console.error("https:", e);
      res.writeHead(500).end();
    }
  })
  .listen(443, address);

const context = () => federation.createContext(new URL(`https://${domain}/`), undefined);
// The test's controls, on loopback only.
http
  .createServer(async (req, res) => {
    const url = new URL(req.url, "http://control");
    try {
      const ctx = context();
      const me = ctx.getActorUri(ME);
      let answer = {};
      if (url.pathname === "/follow") {
        const actor = await ctx.lookupObject(url.searchParams.get("handle"));
        if (actor?.id == null) throw new Error(`no such actor: ${url.searchParams.get("handle")}`);
        const follow = new Follow({ id: new URL(`#follows/${next++}`, me), actor: me, object: actor.id });
        await ctx.sendActivity({ identifier: ME }, actor, follow);
        answer = { actor: actor.id.href };
      } else if (url.pathname === "/post") {
        const id = String(next++);
        const note = new Note({
          id: ctx.getObjectUri(Note, { identifier: ME, id }),
          attribution: me,
          content: url.searchParams.get("text"),
          to: PUBLIC_COLLECTION,
          ccs: [...followers.keys()].map((a) => new URL(a)),
          published: Temporal.Now.instant(),
        });
        notes.set(id, note);
        const create = new Create({
          id: new URL(`#create/${id}`, me),
          actor: me,
          object: note,
          to: PUBLIC_COLLECTION,
          ccs: note.ccIds,
        });
        await ctx.sendActivity({ identifier: ME }, [...followers.values()], create);
        answer = { note: note.id.href, to: [...followers.keys()] };
      } else if (url.pathname === "/state") {
        answer = { followers: [...followers.keys()], following: [...following], inbox };
      } else {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(answer));
    } catch (e) {
      console.error("control:", e);
      res.writeHead(500, { "content-type": "application/json" }).end(JSON.stringify({ error: String(e) }));
    }
  })
  .listen(Number(controlPort), "127.0.0.1", () => console.log("listening"));
