//! The spool's on-disk log: a lock file, append-only segments of checksummed records, and
//! a persisted read cursor. Blocking IO: callers run it on the blocking pool.
//!
//! ```text
//! <dir>/LOCK                   held (flock) while a Ferry process uses the directory
//! <dir>/cursor                 "<segment> <offset>\n": where undelivered records start
//! <dir>/00000000000000000007.seg
//!     record = len: u32 LE | crc32(payload): u32 LE | payload (the event, structured JSON)
//! ```
//!
//! A record is acknowledged only after the `fdatasync` of the batch that holds it, so a
//! record the log ever confirmed is complete on disk. A torn or corrupt tail (a crash in
//! the middle of a write that was never confirmed) is cut off when the log is opened.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes before each record's payload.
pub const HEADER: u64 = 8;
/// Larger records are taken for corruption (events are bounded far below this).
const MAX_RECORD: u32 = 64 << 20;

/// A place in the log; ordered by segment, then offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// The log as found on disk.
pub struct Opened {
    pub writer: Writer,
    pub reader: Reader,
    pub cursor: Position,
    /// Undelivered records and their size (headers included).
    pub events: u64,
    pub bytes: u64,
}

/// Opens (creating if needed) the log in `dir`, taking its lock.
pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<Opened> {
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
    let segments = list(dir)?;
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
    for &s in segments.iter().filter(|&&s| s < cursor.segment) {
        fs::remove_file(segment_path(dir, s))?;
    }
    // Count what is left to deliver; cut a torn tail off the last segment.
    let last = segments.last().copied().unwrap_or(cursor.segment);
    let (mut events, mut bytes) = (0, 0);
    let mut head = cursor;
    for &s in segments.iter().filter(|&&s| s >= cursor.segment) {
        let path = segment_path(dir, s);
        let from = if s == cursor.segment {
            cursor.offset
        } else {
            0
        };
        let scan = scan(&path, from)?;
        events += scan.events;
        bytes += scan.bytes;
        if s == last {
            if scan.end < scan.len {
                tracing::warn!(path = %path.display(), at = scan.end, "cutting off a torn record at the end of the spool");
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(scan.end)?;
                f.sync_all()?;
            }
            head = Position {
                segment: s,
                offset: scan.end,
            };
        } else if scan.end < scan.len {
            tracing::error!(path = %path.display(), at = scan.end, "corrupt record in the spool; the rest of this segment is skipped");
        }
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, head.segment))?;
    sync_dir(dir)?;
    let reader = Reader {
        dir: dir.to_owned(),
        pos: cursor,
        file: None,
    };
    Ok(Opened {
        writer: Writer {
            dir: dir.to_owned(),
            file,
            head,
            segment_bytes,
            _lock: lock,
        },
        reader,
        cursor,
        events,
        bytes,
    })
}

/// Frames a payload as one record.
pub fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The appending half. Owns the lock.
pub struct Writer {
    dir: PathBuf,
    file: File,
    head: Position,
    segment_bytes: u64,
    _lock: File,
}

impl Writer {
    /// The end of the log.
    pub fn head(&self) -> Position {
        self.head
    }

    /// Appends framed records and syncs them (group commit: one `fdatasync` per batch).
    /// Returns the new end of the log. On error the partial write is cut off.
    pub fn append(&mut self, framed: &[u8]) -> io::Result<Position> {
        if self.head.offset > 0 && self.head.offset + framed.len() as u64 > self.segment_bytes {
            let next = self.head.segment + 1;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(segment_path(&self.dir, next))?;
            sync_dir(&self.dir)?;
            self.head = Position {
                segment: next,
                offset: 0,
            };
        }
        let result = self
            .file
            .write_all(framed)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.head.offset += framed.len() as u64;
                Ok(self.head)
            }
            Err(e) => {
                let _ = self.file.set_len(self.head.offset);
                Err(e)
            }
        }
    }
}

/// One record read back.
pub struct Record {
    pub start: Position,
    pub end: Position,
    pub payload: Vec<u8>,
}

/// The reading half: reads records in order up to the writer's confirmed end.
pub struct Reader {
    dir: PathBuf,
    pos: Position,
    file: Option<BufReader<File>>,
}

impl Reader {
    /// Up to `max` records between the read position and `head`.
    pub fn read(&mut self, head: Position, max: usize) -> io::Result<Vec<Record>> {
        let mut out = Vec::new();
        while out.len() < max && self.pos < head {
            let file = match &mut self.file {
                Some(f) => f,
                None => {
                    let mut f = File::open(segment_path(&self.dir, self.pos.segment))?;
                    f.seek(SeekFrom::Start(self.pos.offset))?;
                    self.file.insert(BufReader::with_capacity(64 * 1024, f))
                }
            };
            match read_record(file)? {
                Some(payload) => {
                    let start = self.pos;
                    self.pos.offset += HEADER + payload.len() as u64;
                    out.push(Record {
                        start,
                        end: self.pos,
                        payload,
                    });
                }
                None if self.pos.segment < head.segment => {
                    // End of a full segment (or a corrupt tail, logged at open): the next.
                    self.pos = Position {
                        segment: self.pos.segment + 1,
                        offset: 0,
                    };
                    self.file = None;
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "unreadable record at {:?} before the end of the log",
                            self.pos
                        ),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Where the next record is read from.
    pub fn position(&self) -> Position {
        self.pos
    }

    /// Skips to `to` (past an unreadable stretch).
    pub fn skip_to(&mut self, to: Position) {
        self.pos = to;
        self.file = None;
    }
}

/// Persists the cursor: written to a temporary file, synced, renamed over the old one.
pub fn write_cursor(dir: &Path, cursor: Position) -> io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    let mut f = File::create(&tmp)?;
    writeln!(f, "{} {}", cursor.segment, cursor.offset)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join("cursor"))?;
    sync_dir(dir)
}

/// Deletes the segments before `segment` (fully delivered).
pub fn remove_before(dir: &Path, segment: u64) -> io::Result<()> {
    for s in list(dir)?.into_iter().filter(|&s| s < segment) {
        fs::remove_file(segment_path(dir, s))?;
    }
    Ok(())
}

fn read_cursor(dir: &Path) -> io::Result<Option<Position>> {
    let text = match fs::read_to_string(dir.join("cursor")) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Ok(Some(Position { segment, offset })),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the spool's cursor file is not `<segment> <offset>`",
        )),
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.seg"))
}

/// Segment numbers in the directory, ascending.
fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

struct Scan {
    events: u64,
    bytes: u64,
    /// Where the valid records end.
    end: u64,
    len: u64,
}

fn scan(path: &Path, from: u64) -> io::Result<Scan> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(from))?;
    let mut r = BufReader::with_capacity(256 * 1024, f);
    let mut s = Scan {
        events: 0,
        bytes: 0,
        end: from,
        len,
    };
    while let Some(payload) = read_record(&mut r)? {
        s.events += 1;
        s.bytes += HEADER + payload.len() as u64;
        s.end += HEADER + payload.len() as u64;
    }
    Ok(s)
}

/// The next record's payload; `None` at the end or at a torn or corrupt record.
fn read_record(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER as usize];
    if !read_full(r, &mut header)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_RECORD {
        return Ok(None);
    }
    let mut payload = vec![0; len as usize];
    if !read_full(r, &mut payload)? || crc32fast::hash(&payload) != crc {
        return Ok(None);
    }
    Ok(Some(payload))
}

/// Fills `buf`; false if the data ends first.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            frame(p.as_bytes(), &mut out);
        }
        out
    }

    #[test]
    fn appends_reads_rolls_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 30).unwrap();
        assert_eq!((log.events, log.bytes), (0, 0));
        log.writer.append(&framed(&["one", "two"])).unwrap();
        let head = log.writer.append(&framed(&["three"])).unwrap();
        assert_eq!(head.segment, 1, "a new segment once the first is full");
        let records = log.reader.read(head, 10).unwrap();
        let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
        assert_eq!(payloads, [&b"one"[..], b"two", b"three"]);
        // Deliver the first two; reopen: only the third is left.
        write_cursor(dir.path(), records[1].end).unwrap();
        drop(log);
        let mut log = open(dir.path(), 30).unwrap();
        assert_eq!(log.events, 1);
        assert_eq!(log.bytes, HEADER + 5);
        let head = log.writer.append(&framed(&["four"])).unwrap();
        let rest: Vec<Vec<u8>> = log
            .reader
            .read(head, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.payload)
            .collect();
        assert_eq!(rest, [b"three".to_vec(), b"four".to_vec()]);
        remove_before(dir.path(), 1).unwrap();
        assert_eq!(list(dir.path()).unwrap(), [1]);
    }

    #[test]
    fn a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 1 << 20).unwrap();
        log.writer.append(&framed(&["whole"])).unwrap();
        drop(log);
        // A crash in the middle of the next write: half a record.
        let path = segment_path(dir.path(), 0);
        let mut torn = framed(&["never confirmed"]);
        torn.truncate(10);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&torn).unwrap();
        drop(f);
        let mut log = open(dir.path(), 1 << 20).unwrap();
        assert_eq!(log.events, 1);
        let head = log.writer.append(&framed(&["after"])).unwrap();
        let got: Vec<Vec<u8>> = log
            .reader
            .read(head, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.payload)
            .collect();
        assert_eq!(got, [b"whole".to_vec(), b"after".to_vec()]);
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let mut bytes = framed(&["payload"]);
        assert!(read_record(&mut bytes.as_slice()).unwrap().is_some());
        bytes[HEADER as usize + 2] ^= 1;
        assert!(read_record(&mut bytes.as_slice()).unwrap().is_none());
    }

    #[test]
    fn the_directory_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let _log = open(dir.path(), 1 << 20).unwrap();
        let err = open(dir.path(), 1 << 20)
            .err()
            .expect("second open refused");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
