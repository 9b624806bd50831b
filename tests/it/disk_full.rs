//! A full disk, provoked for real, under the data directory and under the
//! spill directory (`--tmp-dir`): the build fails with a message naming the
//! file, what it was doing and the cause; nothing is published, nothing is
//! left behind, the server keeps its generation, and a build with room
//! succeeds.
//!
//! Two ways to fill a disk. Every test uses a file size limit
//! (`RLIMIT_FSIZE`, `ulimit -f`, set in the child before it runs promo):
//! it needs no privileges and fails at the same byte every time, with
//! "File too large". One test also mounts small tmpfs filesystems, for the
//! "No space left on device" of a really full one; where mounting is refused
//! (no privileges, a container), it says so and runs with the size limit.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;

const REAL_ID: &str = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118";
/// Rows of the big feed: a 1.9 MB generation, or three sorted runs at
/// `--memory-limit 1MiB`: more than a small filesystem holds.
const ROWS: u64 = 60_000;
/// The file size limit: far below the generation, and below one sorted run
/// at `--memory-limit 1MiB` (20,480 records, 655 KB).
const SIZE_LIMIT: libc::rlim_t = 256 << 10;
/// The size of a small filesystem, and of one with room.
const SMALL: &str = "1m";
const ROOMY: &str = "64m";

/// How the disk is full.
enum Full {
    /// Files the build writes may not grow past `SIZE_LIMIT` bytes.
    SizeLimit,
    /// The directory is a small tmpfs.
    Tmpfs(Tmpfs),
}

impl Full {
    /// The error's cause as the build reports it.
    fn cause(&self) -> &'static str {
        match self {
            Full::SizeLimit => "File too large (os error 27)",
            Full::Tmpfs(_) => "No space left on device (os error 28)",
        }
    }

    /// Runs `promo build` on a disk that is full this way.
    fn build(&self, dir: &Path, csv: &Path, extra: &[&str]) -> Output {
        let mut cmd = promo();
        cmd.arg("build")
            .arg(csv)
            .arg("--data-dir")
            .arg(dir)
            .args(extra);
        if let Full::SizeLimit = self {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec the closure calls setrlimit only,
            // which is async-signal-safe, on a struct on its own stack.
            unsafe {
                cmd.pre_exec(|| {
                    let limit = libc::rlimit {
                        rlim_cur: SIZE_LIMIT,
                        rlim_max: SIZE_LIMIT,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        cmd.output().expect("running promo build")
    }

    /// Makes room, as an operator would: lifts the limit, or grows the
    /// filesystem.
    fn make_room(&self) {
        if let Full::Tmpfs(fs) = self {
            fs.resize(ROOMY).expect("growing the tmpfs");
        }
    }
}

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` on `dir`, or says why it cannot.
    fn mount(dir: &Path, size: &str) -> std::io::Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        mount(dir, size, 0)?;
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    fn resize(&self, size: &str) -> std::io::Result<()> {
        mount(&self.dir, size, libc::MS_REMOUNT)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = c_path(&self.dir);
        // SAFETY: umount2 only reads the NUL-terminated path.
        // Detached: the unmount cannot fail on a file still open.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

fn c_path(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn mount(dir: &Path, size: &str, flags: libc::c_ulong) -> std::io::Result<()> {
    let target = c_path(dir);
    let options = std::ffi::CString::new(format!("size={size}")).unwrap();
    // SAFETY: mount only reads the NUL-terminated strings, which outlive the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            flags,
            options.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The file size limit for files in `dir` (made here, as a mount point would be).
fn size_limit(dir: &Path) -> Full {
    std::fs::create_dir_all(dir).unwrap();
    Full::SizeLimit
}

/// Mounts a small tmpfs on `dir`, or falls back to the file size limit,
/// saying so, when mounting is refused.
fn small_tmpfs_or_size_limit(dir: &Path) -> Full {
    match Tmpfs::mount(dir, SMALL) {
        Ok(fs) => Full::Tmpfs(fs),
        Err(e) => {
            eprintln!(
                "cannot mount a tmpfs on {} ({e}): using the file size limit instead",
                dir.display()
            );
            size_limit(dir)
        }
    }
}

fn big_feed(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let csv = dir.join("big.csv");
    let rows: Vec<_> = (0..ROWS)
        .map(|i| {
            (
                id(5, i),
                format!("{i}.25"),
                "2021-06-01 12:00:00 +0200 CEST".to_string(),
            )
        })
        .collect();
    write_csv(&csv, &rows);
    csv
}

/// Every file in `dir`, hidden ones included.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The build failed with exit code 2 (not by a signal) and said each of `said`.
fn assert_failed_with(out: &Output, said: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        (out.status.code(), out.status.signal()),
        (Some(2), None),
        "the build must fail with a message, not die: {stderr}"
    );
    for s in said {
        assert!(stderr.contains(s), "expected {s:?} in:\n{stderr}");
    }
    eprintln!("the build said: {}", stderr.trim_end());
}

/// Generation 1 is still live on the server, with its answers.
fn assert_still_serving_generation_1(server: &Server) {
    let r = server.get(&format!("/promotions/{REAL_ID}"));
    assert_eq!((r.status, r.header("x-promo-generation")), (200, Some("1")));
    assert!(r.text().contains("\"price\":60.683466"), "{}", r.text());
    assert_eq!(server.get("/readyz").status, 200);
}

/// After room is made, the same build publishes generation 2 and the server
/// swaps to it.
fn assert_builds_with_room(server: &Server, data: &Path, csv: &Path, extra: &[&str]) {
    let summary = build_ok(data, csv, extra);
    assert_eq!(summary_field(&summary, "generation"), "2");
    assert_eq!(summary_field(&summary, "records"), ROWS.to_string());
    assert_eq!(sequences(data), [1, 2]);
    let r = server.wait_for(
        &format!("/promotions/{}", id(5, 7)),
        Duration::from_secs(10),
        |r| r.header("x-promo-generation") == Some("2"),
    );
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"price\":7.25"), "{}", r.text());
}

/// The generation being written does not fit in the data directory.
fn data_dir_full(tmp: &Path, full: impl FnOnce(&Path) -> Full) {
    let csv = big_feed(tmp);
    let data = tmp.join("data");
    let full = full(&data);
    build_ok(&data, &fixture("promotions.csv"), &[]);
    let server = Server::start(&data);

    let out = full.build(&data, &csv, &[]);
    let temp = format!("{}/.tmp-", data.display());
    let what = ".promo: writing the new generation: ";
    assert_failed_with(&out, &[&temp, what, full.cause()]);
    assert_eq!(sequences(&data), [1], "nothing is published");
    assert_eq!(temp_files(&data), Vec::<String>::new());
    assert_eq!(files(&data), [".build.lock", "gen-0000000001.promo"]);
    assert_still_serving_generation_1(&server);

    full.make_room();
    assert_builds_with_room(&server, &data, &csv, &[]);
}

/// Sorted runs do not fit in the spill directory (`--tmp-dir`, with a
/// `--memory-limit` small enough to spill).
fn spill_dir_full(tmp: &Path, full: impl FnOnce(&Path) -> Full) {
    let csv = big_feed(tmp);
    let data = tmp.join("data");
    let spill = tmp.join("spill");
    let full = full(&spill);
    build_ok(&data, &fixture("promotions.csv"), &[]);
    let server = Server::start(&data);

    let spill_arg = spill.to_str().unwrap();
    let args = ["--tmp-dir", spill_arg, "--memory-limit", "1MiB"];
    let out = full.build(&data, &csv, &args);
    let message = format!("{}: writing a sorted run: ", spill.display());
    assert_failed_with(&out, &[&message, full.cause()]);
    assert_eq!(sequences(&data), [1], "nothing is published");
    assert_eq!(temp_files(&data), Vec::<String>::new());
    assert_eq!(files(&data), [".build.lock", "gen-0000000001.promo"]);
    assert_eq!(files(&spill), Vec::<String>::new(), "runs are left behind");
    assert_still_serving_generation_1(&server);

    full.make_room();
    assert_builds_with_room(&server, &data, &csv, &args);
    assert_eq!(files(&spill), Vec::<String>::new());
}

#[test]
fn a_full_data_dir_fails_the_build_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    data_dir_full(tmp.path(), size_limit);
}

#[test]
fn a_full_spill_dir_fails_the_build_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    spill_dir_full(tmp.path(), size_limit);
}

/// The same on small, really full filesystems, where mounting is allowed.
#[test]
fn a_full_filesystem_fails_the_build_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    data_dir_full(&tmp.path().join("a"), small_tmpfs_or_size_limit);
    spill_dir_full(&tmp.path().join("b"), small_tmpfs_or_size_limit);
}

/// A fetch checks free disk before it starts: a replica whose data
/// directory cannot hold the generation downloads nothing and says how much
/// it needs; with room, the same fetch succeeds. Here the directory is a
/// small tmpfs (this one needs it: free space is what is checked).
#[test]
fn a_fetch_that_does_not_fit_downloads_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let url = format!("file://{}", store.display());
    let csv = big_feed(tmp.path());
    build_ok(&tmp.path().join("builder"), &csv, &["--publish", &url]);

    let replica = tmp.path().join("replica");
    let fs = Tmpfs::mount(&replica, SMALL)
        .unwrap_or_else(|e| panic!("this test needs a small tmpfs (run as root, as CI does): {e}"));
    let fetch = || {
        promo()
            .args(["fetch", &url, "--data-dir"])
            .arg(&replica)
            .output()
            .unwrap()
    };
    let out = fetch();
    assert_failed_with(
        &out,
        &[
            "bytes are needed for generation 1 but only",
            "nothing was downloaded",
        ],
    );
    assert!(
        files(&replica).iter().all(|f| f == ".build.lock"),
        "{:?}",
        files(&replica)
    );

    // Room for the generation and the margin a fetch keeps free (64 MiB).
    fs.resize("96m").unwrap();
    let out = fetch();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sequences(&replica), [1]);
}
