//! Reload on file changes: watches the directories of the config file and of every file it
//! references (certificates, keys, JWKS, `file:` secrets) and the `routes_dir` folder, waits for a quiet moment, then
//! reloads through the same path as SIGHUP and `POST /-/reload`.
//!
//! Directories are watched rather than files, so editors that write a new file and rename it
//! over the old one, and Kubernetes ConfigMap volumes (which swap a `..data` symlink), are seen.
//! A change that leaves the config and its files as they were (same hash) reloads nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::reload::Reloader;

/// What the watch looks at: the config file and the files it references.
fn watched(reloader: &Reloader) -> (BTreeSet<PathBuf>, BTreeSet<PathBuf>) {
    let config = reloader.current();
    let files: BTreeSet<PathBuf> = std::iter::once(config.origin.path.clone())
        .chain(config.origin.files.iter().cloned())
        .map(|p| absolute(&p))
        .collect();
    let dirs = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .chain(config.origin.dirs.iter().map(|d| absolute(d)))
        .collect();
    (files, dirs)
}

/// The folders in which any `*.toml` file counts (`routes_dir`).
fn watched_dirs(reloader: &Reloader) -> BTreeSet<PathBuf> {
    reloader
        .current()
        .origin
        .dirs
        .iter()
        .map(|d| absolute(d))
        .collect()
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Whether an event on `path` concerns a watched file, a `*.toml` file of a watched folder, or
/// a Kubernetes volume swap.
fn relevant(path: &Path, files: &BTreeSet<PathBuf>, toml_dirs: &BTreeSet<PathBuf>) -> bool {
    let path_abs = absolute(path);
    files.contains(&path_abs)
        || (path.extension().is_some_and(|x| x == "toml")
            && path_abs.parent().is_some_and(|d| toml_dirs.contains(d)))
        || path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".."))
}

/// Starts watching; runs until `shutdown`. Errors setting up the watch are logged (the
/// gateway runs on, reloadable by SIGHUP and the admin API).
pub fn spawn(reloader: Arc<Reloader>, debounce: Duration, shutdown: CancellationToken) {
    let changed = Arc::new(Notify::new());
    let files = Arc::new(std::sync::RwLock::new((BTreeSet::new(), BTreeSet::new())));
    let watcher = {
        let changed = Arc::clone(&changed);
        let files = Arc::clone(&files);
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            let files = files.read().expect("watched files");
            if event.paths.iter().any(|p| relevant(p, &files.0, &files.1)) {
                changed.notify_one();
            }
        })
    };
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config files; reload with SIGHUP or the admin API");
            return;
        }
    };
    tokio::spawn(
        async move {
            let mut dirs = BTreeSet::new();
            loop {
                // Follow the files of the config in force (a reload may name new ones).
                let (now_files, now_dirs) = watched(&reloader);
                for d in now_dirs.difference(&dirs) {
                    if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %d.display(), error = %e, "cannot watch directory");
                    }
                }
                for d in dirs.difference(&now_dirs) {
                    let _ = watcher.unwatch(d);
                }
                dirs = now_dirs;
                *files.write().expect("watched files") = (now_files, watched_dirs(&reloader));

                tokio::select! {
                    () = changed.notified() => {}
                    () = shutdown.cancelled() => return,
                }
                // Debounce: wait until the files have been quiet for a while.
                loop {
                    tokio::select! {
                        () = changed.notified() => continue,
                        () = tokio::time::sleep(debounce) => break,
                        () = shutdown.cancelled() => return,
                    }
                }
                tracing::info!("config files changed; reloading");
                // The outcome is logged and counted by the reloader.
                let _ = reloader.reload_file_if_changed().await;
            }
        }
        .instrument(tracing::info_span!("watch")),
    );
}
