//! Where opcount writes, in hostile surroundings: devices, FIFOs and its own standard output
//! named as files, long names, permissions, symlinks, writes that fail and runs that are
//! killed mid-write. A file opcount replaces is always whole, old or new, and nothing of its
//! own is left beside it.

#[path = "support/cli.rs"]
mod cli;

use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cli::{opcount, opcount_in, root, stderr};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A private device node with the given minor number of the memory devices (3 is null, 7
/// is full), made with mknod; `None` (the test skips) unless run as root.
fn device(dir: &Path, name: &str, minor: u32) -> Option<PathBuf> {
    if !is_root() {
        eprintln!("not root: skipping the device nodes");
        return None;
    }
    let path = dir.join(name);
    let status = Command::new("mknod")
        .arg(&path)
        .args(["c", "1", &minor.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "mknod");
    Some(path)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", stderr(out));
}

#[test]
fn devices_are_written_through_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (Some(null), Some(full)) = (device(dir.path(), "null", 3), device(dir.path(), "full", 7))
    else {
        return;
    };
    let out = opcount(&[
        "count",
        "models/xor.ron",
        "--output",
        null.to_str().unwrap(),
    ]);
    assert_ok(&out, "--output onto a null device");
    let out = opcount(&["count", "models/xor.ron", "--svg", null.to_str().unwrap()]);
    assert_ok(&out, "--svg onto a null device");
    // A device that is always full: the write fails, and says so.
    let out = opcount(&[
        "count",
        "models/xor.ron",
        "--output",
        full.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("full: cannot write: No space left on device"),
        "{}",
        stderr(&out)
    );
    for node in [&null, &full] {
        let kind = std::fs::symlink_metadata(node).unwrap().file_type();
        assert!(kind.is_char_device(), "{} was replaced", node.display());
    }
    assert_eq!(names_in(dir.path()), ["full", "null"]);
}

#[test]
fn a_fifo_is_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // Held open for reading and writing, the FIFO takes opcount's output into its buffer
    // without a reader thread (and without hanging the test if opcount replaced it).
    let mut held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let out = opcount(&[
        "count",
        "models/xor.ron",
        "--output",
        fifo.to_str().unwrap(),
    ]);
    assert_ok(&out, "--output onto a FIFO");
    let mut text = vec![0; 1 << 16];
    let n = std::io::Read::read(&mut held, &mut text).unwrap_or(0);
    let text = String::from_utf8_lossy(&text[..n]);
    assert!(text.starts_with("xor: one training step"), "{text}");
    let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(kind.is_fifo(), "the FIFO was replaced");
}

#[test]
fn standard_output_by_any_name() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("to-stdout");
    std::os::unix::fs::symlink("/dev/stdout", &link).unwrap();
    // The link first: an opcount that replaced it would fail here, in a directory of the
    // test's own, before it could replace the real /dev/stdout.
    let names = [
        link.to_str().unwrap(),
        "/proc/self/fd/1",
        "/dev/fd/1",
        "-",
        "/dev/stdout",
    ];
    for name in names {
        let out = opcount(&["count", "models/xor.ron", "--output", name]);
        assert_ok(&out, name);
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.starts_with("xor: one training step"), "{name}: {text}");
    }
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    // Standard output redirected to a file: the file is written, not replaced, so the shell's
    // descriptor still points at it.
    let file = dir.path().join("redirected.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_opcount"))
        .args(["count", "models/xor.ron", "--output", "/dev/stdout"])
        .current_dir(root())
        .stdout(std::fs::File::create(&file).unwrap())
        .output()
        .unwrap();
    assert_ok(&out, "/dev/stdout redirected to a file");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("xor: one training step"), "{text}");
    // `--save -` writes the model on standard output.
    let out = opcount(&[
        "train",
        "models/xor.ron",
        "--epochs",
        "1",
        "--save",
        "-",
        "-q",
    ]);
    assert_ok(&out, "--save -");
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("(\n    name: \"xor\"")
    );
}

#[test]
fn a_file_name_of_255_bytes_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x".repeat(251) + ".csv");
    let out = opcount(&[
        "count",
        "models/xor.ron",
        "--format",
        "csv",
        "--output",
        path.to_str().unwrap(),
    ]);
    assert_ok(&out, "a 255-byte name");
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("index,")
    );
    assert_eq!(names_in(dir.path()).len(), 1);
}

#[test]
fn a_replaced_file_keeps_its_permissions() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o600, 0o640, 0o604] {
        let path = dir.path().join(format!("report-{mode:o}.txt"));
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = opcount(&[
            "count",
            "models/xor.ron",
            "--output",
            path.to_str().unwrap(),
        ]);
        assert_ok(&out, "--output over a file");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, mode, "{}", path.display());
        assert_ne!(std::fs::read_to_string(&path).unwrap(), "old");
    }
}

#[test]
fn save_onto_a_symlink_replaces_the_file_it_points_to() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.ron");
    std::fs::write(&real, "old").unwrap();
    let link = dir.path().join("link.ron");
    std::os::unix::fs::symlink("real.ron", &link).unwrap();
    let out = opcount(&[
        "train",
        "models/xor.ron",
        "--epochs",
        "1",
        "-q",
        "--save",
        link.to_str().unwrap(),
    ]);
    assert_ok(&out, "--save onto a symlink");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(std::fs::read_to_string(&real).unwrap().contains("weights:"));
    assert_eq!(names_in(dir.path()), ["link.ron", "real.ron"]);
}

/// Runs `opcount args` in the repository with a file-size limit of one 512-byte block, so
/// that any longer write fails (EFBIG, as ENOSPC or EIO would).
fn opcount_with_tiny_file_limit(args: &[&str]) -> Output {
    let mut command = String::from("trap '' XFSZ; ulimit -f 1; exec \"$0\"");
    for i in 1..=args.len() {
        command += &format!(" \"${i}\"");
    }
    Command::new("sh")
        .arg("-c")
        .arg(command)
        .arg(env!("CARGO_BIN_EXE_opcount"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

#[test]
fn a_write_that_fails_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.txt");
    let saved = dir.path().join("saved.ron");
    for path in [&report, &saved] {
        std::fs::write(path, "old").unwrap();
    }
    let runs: [&[&str]; 2] = [
        &[
            "count",
            "models/lenet5.ron",
            "-q",
            "--output",
            report.to_str().unwrap(),
        ],
        &[
            "train",
            "models/iris.ron",
            "--epochs",
            "1",
            "-q",
            "--save",
            saved.to_str().unwrap(),
        ],
    ];
    for args in runs {
        let out = opcount_with_tiny_file_limit(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("cannot write: File too large"),
            "{}",
            stderr(&out)
        );
        assert_eq!(stderr(&out).lines().count(), 1);
    }
    assert_eq!(std::fs::read_to_string(&report).unwrap(), "old");
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), "old");
    assert_eq!(names_in(dir.path()), ["report.txt", "saved.ron"]);
}

/// A model of about 1.5 million parameters, whose save takes long enough to be killed in.
fn big_model(dir: &Path) -> PathBuf {
    let inputs = vec!["0.5"; 1500].join(", ");
    let text = format!(
        "(name: \"big\", input: [1500], loss: Mse, layers: [Dense(units: 1000), Dense(units: 1)],
          training: (data: Inline(inputs: [[{inputs}]], targets: Values([[1]])),
                     epochs: 1, lr: 0.001, batch: 1))"
    );
    let path = dir.join("big.ron");
    std::fs::write(&path, text).unwrap();
    path
}

/// A child process that is killed when dropped, even if the test fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn killed_saves_leave_the_old_or_the_new_file_and_nothing_else() {
    let models = tempfile::tempdir().unwrap();
    let model = big_model(models.path());
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved.ron");
    std::fs::write(&saved, "old").unwrap();
    let save = |saved: &Path| {
        KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_opcount"))
                .args(["train", model.to_str().unwrap(), "-q", "--save"])
                .arg(saved)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    // How long a whole run takes here, to spread the kills over it.
    let started = std::time::Instant::now();
    let mut whole = save(&saved);
    assert!(whole.0.wait().unwrap().success());
    let run = started.elapsed();
    let new = std::fs::read(&saved).unwrap();
    std::fs::write(&saved, "old").unwrap();
    let mut writes_killed = 0;
    for k in 1..=20u32 {
        let mut child = save(&saved);
        // Kill mid-write when the write can be seen (an unnamed file open in the directory,
        // where the system has them); else, for the first ten kills, at a point spread over
        // the run. The last ten wait for the write however long the run takes (on a loaded
        // machine a run can take many times the one timed above), up to a generous bound.
        let deadline = if k <= 10 {
            std::time::Instant::now() + run * k / 10
        } else {
            std::time::Instant::now() + run * 20 + Duration::from_secs(20)
        };
        while std::time::Instant::now() < deadline {
            if writing_in(child.0.id(), dir.path()) {
                writes_killed += 1;
                break;
            }
            if child.0.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        let now = std::fs::read(&saved).unwrap();
        assert!(now == b"old" || now == new, "kill {k}: a partial file");
        assert_eq!(names_in(dir.path()), ["saved.ron"], "kill {k}: left behind");
    }
    eprintln!("{writes_killed} of 20 kills landed in the write");
    assert!(writes_killed > 0, "no kill landed in the write");
}

/// Whether process `pid` has an unlinked file of `dir` open: an O_TMPFILE being written.
fn writing_in(pid: u32, dir: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let dir = dir.canonicalize().unwrap();
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .any(|target| target.starts_with(&dir) && target.to_string_lossy().ends_with(" (deleted)"))
}

#[test]
fn temporary_files_of_killed_runs_are_removed_by_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    // What a run killed between naming its temporary file and renaming it leaves: removed.
    let stale = dir.path().join(".opcount-a1b2c3d4.tmp");
    std::fs::write(&stale, "partial").unwrap();
    // A temporary file another running opcount holds (locked): kept.
    let busy = dir.path().join(".opcount-e5f6g7h8.tmp");
    let held = std::fs::File::create(&busy).unwrap();
    // SAFETY: flock on a descriptor this test owns and keeps open.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) },
        0
    );
    let out = opcount_in(
        root(),
        &[
            "count",
            "models/xor.ron",
            "--output",
            dir.path().join("out.txt").to_str().unwrap(),
        ],
    );
    assert_ok(&out, "--output");
    assert_eq!(names_in(dir.path()), [".opcount-e5f6g7h8.tmp", "out.txt"]);
    drop(held);
}
