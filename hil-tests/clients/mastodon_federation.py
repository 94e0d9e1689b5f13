#!/usr/bin/env python3
"""People on two fediverse servers, each in a Mastodon client library nobody here wrote
(Mastodon.py, Debian's python3-mastodon), logged in through their plug's OAuth page
(mastodon_owner.log_in). Every wait is bounded (WAIT seconds) and polls what the person's app
would show.

Usage:
  mastodon_federation.py plugs ATTIC_URL OWNER_PW ALEX_PW CELLAR_URL CELLAR_OWNER_PW
      owner@attic and alex@attic follow owner@cellar; cellar posts, attic sees it and replies;
      owner@attic unfollows; cellar posts again: alex sees it (the control), the owner not.
  mastodon_federation.py bench ATTIC_URL OWNER_PW CELLAR_URL CELLAR_OWNER_PW N
      owner@attic follows owner@cellar; N posts on cellar, each timed to attic's home timeline.
  mastodon_federation.py other ATTIC_URL OWNER_PW HANDLE CONTROL_URL
      owner@attic and another server's person (HANDLE, driven through CONTROL_URL) follow each
      other and post to each other.
Prints one JSON object of what it saw (or {"error": ...}).
"""

import json
import statistics
import sys
import time
import urllib.parse
import urllib.request

from mastodon_owner import log_in, plug_session as session

WAIT = 120


def until(what, check, seconds=WAIT):
    """check()'s first true answer within `seconds`, else an error naming `what`."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {seconds} s")
        time.sleep(0.2)


def account(m, handle):
    """The account `handle` (user@host) as m's server knows it, looked up over there."""
    found = m.search_v2(handle, resolve=True, result_type="accounts")["accounts"]
    return until(f"{handle} found", lambda: found or m.search_v2(handle, resolve=True)["accounts"])[0]


def followers(m, me):
    """Who follows `me` as m's app shows it: the followers list, and the follow notifications
    (snac lists remote followers there)."""
    listed = {f["acct"] for f in m.account_followers(me["id"])}
    notified = {n["account"]["acct"] for n in m.notifications() if n["type"] == "follow"}
    return listed | notified


def in_home(m, text):
    """The status in m's home timeline whose content has `text`, if any."""
    return next((p for p in m.timeline_home(limit=40) if text in p["content"]), None)


def plugs(attic, owner_pw, alex_pw, cellar, cellar_pw):
    seen = {}
    s = session()
    a = log_in(s, attic, "owner", owner_pw)
    x = log_in(s, attic, "alex", alex_pw)
    c = log_in(s, cellar, "owner", cellar_pw)
    c_me = c.account_verify_credentials()
    for who, m in (("owner", a), ("alex", x)):
        there = account(m, "owner@cellar.local")
        m.account_follow(there["id"])
        seen[f"{who}_follows"] = True
    # The follows reach cellar: its owner's followers and notifications show them.
    both = {"owner@attic.local", "alex@attic.local"}
    try:
        until("both followers on cellar", lambda: both <= followers(c, c_me))
    except RuntimeError as e:
        raise RuntimeError(f"{e}; cellar's app shows {sorted(followers(c, c_me))}") from e
    seen["cellar_followers"] = sorted(both & followers(c, c_me))
    seen["cellar_notified"] = any(
        n["type"] == "follow" and n["account"]["acct"] == "owner@attic.local"
        for n in c.notifications()
    )
    post = c.status_post("Hello attic, from the cellar", visibility="public")
    got = until("cellar's post on attic", lambda: in_home(a, "Hello attic, from the cellar"))
    seen["post_on_attic"] = True
    a.status_post("Thanks, cellar!", in_reply_to_id=got["id"], visibility="public")
    until(
        "attic's reply on cellar",
        lambda: any("Thanks, cellar!" in d["content"] for d in c.status_context(post["id"])["descendants"]),
    )
    seen["reply_on_cellar"] = True
    there = account(a, "owner@cellar.local")
    a.account_unfollow(there["id"])
    until(
        "the unfollow on cellar",
        lambda: "owner@attic.local" not in {f["acct"] for f in c.account_followers(c_me["id"])},
    )
    seen["unfollowed"] = True
    c.status_post("After the unfollow", visibility="public")
    until("the next post in alex's timeline", lambda: in_home(x, "After the unfollow"))
    seen["control_got_it"] = True
    seen["owner_got_it"] = in_home(a, "After the unfollow") is not None
    return seen


def bench(attic, owner_pw, cellar, cellar_pw, n):
    s = session()
    a = log_in(s, attic, "owner", owner_pw)
    c = log_in(s, cellar, "owner", cellar_pw)
    c_me = c.account_verify_credentials()
    a.account_follow(account(a, "owner@cellar.local")["id"])
    until("the follow on cellar", lambda: "owner@attic.local" in followers(c, c_me))
    times = []
    for i in range(n):
        text = f"Timed post {i} {time.time()}"
        start = time.monotonic()
        c.status_post(text, visibility="public")
        until(f"post {i} on attic", lambda: in_home(a, text))
        times.append((time.monotonic() - start) * 1000)
    return {"post_to_remote_timeline_ms": statistics.median(times), "times_ms": times}


def control(base, path, **params):
    url = f"{base}/{path}?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(urllib.request.Request(url, method="POST" if params else "GET"), timeout=60) as r:
        return json.load(r)


def other(attic, owner_pw, handle, ctl):
    seen = {}
    s = session()
    a = log_in(s, attic, "owner", owner_pw)
    me = a.account_verify_credentials()
    robin = account(a, handle)
    a.account_follow(robin["id"])
    actor = "https://attic.local/owner"
    until("attic's follow on the other server", lambda: actor in control(ctl, "state")["followers"])
    seen["follow_there"] = True
    until("its Accept on attic", lambda: a.account_relationships(robin["id"])[0]["following"])
    seen["following"] = True
    control(ctl, "follow", handle="@owner@attic.local")
    until("its follow on attic", lambda: handle in followers(a, me))
    seen["followed_back"] = True
    until("attic's Accept there", lambda: actor in control(ctl, "state")["following"])
    control(ctl, "post", text="Hello attic, from elsewhere")
    until("its post on attic", lambda: in_home(a, "Hello attic, from elsewhere"))
    seen["post_on_attic"] = True
    a.status_post("Hello elsewhere, from attic", visibility="public")
    until(
        "attic's post there",
        lambda: any(
            i["actor"] == actor and "Hello elsewhere, from attic" in i["content"]
            for i in control(ctl, "state")["inbox"]
        ),
    )
    seen["post_there"] = True
    return seen


def main():
    what, args = sys.argv[1], sys.argv[2:]
    if what == "plugs":
        seen = plugs(*args[:5])
    elif what == "bench":
        seen = bench(*args[:4], int(args[4]))
    else:
        seen = other(*args[:4])
    print(json.dumps(seen))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the test prints whatever went wrong
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
