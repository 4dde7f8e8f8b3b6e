//! Where jobs write: directories below the output root, and the partial
//! exports failed jobs leave there.
//!
//! A job's `output` is a relative path below `output_root` (checked at
//! submission: no `..`, no absolute path). Its directories are walked one
//! component at a time without following symbolic links: a missing one is
//! created (mode 0700, or the [`hypersdk_sinks::dir_mode`] of `artifact_mode`),
//! a link or anything but a directory makes the job fail, and the result is
//! checked once more, resolved, to lie below the resolved root. So a link
//! placed under the root by someone who can write there leads nowhere.
//!
//! A failed or cancelled job whose export can continue keeps its partial
//! export (`.NAME.partial` beside where the artifact would appear); the job
//! records where and how large it is. It is removed when the job is
//! deleted, when a retry of the job succeeds (the export takes it up), or
//! once the job has been over for `partial_max_age_hours`.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A partial export a failed or cancelled job left for a retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PartialExport {
    /// Its directory (`.NAME.partial` below the output root).
    pub path: String,
    /// Bytes it holds.
    pub bytes: u64,
}

/// The directory a job writes into: `root` joined with `sub`, each missing
/// directory created with `mode`, no component a link; the message names
/// the component at fault.
pub fn job_dir(root: &Path, sub: Option<&str>, mode: u32) -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mut dir = root.to_path_buf();
    let Some(sub) = sub else {
        return Ok(dir);
    };
    let shown = hypersdk_formats::error::display_name(sub);
    for c in Path::new(sub).components() {
        let name = match c {
            Component::Normal(n) => n,
            Component::CurDir => continue,
            _ => {
                return Err(format!(
                    "output: '{shown}' must be a relative path below the output root"
                ))
            }
        };
        dir.push(name);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "output: '{shown}': {} is a symbolic link; jobs never write through links",
                    hypersdk_formats::error::display_name(&name.to_string_lossy())
                ))
            }
            Ok(_) => {
                return Err(format!(
                    "output: '{shown}': {} is not a directory",
                    hypersdk_formats::error::display_name(&name.to_string_lossy())
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::DirBuilder::new().mode(mode).create(&dir) {
                    Ok(()) => {
                        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                            .map_err(|e| {
                                format!("output: cannot set the mode of '{shown}': {e}")
                            })?;
                    }
                    // Made meanwhile by another job: looked at again below.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("output: cannot create '{shown}': {e}")),
                }
                let m = std::fs::symlink_metadata(&dir)
                    .map_err(|e| format!("output: cannot look at '{shown}': {e}"))?;
                if !m.file_type().is_dir() {
                    return Err(format!("output: '{shown}' changed while it was created"));
                }
            }
            Err(e) => return Err(format!("output: cannot look at '{shown}': {e}")),
        }
    }
    let real_root =
        std::fs::canonicalize(root).map_err(|e| format!("cannot resolve the output root: {e}"))?;
    let real = std::fs::canonicalize(&dir)
        .map_err(|e| format!("output: cannot resolve '{shown}': {e}"))?;
    if !real.starts_with(&real_root) {
        return Err(format!(
            "output: '{shown}' leads out of the output root; jobs never write through links"
        ));
    }
    Ok(real)
}

/// Bytes held by the files of directory `dir` (not following links).
pub fn size_of(dir: &Path) -> u64 {
    fn walk(d: &Path, depth: usize) -> u64 {
        if depth > 8 {
            return 0;
        }
        let Ok(entries) = std::fs::read_dir(d) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path(), depth + 1),
                Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
                _ => 0,
            })
            .sum()
    }
    walk(dir, 0)
}

/// Removes a recorded partial export, after checking that it is one: a
/// real directory named `.NAME.partial` below the output root. Ok(false)
/// if it is gone already.
pub fn remove_partial(root: &Path, partial: &PartialExport) -> Result<bool, String> {
    let path = Path::new(&partial.path);
    let named = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".partial"));
    let real_root =
        std::fs::canonicalize(root).map_err(|e| format!("cannot resolve the output root: {e}"))?;
    let below = path
        .parent()
        .and_then(|p| std::fs::canonicalize(p).ok())
        .is_some_and(|p| p.starts_with(&real_root));
    if !named || !below {
        return Err(format!(
            "{} is not a partial export below the output root; left alone",
            hypersdk_formats::error::display_name(&partial.path)
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => std::fs::remove_dir_all(path)
            .map(|()| true)
            .map_err(|e| format!("cannot remove {}: {e}", partial.path)),
        Ok(_) => Err(format!(
            "{} is not a directory; left alone",
            hypersdk_formats::error::display_name(&partial.path)
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot look at {}: {e}", partial.path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_without_following_links() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let d = job_dir(root.path(), Some("a/b"), 0o700).unwrap();
        assert!(d.ends_with("a/b") && d.is_dir());
        std::os::unix::fs::symlink(outside.path(), root.path().join("evil")).unwrap();
        let e = job_dir(root.path(), Some("evil/x"), 0o700).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(!outside.path().join("x").exists());
        std::fs::write(root.path().join("file"), b"").unwrap();
        assert!(job_dir(root.path(), Some("file/x"), 0o700)
            .unwrap_err()
            .contains("not a directory"));
    }

    #[test]
    fn removes_only_partials_below_the_root() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join(".vm.ova.partial");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("x"), b"abc").unwrap();
        let partial = PartialExport {
            path: p.display().to_string(),
            bytes: size_of(&p),
        };
        assert_eq!(partial.bytes, 3);
        assert!(remove_partial(root.path(), &partial).unwrap());
        assert!(!p.exists());
        assert!(!remove_partial(root.path(), &partial).unwrap());
        let elsewhere = tempfile::tempdir().unwrap();
        let bad = PartialExport {
            path: elsewhere.path().display().to_string(),
            bytes: 0,
        };
        assert!(remove_partial(root.path(), &bad).is_err());
        assert!(elsewhere.path().exists());
    }
}
