//! BPF map operations aya 0.14 does not offer: batch lookups of hash maps, atomic
//! lookup-and-delete, and memory-mapped arrays (BPF_F_MMAPABLE).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use anyhow::{Context as _, Result, bail};
use bytemuck::Pod;

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: `attr` is a valid, fully initialised attribute struct of the size we pass.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Walks a hash map `chunk` entries per syscall with a batch command (lookup, or lookup and
/// delete), handing each chunk to `each`.
fn batch_walk<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    chunk: usize,
    cmd: libc::c_long,
    mut each: impl FnMut(&[K], &[V]),
) -> Result<()> {
    let mut keys = vec![K::zeroed(); chunk];
    let mut values = vec![V::zeroed(); chunk];
    let mut cursor = 0u64;
    let mut first = true;
    loop {
        let mut next = 0u64;
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &cursor as *const u64 as u64
            },
            out_batch: &mut next as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = bpf(cmd, &mut attr);
        let n = attr.count as usize;
        each(&keys[..n], &values[..n]);
        match r {
            Ok(()) => {}
            // The end of the map: the last chunk came with it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e).context("batch map operation"),
        }
        cursor = next;
        first = false;
    }
}

/// Every entry of a hash map, `chunk` entries per syscall.
pub fn dump_hash<K: Pod, V: Pod>(fd: BorrowedFd<'_>, chunk: usize) -> Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    batch_walk::<K, V>(fd, chunk, BPF_MAP_LOOKUP_BATCH, |k, v| {
        out.extend(k.iter().copied().zip(v.iter().copied()))
    })?;
    Ok(out)
}

/// Removes `key` and returns the value it held, atomically (None: there was none).
pub fn lookup_and_delete<K: Pod, V: Pod>(fd: BorrowedFd<'_>, key: &K) -> Result<Option<V>> {
    let mut value = V::zeroed();
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: &mut value as *mut V as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        Ok(()) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e).context("lookup and delete"),
    }
}

/// A BPF_F_MMAPABLE array mapped into our memory: the daemon reads and writes elements with
/// plain (or atomic) memory accesses instead of one syscall each.
pub struct Mmap {
    ptr: *mut u8,
    len: usize,
    entries: usize,
    value_size: usize,
}

// SAFETY: the mapping is shared memory; all mutation goes through atomics or &mut self.
unsafe impl Send for Mmap {}
// SAFETY: as above.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// Maps `entries` values of `value_size` bytes (the kernel rounds each to 8 bytes).
    pub fn new(
        fd: BorrowedFd<'_>,
        entries: usize,
        value_size: usize,
        writable: bool,
    ) -> Result<Self> {
        let value_size = value_size.next_multiple_of(8);
        let page = 4096;
        let len = (entries * value_size).next_multiple_of(page);
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: mapping a BPF map fd; the kernel checks size and flags.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mmap of a BPF array ({entries} x {value_size} bytes): {}",
                io::Error::last_os_error()
            );
        }
        Ok(Mmap {
            ptr: ptr as *mut u8,
            len,
            entries,
            value_size,
        })
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    fn at(&self, index: usize) -> *mut u8 {
        assert!(
            index < self.entries,
            "index {index} beyond {}",
            self.entries
        );
        // SAFETY: in bounds (asserted).
        unsafe { self.ptr.add(index * self.value_size) }
    }

    /// A copy of element `index` (a racy snapshot: concurrent writers store whole scalars).
    pub fn read<T: Pod>(&self, index: usize) -> T {
        assert!(size_of::<T>() <= self.value_size);
        // SAFETY: in bounds, and T is plain old data.
        unsafe { std::ptr::read_volatile(self.at(index) as *const T) }
    }

    /// The elements as a slice (racy, like `read`).
    pub fn slice<T: Pod>(&self) -> &[T] {
        assert_eq!(size_of::<T>(), self.value_size);
        // SAFETY: the mapping holds `entries` elements of T.
        unsafe { std::slice::from_raw_parts(self.ptr as *const T, self.entries) }
    }

    /// Writes the elements from `values` (a whole-array fill, e.g. a Maglev table). Elements
    /// sit 8-byte aligned, so a u32 array has a stride of 8.
    pub fn write_all<T: Pod>(&mut self, values: &[T]) {
        assert!(size_of::<T>() <= self.value_size);
        assert_eq!(values.len(), self.entries);
        for (i, v) in values.iter().enumerate() {
            // SAFETY: in bounds; the mapping is writable (the caller's choice at `new`).
            unsafe { std::ptr::write_unaligned(self.at(i) as *mut T, *v) };
        }
    }

    /// Zeroes every element. Meant for a quiescent map (tests, benchmarks): a concurrent
    /// writer may see a half-zeroed element.
    pub fn zero_all(&self) {
        // SAFETY: the mapping is `entries * value_size` bytes long and writable (callers only
        // zero maps they mapped writable); the memory is shared with the kernel anyway.
        unsafe { std::ptr::write_bytes(self.ptr, 0, self.entries * self.value_size) };
    }

    /// Every element, copied out (any stride).
    pub fn read_all<T: Pod>(&self) -> Vec<T> {
        (0..self.entries).map(|i| self.read(i)).collect()
    }

    /// The 32-bit word at byte `offset` of element `index`, for atomic access.
    pub fn word32(&self, index: usize, offset: usize) -> &AtomicU32 {
        assert!(offset + 4 <= self.value_size && offset.is_multiple_of(4));
        // SAFETY: in bounds and 4-byte aligned (elements are 8-byte aligned).
        unsafe { AtomicU32::from_ptr(self.at(index).add(offset) as *mut u32) }
    }

    /// Element `index` as one 64-bit word, for atomic access.
    pub fn word64(&self, index: usize) -> &AtomicU64 {
        assert!(self.value_size >= 8);
        // SAFETY: in bounds and 8-byte aligned.
        unsafe { AtomicU64::from_ptr(self.at(index) as *mut u64) }
    }

    /// The 64-bit word at byte `offset` of element `index`, for atomic access.
    pub fn word64_at(&self, index: usize, offset: usize) -> &AtomicU64 {
        assert!(offset + 8 <= self.value_size && offset.is_multiple_of(8));
        // SAFETY: in bounds and 8-byte aligned (elements are 8-byte aligned).
        unsafe { AtomicU64::from_ptr(self.at(index).add(offset) as *mut u64) }
    }

    /// Stores `v` as element `index` in one 8-byte write.
    pub fn store64(&self, index: usize, v: u64) {
        self.word64(index).store(v, Ordering::Release);
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// Deletes `key` (array-of-maps slots included, which aya cannot clear); absent is fine.
pub fn delete<K: Pod>(fd: BorrowedFd<'_>, key: &K) -> Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key as *const K as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e).context("delete"),
    }
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

/// Inserts or updates `key` with BPF update `flags` (BPF_NOEXIST = 1, ...).
pub fn insert<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    key: &K,
    value: &V,
    flags: u64,
) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: value as *const V as u64,
        flags,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
}

const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// Empties a hash map, `chunk` entries per syscall; returns how many it held.
pub fn drain_hash<K: Pod, V: Pod>(fd: BorrowedFd<'_>, chunk: usize) -> Result<usize> {
    let mut total = 0;
    batch_walk::<K, V>(fd, chunk, BPF_MAP_LOOKUP_AND_DELETE_BATCH, |k, _| {
        total += k.len()
    })?;
    Ok(total)
}
