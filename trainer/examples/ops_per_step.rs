//! Operations per training step, counted on the CPU: how many storages candle makes in each of
//! the seed's stages (one per operation that computes, none per view), so about how many kernel
//! launches each stage makes on a GPU, where a small step is bound by launches.
//!
//! ```sh
//! cargo run --release -p viralclip-trainer --example ops_per_step -- ENCODER_DIR
//! ```
//!
//! Prints `bench::step_times`' JSON lines (batch 16 × 128, top 2 layers) with `ops_per_step`.
//! A counting allocator does the counting: candle allocates one shared `Arc<RwLock<Storage>>`
//! per new storage, and the example finds that allocation's size by comparing what an operation
//! allocates with what a view allocates, then checks the count on a known sequence.

use candle_core::{DType, Device, Tensor};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use viralclip_trainer::bench::{step_times, STORAGES_MADE};

/// The size and alignment counted (0: none yet).
static SIZE: AtomicUsize = AtomicUsize::new(0);
static ALIGN: AtomicUsize = AtomicUsize::new(0);
/// While set, allocations' (size, alignment) are recorded in `SEEN` (calibration only).
static RECORD: AtomicBool = AtomicBool::new(false);
static SEEN: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() == SIZE.load(Ordering::Relaxed) && l.align() == ALIGN.load(Ordering::Relaxed) {
            STORAGES_MADE.fetch_add(1, Ordering::Relaxed);
        }
        // `swap` so that the Vec's own growth below is not recorded.
        if RECORD.swap(false, Ordering::Relaxed) {
            if let Ok(mut seen) = SEEN.try_lock() {
                seen.push((l.size(), l.align()));
            }
            RECORD.store(true, Ordering::Relaxed);
        }
        // SAFETY: the caller's layout, as received.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: allocated above by the system allocator with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The allocations `f` makes, as (size, alignment).
fn allocations<R>(f: impl FnOnce() -> R) -> (R, Vec<(usize, usize)>) {
    SEEN.lock().expect("calibration lock").reserve(64);
    RECORD.store(true, Ordering::Relaxed);
    let r = f();
    RECORD.store(false, Ordering::Relaxed);
    (r, std::mem::take(&mut *SEEN.lock().expect("calibration lock")))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: ops_per_step ENCODER_DIR (e.g. the multilingual-e5-small fixture)")?;
    // 13 elements: the data's own allocation (52 bytes) cannot be mistaken for the one counted.
    let a = Tensor::zeros(13, DType::F32, &Device::Cpu)?;
    let (b, op) = allocations(|| (&a + &a).expect("an addition"));
    let (_c, view) = allocations(|| b.narrow(0, 1, 12).expect("a view"));
    // Of what the operation allocates and the view does not (its data aside), the allocation
    // that two operations and two views make exactly twice.
    let candidates: Vec<(usize, usize)> = op
        .iter()
        .filter(|s| !view.contains(s) && s.0 != 13 * 4)
        .copied()
        .collect();
    let counts = |&(size, align): &(usize, usize)| -> candle_core::Result<usize> {
        ALIGN.store(align, Ordering::Relaxed);
        SIZE.store(size, Ordering::Relaxed);
        let before = STORAGES_MADE.load(Ordering::Relaxed);
        let d = (&a * 2.0)?.reshape((13, 1))?.t()?.exp()?;
        let counted = STORAGES_MADE.load(Ordering::Relaxed) - before;
        drop(d);
        Ok(counted)
    };
    let mut found = None;
    for c in &candidates {
        if counts(c)? == 2 {
            found = Some(*c);
            break;
        }
    }
    let Some((size, align)) = found else {
        return Err(format!("no allocation counts operations and not views: {op:?} vs {view:?}").into());
    };
    ALIGN.store(align, Ordering::Relaxed);
    SIZE.store(size, Ordering::Relaxed);
    let config = viralclip_engine::model::EncoderFiles::open(std::path::Path::new(&dir))?.config;
    for s in step_times(&config, &Device::Cpu, 16, 128, 2, 2.0)? {
        println!("{}", serde_json::to_string(&s)?);
    }
    Ok(())
}
