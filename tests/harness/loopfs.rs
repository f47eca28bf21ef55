//! A file system of a test's own that the test can freeze (`fsfreeze`): every write to it then
//! blocks, as on an SD card that stopped answering. Needs root (mount, losetup, fsfreeze), as CI
//! runs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// An ext4 file system on a loop device, mounted on `mount`; unmounted when dropped.
pub struct LoopFs {
    _dir: tempfile::TempDir,
    pub mount: PathBuf,
}

impl LoopFs {
    pub fn new(size_mib: u32) -> LoopFs {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "this test mounts a loop device and freezes it: run it as root (CI does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(u64::from(size_mib) << 20).unwrap();
        drop(file);
        sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        sh(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount));
        LoopFs { _dir: dir, mount }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.mount).status();
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

/// While it lives, every write to the file system blocks.
pub struct Frozen<'a>(&'a Path);

impl<'a> Frozen<'a> {
    pub fn new(mount: &'a Path) -> Frozen<'a> {
        sh(Command::new("fsfreeze").arg("-f").arg(mount));
        Frozen(mount)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(self.0).status();
    }
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
