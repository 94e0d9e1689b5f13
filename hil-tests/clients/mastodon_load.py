#!/usr/bin/env python3
"""A steady load on the plug's fediverse account through the Mastodon client API (Mastodon.py,
through the plug's HTTPS): after logging in as the owner's app does, it posts and reads the
home timeline at a fixed pace for a while, one request at a time, each timed on the host.

Usage: mastodon_load.py BASE_URL USER PASSWORD SECONDS POSTS_PER_MIN READS_PER_MIN
Prints a JSON line once logged in ({"logged_in": USER}), then one of what it did: counts,
the rates it kept, each kind's median and p90 in ms (or {"error": ...}).
"""

import json
import statistics
import sys
import time

from mastodon_owner import log_in, plug_session, report


def p90(xs):
    return sorted(xs)[int(0.9 * (len(xs) - 1))] if xs else None


def main():
    base, user, password = sys.argv[1:4]
    seconds, posts_per_min, reads_per_min = (float(a) for a in sys.argv[4:7])
    m = log_in(plug_session(), base, user, password)
    print(json.dumps({"logged_in": m.account_verify_credentials()["acct"]}), flush=True)
    # Each request at its time on one schedule; one late makes the next ones late, never
    # dropped (the counts say whether the pace held).
    events = sorted(
        [(i * 60 / posts_per_min, "post") for i in range(int(seconds * posts_per_min / 60))]
        + [(i * 60 / reads_per_min, "read") for i in range(int(seconds * reads_per_min / 60))]
    )
    times = {"post": [], "read": []}
    start = time.monotonic()
    for n, (at, kind) in enumerate(events):
        wait = start + at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        t = time.monotonic()
        if kind == "post":
            m.status_post(f"Load post {n}: a household's ordinary day, in a few words.")
        else:
            m.timeline_home(limit=20)
        times[kind].append((time.monotonic() - t) * 1000)
    wall = time.monotonic() - start
    ms = lambda x: round(x, 1) if x is not None else None
    print(
        json.dumps(
            {
                "posts": len(times["post"]),
                "reads": len(times["read"]),
                "wall_s": round(wall, 1),
                "posts_per_min": round(len(times["post"]) * 60 / wall, 1),
                "reads_per_min": round(len(times["read"]) * 60 / wall, 1),
                "post_ms": ms(statistics.median(times["post"])),
                "post_ms_p90": ms(p90(times["post"])),
                "timeline_ms": ms(statistics.median(times["read"])),
                "timeline_ms_p90": ms(p90(times["read"])),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    report(main)
