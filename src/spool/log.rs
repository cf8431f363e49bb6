//! The spool's on-disk log: a lock file, append-only segments of checksummed records, a
//! persisted read cursor and a count beside each sealed segment. Blocking IO: callers run it
//! on the blocking pool.
//!
//! ```text
//! <dir>/LOCK                   held (flock) while a Ferry process uses the directory
//! <dir>/cursor                 "<segment> <offset>\n": where undelivered records start
//! <dir>/00000000000000000007.seg
//!     record = len: u32 LE | crc32(payload): u32 LE | payload (the event, structured JSON)
//! <dir>/00000000000000000006.count   "<records>\n" in segment 6, written when it was sealed
//! <dir>/quarantine/, <dir>/rejected.jsonl   see `quarantine`
//! ```
//!
//! A record is acknowledged only after the `fdatasync` of the batch that holds it, so a
//! record the log ever confirmed is complete on disk. A failed append is cut off again
//! before anything else is written. Opening reads only the cursor's segment and the last
//! one (the counts of the others are in their `.count` files), so it takes the same time
//! whatever the spool holds. A torn tail of the last segment (a write that was never
//! confirmed) is moved to the quarantine and cut off; a corrupt record with valid records
//! after it is kept for the reader, which quarantines it and reads on.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::disk::Disk;
use super::quarantine;
use super::reader::Reader;
use super::record::{self, Parsed, HEADER, MAX_RECORD};

/// A place in the log; ordered by segment, then offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(super) struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// The log as found on disk.
pub(super) struct Opened {
    pub writer: Writer,
    pub reader: Reader,
    pub cursor: Position,
    /// Undelivered records and their size (headers included).
    pub events: u64,
    pub bytes: u64,
    /// Corrupt tails (acknowledged bytes that no longer check) moved to the quarantine.
    pub quarantined: u64,
}

/// The largest event payload a spool of `max_bytes` can take and read back.
pub(super) fn max_payload(max_bytes: u64) -> u64 {
    MAX_RECORD.min(max_bytes.saturating_sub(HEADER))
}

/// Opens (creating if needed) the log in `dir`, taking its lock.
pub(super) fn open(dir: &Path, segment_bytes: u64, disk: Arc<dyn Disk>) -> io::Result<Opened> {
    fs::create_dir_all(dir)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the spool directory is in use by another process or sink (LOCK is held)",
            ))
        }
        Err(fs::TryLockError::Error(e)) => return Err(e),
    }
    let segments = list(dir, "seg")?;
    let first = segments.first().copied().unwrap_or(0);
    let mut cursor = read_cursor(dir)?.unwrap_or(Position {
        segment: first,
        offset: 0,
    });
    if cursor.segment < first || !segments.contains(&cursor.segment) {
        cursor = Position {
            segment: first.max(cursor.segment.min(segments.last().copied().unwrap_or(0))),
            offset: 0,
        };
    }
    remove_before(dir, cursor.segment)?;
    let last = segments.last().copied().unwrap_or(cursor.segment);
    cut_unconfirmed(dir, last, &*disk)?;
    let (mut events, mut bytes, mut quarantined) = (0, 0, 0);
    let mut head = cursor;
    let mut last_records = 0;
    for &s in segments.iter().filter(|&&s| s >= cursor.segment) {
        let path = segment_path(dir, s);
        let from = if s == cursor.segment {
            cursor.offset
        } else {
            0
        };
        if s != last && s != cursor.segment {
            if let Some(n) = read_count(dir, s) {
                events += n;
                bytes += fs::metadata(&path)?.len();
                continue;
            }
        }
        let mut file = disk.open(&path)?;
        // The last segment from its start: its record count goes into its `.count` later.
        let scan_from = if s == last { 0 } else { from };
        let scan = record::scan(&*disk, &mut file, scan_from, from)?;
        events += scan.events;
        if s != last {
            bytes += scan.len.saturating_sub(from);
            continue;
        }
        if let Some(tail) = &scan.tail {
            let at = Position {
                segment: s,
                offset: scan.end,
            };
            let kind = if *tail == Parsed::Torn {
                "torn"
            } else {
                quarantined += 1;
                "corrupt"
            };
            match quarantine::span(dir, &path, at, scan.len, kind) {
                Ok(q) => {
                    tracing::warn!(path = %path.display(), at = scan.end, bytes = scan.len - scan.end, quarantine = %q.display(), "cutting a {kind} tail off the end of the spool")
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), at = scan.end, error = %e, "cutting a {kind} tail off the end of the spool; it could not be copied to the quarantine")
                }
            }
            let f = OpenOptions::new().write(true).open(&path)?;
            disk.truncate(&f, scan.end)?;
        }
        bytes += scan.end.saturating_sub(from);
        last_records = scan.total;
        head = Position {
            segment: s,
            offset: scan.end,
        };
    }
    // A cursor past the end (a cut-off tail it had passed) would skip what comes next.
    let cursor = cursor.min(head);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, head.segment))?;
    disk.sync_dir(dir)?;
    let reader = Reader {
        dir: dir.to_owned(),
        disk: Arc::clone(&disk),
        pos: cursor,
        file: None,
    };
    Ok(Opened {
        writer: Writer {
            dir: dir.to_owned(),
            disk,
            file,
            head,
            segment_bytes,
            records: last_records,
            dirty: false,
            _lock: lock,
        },
        reader,
        cursor,
        events,
        bytes,
        quarantined,
    })
}

/// The appending half. Owns the lock.
pub(super) struct Writer {
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    file: File,
    head: Position,
    segment_bytes: u64,
    /// Records in the head segment.
    records: u64,
    /// The file may hold bytes past `head` (a failed append that could not be cut off yet).
    dirty: bool,
    _lock: File,
}

impl Writer {
    /// The end of the log.
    pub(super) fn head(&self) -> Position {
        self.head
    }

    /// Appends `records` framed records and syncs them (group commit: one `fdatasync` per
    /// batch). Returns the new end of the log. On error nothing of the batch stays: the
    /// partial write is cut off now, or before the next append writes anything.
    pub(super) fn append(&mut self, framed: &[u8], records: u64) -> io::Result<Position> {
        if self.dirty {
            self.clean()?;
        }
        if self.head.offset > 0 && self.head.offset + framed.len() as u64 > self.segment_bytes {
            self.roll()?;
        }
        self.dirty = true;
        let result = self
            .disk
            .write(&mut self.file, framed)
            .and_then(|()| self.disk.sync(&self.file));
        match result {
            Ok(()) => {
                self.dirty = false;
                self.head.offset += framed.len() as u64;
                self.records += records;
                Ok(self.head)
            }
            Err(e) => {
                if self.clean().is_err() {
                    // Should Ferry stop before the cut succeeds, the next start cuts there.
                    if let Err(e) = write_unconfirmed(&self.dir, self.head) {
                        tracing::error!(error = %e, "cannot record where the spool's confirmed end is");
                    }
                }
                Err(e)
            }
        }
    }

    /// Cuts the head segment back to the confirmed end.
    fn clean(&mut self) -> io::Result<()> {
        self.disk.truncate(&self.file, self.head.offset)?;
        self.dirty = false;
        match fs::remove_file(self.dir.join(UNCONFIRMED)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// A task running an append died: the file may hold part of it.
    pub(super) fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Seals the head segment (its count beside it) and starts the next. The writer's file
    /// and head change only once the new segment's directory entry is durable.
    fn roll(&mut self) -> io::Result<()> {
        if let Err(e) = write_count(&self.dir, self.head.segment, self.records) {
            // Only the next start is slower: it counts the segment by reading it.
            tracing::warn!(segment = self.head.segment, error = %e, "cannot write the spool segment's count");
        }
        let next = self.head.segment + 1;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, next))?;
        self.disk.sync_dir(&self.dir)?;
        self.file = file;
        self.head = Position {
            segment: next,
            offset: 0,
        };
        self.records = 0;
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.dirty {
            let _ = self.clean();
        }
    }
}

/// Names the confirmed end of the log while bytes past it could not be cut off.
const UNCONFIRMED: &str = "unconfirmed";

fn write_unconfirmed(dir: &Path, head: Position) -> io::Result<()> {
    let tmp = dir.join("unconfirmed.tmp");
    let mut f = File::create(&tmp)?;
    writeln!(f, "{} {}", head.segment, head.offset)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(UNCONFIRMED))?;
    File::open(dir)?.sync_all()
}

/// Persists the cursor: written to a temporary file, synced, renamed over the old one.
pub(super) fn write_cursor(dir: &Path, cursor: Position) -> io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    let mut f = File::create(&tmp)?;
    writeln!(f, "{} {}", cursor.segment, cursor.offset)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join("cursor"))?;
    File::open(dir)?.sync_all()
}

/// Deletes the segments before `segment` (fully delivered) and their counts.
pub(super) fn remove_before(dir: &Path, segment: u64) -> io::Result<()> {
    for s in list(dir, "seg")?.into_iter().filter(|&s| s < segment) {
        fs::remove_file(segment_path(dir, s))?;
    }
    for s in list(dir, "count")?.into_iter().filter(|&s| s < segment) {
        fs::remove_file(count_path(dir, s))?;
    }
    Ok(())
}

/// A failed append that could not be cut off before Ferry stopped: cut it now.
fn cut_unconfirmed(dir: &Path, last: u64, disk: &dyn Disk) -> io::Result<()> {
    let Some(end) = read_position(dir, UNCONFIRMED)? else {
        return Ok(());
    };
    let path = segment_path(dir, end.segment);
    let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if end.segment == last && len > end.offset {
        let q = quarantine::span(dir, &path, end, len, "unconfirmed")?;
        tracing::warn!(path = %path.display(), at = end.offset, quarantine = %q.display(), "cutting off an append that failed before Ferry stopped");
        let f = OpenOptions::new().write(true).open(&path)?;
        disk.truncate(&f, end.offset)?;
    }
    fs::remove_file(dir.join(UNCONFIRMED))
}

fn read_cursor(dir: &Path) -> io::Result<Option<Position>> {
    read_position(dir, "cursor")
}

fn read_position(dir: &Path, name: &str) -> io::Result<Option<Position>> {
    let text = match fs::read_to_string(dir.join(name)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Ok(Some(Position { segment, offset })),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the spool's {name} file is not `<segment> <offset>`"),
        )),
    }
}

/// Writes a sealed segment's record count (temporary file, synced, renamed).
fn write_count(dir: &Path, segment: u64, records: u64) -> io::Result<()> {
    let path = count_path(dir, segment);
    let tmp = path.with_extension("count-tmp");
    let mut f = File::create(&tmp)?;
    writeln!(f, "{records}")?;
    f.sync_data()?;
    fs::rename(&tmp, &path)
}

/// A sealed segment's record count; `None` when missing or unreadable (then it is counted
/// by reading the segment).
fn read_count(dir: &Path, segment: u64) -> Option<u64> {
    fs::read_to_string(count_path(dir, segment))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub(super) fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.seg"))
}

fn count_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.count"))
}

/// Numbers of the `<number>.<ext>` files in the directory, ascending.
fn list(dir: &Path, ext: &str) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(ext))
            .and_then(|n| n.strip_suffix('.'))
            .and_then(|n| n.parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}
