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
    use crate::python::{Version, layout_for, test_heap::Heap};

    /// Objects built by hand for one version.
    struct Objects {
        heap: Heap,
        layout: Layout,
        str_type: u64,
    }

    impl Objects {
        fn new(minor: u8) -> Self {
            let layout = layout_for(Version::new(3, minor)).unwrap();
            let mut heap = Heap::new();
            let str_type = heap.alloc(512);
            let mut o = Self {
                heap,
                layout,
                str_type,
            };
            let name = o.c_string("str");
            o.heap.word(str_type + layout.values.tp_name as u64, name);
            o
        }
        fn c_string(&mut self, s: &str) -> u64 {
            let at = self.heap.alloc(s.len() as u64 + 1);
            self.heap.put(at, s.as_bytes());
            at
        }
        fn str(&mut self, s: &str) -> u64 {
            let at = self.heap.alloc(96);
            self.heap.word(at, 1);
            self.heap
                .word(at + self.layout.values.ob_type as u64, self.str_type);
            let o = self.layout.objects;
            self.heap.ascii(at, &o, s);
            at
        }
        fn tuple(&mut self, items: &[u64]) -> u64 {
            let v = self.layout.values;
            let t = self.heap.alloc(64 + 8 * items.len() as u64);
            self.heap.word(t + v.tuple_size as u64, items.len() as u64);
            for (i, &item) in items.iter().enumerate() {
                self.heap
                    .word(t + v.tuple_items as u64 + 8 * i as u64, item);
            }
            t
        }
        /// A type named `name` (tp_flags `flags`) whose dict holds `entries`; its MRO is set
        /// by `mro`.
        fn class(&mut self, name: &str, flags: u64, entries: &[(&str, u64)]) -> u64 {
            let v = self.layout.values;
            let m = v.methods.unwrap();
            let t = self.heap.alloc(1024);
            let n = self.c_string(name);
            self.heap.word(t + v.tp_name as u64, n);
            self.heap.word(t + v.tp_flags as u64, flags);
            let entries: Vec<(u64, u64)> = entries.iter().map(|&(k, f)| (self.str(k), f)).collect();
            let dict = self.heap.alloc(64);
            let keys = self.heap.keys(&self.layout, &entries, false);
            self.heap.word(dict + v.dict_used as u64 + 16, keys);
            self.heap.word(t + m.tp_dict as u64, dict);
            t
        }
        fn mro(&mut self, class: u64, mro: &[u64]) {
            let m = self.layout.values.methods.unwrap();
            let t = self.tuple(mro);
            self.heap.word(class + m.tp_mro as u64, t);
        }
        fn object(&mut self, ty: u64) -> u64 {
            let o = self.heap.alloc(64);
            self.heap.word(o + self.layout.values.ob_type as u64, ty);
            o
        }
        /// A code object whose first argument is `first`.
        fn code(&mut self, first: &str) -> u64 {
            let LocalNames::Split { varnames, .. } = self.layout.values.names else {
                unreachable!()
            };
            let code = self.heap.alloc(256);
            let name = self.str(first);
            let names = self.tuple(&[name]);
            self.heap.word(code + varnames as u64, names);
            code
        }
        /// A function of type `function` running `code`, qualified as `qualname`.
        fn function(&mut self, ty: u64, code: u64, qualname: &str) -> u64 {
            let m = self.layout.values.methods.unwrap();
            let f = self.object(ty);
            self.heap.word(f + m.func_code as u64, code);
            let q = self.str(qualname);
            self.heap.word(f + m.func_qualname as u64, q);
            f
        }
    }

    /// `Child(Base)`: `Base.speak` inherited, `Child.run` its own, `Child.make` a classmethod,
    /// `wrapped` decorated (its dict holds a wrapper's function), `helper(x)` no method; each
    /// named as its `__qualname__` says, or by the class of `self` where that is not found.
    fn check(minor: u8) {
        let mut o = Objects::new(minor);
        let meta = o.class("type", TPFLAGS_TYPE_SUBCLASS, &[]);
        let function = o.class("function", 0, &[]);
        let classmethod = o.class("classmethod", 0, &[]);
        let (speak, run, make, wrapped, helper) = (
            o.code("self"),
            o.code("self"),
            o.code("cls"),
            o.code("self"),
            o.code("x"),
        );
        let speak_f = o.function(function, speak, "Base.speak");
        let run_f = o.function(function, run, "Child.run");
        let make_f = o.function(function, make, "Child.make");
        let make_cm = o.object(classmethod);
        let m = o.layout.values.methods.unwrap();
        o.heap.word(make_cm + m.wrapped_callable as u64, make_f);
        let wrapper_code = o.code("args");
        let wrapper = o.function(function, wrapper_code, "decorate.<locals>.wrapper");
        let base = o.class("Base", 0, &[("speak", speak_f), ("run", speak_f)]);
        let child = o.class(
            "Child",
            0,
            &[("run", run_f), ("make", make_cm), ("wrapped", wrapper)],
        );
        let object = o.class("object", 0, &[]);
        o.mro(base, &[base, object]);
        o.mro(child, &[child, base, object]);
        o.mro(object, &[object]);
        o.heap.word(child + o.layout.values.ob_type as u64, meta);
        let instance = o.object(child);
        let mem = o.heap.mem();
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
