#!/usr/bin/env python3
"""Many Jabber clients (slixmpp) on one plug, for `scripts/bench xmpp`.

Usage: xmpp_bench.py HOST PORT DOMAIN N PASSWORD
Logs in user1 … userN (all with PASSWORD), prints {"online": N}, then answers lines on stdin:
"traffic" (every client sends ROUNDS messages round a ring, then user1 sends SAMPLES messages
to user2 one at a time, each timed from send to receipt) with one JSON line of the figures,
and keeps every client connected until "done". Every wait is bounded.
"""
import asyncio
import json
import statistics
import sys
import time
import uuid

from plug_client import PlugClient

STEP = 120  # seconds any one step may take with many clients on an emulated plug
ROUNDS = 5  # messages each client sends round the ring
SAMPLES = 30  # timed messages between two clients

host, port, domain, n, password = sys.argv[1:6]
port, n = int(port), int(n)


class Client(PlugClient):
    def __init__(self, user):
        super().__init__(f"{user}@{domain}", password)
        self.inbox = asyncio.Queue(maxsize=1000)
        self.add_event_handler("message", self._message)
        self.add_event_handler("failed_all_auth",
                               lambda _e: self.started.done() or self.started.set_exception(
                                   RuntimeError(f"{self.boundjid.bare}: refused")))

    def _message(self, msg):
        if msg["body"]:
            try:
                self.inbox.put_nowait((time.monotonic(), msg["body"]))
            except asyncio.QueueFull:
                pass

    async def expect(self, body):
        while True:
            at, b = await asyncio.wait_for(self.inbox.get(), STEP)
            if b == body:
                return at


async def main():
    loop = asyncio.get_event_loop()
    lines = asyncio.Queue(maxsize=8)
    loop.add_reader(sys.stdin.fileno(), lambda: lines.put_nowait(sys.stdin.readline().strip()))
    clients = [Client(f"user{i + 1}") for i in range(n)]
    for c in clients:
        c.connect((host, port), force_starttls=True)
        # One login at a time: the plug's CPU is the bench's subject, not the clients' burst.
        await asyncio.wait_for(c.started, STEP)
    print(json.dumps({"online": n}), flush=True)
    while True:
        cmd = await asyncio.wait_for(lines.get(), 10 * STEP)
        if cmd == "traffic":
            started = time.monotonic()
            for r in range(ROUNDS):
                bodies = []
                for i, c in enumerate(clients):
                    to = clients[(i + 1) % n]
                    body = f"ring {r} {i} {uuid.uuid4()}"
                    c.send_message(mto=to.boundjid.bare, mbody=body, mtype="chat")
                    bodies.append((to, body))
                for to, body in bodies:
                    await to.expect(body)
            ring_s = time.monotonic() - started
            a, b = clients[0], clients[1]
            times = []
            for _ in range(SAMPLES):
                body = f"timed {uuid.uuid4()}"
                sent = time.monotonic()
                a.send_message(mto=b.boundjid.bare, mbody=body, mtype="chat")
                times.append((await b.expect(body) - sent) * 1000)
            print(json.dumps({
                "message_ms": round(statistics.median(times), 1),
                "message_ms_p90": round(sorted(times)[int(len(times) * 0.9)], 1),
                "ring_messages": ROUNDS * n,
                "ring_s": round(ring_s, 2),
            }), flush=True)
        elif cmd == "done" or cmd == "":
            for c in clients:
                c.disconnect()
            print(json.dumps({"done": True}), flush=True)
            return


try:
    asyncio.get_event_loop().run_until_complete(main())
except Exception as e:  # the bench shows what went wrong
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
