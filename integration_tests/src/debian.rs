//! Debian's stock kernel and busybox for the Linux boot test: found by name with apt,
//! downloaded once into a cache directory and the one file needed taken from each .deb
//! without installing it; and the initramfs the test boots, a newc cpio archive written here.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The packages' unpacked trees, under `cache`.
#[derive(Debug, Clone)]
pub struct Packages {
    /// `boot/vmlinuz-*` of the kernel package.
    pub kernel: PathBuf,
    /// Its release (`uname -r`).
    pub release: String,
    /// `bin/busybox` of busybox-static.
    pub busybox: PathBuf,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The current stock amd64 kernel package (what `linux-image-amd64` depends on).
fn kernel_package() -> Result<String, String> {
    let deps = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_string)
        .ok_or_else(|| format!("no kernel package in: {deps}"))
}

/// Downloads (once) and unpacks the kernel and busybox-static packages into `cache`.
pub fn fetch(cache: &Path) -> Result<Packages, String> {
    std::fs::create_dir_all(cache).map_err(|e| e.to_string())?;
    let kernel_pkg = kernel_package()?;
    let release = kernel_pkg
        .strip_prefix("linux-image-")
        .unwrap_or(&kernel_pkg)
        .to_string();
    let tree = cache.join(&kernel_pkg);
    let kernel = tree.join("boot").join(format!("vmlinuz-{release}"));
    let bb_tree = cache.join("busybox-static");
    let busybox = bb_tree.join("bin/busybox");
    for (pkg, unpacked, out, member) in [
        (kernel_pkg.as_str(), &kernel, &tree, "./boot/"),
        ("busybox-static", &busybox, &bb_tree, "./bin/busybox"),
    ] {
        if unpacked.exists() {
            continue;
        }
        run(Command::new("apt-get")
            .args(["download", pkg])
            .current_dir(cache))?;
        let deb = std::fs::read_dir(cache)
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
            })
            .ok_or_else(|| format!("apt-get download {pkg}: no .deb"))?;
        // Only the file the test needs (a kernel package's modules are hundreds of MB).
        std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
        let script = format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -xf - -C '{}' '{member}'",
            deb.display(),
            out.display()
        );
        run(Command::new("sh").args(["-c", &script]))?;
        let _ = std::fs::remove_file(&deb);
        if !unpacked.exists() {
            return Err(format!(
                "{} missing after unpacking {pkg}",
                unpacked.display()
            ));
        }
    }
    Ok(Packages {
        kernel,
        release,
        busybox,
    })
}

/// One file of an archive.
pub struct Entry<'a> {
    /// Its path (no leading slash).
    pub name: &'a str,
    /// Mode bits with the file type (0o100755, 0o040755).
    pub mode: u32,
    /// Contents.
    pub data: &'a [u8],
}

/// A newc ("070701") cpio archive of `entries`, as the kernel unpacks an initramfs.
///
/// ```
/// use integration_tests::debian::{newc_archive, Entry};
/// let a = newc_archive(&[Entry { name: "init", mode: 0o100755, data: b"x" }]);
/// assert!(a.starts_with(b"070701"));
/// assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
/// ```
pub fn newc_archive(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    let pad = |out: &mut Vec<u8>| {
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    };
    let trailer = Entry {
        name: "TRAILER!!!",
        mode: 0,
        data: &[],
    };
    for (ino, e) in entries.iter().chain(std::iter::once(&trailer)).enumerate() {
        let nlink = if e.mode & 0o040000 != 0 { 2 } else { 1 };
        let fields = [
            ino as u32 + 1,
            e.mode,
            0,
            0,
            nlink,
            0,
            e.data.len() as u32,
            0,
            0,
            0,
            0,
            e.name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(e.name.as_bytes());
        out.push(0);
        pad(&mut out);
        out.extend_from_slice(e.data);
        pad(&mut out);
    }
    out
}
