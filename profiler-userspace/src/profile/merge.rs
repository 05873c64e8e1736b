//! Mixed stacks: puts each eval call's Python frames in place of the native interpreter frame
//! that ran them. Pure (frames in, frames out), so it is unit tested without a kernel.
//!
//! The kernel records the Python frames leaf first with the boundaries of eval calls marked (a
//! shim frame with code 0 at the bottom of each call, 3.12+; the `PY_ENTRY_FRAME` bit on each
//! call's first frame, 3.11; up to 3.10 every frame is its own call). Counted from the root,
//! the k-th native `_PyEval_EvalFrameDefault` frame ran the k-th call (see `merge` for the leaf,
//! where the two stacks may be a step apart).

use profiler_common::{PY_ENTRY_FRAME, PyFrame};

use crate::python::Version;

/// How a CPython version marks where one eval call's frames end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMarking {
    /// Every frame is its own eval call (up to 3.10: one PyFrameObject per call).
    EveryFrame,
    /// The first frame of a call has `PY_ENTRY_FRAME` set (3.11's `is_entry`).
    EntryFlag,
    /// A C-stack shim frame (recorded with code 0) sits below each call's frames (3.12+).
    ShimFrame,
}

impl EntryMarking {
    pub fn for_version(v: Version) -> Self {
        match (v.major, v.minor) {
            (3, 0..=10) => EntryMarking::EveryFrame,
            (3, 11) => EntryMarking::EntryFlag,
            _ => EntryMarking::ShimFrame,
        }
    }
}

/// Whether a native function is the interpreter's eval loop (or its `.cold` part).
pub fn is_eval_function(name: &str) -> bool {
    name.strip_prefix("_PyEval_EvalFrameDefault")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Splits leaf-first Python frames into eval calls, leaf call first; shim frames are dropped.
pub fn eval_calls(frames: &[PyFrame], marking: EntryMarking) -> Vec<Vec<PyFrame>> {
    let mut calls = Vec::new();
    let mut current = Vec::new();
    for f in frames {
        match marking {
            EntryMarking::ShimFrame if f.code == 0 => {
                calls.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(*f);
        let ends = match marking {
            EntryMarking::EveryFrame => true,
            EntryMarking::EntryFlag => f.instr & PY_ENTRY_FRAME != 0,
            EntryMarking::ShimFrame => false,
        };
        if ends {
            calls.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        calls.push(current);
    }
    // A 3.12 shim with nothing above it (an eval call that has not pushed a frame yet) still
    // stands for a native eval frame: keep empty groups.
    calls
}

/// 3.11 links a call's first frame into the thread's chain and marks it `is_entry` in two
/// stores that the compiler may order either way (Debian's build links it first): a sample
/// between the two sees the new call's frame unmarked, as if it ran in its caller's eval call,
/// and the eval frame just entered with nothing to put in its place. Where the native stack
/// holds more eval frames (`evals`) than there are calls and the leaf frame has run no
/// instruction yet (its position is before the code's first, `first_instr`), that frame is the
/// new call's: it is split off as a call of its own. (An eval frame whose call already returned
/// is the other way to have more eval frames than calls: its leaf frame is the caller's, which
/// has run.)
pub fn split_unmarked_entry(calls: &mut Vec<Vec<PyFrame>>, evals: usize, first_instr: u32) {
    if evals <= calls.len() {
        return;
    }
    let Some(leaf_call) = calls.first_mut() else {
        return;
    };
    let Some(leaf) = leaf_call.first() else {
        return;
    };
    let started = (leaf.instr & !PY_ENTRY_FRAME) >= first_instr;
    if leaf_call.len() < 2 || leaf.instr & PY_ENTRY_FRAME != 0 || started {
        return;
    }
    let callers = leaf_call.split_off(1);
    calls.insert(1, callers);
}

/// One frame of a mixed stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mixed {
    /// Index into the native frames (leaf first).
    Native(usize),
    Python(PyFrame),
    /// The native unwind stopped before the root: what is below is missing.
    Incomplete,
}

/// Merges a leaf-first native stack with leaf-first Python eval calls into a root-first mixed
/// stack. `is_eval[i]` says native frame `i` is the eval loop.
///
/// A complete native stack is matched from the root: the outermost eval frame ran the
/// outermost call. The two stacks can disagree only at the leaf, where a sample can fall
/// between the interpreter pushing a call's frame and entering the eval loop for it (or leaving
/// it): a call with no eval frame yet goes on top, an eval frame with no call stays a native
/// frame. When the native unwind stopped early (`complete` false) the root is missing, so the
/// stacks are matched from the leaf instead, and the Python frames of the calls the unwind did
/// not reach go at the root, above an `Incomplete` marker.
pub fn merge(is_eval: &[bool], complete: bool, calls: &[Vec<PyFrame>]) -> Vec<Mixed> {
    if complete {
        let mut root_first = Vec::new();
        let mut next = calls.len();
        for (i, &eval) in is_eval.iter().enumerate().rev() {
            if eval && next > 0 {
                next -= 1;
                root_first.extend(calls[next].iter().rev().copied().map(Mixed::Python));
            } else {
                root_first.push(Mixed::Native(i));
            }
        }
        // Calls the interpreter pushed but has not entered the eval loop for yet: on top.
        for call in calls[..next].iter().rev() {
            root_first.extend(call.iter().rev().copied().map(Mixed::Python));
        }
        return root_first;
    }
    let mut leaf_first = Vec::new();
    let mut next_call = 0;
    for (i, &eval) in is_eval.iter().enumerate() {
        if eval && next_call < calls.len() {
            leaf_first.extend(calls[next_call].iter().copied().map(Mixed::Python));
            next_call += 1;
        } else {
            leaf_first.push(Mixed::Native(i));
        }
    }
    leaf_first.push(Mixed::Incomplete);
    for call in &calls[next_call..] {
        leaf_first.extend(call.iter().copied().map(Mixed::Python));
    }
    leaf_first.reverse();
    leaf_first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(code: u64) -> PyFrame {
        PyFrame {
            code,
            instr: 0,
            tag: 0,
        }
    }

    fn entry(code: u64) -> PyFrame {
        PyFrame {
            code,
            instr: PY_ENTRY_FRAME,
            tag: 0,
        }
    }

    #[test]
    fn eval_names() {
        assert!(is_eval_function("_PyEval_EvalFrameDefault"));
        assert!(is_eval_function("_PyEval_EvalFrameDefault.cold"));
        assert!(!is_eval_function("_PyEval_EvalFrameDefaultX"));
        assert!(!is_eval_function("PyEval_EvalCode"));
    }

    #[test]
    fn splits_calls_per_version() {
        // Leaf first: key (callback) | shim | sorted's caller, main | shim.
        let shim = py(0);
        let calls = eval_calls(&[py(3), shim, py(2), py(1), shim], EntryMarking::ShimFrame);
        assert_eq!(calls, vec![vec![py(3)], vec![py(2), py(1)]]);
        let calls = eval_calls(&[entry(3), py(2), entry(1)], EntryMarking::EntryFlag);
        assert_eq!(calls, vec![vec![entry(3)], vec![py(2), entry(1)]]);
        let calls = eval_calls(&[py(3), py(2)], EntryMarking::EveryFrame);
        assert_eq!(calls, vec![vec![py(3)], vec![py(2)]]);
    }

    /// Python -> C builtin (sorted) -> Python key function: all three, in order.
    #[test]
    fn callback_nests_between_native_frames() {
        // Native leaf first: 0 eval (key), 1 sorted's C code, 2 eval (main), 3 main(), 4 _start.
        let is_eval = [true, false, true, false, false];
        let calls = vec![vec![py(30)], vec![py(20), py(10)]];
        let mixed = merge(&is_eval, true, &calls);
        assert_eq!(
            mixed,
            vec![
                Mixed::Native(4),
                Mixed::Native(3),
                Mixed::Python(py(10)),
                Mixed::Python(py(20)),
                Mixed::Native(1),
                Mixed::Python(py(30)),
            ]
        );
    }

    /// A sample between pushing slow_key's frame and entering the eval loop for it: the
    /// outer frames still line up, and the new call goes on top.
    #[test]
    fn a_call_not_yet_in_the_eval_loop_goes_on_top() {
        // Native leaf first: 0 _PyFunction_Vectorcall, 1 sorted's C code, 2 eval (main), 3 main.
        let is_eval = [false, false, true, false];
        let calls = vec![vec![py(30)], vec![py(20), py(10)]];
        assert_eq!(
            merge(&is_eval, true, &calls),
            vec![
                Mixed::Native(3),
                Mixed::Python(py(10)),
                Mixed::Python(py(20)),
                Mixed::Native(1),
                Mixed::Native(0),
                Mixed::Python(py(30)),
            ]
        );
        // An eval frame whose call was already popped stays a native frame.
        assert_eq!(
            merge(&[true, true, false], true, &[vec![py(1)]]),
            vec![Mixed::Native(2), Mixed::Python(py(1)), Mixed::Native(0)]
        );
    }

    /// 3.11: a sample between linking the key function's frame and marking it `is_entry`
    /// nests it as if it were marked; one whose leaf frame has run, or with as many eval frames
    /// as calls, is left as it is.
    #[test]
    fn an_unmarked_entry_frame_that_has_not_started_is_a_call_of_its_own() {
        let at = |code, instr| PyFrame {
            code,
            instr,
            tag: 0,
        };
        let first = 184;
        // Leaf first: key (not started, unmarked), sort_with_key, main (entry).
        let racing = vec![vec![
            at(30, first - 2),
            at(20, 300),
            at(10, 400 | PY_ENTRY_FRAME),
        ]];
        let mut calls = racing.clone();
        split_unmarked_entry(&mut calls, 2, first);
        assert_eq!(
            calls,
            vec![
                vec![at(30, first - 2)],
                vec![at(20, 300), at(10, 400 | PY_ENTRY_FRAME)]
            ]
        );
        // Then merged as a marked one is (callback_nests_between_native_frames).
        let mixed = merge(&[true, false, true, false, false], true, &calls);
        assert_eq!(
            mixed[2..],
            [
                Mixed::Python(at(10, 400 | PY_ENTRY_FRAME)),
                Mixed::Python(at(20, 300)),
                Mixed::Native(1),
                Mixed::Python(at(30, first - 2))
            ]
        );
        // A call that just returned (its caller at its call, which has run): unchanged.
        let mut returned = vec![vec![at(20, 300), at(10, 400 | PY_ENTRY_FRAME)]];
        split_unmarked_entry(&mut returned, 2, first);
        assert_eq!(returned.len(), 1);
        // A Python-to-Python call within one eval call (no eval frame to spare): unchanged.
        let mut inlined = racing.clone();
        split_unmarked_entry(&mut inlined, 1, first);
        assert_eq!(inlined, racing);
    }

    /// Up to 3.10 each call has its own frame object; 3.11 marks a call's first frame
    /// (`is_entry`); 3.12 on puts a C-stack shim frame under each call.
    #[test]
    fn entry_marking_follows_the_version() {
        let of = |minor| EntryMarking::for_version(Version::new(3, minor));
        for minor in 8..=10 {
            assert_eq!(of(minor), EntryMarking::EveryFrame, "3.{minor}");
        }
        assert_eq!(of(11), EntryMarking::EntryFlag);
        for minor in 12..=15 {
            assert_eq!(of(minor), EntryMarking::ShimFrame, "3.{minor}");
        }
    }

    /// An incomplete unwind whose eval frames outnumber the calls (one already popped): the
    /// spare eval frame stays native.
    #[test]
    fn incomplete_unwind_with_a_spare_eval_frame() {
        assert_eq!(
            merge(&[true, true], false, &[vec![py(1)]]),
            vec![Mixed::Incomplete, Mixed::Native(1), Mixed::Python(py(1))]
        );
    }

    #[test]
    fn incomplete_unwind_keeps_outer_python_frames_at_the_root() {
        // The unwind stopped after a C leaf and one eval frame.
        let mixed = merge(&[false, true], false, &[vec![py(2)], vec![py(1)]]);
        assert_eq!(
            mixed,
            vec![
                Mixed::Python(py(1)),
                Mixed::Incomplete,
                Mixed::Python(py(2)),
                Mixed::Native(0),
            ]
        );
    }
}
