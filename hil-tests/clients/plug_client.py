"""What every client script here shares: a slixmpp client for the plug, TLS required but not
verified (the plug's certificate is self-signed; the Rust tests pin its key elsewhere), with a
future `started` that a session's start (presence sent, roster fetched) completes."""
import asyncio
import ssl

import slixmpp


class PlugClient(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.ssl_context = ctx
        self.started = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self._start)

    async def _start(self, _event):
        self.send_presence()
        await self.get_roster()
        if not self.started.done():
            self.started.set_result(True)
