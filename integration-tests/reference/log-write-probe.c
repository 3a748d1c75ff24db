/*
 * What writing 1 100-byte records into a commit-log segment costs on this machine, by how the
 * segment is prepared and how records are written (docs/benchmarks.md, "Writing the log through
 * a writable map"). Writes 512 MiB in batches of 10 records, `fdatasync` every 30 MiB (as the
 * ASYNC_FLUSH flusher does at ≈ 60 MB/s), and prints the process's CPU and the whole machine's
 * busy time per record (the latter includes the kernel's write-back threads).
 *
 *   cc -O2 -o /tmp/log-write-probe integration-tests/reference/log-write-probe.c
 *   /tmp/log-write-probe <dir> pwrite-sparse|pwrite-zero|mmap-zero|mmap-falloc|mmap-sparse
 *
 * pwrite-sparse: `pwrite` into a sparse, pre-sized file (what the gateway does in ASYNC_FLUSH);
 * pwrite-zero: the same, with 256 KiB pieces zeroed and written back 8 MiB ahead (the SYNC_FLUSH
 * zeroer); mmap-*: `memcpy` into a shared writable map of the file, zeroed ahead the same way,
 * its blocks reserved ahead with `fallocate`, or sparse.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define SIZE (512L << 20)
#define RECORD 1100
#define BATCH 10
#define PIECE (256L << 10)
#define AHEAD (8L << 20)
#define FLUSH_EVERY (30L << 20)

static double process_cpu(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

/* Busy seconds of all CPUs together (user, nice, system, irq, softirq) from /proc/stat. */
static double machine_busy(void) {
  long user, nice, sys, idle, iowait, irq, softirq;
  FILE *f = fopen("/proc/stat", "r");
  if (!f || fscanf(f, "cpu %ld %ld %ld %ld %ld %ld %ld", &user, &nice, &sys, &idle, &iowait, &irq, &softirq) != 7) {
    perror("/proc/stat");
    exit(1);
  }
  fclose(f);
  return (user + nice + sys + irq + softirq) / (double)sysconf(_SC_CLK_TCK);
}

static void check(int ok, const char *what) {
  if (!ok) {
    perror(what);
    exit(1);
  }
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s <dir> pwrite-sparse|pwrite-zero|mmap-zero|mmap-falloc|mmap-sparse\n", argv[0]);
    return 2;
  }
  const char *mode = argv[2];
  int mapped = strncmp(mode, "mmap", 4) == 0, zero = strstr(mode, "zero") != NULL,
      reserve = strstr(mode, "falloc") != NULL;
  char path[4096];
  snprintf(path, sizeof path, "%s/log-write-probe.%d", argv[1], getpid());
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  check(fd >= 0, path);
  int zero_fd = open(path, O_RDWR); /* the zeroer's own descriptor, as in zero_ahead.rs */
  check(zero_fd >= 0, path);
  check(ftruncate(fd, SIZE) == 0, "ftruncate");
  char *map = NULL;
  if (mapped) {
    map = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    check(map != MAP_FAILED, "mmap");
  }
  char *zeros = calloc(1, PIECE), records[RECORD * BATCH];
  memset(records, 'x', sizeof records);
  long n = (SIZE - AHEAD) / (RECORD * BATCH) * BATCH, at = 0, prepared = 0, flushed = 0;
  double cpu0 = process_cpu(), busy0 = machine_busy();
  for (long i = 0; i < n; i += BATCH) {
    long len = RECORD * BATCH;
    for (; (zero || reserve) && prepared < at + len + AHEAD && prepared < SIZE; prepared += PIECE) {
      if (zero) {
        check(pwrite(zero_fd, zeros, PIECE, prepared) == PIECE, "pwrite zeros");
        check(sync_file_range(zero_fd, prepared, PIECE,
                              SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) == 0,
              "sync_file_range");
      } else {
        check(fallocate(fd, 0, prepared, PIECE) == 0, "fallocate");
      }
    }
    if (mapped) {
      memcpy(map + at, records, len);
    } else {
      check(pwrite(fd, records, len, at) == len, "pwrite");
    }
    at += len;
    if (at - flushed > FLUSH_EVERY) {
      check(fdatasync(fd) == 0, "fdatasync");
      flushed = at;
    }
  }
  check(fdatasync(fd) == 0, "fdatasync");
  double cpu = process_cpu() - cpu0, busy = machine_busy() - busy0;
  printf("%-14s %.3f us/record process CPU, %.3f us/record machine busy\n", mode, cpu * 1e6 / n, busy * 1e6 / n);
  unlink(path);
  return 0;
}
