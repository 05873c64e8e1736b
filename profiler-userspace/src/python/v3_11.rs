//! CPython 3.11. Offsets checked against DWARF of pyenv's 3.11.7 libpython (gdb `ptype /o`).

use profiler_common::{NO_CSTACK_OWNER, NO_OFFSET, PyOffsets, instr_kind};

use super::{
    CodeLayout, DictKeys, DictLayout, InstanceDict, Layout, LineTableFormat, LocalNames,
    ObjectHeader, ObjectLayout, ThreadId, ValueLayout, Version,
};

pub const LAYOUT: Layout = Layout {
    version: Version::new(3, 11),
    kernel: PyOffsets {
        // Include/internal/pycore_runtime.h: _PyRuntimeState.interpreters.head
        runtime_interpreters_head: 40,
        // Include/internal/pycore_interp.h: PyInterpreterState.threads.head
        interp_threads_head: 16,
        // Include/cpython/pystate.h: PyThreadState.next, .native_thread_id, .cframe
        tstate_next: 8,
        tstate_native_thread_id: 160,
        tstate_frame: 56,
        // Include/cpython/pystate.h: _PyCFrame.current_frame
        cframe_current_frame: 8,
        // Include/internal/pycore_frame.h: _PyInterpreterFrame.f_code, .previous, .prev_instr,
        // .owner
        frame_code: 32,
        frame_previous: 48,
        frame_instr: 56,
        frame_owner: 69,
        // Include/cpython/code.h: PyCodeObject
        code_firstlineno: 72,
        code_name: 120,
        code_filename: 112,
        instr_kind: instr_kind::POINTER,
        // 3.11 has no C-stack shim frames (its entry frames are flagged `is_entry` instead).
        owner_cstack: NO_CSTACK_OWNER,
        // Include/internal/pycore_runtime.h: _PyRuntimeState.ceval.gil;
        // Include/internal/pycore_gil.h: _gil_runtime_state.locked, .last_holder
        gil_ptr_in_interp: NO_OFFSET,
        gil_in_runtime: 360,
        gil_locked: 16,
        gil_last_holder: 8,
        // f_code / f_executable is a plain pointer.
        frame_code_tag: 0,
        // Include/internal/pycore_interp.h: PyInterpreterState.gc (at 648);
        // Include/internal/pycore_gc.h: _gc_runtime_state.collecting (at 200)
        gc_collecting_in_interp: 848,
        gc_collecting_in_runtime: NO_OFFSET,
    },
    // Include/internal/pycore_frame.h: _PyInterpreterFrame.is_entry
    entry_flag: 68,
    thread_id: ThreadId::Native,
    code: CodeLayout {
        filename: 112,
        name: 120,
        qualname: Some(128),
        firstlineno: 72,
        linetable: 136,
        linetable_format: LineTableFormat::Locations,
        code_adaptive: 184,
        instr_unit: 1,
    },
    // Include/cpython/unicodeobject.h (3.11 still has wstr: PyASCIIObject is 48 bytes),
    // Include/cpython/bytesobject.h
    objects: ObjectLayout {
        // Include/object.h: ob_refcnt at 0
        header: ObjectHeader::Gil,
        unicode_length: 16,
        unicode_state: 32,
        unicode_kind_bit: 2,
        unicode_ascii_data: 48,
        unicode_compact_data: 72,
        bytes_size: 16,
        bytes_data: 32,
    },
    values: ValueLayout {
        // Include/internal/pycore_frame.h: _PyInterpreterFrame.localsplus
        frame_localsplus: 72,
        // Include/cpython/code.h: PyCodeObject.co_localsplusnames, .co_localspluskinds
        names: LocalNames::Kinds {
            names: 96,
            kinds: 104,
        },
        stack_ref_tag: 0,
        dicts: DictLayout {
            // Include/internal/pycore_interp.h: PyInterpreterState.modules
            interp_modules: 888,
            // Include/internal/pycore_dict.h: PyDictKeysObject with dk_log2_size and dk_kind
            keys: DictKeys::Log2,
            values_items: 0,
            // Include/internal/pycore_object.h: _PyObject_ManagedDictPointer (-3 words),
            // _PyObject_ValuesPointer (-4)
            instance: InstanceDict::Managed,
            // Include/cpython/object.h: PyHeapTypeObject.ht_cached_keys
            ht_cached_keys: 872,
        },
        // co_qualname names a method with its class.
        methods: None,
        // Include/object.h, Include/cpython/object.h, Include/cpython/tupleobject.h,
        // Include/cpython/listobject.h, Include/cpython/dictobject.h,
        // Include/cpython/setobject.h, Include/cpython/floatobject.h,
        // Include/cpython/longintrepr.h (ob_size still signs the digit count),
        // Include/cpython/cellobject.h: as in 3.8
        ..super::v3_10::LAYOUT.values
    },
    free_threaded: false,
    base_frame: false,
};
