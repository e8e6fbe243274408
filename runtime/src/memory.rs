//! The allocator setting every service process starts with.
//!
//! glibc's malloc gives an allocation of at least its mapping threshold (128 KiB) a mapping of
//! its own, returned to the system when it is freed; but the first time such a mapping is freed
//! it raises the threshold to that size (up to 32 MiB). A password check's 19 MiB of argon2
//! memory then comes from a heap arena and, once freed, stays resident there: smaller
//! allocations split the hole, and the next check no longer fits in it. A login server grew from
//! 16 MiB to 590 MiB over 80 sign-ins on two cores that way, and stayed there. With the
//! threshold fixed at [`MMAP_THRESHOLD`], every allocation that large is a mapping of its own
//! again, and the same 80 sign-ins left it at 16 MiB.

/// Allocations of this size or more get a mapping of their own, unmapped when freed.
pub const MMAP_THRESHOLD: usize = 4 << 20;

/// Fix the allocator's mapping threshold at [`MMAP_THRESHOLD`] (glibc; elsewhere nothing to do).
pub fn map_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator, under the allocator's own locks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn rss() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib << 10
    }

    #[test]
    fn a_freed_password_sized_allocation_leaves_the_process() {
        map_large_allocations();
        const SIZE: usize = 19 << 20;
        // Without the fixed threshold the first block is a mapping, and every later one comes
        // from a heap and stays resident once freed.
        for round in 0..4 {
            let mut block = vec![1u8; SIZE];
            block.iter_mut().step_by(4096).for_each(|b| *b = 2);
            std::hint::black_box(&block);
            let held = rss();
            drop(block);
            let freed = rss();
            assert!(
                held.saturating_sub(freed) > SIZE * 3 / 4,
                "round {round}: {} MiB resident with the block, {} MiB after freeing it",
                held >> 20,
                freed >> 20
            );
        }
    }
}
