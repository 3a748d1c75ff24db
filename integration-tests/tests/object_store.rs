//! The `ObjectStore` contract, one test set for every implementation: `DirStore` on a temp
//! directory and `S3Store` against a real S3-compatible server (moto on loopback, started and
//! stopped here). Plus outages through a fault-injecting proxy in front of moto: refused
//! connections, a black hole and 503 SlowDown must each end a call with `Transient` (never a
//! hang), the same calls succeed once the server is back, and a multipart upload cut in the
//! middle leaves neither an object nor an unfinished upload behind.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use integration_tests::fault_proxy::{Fault, FaultProxy};
use integration_tests::s3::{Kind, S3Server};
use rmq_gateway::storage::object::dir::DirStore;
use rmq_gateway::storage::object::s3::{S3Options, S3Store};
use rmq_gateway::storage::object::{ObjectError, ObjectStore};
use tasks::*;

/// Bound on any single call in these tests: a call that takes longer hangs.
const CALL_LIMIT: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;

mod tasks {
    //! `join_all` with bounded parallelism on tokio tasks (no extra crate).
    use std::future::Future;

    pub async fn run_bounded<F, T>(futs: Vec<F>, limit: usize) -> Vec<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(limit));
        let handles: Vec<_> = futs
            .into_iter()
            .map(|f| {
                let sem = sem.clone();
                tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await.unwrap();
                    f.await
                })
            })
            .collect();
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }
}

/// Deterministic content: byte `i` of object `seed`.
fn pattern(seed: u8, len: u64) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 13) as u8)).collect()
}

/// `data` cut into uneven parts, as the uploader hands over a segment's pieces.
fn split(data: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut parts = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
        let cut = cut.min(data.len());
        parts.push(Bytes::copy_from_slice(&data[start..cut]));
        start = cut;
    }
    parts
}

async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(CALL_LIMIT, fut).await.unwrap_or_else(|_| panic!("{what}: no answer within {CALL_LIMIT:?}"))
}

async fn read(store: &dyn ObjectStore, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
    bounded(&format!("get_range {key} {range:?}"), store.get_range(key, range)).await
}

/// The contract, on any store. `big` is larger than the store's multipart threshold.
async fn conformance(store: Arc<dyn ObjectStore>, big: u64) {
    let s = &*store;
    // Small object from several parts; reads at the edges.
    let small = pattern(1, 1000);
    s.put("seg/small", split(&small, &[1, 500, 999])).await.unwrap();
    assert_eq!(read(s, "seg/small", 0..1000).await.unwrap(), &small[..]);
    assert_eq!(read(s, "seg/small", 0..1).await.unwrap(), &small[..1]);
    assert_eq!(read(s, "seg/small", 999..1000).await.unwrap(), &small[999..]);
    assert_eq!(read(s, "seg/small", 400..600).await.unwrap(), &small[400..600]);
    assert_eq!(read(s, "seg/small", 1000..1000).await.unwrap(), Bytes::new());
    assert_eq!(read(s, "seg/small", 10..10).await.unwrap(), Bytes::new());
    // Past the end: an error, not fewer bytes.
    for range in [999..1001, 0..1001, 1000..1001, 1500..1600] {
        let got = read(s, "seg/small", range.clone()).await;
        assert!(matches!(got, Err(ObjectError::Permanent(_))), "{range:?}: {got:?}");
    }
    let got = read(s, "seg/small", 1001..1001).await;
    assert!(matches!(got, Err(ObjectError::Permanent(_))), "empty range past the end: {got:?}");

    // Large object (multipart on S3), parts of the input not aligned with upload parts.
    let large = pattern(2, big);
    s.put("seg/large", split(&large, &[3, 5 * MIB as usize - 7, 5 * MIB as usize + 11, 9 * MIB as usize]))
        .await
        .unwrap();
    let whole = read(s, "seg/large", 0..big).await.unwrap();
    assert!(whole == large[..], "large object read back differs");
    for range in [0..1, 5 * MIB - 10..5 * MIB + 10, big - 1..big, MIB..3 * MIB + 5] {
        let got = read(s, "seg/large", range.clone()).await.unwrap();
        assert!(got == large[range.start as usize..range.end as usize], "{range:?}");
    }
    assert!(matches!(read(s, "seg/large", big - 1..big + 1).await, Err(ObjectError::Permanent(_))));

    // Missing keys.
    assert!(matches!(read(s, "seg/none", 0..1).await, Err(ObjectError::NotFound(_))));
    assert!(matches!(read(s, "nothing/here", 0..0).await, Err(ObjectError::NotFound(_))));

    // Overwrite, longer and shorter.
    s.put("ow/k", vec![Bytes::from_static(b"first")]).await.unwrap();
    s.put("ow/k", vec![Bytes::from_static(b"second value")]).await.unwrap();
    assert_eq!(read(s, "ow/k", 0..12).await.unwrap(), Bytes::from_static(b"second value"));
    s.put("ow/k", vec![Bytes::from_static(b"3rd")]).await.unwrap();
    assert_eq!(read(s, "ow/k", 0..3).await.unwrap(), Bytes::from_static(b"3rd"));
    assert!(matches!(read(s, "ow/k", 0..4).await, Err(ObjectError::Permanent(_))));

    // Empty object.
    s.put("ow/empty", vec![]).await.unwrap();
    assert_eq!(read(s, "ow/empty", 0..0).await.unwrap(), Bytes::new());
    assert!(matches!(read(s, "ow/empty", 0..1).await, Err(ObjectError::Permanent(_))));

    // Listings by prefix, in key order, with sizes.
    for key in ["p/b/1", "p/a/2", "p/a/1", "q/1", "pz"] {
        s.put(key, vec![Bytes::copy_from_slice(key.as_bytes())]).await.unwrap();
    }
    let keys = |list: Vec<rmq_gateway::storage::object::ObjectMeta>| -> Vec<(String, u64)> {
        list.into_iter().map(|o| (o.key, o.size)).collect()
    };
    assert_eq!(keys(s.list("p/").await.unwrap()), vec![("p/a/1".into(), 5), ("p/a/2".into(), 5), ("p/b/1".into(), 5)]);
    assert_eq!(keys(s.list("p/a").await.unwrap()).len(), 2);
    assert_eq!(keys(s.list("p").await.unwrap()).len(), 4);
    assert_eq!(keys(s.list("zz").await.unwrap()), vec![]);
    let all = s.list("").await.unwrap();
    let all_keys: Vec<_> = all.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(all_keys, vec!["ow/empty", "ow/k", "p/a/1", "p/a/2", "p/b/1", "pz", "q/1", "seg/large", "seg/small"]);
    assert_eq!(all.iter().find(|o| o.key == "seg/large").map(|o| o.size), Some(big));
    assert!(all.iter().all(|o| o.modified_ms > 1_600_000_000_000), "{all:?}");

    // More than one page (1000 keys) of listing.
    let n = 1005;
    let puts: Vec<_> = (0..n)
        .map(|i| {
            let store = Arc::clone(&store);
            async move { store.put(&format!("many/{i:05}"), vec![Bytes::from(vec![7u8; i % 3])]).await }
        })
        .collect();
    for r in run_bounded(puts, 16).await {
        r.unwrap();
    }
    let many = s.list("many/").await.unwrap();
    assert_eq!(many.len(), n);
    assert!(many.windows(2).all(|w| w[0].key < w[1].key));
    assert_eq!(many[1004].key, "many/01004");
    assert_eq!(many[1004].size, 1004 % 3);

    // Deletes: idempotent.
    s.delete("p/a/1").await.unwrap();
    s.delete("p/a/1").await.unwrap();
    s.delete("never/was").await.unwrap();
    assert!(matches!(read(s, "p/a/1", 0..1).await, Err(ObjectError::NotFound(_))));
    assert_eq!(keys(s.list("p/a/").await.unwrap()), vec![("p/a/2".into(), 5)]);
}

fn test_options() -> S3Options {
    // Multipart from 6 MiB in 5 MiB parts (S3's smallest), so the tests stay small.
    S3Options { multipart_threshold: 6 * MIB, part_size: 5 * MIB, ..S3Options::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::open(dir.path().join("objects")).unwrap();
    conformance(Arc::new(store), 12 * MIB + 123).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_conformance_on_moto() {
    let Some(server) = S3Server::start_or_skip("s3_store_conformance_on_moto", Kind::Moto) else { return };
    let store = S3Store::connect_with(&server.store_config("tier/"), test_options()).await.unwrap();
    assert!(store.describe().contains(server.bucket()), "{}", store.describe());
    conformance(Arc::new(store), 12 * MIB + 123).await;
    // The prefix is in the bucket, and out of the keys the store returns.
    let raw = S3Store::connect_with(&server.store_config(""), test_options()).await.unwrap();
    assert!(raw.list("tier/seg/").await.unwrap().iter().any(|o| o.key == "tier/seg/large"));
    // A missing bucket is no reason to retry.
    let mut cfg = server.store_config("");
    cfg.bucket = "no-such-bucket".into();
    let missing = S3Store::connect_with(&cfg, test_options()).await.unwrap();
    let got = bounded("put to a missing bucket", missing.put("k", vec![Bytes::from_static(b"x")])).await;
    assert!(matches!(got, Err(ObjectError::Permanent(_))), "{got:?}");
}

/// Options for the outage tests: short timeouts, one retry inside the SDK.
fn fault_options() -> S3Options {
    S3Options {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        max_attempts: 2,
        ..test_options()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outages_are_transient_and_pass() {
    let Some(server) = S3Server::start_or_skip("s3_outages_are_transient_and_pass", Kind::Moto) else { return };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let store = S3Store::connect_with(&server.store_config_via(&proxy.endpoint(), "f"), fault_options()).await.unwrap();
    store.put("kept", vec![Bytes::from_static(b"before the outage")]).await.unwrap();

    for fault in [Fault::Refuse, Fault::Stall, Fault::SlowDown] {
        proxy.set(fault);
        let put = bounded("put", store.put("new", vec![Bytes::from_static(b"during")])).await;
        assert!(matches!(put, Err(ObjectError::Transient(_))), "{fault:?} put: {put:?}");
        let get = bounded("get", store.get_range("kept", 0..6)).await;
        assert!(matches!(get, Err(ObjectError::Transient(_))), "{fault:?} get: {get:?}");
        let list = bounded("list", store.list("")).await;
        assert!(matches!(list, Err(ObjectError::Transient(_))), "{fault:?} list: {list:?}");
        let delete = bounded("delete", store.delete("kept-not")).await;
        assert!(matches!(delete, Err(ObjectError::Transient(_))), "{fault:?} delete: {delete:?}");

        proxy.set(Fault::Pass);
        bounded("put", store.put("new", vec![Bytes::from_static(b"after")])).await.unwrap();
        let got = bounded("get", store.get_range("kept", 0..6)).await.unwrap();
        assert_eq!(got, Bytes::from_static(b"before"));
        let keys: Vec<_> = bounded("list", store.list("")).await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, vec!["kept", "new"], "{fault:?}");
        bounded("delete", store.delete("new")).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_multipart_cut_in_the_middle_leaves_nothing() {
    let test = "s3_multipart_cut_in_the_middle_leaves_nothing";
    let Some(server) = S3Server::start_or_skip(test, Kind::Moto) else { return };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    // One part at a time and no retry inside the SDK: the cut fails the upload for sure.
    let opts = S3Options { upload_concurrency: 1, max_attempts: 1, ..fault_options() };
    let store = S3Store::connect_with(&server.store_config_via(&proxy.endpoint(), ""), opts).await.unwrap();
    let data = pattern(3, 16 * MIB);
    // Cut the connections in the second part's body; the server is back 1 s later, while the
    // store is still trying to abort the upload.
    proxy.trip_after(7 * MIB, Fault::Refuse, Duration::from_secs(1));
    let put = bounded("interrupted put", store.put("seg/cut", vec![Bytes::from(data.clone())])).await;
    assert!(matches!(put, Err(ObjectError::Transient(_))), "{put:?}");
    // The store's abort outlasts the outage; wait for the proxy anyway before looking.
    bounded("outage end", async {
        while proxy.fault() != Fault::Pass {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    assert!(matches!(read(&store, "seg/cut", 0..1).await, Err(ObjectError::NotFound(_))));
    assert!(store.list("seg/").await.unwrap().is_empty());
    let direct = S3Store::connect_with(&server.store_config(""), test_options()).await.unwrap();
    let uploads = direct.client().list_multipart_uploads().bucket(server.bucket()).send().await.unwrap();
    assert!(uploads.uploads().is_empty(), "unfinished uploads left: {:?}", uploads.uploads());

    // The same put, uninterrupted, goes through.
    store.put("seg/cut", vec![Bytes::from(data.clone())]).await.unwrap();
    assert!(read(&store, "seg/cut", 0..16 * MIB).await.unwrap() == data[..]);
}

/// `put` retried with backoff on `Transient`, as the tiering tasks do.
async fn put_retrying(store: &dyn ObjectStore, key: &str, data: Bytes) -> u32 {
    let mut delay = Duration::from_millis(100);
    let mut transient = 0;
    loop {
        match store.put(key, vec![data.clone()]).await {
            Ok(()) => return transient,
            Err(ObjectError::Transient(_)) => transient += 1,
            Err(e) => panic!("put {key}: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outages_under_load_lose_nothing() {
    let test = "s3_outages_under_load_lose_nothing";
    let Some(server) = S3Server::start_or_skip(test, Kind::Moto) else { return };
    let proxy = Arc::new(FaultProxy::start(server.addr()).await.unwrap());
    let store: Arc<dyn ObjectStore> = Arc::new(
        S3Store::connect_with(&server.store_config_via(&proxy.endpoint(), ""), fault_options()).await.unwrap(),
    );

    // 8 writers, 48 objects (two of them multipart-sized), while the server goes away three
    // ways in turn.
    let objects: Vec<(String, Bytes)> = (0..48u8)
        .map(|i| {
            let len = if i % 24 == 5 { 7 * MIB + 3 } else { 64 * 1024 + i as u64 };
            (format!("load/{i:03}"), Bytes::from(pattern(i, len)))
        })
        .collect();
    let chaos = {
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            for fault in [Fault::Refuse, Fault::Stall, Fault::SlowDown] {
                tokio::time::sleep(Duration::from_millis(500)).await;
                proxy.set(fault);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                proxy.set(Fault::Pass);
            }
        })
    };
    let writes: Vec<_> = objects
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, (key, data))| {
            let store = Arc::clone(&store);
            async move {
                bounded(&format!("retrying put {key}"), async {
                    // Spread the writes over the outages.
                    tokio::time::sleep(Duration::from_millis(120 * i as u64)).await;
                    put_retrying(&*store, &key, data).await
                })
                .await
            }
        })
        .collect();
    let transient: u32 = run_bounded(writes, 8).await.into_iter().sum();
    chaos.await.unwrap();
    proxy.set(Fault::Pass);
    eprintln!("{test}: {transient} transient failures retried");

    let listed: Vec<_> = store.list("load/").await.unwrap().into_iter().map(|o| (o.key, o.size)).collect();
    let expected: Vec<_> = objects.iter().map(|(k, d)| (k.clone(), d.len() as u64)).collect();
    assert_eq!(listed, expected);
    for (key, data) in &objects {
        assert!(read(&*store, key, 0..data.len() as u64).await.unwrap() == data, "{key} differs");
    }
    let direct = S3Store::connect_with(&server.store_config(""), test_options()).await.unwrap();
    let uploads = direct.client().list_multipart_uploads().bucket(server.bucket()).send().await.unwrap();
    assert!(uploads.uploads().is_empty(), "unfinished uploads left: {:?}", uploads.uploads());
}
