//! The memory allocator, chosen per role: jemalloc for `tidewater processor`, the C library's
//! malloc for everything else (the collector, `up`, `check-config`).
//!
//! A processor draining a backlog allocates and frees tens of small blocks per span, freed on
//! other threads than the ones that allocated them. With glibc's malloc that was a third of its
//! CPU, and freed memory stayed in a dozen per-thread arenas; jemalloc drains the same backlog
//! with 27–36% less CPU (benches/README.md, "Memory allocator"). The collector is a few
//! percent faster on jemalloc too, but its memory bound is not: under a burst of 256 uploads
//! against a 64 MiB `collector.memory_limit` it peaked at 114–121 MiB of RSS against 102 MiB
//! with glibc, past the 48 MiB over the limit its tests hold it to, and no jemalloc setting
//! that kept its speed brought that down. So each role keeps the allocator that serves it.
//!
//! A global allocator is fixed before `main`, so the choice is made at the process's first
//! allocation, from its command line as the kernel holds it (read without allocating), and
//! never changes: every block is freed by the allocator that allocated it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

use tikv_jemallocator::Jemalloc;

pub struct ByRole;

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const JEMALLOC: u8 = 2;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// jemalloc's settings, read when it starts (`_RJEM_MALLOC_CONF` in the environment still
/// overrides them). Two arenas rather than four per core: every arena keeps the pages its
/// threads freed for a while, and on two cores more arenas only meant more memory kept (a
/// drain's peak RSS 311 MiB against 206 MiB, for the same CPU). No background thread:
/// jemalloc sets itself up when the binary loads, whatever the role, and the collector is
/// better without an idle thread of an allocator it does not use.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &u8 = &b"narenas:2\0"[0];

#[inline(always)]
fn jemalloc() -> bool {
    match CHOICE.load(Ordering::Relaxed) {
        UNDECIDED => choose(),
        choice => choice == JEMALLOC,
    }
}

#[cold]
#[inline(never)]
fn choose() -> bool {
    let chosen = if is_processor(&command_line()) {
        JEMALLOC
    } else {
        SYSTEM
    };
    // Before `main` there is one thread; should two ever race, both take the first.
    match CHOICE.compare_exchange(UNDECIDED, chosen, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => chosen == JEMALLOC,
        Err(first) => first == JEMALLOC,
    }
}

unsafe impl GlobalAlloc for ByRole {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if jemalloc() {
            unsafe { Jemalloc.alloc(layout) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if jemalloc() {
            unsafe { Jemalloc.alloc_zeroed(layout) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if jemalloc() {
            unsafe { Jemalloc.dealloc(ptr, layout) }
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if jemalloc() {
            unsafe { Jemalloc.realloc(ptr, layout, new_size) }
        } else {
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

/// `/proc/self/cmdline` (arguments separated by NULs), up to what fits in the buffer: the
/// subcommand comes early. Empty if it cannot be read.
fn command_line() -> CommandLine {
    let mut line = CommandLine {
        bytes: [0; 4096],
        len: 0,
    };
    // SAFETY: a NUL-terminated path; the fd is closed; reads stay within the buffer.
    unsafe {
        let fd = libc::open(
            c"/proc/self/cmdline".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return line;
        }
        while line.len < line.bytes.len() {
            let rest = &mut line.bytes[line.len..];
            let n = libc::read(fd, rest.as_mut_ptr().cast(), rest.len());
            if n <= 0 {
                break;
            }
            line.len += n as usize;
        }
        libc::close(fd);
    }
    line
}

struct CommandLine {
    bytes: [u8; 4096],
    len: usize,
}

/// Whether the subcommand is `processor`: the first argument after the program's name that is
/// neither an option nor the value of `--config`/`-c` (the only option taking one).
fn is_processor(line: &CommandLine) -> bool {
    let mut args = line.bytes[..line.len].split(|b| *b == 0).skip(1);
    while let Some(arg) = args.next() {
        match arg {
            b"--config" | b"-c" => {
                args.next();
            }
            _ if arg.starts_with(b"-") => {}
            subcommand => return subcommand == b"processor",
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(args: &[&str]) -> CommandLine {
        let mut line = CommandLine {
            bytes: [0; 4096],
            len: 0,
        };
        for arg in args {
            line.bytes[line.len..line.len + arg.len()].copy_from_slice(arg.as_bytes());
            line.len += arg.len() + 1;
        }
        line
    }

    #[test]
    fn the_processor_subcommand_is_found_past_options() {
        assert!(is_processor(&line(&["tidewater", "processor"])));
        assert!(is_processor(&line(&[
            "/bin/tidewater",
            "-c",
            "processor",
            "processor"
        ])));
        assert!(is_processor(&line(&[
            "tidewater",
            "--config=x.toml",
            "processor"
        ])));
        assert!(!is_processor(&line(&[
            "tidewater",
            "--config",
            "processor",
            "up"
        ])));
        assert!(!is_processor(&line(&["tidewater", "collector"])));
        assert!(!is_processor(&line(&["tidewater", "up", "processor"])));
        assert!(!is_processor(&line(&["tidewater"])));
        assert!(!is_processor(&line(&[])));
    }
}
