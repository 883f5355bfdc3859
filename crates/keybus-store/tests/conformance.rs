//! The shared conformance suite against every backend, plus the durability tests of the
//! embedded store (reopen, format version, crash with SIGKILL).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

#[cfg(feature = "embedded")]
use std::path::PathBuf;
#[cfg(feature = "embedded")]
use std::sync::atomic::{AtomicU32, Ordering};

mod mem {
    keybus_store::conformance_tests!(keybus_store::MemStore::new());
}

#[cfg(feature = "embedded")]
static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A fresh directory on the real disk (the target dir), unique per test.
#[cfg(feature = "embedded")]
fn scratch_dir(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let pid = std::process::id();
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    if n == 0 {
        // Remove what earlier runs of this test binary left behind.
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.starts_with("keybus-store-")
                && !file_name.starts_with(&format!("keybus-store-{pid}-"))
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(format!("keybus-store-{pid}-{name}-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[cfg(feature = "embedded")]
mod fjall_cases {
    use super::scratch_dir;
    use keybus_store::FjallStore;

    /// A store in a fresh directory. The directory is left behind in the target dir.
    fn fresh() -> FjallStore {
        FjallStore::open(&scratch_dir("case")).unwrap()
    }

    keybus_store::conformance_tests!(fresh());
}

#[cfg(feature = "embedded")]
mod fjall_durability {
    use super::scratch_dir;
    use keybus_core::Store;
    use keybus_store::{FORMAT_VERSION, FjallStore, conformance};
    use std::process::Command;
    use std::time::Duration;

    #[test]
    fn run_all_passes() {
        conformance::run_all(|| FjallStore::open(&scratch_dir("all")).unwrap()).unwrap();
        conformance::run_all(keybus_store::MemStore::new).unwrap();
    }

    #[test]
    fn reopen_keeps_everything() {
        let dir = scratch_dir("reopen");
        conformance::reopen_keeps_everything(|| FjallStore::open(&dir)).unwrap();
    }

    #[test]
    fn open_embedded_is_a_store() {
        let dir = scratch_dir("dyn");
        let store = keybus_store::open_embedded(&dir).unwrap();
        conformance::commit(&*store, vec![conformance::seq("x", 5)]).unwrap();
        assert!(store.healthy());
        assert_eq!(
            store
                .load_entity("x", keybus_core::LoadOptions::ALL_BODIES)
                .unwrap()
                .next_sequence,
            5
        );
        // A second instance on the same directory is refused while the first is open.
        assert!(FjallStore::open(&dir).is_err());
    }

    #[test]
    fn unknown_format_version_is_refused() {
        let dir = scratch_dir("version");
        drop(FjallStore::open(&dir).unwrap());
        // Rewrite the version key through the engine directly.
        {
            let db = fjall::Database::builder(&dir).open().unwrap();
            let meta = db
                .keyspace("meta", fjall::KeyspaceCreateOptions::default)
                .unwrap();
            meta.insert("format_version", (FORMAT_VERSION + 1).to_be_bytes())
                .unwrap();
            db.persist(fjall::PersistMode::SyncAll).unwrap();
        }
        let err = FjallStore::open(&dir).unwrap_err().to_string();
        assert!(err.contains("format version 2"), "{err}");
        assert!(err.contains("reads only version 1"), "{err}");
    }

    #[test]
    fn commit_never_waits_for_a_stalled_writer() {
        // More batches than any group commit takes, submitted while the writer cannot write:
        // every `commit` returns at once (it runs on async workers), none resolves before the
        // writer moves on, and then all resolve.
        let store = FjallStore::open(&scratch_dir("stall")).unwrap();
        let stalled = store.stall_writer_for_tests();
        let (tx, rx) = std::sync::mpsc::channel();
        let futures = std::thread::scope(|scope| {
            scope.spawn(|| {
                let futures: Vec<_> = (0..10_000)
                    .map(|i| store.commit(vec![conformance::seq("q", i)]))
                    .collect();
                let _ = tx.send(futures);
            });
            rx.recv_timeout(Duration::from_secs(5))
                .expect("commit blocked while the writer was stalled")
        });
        assert_eq!(
            store
                .load_entity("q", keybus_core::LoadOptions::ALL_BODIES)
                .unwrap()
                .next_sequence,
            0
        );
        drop(stalled);
        for f in futures {
            conformance::block_on(f).unwrap();
        }
        assert_eq!(
            store
                .load_entity("q", keybus_core::LoadOptions::ALL_BODIES)
                .unwrap()
                .next_sequence,
            9_999
        );
    }

    #[test]
    fn drop_flushes_queued_commits() {
        // Dropping the store joins the writer; futures obtained before still resolve.
        let dir = scratch_dir("close");
        let store = FjallStore::open(&dir).unwrap();
        let futures: Vec<_> = (0..100)
            .map(|i| store.commit(vec![conformance::seq("q", i)]))
            .collect();
        drop(store);
        for f in futures {
            conformance::block_on(f).unwrap();
        }
        let store = FjallStore::open(&dir).unwrap();
        assert_eq!(
            store
                .load_entity("q", keybus_core::LoadOptions::ALL_BODIES)
                .unwrap()
                .next_sequence,
            99
        );
    }

    fn open_retrying_every(dir: &std::path::Path, retry: Duration) -> FjallStore {
        let options = keybus_store::FjallOptions {
            retry_interval: retry,
            ..Default::default()
        };
        FjallStore::open_with(dir, options).unwrap()
    }

    fn wait_healthy(store: &FjallStore) {
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while !store.healthy() {
            assert!(
                std::time::Instant::now() < until,
                "the store did not recover"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn write_failure_poisons() {
        let dir = scratch_dir("poison");
        // No re-open within the test.
        let store = open_retrying_every(&dir, Duration::from_secs(3600));
        conformance::commit(&store, vec![conformance::seq("q", 1)]).unwrap();
        store.fail_next_write_for_tests();
        let err = conformance::block_on(store.commit(vec![conformance::seq("q", 2)])).unwrap_err();
        assert!(matches!(err, keybus_core::StoreError::Io(_)), "{err}");
        assert!(!store.healthy());
        // Later commits fail with the cause.
        let err = conformance::block_on(store.commit(vec![conformance::seq("q", 3)])).unwrap_err();
        assert!(err.to_string().contains("injected write failure"), "{err}");
        assert!(store.status().is_err());
        assert!(conformance::block_on(store.commit(Vec::new())).is_err());
        drop(store);
        // What failed was never written.
        let store = FjallStore::open(&dir).unwrap();
        assert!(store.healthy());
        assert_eq!(
            store
                .load_entity("q", keybus_core::LoadOptions::ALL_BODIES)
                .unwrap()
                .next_sequence,
            1
        );
    }

    #[test]
    fn poisoned_store_reopens_and_writes_the_backlog_in_order() {
        use keybus_core::SubQueue;
        let dir = scratch_dir("recover");
        let store = open_retrying_every(&dir, Duration::from_millis(50));
        let put = |seq| conformance::put("q", SubQueue::Main, conformance::record(seq, 1).unwrap());
        conformance::commit(&store, vec![conformance::seq("q", 3), put(1), put(2)]).unwrap();
        // The broker deleted message 1 in memory; the write fails...
        store.fail_next_write_for_tests();
        assert!(
            conformance::block_on(store.commit(vec![conformance::del("q", SubQueue::Main, 1)]))
                .is_err()
        );
        // ...and so does what comes while poisoned (kept for the re-open, in order).
        let _ = conformance::block_on(store.commit(vec![
            put(3),
            conformance::seq("q", 4),
            conformance::del("q", SubQueue::Main, 2),
        ]));
        wait_healthy(&store);
        assert!(store.status().is_ok());
        conformance::commit(&store, vec![conformance::seq("q", 5), put(4)]).unwrap();
        let snap = store
            .load_entity("q", keybus_core::LoadOptions::ALL_BODIES)
            .unwrap();
        let seqs: Vec<i64> = snap.main.iter().map(|r| r.sequence_number).collect();
        assert_eq!(seqs, vec![3, 4]);
        assert_eq!(snap.next_sequence, 5);
        drop(store);
        let store = FjallStore::open(&dir).unwrap();
        let snap = store
            .load_entity("q", keybus_core::LoadOptions::ALL_BODIES)
            .unwrap();
        let seqs: Vec<i64> = snap.main.iter().map(|r| r.sequence_number).collect();
        assert_eq!(seqs, vec![3, 4]);
        assert_eq!(snap.next_sequence, 5);
    }

    #[test]
    fn store_dir_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch_dir("mode");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = FjallStore::open(&dir).unwrap();
        let mode = std::fs::metadata(store.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    const CHILD_ENV: &str = "KEYBUS_STORE_CRASH_CHILD_DIR";

    /// Not a test on its own: the body of the child process of `crash_keeps_acknowledged`.
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let store = FjallStore::open(&dir.join("db")).unwrap();
        conformance::crash_child(&store, &dir.join("ack"), Duration::from_secs(30)).unwrap();
    }

    #[test]
    fn crash_keeps_acknowledged() {
        for round in 0..3 {
            let dir = scratch_dir("crash");
            std::fs::create_dir_all(&dir).unwrap();
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "fjall_durability::crash_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, &dir)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Let it commit for a while (varying, to kill at different points).
            std::thread::sleep(Duration::from_millis(700 + 350 * round));
            child.kill().unwrap(); // SIGKILL
            let status = child.wait().unwrap();
            assert!(!status.success(), "child ended by itself: {status}");
            let store = FjallStore::open(&dir.join("db")).unwrap();
            let (acked, applied) = conformance::crash_verify(&store, &dir.join("ack")).unwrap();
            eprintln!("crash round {round}: last acknowledged {acked}, last applied {applied}");
            assert!(acked > 0, "child acknowledged nothing before it was killed");
        }
    }
}
