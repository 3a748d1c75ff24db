#!/usr/bin/env python3
"""How long `fdatasync` takes on this disk after a commit-log-sized write, by how the file's
blocks were prepared: a sparse file of the segment's size (what the gateway creates), the same
after `posix_fallocate` (unwritten extents), a file whose blocks were written with zeros and
synced beforehand (Apache RocketMQ's "warm" mapped files), and a file that grows with each
write. Each mode writes 13 KiB (a typical group commit of 1 KiB sends) then syncs, 2000 times.
Then whether two group commits could overlap: two threads each write 13 KiB to their own part
of one sparse file and `fdatasync` at the same moment, against one thread doing one of them;
a pair that takes about as long as one would mean a second syncer could halve the wait.

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


def overlap():
    import threading

    path = os.path.join(DIR, "seg-overlap")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    os.ftruncate(fd, SIZE)
    os.fsync(fd)
    body = os.urandom(WRITE)
    go, done = threading.Barrier(3), threading.Barrier(3)
    offsets = [0, SIZE // 2]
    stop = False

    def syncer(i):
        while True:
            go.wait()
            if stop:
                return
            os.pwrite(fd, body, offsets[i])
            offsets[i] += WRITE
            os.fdatasync(fd)
            done.wait()

    threads = [threading.Thread(target=syncer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    one, two = [], []
    try:
        for _ in range(N // 2):
            t = time.perf_counter()
            os.pwrite(fd, body, offsets[0])
            offsets[0] += WRITE
            os.fdatasync(fd)
            one.append(time.perf_counter() - t)
            t = time.perf_counter()
            go.wait()
            done.wait()
            two.append(time.perf_counter() - t)
    finally:
        stop = True
        go.wait()
        for t in threads:
            t.join()
        os.close(fd)
        os.unlink(path)
    m1, m2 = sum(one) / len(one), sum(two) / len(two)
    print(f"overlap    one write+fdatasync {m1 * 1e3:.3f} ms, two at once {m2 * 1e3:.3f} ms ({m2 / m1:.2f}x)")


os.makedirs(DIR, exist_ok=True)
for _ in range(2):
    for m in ("sparse", "fallocate", "zeroed", "grow"):
        run(m)
for _ in range(2):
    overlap()
