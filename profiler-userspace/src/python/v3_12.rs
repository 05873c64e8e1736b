//! CPython 3.12. Offsets checked against DWARF of pyenv's 3.12.1 libpython (gdb `ptype /o`).

use profiler_common::{NO_OFFSET, PyOffsets, instr_kind};

use super::{
    CodeLayout, DictLayout, InstanceDict, Layout, LineTableFormat, ObjectHeader, ObjectLayout,
    ThreadId, ValueLayout, Version,
};

pub const LAYOUT: Layout = Layout {
    version: Version::new(3, 12),
    kernel: PyOffsets {
        // Include/internal/pycore_runtime.h: _PyRuntimeState.interpreters.head
        runtime_interpreters_head: 40,
        // Include/internal/pycore_interp.h: PyInterpreterState.threads.head
        interp_threads_head: 72,
        // Include/cpython/pystate.h: PyThreadState.next, .native_thread_id, .cframe
        tstate_next: 8,
        tstate_native_thread_id: 144,
        tstate_frame: 56,
        // Include/cpython/pystate.h: _PyCFrame.current_frame (now the first field)
        cframe_current_frame: 0,
        // Include/internal/pycore_frame.h: _PyInterpreterFrame.f_code, .previous, .prev_instr,
        // .owner
        frame_code: 0,
        frame_previous: 8,
        frame_instr: 56,
        frame_owner: 70,
        // Include/cpython/code.h: PyCodeObject
        code_firstlineno: 68,
        code_name: 120,
        code_filename: 112,
        instr_kind: instr_kind::POINTER,
        // Include/internal/pycore_frame.h: FRAME_OWNED_BY_CSTACK (interpreter entry shims)
        owner_cstack: 3,
        // Include/internal/pycore_interp.h: PyInterpreterState.ceval.gil (a pointer);
        // Include/internal/pycore_gil.h: _gil_runtime_state.locked, .last_holder
        gil_ptr_in_interp: 384,
        gil_in_runtime: NO_OFFSET,
        gil_locked: 16,
        gil_last_holder: 8,
        // f_code / f_executable is a plain pointer.
        frame_code_tag: 0,
        // Include/internal/pycore_interp.h: PyInterpreterState.gc (at 112);
        // Include/internal/pycore_gc.h: _gc_runtime_state.collecting (at 200)
        gc_collecting_in_interp: 312,
        gc_collecting_in_runtime: NO_OFFSET,
    },
    // Eval calls are marked by C-stack shim frames instead.
    entry_flag: NO_OFFSET,
    thread_id: ThreadId::Native,
    code: CodeLayout {
        filename: 112,
        name: 120,
        qualname: Some(128),
        firstlineno: 68,
        linetable: 136,
        linetable_format: LineTableFormat::Locations,
        code_adaptive: 192,
        instr_unit: 1,
    },
    // Include/cpython/unicodeobject.h (wstr gone: PyASCIIObject is 40 bytes)
    objects: ObjectLayout {
        // Include/object.h: ob_refcnt at 0
        header: ObjectHeader::Gil,
        unicode_length: 16,
        unicode_state: 32,
        unicode_kind_bit: 2,
        unicode_ascii_data: 40,
        unicode_compact_data: 56,
        bytes_size: 16,
        bytes_data: 32,
    },
    values: ValueLayout {
        // Include/cpython/longintrepr.h: PyLongObject.long_value.lv_tag (the sign in its low 2
        // bits, the digit count from bit 3: Include/internal/pycore_long.h SIGN_MASK,
        // NON_SIZE_BITS) in place of ob_size; ob_digit after it, where it was
        long_size: 16,
        long_tagged: true,
        long_digits: 24,
        dicts: DictLayout {
            // Include/internal/pycore_interp.h: PyInterpreterState.imports.modules
            interp_modules: 944,
            // Include/internal/pycore_object.h: _PyObject_DictOrValuesPointer (-3 words)
            instance: InstanceDict::DictOrValues,
            // Include/cpython/object.h: PyHeapTypeObject.ht_cached_keys (PyTypeObject gained
            // tp_watched)
            ht_cached_keys: 880,
            ..super::v3_11::LAYOUT.values.dicts
        },
        // Include/internal/pycore_frame.h: _PyInterpreterFrame.localsplus (still 72);
        // the code object's localsplus names and kinds and the other objects as in 3.11
        ..super::v3_11::LAYOUT.values
    },
    free_threaded: false,
    base_frame: false,
};
