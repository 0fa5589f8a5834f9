//! The journal of invalidations that could not reach the store: a local file that survives a
//! restart of this process.
//!
//! A write whose invalidation fails is answered only after the journal holds it (appended and
//! synced to disk). A cache that starts over a non-empty journal does not read the store until
//! its recovery purge has landed, and clears the journal only then. One JSON object per line:
//! `{"tags":[...]}` or `{"purge":true}`, for an operator to read; recovery does not need the
//! tags (it purges the namespace, see the breaker).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::Mutex,
};

/// The journal file. Appends and clears are serialized.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    lock: Mutex<()>,
}

#[derive(serde::Serialize)]
struct Line<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tags: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    purge: bool,
}

impl Journal {
    /// Opens (or creates) the journal at `path`; also says whether it holds invalidations an
    /// earlier run could not apply.
    pub(crate) fn open(path: &Path) -> io::Result<(Journal, bool)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        let pending = file.metadata()?.len() > 0;
        Ok((
            Journal {
                path: path.to_owned(),
                lock: Mutex::new(()),
            },
            pending,
        ))
    }

    /// Where the journal is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an invalidation and waits until it is on disk.
    pub(crate) fn record(&self, tags: &[String], purge: bool) -> io::Result<()> {
        let mut line = serde_json::to_vec(&Line { tags, purge }).map_err(io::Error::other)?;
        line.push(b'\n');
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut file = OpenOptions::new().append(true).open(&self.path)?;
        file.write_all(&line)?;
        file.sync_data()
    }

    /// Empties the journal once what it held has been applied, unless `still_current` says
    /// that more was recorded meanwhile (checked under the journal's lock).
    pub(crate) fn clear_if(&self, still_current: impl FnOnce() -> bool) -> io::Result<bool> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if !still_current() {
            return Ok(false);
        }
        let file = File::create(&self.path)?;
        file.sync_all()?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening_and_clear_empties() {
        let dir = std::env::temp_dir().join(format!("larder-journal-{}", std::process::id()));
        let path = dir.join("j.jsonl");
        let _ = fs::remove_file(&path);
        let (j, pending) = Journal::open(&path).unwrap();
        assert!(!pending);
        j.record(&["user:1".into()], false).unwrap();
        j.record(&[], true).unwrap();
        drop(j);
        let (j, pending) = Journal::open(&path).unwrap();
        assert!(pending);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"tags\":[\"user:1\"]}\n{\"purge\":true}\n");
        assert!(!j.clear_if(|| false).unwrap());
        assert!(j.clear_if(|| true).unwrap());
        let (_, pending) = Journal::open(&path).unwrap();
        assert!(!pending);
        let _ = fs::remove_dir_all(&dir);
    }
}
