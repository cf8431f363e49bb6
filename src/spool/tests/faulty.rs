//! A [`Disk`] whose operations fail (or panic) on demand, and counts what it read.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::spool::disk::Disk;

/// Fails the next `n` calls of one operation.
#[derive(Default)]
pub(super) struct Fault(AtomicUsize);

impl Fault {
    pub(super) fn next(&self, n: usize) {
        self.0.store(n, Ordering::SeqCst);
    }

    fn hit(&self) -> bool {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn check(&self) -> io::Result<()> {
        if self.hit() {
            return Err(io::Error::other("injected failure"));
        }
        Ok(())
    }
}

type Hook = Box<dyn FnMut() + Send>;

#[derive(Default)]
pub(super) struct Faulty {
    /// A failing write writes half of its bytes first (a short write, then ENOSPC).
    pub write: Fault,
    pub sync: Fault,
    pub truncate: Fault,
    pub open: Fault,
    pub read: Fault,
    pub sync_dir: Fault,
    pub panic_read: Fault,
    pub bytes_read: AtomicU64,
    /// Runs inside the next `sync`, while the batch is written but not yet confirmed.
    pub before_sync: Mutex<Option<Hook>>,
}

impl Disk for Faulty {
    fn write(&self, file: &mut File, buf: &[u8]) -> io::Result<()> {
        if self.write.hit() {
            file.write_all(&buf[..buf.len() / 2])?;
            return Err(io::Error::other("injected short write"));
        }
        file.write_all(buf)
    }

    fn sync(&self, file: &File) -> io::Result<()> {
        let hook = self.before_sync.lock().unwrap().take();
        if let Some(mut hook) = hook {
            hook();
        }
        self.sync.check()?;
        file.sync_data()
    }

    fn truncate(&self, file: &File, len: u64) -> io::Result<()> {
        self.truncate.check()?;
        file.set_len(len)?;
        file.sync_data()
    }

    fn open(&self, path: &Path) -> io::Result<File> {
        self.open.check()?;
        File::open(path)
    }

    fn read(&self, file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
        if self.panic_read.hit() {
            panic!("injected panic in a spool read");
        }
        self.read.check()?;
        let n = file.read(buf)?;
        self.bytes_read.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.sync_dir.check()?;
        File::open(dir)?.sync_all()
    }
}
