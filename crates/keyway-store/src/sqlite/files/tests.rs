//! [`inspect`] against files a real store wrote: its log as SQLite left it, then
//! damaged the ways a disk or an operator damages one; and a store opened on each.

use std::path::{Path, PathBuf};

use super::*;
use crate::{AuditEvent, SqliteStore, Store, StoreError};

/// A store in `dir` with `n` audit events written, left open (its log not folded in):
/// the database's path, and the store to keep open while the files are copied.
async fn written(dir: &Path, n: i64) -> (PathBuf, SqliteStore) {
    let db = dir.join("keyway.db");
    let store = SqliteStore::open(&db).await.unwrap();
    store.set_audit_key([7; 32]).await.unwrap();
    for at in 0..n {
        let ev = AuditEvent {
            at,
            kind: "request".into(),
            ..AuditEvent::default()
        };
        store.append_audit(&[ev]).await.unwrap();
    }
    (db, store)
}

/// A copy of the database and its log in `to`, as a crash would leave them.
fn crash_copy(db: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    let copy = to.join("keyway.db");
    std::fs::copy(db, &copy).unwrap();
    std::fs::copy(wal_path(db), wal_path(&copy)).unwrap();
    copy
}

/// The offset of frame `i` (1-based) in a log of 4 KiB pages.
fn frame_at(i: u64) -> usize {
    WAL_HEADER_BYTES + (i as usize - 1) * (FRAME_HEADER_BYTES + 4096)
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn a_log_as_sqlite_wrote_it_is_whole_and_a_flipped_byte_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _store) = written(dir.path(), 20).await;
    let copy = crash_copy(&db, &dir.path().join("a"));
    assert_eq!(inspect(&copy).unwrap(), Found::Store);

    // A byte of a page in the middle of the log.
    let frames = (std::fs::metadata(wal_path(&copy)).unwrap().len() as usize - WAL_HEADER_BYTES)
        / (FRAME_HEADER_BYTES + 4096);
    let middle = frames as u64 / 2;
    flip(
        &wal_path(&copy),
        frame_at(middle) + FRAME_HEADER_BYTES + 100,
    );
    let Found::DamagedLog(d) = inspect(&copy).unwrap() else {
        panic!("not found");
    };
    assert_eq!((d.frame, d.frames), (middle, frames as u64));
    assert_eq!(d.frames_dropped, frames as u64 - middle + 1);
    assert!(d.commits_dropped > 0, "{d:?}");
    let said = Found::DamagedLog(d).describe(&copy);
    assert!(
        said.contains(&format!("frame {middle} of {frames}")),
        "{said}"
    );

    // The store refuses it, and leaves both files as they were.
    let before = (
        std::fs::read(&copy).unwrap(),
        std::fs::read(wal_path(&copy)).unwrap(),
    );
    let err = SqliteStore::open_existing(&copy).await.unwrap_err();
    assert!(matches!(err, StoreError::Damaged(_)), "{err}");
    assert_eq!(
        before,
        (
            std::fs::read(&copy).unwrap(),
            std::fs::read(wal_path(&copy)).unwrap()
        )
    );

    // The log's own header.
    let copy = crash_copy(&db, &dir.path().join("b"));
    flip(&wal_path(&copy), 17);
    let Found::DamagedLog(d) = inspect(&copy).unwrap() else {
        panic!("not found");
    };
    assert_eq!((d.frame, d.frames_dropped), (0, frames as u64));
}

#[tokio::test]
async fn a_torn_last_frame_is_no_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _store) = written(dir.path(), 5).await;
    let copy = crash_copy(&db, &dir.path().join("a"));
    let len = std::fs::metadata(wal_path(&copy)).unwrap().len();
    // The last frame's page, garbled (a write that never completed).
    flip(&wal_path(&copy), len as usize - 10);
    assert_eq!(inspect(&copy).unwrap(), Found::Store);
    // Cut in the middle of it.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(wal_path(&copy))
        .unwrap();
    f.set_len(len - 2000).unwrap();
    assert_eq!(inspect(&copy).unwrap(), Found::Store);
}

#[tokio::test]
async fn missing_empty_and_foreign_database_files() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _store) = written(dir.path(), 3).await;
    let log_bytes = std::fs::metadata(wal_path(&db)).unwrap().len();

    assert_eq!(
        inspect(&dir.path().join("none.db")).unwrap(),
        Found::Nothing
    );

    let copy = crash_copy(&db, &dir.path().join("missing"));
    std::fs::remove_file(&copy).unwrap();
    assert_eq!(
        inspect(&copy).unwrap(),
        Found::LogWithoutDatabase { log_bytes }
    );

    let copy = crash_copy(&db, &dir.path().join("empty"));
    std::fs::write(&copy, b"").unwrap();
    assert_eq!(inspect(&copy).unwrap(), Found::Empty { log_bytes });
    assert!(SqliteStore::open_existing(&copy).await.is_err());
    assert_eq!(
        std::fs::metadata(wal_path(&copy)).unwrap().len(),
        log_bytes,
        "the log is still there"
    );

    let copy = crash_copy(&db, &dir.path().join("foreign"));
    std::fs::write(&copy, [0x42u8; 8192]).unwrap();
    assert_eq!(inspect(&copy).unwrap(), Found::NotSqlite);
}

#[tokio::test]
async fn a_damaged_page_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store) = written(dir.path(), 2000).await;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&store.pool)
        .await
        .unwrap();
    store.disconnect().await;
    // Pages in the middle of the file overwritten: the header still says SQLite.
    let mut bytes = std::fs::read(&db).unwrap();
    let n = bytes.len();
    bytes[n / 4..n / 2].fill(0x55);
    std::fs::write(&db, &bytes).unwrap();
    assert_eq!(inspect(&db).unwrap(), Found::Store);
    let err = SqliteStore::open_existing(&db).await.unwrap_err();
    assert!(matches!(err, StoreError::Damaged(_)), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), bytes, "nothing written");
}

#[tokio::test]
async fn close_folds_the_log_into_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store) = written(dir.path(), 2000).await;
    assert!(std::fs::metadata(wal_path(&db)).unwrap().len() > 0);
    store.close().await.unwrap();
    assert_eq!(
        std::fs::metadata(wal_path(&db)).map_or(0, |m| m.len()),
        0,
        "the log is folded into the database"
    );
    // The database file alone holds it all.
    let alone = dir.path().join("alone");
    std::fs::create_dir(&alone).unwrap();
    std::fs::copy(&db, alone.join("keyway.db")).unwrap();
    let store = SqliteStore::open_existing(&alone.join("keyway.db"))
        .await
        .unwrap();
    let events = store
        .audit_events(&crate::AuditQuery {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 2000);
}

#[tokio::test]
async fn a_backup_is_a_store_read_back_without_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, store) = written(dir.path(), 300).await;
    let out = dir.path().join("backup.db");
    let bytes = store.backup_into(&out).await.unwrap();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), bytes);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions())
            & 0o777,
        0o600
    );
    assert!(
        store.backup_into(&out).await.is_err(),
        "never over an existing file"
    );
    assert_eq!(inspect(&out).unwrap(), Found::Store);
    let written = std::fs::read(&out).unwrap();
    let copy = SqliteStore::open_copy(&out).await.unwrap();
    let v = copy.verify_audit(&[7; 32], &[]).await.unwrap();
    assert!(
        matches!(v, crate::Verdict::Intact { events: 300, .. }),
        "{v:?}"
    );
    copy.disconnect().await;
    assert_eq!(std::fs::read(&out).unwrap(), written, "read, not written");
    assert!(!wal_path(&out).exists() && !shm_path(&out).exists());
}

#[tokio::test]
async fn the_log_is_folded_in_and_emptied_past_a_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, store) = written(dir.path(), 300).await;
    let before = store.log_bytes().unwrap();
    assert!(before > 0);
    assert!(!store.bound_log(before).await.unwrap(), "under the limit");
    assert!(store.bound_log(0).await.unwrap());
    assert_eq!(store.log_bytes(), Some(0));
    assert_eq!(
        store
            .audit_events(&crate::AuditQuery {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        300
    );
}
