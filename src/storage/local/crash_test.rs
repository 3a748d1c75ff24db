//! Process-level crash test: a child process (this test binary, re-executed with
//! `--exact crash_child` and an environment variable) appends under concurrent load in `Sync`
//! mode and prints every acknowledged `(queue, offset, crc, id)`; the parent SIGKILLs it at a
//! random moment, reopens the log and checks that every acknowledged message is there exactly
//! once, in order, with an intact body. Repeated for many cycles on the same directory; every
//! fourth kill comes right after the start, possibly in the middle of recovery.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};

use super::tests::message;
use super::*;

const CHILD_DIR_ENV: &str = "RMQ_STORAGE_CRASH_CHILD_DIR";
const CHILD_CYCLE_ENV: &str = "RMQ_STORAGE_CRASH_CHILD_CYCLE";
const QUEUES: u32 = 6;
const TASKS: u32 = 48;
const CYCLES: u32 = 24;

fn crash_config(dir: &Path) -> StorageConfig {
    StorageConfig {
        segment_size: 256 * 1024,
        checkpoint_interval: Duration::from_millis(150),
        queue_index_entries_per_file: 1024,
        key_index_memtable_entries: 700,
        ..StorageConfig::new(dir)
    }
}

fn body(cycle: u32, task: u32, seq: u64, len: usize) -> Bytes {
    let mut b = format!("c{cycle}-t{task}-s{seq}|").into_bytes();
    while b.len() < len {
        b.push(b'A' + ((b.len() * 7 + seq as usize) % 26) as u8);
    }
    Bytes::from(b)
}

fn id_of(body: &[u8]) -> String {
    let end = body.iter().position(|&b| b == b'|').unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// The child: appends until killed. A no-op when run as a normal test.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else { return };
    let cycle: u32 = std::env::var(CHILD_CYCLE_ENV).ok().and_then(|c| c.parse().ok()).unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let log = CommitLog::open(crash_config(Path::new(&dir))).unwrap();
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let log = log.clone();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::from_os_rng();
                for seq in 0.. {
                    let queue = (task + seq as u32) % QUEUES;
                    let len = rng.random_range(20..2500);
                    // Every fifth append carries two messages (consecutive offsets).
                    let mut batch = vec![body(cycle, task, seq, len)];
                    if seq % 5 == 0 {
                        batch.push(body(cycle, task + 1000, seq, len / 2 + 20));
                    }
                    let batch: Vec<_> =
                        batch.into_iter().map(|b| message("crash", queue, b.clone(), &id_of(&b), "")).collect();
                    let results = log.append(batch.clone()).await.unwrap();
                    let mut out = out.lock().unwrap();
                    for (m, r) in batch.iter().zip(results) {
                        let crc = crc32c::crc32c(&m.body);
                        writeln!(out, "ack {} {} {} {}", m.queue_id, r.queue_offset, crc, id_of(&m.body)).unwrap();
                    }
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Acked {
    crc: u32,
    id: String,
}

#[test]
fn sigkill_crash_cycles_lose_no_acknowledged_message() {
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut acked: HashMap<u32, BTreeMap<u64, Acked>> = HashMap::new();
    let mut rng = rand::rng();
    let mut total_acks = 0usize;
    for cycle in 0..CYCLES {
        let mut child = Command::new(&exe)
            .args(["--exact", "storage::local::crash_test::crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_CYCLE_ENV, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                // A line cut by the kill has no newline: the ack was not fully reported.
                if buf.last() != Some(&b'\n') {
                    break;
                }
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                if line.starts_with("ack ") {
                    if lines.is_empty() {
                        let _ = first_tx.send(());
                    }
                    lines.push(line);
                }
            }
            lines
        });
        if cycle % 4 == 3 {
            // Early kill: possibly during start-up, i.e. in the middle of recovery.
            std::thread::sleep(Duration::from_millis(rng.random_range(0..40)));
        } else {
            // Kill at a random moment once the child is appending (or after a timeout).
            let _ = first_rx.recv_timeout(Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(rng.random_range(0..250)));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        total_acks += lines.len();
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            let (queue, offset, crc, id) = (f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap(), f[4]);
            let prev = acked.entry(queue).or_default().insert(offset, Acked { crc, id: id.to_string() });
            assert!(prev.is_none(), "offset {queue}/{offset} acknowledged twice (cycle {cycle})");
        }
        verify(dir.path(), &acked, cycle);
    }
    assert!(total_acks > 1000, "only {total_acks} acks over {CYCLES} cycles");
    eprintln!(
        "crash test: {CYCLES} SIGKILL cycles, {total_acks} acknowledged appends verified in {:?}",
        started.elapsed()
    );
}

/// Every acknowledged message is readable, once, at its offset, with its body; queues are
/// dense from 0.
fn verify(dir: &Path, acked: &HashMap<u32, BTreeMap<u64, Acked>>, cycle: u32) {
    let log = CommitLog::open(crash_config(dir)).unwrap();
    let mut seen_ids = HashSet::new();
    for queue in 0..QUEUES {
        let range = log.queue_range("crash", queue);
        assert_eq!(range.start, 0);
        let mut offset = 0;
        while offset < range.end {
            let batch = log.read("crash", queue, offset, 64, 1 << 20).unwrap();
            assert!(!batch.is_empty(), "queue {queue}: nothing at {offset} below end {}", range.end);
            for m in batch {
                assert_eq!(m.queue_offset, offset, "queue {queue} is not dense");
                let id = id_of(&m.body);
                assert!(seen_ids.insert(id.clone()), "message {id} stored twice");
                if let Some(a) = acked.get(&queue).and_then(|q| q.get(&offset)) {
                    assert_eq!(a.id, id, "cycle {cycle}: queue {queue} offset {offset} holds another message");
                    assert_eq!(a.crc, crc32c::crc32c(&m.body), "cycle {cycle}: body of {id} damaged");
                }
                offset += 1;
            }
        }
        if let Some((&last, _)) = acked.get(&queue).and_then(|q| q.last_key_value()) {
            assert!(last < range.end, "cycle {cycle}: acknowledged {queue}/{last} lost (end {})", range.end);
        }
    }
    // The key index was rebuilt as well: spot-check the newest acknowledged ids.
    for q in acked.values() {
        if let Some((_, a)) = q.last_key_value() {
            let found = log.find_by_message_id(&a.id).unwrap();
            assert_eq!(found.len(), 1, "cycle {cycle}: lookup of {}", a.id);
        }
    }
    drop(log);
}
