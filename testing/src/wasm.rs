//! Hand-made WebAssembly modules, for the plugin checks no SDK plugin can
//! fail and for modules built to stress the host (thousands of functions):
//! a minimal encoder of the few sections a plugin has.

/// A function of a hand-made module: all parameters and results i32.
pub struct Func {
    pub export: Option<&'static str>,
    pub params: usize,
    pub results: usize,
    /// The instructions, without the locals declaration and the final `end`.
    pub body: Vec<u8>,
}

/// An exported function.
pub fn func(export: &'static str, params: usize, results: usize, body: Vec<u8>) -> Func {
    Func { export: Some(export), params, results, body }
}

fn uleb(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        out.push(if v == 0 { byte } else { byte | 0x80 });
        if v == 0 {
            return;
        }
    }
}

fn uleb_vec(v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    uleb(v, &mut out);
    out
}

/// `i32.const v` (signed LEB128).
pub fn i32_const(v: i32) -> Vec<u8> {
    let (mut out, mut v) = (vec![0x41], i64::from(v));
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
        out.push(if done { byte } else { byte | 0x80 });
        if done {
            return out;
        }
    }
}

fn section(id: u8, items: Vec<Vec<u8>>, out: &mut Vec<u8>) {
    let mut body = uleb_vec(items.len() as u64);
    body.extend(items.concat());
    out.push(id);
    uleb(body.len() as u64, out);
    out.extend(body);
}

fn name(s: &str) -> Vec<u8> {
    [uleb_vec(s.len() as u64), s.as_bytes().to_vec()].concat()
}

/// One exported 1-page memory holding `data` at address 0, the functions
/// (one type each), optionally a start function.
pub fn module(funcs: &[Func], data: &[u8], start: Option<u32>) -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    let ty = |f: &Func| [vec![0x60], uleb_vec(f.params as u64), vec![0x7f; f.params], uleb_vec(f.results as u64), vec![0x7f; f.results]].concat();
    section(1, funcs.iter().map(ty).collect(), &mut m);
    section(3, (0..funcs.len() as u64).map(uleb_vec).collect(), &mut m);
    section(5, vec![vec![0, 1]], &mut m);
    let mut exports = vec![[name("memory"), vec![2, 0]].concat()];
    exports.extend(funcs.iter().enumerate().filter_map(|(i, f)| Some([name(f.export?), vec![0], uleb_vec(i as u64)].concat())));
    section(7, exports, &mut m);
    if let Some(s) = start {
        m.push(8);
        let index = uleb_vec(u64::from(s));
        uleb(index.len() as u64, &mut m);
        m.extend(index);
    }
    let code = funcs
        .iter()
        .map(|f| {
            let body = [vec![0], f.body.clone(), vec![0x0b]].concat();
            [uleb_vec(body.len() as u64), body].concat()
        })
        .collect();
    section(10, code, &mut m);
    let mut segment = [vec![0], i32_const(0), vec![0x0b]].concat();
    uleb(data.len() as u64, &mut segment);
    segment.extend(data);
    section(11, vec![segment], &mut m);
    m
}

/// The state header of `plugin`'s region: magic, ABI version 1, 4 rows
/// of 32 bytes.
pub const HEADER: [u32; 4] = [u32::from_le_bytes(*b"FLCM"), 1, 4, 32];

/// A minimal valid plugin: state at 0 with 4 rows, always declines;
/// `extra` functions are appended, and replace those of the same export.
pub fn plugin(extra: Vec<Func>, header: [u32; 4]) -> Vec<u8> {
    let mut funcs = vec![
        func("lb_abi_version", 0, 1, i32_const(1)),
        func("lb_state_ptr", 0, 1, i32_const(0)),
        func("lb_state_cap", 0, 1, i32_const(4)),
        func("lb_pick", 1, 1, i32_const(-1)),
    ];
    for f in extra {
        funcs.retain(|g| f.export.is_none() || g.export != f.export);
        funcs.push(f);
    }
    module(&funcs, &header.map(u32::to_le_bytes).concat(), None)
}

/// A valid plugin (as `plugin`) that also defines `functions` functions
/// nothing calls, each of `ops` additions: legal, and as slow to compile
/// as a hostile author can make a module of that size.
pub fn bloated_plugin(functions: usize, ops: usize) -> Vec<u8> {
    // i32.const 1, then `ops` times (i32.const 1, i32.add), then drop.
    let body = [i32_const(1), [i32_const(1), vec![0x6a]].concat().repeat(ops), vec![0x1a]].concat();
    let filler = (0..functions).map(|_| Func { export: None, params: 0, results: 0, body: body.clone() }).collect();
    plugin(filler, HEADER)
}
