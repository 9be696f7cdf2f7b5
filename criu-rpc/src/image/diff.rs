//! What differs between two checkpoints of the same container: both
//! [`Checkpoint`]s are put in a comparable shape (lists keyed by what
//! identifies their items: processes by pid, threads by tid, fds by
//! number, sockets by inode, mounts by mountpoint, devices by name, cgroup
//! sets by id; values that differ on every dump, such as register values,
//! mount ids, the run id and the directory, left out), then compared field
//! by field.

use serde::Serialize;
use serde_json::{Map, Value};

use super::model::Checkpoint;

/// One difference: `old` is absent for something added, `new` for
/// something removed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Dotted path, e.g. `processes.1.fds.3.description`.
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.old, &self.new) {
            (None, Some(n)) => write!(f, "+ {}: {}", self.path, n),
            (Some(o), None) => write!(f, "- {}: {}", self.path, o),
            (Some(o), Some(n)) => write!(f, "~ {}: {} -> {}", self.path, o, n),
            (None, None) => write!(f, "  {}", self.path),
        }
    }
}

fn keyed(items: &Value, key: impl Fn(&Value) -> String) -> Value {
    let mut m = Map::new();
    for it in items.as_array().into_iter().flatten() {
        let mut k = key(it);
        // Two items with one key (two sockets without an inode): keep both.
        while m.contains_key(&k) {
            k.push('\'');
        }
        m.insert(k, it.clone());
    }
    Value::Object(m)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

/// The comparable shape of a checkpoint.
pub fn comparable(c: &Checkpoint) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    let Some(o) = v.as_object_mut() else {
        return Value::Null;
    };
    o.remove("dir");
    if let Some(criu) = o.get_mut("criu").and_then(Value::as_object_mut) {
        criu.remove("run_id");
    }
    if let Some(ps) = o.get_mut("processes") {
        for p in ps.as_array_mut().into_iter().flatten() {
            let Some(p) = p.as_object_mut() else { continue };
            if let Some(t) = p.get("threads") {
                let mut t = t.clone();
                for th in t.as_array_mut().into_iter().flatten() {
                    if let Some(th) = th.as_object_mut() {
                        th.remove("ip");
                        th.remove("sp");
                    }
                }
                p.insert("threads".into(), keyed(&t, |t| s(&t["tid"])));
            }
            if let Some(f) = p.get("fds") {
                let f = keyed(f, |f| s(&f["fd"]));
                p.insert("fds".into(), f);
            }
            if let Some(m) = p.get_mut("memory").and_then(Value::as_object_mut) {
                let n = m.get("vmas").and_then(Value::as_array).map_or(0, Vec::len);
                m.remove("vmas");
                m.insert("vma_count".into(), n.into());
            }
        }
        let ps = keyed(ps, |p| s(&p["pid"]));
        o.insert("processes".into(), ps);
    }
    if let Some(x) = o.get("sockets") {
        let x = keyed(x, |x| format!("{}:{}", s(&x["family"]), s(&x["ino"])));
        o.insert("sockets".into(), x);
    }
    if let Some(x) = o.get("mounts") {
        // Mount ids are the kernel's, new after every restore.
        let mut x = x.clone();
        for m in x.as_array_mut().into_iter().flatten() {
            if let Some(m) = m.as_object_mut() {
                m.remove("mnt_id");
                m.remove("parent");
            }
        }
        o.insert("mounts".into(), keyed(&x, |x| s(&x["mountpoint"])));
    }
    if let Some(x) = o.get("cgroups") {
        let x = keyed(x, |x| s(&x["id"]));
        o.insert("cgroups".into(), x);
    }
    if let Some(x) = o.get("network") {
        let mut x = x.clone();
        for ns in x.as_array_mut().into_iter().flatten() {
            if let Some(d) = ns.get("devices") {
                let d = keyed(d, |d| s(&d["name"]));
                ns["devices"] = d;
            }
        }
        o.insert("network".into(), keyed(&x, |n| s(&n["id"])));
    }
    if let Some(x) = o.get("ttys") {
        let x = keyed(x, |x| s(&x["id"]));
        o.insert("ttys".into(), x);
    }
    v
}

fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<Change>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => walk(&join(k), p, q, out),
                    (Some(p), None) if !p.is_null() => out.push(Change {
                        path: join(k),
                        old: Some(p.clone()),
                        new: None,
                    }),
                    (None, Some(q)) if !q.is_null() => out.push(Change {
                        path: join(k),
                        old: None,
                        new: Some(q.clone()),
                    }),
                    _ => {}
                }
            }
        }
        (x, y) if x != y => out.push(Change {
            path: path.to_string(),
            old: (!x.is_null()).then(|| x.clone()),
            new: (!y.is_null()).then(|| y.clone()),
        }),
        _ => {}
    }
}

/// The differences from `a` to `b`.
pub fn diff(a: &Checkpoint, b: &Checkpoint) -> Vec<Change> {
    let mut out = Vec::new();
    walk("", &comparable(a), &comparable(b), &mut out);
    out
}

/// [`diff`] of two comparable shapes (for tests and other callers that
/// already have JSON).
pub fn diff_values(a: &Value, b: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    walk("", a, b, &mut out);
    out
}
