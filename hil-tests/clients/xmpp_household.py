#!/usr/bin/env python3
"""Two household members chat through the plug with slixmpp (a client nobody here wrote).

Usage: xmpp_household.py HOST PORT DOMAIN USER1 PASS1 USER2 PASS2 BADPASS HTTPS_ORIGIN
Prints one JSON object of what each step saw; the Rust test asserts on it. Every wait is
bounded. The plug's certificate is self-signed: the test pins the web's fingerprint elsewhere,
here TLS is required but not verified.
"""
import asyncio
import hashlib
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid

from plug_client import PlugClient

STEP = 60  # seconds any one step may take on an emulated plug

host, port, domain, u1, p1, u2, p2 = sys.argv[1:8]
bad, origin = sys.argv[8], sys.argv[9]
seen = {}


class Client(PlugClient):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        for p in ["xep_0030", "xep_0045", "xep_0059", "xep_0115", "xep_0163", "xep_0198",
                  "xep_0199", "xep_0280", "xep_0313", "xep_0352", "xep_0191", "xep_0054",
                  "xep_0363"]:
            self.register_plugin(p)
        self.inbox = asyncio.Queue(maxsize=100)
        self.failed = asyncio.get_event_loop().create_future()
        self.add_event_handler("message", self._message)
        self.add_event_handler("groupchat_message", self._message)
        self.add_event_handler("failed_auth", lambda _e: self.failed.done() or self.failed.set_result(True))
        self.add_event_handler("tls_success", lambda _e: seen.__setitem__("tls", True))
        self.sm = asyncio.get_event_loop().create_future()
        self.resumed = asyncio.get_event_loop().create_future()
        self.add_event_handler("sm_enabled", lambda _e: self.sm.done() or self.sm.set_result(True))
        self.add_event_handler("session_resumed",
                               lambda _e: self.resumed.done() or self.resumed.set_result(True))

    def _message(self, msg):
        if msg["body"]:
            try:
                self.inbox.put_nowait((msg["type"], str(msg["from"].bare), msg["body"]))
            except asyncio.QueueFull:
                pass

    async def online(self):
        self.connect((host, int(port)), force_starttls=True)
        done, _ = await asyncio.wait([self.started, self.failed], timeout=STEP,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self.failed in done:
            raise RuntimeError(f"{self.boundjid.bare}: authentication failed")
        if not done:
            raise RuntimeError(f"{self.boundjid.bare}: no session in {STEP} s")

    async def expect(self, body, kind=None):
        while True:
            t, frm, b = await asyncio.wait_for(self.inbox.get(), STEP)
            if b == body and (kind is None or t == kind):
                return frm

    async def offline(self):
        self.disconnect()
        await asyncio.wait_for(self.disconnected, STEP)


async def main():
    a, b = Client(f"{u1}@{domain}", p1), Client(f"{u2}@{domain}", p2)
    await a.online()
    await b.online()
    seen["logged_in"] = [str(a.boundjid.bare), str(b.boundjid.bare)]
    seen["stream_management"] = await asyncio.wait_for(a.sm, STEP)
    info = await a["xep_0030"].get_info(jid=domain, timeout=STEP)
    seen["server_features"] = sorted(info["disco_info"]["features"])
    await a["xep_0280"].enable(timeout=STEP)
    seen["carbons"] = True
    a["xep_0352"].send_inactive()
    a["xep_0352"].send_active()

    # 1. A message from one to the other, both online.
    hello = f"hello {uuid.uuid4()}"
    a.send_message(mto=f"{u2}@{domain}", mbody=hello, mtype="chat")
    seen["delivered_from"] = await b.expect(hello)

    # 2. The other is away; the message waits in the archive (MAM) and comes back on login.
    await b.offline()
    later = f"while you were away {uuid.uuid4()}"
    a.send_message(mto=f"{u2}@{domain}", mbody=later, mtype="chat")
    await asyncio.sleep(2)
    b2 = Client(f"{u2}@{domain}", p2)
    await b2.online()
    bodies = []
    async for page in b2["xep_0313"].retrieve(jid=None, with_jid=f"{u1}@{domain}",
                                               iterator=True, rsm={"max": 50}):
        for m in page["mam"]["results"]:
            bodies.append(m["mam_result"]["forwarded"]["stanza"]["body"])
    seen["archive_has_both"] = hello in bodies and later in bodies

    # 3. A group chat at conference.DOMAIN.
    room = f"family@conference.{domain}"
    await a["xep_0045"].join_muc_wait(room, u1, timeout=STEP)
    await b2["xep_0045"].join_muc_wait(room, u2, timeout=STEP)
    news = f"dinner at eight {uuid.uuid4()}"
    a.send_message(mto=room, mbody=news, mtype="groupchat")
    seen["groupchat_from"] = await b2.expect(news, "groupchat")

    # 4. The connection drops (a phone changing networks): the stream is resumed, not restarted.
    a.abort()
    await asyncio.sleep(1)
    a.connect((host, int(port)), force_starttls=True)
    seen["resumed"] = await asyncio.wait_for(a.resumed, STEP)

    # 5. A picture shared in the chat (XEP-0363): a slot from the server, the bytes up over the
    # plug's HTTPS, the link sent, the other side downloads the same bytes. The slot names the
    # plug's domain; from this host the plug's HTTPS is ORIGIN, so the Host header carries it.
    picture = os.urandom(300_000)
    slot = (await a["xep_0363"].request_slot(jid=domain, filename="photo.jpg", size=len(picture),
                                              content_type="image/jpeg", timeout=STEP))["http_upload_slot"]
    put, get = slot["put"]["url"], slot["get"]["url"]
    seen["upload_url"] = get
    headers = {h["name"]: h["value"] for h in slot["put"]["headers"]}
    headers.update({"Content-Type": "image/jpeg", "Content-Length": str(len(picture))})
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE

    def via_plug(url, method, data=None, extra=None):
        u = urllib.parse.urlsplit(url)
        req = urllib.request.Request(origin + u.path, data=data, method=method,
                                     headers={**(extra or {}), "Host": u.netloc})
        with urllib.request.urlopen(req, context=tls, timeout=STEP) as r:
            return r.status, r.read()

    status, _ = await asyncio.to_thread(via_plug, put, "PUT", picture, headers)
    seen["upload_status"] = status
    a.send_message(mto=f"{u2}@{domain}", mbody=get, mtype="chat")
    link = await b2.expect(get) and get
    status, got = await asyncio.to_thread(via_plug, link, "GET")
    seen["download_same"] = status == 200 and hashlib.sha256(got).digest() == hashlib.sha256(picture).digest()
    try:
        await asyncio.to_thread(via_plug, put.replace(".jpg", "-too-big.jpg"), "PUT",
                                b"x", {"Content-Length": str(64 << 20)})
        seen["oversized_upload"] = "accepted"
    except urllib.error.HTTPError as e:
        seen["oversized_upload"] = e.code
    except Exception as e:  # the plug may also close the connection: say what happened
        seen["oversized_upload"] = f"{type(e).__name__}"

    # 6. A wrong password is refused.
    c = Client(f"{u1}@{domain}", bad)
    try:
        await c.online()
        seen["wrong_password"] = "accepted"
    except RuntimeError as e:
        seen["wrong_password"] = "refused" if "authentication failed" in str(e) else str(e)
    c.disconnect()

    for c in (a, b2):
        await c.offline()


try:
    asyncio.get_event_loop().run_until_complete(asyncio.wait_for(main(), 8 * STEP))
except Exception as e:  # the test shows what was seen up to here
    seen["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(seen))
