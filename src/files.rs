//! Writing output files so that an interrupted or failed run never leaves a half-written
//! file: write a temporary file in the same directory, flush it to disk, then rename it over
//! the target (atomic on the same file system).

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `contents` to `path` atomically: either the old file stays whole, or the new one
/// is there whole.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let io = |action: &'static str, source: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        action,
        source,
    };
    if path.is_dir() {
        return Err(io(
            "cannot write",
            std::io::Error::other("is a directory, expected a file name"),
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io("cannot write", std::io::Error::other("no file name")))?;
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(io("cannot write", source));
    }
    Ok(())
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
