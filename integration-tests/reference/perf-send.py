#!/usr/bin/env python3
"""Splits `perf record -g` profiles of the no-op server and of the gateway at a send-only load
into the parts of a send, in µs of server CPU per message (samples / rate / messages), the two
side by side. Written for perf-send.sh, which passes: <Hz> <window seconds> and then, per run,
a path prefix whose .txt holds `perf script -F comm,ip,sym` and whose .rate the load's msg/s.
Runs named noop-* are the ceiling's, the others the gateway's; each column is the mean of its
runs.

Each sample goes to the first part, in the order below, that its thread name or its stack
matches (a `pwrite` under the log's write counts as the page-cache write, not as the handler
that issued it)."""
import collections
import sys

PARTS = [
    # (part, test on (thread name, stack from the outermost frame))
    ('log: fdatasync', lambda c, s: 'fdatasync' in s),
    ('log: pwrite (page cache)', lambda c, s: 'Writer::process' in s and 'pwrite' in s),
    ('log: encode, CRC, index, publish', lambda c, s: 'Writer::process' in s),
    ('log writer thread, other', lambda c, s: c.startswith('rmq-log-writer')),
    ('other gateway threads (flusher, maintenance, zeroer…)',
     lambda c, s: not c.startswith('rmq-grpc-io') and not c.startswith('tokio')),
    ('append hand-off (submit, pass, answer)', lambda c, s: 'CommitLog' in s),
    ('broker send (validation, topic, admission, properties)', lambda c, s: 'Broker::send_from' in s),
    ('SendMessage handler (context, conversion, response)',
     # The trait method, or (since `91d84d0`) the inherent `send` that the wrapper awaits.
     lambda c, s: ('MessagingServiceImpl as' in s and '::send_message' in s) or 'grpc::MessagingServiceImpl::send' in s
     or 'NoopService as' in s),
    ('metrics around the call (Metered)', lambda c, s: 'metered::Metered as' in s),
    ('socket writes', lambda c, s: 'writev' in s or 'sendmsg' in s or 'sendto' in s),
    ('socket reads', lambda c, s: 'recvfrom' in s or 'sys_read' in s or 'readv' in s),
    ('idle loop: epoll, park, timers', lambda c, s: 'Context::park' in s or 'epoll_wait' in s),
    ('HTTP/2, hyper, tonic, protobuf (the rest of the I/O threads)', lambda c, s: True),
]


def split(prefix):
    counts = collections.Counter()
    with open(prefix + '.txt') as f:
        text = f.read()
    for sample in text.split('\n\n'):
        lines = [l.strip() for l in sample.strip().split('\n') if l.strip()]
        if not lines:
            continue
        comm = lines[0].split()[0]
        stack = ' | '.join(reversed([' '.join(l.split()[1:]) for l in lines[1:]]))
        for name, test in PARTS:
            if test(comm, stack):
                counts[name] += 1
                break
    with open(prefix + '.rate') as f:
        rate = float(f.read().strip() or 0)
    return counts, rate


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    hz, window = float(sys.argv[1]), float(sys.argv[2])
    cols = {'noop': [], 'gateway': []}
    for prefix in sys.argv[3:]:
        counts, rate = split(prefix)
        if rate <= 0:
            sys.exit(f'perf-send.py: no rate for {prefix}')
        per_msg = {k: v / hz / (rate * window) * 1e6 for k, v in counts.items()}
        side = 'noop' if prefix.rsplit('/', 1)[-1].startswith('noop') else 'gateway'
        cols[side].append((rate, per_msg))
    for side, runs in cols.items():
        print(f"{side}: " + ', '.join(f"{r / 1000:.1f} k msg/s at {sum(p.values()):.2f} µs/msg" for r, p in runs))
    mean = {side: {name: sum(p.get(name, 0) for _, p in runs) / max(len(runs), 1) for name, _ in PARTS}
            for side, runs in cols.items()}
    print()
    print('| part of a send, µs of server CPU per message | no-op ceiling | gateway | gateway − ceiling |')
    print('|---|---:|---:|---:|')
    for name, _ in PARTS:
        n, g = mean['noop'][name], mean['gateway'][name]
        if n or g:
            print(f'| {name} | {n:.2f} | {g:.2f} | {g - n:+.2f} |')
    n, g = sum(mean['noop'].values()), sum(mean['gateway'].values())
    print(f'| **whole server** | **{n:.2f}** | **{g:.2f}** | **{g - n:+.2f}** |')


if __name__ == '__main__':
    main()
