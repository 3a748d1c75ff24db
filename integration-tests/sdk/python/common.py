"""Helpers shared by the driver modes (e2e.py and message_types.py).

Imported only after e2e.py has redirected HOME: importing the SDK writes its log under ~/logs.
"""

import threading
import time

from rocketmq import ClientConfiguration, Credentials


def config(args):
    # `--namespace NS`: every client in namespace NS (resource_namespace and x-mq-namespace)
    return ClientConfiguration(args.endpoint, Credentials(), namespace=getattr(args, "namespace", ""))


def now_ms():
    """Local epoch time in (fractional) milliseconds."""
    return time.time() * 1000.0


def describe(e):
    return f"{type(e).__name__}: {e}"


def shutdown_bounded(client, limit=15.0):
    """Calls client.shutdown() on a helper thread; returns an error string or None."""
    outcome = {}

    def run():
        try:
            client.shutdown()
        except Exception as e:  # report, never raise
            outcome["error"] = describe(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive():
        return f"shutdown did not finish within {limit}s"
    return outcome.get("error")


def shutdown_all(clients, limit=15.0):
    """Shuts the clients down in parallel; returns the list of error strings (None for a clean one)."""
    results = [None] * len(clients)

    def run(i):
        results[i] = shutdown_bounded(clients[i], limit)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(limit + 1)
    return results
