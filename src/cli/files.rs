//! Writing output files so that a failed or killed run never leaves a half-written file, and
//! never replaces something that is not a file.
//!
//! Where the path leads decides how it is written:
//! - a regular file, or nothing yet: replaced whole or not at all. The contents go to an
//!   unnamed temporary file in the same directory (`O_TMPFILE`, on Linux file systems that
//!   have it), are flushed to disk, and only then get a name and are renamed over the target;
//!   killed before that, the system frees the file. Elsewhere a named temporary file
//!   (`.opcount-XXXXXXXX.tmp`, locked while in use) stands in, and the next write to the
//!   directory removes any such file no running opcount holds. The target's permissions
//!   (and, where allowed, its owner) are kept.
//! - a device, a FIFO, a socket, or one of this process's descriptors named as a file
//!   (`/dev/stdout`, `/dev/fd/N`, `/proc/self/fd/N`): written straight through, never
//!   replaced.
//! - a symlink: followed; the file it leads to is written as above, and the link is kept.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use opcount::{Error, Result};

/// Temporary files are named `PREFIX` + `RANDOM` letters and digits + `SUFFIX`: 21 bytes,
/// whatever the length of the target's name.
const PREFIX: &str = ".opcount-";
const RANDOM: usize = 8;
const SUFFIX: &str = ".tmp";

/// Symlinks followed before giving up, as the system does.
const MAX_LINKS: usize = 40;

/// Writes `contents` to `path`: a regular file is replaced atomically (the old file stays
/// whole, or the new one is there whole), anything else is written straight through (see the
/// module's documentation).
pub fn write(path: &Path, contents: &[u8]) -> Result<()> {
    let result = match destination(path).map_err(|e| cannot_write(path, e))? {
        Destination::File(target) => {
            let dir = directory_of(path, &target)?;
            replace(&dir, &target, contents)
        }
        Destination::Special(target) => OpenOptions::new()
            .write(true)
            .open(target)
            .and_then(|mut file| file.write_all(contents)),
        Destination::Descriptor(fd) => duplicate(fd).and_then(|mut file| file.write_all(contents)),
    };
    result.map_err(|e| cannot_write(path, e))
}

/// Checks, before any long work, that [`write`] will be able to write `path`: it is not a
/// directory, its directory exists and takes new files, or the device or descriptor it
/// names is open for writing. Nothing is left behind.
pub fn check_writable(path: &Path) -> Result<()> {
    let result = match destination(path).map_err(|e| cannot_write(path, e))? {
        Destination::File(target) => {
            let dir = directory_of(path, &target)?;
            match unnamed_in(&dir, 0o600) {
                Ok(_) => Ok(()),
                Err(e) if unsupported(&e) => tempfile::tempfile_in(&dir).map(drop),
                Err(e) => Err(e),
            }
        }
        // Without blocking on a FIFO that has no reader yet (ENXIO): one may come.
        Destination::Special(target) => match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(target)
        {
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(()),
            other => other.map(drop),
        },
        Destination::Descriptor(fd) => duplicate(fd).map(drop),
    };
    result.map_err(|e| cannot_write(path, e))
}

/// Where a path leads, symlinks followed.
enum Destination {
    /// A regular file, or a path where nothing is yet.
    File(PathBuf),
    /// A device, FIFO, socket, or a file under /proc: opened and written, never replaced.
    Special(PathBuf),
    /// One of this process's open descriptors.
    Descriptor(RawFd),
}

fn destination(path: &Path) -> io::Result<Destination> {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        if let Some(fd) = own_descriptor(&current) {
            return Ok(Destination::Descriptor(fd));
        }
        let meta = match std::fs::symlink_metadata(&current) {
            Ok(meta) => meta,
            // Nothing there (yet), or a directory in the way: `directory_of` says which.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                return Ok(Destination::File(current));
            }
            Err(e) => return Err(e),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            let link = std::fs::read_link(&current)?;
            // A relative link is relative to the directory holding it.
            current = match current.parent() {
                Some(dir) => dir.join(link),
                None => link,
            };
        } else if kind.is_dir() {
            return Err(io::Error::other("is a directory, expected a file name"));
        } else if kind.is_file() && !in_proc(&current) {
            return Ok(Destination::File(current));
        } else {
            return Ok(Destination::Special(current));
        }
    }
    Err(io::Error::from_raw_os_error(libc::ELOOP))
}

/// The descriptor `N` if `path` is `N` in this process's descriptor directory
/// (`/proc/self/fd`, which `/dev/fd` and `/dev/stdout` lead to, or a thread's).
fn own_descriptor(path: &Path) -> Option<RawFd> {
    let fd: RawFd = path.file_name()?.to_str()?.parse().ok()?;
    let dir = std::fs::canonicalize(path.parent()?).ok()?;
    let me = PathBuf::from(format!("/proc/{}", std::process::id()));
    let thread = dir.strip_prefix(me.join("task")).ok();
    let ours = dir == me.join("fd")
        || thread.is_some_and(|t| t.components().count() == 2 && t.ends_with("fd"));
    ours.then_some(fd)
}

/// Whether `path` lies in /proc, where files are views of the system and cannot be replaced.
fn in_proc(path: &Path) -> bool {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    std::fs::canonicalize(dir.unwrap_or(Path::new("."))).is_ok_and(|d| d.starts_with("/proc"))
}

/// The directory a new file at `target` goes in, checked to exist. `path` is what the user
/// asked for, for the message.
fn directory_of(path: &Path, target: &Path) -> Result<PathBuf> {
    let other = |reason: String| cannot_write(path, io::Error::other(reason));
    if target.file_name().is_none() {
        return Err(other("no file name".into()));
    }
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        let problem = if dir.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        return Err(other(format!("{} {problem}", dir.display())));
    }
    Ok(dir.to_path_buf())
}

/// Replaces `target` in `dir` with `contents`, whole or not at all.
fn replace(dir: &Path, target: &Path, contents: &[u8]) -> io::Result<()> {
    remove_stale_temporaries(dir, target);
    let old = std::fs::metadata(target).ok();
    // The open file keeps the temporary file locked until it has been renamed.
    let (_locked, temporary) = match unnamed_in(dir, 0o666) {
        Ok(mut file) => {
            fill(&mut file, old.as_ref(), contents)?;
            // Locked before it has a name, so no other opcount takes it for stale.
            lock(&file)?;
            let named = builder().make_in(dir, |name| link(&file, name))?;
            (file, named.into_temp_path())
        }
        Err(e) if unsupported(&e) => named_in(dir, old.as_ref(), contents)?.into_parts(),
        Err(e) => return Err(e),
    };
    temporary.persist(target).map_err(|e| e.error)?;
    // The rename itself on disk; a failure here loses nothing already written.
    let _ = File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

/// Writes the contents, gives the file the old file's owner and permissions, and flushes it
/// to disk.
fn fill(file: &mut File, old: Option<&Metadata>, contents: &[u8]) -> io::Result<()> {
    file.write_all(contents)?;
    if let Some(old) = old {
        // Only root may give a file away; anyone else keeps the new file as their own.
        let _ = std::os::unix::fs::fchown(&*file, Some(old.uid()), Some(old.gid()));
        file.set_permissions(old.permissions())?;
    }
    file.sync_all()
}

/// An unnamed file in `dir` (Linux's `O_TMPFILE`) with permissions `mode` less the umask.
fn unnamed_in(dir: &Path, mode: u32) -> io::Result<File> {
    if cfg!(target_os = "linux") && Path::new("/proc/self/fd").is_dir() {
        OpenOptions::new()
            .write(true)
            .mode(mode)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)
    } else {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// Whether the system or file system has no unnamed files.
fn unsupported(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Unsupported
        || matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
        )
}

/// Gives the unnamed `file` the name `name`.
fn link(file: &File, name: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let to = std::ffi::CString::new(name.as_os_str().as_bytes())?;
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let status = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn builder() -> tempfile::Builder<'static, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(PREFIX).suffix(SUFFIX).rand_bytes(RANDOM);
    builder
}

/// The stand-in where there are no unnamed files: a named temporary file, locked while it is
/// written (and removed on any error).
fn named_in(
    dir: &Path,
    old: Option<&Metadata>,
    contents: &[u8],
) -> io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    let mut builder = builder();
    builder.permissions(std::fs::Permissions::from_mode(0o666));
    for _ in 0..8 {
        let mut temporary = builder.tempfile_in(dir)?;
        // Another opcount cleaning up may have taken it for stale between its creation and
        // this lock: then it is gone (no links left), and a new one is made.
        if lock(temporary.as_file()).is_err() || temporary.as_file().metadata()?.nlink() == 0 {
            continue;
        }
        fill(temporary.as_file_mut(), old, contents)?;
        return Ok(temporary);
    }
    Err(io::Error::other("cannot create a temporary file"))
}

/// Takes the lock that marks a temporary file as in use; it goes with the process.
fn lock(file: &File) -> io::Result<()> {
    // SAFETY: flock on a descriptor the caller owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes the temporary files of runs that were killed before renaming them: files of
/// `dir` named like ours that no running opcount holds locked. Errors are ignored: this is
/// housekeeping.
fn remove_stale_temporaries(dir: &Path, target: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = name.len() == PREFIX.len() + RANDOM + SUFFIX.len()
            && name.starts_with(PREFIX)
            && name.ends_with(SUFFIX)
            && Some(name.as_ref()) != target.file_name();
        if !ours {
            continue;
        }
        let path = entry.path();
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        else {
            continue;
        };
        let same = |m: &Metadata, n: &Metadata| m.dev() == n.dev() && m.ino() == n.ino();
        let unchanged = file
            .metadata()
            .ok()
            .zip(std::fs::symlink_metadata(&path).ok());
        if unchanged.is_some_and(|(m, n)| m.is_file() && same(&m, &n)) && lock(&file).is_ok() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// A new descriptor for this process's descriptor `fd`: it shares the file position (and
/// append mode) with `fd`, as writing to `fd` itself would.
fn duplicate(fd: RawFd) -> io::Result<File> {
    // SAFETY: dup has no memory-safety preconditions; it fails cleanly on a bad descriptor.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a descriptor just opened for us, owned by nothing else.
    Ok(unsafe { File::from_raw_fd(new) })
}

fn cannot_write(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        action: "cannot write",
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let target = dir.join("out.txt");
        write(&target, b"first").unwrap();
        write(&target, b"second").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"second");
        // A directory in the way: an error, and nothing left behind.
        assert!(write(dir, b"x").is_err());
        let leftovers = std::fs::read_dir(dir).unwrap().count();
        assert_eq!(leftovers, 1);
        // The same checks, before any work is done.
        assert!(check_writable(dir).is_err());
        assert!(check_writable(&dir.join("missing").join("out.txt")).is_err());
        check_writable(&dir.join("new.txt")).unwrap();
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1);
    }

    #[test]
    fn the_named_stand_in_replaces_whole_too() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.txt");
        std::fs::write(&target, "old").unwrap();
        let old = std::fs::metadata(&target).unwrap();
        let temporary = named_in(dir.path(), Some(&old), b"new").unwrap();
        let name = temporary.path().file_name().unwrap().to_str().unwrap();
        assert_eq!(name.len(), PREFIX.len() + RANDOM + SUFFIX.len(), "{name}");
        // In use: another write's clean-up leaves it alone.
        remove_stale_temporaries(dir.path(), &target);
        assert!(temporary.path().exists());
        temporary.persist(&target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn descriptors_by_name() {
        let me = std::process::id();
        assert_eq!(own_descriptor(Path::new("/proc/self/fd/1")), Some(1));
        assert_eq!(own_descriptor(Path::new("/dev/fd/2")), Some(2));
        assert_eq!(
            own_descriptor(Path::new(&format!("/proc/{me}/fd/7"))),
            Some(7)
        );
        assert_eq!(own_descriptor(Path::new("/proc/thread-self/fd/0")), Some(0));
        assert_eq!(own_descriptor(Path::new("/proc/1/fd/1")), None);
        assert_eq!(own_descriptor(Path::new("out/1")), None);
    }
}
