//! Where the spool keeps what it cannot deliver, beside the log, instead of dropping it:
//!
//! ```text
//! <dir>/quarantine/<segment>-<offset>.corrupt     bytes of a corrupt span (a failed checksum)
//! <dir>/quarantine/<segment>-<offset>.torn        a torn tail cut off the log at open
//! <dir>/quarantine/<segment>-<offset>.unconfirmed a failed append cut off at open
//! <dir>/quarantine/<segment>-<offset>.undecodable a whole record that is not an event
//! <dir>/rejected.jsonl                            events the target refused for good
//! ```
//!
//! Every file is synced before the log moves past what it holds.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::log::Position;

/// The directory of quarantined bytes.
pub(super) fn dir(spool: &Path) -> PathBuf {
    spool.join("quarantine")
}

/// Copies the bytes `from..to` of `segment` (the file at `path`) into the quarantine.
pub(super) fn span(
    spool: &Path,
    path: &Path,
    at: Position,
    to: u64,
    kind: &str,
) -> io::Result<PathBuf> {
    let mut src = File::open(path)?;
    src.seek(SeekFrom::Start(at.offset))?;
    write_file(spool, at, kind, |out| {
        let copied = io::copy(&mut (&mut src).take(to - at.offset), out)?;
        if copied < to - at.offset {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the segment ended while its corrupt span was copied",
            ));
        }
        Ok(())
    })
}

/// Keeps one record's payload.
pub(super) fn payload(
    spool: &Path,
    at: Position,
    kind: &str,
    payload: &[u8],
) -> io::Result<PathBuf> {
    write_file(spool, at, kind, |out| out.write_all(payload))
}

fn write_file(
    spool: &Path,
    at: Position,
    kind: &str,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<PathBuf> {
    let qdir = dir(spool);
    if !qdir.exists() {
        fs::create_dir_all(&qdir)?;
        File::open(spool)?.sync_all()?;
    }
    let path = qdir.join(format!("{:020}-{:020}.{kind}", at.segment, at.offset));
    let tmp = path.with_extension("tmp");
    let mut out = File::create(&tmp)?;
    fill(&mut out)?;
    out.sync_all()?;
    fs::rename(&tmp, &path)?;
    File::open(&qdir)?.sync_all()?;
    Ok(path)
}

/// Appends one line to `<dir>/rejected.jsonl` and syncs it.
pub(super) fn reject(spool: &Path, line: &[u8]) -> io::Result<()> {
    let path = spool.join("rejected.jsonl");
    let created = !path.exists();
    let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line);
    buf.push(b'\n');
    let before = f.metadata()?.len();
    if let Err(e) = f.write_all(&buf).and_then(|()| f.sync_data()) {
        // Leave no torn line for the next one to be glued onto.
        let _ = f.set_len(before);
        return Err(e);
    }
    if created {
        File::open(spool)?.sync_all()?;
    }
    Ok(())
}
