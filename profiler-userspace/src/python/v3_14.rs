//! CPython 3.14: 3.13's layout but for the runtime's interpreter list (the debug offsets block
//! before it grew), the frame (`f_executable` became a tagged `_PyStackRef`, `owner` moved,
//! and a new owner value sits below the C-stack one), the GIL's place in the interpreter, the
//! code object's bytecode (`_co_unique_id` inserted before it), where a frame's locals start
//! and a tuple's items (after its new cached hash). Checked against the
//! `_Py_DebugOffsets` of Debian forky's 3.14.8 (`tests/data/debug_offsets/3.14.txt`) and the
//! DWARF of its `python3.14-dbg`; every other offset in `v3_13` is the same. 3.14 publishes
//! these too, and prof-bpf prefers what the process publishes.

use profiler_common::PyOffsets;

use super::{
    CodeLayout, DictLayout, Layout, ValueLayout, Version, debug_offsets::STACK_REF_TAG_BITS, v3_13,
};

pub const LAYOUT: Layout = Layout {
    version: Version::new(3, 14),
    kernel: PyOffsets {
        // Include/internal/pycore_runtime_structs.h: _PyRuntimeState.interpreters.head
        runtime_interpreters_head: 808,
        // Include/internal/pycore_interpframe_structs.h: _PyInterpreterFrame.owner (after
        // stackpointer and return_offset)
        frame_owner: 74,
        // Include/internal/pycore_interpframe_structs.h: FRAME_OWNED_BY_INTERPRETER (3) and
        // FRAME_OWNED_BY_CSTACK (4) frames run no code: the kernel skips owners from 3 up.
        owner_cstack: 3,
        // Include/internal/pycore_stackref.h: f_executable is a _PyStackRef, Py_TAG_BITS
        frame_code_tag: STACK_REF_TAG_BITS,
        // Include/internal/pycore_gil.h: _gil_runtime_state.locked, .last_holder (same as
        // 3.13; interp->_gil moved to 7784, found through ceval.gil at 16 as before).
        // Include/internal/pycore_interp_structs.h: PyInterpreterState.gc (at 7408) and
        // _gc_runtime_state.collecting (at 192): 7600 again, as in 3.13.
        ..v3_13::LAYOUT.kernel
    },
    code: CodeLayout {
        // Include/cpython/code.h: co_code_adaptive, after the new _co_unique_id
        code_adaptive: 208,
        ..v3_13::LAYOUT.code
    },
    values: ValueLayout {
        // Include/internal/pycore_interpframe_structs.h: _PyInterpreterFrame.localsplus (after
        // stackpointer became a pointer and owner moved), an array of _PyStackRef
        frame_localsplus: 80,
        // Include/internal/pycore_stackref.h: Py_TAG_BITS; Py_INT_TAG (3) marks a tagged int
        stack_ref_tag: STACK_REF_TAG_BITS,
        // Include/cpython/tupleobject.h: PyTupleObject.ob_item, after the new cached ob_hash
        tuple_items: 32,
        dicts: DictLayout {
            // Include/internal/pycore_interp_structs.h: PyInterpreterState.imports.modules
            // (published as interpreter_state.imports_modules)
            interp_modules: 7688,
            // PyHeapTypeObject.ht_cached_keys where 3.13 has it (published from 3.15 only)
            ..v3_13::LAYOUT.values.dicts
        },
        ..v3_13::LAYOUT.values
    },
    ..v3_13::LAYOUT
};
