//! [`ObjectStore`] in a local directory: one file per object, keys as relative paths. Used by
//! `make run` (tiering without any service) and by tests. A `put` writes a temporary file,
//! fsyncs it and renames it into place, so a crash leaves the old object or the new one.

use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectError, ObjectMeta, ObjectResult, ObjectStore};

pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// Objects under `root` (created if missing).
    pub fn open(root: impl Into<PathBuf>) -> ObjectResult<DirStore> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| io_err(&root, e))?;
        Ok(DirStore { root })
    }

    fn path_of(&self, key: &str) -> ObjectResult<PathBuf> {
        let rel = Path::new(key);
        let plain = !key.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(ObjectError::Permanent(format!("invalid object key `{key}`")));
        }
        Ok(self.root.join(rel))
    }
}

fn io_err(path: &Path, e: std::io::Error) -> ObjectError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ObjectError::NotFound(path.display().to_string())
    } else {
        ObjectError::Permanent(format!("{}: {e}", path.display()))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ObjectResult<T> + Send + 'static) -> ObjectResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ObjectError::Permanent(format!("blocking task failed: {e}")))?
}

fn list_into(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<ObjectMeta>) -> ObjectResult<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let path = entry.path();
        let Some(key) = path.strip_prefix(root).ok().and_then(|p| p.to_str()).map(str::to_owned) else { continue };
        let meta = entry.metadata().map_err(|e| io_err(&path, e))?;
        if meta.is_dir() {
            // Descend only where keys below can still match the prefix.
            let dir_key = format!("{key}/");
            if dir_key.starts_with(prefix) || prefix.starts_with(&dir_key) {
                list_into(root, &path, prefix, out)?;
            }
        } else if key.starts_with(prefix) && !key.ends_with(".tmp") {
            let modified_ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as i64);
            out.push(ObjectMeta { key, size: meta.len(), modified_ms });
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for DirStore {
    async fn put(&self, key: &str, parts: Vec<Bytes>) -> ObjectResult<()> {
        let path = self.path_of(key)?;
        blocking(move || {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
            }
            let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
            let write = || -> std::io::Result<()> {
                let mut file = std::fs::File::create(&tmp)?;
                for part in &parts {
                    file.write_all(part)?;
                }
                file.sync_all()?;
                std::fs::rename(&tmp, &path)
            };
            write().map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                io_err(&path, e)
            })
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> ObjectResult<Bytes> {
        let path = self.path_of(key)?;
        let key = key.to_owned();
        blocking(move || {
            let mut file = std::fs::File::open(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ObjectError::NotFound(key.clone()),
                _ => io_err(&path, e),
            })?;
            let len = file.metadata().map_err(|e| io_err(&path, e))?.len();
            if range.start > range.end || range.end > len {
                return Err(ObjectError::Permanent(format!(
                    "range {}..{} is outside object `{key}` of {len} bytes",
                    range.start, range.end
                )));
            }
            let mut buf = vec![0; (range.end - range.start) as usize];
            file.seek(SeekFrom::Start(range.start)).map_err(|e| io_err(&path, e))?;
            file.read_exact(&mut buf).map_err(|e| io_err(&path, e))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn delete(&self, key: &str) -> ObjectResult<()> {
        let path = self.path_of(key)?;
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, e)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> ObjectResult<Vec<ObjectMeta>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        blocking(move || {
            let mut out = Vec::new();
            list_into(&root, &root, &prefix, &mut out)?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path().join("objects")).unwrap();
        store.put("ab/log/1.seg", vec![Bytes::from_static(b"hello "), Bytes::from_static(b"world")]).await.unwrap();
        store.put("cd/log/2.seg", vec![Bytes::from_static(b"x")]).await.unwrap();
        assert_eq!(store.get_range("ab/log/1.seg", 6..11).await.unwrap(), Bytes::from_static(b"world"));
        assert!(matches!(store.get_range("ab/log/1.seg", 6..12).await, Err(ObjectError::Permanent(_))));
        assert!(matches!(store.get_range("ab/log/9.seg", 0..1).await, Err(ObjectError::NotFound(_))));
        let keys: Vec<_> = store.list("").await.unwrap().into_iter().map(|o| (o.key, o.size)).collect();
        assert_eq!(keys, vec![("ab/log/1.seg".to_owned(), 11), ("cd/log/2.seg".to_owned(), 1)]);
        assert_eq!(store.list("ab/").await.unwrap().len(), 1);
        assert_eq!(store.list("ab/log/1").await.unwrap().len(), 1);
        assert_eq!(store.list("zz").await.unwrap().len(), 0);
        store.delete("ab/log/1.seg").await.unwrap();
        store.delete("ab/log/1.seg").await.unwrap();
        assert_eq!(store.list("").await.unwrap().len(), 1);
        assert!(matches!(store.put("../x", vec![]).await, Err(ObjectError::Permanent(_))));
    }
}
