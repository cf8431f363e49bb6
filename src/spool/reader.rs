//! The reading half of the log: records in order, up to the writer's confirmed end.
//!
//! Nothing read is kept between calls, and a call reads no byte at or past the `head` it is
//! given (`Read::take`): bytes past `head` belong to an append that may still fail and be
//! cut off, and must never be served in place of the records written there later.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use super::disk::{Disk, DiskRead};
use super::log::{segment_path, Position};
use super::quarantine;
use super::record::{self, Parsed, HEADER};

/// One record read back.
pub(super) struct Record {
    pub start: Position,
    pub end: Position,
    pub payload: Vec<u8>,
}

/// What the reader found next.
pub(super) enum Item {
    Record(Record),
    /// A corrupt span, copied into the quarantine and skipped.
    Corrupt {
        start: Position,
        end: Position,
    },
}

impl Item {
    pub(super) fn end(&self) -> Position {
        match self {
            Item::Record(r) => r.end,
            Item::Corrupt { end, .. } => *end,
        }
    }

    /// Bytes of the log it stands for.
    pub(super) fn size(&self) -> u64 {
        let (start, end) = match self {
            Item::Record(r) => (r.start, r.end),
            Item::Corrupt { start, end, .. } => (*start, *end),
        };
        end.offset.saturating_sub(start.offset)
    }
}

/// See the module docs.
pub(super) struct Reader {
    pub(super) dir: PathBuf,
    pub(super) disk: Arc<dyn Disk>,
    pub(super) pos: Position,
    /// The segment open for reading (its number and file). Holds no buffered bytes.
    pub(super) file: Option<(u64, File)>,
}

impl Reader {
    /// Up to `max` items between the read position and `head`. On an IO error the position
    /// stays at the first item not returned, so a later call picks up there; the error is
    /// returned only when nothing was read.
    pub(super) fn read(&mut self, head: Position, max: usize) -> io::Result<Vec<Item>> {
        let mut out = Vec::new();
        match self.read_into(head, max, &mut out) {
            Err(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    fn read_into(&mut self, head: Position, max: usize, out: &mut Vec<Item>) -> io::Result<()> {
        while out.len() < max && self.pos < head {
            let sealed = self.pos.segment < head.segment;
            let segment = self.pos.segment;
            let file = match &mut self.file {
                Some((s, f)) if *s == segment => f,
                slot => {
                    *slot = None;
                    let f = self.disk.open(&segment_path(&self.dir, segment))?;
                    &mut slot.insert((segment, f)).1
                }
            };
            // A sealed segment is whole; in the head segment only what is confirmed.
            let limit = if sealed {
                file.metadata()?.len()
            } else {
                head.offset
            };
            if self.pos.offset >= limit {
                self.pos = Position {
                    segment: segment + 1,
                    offset: 0,
                };
                self.file = None;
                continue;
            }
            file.seek(SeekFrom::Start(self.pos.offset))?;
            let disk = &*self.disk;
            let mut r = BufReader::with_capacity(
                64 * 1024,
                DiskRead {
                    disk,
                    file: &mut *file,
                }
                .take(limit - self.pos.offset),
            );
            while out.len() < max && self.pos.offset < limit {
                match record::read_record(&mut r, limit - self.pos.offset)? {
                    Parsed::Record(payload) => {
                        let start = self.pos;
                        self.pos.offset += HEADER + payload.len() as u64;
                        out.push(Item::Record(Record {
                            start,
                            end: self.pos,
                            payload,
                        }));
                    }
                    Parsed::End => break,
                    // Below the confirmed end every record is whole: a short one is corrupt.
                    Parsed::Torn | Parsed::Corrupt => {
                        drop(r);
                        let start = self.pos;
                        let next = record::resync(disk, file, start.offset, limit)?;
                        let path = quarantine::span(
                            &self.dir,
                            &segment_path(&self.dir, segment),
                            start,
                            next,
                            "corrupt",
                        )?;
                        self.pos.offset = next;
                        tracing::error!(
                            segment, offset = start.offset, bytes = next - start.offset,
                            quarantine = %path.display(),
                            "corrupt record in the spool; moved to quarantine, reading on after it"
                        );
                        out.push(Item::Corrupt {
                            start,
                            end: self.pos,
                        });
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Where the next record is read from.
    pub(super) fn position(&self) -> Position {
        self.pos
    }
}
