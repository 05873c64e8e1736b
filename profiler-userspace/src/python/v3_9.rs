//! CPython 3.9: 3.8's layout but for the GIL's place in `_PyRuntime` (the runtime's ceval state
//! shrank). Checked against DWARF of pyenv's 3.9.18 libpython (gdb `ptype /o`): every other
//! offset in `v3_8` is the same.

use profiler_common::{NO_OFFSET, PyOffsets};

use super::{DictLayout, Layout, ValueLayout, Version, v3_8};

pub const LAYOUT: Layout = Layout {
    version: Version::new(3, 9),
    kernel: PyOffsets {
        // Include/internal/pycore_runtime.h: _PyRuntimeState.ceval.gil
        gil_in_runtime: 352,
        // Include/internal/pycore_interp.h: PyInterpreterState.gc (at 616), the collector's
        // state now per interpreter; Include/internal/pycore_gc.h: .collecting (at 200)
        gc_collecting_in_interp: 816,
        gc_collecting_in_runtime: NO_OFFSET,
        ..v3_8::LAYOUT.kernel
    },
    values: ValueLayout {
        dicts: DictLayout {
            // Include/internal/pycore_interp.h: PyInterpreterState.modules (after the ceval
            // and gc states that moved in)
            interp_modules: 856,
            // Include/cpython/object.h: PyHeapTypeObject.ht_cached_keys (tp_print gone)
            ht_cached_keys: 864,
            ..v3_8::LAYOUT.values.dicts
        },
        ..v3_8::LAYOUT.values
    },
    ..v3_8::LAYOUT
};
