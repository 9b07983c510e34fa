//! `pvmmu xtf DIR`: runs the 64-bit PV tests of a built XTF tree (Xen's own test
//! framework; see README for getting and building it) the way XTF's `xtf-runner` does:
//! every `test-pv64-*.cfg` (one per test and variant) gives the kernel, memory, vCPUs
//! and command line; each test boots in its own `pvmmu run` process, and its verdict is
//! XTF's, read from the last console line (`Test result: SUCCESS|SKIP|ERROR|FAILURE`),
//! or CRASH when there is none.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One test variant, from its `.cfg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XtfTest {
    /// `test-pv64-NAME[~VARIANT]`.
    pub name: String,
    /// The kernel image.
    pub kernel: PathBuf,
    /// Guest memory, MiB.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Command line (`cmdline=` of a variant).
    pub cmdline: String,
}

/// XTF's verdicts, worst last (as `xtf-runner` orders them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// The test passed.
    Success,
    /// A feature the test needs is absent.
    Skip,
    /// The test could not do its job.
    Error,
    /// The test found the bug it looks for (for XSA tests: vulnerable).
    Failure,
    /// No verdict: the guest died or hung.
    Crash,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Success => "SUCCESS",
            Verdict::Skip => "SKIP",
            Verdict::Error => "ERROR",
            Verdict::Failure => "FAILURE",
            Verdict::Crash => "CRASH",
        })
    }
}

/// Errors finding the tests.
#[derive(Debug, thiserror::Error)]
pub enum XtfError {
    /// The directory cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No pv64 test configuration in it.
    #[error("no test-pv64-*.cfg under {0} (is it a built XTF tree?)")]
    NoTests(PathBuf),
}

/// Parses an XTF test configuration (`key = value` lines, `#` comments, values maybe
/// quoted). The kernel defaults to the file next to the `.cfg` named like the test
/// without its variant.
///
/// ```
/// let cfg = "name=\"test-pv64-pv-iopl~hypercall\"\nvcpus=1\nmemory=128\n\
///            kernel=\"/x/tests/pv-iopl/test-pv64-pv-iopl\"\ncmdline=\"hypercall\"\n";
/// let t = vmm::xtf::parse_cfg(cfg, std::path::Path::new("/x/tests/pv-iopl")).unwrap();
/// assert_eq!(t.name, "test-pv64-pv-iopl~hypercall");
/// assert_eq!((t.memory, t.vcpus, t.cmdline.as_str()), (128, 1, "hypercall"));
/// ```
pub fn parse_cfg(text: &str, dir: &Path) -> Option<XtfTest> {
    let mut t = XtfTest {
        name: String::new(),
        kernel: PathBuf::new(),
        memory: 128,
        vcpus: 1,
        cmdline: String::new(),
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match k.trim() {
            "name" => t.name = v.to_string(),
            "kernel" => t.kernel = PathBuf::from(v),
            "memory" => t.memory = v.parse().ok()?,
            "vcpus" => t.vcpus = v.parse().ok()?,
            "cmdline" | "extra" => t.cmdline = v.to_string(),
            _ => {}
        }
    }
    if t.name.is_empty() {
        return None;
    }
    let base = t.name.split('~').next().unwrap_or(&t.name).to_string();
    if !t.kernel.is_file() {
        t.kernel = dir.join(base);
    }
    Some(t)
}

/// Every pv64 test under `dir` (an XTF tree, or its `tests` directory), sorted by name.
pub fn find_tests(dir: &Path) -> Result<Vec<XtfTest>, XtfError> {
    let tests_dir = if dir.join("tests").is_dir() {
        dir.join("tests")
    } else {
        dir.to_path_buf()
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| XtfError::Io { path, source }
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&tests_dir).map_err(io(&tests_dir))? {
        let sub = entry.map_err(io(&tests_dir))?.path();
        if !sub.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&sub).map_err(io(&sub))? {
            let p = f.map_err(io(&sub))?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("test-pv64-") && name.ends_with(".cfg") {
                let text = std::fs::read_to_string(&p).map_err(io(&p))?;
                if let Some(t) = parse_cfg(&text, &sub) {
                    out.push(t);
                }
            }
        }
    }
    if out.is_empty() {
        return Err(XtfError::NoTests(dir.to_path_buf()));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The outcome of one test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// XTF's verdict.
    pub verdict: Verdict,
    /// For a crash: how it died (exit code and the VMM's last message), else the verdict
    /// line's remainder (e.g. "with warnings").
    pub detail: String,
}

/// The verdict in a test's console output, and what follows it on its line.
pub fn verdict_of(stdout: &str) -> Option<(Verdict, String)> {
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty())?;
    let rest = last.split("Test result: ").nth(1)?;
    let (word, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    let v = match word.trim() {
        "SUCCESS" => Verdict::Success,
        "SKIP" => Verdict::Skip,
        "ERROR" => Verdict::Error,
        "FAILURE" => Verdict::Failure,
        _ => return None,
    };
    Some((v, tail.trim().to_string()))
}

/// Runs `t` with the `pvmmu` binary `exe`, killing it after `timeout`.
pub fn run_one(exe: &Path, t: &XtfTest, timeout: Duration) -> Outcome {
    let child = Command::new(exe)
        .arg("run")
        .arg(&t.kernel)
        .args(["--memory", &t.memory.to_string(), "--cmdline", &t.cmdline])
        .args(["--vcpus", &t.vcpus.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                verdict: Verdict::Crash,
                detail: format!("cannot start pvmmu: {e}"),
            };
        }
    };
    let started = Instant::now();
    let mut timed_out = false;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                timed_out = true;
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => {
            return Outcome {
                verdict: Verdict::Crash,
                detail: format!("lost the test process: {e}"),
            };
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some((verdict, detail)) = verdict_of(&stdout) {
        return Outcome { verdict, detail };
    }
    let why = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("pvmmu"))
        .unwrap_or("no message")
        .to_string();
    Outcome {
        verdict: Verdict::Crash,
        detail: if timed_out {
            format!("timed out after {timeout:?}")
        } else {
            format!("exit code {:?}: {why}", out.status.code())
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_come_from_the_last_line() {
        assert_eq!(
            verdict_of("a\nTest result: SUCCESS\n"),
            Some((Verdict::Success, String::new()))
        );
        assert_eq!(
            verdict_of("Test result: SUCCESS with warnings\n\n"),
            Some((Verdict::Success, "with warnings".into()))
        );
        assert_eq!(verdict_of("Test result: FAILURE\nmore\n"), None);
        assert_eq!(verdict_of("Test result: MAYBE"), None);
        assert_eq!(verdict_of(""), None);
        assert!(Verdict::Failure > Verdict::Error && Verdict::Crash > Verdict::Failure);
    }

    #[test]
    fn configs_without_a_name_are_skipped_and_kernels_default_next_to_them() {
        assert_eq!(parse_cfg("vcpus=1\n", Path::new("/d")), None);
        let t = parse_cfg("name=\"test-pv64-x~v\" # c\nmemory=64", Path::new("/d")).unwrap();
        assert_eq!(t.kernel, PathBuf::from("/d/test-pv64-x"));
        assert_eq!(t.memory, 64);
        assert_eq!(parse_cfg("name=a\nmemory=lots", Path::new("/d")), None);
    }
}
