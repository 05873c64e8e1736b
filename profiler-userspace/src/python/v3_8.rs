//! CPython 3.8. Offsets checked against DWARF of pyenv's 3.8.18 libpython (gdb `ptype /o`).
//! Frames are heap `PyFrameObject`s linked by `f_back`; the thread state holds a `pthread_t`,
//! not the kernel's thread id.

use profiler_common::{NO_CSTACK_OWNER, NO_OFFSET, PyOffsets, instr_kind};

use super::{
    CodeLayout, DictKeys, DictLayout, InstanceDict, Layout, LineTableFormat, LocalNames,
    MethodLayout, ObjectHeader, ObjectLayout, ThreadId, ValueLayout, Version,
};

pub const LAYOUT: Layout = Layout {
    version: Version::new(3, 8),
    kernel: PyOffsets {
        // Include/internal/pycore_runtime.h: _PyRuntimeState.interpreters.head
        runtime_interpreters_head: 32,
        // Include/internal/pycore_interp.h: PyInterpreterState.tstate_head
        interp_threads_head: 8,
        // Include/cpython/pystate.h: PyThreadState.next, .thread_id (pthread_self()), .frame
        tstate_next: 8,
        tstate_native_thread_id: 176,
        tstate_frame: 24,
        // No _PyCFrame: tstate->frame is the current PyFrameObject.
        cframe_current_frame: NO_OFFSET,
        // Include/cpython/frameobject.h: PyFrameObject.f_code, .f_back, .f_lasti
        frame_code: 32,
        frame_previous: 24,
        frame_instr: 104,
        // No owner byte: the kernel reads byte 0, which never equals NO_CSTACK_OWNER.
        frame_owner: 0,
        // Include/cpython/code.h: PyCodeObject
        code_firstlineno: 40,
        code_name: 112,
        code_filename: 104,
        instr_kind: instr_kind::INT,
        owner_cstack: NO_CSTACK_OWNER,
        // Include/internal/pycore_runtime.h: _PyRuntimeState.ceval.gil;
        // Include/internal/pycore_gil.h: _gil_runtime_state.locked, .last_holder
        gil_ptr_in_interp: NO_OFFSET,
        gil_in_runtime: 1152,
        gil_locked: 16,
        gil_last_holder: 8,
        // f_code / f_executable is a plain pointer.
        frame_code_tag: 0,
        // Include/internal/pycore_pystate.h: _PyRuntimeState.gc (at 344);
        // Include/internal/pycore_pymem.h: _gc_runtime_state.collecting (at 200)
        gc_collecting_in_interp: NO_OFFSET,
        gc_collecting_in_runtime: 544,
    },
    // Every PyFrameObject is its own eval call: no entry flag.
    entry_flag: NO_OFFSET,
    thread_id: ThreadId::Pthread,
    code: CodeLayout {
        filename: 104,
        name: 112,
        qualname: None,
        firstlineno: 40,
        // Include/cpython/code.h: PyCodeObject.co_lnotab
        linetable: 120,
        linetable_format: LineTableFormat::Lnotab,
        code_adaptive: 0,
        // f_lasti counts bytes.
        instr_unit: 1,
    },
    // Include/cpython/unicodeobject.h (PyASCIIObject still has wstr: 48 bytes),
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
        // Include/frameobject.h: PyFrameObject.f_localsplus (after the 20 f_blockstack entries)
        frame_localsplus: 360,
        // Include/code.h: PyCodeObject.co_varnames, .co_cellvars, .co_freevars
        names: LocalNames::Split {
            varnames: 72,
            cellvars: 88,
            freevars: 80,
        },
        // Slots are plain PyObject pointers.
        stack_ref_tag: 0,
        // Include/object.h: PyObject.ob_type; Include/cpython/object.h: PyTypeObject.tp_name,
        // .tp_flags
        ob_type: 8,
        tp_name: 24,
        tp_flags: 168,
        // Include/tupleobject.h, Include/listobject.h: PyVarObject.ob_size, PyTupleObject.ob_item
        tuple_size: 16,
        tuple_items: 24,
        list_size: 16,
        // Include/cpython/dictobject.h: PyDictObject.ma_used; Include/setobject.h:
        // PySetObject.used (after fill)
        dict_used: 16,
        set_used: 24,
        // Include/floatobject.h: PyFloatObject.ob_fval
        float_value: 16,
        // Include/longintrepr.h: PyLongObject's ob_size (sign and digit count), ob_digit
        long_size: 16,
        long_tagged: false,
        long_digits: 24,
        // Include/cellobject.h: PyCellObject.ob_ref
        cell_ref: 16,
        dicts: DictLayout {
            // Include/internal/pycore_pystate.h: PyInterpreterState.modules
            interp_modules: 56,
            // Objects/dict-common.h: PyDictKeysObject; split values are a plain array
            keys: DictKeys::Sized,
            values_items: 0,
            instance: InstanceDict::Offset,
            // Include/cpython/object.h: PyHeapTypeObject.ht_cached_keys (PyTypeObject is 416
            // bytes, tp_print kept for 3.8 only)
            ht_cached_keys: 872,
        },
        methods: Some(METHODS),
    },
    free_threaded: false,
    base_frame: false,
};

/// Include/funcobject.h: PyFunctionObject.func_code, .func_qualname; Objects/funcobject.c:
/// classmethod.cm_callable (staticmethod.sm_callable alike); Include/cpython/object.h:
/// PyTypeObject.tp_dict, .tp_mro.
pub const METHODS: MethodLayout = MethodLayout {
    func_code: 16,
    func_qualname: 104,
    wrapped_callable: 16,
    tp_dict: 264,
    tp_mro: 344,
};
