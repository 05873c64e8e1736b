//! CPython 3.15: 3.14's layout but for the runtime's interpreter list, the interpreter's thread
//! list and the thread state's native thread id (the profiler-support fields inserted before
//! it), the garbage collector's state (its generation stats became a pointer), and a base frame
//! that ends every thread's frame chain. Checked against the
//! `_Py_DebugOffsets` of Debian forky's 3.15.0 (`tests/data/debug_offsets/3.15.txt`) and the
//! DWARF of its `python3.15-dbg`; every other offset in `v3_14` is the same.

use profiler_common::PyOffsets;

use super::{DictLayout, Layout, ValueLayout, Version, v3_14};

pub const LAYOUT: Layout = Layout {
    version: Version::new(3, 15),
    kernel: PyOffsets {
        // Include/internal/pycore_runtime_structs.h: _PyRuntimeState.interpreters.head
        runtime_interpreters_head: 936,
        // Include/internal/pycore_interp_structs.h: PyInterpreterState.threads.head
        interp_threads_head: 7336,
        // Include/cpython/pystate.h: PyThreadState.native_thread_id (after base_frame,
        // last_profiled_frame and its sequence number)
        tstate_native_thread_id: 184,
        // Include/internal/pycore_interp_structs.h: PyInterpreterState.gc (at 7400),
        // _gc_runtime_state.collecting (at 112: the generation stats became a pointer)
        gc_collecting_in_interp: 7512,
        // FRAME_OWNED_BY_CSTACK is gone; FRAME_OWNED_BY_INTERPRETER (3) is the only owner
        // without code.
        ..v3_14::LAYOUT.kernel
    },
    // Include/cpython/pystate.h: PyThreadState.base_frame, a frame owned by the interpreter at
    // the root of every thread's chain.
    base_frame: true,
    values: ValueLayout {
        dicts: DictLayout {
            // Include/internal/pycore_interp_structs.h: PyInterpreterState.imports.modules;
            // Include/cpython/object.h: PyHeapTypeObject.ht_cached_keys, 8 bytes on (both
            // published)
            interp_modules: 7592,
            ht_cached_keys: 888,
            ..v3_14::LAYOUT.values.dicts
        },
        ..v3_14::LAYOUT.values
    },
    ..v3_14::LAYOUT
};
