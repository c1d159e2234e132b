//! Memory per device in the delta state, measured with a counting allocator (not timed).
//!
//! Offers 1,000,000 devices two readings each (so each has an emitted baseline and a
//! realistic name), takes the rows away, and reports the heap the state still holds per device
//! (the durable state: baseline, name, index). It also reports the figure while the two
//! readings still wait within the allowed lateness (pending buffers included).
//! Run with `cargo bench --bench state_memory`.
// A global allocator is unsafe to implement; this one only forwards to the system's.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use meterflow::deltas::{Deltas, Offer};
use meterflow::timestamp::MICROS_PER_MINUTE;

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const DEVICES: i32 = 1_000_000;
const TARGET_BYTES_PER_DEVICE: f64 = 150.0;

fn main() {
    let names: Vec<String> = (0..DEVICES)
        .map(|i| format!("Sha Tin meter {i:07}"))
        .collect();
    let before = LIVE.load(Ordering::Relaxed);
    let mut deltas = Deltas::new(10 * MICROS_PER_MINUTE);
    for step in 0..2i64 {
        for (i, name) in names.iter().enumerate() {
            let offer = Offer {
                device_id: 1_000_000 + i as i32,
                time: step * 5 * MICROS_PER_MINUTE,
                cumulative_energy: 100.0 + step as f64,
                device_name: name,
                index: 0,
            };
            deltas.apply_message(0, [offer], |_, _| {});
        }
    }
    let in_flight = (LIVE.load(Ordering::Relaxed) - before) as f64 / f64::from(DEVICES);
    deltas.flush();
    let rows: usize = deltas.take_rows().iter().map(|day| day.len()).sum();
    assert_eq!(rows, 2 * DEVICES as usize);
    let held = (LIVE.load(Ordering::Relaxed) - before) as f64;
    let per_device = held / f64::from(DEVICES);
    println!(
        "state_memory: while each device also buffers its 2 readings within the lateness: \
         {in_flight:.1} bytes per device"
    );
    println!(
        "state_memory: {DEVICES} devices hold {:.1} MB of heap: {per_device:.1} bytes per device \
         (name of {} bytes included; target <= {TARGET_BYTES_PER_DEVICE}); ratio to target {:.2}",
        held / 1e6,
        names[0].len(),
        per_device / TARGET_BYTES_PER_DEVICE
    );
    assert_eq!(deltas.device_count(), DEVICES as usize);
}
