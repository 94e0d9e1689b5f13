#!/usr/bin/env python3
"""The owner uses the plug's fediverse account from a Mastodon client library nobody here
wrote (Mastodon.py, Debian's python3-mastodon): registers an app, logs in through OAuth as a
person would (the plug's login page, then the code), posts a status with a picture, reads the
home timeline, favourites the post, and checks WebFinger and the actor document; then sends
what a hostile server would (inbox deliveries unsigned, badly signed, oversized); then a
household member logs in from their own app, follows the owner and unfollows.

Usage: mastodon_owner.py BASE_URL DOMAIN USER PASSWORD MEMBER MEMBER_PASSWORD
Prints one JSON object of what it saw (or {"error": ...}).
"""

import http.client
import json
import re
import ssl
import struct
import sys
import time
import zlib

import requests
import urllib3
from mastodon import Mastodon

OOB = "urn:ietf:wg:oauth:2.0:oob"
SCOPES = ["read", "write", "follow"]


def png(width, height):
    """A small, valid PNG picture (an uploaded image must be one)."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes([x % 256, 80, 160]) * width for x in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def log_in(s, base, user, password):
    """An app, then the person's login on the plug's own page, then the code for a token."""
    client_id, client_secret = Mastodon.create_app(
        "cairn-test", scopes=SCOPES, redirect_uris=OOB, api_base_url=base, session=s
    )
    m = Mastodon(
        client_id=client_id,
        client_secret=client_secret,
        api_base_url=base,
        session=s,
        version_check_mode="none",
        request_timeout=60,
    )
    page = s.get(m.auth_request_url(redirect_uris=OOB, scopes=SCOPES), timeout=60)
    form = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page.text))
    action = re.search(r'<form[^>]*action="([^"]+)"', page.text)
    if not action:
        raise RuntimeError(f"no login form: {page.status_code} {page.text[:300]}")
    form.update({"login": user, "passwd": password})
    target = re.sub(r"^https://[^/]+", "", action.group(1))
    answer = s.post(base + target, data=form, timeout=60, allow_redirects=False)
    text = answer.text + answer.headers.get("Location", "")
    # Redirected with ?code=…, or (out of band) the code shown for the person to copy.
    code = re.search(r"code=([0-9a-f]+)", text) or re.search(r"\b([0-9a-f]{16,})\b", text)
    if not code:
        raise RuntimeError(f"no code after login: {answer.status_code} {text[:300]}")
    m.log_in(code=code.group(1), redirect_uri=OOB, scopes=SCOPES)
    return m


def plug_session():
    """An HTTP session for the plug through its forwarded port."""
    urllib3.disable_warnings()
    s = requests.Session()
    # The plug's certificate is its own, self-signed: the test pins nothing here, it checks
    # what the plug answers.
    s.verify = False
    # requests lets $REQUESTS_CA_BUNDLE override `verify` unless the environment is ignored.
    s.trust_env = False
    return s


def webfinger(s, base, user, domain):
    """WebFinger's answer for `user@domain`, as other servers ask it."""
    return s.get(
        f"{base}/.well-known/webfinger",
        params={"resource": f"acct:{user}@{domain}"},
        timeout=60,
    )


def main():
    base, domain, user, password, member, member_password = sys.argv[1:7]
    seen = {}
    s = plug_session()

    # Discovery, as other servers do it.
    wf = webfinger(s, base, user, domain)
    seen["webfinger_status"] = wf.status_code
    links = wf.json().get("links", []) if wf.ok else []
    actor_url = next(
        (l.get("href") for l in links if l.get("type") == "application/activity+json"), None
    )
    seen["actor_url"] = actor_url
    if actor_url:
        path = re.sub(r"^https://[^/]+", "", actor_url)
        actor = s.get(
            base + path, headers={"Accept": "application/activity+json"}, timeout=60
        ).json()
        seen["actor_type"] = actor.get("type")
        seen["actor_inbox"] = actor.get("inbox")
        key = actor.get("publicKey", {})
        seen["actor_key_owner"] = key.get("owner")
        seen["actor_key_pem"] = key.get("publicKeyPem", "").startswith(
            "-----BEGIN PUBLIC KEY-----"
        )

    m = log_in(s, base, user, password)
    me = m.account_verify_credentials()
    seen["logged_in"] = me["acct"]

    media = m.media_post(png(32, 24), mime_type="image/png", description="a test picture")
    status = m.status_post("Hello from the plug", media_ids=[media])
    # For the app's return after snac restarts (mastodon_again.py): the same token, the post.
    seen["owner_token"] = m.access_token
    seen["post_id"] = status["id"]
    seen["posted_media"] = len(status["media_attachments"])
    home = m.timeline_home()
    seen["home_has_post"] = any(p["id"] == status["id"] for p in home)
    m.status_favourite(status["id"])
    again = m.status(status["id"])
    seen["favourited"] = bool(again.get("favourited"))
    picture = again["media_attachments"][0]["url"]
    got = s.get(base + re.sub(r"^https://[^/]+", "", picture), timeout=60)
    seen["picture_same"] = got.ok and got.content == png(32, 24)

    # Hostile input: an inbox delivery without a signature, one signed with a key nobody
    # published, and a body over the proxy's limit. snac keeps answering afterwards.
    # A mention of the owner: accepted, it would be in the notifications and the timeline.
    me_url = f"https://{domain}/{user}"
    activity = {
        "@context": "https://www.w3.org/ns/activitystreams",
        "id": "https://intruder.example/users/x/create/1",
        "type": "Create",
        "actor": "https://intruder.example/users/x",
        "to": [me_url],
        "object": {
            "id": "https://intruder.example/users/x/note/1",
            "type": "Note",
            "attributedTo": "https://intruder.example/users/x",
            "to": [me_url],
            "content": f"@{user} forged",
            "tag": [{"type": "Mention", "href": me_url, "name": f"@{user}@{domain}"}],
        },
    }
    hdrs = {"Content-Type": "application/activity+json"}
    r = s.post(f"{base}/{user}/inbox", data=json.dumps(activity), headers=hdrs, timeout=60)
    seen["unsigned_inbox"] = r.status_code
    hdrs["Signature"] = (
        'keyId="https://intruder.example/users/x#main-key",headers="(request-target) host date",'
        'signature="AAAA"'
    )
    hdrs["Date"] = "Sat, 05 Dec 2026 12:00:00 GMT"
    r = s.post(f"{base}/{user}/inbox", data=json.dumps(activity), headers=hdrs, timeout=60)
    seen["badly_signed_inbox"] = r.status_code
    # The size is declared and the body not sent: the proxy answers from the header.
    host, port = re.match(r"https://([^:/]+):(\d+)", base).groups()
    c = http.client.HTTPSConnection(
        host, int(port), timeout=60, context=ssl._create_unverified_context()
    )
    c.putrequest("POST", f"/{user}/inbox")
    c.putheader("Content-Type", "application/activity+json")
    c.putheader("Content-Length", str(16 * 1024 * 1024 + 1))
    c.endheaders()
    seen["oversized_inbox"] = c.getresponse().status
    c.close()
    # snac takes deliveries into a queue and checks them there: give it time to.
    time.sleep(5)
    after = m.timeline_home()
    seen["forged_in_timeline"] = any("forged" in p["content"] for p in after)
    seen["forged_notified"] = any(
        "forged" in ((n.get("status") or {}).get("content") or "") for n in m.notifications()
    )
    seen["still_answers"] = webfinger(s, base, user, domain).status_code

    # A household member follows the owner from their own app, then unfollows.
    a = log_in(s, base, member, member_password)
    seen["member_logged_in"] = a.account_verify_credentials()["acct"]
    # The owner's account as the owner's own app named it (an id is the same for everyone).
    owner = a.account(me["id"])
    a.account_follow(owner["id"])
    seen["member_follows"] = bool(a.account_relationships(owner["id"])[0]["following"])
    followers = m.account_followers(me["id"])
    seen["owner_followed_by"] = [f["username"] for f in followers]
    a.account_unfollow(owner["id"])
    seen["member_unfollowed"] = not a.account_relationships(owner["id"])[0]["following"]
    print(json.dumps(seen))


def report(main):
    """Runs `main`; whatever goes wrong is its one JSON line, for the test to print."""
    try:
        main()
    except Exception as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)


if __name__ == "__main__":
    report(main)
