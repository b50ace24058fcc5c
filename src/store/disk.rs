//! The free space of the disk that holds a SQLite database, for the metrics (an alert
//! on a nearly full disk fires before appends fail). PostgreSQL's disk is the database
//! server's business: nothing is reported for it.

use std::path::Path;

/// The disk's size and the bytes still available to this process, in that order.
pub fn space(file: &Path) -> Option<(u64, u64)> {
    // The directory: the file may be replaced (a restore), the disk stays.
    let directory = file.parent().filter(|dir| !dir.as_os_str().is_empty())?;
    let stats = rustix::fs::statvfs(directory).ok()?;
    let size = stats.f_blocks.saturating_mul(stats.f_frsize);
    let available = stats.f_bavail.saturating_mul(stats.f_frsize);
    Some((size, available))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_directory_has_a_size_and_room() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (size, available) = space(&dir.path().join("reelay.db")).expect("statvfs");
        assert!(size > 0);
        assert!(available <= size);
        assert!(space(Path::new("/no/such/dir/reelay.db")).is_none());
    }
}
