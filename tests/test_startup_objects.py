"""A server process settles what its start made (`procs.settle_startup_objects`): the garbage
of the start is collected and what is left moves out of the collector's sight, so a full
collection later walks only what the process made since (a fresh interpreter, like a server)."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import gc, json, weakref
import warmroute.app.gateway_app  # a gateway's modules: most of what its start makes
from warmroute.procs import settle_startup_objects

class Node:
    pass

cycle = Node()
cycle.me = cycle
gone = weakref.ref(cycle)
del cycle
before = len(gc.get_objects())
settle_startup_objects()
print(json.dumps({"before": before, "after": len(gc.get_objects()),
                  "frozen": gc.get_freeze_count(), "cycle_collected": gone() is None}))
"""


def test_a_server_start_leaves_its_objects_to_no_later_collection() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["cycle_collected"] is True
    assert report["before"] > 50_000  # what a full collection walked before
    assert report["frozen"] > 50_000
    assert report["after"] < 100  # what one walks now: only what was made since
