//! The guest heap and its fresh-allocation hints (the paravirtual side of SnapBPF's
//! online filtering, paper section 3.2).
//!
//! The heap is every byte of RAM from the end of the image to the end of the low region,
//! and the whole high region above 4 GiB if RAM has one (two `talc` arenas: no block
//! spans the gap). Beside it the runtime keeps a ledger with one `u16` per heap page
//! (the gap takes no entries):
//!
//! - **Before the snapshot** (init phase) an entry counts the live allocations touching the
//!   page.
//! - **At the snapshot** ([`freeze_at_snapshot`], just before the READY hypercall) every
//!   count becomes a flag: `FRESH` if no live allocation touched the page, so its snapshot
//!   contents are dead (never used, or garbage left by freed init-time buffers).
//! - **After the snapshot** (every restored VM) each allocation clears the flags of the
//!   pages it touches. Pages lying wholly inside the new allocation that were still `FRESH`
//!   are reported to the VMM in one batched hypercall before the allocation is returned,
//!   and the VMM backs them with anonymous zero memory: the guest never reads them from the
//!   snapshot.
//!
//! Why this is safe: a hinted page lies wholly inside a block the allocator has just
//! handed out, so the allocator keeps no metadata in it, no other live block overlaps it,
//! and the program has not written it yet; allocation contents are undefined, so a zero
//! page is a valid content. Boundary pages, which may share bytes with live blocks or
//! allocator tags, are never hinted. The `FRESH` flags add no safety; they keep hints to
//! pages whose contents are still only in the snapshot (not pages already used, and so
//! already private, since the restore), so every exit saves I/O.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use snapbpf_guest_abi::{FreshRange, Mailbox, RamLayout, HIGH_MEM_BASE, MAILBOX_GPA, MAX_HINTS, PAGE_SIZE};
use talc::{ErrOnOom, Span, Talc};

/// Ledger flag after the snapshot: the page's snapshot contents are dead.
const FRESH: u16 = 1;

/// Smallest batch worth a VM exit. An exit costs tens of microseconds here; a page read
/// from the snapshot costs about as much from the page cache and far more from disk, so a
/// few pages already pay for it.
const HINT_MIN_BYTES: u64 = 4 * PAGE_SIZE;

struct Ledger {
    /// First heap page's address.
    base: u64,
    /// End of the low RAM region: heap addresses from [`HIGH_MEM_BASE`] on are counted as
    /// if the high region followed it directly.
    low_end: u64,
    /// Number of heap pages.
    pages: usize,
    /// One entry per page (see the module docs).
    entries: *mut u16,
}

struct GuestHeap {
    talc: spin::Mutex<Talc<ErrOnOom>>,
    ledger: spin::Mutex<Ledger>,
}

// SAFETY: the guest is single-threaded; the raw ledger pointer is only used under its lock.
unsafe impl Sync for GuestHeap {}

#[global_allocator]
static HEAP: GuestHeap = GuestHeap {
    talc: spin::Mutex::new(Talc::new(ErrOnOom)),
    ledger: spin::Mutex::new(Ledger {
        base: 0,
        low_end: 0,
        pages: 0,
        entries: core::ptr::null_mut(),
    }),
};

/// Set once the snapshot point has passed (in every restored VM, and in a fresh VM that
/// goes on to serve invocations).
static AFTER_SNAPSHOT: AtomicBool = AtomicBool::new(false);

fn hints_enabled() -> bool {
    let mb = MAILBOX_GPA as *const Mailbox;
    // SAFETY: the mailbox page is identity-mapped; the VMM writes it only while we are
    // stopped in a hypercall.
    unsafe { core::ptr::read_volatile(&raw const (*mb).hints_enabled) != 0 }
}

impl Ledger {
    /// Byte position of heap address `addr` in the ledger's gapless view of the heap (a
    /// block lies in one region, so both its ends move alike).
    fn position(&self, addr: u64) -> u64 {
        let linear = if addr >= HIGH_MEM_BASE {
            addr - HIGH_MEM_BASE + self.low_end
        } else {
            addr
        };
        linear - self.base
    }

    /// Address of the heap page at index `page`.
    fn page_addr(&self, page: usize) -> u64 {
        let linear = self.base + page as u64 * PAGE_SIZE;
        if linear >= self.low_end {
            linear - self.low_end + HIGH_MEM_BASE
        } else {
            linear
        }
    }

    /// Page indices `[first, last)` that `[addr, addr + len)` touches.
    fn touched(&self, addr: u64, len: u64) -> (usize, usize) {
        let at = self.position(addr);
        let first = at / PAGE_SIZE;
        let last = (at + len.max(1)).div_ceil(PAGE_SIZE);
        (first as usize, (last as usize).min(self.pages))
    }

    /// Page indices `[first, last)` lying wholly inside `[addr, addr + len)`.
    fn interior(&self, addr: u64, len: u64) -> (usize, usize) {
        let at = self.position(addr);
        let first = at.div_ceil(PAGE_SIZE);
        let last = (at + len) / PAGE_SIZE;
        (first as usize, (last as usize).max(first as usize).min(self.pages))
    }

    fn entry(&self, page: usize) -> *mut u16 {
        // SAFETY: callers pass page < self.pages; `entries` holds `pages` u16s.
        unsafe { self.entries.add(page) }
    }

    fn count(&mut self, addr: u64, len: u64, delta: i32) {
        let (first, last) = self.touched(addr, len);
        for page in first..last {
            let e = self.entry(page);
            // SAFETY: page < pages (touched() clamps); exclusive under the ledger lock.
            unsafe { *e = (i32::from(*e) + delta).clamp(0, i32::from(u16::MAX)) as u16 };
        }
    }

    /// After the snapshot: claims the pages of a new block `[addr, addr + len)` and adds
    /// its still-fresh interior pages to `out`.
    fn claim(&mut self, addr: u64, len: u64, out: &mut HintBatch) {
        let (first, last) = self.touched(addr, len);
        let (inner_first, inner_last) = self.interior(addr, len);
        for page in first..last {
            let e = self.entry(page);
            // SAFETY: page < pages; exclusive under the ledger lock.
            let fresh = unsafe { *e } == FRESH;
            // SAFETY: as above.
            unsafe { *e = 0 };
            if fresh && (inner_first..inner_last).contains(&page) {
                out.push(self.page_addr(page));
            }
        }
    }
}

/// Fresh page runs of one allocation, sent to the VMM in as few exits as possible.
struct HintBatch {
    ranges: [FreshRange; MAX_HINTS],
    len: usize,
    bytes: u64,
    /// The first spans sent, `(start, end)`, so `alloc_zeroed` can skip zeroing them.
    hinted: [(u64, u64); 8],
    hinted_len: usize,
    enabled: bool,
}

impl HintBatch {
    fn new(enabled: bool) -> Self {
        Self {
            ranges: [FreshRange::default(); MAX_HINTS],
            len: 0,
            bytes: 0,
            hinted: [(0, 0); 8],
            hinted_len: 0,
            enabled,
        }
    }

    fn push(&mut self, page_addr: u64) {
        if !self.enabled {
            return;
        }
        if self.len > 0 {
            let last = &mut self.ranges[self.len - 1];
            if last.gpa + last.len == page_addr {
                last.len += PAGE_SIZE;
                self.bytes += PAGE_SIZE;
                return;
            }
        }
        if self.len == MAX_HINTS {
            self.flush();
        }
        self.ranges[self.len] = FreshRange {
            gpa: page_addr,
            len: PAGE_SIZE,
        };
        self.len += 1;
        self.bytes += PAGE_SIZE;
    }

    /// Sends the batch if it is worth an exit. Returns whether it was sent.
    fn flush(&mut self) -> bool {
        if self.len == 0 || self.bytes < HINT_MIN_BYTES {
            self.len = 0;
            self.bytes = 0;
            return false;
        }
        let mb = MAILBOX_GPA as *mut Mailbox;
        for (i, r) in self.ranges[..self.len].iter().enumerate() {
            // SAFETY: i < MAX_HINTS, inside the mailbox's hint table; the VMM reads it only
            // during the hypercall below.
            unsafe { core::ptr::write_volatile((&raw mut (*mb).hints).cast::<FreshRange>().add(i), *r) };
            if self.hinted_len < self.hinted.len() {
                self.hinted[self.hinted_len] = (r.gpa, r.gpa + r.len);
                self.hinted_len += 1;
            }
        }
        crate::hypercall::fresh_hints(self.len);
        self.len = 0;
        self.bytes = 0;
        true
    }

    /// Hinted spans of this batch (up to 8, enough for the zeroing shortcut).
    fn hinted(&self) -> &[(u64, u64)] {
        &self.hinted[..self.hinted_len]
    }
}

impl GuestHeap {
    /// Ledger bookkeeping for a new block; returns the hints that were sent.
    fn on_alloc(&self, ptr: *mut u8, size: usize) -> HintBatch {
        let mut ledger = self.ledger.lock();
        if !AFTER_SNAPSHOT.load(Ordering::Relaxed) {
            ledger.count(ptr as u64, size as u64, 1);
            return HintBatch::new(false);
        }
        let mut batch = HintBatch::new(hints_enabled());
        ledger.claim(ptr as u64, size as u64, &mut batch);
        batch.flush();
        batch
    }

    fn on_dealloc(&self, ptr: *mut u8, size: usize) {
        if !AFTER_SNAPSHOT.load(Ordering::Relaxed) {
            self.ledger.lock().count(ptr as u64, size as u64, -1);
        }
    }
}

// SAFETY: allocation is delegated to talc, which returns blocks satisfying `layout`; the
// ledger only records which pages blocks touch.
unsafe impl GlobalAlloc for GuestHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarding GlobalAlloc::alloc's contract to talc.
        let ptr = match unsafe { self.talc.lock().malloc(layout) } {
            Ok(p) => p.as_ptr(),
            Err(()) => return core::ptr::null_mut(),
        };
        self.on_alloc(ptr, layout.size());
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarding GlobalAlloc::alloc's contract to talc.
        let ptr = match unsafe { self.talc.lock().malloc(layout) } {
            Ok(p) => p.as_ptr(),
            Err(()) => return core::ptr::null_mut(),
        };
        let batch = self.on_alloc(ptr, layout.size());
        // Hinted pages are already zero (fresh anonymous memory): zero only the rest, so
        // the zeroing does not touch them.
        let (start, end) = (ptr as u64, ptr as u64 + layout.size() as u64);
        let mut at = start;
        for &(h_start, h_end) in batch.hinted() {
            if h_start >= at && h_end <= end {
                // SAFETY: [at, h_start) lies inside the block just allocated.
                unsafe { core::ptr::write_bytes(at as *mut u8, 0, (h_start - at) as usize) };
                at = h_end;
            }
        }
        // SAFETY: [at, end) lies inside the block just allocated.
        unsafe { core::ptr::write_bytes(at as *mut u8, 0, (end - at) as usize) };
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.on_dealloc(ptr, layout.size());
        if let Some(nn) = NonNull::new(ptr) {
            // SAFETY: the caller passes a block this allocator returned, with its layout.
            unsafe { self.talc.lock().free(nn, layout) };
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(nn) = NonNull::new(ptr) else {
            return core::ptr::null_mut();
        };
        if new_size <= layout.size() {
            // SAFETY: the caller passes a block of `layout` and a smaller size.
            unsafe { self.talc.lock().shrink(nn, layout, new_size) };
            self.on_dealloc(ptr, layout.size());
            self.on_alloc(ptr, new_size);
            return ptr;
        }
        // SAFETY: the caller passes a block of `layout` and a larger size.
        let grown = unsafe { self.talc.lock().grow_in_place(nn, layout, new_size) };
        if grown.is_ok() {
            self.on_dealloc(ptr, layout.size());
            self.on_alloc(ptr, new_size);
            return ptr;
        }
        // Move: a new block (whose fresh pages are hinted before the copy writes them),
        // copy, free the old one.
        // SAFETY: new_size > layout.size() > 0 and the alignment is the old, valid one.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: forwarding to alloc with a valid layout.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for layout.size() bytes and distinct.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size()) };
            // SAFETY: the old block with its layout, no longer used.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}

/// Gives the allocator the heap (from `start` to the end of the low region, and the high
/// region) and builds the ledger inside it.
pub fn init(start: u64, ram: RamLayout) {
    let low_end = ram.low_bytes();
    if start >= low_end {
        crate::transport::panic_message(format_args!(
            "heap start {start:#x} lies past the low RAM region (ends at {low_end:#x})"
        ));
    }
    let arenas = [
        Some((start, low_end)),
        ram.high().map(|high| (high.gpa, high.gpa + high.len)),
    ];
    let mut talc = HEAP.talc.lock();
    for (from, to) in arenas.into_iter().flatten() {
        let span = Span::new(from as *mut u8, to as *mut u8);
        // SAFETY: the VMM reserves the heap's RAM (past the image in the low region, all
        // of the high one) for it: identity-mapped RAM that nothing else uses; this runs
        // once, before any allocation.
        if unsafe { talc.claim(span) }.is_err() {
            crate::transport::panic_message(format_args!("cannot claim heap {from:#x}..{to:#x}"));
        }
    }
    let base = start.next_multiple_of(PAGE_SIZE);
    let pages = ((low_end - base + ram.high_bytes()) / PAGE_SIZE) as usize;
    let layout = Layout::array::<u16>(pages).unwrap_or(Layout::new::<u16>());
    // SAFETY: a valid non-zero layout.
    let Ok(entries) = (unsafe { talc.malloc(layout) }) else {
        crate::transport::panic_message(format_args!("no memory for the page ledger"));
    };
    drop(talc);
    let entries = entries.as_ptr().cast::<u16>();
    // SAFETY: `entries` was just allocated for `pages` u16s.
    unsafe { core::ptr::write_bytes(entries, 0, pages) };
    let mut ledger = HEAP.ledger.lock();
    *ledger = Ledger {
        base,
        low_end,
        pages,
        entries,
    };
    // The ledger itself is live data.
    ledger.count(entries as u64, layout.size() as u64, 1);
}

/// Turns the live counts into fresh flags; call just before reporting ready.
pub fn freeze_at_snapshot() {
    let ledger = HEAP.ledger.lock();
    for page in 0..ledger.pages {
        let e = ledger.entry(page);
        // SAFETY: page < pages; exclusive under the ledger lock.
        unsafe { *e = if *e == 0 { FRESH } else { 0 } };
    }
}

/// Marks the snapshot point as passed; call right after the READY hypercall returns.
pub fn snapshot_passed() {
    AFTER_SNAPSHOT.store(true, Ordering::Relaxed);
}
