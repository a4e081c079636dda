//! The allocator's own account of the process's memory (jemalloc's `stats.*`), exported as
//! `pathpulse_allocator_bytes{kind}`: how much of the RSS is live data (`allocated`), how
//! much pages that hold it (`active`: size classes and partly used pages) and how much
//! freed memory not yet returned to the system. An aggregator's memory per path is judged
//! by its RSS; this says how much of it is the data itself.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

/// jemalloc's statistics, in bytes (see its manual, `stats.*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heap {
    /// Bytes the program has allocated and not freed.
    pub allocated: u64,
    /// Bytes in pages that hold allocations (≥ allocated).
    pub active: u64,
    /// Bytes of the allocator's own bookkeeping.
    pub metadata: u64,
    /// Bytes in physically resident pages the allocator maps (≥ active + metadata).
    pub resident: u64,
    /// Bytes in extents mapped by the allocator.
    pub mapped: u64,
    /// Bytes kept as virtual memory but returned to the system.
    pub retained: u64,
}

impl Heap {
    /// The statistics now, or `None` when jemalloc does not answer (a build without
    /// statistics).
    pub fn read() -> Option<Heap> {
        // Statistics are a snapshot taken when `epoch` is written.
        let mut epoch: u64 = 1;
        ctl_write(c"epoch", &mut epoch)?;
        Some(Heap {
            allocated: ctl_read(c"stats.allocated")?,
            active: ctl_read(c"stats.active")?,
            metadata: ctl_read(c"stats.metadata")?,
            resident: ctl_read(c"stats.resident")?,
            mapped: ctl_read(c"stats.mapped")?,
            retained: ctl_read(c"stats.retained")?,
        })
    }

    fn kinds(&self) -> [(&'static str, u64); 6] {
        [
            ("allocated", self.allocated),
            ("active", self.active),
            ("metadata", self.metadata),
            ("resident", self.resident),
            ("mapped", self.mapped),
            ("retained", self.retained),
        ]
    }
}

/// Read a `size_t` statistic.
#[allow(unsafe_code)]
fn ctl_read(name: &std::ffi::CStr) -> Option<u64> {
    let mut v: usize = 0;
    let mut len = std::mem::size_of::<usize>();
    // SAFETY: `name` is NUL-terminated; `v` and `len` are valid for writes and `len` is
    // the size of `v`, the type jemalloc documents for `stats.*` (size_t); no new value.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            (&raw mut v).cast(),
            &raw mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0 && len == std::mem::size_of::<usize>()).then_some(v as u64)
}

/// Write a `uint64_t` control (`epoch`).
#[allow(unsafe_code)]
fn ctl_write(name: &std::ffi::CStr, value: &mut u64) -> Option<()> {
    // SAFETY: `name` is NUL-terminated; `value` is valid for reads of its size, the type
    // jemalloc documents for `epoch` (uint64_t); no old value is read.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::from_mut(value).cast(),
            std::mem::size_of::<u64>(),
        )
    };
    (rc == 0).then_some(())
}

/// `pathpulse_allocator_bytes{kind}`, read on every scrape.
#[derive(Debug, Default)]
pub struct HeapCollector;

impl Collector for HeapCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(heap) = Heap::read() else {
            return Ok(());
        };
        let mut m = enc.encode_descriptor(
            "pathpulse_allocator_bytes",
            "The aggregator's memory as its allocator (jemalloc) counts it, by kind: allocated (live data), active (pages holding it), metadata, resident, mapped, retained (returned to the system).",
            None,
            MetricType::Gauge,
        )?;
        for (kind, v) in heap.kinds() {
            m.encode_family(&[("kind", kind)])?
                .encode_gauge(&(v as i64))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// jemalloc answers (linked with statistics) with figures that hang together, and an
    /// allocation made through it shows in `allocated`. (Tests run on the system allocator;
    /// the aggregator's binary sets jemalloc as the global one.)
    #[test]
    fn jemalloc_statistics_are_read_and_move_with_allocations() {
        let before = Heap::read().expect("jemalloc statistics");
        let layout = std::alloc::Layout::from_size_align(64 << 20, 8).expect("layout");
        let jem = tikv_jemallocator::Jemalloc;
        #[allow(unsafe_code)]
        // SAFETY: a non-zero size; freed below with the same layout and allocator.
        let p = unsafe { std::alloc::GlobalAlloc::alloc(&jem, layout) };
        assert!(!p.is_null());
        let during = Heap::read().expect("jemalloc statistics");
        #[allow(unsafe_code)]
        // SAFETY: allocated above by `jem` with `layout`.
        unsafe {
            std::alloc::GlobalAlloc::dealloc(&jem, p, layout)
        };
        let after = Heap::read().expect("jemalloc statistics");
        assert!(
            during.allocated >= before.allocated + (64 << 20),
            "{before:?} -> {during:?}"
        );
        assert!(after.allocated + (64 << 20) <= during.allocated + (1 << 20));
        assert!(during.active >= during.allocated && during.mapped >= during.active);
    }
}
