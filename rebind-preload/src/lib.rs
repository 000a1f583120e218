//! `rebind.so`: an `LD_PRELOAD` library that moves a program's `bind()` of one port to a
//! loopback port, so websockify can take the public port and proxy to the program.
//!
//! With `REBIND_OLD_PORT=5901 REBIND_NEW_PORT=40123`, a `bind()` to port 5901 on any address
//! becomes a bind to `127.0.0.1:40123` (IPv4) or `[::1]:40123` (IPv6, falling back to the
//! IPv4-mapped `::ffff:127.0.0.1` where the host has no IPv6 loopback). Every other `bind()`
//! goes to libc untouched. `REBIND_PORT_OLD`/`REBIND_PORT_NEW` (the names upstream's docs
//! and helper script use) work too.
//!
//! Paranoid by design: no allocation, no panics (no indexing that can fail, no unwrap; and
//! an `extern "C"` function aborts rather than unwinding into the host), pointers and lengths checked before any read, the
//! sockaddr copied with an unaligned read, errno left as the real `bind()` set it. The
//! decision is the pure function [`rebind_port`]; the exported shim is a few lines.
//!
//! The crate declares the handful of libc symbols it needs itself instead of depending on
//! the `libc` crate: the launcher's build script then compiles this one file with a single
//! `rustc` call and embeds the result in the `websockify` binary, without a nested cargo.

#![allow(non_camel_case_types)]

use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::{AtomicUsize, Ordering};

type socklen_t = u32;
type sa_family_t = u16;

const AF_INET: sa_family_t = 2;
const AF_INET6: sa_family_t = 10;
const EADDRNOTAVAIL: c_int = 99;
const ENOSYS: c_int = 38;
/// `RTLD_NEXT` on glibc and musl: the next object after this one in the search order.
const RTLD_NEXT: *mut c_void = -1isize as *mut c_void;

#[repr(C)]
#[derive(Clone, Copy)]
struct sockaddr_in {
    sin_family: sa_family_t,
    sin_port: u16,
    sin_addr: u32,
    sin_zero: [u8; 8],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct sockaddr_in6 {
    sin6_family: sa_family_t,
    sin6_port: u16,
    sin6_flowinfo: u32,
    sin6_addr: [u8; 16],
    sin6_scope_id: u32,
}

/// Opaque `struct sockaddr`.
#[repr(C)]
pub struct sockaddr {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn getenv(name: *const c_char) -> *const c_char;
    fn __errno_location() -> *mut c_int;
}

type BindFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;

/// The real `bind`, resolved once (racing threads store the same value).
static REAL_BIND: AtomicUsize = AtomicUsize::new(0);

/// Decides where a bind to `requested` goes: `Some(new)` when it is the port to move.
/// `old` and `new` come from the environment; port 0 in either disables moving.
pub fn rebind_port(requested: u16, old: Option<u16>, new: Option<u16>) -> Option<u16> {
    match (old, new) {
        (Some(old), Some(new)) if old != 0 && new != 0 && requested == old => Some(new),
        _ => None,
    }
}

/// Parses a decimal port (1..=65535) from bytes, without allocating.
pub fn parse_port(bytes: &[u8]) -> Option<u16> {
    if bytes.is_empty() || bytes.len() > 5 {
        return None;
    }
    let mut value: u32 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
    }
    u16::try_from(value).ok().filter(|&p| p != 0)
}

/// Reads a port from the first set variable of `names` (NUL-terminated).
fn env_port(names: &[&[u8]]) -> Option<u16> {
    for name in names {
        // SAFETY: `name` is NUL-terminated; getenv returns NULL or a NUL-terminated string
        // that stays valid while nobody calls setenv (we only read it right here).
        let value = unsafe { getenv(name.as_ptr().cast()) };
        if value.is_null() {
            continue;
        }
        let mut len = 0usize;
        // SAFETY: reading at most 6 bytes of a NUL-terminated string, stopping at the NUL.
        while len < 6 && unsafe { *value.add(len) } != 0 {
            len += 1;
        }
        // SAFETY: the `len` bytes just scanned are readable.
        let bytes = unsafe { core::slice::from_raw_parts(value.cast::<u8>(), len) };
        return parse_port(bytes);
    }
    None
}

fn ports() -> (Option<u16>, Option<u16>) {
    (
        env_port(&[b"REBIND_OLD_PORT\0", b"REBIND_PORT_OLD\0"]),
        env_port(&[b"REBIND_NEW_PORT\0", b"REBIND_PORT_NEW\0"]),
    )
}

fn real_bind() -> Option<BindFn> {
    let mut ptr = REAL_BIND.load(Ordering::Acquire);
    if ptr == 0 {
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name is always safe to call.
        ptr = unsafe { dlsym(RTLD_NEXT, c"bind".as_ptr()) } as usize;
        REAL_BIND.store(ptr, Ordering::Release);
    }
    if ptr == 0 {
        return None;
    }
    // SAFETY: a non-null result of dlsym("bind") is libc's bind, which has this signature.
    Some(unsafe { core::mem::transmute::<usize, BindFn>(ptr) })
}

fn set_errno(value: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *__errno_location() = value };
}

/// The exported hook.
///
/// # Safety
/// Called by the program in place of libc's `bind`, with its arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some(real) = real_bind() else {
        set_errno(ENOSYS);
        return -1;
    };
    // SAFETY: forwarding the caller's arguments; `moved` reads only within `len`.
    unsafe {
        match moved(fd, addr, len, real) {
            Some(result) => result,
            None => real(fd, addr, len),
        }
    }
}

/// Binds to the loopback port instead when `addr` asks for the old port; `None` to pass through.
///
/// # Safety
/// `addr` must be NULL or point to `len` readable bytes, as `bind(2)` requires.
unsafe fn moved(fd: c_int, addr: *const sockaddr, len: socklen_t, real: BindFn) -> Option<c_int> {
    let len = len as usize;
    if addr.is_null() || len < core::mem::size_of::<sa_family_t>() {
        return None;
    }
    // SAFETY: at least the family field is readable (checked above); unaligned-safe read.
    let family = unsafe { core::ptr::read_unaligned(addr.cast::<sa_family_t>()) };
    match family {
        AF_INET if len >= core::mem::size_of::<sockaddr_in>() => {
            // SAFETY: `len` covers a sockaddr_in.
            let mut sin = unsafe { core::ptr::read_unaligned(addr.cast::<sockaddr_in>()) };
            let (old, new) = ports();
            let new = rebind_port(u16::from_be(sin.sin_port), old, new)?;
            sin.sin_port = new.to_be();
            sin.sin_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
            let sin_len = core::mem::size_of::<sockaddr_in>() as socklen_t;
            // SAFETY: `sin` is a valid sockaddr_in on our stack.
            Some(unsafe { real(fd, (&raw const sin).cast(), sin_len) })
        }
        AF_INET6 if len >= core::mem::size_of::<sockaddr_in6>() => {
            // SAFETY: `len` covers a sockaddr_in6.
            let mut sin6 = unsafe { core::ptr::read_unaligned(addr.cast::<sockaddr_in6>()) };
            let (old, new) = ports();
            let new = rebind_port(u16::from_be(sin6.sin6_port), old, new)?;
            sin6.sin6_port = new.to_be();
            sin6.sin6_flowinfo = 0;
            sin6.sin6_scope_id = 0;
            let mut loopback = [0u8; 16];
            loopback[15] = 1;
            sin6.sin6_addr = loopback;
            let sin6_len = core::mem::size_of::<sockaddr_in6>() as socklen_t;
            // SAFETY: `sin6` is a valid sockaddr_in6 on our stack.
            let result = unsafe { real(fd, (&raw const sin6).cast(), sin6_len) };
            if result == 0 {
                return Some(0);
            }
            // SAFETY: reading this thread's errno right after the failed call.
            if unsafe { *__errno_location() } != EADDRNOTAVAIL {
                return Some(result);
            }
            // No IPv6 loopback: the IPv4 loopback, mapped (works unless IPV6_V6ONLY is set).
            let mut mapped = [0u8; 16];
            mapped[10] = 0xff;
            mapped[11] = 0xff;
            mapped[12] = 127;
            mapped[15] = 1;
            sin6.sin6_addr = mapped;
            // SAFETY: as above.
            Some(unsafe { real(fd, (&raw const sin6).cast(), sin6_len) })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_only_the_old_port() {
        assert_eq!(rebind_port(5901, Some(5901), Some(40000)), Some(40000));
        assert_eq!(rebind_port(5902, Some(5901), Some(40000)), None);
        assert_eq!(rebind_port(5901, None, Some(40000)), None);
        assert_eq!(rebind_port(5901, Some(5901), None), None);
        assert_eq!(rebind_port(0, Some(5901), Some(40000)), None);
    }

    #[test]
    fn parses_ports_strictly() {
        assert_eq!(parse_port(b"5901"), Some(5901));
        assert_eq!(parse_port(b"65535"), Some(65535));
        assert_eq!(parse_port(b"65536"), None);
        assert_eq!(parse_port(b"0"), None);
        assert_eq!(parse_port(b""), None);
        assert_eq!(parse_port(b"59a1"), None);
        assert_eq!(parse_port(b" 5901"), None);
        assert_eq!(parse_port(b"123456"), None);
    }

    use std::sync::Mutex;

    /// What the fake `bind` was last called with: (family, port, address bytes).
    static CALLS: Mutex<Vec<(u16, u16, [u8; 16])>> = Mutex::new(Vec::new());

    unsafe extern "C" fn fake_bind(_fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
        let family = unsafe { core::ptr::read_unaligned(addr.cast::<sa_family_t>()) };
        let mut bytes = [0u8; 16];
        let port = if family == AF_INET {
            assert_eq!(len as usize, core::mem::size_of::<sockaddr_in>());
            let sin = unsafe { core::ptr::read_unaligned(addr.cast::<sockaddr_in>()) };
            bytes[..4].copy_from_slice(&sin.sin_addr.to_ne_bytes());
            u16::from_be(sin.sin_port)
        } else {
            let sin6 = unsafe { core::ptr::read_unaligned(addr.cast::<sockaddr_in6>()) };
            bytes = sin6.sin6_addr;
            u16::from_be(sin6.sin6_port)
        };
        CALLS.lock().unwrap().push((family, port, bytes));
        0
    }

    fn v4(port: u16) -> sockaddr_in {
        sockaddr_in {
            sin_family: AF_INET,
            sin_port: port.to_be(),
            sin_addr: 0,
            sin_zero: [0; 8],
        }
    }

    fn v6(port: u16) -> sockaddr_in6 {
        sockaddr_in6 {
            sin6_family: AF_INET6,
            sin6_port: port.to_be(),
            sin6_flowinfo: 0,
            sin6_addr: [0; 16],
            sin6_scope_id: 0,
        }
    }

    fn call<T>(addr: *const T, len: usize) -> Option<c_int> {
        unsafe { moved(3, addr.cast(), len as socklen_t, fake_bind) }
    }

    /// One test for everything that reads the environment (tests run in parallel threads).
    #[test]
    fn hook_moves_the_old_port_and_passes_everything_else_through() {
        let set = |old: &str, new: &str, old_name: &str, new_name: &str| unsafe {
            for name in [
                "REBIND_OLD_PORT",
                "REBIND_NEW_PORT",
                "REBIND_PORT_OLD",
                "REBIND_PORT_NEW",
            ] {
                std::env::remove_var(name);
            }
            std::env::set_var(old_name, old);
            std::env::set_var(new_name, new);
        };
        for (old_name, new_name) in [
            ("REBIND_OLD_PORT", "REBIND_NEW_PORT"),
            ("REBIND_PORT_OLD", "REBIND_PORT_NEW"),
        ] {
            set("5901", "40000", old_name, new_name);
            CALLS.lock().unwrap().clear();

            let sin = v4(5901);
            assert_eq!(call(&sin, core::mem::size_of::<sockaddr_in>()), Some(0));
            let sin6 = v6(5901);
            assert_eq!(call(&sin6, core::mem::size_of::<sockaddr_in6>()), Some(0));
            let calls = CALLS.lock().unwrap().clone();
            let mut loopback6 = [0u8; 16];
            loopback6[15] = 1;
            assert_eq!(calls[0].0, AF_INET);
            assert_eq!(calls[0].1, 40000);
            assert_eq!(&calls[0].2[..4], &[127, 0, 0, 1]);
            assert_eq!(
                (calls[1].0, calls[1].1, calls[1].2),
                (AF_INET6, 40000, loopback6)
            );

            // Other ports, short lengths, NULL and other families pass through untouched.
            let other = v4(5902);
            assert_eq!(call(&other, core::mem::size_of::<sockaddr_in>()), None);
            assert_eq!(call(&sin, core::mem::size_of::<sockaddr_in>() - 1), None);
            assert_eq!(call(&sin6, core::mem::size_of::<sockaddr_in6>() - 1), None);
            assert_eq!(call(&sin, 1), None);
            assert_eq!(call(core::ptr::null::<sockaddr_in>(), 16), None);
            let mut unix = [0u8; 110];
            unix[..2].copy_from_slice(&1u16.to_ne_bytes());
            assert_eq!(call(unix.as_ptr(), unix.len()), None);
        }
        // Unset or malformed variables disable the hook.
        set("5901", "x", "REBIND_OLD_PORT", "REBIND_NEW_PORT");
        assert_eq!(call(&v4(5901), core::mem::size_of::<sockaddr_in>()), None);
        unsafe {
            std::env::remove_var("REBIND_OLD_PORT");
            std::env::remove_var("REBIND_NEW_PORT");
        }
        assert_eq!(call(&v4(5901), core::mem::size_of::<sockaddr_in>()), None);
    }
}
