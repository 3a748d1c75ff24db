//! The metadata conformance suite (`rmq_gateway::metadata::conformance`) on both stores: SQLite
//! on disk and a real PostgreSQL (services/postgres.sh, a fresh database per check), plus what
//! only a networked store has: a server restart under the pool, a refused connection, TLS
//! required of a server without it, and a password that never shows in errors.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::postgres::Postgres;
use rmq_gateway::metadata::postgres::PostgresMetadataStore;
use rmq_gateway::metadata::{self, MetadataResult, MetadataStore, StoreOptions, TopicRecord, TopicType, conformance};

fn options() -> StoreOptions {
    StoreOptions {
        node_id: String::new(),
        max_connections: 4,
        connect_timeout: Duration::from_secs(20),
        acquire_timeout: Duration::from_secs(3),
        statement_timeout: Duration::from_secs(20),
    }
}

async fn open(url: &str) -> MetadataResult<Arc<dyn MetadataStore>> {
    metadata::open(url, &options()).await
}

#[tokio::test]
async fn sqlite_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    tokio::time::timeout(Duration::from_secs(120), async {
        conformance::run_all(|check| open_owned(format!("sqlite://{}", base.join(format!("{check}.db")).display())))
            .await
            .unwrap();
        let url = format!("sqlite://{}", base.join("reopen.db").display());
        conformance::reopen_keeps_data(|| open_owned(url.clone())).await.unwrap();
    })
    .await
    .expect("the suite took longer than 120 s");
}

async fn open_owned(url: String) -> MetadataResult<Arc<dyn MetadataStore>> {
    open(&url).await
}

#[tokio::test]
async fn postgres_passes_the_suite() {
    let Some(pg) = Postgres::start_or_skip("postgres_passes_the_suite") else { return };
    tokio::time::timeout(Duration::from_secs(180), async {
        conformance::run_all(|check| {
            let url = pg.create_database(check);
            async move { open(&url.map_err(|e| metadata::MetadataError::Unavailable(format!("{e:#}")))?).await }
        })
        .await
        .unwrap();
        let url = pg.create_database("reopen").unwrap();
        conformance::reopen_keeps_data(|| open_owned(url.clone())).await.unwrap();
        // postgresql:// is the same store; migrations already applied are not run again.
        let again = open(&url.replace("postgres://", "postgresql://")).await.unwrap();
        assert_eq!(again.topic("x").await.unwrap().map(|t| t.queue_nums), Some(2));
    })
    .await
    .expect("the suite took longer than 180 s");
}

#[tokio::test]
async fn postgres_store_comes_back_after_a_server_restart() {
    let Some(mut pg) = Postgres::start_or_skip("postgres_store_comes_back_after_a_server_restart") else { return };
    tokio::time::timeout(Duration::from_secs(120), async {
        let store = open(pg.url()).await.unwrap();
        let t = TopicRecord {
            name: "t".into(),
            queue_nums: 1,
            topic_type: TopicType::Normal,
            durability: metadata::Durability::Local,
        };
        store.create_topic(&t).await.unwrap();
        pg.stop().unwrap();
        // Away: a clear error (connection-level, so the caller may retry), no hang beyond the
        // acquire timeout.
        let err = store.list_topics().await.unwrap_err();
        assert!(matches!(err, metadata::MetadataError::Unavailable(_)), "{err:?}");
        pg.start_again().unwrap();
        // Back: the pool replaces its broken connections.
        let mut last = None;
        for _ in 0..50 {
            match store.list_topics().await {
                Ok(topics) => {
                    assert_eq!(topics, vec![t.clone()]);
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(last.is_none(), "store did not recover: {last:?}");
        store.close().await;
    })
    .await
    .expect("took longer than 120 s");
}

#[tokio::test]
async fn postgres_errors_name_the_problem_without_the_password() {
    let Some(pg) = Postgres::start_or_skip("postgres_errors_name_the_problem_without_the_password") else { return };
    let opts =
        StoreOptions { connect_timeout: Duration::from_secs(5), acquire_timeout: Duration::from_secs(2), ..options() };
    // Nothing listens on this port.
    let port = integration_tests::gateway_process::free_port().unwrap();
    let url = format!("postgres://u:hunter2secret@127.0.0.1:{port}/db");
    let err = metadata::open(&url, &opts).await.err().expect("no server: open fails").to_string();
    assert!(!err.contains("hunter2secret"), "{err}");
    assert!(err.contains("u:***@127.0.0.1"), "{err}");
    // TLS required of a server that has none.
    let tls = format!("{}?sslmode=require", pg.url());
    let err =
        PostgresMetadataStore::open(&tls, &opts).await.err().expect("sslmode=require without TLS fails").to_string();
    assert!(err.to_lowercase().contains("tls") || err.to_lowercase().contains("ssl"), "{err}");
    // A bad URL.
    let err = metadata::open("postgres://u:pw@127.0.0.1:notaport/db", &opts).await.err().expect("bad url").to_string();
    assert!(!err.contains(":pw@"), "{err}");
    let err = metadata::open("mysql://u:pw@h/db", &opts).await.err().expect("unsupported scheme").to_string();
    assert!(err.contains("unsupported metadata url") && !err.contains(":pw@"), "{err}");
}
