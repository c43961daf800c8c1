//! The memory budget's per-node charges (`opcount::budget`) against what the library really
//! allocates, measured with a counting allocator: for deep models of one-value layers, where
//! the per-node bookkeeping is everything, the peak heap of planning, counting and each
//! rendering of the report must stay within what the budget charges for it.
//!
//! One test function: the allocator's counts are global, so nothing else may run beside it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use opcount::budget::{
    CSV_BYTES_PER_NODE, JSON_BYTES_PER_NODE, NODE_BYTES, SVG_BYTES_PER_NODE, TABLE_BYTES_PER_NODE,
};
use opcount::data::Dataset;
use opcount::report::Report;
use opcount::{Model, estimate, measure_step};

/// The binary's SVG chart (not part of the library).
#[path = "../src/cli/chart.rs"]
mod chart;

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A rendering of the report, returning its length.
type Render<'a> = Box<dyn Fn() -> usize + 'a>;

/// Peak bytes allocated by `f` above what was live before it, and its result.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (out, (PEAK.load(Ordering::Relaxed) - before) as u64)
}

#[test]
fn the_budget_charges_cover_the_per_node_memory() {
    const NODES: u64 = 6_000;
    let deep = [
        ("Relu", "activation layers"),
        (
            "Dense(units: 1, name: \"a longer layer name\")",
            "dense layers",
        ),
        (
            "Dense(units: 1, activation: Tanh)",
            "dense layers with activations",
        ),
    ];
    for (layer, what) in deep {
        let per_layer = if layer.contains("activation") { 2 } else { 1 };
        let layers = vec![layer; (NODES / per_layer) as usize].join(", ");
        let text = format!("(name: \"deep\", input: [1], loss: Mse, layers: [{layers}])");
        // Parsing is charged as it goes; from the plan on, NODE_BYTES per node must cover
        // the plan, both step counts, a counted network and the report's rows.
        let model = Model::parse(&text, "deep.ron").unwrap();
        let (report, bookkeeping) = peak_of(|| {
            let plan = model.plan("deep.ron").unwrap();
            let data = Dataset::synthetic(&plan, 1, 0);
            let measured = measure_step(&plan, &data, 1);
            let estimated = estimate::step(&plan, 1).unwrap();
            let report = Report::new(&plan, 1, Some(measured), estimated);
            assert!(report.mismatches().is_empty());
            report
        });
        let renderings: [(&str, u64, Render); 4] = [
            (
                "table",
                TABLE_BYTES_PER_NODE,
                Box::new(|| report.table().len()),
            ),
            (
                "json",
                JSON_BYTES_PER_NODE,
                Box::new(|| serde_json::to_string_pretty(&report.json()).unwrap().len()),
            ),
            ("csv", CSV_BYTES_PER_NODE, Box::new(|| report.csv().len())),
            (
                "svg",
                SVG_BYTES_PER_NODE,
                Box::new(|| chart::svg(&report).len()),
            ),
        ];
        let per_node = |bytes: u64| bytes / NODES;
        eprintln!(
            "{what}: bookkeeping {} bytes per node",
            per_node(bookkeeping)
        );
        assert!(
            per_node(bookkeeping) <= NODE_BYTES,
            "{what}: {} bytes per node",
            per_node(bookkeeping)
        );
        for (name, charged, render) in renderings {
            let (_, peak) = peak_of(render);
            eprintln!("{what}: {name} {} bytes per node", per_node(peak));
            assert!(
                per_node(peak) <= charged,
                "{what}: {name}: {} bytes per node",
                per_node(peak)
            );
        }
    }
}
