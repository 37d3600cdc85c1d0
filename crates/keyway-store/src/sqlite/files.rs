//! The store's files as they lie on disk, read before SQLite opens them.
//!
//! SQLite takes a missing or empty database file for a new database, and deletes the
//! write-ahead log beside an empty one; it reads a log up to the first frame whose
//! checksum fails and silently drops that frame and every one after it, committed or
//! not, the next time anything opens the file. Either would lose a store without a
//! word, so [`inspect`] looks first: the database's header, and every frame of the log
//! against its salts and checksums (SQLite's format:
//! <https://www.sqlite.org/fileformat.html#the_write_ahead_log>). It only reads.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

/// The first bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";
/// A log's header, and each frame's header before its page.
const WAL_HEADER_BYTES: usize = 32;
const FRAME_HEADER_BYTES: usize = 24;

/// What a store's files are, before anything opens them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No database file and no log.
    Nothing,
    /// A database file with SQLite's header, and a log (if any) that SQLite reads
    /// whole.
    Store,
    /// No database file, but a log where its log would be.
    LogWithoutDatabase { log_bytes: u64 },
    /// A database file of zero bytes: SQLite would take it for a new database (and
    /// delete the log beside it).
    Empty { log_bytes: u64 },
    /// A database file that does not start with SQLite's header.
    NotSqlite,
    /// A log that SQLite would cut short.
    DamagedLog(LogDamage),
}

/// Where a log breaks, and what SQLite would drop from there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDamage {
    /// The first frame that fails (1-based; 0 when the log's own header is damaged).
    pub frame: u64,
    /// The frames in the file.
    pub frames: u64,
    /// Frames from the break on that belong to the log as it is now (the same salts):
    /// written after the damaged one, and dropped with it.
    pub frames_dropped: u64,
    /// Frames after the damaged one that end a committed transaction (unknown, 0,
    /// when the log's header is damaged).
    pub commits_dropped: u64,
}

// === impl Found ===

impl Found {
    /// What was found, in a sentence for the operator, with the files' paths.
    pub fn describe(&self, db: &Path) -> String {
        let (db_s, wal) = (db.display(), wal_path(db));
        let wal = wal.display();
        match self {
            Self::Nothing => format!("{db_s} is missing"),
            Self::Store => format!("{db_s} is a SQLite database"),
            Self::LogWithoutDatabase { log_bytes } => format!(
                "{db_s} is missing, and its write-ahead log {wal} ({log_bytes} bytes) is still there"
            ),
            Self::Empty { log_bytes: 0 } => format!("{db_s} is empty (0 bytes)"),
            Self::Empty { log_bytes } => format!(
                "{db_s} is empty (0 bytes) beside its write-ahead log {wal} ({log_bytes} bytes), \
                 which SQLite would delete on opening it"
            ),
            Self::NotSqlite => format!("{db_s} is not a SQLite database (its first bytes are not SQLite's header)"),
            Self::DamagedLog(d) if d.frame == 0 => format!(
                "the header of the write-ahead log {wal} is damaged: SQLite would silently drop all \
                 {} frames in it (every write since the log last started over)",
                d.frames
            ),
            Self::DamagedLog(d) => format!(
                "the write-ahead log {wal} is damaged: frame {} of {} fails its checksum, and \
                 SQLite would silently drop it and the {} frames written after it, {} committed \
                 transactions (tokens, revocations, secrets, audit events)",
                d.frame,
                d.frames,
                d.frames_dropped - 1,
                d.commits_dropped
            ),
        }
    }
}

/// The log of the database at `db` (SQLite's name for it).
pub fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// The shared-memory index beside the log.
pub fn shm_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-shm");
    PathBuf::from(p)
}

/// Reads the database file at `db` and its log, without opening them with SQLite.
pub fn inspect(db: &Path) -> std::io::Result<Found> {
    let log_bytes = match std::fs::metadata(wal_path(db)) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let mut head = [0u8; 16];
    match File::open(db) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(if log_bytes > 0 {
                Found::LogWithoutDatabase { log_bytes }
            } else {
                Found::Nothing
            });
        }
        Err(e) => return Err(e),
        Ok(f) => {
            let n = f.take(16).read(&mut head)?;
            if n == 0 {
                return Ok(Found::Empty { log_bytes });
            }
            if n < 16 || &head != SQLITE_HEADER {
                return Ok(Found::NotSqlite);
            }
        }
    }
    if log_bytes == 0 {
        return Ok(Found::Store);
    }
    let log = BufReader::with_capacity(1 << 20, File::open(wal_path(db))?);
    Ok(match check_log(log)? {
        Some(damage) => Found::DamagedLog(damage),
        None => Found::Store,
    })
}

/// Walks a log as SQLite recovers it: `None` when SQLite would keep every frame
/// written since the log last restarted (a torn last frame, or stale frames of an
/// earlier generation after the end, are normal and not damage).
pub fn check_log(mut log: impl Read) -> std::io::Result<Option<LogDamage>> {
    let mut header = [0u8; WAL_HEADER_BYTES];
    if !read_full(&mut log, &mut header)? {
        // A log shorter than its header is one SQLite had only begun: nothing in it.
        return Ok(None);
    }
    let word = |b: &[u8], i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let magic = word(&header, 0);
    let page_size = word(&header, 8) as usize;
    let salts = (word(&header, 16), word(&header, 20));
    let big_endian = magic & 1 == 1;
    let header_ok = (magic & !1) == 0x377f_0682
        && word(&header, 4) == 3_007_000
        && page_size.is_power_of_two()
        && (512..=65_536).contains(&page_size)
        && checksum(big_endian, &header[..24], (0, 0)) == (word(&header, 24), word(&header, 28));
    if !header_ok {
        // SQLite ignores the whole log; any bytes after the header were frames.
        let mut rest = 0u64;
        let mut buf = [0u8; 8192];
        loop {
            match log.read(&mut buf)? {
                0 => break,
                n => rest += n as u64,
            }
        }
        let page = if (512..=65_536).contains(&page_size) {
            page_size
        } else {
            4096
        };
        let frames = rest / (FRAME_HEADER_BYTES + page) as u64;
        return Ok((frames > 0).then_some(LogDamage {
            frame: 0,
            frames,
            frames_dropped: frames,
            commits_dropped: 0,
        }));
    }
    let mut frame = vec![0u8; FRAME_HEADER_BYTES + page_size];
    let mut sum = (word(&header, 24), word(&header, 28));
    let mut index = 0u64;
    let mut broken: Option<LogDamage> = None;
    while read_full(&mut log, &mut frame)? {
        index += 1;
        let same_salts = (word(&frame, 8), word(&frame, 12)) == salts;
        match &mut broken {
            None if !same_salts => {
                // A frame left from before the log restarted: the log ends here, and
                // so does what SQLite reads.
                break;
            }
            None => {
                let mut next = checksum(big_endian, &frame[..8], sum);
                next = checksum(big_endian, &frame[FRAME_HEADER_BYTES..], next);
                if word(&frame, 0) != 0 && next == (word(&frame, 16), word(&frame, 20)) {
                    sum = next;
                } else {
                    // A frame of this generation that does not add up: SQLite stops here.
                    broken = Some(LogDamage {
                        frame: index,
                        frames: 0,
                        frames_dropped: 1,
                        commits_dropped: 0,
                    });
                }
            }
            Some(d) if same_salts => {
                d.frames_dropped += 1;
                d.commits_dropped += u64::from(word(&frame, 4) != 0);
            }
            Some(_) => {}
        }
    }
    // Only a transaction committed after the break is a lost write: a torn frame in
    // the last transaction (a crash while it was written) loses nothing committed.
    Ok(broken
        .filter(|d| d.commits_dropped > 0)
        .map(|d| LogDamage { frames: index, ..d }))
}

/// Fills `buf`; `false` when the input ends first (a partial read is dropped, as SQLite
/// drops a partial frame).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// SQLite's log checksum: 32-bit words in the byte order the log's magic names,
/// summed in pairs, continuing from `sum`.
fn checksum(big_endian: bool, data: &[u8], sum: (u32, u32)) -> (u32, u32) {
    let (mut s0, mut s1) = sum;
    for pair in data.chunks_exact(8) {
        let w = |i: usize| {
            let b = [pair[i], pair[i + 1], pair[i + 2], pair[i + 3]];
            if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        s0 = s0.wrapping_add(w(0)).wrapping_add(s1);
        s1 = s1.wrapping_add(w(4)).wrapping_add(s0);
    }
    (s0, s1)
}

#[cfg(test)]
mod tests;
