//! Writing output files so that an interrupted or failed run never leaves a half-written
//! file: write a temporary file in the same directory, flush it to disk, then rename it over
//! the target (atomic on the same file system).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `contents` to `path` atomically: either the old file stays whole, or the new one
/// is there whole.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let temp = temp_path(path)?;
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(cannot_write(path, source));
    }
    Ok(())
}

/// Checks, before any long work, that [`write_atomic`] will be able to write `path`: it is
/// not a directory, and a file can be created next to it. Nothing is left behind.
pub fn check_writable(path: &Path) -> Result<()> {
    let temp = temp_path(path)?;
    std::fs::File::create(&temp).map_err(|source| cannot_write(path, source))?;
    std::fs::remove_file(&temp).map_err(|source| cannot_write(path, source))
}

fn cannot_write(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        action: "cannot write",
        source,
    }
}

/// The temporary file `write_atomic` writes before renaming: hidden, in the same directory
/// (a rename is only atomic within one file system), and unique to this process.
fn temp_path(path: &Path) -> Result<PathBuf> {
    let other = |reason: &str| cannot_write(path, std::io::Error::other(reason.to_string()));
    if path.is_dir() {
        return Err(other("is a directory, expected a file name"));
    }
    let name = path.file_name().ok_or_else(|| other("no file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        let problem = if dir.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        return Err(other(&format!("{} {problem}", dir.display())));
    }
    Ok(dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_or_not_at_all() {
        let dir = std::env::temp_dir().join(format!("opcount-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("out.txt");
        write_atomic(&target, b"first").unwrap();
        write_atomic(&target, b"second").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"second");
        // A directory in the way: an error, and nothing left behind.
        assert!(write_atomic(&dir, b"x").is_err());
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1);
        // The same checks, before any work is done.
        assert!(check_writable(&dir).is_err());
        assert!(check_writable(&dir.join("missing").join("out.txt")).is_err());
        check_writable(&dir.join("new.txt")).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
