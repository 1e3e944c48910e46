//! The guest heap: every byte of RAM from the end of the image to the end of memory.

use core::alloc::{GlobalAlloc, Layout};
use talc::{ErrOnOom, Span, Talc, Talck};

/// The guest is single-threaded with no interrupts; the spin lock is never contended.
type Heap = Talck<spin::Mutex<()>, ErrOnOom>;

struct GuestAllocator {
    heap: Heap,
}

#[global_allocator]
static ALLOCATOR: GuestAllocator = GuestAllocator {
    heap: Talc::new(ErrOnOom).lock(),
};

// SAFETY: delegates to talc's GlobalAlloc, which upholds the contract.
unsafe impl GlobalAlloc for GuestAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds GlobalAlloc::alloc's contract.
        unsafe { self.heap.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds GlobalAlloc::dealloc's contract.
        unsafe { self.heap.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds GlobalAlloc::realloc's contract.
        unsafe { self.heap.realloc(ptr, layout, new_size) }
    }
}

/// Gives the allocator `[start, end)`.
pub fn init(start: u64, end: u64) {
    let span = Span::new(start as *mut u8, end as *mut u8);
    // SAFETY: the VMM reserves [heap_start, mem_bytes) for the heap: it is identity-mapped
    // RAM that nothing else uses, and this runs once, before any allocation.
    if unsafe { ALLOCATOR.heap.lock().claim(span) }.is_err() {
        crate::hypercall::panic_message(format_args!("cannot claim heap {start:#x}..{end:#x}"));
    }
}
