//! A method's qualified name up to 3.10, whose code objects have no `co_qualname`: found from
//! the frame's first argument, as py-spy does (`self` is an instance of the class, `cls` is the
//! class), then the class that defines the method, looked up along that class's method
//! resolution order for the function running this code object, so a method a subclass
//! inherits is named by the class it is written in, as `co_qualname` names it from 3.11. Reads
//! the target's memory as `MethodLayout` places the objects; pure over `ProcessMemory`.

use super::{
    Layout, LocalNames, MethodLayout,
    code::{CodeError, read_str, read_str_prefix},
    locals::read_c_string,
    objects::{dict_items, lookup},
};
use crate::process::ProcessMemory;

/// Classes looked at along a method resolution order.
const MAX_MRO: u64 = 64;
/// Bytes of a type's name.
const MAX_TYPE_NAME: usize = 128;

// Include/object.h: PyTypeObject.tp_flags bit of a type's type (a metaclass).
const TPFLAGS_TYPE_SUBCLASS: u64 = 1 << 31;

/// What a code object's first argument is, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FirstArg {
    /// `self`: an instance of the class.
    Instance,
    /// `cls`: the class.
    Class,
}

/// The qualified name (`Class.method`) of the code object at `code`, named `name`, run by a
/// frame whose first local was `first` of type `first_type`: None where the code object is not
/// a method's (its first argument is not `self` or `cls`), or the layout's version has
/// `co_qualname`. A method not found in its class's dicts (a decorated one, say) is named by
/// the class of its first argument.
pub fn qualified_name(
    mem: &impl ProcessMemory,
    layout: &Layout,
    code: u64,
    name: &str,
    first: u64,
    first_type: u64,
) -> Option<String> {
    let m = layout.values.methods?;
    if first == 0 || first_type == 0 {
        return None;
    }
    let class = match first_arg(mem, layout, code).ok()?? {
        FirstArg::Instance => first_type,
        FirstArg::Class => {
            let flags = read_u64(mem, first_type, layout.values.tp_flags).ok()?;
            (flags & TPFLAGS_TYPE_SUBCLASS != 0).then_some(first)?
        }
    };
    if let Ok(Some(q)) = defined_name(mem, layout, &m, class, code, name) {
        return Some(q);
    }
    let tp_name = read_u64(mem, class, layout.values.tp_name).ok()?;
    let class_name = read_c_string(mem, tp_name, MAX_TYPE_NAME).ok()?;
    // `type(x).__name__`: a built-in type's tp_name has its module in front.
    let short = class_name.rsplit('.').next().unwrap_or(&class_name);
    Some(format!("{short}.{name}"))
}

/// The qualified name of the frame at `frame`, running the code object at `code`, from its
/// first local read now (`dump`).
pub fn frame_qualified_name(
    mem: &impl ProcessMemory,
    layout: &Layout,
    frame: u64,
    code: u64,
) -> Option<String> {
    layout.values.methods?;
    let v = &layout.values;
    let first = read_u64(mem, frame, v.frame_localsplus).ok()?;
    let first_type = read_u64(mem, first, v.ob_type).ok()?;
    let name = read_str(mem, layout, read_u64(mem, code, layout.code.name).ok()?).ok()?;
    qualified_name(mem, layout, code, &name, first, first_type)
}

/// Whether the code object at `code` takes `self` or `cls` first (None: neither).
fn first_arg(
    mem: &impl ProcessMemory,
    layout: &Layout,
    code: u64,
) -> Result<Option<FirstArg>, CodeError> {
    let LocalNames::Split { varnames, .. } = layout.values.names else {
        return Ok(None);
    };
    let names = read_u64(mem, code, varnames)?;
    let v = &layout.values;
    if read_u64(mem, names, v.tuple_size)? as i64 <= 0 {
        return Ok(None);
    }
    let first = read_u64(mem, names, v.tuple_items)?;
    let (text, _) = read_str_prefix(mem, layout, first, 5)?;
    Ok(match text.as_str() {
        "self" => Some(FirstArg::Instance),
        "cls" => Some(FirstArg::Class),
        _ => None,
    })
}

/// `__qualname__` of the function named `name` that runs the code object at `code`, in the
/// dict of `class` or of the first class along its method resolution order that has one; a
/// `classmethod` or `staticmethod` is looked through.
fn defined_name(
    mem: &impl ProcessMemory,
    layout: &Layout,
    m: &MethodLayout,
    class: u64,
    code: u64,
    name: &str,
) -> Result<Option<String>, CodeError> {
    let v = &layout.values;
    let mro = read_u64(mem, class, m.tp_mro)?;
    let len = (read_u64(mem, mro, v.tuple_size)? as i64).clamp(0, MAX_MRO as i64) as usize;
    let classes = mem.read_vec(mro.wrapping_add(v.tuple_items as u64), len * 8)?;
    for c in classes.chunks_exact(8) {
        let c = u64::from_le_bytes(c.try_into().unwrap_or_default());
        let dict = read_u64(mem, c, m.tp_dict)?;
        if dict == 0 {
            continue;
        }
        let Some(mut f) = lookup(mem, layout, &dict_items(mem, layout, dict)?, name) else {
            continue;
        };
        let ty = read_u64(mem, f, v.ob_type)?;
        let ty_name = read_c_string(mem, read_u64(mem, ty, v.tp_name)?, MAX_TYPE_NAME)?;
        if ty_name == "classmethod" || ty_name == "staticmethod" {
            f = read_u64(mem, f, m.wrapped_callable)?;
        }
        if read_u64(mem, f, m.func_code)? == code {
            return read_str(mem, layout, read_u64(mem, f, m.func_qualname)?).map(Some);
        }
    }
    Ok(None)
}

/// The word at `offset` in the object at `addr`.
fn read_u64(mem: &impl ProcessMemory, addr: u64, offset: u16) -> Result<u64, CodeError> {
    Ok(mem.read_u64(addr.wrapping_add(offset as u64))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::{
        Version, layout_for,
        test_heap::{Heap, Objects},
    };

    /// A class named `name` (tp_flags `flags`) whose dict holds `entries`; its MRO is set by
    /// `mro`.
    fn class(o: &mut Objects, name: &str, flags: u64, entries: &[(&str, u64)]) -> u64 {
        let v = o.layout.values;
        let m = v.methods.unwrap();
        let t = o.ty(name, flags);
        let entries: Vec<(u64, u64)> = entries.iter().map(|&(k, f)| (o.str(k), f)).collect();
        let dict = o.alloc(64);
        let keys = o.keys(&entries, false);
        o.word(dict + v.dict_used as u64 + 16, keys);
        o.word(t + m.tp_dict as u64, dict);
        t
    }

    fn mro(o: &mut Objects, class: u64, mro: &[u64]) {
        let m = o.layout.values.methods.unwrap();
        let t = o.tuple(mro);
        o.word(class + m.tp_mro as u64, t);
    }

    /// A code object whose first argument is `first`.
    fn code(o: &mut Objects, first: &str) -> u64 {
        let LocalNames::Split { varnames, .. } = o.layout.values.names else {
            unreachable!()
        };
        let code = o.alloc(256);
        let name = o.str(first);
        let names = o.tuple(&[name]);
        o.word(code + varnames as u64, names);
        code
    }

    /// A function of type `function` (at `ty`) running `code`, qualified as `qualname`.
    fn function(o: &mut Objects, ty: u64, code: u64, qualname: &str) -> u64 {
        let m = o.layout.values.methods.unwrap();
        let f = o.instance(ty, 128);
        o.word(f + m.func_code as u64, code);
        let q = o.str(qualname);
        o.word(f + m.func_qualname as u64, q);
        f
    }

    /// `Child(Base)`: `Base.speak` inherited, `Child.run` its own, `Child.make` a classmethod,
    /// `wrapped` decorated (its dict holds a wrapper's function), `helper(x)` no method; each
    /// named as its `__qualname__` says, or by the class of `self` where that is not found.
    fn check(minor: u8) {
        let mut o = Objects::new(layout_for(Version::new(3, minor)).unwrap());
        let meta = class(&mut o, "type", TPFLAGS_TYPE_SUBCLASS, &[]);
        let function_type = class(&mut o, "function", 0, &[]);
        let classmethod = class(&mut o, "classmethod", 0, &[]);
        let (speak, run, make, wrapped, helper) = (
            code(&mut o, "self"),
            code(&mut o, "self"),
            code(&mut o, "cls"),
            code(&mut o, "self"),
            code(&mut o, "x"),
        );
        let speak_f = function(&mut o, function_type, speak, "Base.speak");
        let run_f = function(&mut o, function_type, run, "Child.run");
        let make_f = function(&mut o, function_type, make, "Child.make");
        let make_cm = o.instance(classmethod, 64);
        let m = o.layout.values.methods.unwrap();
        o.word(make_cm + m.wrapped_callable as u64, make_f);
        let wrapper_code = code(&mut o, "args");
        let wrapper = function(
            &mut o,
            function_type,
            wrapper_code,
            "decorate.<locals>.wrapper",
        );
        let base = class(&mut o, "Base", 0, &[("speak", speak_f), ("run", speak_f)]);
        let child = class(
            &mut o,
            "Child",
            0,
            &[("run", run_f), ("make", make_cm), ("wrapped", wrapper)],
        );
        let object = class(&mut o, "object", 0, &[]);
        mro(&mut o, base, &[base, object]);
        mro(&mut o, child, &[child, base, object]);
        mro(&mut o, object, &[object]);
        o.heap.word(child + o.layout.values.ob_type as u64, meta);
        let instance = o.instance(child, 64);
        let mem = o.mem();
        let l = &o.layout;
        let name = |code, n, first, ty| qualified_name(&mem, l, code, n, first, ty);
        assert_eq!(
            name(speak, "speak", instance, child).as_deref(),
            Some("Base.speak"),
            "3.{minor}"
        );
        assert_eq!(
            name(run, "run", instance, child).as_deref(),
            Some("Child.run")
        );
        assert_eq!(
            name(make, "make", child, meta).as_deref(),
            Some("Child.make")
        );
        assert_eq!(
            name(wrapped, "wrapped", instance, child).as_deref(),
            Some("Child.wrapped")
        );
        assert_eq!(name(helper, "helper", instance, child), None);
        // `cls` bound to something other than a class: no method of it.
        assert_eq!(name(make, "make", instance, child), None);
        // Nothing read: no name.
        assert_eq!(name(run, "run", 0, 0), None);
    }

    #[test]
    fn methods_are_named_by_the_class_that_defines_them() {
        for minor in 8..=10 {
            check(minor);
        }
    }

    #[test]
    fn versions_with_co_qualname_need_no_method_lookup() {
        for minor in 11..=15 {
            let layout = layout_for(Version::new(3, minor)).unwrap();
            assert_eq!(layout.values.methods, None, "3.{minor}");
            assert_eq!(
                qualified_name(&Heap::new().mem(), &layout, 1, "f", 1, 1),
                None
            );
        }
    }
}
