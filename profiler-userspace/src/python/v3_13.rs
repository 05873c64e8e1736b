//! CPython 3.13. Offsets checked against DWARF of pyenv's 3.13.0 libpython (gdb `ptype /o`).
//! 3.13 also publishes these in `_Py_DebugOffsets` at the start of `_PyRuntime`
//! (`debug_offsets`), which prof-bpf reads from the live process and prefers; this table is the
//! fallback and the reference they are checked against.

use profiler_common::{NO_OFFSET, PyOffsets, instr_kind};

use super::{
    CodeLayout, DictLayout, InstanceDict, Layout, LineTableFormat, ObjectHeader, ObjectLayout,
    ThreadId, ValueLayout, Version,
};

pub const LAYOUT: Layout = Layout {
    version: Version::new(3, 13),
    kernel: PyOffsets {
        // Include/internal/pycore_runtime.h: _PyRuntimeState.interpreters.head (after the
        // _Py_DebugOffsets block)
        runtime_interpreters_head: 632,
        // Include/internal/pycore_interp.h: PyInterpreterState.threads.head
        interp_threads_head: 7344,
        // Include/cpython/pystate.h: PyThreadState.next, .native_thread_id, .current_frame
        tstate_next: 8,
        tstate_native_thread_id: 160,
        tstate_frame: 72,
        // _PyCFrame is gone: current_frame hangs off the thread state.
        cframe_current_frame: NO_OFFSET,
        // Include/internal/pycore_frame.h: _PyInterpreterFrame.f_executable, .previous,
        // .instr_ptr, .owner
        frame_code: 0,
        frame_previous: 8,
        frame_instr: 56,
        frame_owner: 70,
        // Include/cpython/code.h: PyCodeObject
        code_firstlineno: 68,
        code_name: 120,
        code_filename: 112,
        instr_kind: instr_kind::POINTER,
        // Include/internal/pycore_frame.h: FRAME_OWNED_BY_CSTACK (entry frames, no code)
        owner_cstack: 3,
        // Include/internal/pycore_interp.h: PyInterpreterState.ceval.gil (a pointer);
        // Include/internal/pycore_gil.h: _gil_runtime_state.locked, .last_holder
        gil_ptr_in_interp: 16,
        gil_in_runtime: NO_OFFSET,
        gil_locked: 16,
        gil_last_holder: 8,
        // f_code / f_executable is a plain pointer.
        frame_code_tag: 0,
        // Include/internal/pycore_interp.h: PyInterpreterState.gc (at 7400);
        // Include/internal/pycore_gc.h: _gc_runtime_state.collecting (at 200). Published as
        // interpreter_state.gc + gc.collecting.
        gc_collecting_in_interp: 7600,
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
        code_adaptive: 200,
        instr_unit: 1,
    },
    // Include/cpython/unicodeobject.h, Include/cpython/bytesobject.h
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
    // Include/internal/pycore_frame.h: _PyInterpreterFrame.localsplus (72, PyObject pointers
    // in the default build); the objects as in 3.12 (Include/cpython/longintrepr.h lv_tag)
    values: ValueLayout {
        dicts: DictLayout {
            // Include/internal/pycore_interp.h: PyInterpreterState.imports.modules (published
            // as interpreter_state.imports_modules)
            interp_modules: 7656,
            // Include/internal/pycore_dict.h: PyDictValues' capacity, size, embedded and valid
            // bytes come first now
            values_items: 8,
            // Include/internal/pycore_object.h: _PyObject_InlineValues, MANAGED_DICT_OFFSET
            instance: InstanceDict::InlineValues,
            ..super::v3_12::LAYOUT.values.dicts
        },
        ..super::v3_12::LAYOUT.values
    },
    free_threaded: false,
    base_frame: false,
};
