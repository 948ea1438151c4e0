//! An ArrayBuffer allocator with a budget: ArrayBuffer memory lives outside the JavaScript
//! heap, so the heap limit does not cover it. Past the budget an allocation fails, which
//! JavaScript sees as `RangeError: Array buffer allocation failed`.

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// What V8 expects of allocations: the alignment of `max_align_t`.
const ALIGN: usize = 16;

struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    fn reserve(&self, len: usize) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(len).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }
}

fn layout(len: usize) -> Option<Layout> {
    // Zero-length buffers still get a unique, freeable pointer.
    Layout::from_size_align(len.max(1), ALIGN).ok()
}

unsafe extern "C" fn allocate(budget: &Budget, len: usize) -> *mut c_void {
    allocate_with(budget, len, true)
}

unsafe extern "C" fn allocate_uninitialized(budget: &Budget, len: usize) -> *mut c_void {
    allocate_with(budget, len, false)
}

fn allocate_with(budget: &Budget, len: usize, zeroed: bool) -> *mut c_void {
    let Some(layout) = layout(len) else {
        return std::ptr::null_mut();
    };
    if !budget.reserve(len) {
        return std::ptr::null_mut();
    }
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe {
        if zeroed {
            alloc_zeroed(layout)
        } else {
            alloc(layout)
        }
    };
    if ptr.is_null() {
        budget.used.fetch_sub(len, Ordering::SeqCst);
    }
    ptr.cast()
}

unsafe extern "C" fn free(budget: &Budget, data: *mut c_void, len: usize) {
    if data.is_null() {
        return;
    }
    if let Some(layout) = layout(len) {
        // SAFETY: V8 frees what `allocate*` returned, with the length it asked for, so the
        // layout is the one it was allocated with.
        unsafe { dealloc(data.cast(), layout) };
        budget.used.fetch_sub(len, Ordering::SeqCst);
    }
}

unsafe extern "C" fn drop_budget(budget: *const Budget) {
    // SAFETY: `budget` came from `Arc::into_raw` in `with_budget`, and V8 calls this once,
    // when it drops the allocator.
    drop(unsafe { Arc::from_raw(budget) });
}

static VTABLE: v8::RustAllocatorVtable<Budget> = v8::RustAllocatorVtable {
    allocate,
    allocate_uninitialized,
    free,
    drop: drop_budget,
};

/// An allocator that hands out at most `limit` bytes of ArrayBuffer memory at a time.
pub(super) fn with_budget(limit: usize) -> v8::UniqueRef<v8::Allocator> {
    let budget = Arc::new(Budget {
        used: AtomicUsize::new(0),
        limit,
    });
    // SAFETY: the handle is a live `Budget` (owned by the allocator until `drop_budget`) and
    // VTABLE's functions all take a `Budget`.
    unsafe { v8::new_rust_allocator(Arc::into_raw(budget), &VTABLE) }
}
