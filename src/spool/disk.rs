//! The file operations of the spool's log, behind a small trait so that tests can make any
//! of them fail (a short write, a failed `fdatasync`, an unreadable segment) without filling
//! a disk.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

/// How the log touches files. The defaults are the real operations; [`Os`] uses them all.
pub(super) trait Disk: Send + Sync + 'static {
    /// Appends `buf` to a segment opened for appending.
    fn write(&self, file: &mut File, buf: &[u8]) -> io::Result<()> {
        file.write_all(buf)
    }

    /// Makes the appended bytes durable (`fdatasync`).
    fn sync(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    /// Cuts a segment back to `len` bytes, durably.
    fn truncate(&self, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)?;
        file.sync_data()
    }

    /// Opens a segment for reading.
    fn open(&self, path: &Path) -> io::Result<File> {
        File::open(path)
    }

    /// Reads from a segment at its current position.
    fn read(&self, file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
        file.read(buf)
    }

    /// Makes the directory's entries durable (a new segment, a renamed file).
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// The real file system.
pub(super) struct Os;

impl Disk for Os {}

/// A segment read through a [`Disk`].
pub(super) struct DiskRead<'a> {
    pub disk: &'a dyn Disk,
    pub file: &'a mut File,
}

impl Read for DiskRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.disk.read(self.file, buf)
    }
}
