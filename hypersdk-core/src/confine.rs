//! Paths confined to allowed directories, for services whose callers are
//! not trusted with the host's files (the daemon's jobs name disk images
//! through domain XML, and key files).
//!
//! A path is first checked as written (made absolute, `.` and `..` resolved
//! by name): outside every root, it is refused before the file system is
//! asked anything, so the answer says nothing about whether the path exists.
//! Inside a root, it is resolved with every symbolic link followed and
//! checked again, so a link inside a root that points out of it is refused
//! too. The resolved path is what the caller opens.

use std::path::{Component, Path, PathBuf};

/// Allowed directories, as configured and as resolved.
#[derive(Debug, Clone)]
pub struct PathRoots {
    /// (as configured, absolute and normalised; resolved if it exists)
    roots: Vec<(PathBuf, Option<PathBuf>)>,
    /// The setting that lists them, e.g. `disk_roots`.
    setting: &'static str,
    /// What they are for, e.g. "this provider may read disks from".
    purpose: &'static str,
}

/// `path` made absolute with `.` and `..` resolved by name, without asking
/// the file system.
pub fn lexical(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

impl PathRoots {
    /// `roots`, listed by the setting `setting`, allowed for `purpose`
    /// (both name the rule in refusals).
    pub fn new(roots: &[PathBuf], setting: &'static str, purpose: &'static str) -> Self {
        PathRoots {
            roots: roots
                .iter()
                .map(|r| {
                    let l = lexical(r);
                    let resolved = std::fs::canonicalize(&l).ok();
                    (l, resolved)
                })
                .collect(),
            setting,
            purpose,
        }
    }

    /// The refusal of `what` (e.g. "its image") at `shown`, naming the rule.
    fn rule(&self, what: &str, shown: &Path) -> String {
        let roots: Vec<String> = self
            .roots
            .iter()
            .map(|(l, _)| l.display().to_string())
            .collect();
        format!(
            "{what} {} is not under a directory {} ({}: {})",
            hypersdk_formats::error::display_name(&shown.display().to_string()),
            self.purpose,
            self.setting,
            if roots.is_empty() {
                "none configured".to_string()
            } else {
                roots.join(", ")
            }
        )
    }

    /// The resolved path of `path` (`what` it is, for messages) if it lies
    /// under a root, as written and once resolved; otherwise a message
    /// naming the rule.
    pub fn check(&self, what: &str, path: &Path) -> Result<PathBuf, String> {
        let l = lexical(path);
        if !self.roots.iter().any(|(root, _)| l.starts_with(root)) {
            return Err(self.rule(what, path));
        }
        let real = std::fs::canonicalize(&l).map_err(|e| {
            format!(
                "cannot open {what} {}: {e}",
                hypersdk_formats::error::display_name(&path.display().to_string())
            )
        })?;
        if !self
            .roots
            .iter()
            .any(|(_, r)| r.as_ref().is_some_and(|r| real.starts_with(r)))
        {
            return Err(self.rule(what, path));
        }
        Ok(real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(dir: &Path) -> PathRoots {
        PathRoots::new(
            &[dir.to_path_buf()],
            "disk_roots",
            "this provider may read disks from",
        )
    }

    #[test]
    fn lexical_resolves_dots() {
        assert_eq!(lexical(Path::new("/a/b/../c/./d")), Path::new("/a/c/d"));
        assert_eq!(lexical(Path::new("/../../etc")), Path::new("/etc"));
    }

    #[test]
    fn outside_refused_without_asking_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let roots = roots(dir.path());
        let a = roots
            .check("its image", Path::new("/etc/shadow"))
            .unwrap_err();
        let b = roots
            .check("its image", Path::new("/etc/no-such-file-here"))
            .unwrap_err();
        assert_eq!(
            a.replace("shadow", "X"),
            b.replace("no-such-file-here", "X")
        );
        let dotted = dir.path().join("../../etc/passwd");
        assert!(roots
            .check("its image", &dotted)
            .unwrap_err()
            .contains("disk_roots"));
        let none = PathRoots::new(&[], "key_dirs", "keys may be read from");
        assert!(none
            .check("key", Path::new("/k"))
            .unwrap_err()
            .contains("key_dirs: none configured"));
    }

    #[test]
    fn links_out_of_a_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ok.raw"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link.raw")).unwrap();
        let roots = roots(dir.path());
        assert!(roots.check("its image", &dir.path().join("ok.raw")).is_ok());
        let e = roots
            .check("its image", &dir.path().join("link.raw"))
            .unwrap_err();
        assert!(e.contains("disk_roots"), "{e}");
    }
}
