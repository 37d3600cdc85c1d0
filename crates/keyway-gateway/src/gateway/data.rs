//! The data folder at start-up: one process at a time, and the store opened only when
//! its files hold what they should.
//!
//! SQLite would take a missing, empty or unreadable `keyway.db` for a new store (and
//! delete the log beside an empty one), and a damaged log for a shorter one; the
//! gateway would then write a new admin credential over the old one, every token,
//! secret and audit event gone without a word. So a start looks first
//! ([`files::inspect`]) and checks what it opens (`PRAGMA quick_check`); it refuses a
//! store that is damaged, or missing or empty while the keys or an admin credential
//! show the folder held one, and says what it found and how to restore a backup.
//! `--init` starts over on purpose: the store's files are moved aside, never deleted.
//!
//! The lock: `keyway.lock` in the data folder, held (`flock`) for as long as the
//! process that opened the folder lives. The kernel lets go of it when the process
//! ends, however it ends, so a crash leaves no stale lock behind.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyway_core::config::Config;
use keyway_store::sqlite::files::{self, Found};

use keyway_store::{PgStore, SqliteStore, Store, StoreError};

use super::OpenError;

/// The lock file in the data folder.
pub const LOCK_FILE: &str = "keyway.lock";

/// How a start treats the data folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Start {
    /// Open the store there, or make one in a folder that never held one.
    #[default]
    Normal,
    /// `keyway gateway --init`: start over on purpose. A store that cannot be used
    /// as it is is moved aside and a new one made, with the same keys.
    Init,
    /// `keyway admin reset`: open the store there, never a new one.
    Recovery,
}

/// Takes the data folder's lock, or says which process holds it.
pub(super) fn lock(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join(LOCK_FILE);
    let err = |source| OpenError::DataDir {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let pid = holder.trim().parse::<u32>().ok();
            return Err(OpenError::Locked {
                dir: dir.display().to_string(),
                pid,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
    }
    // Whose it is, for the next one to be told.
    file.set_len(0).map_err(err)?;
    file.rewind().map_err(err)?;
    writeln!(file, "{}", std::process::id()).map_err(err)?;
    Ok(file)
}

/// The shared store's URL: `KEYWAY_STORE_URL` (which may carry a password), else the
/// config's `store`; `None` for the embedded SQLite.
pub fn store_url(config: &Config) -> Option<String> {
    std::env::var("KEYWAY_STORE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .or_else(|| config.store.clone())
}

/// Opens the store as `start` says: the shared PostgreSQL store when one is
/// configured, else the SQLite store in the data folder (or refuses with what was
/// found there).
pub(super) async fn open(config: &Config, start: Start) -> Result<Arc<dyn Store>, OpenError> {
    match store_url(config) {
        Some(url) => {
            if start == Start::Init {
                return Err(OpenError::StoreRefused(
                    "--init starts the embedded SQLite store over; a PostgreSQL store is the database's to restore".into(),
                ));
            }
            Ok(Arc::new(PgStore::connect(&url, &config.replica).await?))
        }
        None => Ok(Arc::new(open_store(config, start).await?)),
    }
}

/// Opens the store in the data folder as `start` says, or refuses with what was found.
pub(super) async fn open_store(config: &Config, start: Start) -> Result<SqliteStore, OpenError> {
    // Under `durability = "commit"` every commit is fsynced: an answer implies an
    // event that survives a power cut, not only a killed process.
    let durable = config.audit.durability == keyway_core::config::Durability::Commit;
    let db = config.data_dir.join("keyway.db");
    let found = files::inspect(&db).map_err(|source| OpenError::DataDir {
        path: db.display().to_string(),
        source,
    })?;
    let before = earlier_store(config);
    let new_folder =
        before.is_empty() && matches!(found, Found::Nothing | Found::Empty { log_bytes: 0 });
    if start == Start::Recovery && new_folder {
        return Err(OpenError::NoStore {
            path: db.display().to_string(),
        });
    }
    if found != Found::Store && !new_folder {
        let what = found.describe(&db);
        let lost = match found {
            Found::DamagedLog(_) => Lost::Writes,
            Found::NotSqlite => Lost::Unreadable,
            _ => Lost::Everything,
        };
        return start_over(&db, durable, start, refusal(&db, &what, &before, lost)).await;
    }
    match SqliteStore::open_with(&db, durable).await {
        Ok(store) if start == Start::Init && found == Found::Store => {
            let _ = store.close().await;
            Err(OpenError::InitNotNeeded {
                path: db.display().to_string(),
            })
        }
        Ok(store) => Ok(store),
        Err(StoreError::Damaged(what)) => {
            let what = format!("{} cannot be used: {what}", db.display());
            start_over(
                &db,
                durable,
                start,
                refusal(&db, &what, &[], Lost::Unreadable),
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

/// What starting on a damaged store would lose.
#[derive(Clone, Copy)]
enum Lost {
    /// A new, empty store would take its place.
    Everything,
    /// The writes SQLite would drop.
    Writes,
    /// SQLite cannot use it.
    Unreadable,
}

/// With `--init`, moves the store's files aside and makes a new store; otherwise
/// refuses with `message`.
async fn start_over(
    db: &Path,
    durable: bool,
    start: Start,
    message: String,
) -> Result<SqliteStore, OpenError> {
    if start != Start::Init {
        return Err(OpenError::StoreRefused(message));
    }
    let aside = move_aside(db).map_err(|source| OpenError::DataDir {
        path: db.display().to_string(),
        source,
    })?;
    match &aside {
        Some(to) => tracing::warn!(
            moved_to = %to.display(),
            "--init: starting over with a new store; the old store's files were moved aside"
        ),
        None => tracing::warn!("--init: starting over with a new store"),
    }
    Ok(SqliteStore::open_with(db, durable).await?)
}

/// The files beside the store that only a store's first start makes, or that an
/// operator keeps for one: the keys and the admin credential.
fn earlier_store(config: &Config) -> Vec<PathBuf> {
    [
        config.pepper_file.clone(),
        config.master_key_file.clone(),
        config.data_dir.join("admin.token"),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .collect()
}

/// The refusal, for the operator: what was found, why starting would lose data, and
/// the two ways on.
fn refusal(db: &Path, what: &str, before: &[PathBuf], lost: Lost) -> String {
    let db_s = db.display();
    let mut m = format!("refusing to start: {what}.\n");
    if !before.is_empty() && matches!(lost, Lost::Everything) {
        let names: Vec<String> = before.iter().map(|p| p.display().to_string()).collect();
        m.push_str(&format!(
            "{} exist, so this folder held a store (a first start with keys put in place \
             beforehand takes --init).\n",
            names.join(", ")
        ));
    }
    m.push_str(match lost {
        Lost::Everything => {
            "Starting would make a new, empty store in its place: every token, secret and \
             audit event gone, and a new admin credential.\n"
        }
        Lost::Writes => "Starting would lose those writes without a word.\n",
        Lost::Unreadable => "SQLite cannot use it as it is.\n",
    });
    m.push_str(&format!(
        "Nothing was changed. To restore a backup (made by `keyway backup`): copy it to \
         {db_s}, with no {db_s}-wal or {db_s}-shm beside it, keep the same pepper and master \
         key, start again, and check the audit log against the head the backup printed: \
         `keyway audit verify --config … --expect SEQ:HASH`.\n"
    ));
    if matches!(lost, Lost::Writes) {
        m.push_str(&format!(
            "Without a backup, SQLite can keep what came before the damage: copy the data \
             folder aside, run `sqlite3 {db_s} 'PRAGMA wal_checkpoint(TRUNCATE)'` (it drops \
             the damaged frames and those after them) and start again.\n"
        ));
    }
    m.push_str(&format!(
        "To start over on purpose: `keyway gateway --init` moves the store's files into \
         {}/damaged-<time>/ and makes a new store with the same keys.",
        db.parent().unwrap_or(Path::new(".")).display()
    ));
    m
}

/// Moves the database, its log and its index into `damaged-<unix seconds>/` beside
/// them; the folder, if anything was moved.
fn move_aside(db: &Path) -> std::io::Result<Option<PathBuf>> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let to = db
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("damaged-{stamp}"));
    let mut moved = false;
    for file in [db.to_path_buf(), files::wal_path(db), files::shm_path(db)] {
        if !file.exists() {
            continue;
        }
        if !moved {
            std::fs::DirBuilder::new().mode(0o700).create(&to)?;
            moved = true;
        }
        if let Some(name) = file.file_name() {
            std::fs::rename(&file, to.join(name))?;
        }
    }
    Ok(moved.then_some(to))
}
