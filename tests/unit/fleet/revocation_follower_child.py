"""Child process of the two-process revocation tests and of bench/bench_revocation.py.

Usage: ``python revocation_follower_child.py DB_URL [COUNT]``. Runs a RevocationFollower on its
own Database; prints one JSON line ``{"ready": true, ...}`` once it listens, then one line per
event ``{"event": id, "uids": [...], "applied_at": time.time()}``; exits after COUNT events
(default 1) or when stdin closes.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from iotid.fleet.db import Database
from iotid.fleet.revocation import RevocationFollower, RevokedEvent


def main() -> int:
    url = sys.argv[1]
    wanted = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    db = Database(url)
    done = threading.Event()
    seen = 0
    lock = threading.Lock()

    def on_event(event: RevokedEvent) -> None:
        nonlocal seen
        now = time.time()
        line = {"event": event.id, "uids": sorted(event.uids), "applied_at": now}
        with lock:
            print(json.dumps(line), flush=True)
            seen += 1
            if seen >= wanted:
                done.set()

    follower = RevocationFollower(db, on_event=on_event)
    follower.start()
    if not follower.ready.wait(30):
        print(json.dumps({"error": "follower not ready"}), flush=True)
        return 1
    print(json.dumps({"ready": True, "last_event_id": follower.index.last_event_id}), flush=True)

    def watch_stdin() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait()
    follower.stop()
    db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
