//! Process-wide allocator tuning for the training hot paths.
//!
//! A VAE step at Music4All-Onion scale allocates several buffers of hundreds of MB (the
//! `2048 x 57,000` logits and their gradient, the `57,000 x 600` weight gradients) and frees
//! them at the end of the step. glibc serves every allocation above its mmap threshold (at most
//! 32 MB) with a fresh `mmap` and returns it with `munmap` on free, so every step pays the
//! kernel for zero-filled page faults and TLB shootdowns: `perf` showed about 30% of a
//! 2-thread MultiVAE step in `clear_page_erms`, `native_write_msr` and
//! `smp_call_function_many_cond`, work that does not scale with threads. Serving large blocks
//! from the heap and never trimming it lets the next step reuse the same pages (the measurement
//! is in docs/PERFORMANCE.md, "VAEs at Onion scale").
//!
//! Written by hand (a few `mallopt` calls) rather than switching the global allocator, because
//! the problem is one glibc policy and the fix keeps the allocator everything else was
//! measured with. Results are unaffected: only where memory comes from changes.

/// Keep freed memory in the process for reuse instead of returning large blocks to the OS.
/// Call once at start-up, before other threads allocate; a no-op off glibc Linux. The cost is
/// that the resident size stays at its peak until the process exits: the `encore` binary sets
/// it for the training commands only.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes glibc's allocation policy; it is called with valid
    // parameters, and any allocation made before or after stays valid.
    unsafe {
        // No mmap-backed allocations: large blocks come from the heap (threads' arenas fall
        // back to the main one when theirs cannot hold a block).
        libc::mallopt(libc::M_MMAP_MAX, 0);
        // Never give the heap's free top back to the OS.
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        // Grow the heap 64 MB at a time rather than page by page.
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
