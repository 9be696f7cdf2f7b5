//! The -ENOSYS stub runc puts in front of every seccomp filter
//! (libcontainer/seccomp/patchbpf): a syscall newer than any the profile
//! names gets ENOSYS, not the profile's default action.
//!
//! Why: a profile written before a syscall existed cannot name it, so its
//! default action (usually EPERM) would apply; but glibc and friends probe
//! new syscalls (clone3, openat2, faccessat2...) and fall back to the old
//! ones only on ENOSYS. With EPERM they fail instead. runc therefore
//! returns ENOSYS for every syscall number above the largest one the
//! profile knows, on the native architecture. Ferry does the same: the
//! filter libseccomp built is exported as BPF, the stub goes in front, and
//! the whole program is loaded with seccomp(2) directly.
//!
//! Only the native x86_64 ABI is patched (x32 calls, with bit 30 set, and
//! other architectures go straight to libseccomp's program), which is what
//! runc's stub does for the arches it cannot bound.

use std::io::{Read, Seek};
use std::os::fd::{FromRawFd, OwnedFd};

use libseccomp::{ScmpArch, ScmpFilterContext, ScmpSyscall};

// Classic BPF opcodes (linux/filter.h) and seccomp's ABI.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGT_K: u16 = 0x25;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;

/// A seccomp program ready for seccomp(2).
#[derive(Clone)]
pub struct Program {
    insns: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("len", &self.insns.len())
            .field("flags", &self.flags)
            .finish()
    }
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The largest native (x86_64) syscall number among `names`; names this
/// libseccomp does not know, or that do not exist on x86_64, are skipped.
pub fn max_native_syscall<'a>(names: impl Iterator<Item = &'a str>) -> Option<u32> {
    names
        .filter_map(|n| ScmpSyscall::from_name_by_arch(n, ScmpArch::X8664).ok())
        .map(i32::from)
        .filter(|&nr| nr >= 0)
        .max()
        .map(|nr| nr as u32)
}

/// The stub: on x86_64 (not x32), a syscall number above `max` returns
/// ENOSYS; everything else falls through to the program after it.
pub fn stub(max: u32) -> Vec<libc::sock_filter> {
    vec![
        // 0: A = arch
        insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
        // 1: not x86_64 -> 6
        insn(BPF_JEQ_K, 0, 4, AUDIT_ARCH_X86_64),
        // 2: A = nr
        insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
        // 3: an x32 call -> 6
        insn(BPF_JSET_K, 2, 0, X32_SYSCALL_BIT),
        // 4: nr > max -> 5, else 6
        insn(BPF_JGT_K, 0, 1, max),
        // 5:
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        // 6: libseccomp's program, which loads what it needs itself.
    ]
}

/// libseccomp's program for `ctx`, as BPF instructions.
fn export(ctx: &ScmpFilterContext) -> std::io::Result<Vec<libc::sock_filter>> {
    // SAFETY: memfd_create with a static name; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"ferry-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    ctx.export_bpf(&mut file).map_err(std::io::Error::other)?;
    file.rewind()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    if bytes.len() % 8 != 0 {
        return Err(std::io::Error::other(
            "libseccomp exported a BPF program of a partial instruction",
        ));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| {
            insn(
                u16::from_ne_bytes([c[0], c[1]]),
                c[2],
                c[3],
                u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            )
        })
        .collect())
}

/// libseccomp's program for `ctx` behind the ENOSYS stub for `max`, to be
/// loaded with seccomp(2) `flags` (SECCOMP_FILTER_FLAG_*).
pub fn patch(ctx: &ScmpFilterContext, max: u32, flags: libc::c_ulong) -> std::io::Result<Program> {
    let mut insns = stub(max);
    insns.extend(export(ctx)?);
    if insns.len() > u16::MAX as usize {
        return Err(std::io::Error::other("the seccomp program is too long"));
    }
    Ok(Program { insns, flags })
}

impl Program {
    /// Loads the program into the calling thread (all threads with TSYNC).
    /// Without no_new_privs this needs CAP_SYS_ADMIN, as libseccomp's load.
    pub fn load(&self) -> std::io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.insns.len() as u16,
            filter: self.insns.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: seccomp(2) reads `prog`, which borrows our instructions.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_jumps_where_it_should() {
        let s = stub(450);
        assert_eq!(s.len(), 6);
        let target = |i: usize, off: u8| i + 1 + off as usize;
        // Not x86_64: straight to libseccomp's program (index 6).
        assert_eq!(target(1, s[1].jf), 6);
        // x32: likewise.
        assert_eq!(target(3, s[3].jt), 6);
        // Above the bound: ENOSYS; else libseccomp's program.
        assert_eq!(target(4, s[4].jt), 5);
        assert_eq!(target(4, s[4].jf), 6);
        assert_eq!(s[4].k, 450);
        assert_eq!(s[5].k, SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
    }

    #[test]
    fn the_bound_is_the_largest_known_syscall() {
        let max = max_native_syscall(["read", "openat2", "no_such_call", "write"].into_iter());
        // openat2 is 437 on x86_64.
        assert_eq!(max, Some(437));
        assert_eq!(max_native_syscall(std::iter::empty()), None);
    }
}
