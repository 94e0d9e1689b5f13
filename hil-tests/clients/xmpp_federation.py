#!/usr/bin/env python3
"""Two people on two Jabber servers write to each other with slixmpp (a client nobody here wrote):
the message travels between the servers (server-to-server), one way and back.

Usage: xmpp_federation.py HOST1 PORT1 JID1 PASS1 HOST2 PORT2 JID2 PASS2
Prints one JSON object of what each step saw; the Rust test asserts on it. Every wait is
bounded. The servers' certificates are self-signed: TLS is required but not verified here.
"""
import asyncio
import json
import ssl
import sys
import uuid

import slixmpp

LOGIN = 60  # seconds a login may take on an emulated plug
# The first message between two servers waits for their connection: name lookups, TLS and
# dialback (which connects back) on emulated CPUs.
DELIVERY = 180

h1, p1, j1, w1, h2, p2, j2, w2 = sys.argv[1:9]
seen = {}


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, host, port):
        super().__init__(jid, password)
        self.where = (host, int(port))
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.ssl_context = ctx
        self.inbox = asyncio.Queue(maxsize=100)
        loop = asyncio.get_event_loop()
        self.started, self.failed = loop.create_future(), loop.create_future()
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("message", self._message)
        self.add_event_handler("failed_auth", lambda _e: self.failed.done() or self.failed.set_result(True))

    async def _start(self, _event):
        self.send_presence()
        if not self.started.done():
            self.started.set_result(True)

    def _message(self, msg):
        if msg["body"] and msg["type"] in ("chat", "normal"):
            try:
                self.inbox.put_nowait((str(msg["from"].bare), msg["body"]))
            except asyncio.QueueFull:
                pass

    async def online(self):
        self.connect(self.where, force_starttls=True)
        done, _ = await asyncio.wait([self.started, self.failed], timeout=LOGIN,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self.failed in done:
            raise RuntimeError(f"{self.boundjid.bare}: authentication failed")
        if not done:
            raise RuntimeError(f"{self.boundjid.bare}: no session in {LOGIN} s")

    async def expect(self, body):
        while True:
            frm, b = await asyncio.wait_for(self.inbox.get(), DELIVERY)
            if b == body:
                return frm


async def main():
    a, b = Client(j1, w1, h1, p1), Client(j2, w2, h2, p2)
    await a.online()
    await b.online()
    seen["logged_in"] = [str(a.boundjid.bare), str(b.boundjid.bare)]
    there = f"hello from {j1} {uuid.uuid4()}"
    a.send_message(mto=j2, mbody=there, mtype="chat")
    seen["there_from"] = await b.expect(there)
    back = f"hello back from {j2} {uuid.uuid4()}"
    b.send_message(mto=j1, mbody=back, mtype="chat")
    seen["back_from"] = await a.expect(back)
    for c in (a, b):
        c.disconnect()
        await asyncio.wait_for(c.disconnected, LOGIN)


try:
    asyncio.get_event_loop().run_until_complete(asyncio.wait_for(main(), 2 * LOGIN + 3 * DELIVERY))
except Exception as e:  # the test shows what was seen up to here
    seen["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(seen))
