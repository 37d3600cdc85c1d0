//! The floor's audit trail, when it is given a database: one row per answer,
//! committed (SQLite, WAL, `synchronous = FULL`, as Keyway's store) before the answer
//! is released, in the cheapest way there is to do that. One thread of its own owns
//! the connection and writes what waits as one transaction (group commit); a request
//! hands it a row and waits for the commit. No hash chain, no JSON, no index, no
//! async driver between the proxy and SQLite: what is left is what committing a row
//! per answer costs on this disk and core, which Keyway pays too.

use std::path::Path;
use std::sync::mpsc;

use tokio::sync::oneshot;

/// Rows one transaction carries at most.
const BATCH: usize = 256;

/// One answer's row, and whom to tell once it is committed (`false`: it was not).
type Pending = (Row, oneshot::Sender<bool>);

pub struct Row {
    pub at_ms: i64,
    pub path: String,
    pub status: u16,
}

#[derive(Clone)]
pub struct Audit {
    to_writer: mpsc::Sender<Pending>,
}

impl Audit {
    /// Opens (creating) the database at `path` and starts its writer.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS answers (
                seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, path TEXT NOT NULL,
                status INTEGER NOT NULL)",
        )?;
        let (to_writer, rx) = mpsc::channel();
        std::thread::spawn(move || write(conn, rx));
        Ok(Self { to_writer })
    }

    /// Whether `row` is committed; `false` if the writer could not commit it.
    pub async fn commit(&self, row: Row) -> bool {
        let (done, committed) = oneshot::channel();
        if self.to_writer.send((row, done)).is_err() {
            return false;
        }
        committed.await.unwrap_or(false)
    }
}

fn write(mut conn: rusqlite::Connection, rx: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let committed = insert(&mut conn, &batch).is_ok();
        for (_, done) in batch.drain(..) {
            let _ = done.send(committed);
        }
    }
}

fn insert(conn: &mut rusqlite::Connection, batch: &[Pending]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert =
            tx.prepare_cached("INSERT INTO answers (at, path, status) VALUES (?1, ?2, ?3)")?;
        for (row, _) in batch {
            insert.execute((row.at_ms, &row.path, row.status))?;
        }
    }
    tx.commit()
}
