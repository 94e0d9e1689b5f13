#!/usr/bin/env python3
"""The owner's Mastodon app comes back after snac was killed and started again by the plug's
supervisor, and after a household account was removed on the Social page: with the token it
had (no new login) it finds its account, its post and the post's picture, and posts again;
WebFinger and the actor document still find the owner and no longer the removed member.

Usage: mastodon_again.py BASE_URL DOMAIN USER TOKEN POST_ID GONE
Prints one JSON object of what it saw (or {"error": ...}).
"""

import json
import re
import sys

from mastodon import Mastodon

from mastodon_owner import plug_session, report, webfinger


def main():
    base, domain, user, token, post_id, gone = sys.argv[1:7]
    seen = {}
    s = plug_session()
    m = Mastodon(
        access_token=token,
        api_base_url=base,
        session=s,
        version_check_mode="none",
        request_timeout=60,
    )
    seen["logged_in_again"] = m.account_verify_credentials()["acct"]
    post = m.status(post_id)
    seen["post_kept"] = "Hello from the plug" in post["content"]
    seen["post_media_kept"] = len(post["media_attachments"])
    picture = post["media_attachments"][0]["url"] if post["media_attachments"] else None
    if picture:
        got = s.get(base + re.sub(r"^https://[^/]+", "", picture), timeout=60)
        seen["picture_kept"] = got.ok and got.content.startswith(b"\x89PNG")
    seen["home_has_post"] = any(p["id"] == post["id"] for p in m.timeline_home())
    seen["posted_after"] = bool(m.status_post("Back after a restart")["id"])

    def finger(name):
        return webfinger(s, base, name, domain).status_code

    def actor(name):
        return s.get(
            f"{base}/{name}",
            headers={"Accept": "application/activity+json"},
            timeout=60,
        ).status_code

    seen["webfinger_owner"] = finger(user)
    seen["webfinger_gone"] = finger(gone)
    seen["actor_owner"] = actor(user)
    seen["actor_gone"] = actor(gone)
    print(json.dumps(seen))


if __name__ == "__main__":
    report(main)
