//! Paths to files a config reads (certificates, keys, JWKS): they compare equal only when the
//! files' contents are equal too, so a reload sees a renewed certificate under the same path as
//! a change of the component that uses it.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

thread_local! {
    /// The directory of the config file being parsed; relative paths may be relative to it.
    static BASE_DIR: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
    /// The files read while parsing (see [`with_base_dir`]).
    static READ: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    /// Set while parsing a config only to compare it (see [`without_reading`]).
    static NO_READS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (a deserialisation) without reading any referenced file: paths compare by
/// themselves. For a config seen from elsewhere (a running gateway's `/-/config`), whose files
/// may not exist on this machine.
pub(crate) fn without_reading<T>(f: impl FnOnce() -> T) -> T {
    let previous = NO_READS.with(|n| n.replace(true));
    let out = f();
    NO_READS.with(|n| n.set(previous));
    out
}

/// Runs `f` (a deserialisation) with `dir` as the directory relative paths may refer to;
/// returns its result and the files the config references that exist.
pub(crate) fn with_base_dir<T>(dir: &Path, f: impl FnOnce() -> T) -> (T, Vec<PathBuf>) {
    let previous = BASE_DIR.with(|b| b.replace(Some(dir.to_path_buf())));
    let read_before = READ.with(|r| r.take());
    let out = f();
    BASE_DIR.with(|b| *b.borrow_mut() = previous);
    let mut read = READ.with(|r| r.replace(read_before));
    read.sort();
    read.dedup();
    (out, read)
}

/// A path in the config, with the digest of what it named when the config was read.
#[derive(Clone, PartialEq, Eq)]
pub struct FileRef {
    path: PathBuf,
    /// SHA-256 over the file as seen from the working directory and from the config's
    /// directory (whichever exist); `None` when neither could be read (loading it later
    /// reports the error).
    digest: Option<[u8; 32]>,
}

impl FileRef {
    pub fn new(path: impl Into<PathBuf>) -> FileRef {
        let path = path.into();
        let base = BASE_DIR.with(|b| b.borrow().clone());
        let mut hasher = Sha256::new();
        let mut found = false;
        if NO_READS.with(Cell::get) {
            return FileRef { path, digest: None };
        }
        let mut candidates = vec![path.clone()];
        if let Some(base) = base.filter(|_| path.is_relative()) {
            candidates.push(base.join(&path));
        }
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                found = true;
                READ.with(|r| r.borrow_mut().push(p.clone()));
                hasher.update((bytes.len() as u64).to_le_bytes());
                hasher.update(&bytes);
            }
        }
        FileRef {
            path,
            digest: found.then(|| hasher.finalize().into()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Deref for FileRef {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for FileRef {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl From<PathBuf> for FileRef {
    fn from(path: PathBuf) -> FileRef {
        FileRef::new(path)
    }
}

impl From<String> for FileRef {
    fn from(path: String) -> FileRef {
        FileRef::new(path)
    }
}

impl From<&str> for FileRef {
    fn from(path: &str) -> FileRef {
        FileRef::new(path)
    }
}

impl fmt::Debug for FileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.path.fmt(f)
    }
}

impl<'de> serde::Deserialize<'de> for FileRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<FileRef, D::Error> {
        PathBuf::deserialize(d).map(FileRef::new)
    }
}

impl serde::Serialize for FileRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.path.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_paths_differ_when_the_file_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, "one").unwrap();
        let a = FileRef::new(path.clone());
        assert_eq!(a, FileRef::new(path.clone()));
        std::fs::write(&path, "two").unwrap();
        assert_ne!(a, FileRef::new(path.clone()));
        assert_eq!(a.path(), path.as_path());
    }

    #[test]
    fn relative_paths_are_also_read_from_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), "{}").unwrap();
        let (a, read) = with_base_dir(dir.path(), || FileRef::new("jwks.json"));
        assert!(a.digest.is_some());
        assert_eq!(read, [dir.path().join("jwks.json")]);
        assert!(FileRef::new("no/such/file.pem").digest.is_none());
    }
}
