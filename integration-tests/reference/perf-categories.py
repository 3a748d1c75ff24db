#!/usr/bin/env python3
"""Splits a `perf record -g` profile of the gateway (as `rmq-gateway bench compare --perf`
writes them: bench-results/perf-<system>[-paced].data) into where the server's CPU goes.

Each sample goes to the first rule, in the order below, that matches its thread name or any
frame of its stack (so a `writev` issued under a handler counts as a socket write, and h2's
own work around a handler as HTTP/2). Usage: perf-categories.py bench-results/perf-gateway-sync.data
Needs a frame-pointer build for full stacks (docs/benchmarks.md, "To profile yourself").
"""
import collections
import subprocess
import sys

if len(sys.argv) != 2:
    sys.exit(__doc__)
data = sys.argv[1]
out = subprocess.run(['perf','script','-i',data,'-F','comm,ip,sym'], capture_output=True, text=True).stdout
samples = out.split('\n\n')
cats = collections.Counter()
rules = [
  ('fdatasync (log writer thread; a syncer thread before 382a621)', lambda c,f: 'fdatasync' in f),
  ('log writer thread', lambda c,f: c.startswith('rmq-log-writer')),
  ('socket writes (writev)', lambda c,f: 'writev' in f or 'sendmsg' in f),
  ('socket reads', lambda c,f: 'recvfrom' in f or 'sys_read' in f or 'readv' in f),
  ('ReceiveMessage', lambda c,f: 'receive_message' in f),
  ('AckMessage', lambda c,f: 'ack_message' in f),
  ('SendMessage', lambda c,f: 'send_message' in f),
  ('HTTP/2, hpack, hyper', lambda c,f: 'h2::' in f or 'hyper::' in f or 'hpack' in f),
  ('tokio scheduler (park/unpark, epoll, futex)', lambda c,f: 'tokio::runtime' in f or 'futex' in f or 'epoll' in f),
  ('other syncer / flusher thread', lambda c,f: c.startswith(('rmq-log-syncer', 'rmq-log-flusher'))),
]
n = 0
for s in samples:
    lines = [l.strip() for l in s.strip().split('\n') if l.strip()]
    if not lines: continue
    comm = lines[0].split()[0]
    frames = ' '.join(lines)
    n += 1
    for name, r in rules:
        if r(comm, frames):
            cats[name] += 1; break
    else:
        cats['other'] += 1
for k, v in cats.most_common():
    print(f"{100*v/n:5.1f} %  {k}")
print(n, 'samples')
