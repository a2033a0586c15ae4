"""The audit-derived counters of one batch of `token.issued` events, in process, with
prometheus-client's multi-process values (as under `idhub serve --workers N`).

    python bench/bench_audit_counters.py batch 1100   # count_audit_events per batch
    python bench/bench_audit_counters.py each 1100    # count_audit_event per event

For instructions per batch run it under `valgrind --tool=callgrind` at two batch counts (say
100 and 1100) and divide the difference of the totals by 1000 (start-up cancels).
"""

from __future__ import annotations

import argparse
import os
import tempfile


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("batch", "each"))
    parser.add_argument("batches", type=int)
    parser.add_argument("--size", type=int, default=8, help="events per batch")
    opts = parser.parse_args()
    # Before prometheus-client is imported: its values are then memory-mapped files.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="idhub-bench-counters-")
    import idhub.core.metrics as counting
    from idhub.adapters.prometheus_metrics import PrometheusMetrics

    metrics = PrometheusMetrics()
    details = {"grant_type": "client_credentials", "client_id": "bench-es", "scope": "authz"}
    events = [("token.issued", "bench-es", dict(details)) for _ in range(opts.size)]
    for _ in range(opts.batches):
        if opts.mode == "batch":
            counting.count_audit_events(metrics, list(events))
        else:
            for event in events:
                counting.count_audit_event(metrics, *event)
    child = metrics._child("idhub_tokens_issued_total", ("client_credentials", "bench-es"))
    print(f"{opts.mode}: {child._value.get():.0f} tokens counted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
