//! One record of the log: `len: u32 LE | crc32(payload): u32 LE | payload`, its parsing, and
//! the resync scan that finds the next valid record after a corrupt one.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

use super::disk::{Disk, DiskRead};

/// Bytes before each record's payload.
pub(super) const HEADER: u64 = 8;
/// The largest payload a record holds. The writer refuses larger events; a reader takes a
/// larger length for corruption.
pub(super) const MAX_RECORD: u64 = 64 << 20;

/// Frames a payload as one record. The caller keeps payloads within `1..=MAX_RECORD`.
pub(super) fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What the bytes at a position hold.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Parsed {
    /// A whole record whose checksum matches.
    Record(Vec<u8>),
    /// No bytes left.
    End,
    /// The start of a record that the available bytes cut short (a write that never
    /// finished, when it is at the end of the log).
    Torn,
    /// An impossible length (0 or over [`MAX_RECORD`]) or a checksum mismatch on a record
    /// that is all there.
    Corrupt,
}

/// Parses the next record from `r`, which holds `available` more bytes. Never allocates
/// more than `available`.
pub(super) fn read_record(r: &mut impl Read, available: u64) -> io::Result<Parsed> {
    if available == 0 {
        return Ok(Parsed::End);
    }
    let mut header = [0u8; HEADER as usize];
    if available < HEADER || !read_full(r, &mut header)? {
        return Ok(Parsed::Torn);
    }
    let (len, crc) = split_header(&header);
    if len == 0 || len > MAX_RECORD {
        return Ok(Parsed::Corrupt);
    }
    if len > available - HEADER {
        return Ok(Parsed::Torn);
    }
    let mut payload = vec![0; len as usize];
    if !read_full(r, &mut payload)? {
        return Ok(Parsed::Torn);
    }
    if crc32fast::hash(&payload) != crc {
        return Ok(Parsed::Corrupt);
    }
    Ok(Parsed::Record(payload))
}

fn split_header(h: &[u8]) -> (u64, u32) {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    (u64::from(len), crc)
}

/// The first offset in `(bad, limit)` where a whole valid record starts, or `limit` when
/// none does: the bytes from `bad` to it are the corrupt span. Reads in 1 MiB chunks.
pub(super) fn resync(disk: &dyn Disk, file: &mut File, bad: u64, limit: u64) -> io::Result<u64> {
    const CHUNK: u64 = 1 << 20;
    let mut base = bad + 1;
    let mut buf = Vec::new();
    // A record is at least a header and one byte.
    while base + HEADER < limit {
        let n = CHUNK.min(limit - base);
        buf.resize(n as usize, 0);
        file.seek(SeekFrom::Start(base))?;
        if !read_full(&mut DiskRead { disk, file }, &mut buf)? {
            // The segment is shorter than it was: nothing more to find.
            return Ok(limit);
        }
        let candidates = n - HEADER + 1;
        for i in 0..candidates {
            let at = i as usize;
            let (len, crc) = split_header(&buf[at..at + HEADER as usize]);
            let start = base + i;
            if len == 0 || len > MAX_RECORD || len > limit - start - HEADER {
                continue;
            }
            let from = at + HEADER as usize;
            let matches = if from + len as usize <= buf.len() {
                crc32fast::hash(&buf[from..from + len as usize]) == crc
            } else {
                let mut payload = vec![0; len as usize];
                file.seek(SeekFrom::Start(start + HEADER))?;
                read_full(&mut DiskRead { disk, file }, &mut payload)?
                    && crc32fast::hash(&payload) == crc
            };
            if matches {
                return Ok(start);
            }
        }
        base += candidates;
    }
    Ok(limit)
}

/// What a scan of one segment found.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// Records (and corrupt spans, one each) at or after the `count_from` offset.
    pub events: u64,
    /// Records and corrupt spans in the whole scanned range.
    pub total: u64,
    /// Where the last valid record ends: after it only a torn or corrupt tail.
    pub end: u64,
    /// The segment's length.
    pub len: u64,
    /// How the tail after `end` starts, when there is one.
    pub tail: Option<Parsed>,
}

/// Scans a segment from `from`, resyncing past corrupt records in the middle. Streams: memory
/// stays at one buffer and the largest record.
pub(super) fn scan(
    disk: &dyn Disk,
    file: &mut File,
    from: u64,
    count_from: u64,
) -> io::Result<Scan> {
    let len = file.metadata()?.len();
    let mut s = Scan {
        end: from.min(len),
        len,
        ..Scan::default()
    };
    let mut pos = s.end;
    'segment: while pos < len {
        file.seek(SeekFrom::Start(pos))?;
        let mut r = BufReader::with_capacity(
            256 * 1024,
            DiskRead {
                disk,
                file: &mut *file,
            }
            .take(len - pos),
        );
        loop {
            match read_record(&mut r, len - pos)? {
                Parsed::Record(payload) => {
                    s.total += 1;
                    if pos >= count_from {
                        s.events += 1;
                    }
                    pos += HEADER + payload.len() as u64;
                    s.end = pos;
                }
                Parsed::End => break 'segment,
                bad => {
                    drop(r);
                    let next = resync(disk, file, pos, len)?;
                    if next == len {
                        s.tail = Some(bad);
                        break 'segment;
                    }
                    // A corrupt span with valid records after it: kept for the reader.
                    s.total += 1;
                    if pos >= count_from {
                        s.events += 1;
                    }
                    pos = next;
                    continue 'segment;
                }
            }
        }
    }
    Ok(s)
}

/// Fills `buf`; false if the data ends first.
pub(super) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
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
