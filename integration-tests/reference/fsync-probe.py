#!/usr/bin/env python3
"""How long `fdatasync` takes on this disk after a commit-log-sized write, by how the file's
blocks were prepared: a sparse file of the segment's size (what the gateway creates), the same
after `posix_fallocate` (unwritten extents), a file whose blocks were written with zeros and
synced beforehand (Apache RocketMQ's "warm" mapped files), and a file that grows with each
write. Each mode writes 13 KiB (a typical group commit of 1 KiB sends) then syncs, 2000 times.

Usage: fsync-probe.py [DIR] (default: ./target/fsync-probe, on the disk to measure).
docs/benchmarks.md ("Zero-filled segments") has the figures and what they meant end to end.
"""
import os
import sys
import time

DIR = sys.argv[1] if len(sys.argv) > 1 else "target/fsync-probe"
SIZE, WRITE, N = 64 << 20, 13 * 1024, 2000


def run(mode):
    path = os.path.join(DIR, f"seg-{mode}")
    if os.path.exists(path):
        os.unlink(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        if mode == "sparse":
            os.ftruncate(fd, SIZE)
        elif mode == "fallocate":
            os.posix_fallocate(fd, 0, SIZE)
        elif mode == "zeroed":
            zeros = b"\0" * (1 << 20)
            for i in range(SIZE >> 20):
                os.pwrite(fd, zeros, i << 20)
        os.fsync(fd)
        body, lat, off = os.urandom(WRITE), [], 0
        for _ in range(N):
            os.pwrite(fd, body, off)
            off += WRITE
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    print(f"{mode:10s} mean {sum(lat) / N * 1e3:.3f} ms  p50 {lat[N // 2] * 1e3:.3f}  p99 {lat[int(N * 0.99)] * 1e3:.3f}")


os.makedirs(DIR, exist_ok=True)
for _ in range(2):
    for m in ("sparse", "fallocate", "zeroed", "grow"):
        run(m)
