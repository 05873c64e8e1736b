//! CPython 3.10: 3.9's layout but for the frame's instruction position, the line table, where
//! the frame's locals start and a function object's fields.
//! Checked against DWARF of pyenv's 3.10.13 libpython (gdb `ptype /o`): every other offset in
//! `v3_9` is the same.

use profiler_common::PyOffsets;

use super::{
    CodeLayout, DictLayout, Layout, LineTableFormat, MethodLayout, ValueLayout, Version, v3_8, v3_9,
};

pub const LAYOUT: Layout = Layout {
    version: Version::new(3, 10),
    kernel: PyOffsets {
        // Include/cpython/frameobject.h: PyFrameObject.f_lasti (f_stackdepth replaced
        // f_stacktop before it)
        frame_instr: 96,
        ..v3_9::LAYOUT.kernel
    },
    code: CodeLayout {
        // Include/cpython/code.h: PyCodeObject.co_linetable, where co_lnotab was
        linetable_format: LineTableFormat::Linetable310,
        // f_lasti counts 2-byte code units now, not bytes.
        instr_unit: 2,
        ..v3_9::LAYOUT.code
    },
    values: ValueLayout {
        // Include/cpython/frameobject.h: PyFrameObject.f_localsplus (f_stacktop's removal and
        // f_stackdepth/f_state moved it 8 bytes up)
        frame_localsplus: 352,
        dicts: DictLayout {
            // Include/cpython/object.h: PyHeapTypeObject.ht_cached_keys (PyAsyncMethods gained
            // am_send)
            ht_cached_keys: 872,
            ..v3_9::LAYOUT.values.dicts
        },
        // Include/funcobject.h: PyFunctionObject's fields shared with PyFrameConstructor
        // (COMMON_FIELDS) came first, func_qualname and func_code among them.
        methods: Some(MethodLayout {
            func_qualname: 40,
            func_code: 48,
            ..v3_8::METHODS
        }),
        ..v3_9::LAYOUT.values
    },
    ..v3_9::LAYOUT
};
