//! The path trie: one node per path segment, with static, `:param` and `*wildcard` edges.
//!
//! Routes with the identical pattern share one [`Pattern`], which holds their methods and
//! model aliases; the trie itself only answers "which pattern does this path reach".
//!
//! # Matching
//!
//! At each level a static edge is tried first, then the `:param` edge, then the `*wildcard`
//! edge, whatever the declaration order. If a branch dead-ends (or reaches an pattern that
//! does not allow the method), the walk backtracks and tries the next kind of edge, so
//! `/a/b/d` and `/a/:x/c` both work. A `:param` matches one non-empty segment; a trailing
//! `*rest` matches the rest of the path after its `/`, possibly empty. Trailing slashes are
//! significant (`/a/` is not `/a`).
//!
//! # Performance
//!
//! The walk allocates nothing: captures are byte ranges in a fixed inline array
//! ([`MAX_PARAMS`]); a node's static edges are scanned linearly when there are few and found
//! through an open-addressing hash table when there are many; recursion depth is bounded by
//! the depth of the trie, not by the request path.

use super::hash::hash_bytes;
use super::RouteId;
use crate::config_types::ConfigProblem;

/// Most `:param`/`*wildcard` captures one pattern may have.
pub const MAX_PARAMS: usize = 8;

/// Up to this many static edges a node is scanned linearly; above, it gets a hash table.
const LINEAR_STATICS: usize = 8;

/// Index of an pattern (a distinct path pattern); used to fetch the `Allow` header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PatternId(pub(crate) u32);

/// A set of request methods as a bitmask. Methods outside the standard nine map to
/// [`MethodSet::EXTENSION`] and are matched only by routes that allow any method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSet(u16);

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl MethodSet {
    /// Every method, extension methods included (a route without `methods`).
    pub const ANY: MethodSet = MethodSet(u16::MAX);
    /// The bit standing for any non-standard method.
    pub const EXTENSION: MethodSet = MethodSet(1 << 15);
    pub const EMPTY: MethodSet = MethodSet(0);

    /// The bit of one request method (case-sensitive, as RFC 9110 requires).
    #[inline]
    pub fn of_request(method: &str) -> MethodSet {
        match METHODS.iter().position(|m| *m == method) {
            Some(i) => MethodSet(1 << i),
            None => Self::EXTENSION,
        }
    }

    /// The bit of a method named in config (case-insensitive); `None` if it is not one of
    /// the standard methods.
    pub fn of_config(method: &str) -> Option<MethodSet> {
        METHODS
            .iter()
            .position(|m| m.eq_ignore_ascii_case(method.trim()))
            .map(|i| MethodSet(1 << i))
    }

    #[inline]
    pub fn intersects(self, other: MethodSet) -> bool {
        self.0 & other.0 != 0
    }

    pub fn union(self, other: MethodSet) -> MethodSet {
        MethodSet(self.0 | other.0)
    }

    /// `GET, POST` in canonical order, for an `Allow` header.
    fn allow_header(self) -> String {
        let names: Vec<&str> = METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, m)| *m)
            .collect();
        names.join(", ")
    }
}

/// Captured `:param`/`*wildcard` values, as byte ranges of the looked-up path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Captures {
    len: u8,
    spans: [(u32, u32); MAX_PARAMS],
}

impl Captures {
    const EMPTY: Captures = Captures {
        len: 0,
        spans: [(0, 0); MAX_PARAMS],
    };

    pub(crate) fn spans(&self) -> &[(u32, u32)] {
        &self.spans[..usize::from(self.len)]
    }
}

/// All routes sharing one path pattern.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    pub(crate) pattern: Box<str>,
    /// Names of the captures, in path order.
    pub(crate) param_names: Box<[Box<str>]>,
    /// Union of the routes' methods.
    pub(crate) methods: MethodSet,
    /// Value of the `Allow` header when the method is not in `methods`.
    pub(crate) allow: Box<str>,
    /// Routes keyed by a model alias: (alias, methods, route).
    pub(crate) keyed: Box<[(Box<str>, MethodSet, RouteId)]>,
    /// Routes without `models`: (methods, route).
    pub(crate) defaults: Box<[(MethodSet, RouteId)]>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Sorted by segment text.
    statics: Vec<(Box<str>, u32)>,
    /// Empty, or a power-of-two open-addressing table of `statics` indices plus one (0: free
    /// slot), probed linearly from `hash_bytes(segment)`.
    table: Box<[u32]>,
    /// (name, child node, route that introduced it).
    param: Option<(Box<str>, u32, RouteId)>,
    /// (name, pattern, route that introduced it).
    wildcard: Option<(Box<str>, u32, RouteId)>,
    end: Option<u32>,
}

/// The immutable trie.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trie {
    nodes: Box<[Node]>,
    patterns: Box<[Pattern]>,
}

/// What the builder needs to know about a route.
pub(crate) struct RouteSpec<'a> {
    pub(crate) id: RouteId,
    pub(crate) pattern: &'a str,
    pub(crate) methods: MethodSet,
    pub(crate) models: &'a [Box<str>],
}

enum Seg<'a> {
    Static(&'a str),
    Param(&'a str),
    Wildcard(&'a str),
}

/// Splits a pattern into segments, checking its syntax.
fn parse_pattern(pattern: &str) -> Result<Vec<Seg<'_>>, String> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err(format!("`{pattern}` must start with `/`"));
    };
    let raw: Vec<&str> = rest.split('/').collect();
    let mut segs = Vec::with_capacity(raw.len());
    let mut names: Vec<&str> = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let seg = if let Some(name) = s.strip_prefix(':') {
            Seg::Param(name)
        } else if let Some(name) = s.strip_prefix('*') {
            if i + 1 != raw.len() {
                return Err(format!("wildcard `*{name}` must be the last segment"));
            }
            Seg::Wildcard(name)
        } else {
            if s.contains(['?', '#']) {
                return Err(format!("segment `{s}` contains `?` or `#`"));
            }
            static_in_normal_form(s, i + 1 == raw.len())?;
            Seg::Static(s)
        };
        if let Seg::Param(name) | Seg::Wildcard(name) = seg {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "capture name in `{s}` must be non-empty [A-Za-z0-9_]"
                ));
            }
            if names.contains(&name) {
                return Err(format!("capture name `{name}` is used twice"));
            }
            names.push(name);
        }
        segs.push(seg);
    }
    if names.len() > MAX_PARAMS {
        return Err(format!("more than {MAX_PARAMS} captures"));
    }
    Ok(segs)
}

/// Requests are matched on their normalised path ([`crate::http::path`]), so a static
/// segment that normalisation would change or refuse could never match.
fn static_in_normal_form(s: &str, last: bool) -> Result<(), String> {
    if s.is_empty() {
        return match last {
            true => Ok(()),
            false => Err("empty segment (`//`): request paths have their slashes merged".into()),
        };
    }
    let mut b = format!("/{s}").into_bytes();
    match crate::http::path::normalise(&mut b) {
        Ok(n) if b[1..n] == *s.as_bytes() => Ok(()),
        Ok(n) => Err(format!(
            "segment `{s}` can never match: request paths are normalised, so it would be `{}`",
            String::from_utf8_lossy(&b[1..n])
        )),
        Err(e) => Err(format!("segment `{s}` can never match: {}", e.message())),
    }
}

/// The routes of one pattern while building.
struct Group {
    pattern: Box<str>,
    /// Capture names in path order.
    names: Vec<Box<str>>,
    /// Indices into the builder's `specs`.
    members: Vec<usize>,
}

/// Builds the trie; patterns with problems are reported and left out.
pub(crate) fn build(specs: &[RouteSpec<'_>], problems: &mut Vec<ConfigProblem>) -> Trie {
    let mut nodes = vec![Node::default()];
    let mut groups: Vec<Group> = Vec::new();
    for (si, spec) in specs.iter().enumerate() {
        let key = format!("routes[{}].path", spec.id.0);
        let segs = match parse_pattern(spec.pattern) {
            Ok(segs) => segs,
            Err(msg) => {
                problems.push(ConfigProblem::new(key, msg));
                continue;
            }
        };
        let mut node = 0usize;
        let mut names = Vec::new();
        let mut pattern_slot: Option<usize> = None;
        let mut failed = false;
        for seg in &segs {
            match *seg {
                Seg::Static(text) => {
                    node = match nodes[node]
                        .statics
                        .binary_search_by(|(s, _)| (**s).cmp(text))
                    {
                        Ok(pos) => nodes[node].statics[pos].1 as usize,
                        Err(pos) => {
                            let child = nodes.len();
                            nodes.push(Node::default());
                            nodes[node].statics.insert(pos, (text.into(), child as u32));
                            child
                        }
                    };
                }
                Seg::Param(name) => {
                    names.push(Box::<str>::from(name));
                    node = match &nodes[node].param {
                        Some((existing, child, owner)) => {
                            if **existing != *name {
                                problems.push(conflict(&key, ':', name, existing, *owner));
                                failed = true;
                                break;
                            }
                            *child as usize
                        }
                        None => {
                            let child = nodes.len();
                            nodes.push(Node::default());
                            nodes[node].param = Some((name.into(), child as u32, spec.id));
                            child
                        }
                    };
                }
                Seg::Wildcard(name) => {
                    names.push(Box::<str>::from(name));
                    match &nodes[node].wildcard {
                        Some((existing, ep, owner)) => {
                            if **existing != *name {
                                problems.push(conflict(&key, '*', name, existing, *owner));
                                failed = true;
                                break;
                            }
                            pattern_slot = Some(*ep as usize);
                        }
                        None => {
                            let ep = groups.len();
                            groups.push(Group {
                                pattern: spec.pattern.into(),
                                names: names.clone(),
                                members: Vec::new(),
                            });
                            nodes[node].wildcard = Some((name.into(), ep as u32, spec.id));
                            pattern_slot = Some(ep);
                        }
                    }
                }
            }
        }
        if failed {
            continue;
        }
        let ep = pattern_slot.unwrap_or_else(|| match nodes[node].end {
            Some(ep) => ep as usize,
            None => {
                let ep = groups.len();
                groups.push(Group {
                    pattern: spec.pattern.into(),
                    names: names.clone(),
                    members: Vec::new(),
                });
                nodes[node].end = Some(ep as u32);
                ep
            }
        });
        groups[ep].members.push(si);
    }
    let patterns = groups
        .into_iter()
        .map(|g| pattern(g.pattern, g.names, &g.members, specs, problems))
        .collect();
    for node in &mut nodes {
        node.table = static_table(&node.statics);
    }
    Trie {
        nodes: nodes.into(),
        patterns,
    }
}

/// The hash table over `statics` (at most half full), or nothing when a scan is cheaper.
fn static_table(statics: &[(Box<str>, u32)]) -> Box<[u32]> {
    if statics.len() <= LINEAR_STATICS {
        return Box::default();
    }
    let size = (statics.len() * 2).next_power_of_two();
    let mut table = vec![0u32; size];
    for (i, (text, _)) in statics.iter().enumerate() {
        let mut slot = hash_bytes(text.as_bytes()) as usize & (size - 1);
        while table[slot] != 0 {
            slot = (slot + 1) & (size - 1);
        }
        table[slot] = i as u32 + 1;
    }
    table.into()
}

fn conflict(key: &str, sigil: char, name: &str, existing: &str, owner: RouteId) -> ConfigProblem {
    ConfigProblem::new(
        key,
        format!(
            "`{sigil}{name}` conflicts with `{sigil}{existing}` of routes[{}] at the same position",
            owner.0
        ),
    )
}

/// Groups the routes of one pattern, reporting pairs that no request could tell apart:
/// overlapping methods and overlapping model keys (two default routes overlap).
fn pattern(
    pattern: Box<str>,
    names: Vec<Box<str>>,
    members: &[usize],
    specs: &[RouteSpec<'_>],
    problems: &mut Vec<ConfigProblem>,
) -> Pattern {
    let mut methods = MethodSet::EMPTY;
    let mut keyed = Vec::new();
    let mut defaults = Vec::new();
    for (n, &a) in members.iter().enumerate() {
        let ra = &specs[a];
        for &b in &members[..n] {
            let rb = &specs[b];
            let models_overlap = (ra.models.is_empty() && rb.models.is_empty())
                || ra.models.iter().any(|m| rb.models.contains(m));
            if models_overlap && ra.methods.intersects(rb.methods) {
                problems.push(ConfigProblem::new(
                    format!("routes[{}].path", ra.id.0),
                    format!(
                        "`{pattern}` conflicts with routes[{}]: same path, overlapping methods and models",
                        rb.id.0
                    ),
                ));
            }
        }
        methods = methods.union(ra.methods);
        if ra.models.is_empty() {
            defaults.push((ra.methods, ra.id));
        } else {
            keyed.extend(ra.models.iter().map(|m| (m.clone(), ra.methods, ra.id)));
        }
    }
    Pattern {
        pattern,
        param_names: names.into(),
        methods,
        allow: methods.allow_header().into(),
        keyed: keyed.into(),
        defaults: defaults.into(),
    }
}

impl Node {
    #[inline]
    fn static_child(&self, seg: &[u8]) -> Option<u32> {
        if self.table.is_empty() {
            return self
                .statics
                .iter()
                .find(|(s, _)| s.as_bytes() == seg)
                .map(|&(_, c)| c);
        }
        let mask = self.table.len() - 1;
        let mut slot = hash_bytes(seg) as usize & mask;
        loop {
            let i = self.table[slot] as usize;
            let (text, child) = self.statics.get(i.checked_sub(1)?)?;
            if text.as_bytes() == seg {
                return Some(*child);
            }
            slot = (slot + 1) & mask;
        }
    }
}

impl Trie {
    pub(crate) fn pattern(&self, id: PatternId) -> &Pattern {
        &self.patterns[id.0 as usize]
    }

    /// Finds the pattern for `path` that allows `method`. `Err(Some(ep))`: the path matched
    /// `ep` (the highest-precedence match) but no route there allows the method.
    #[inline]
    pub(crate) fn find(
        &self,
        method: MethodSet,
        path: &str,
    ) -> Result<(PatternId, Captures), Option<PatternId>> {
        if !path.starts_with('/') {
            return Err(None);
        }
        let mut caps = Captures::EMPTY;
        let mut wrong_method = None;
        match self.walk(0, path.as_bytes(), 1, method, &mut caps, &mut wrong_method) {
            Some(ep) => Ok((PatternId(ep), caps)),
            None => Err(wrong_method.map(PatternId)),
        }
    }

    /// Matches the segment starting at `pos` (or the end of the path when
    /// `pos == path.len() + 1`) below `node`.
    fn walk(
        &self,
        node: u32,
        path: &[u8],
        pos: usize,
        method: MethodSet,
        caps: &mut Captures,
        wrong_method: &mut Option<u32>,
    ) -> Option<u32> {
        let n = &self.nodes[node as usize];
        if pos > path.len() {
            return n.end.and_then(|ep| self.accept(ep, method, wrong_method));
        }
        let end = path[pos..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(path.len(), |i| pos + i);
        let seg = &path[pos..end];
        if let Some(child) = n.static_child(seg) {
            if let Some(ep) = self.walk(child, path, end + 1, method, caps, wrong_method) {
                return Some(ep);
            }
        }
        if let Some((_, child, _)) = &n.param {
            if !seg.is_empty() && usize::from(caps.len) < MAX_PARAMS {
                let saved = caps.len;
                caps.spans[usize::from(saved)] = (pos as u32, end as u32);
                caps.len += 1;
                if let Some(ep) = self.walk(*child, path, end + 1, method, caps, wrong_method) {
                    return Some(ep);
                }
                caps.len = saved;
            }
        }
        if let Some((_, ep, _)) = &n.wildcard {
            if usize::from(caps.len) < MAX_PARAMS {
                if let Some(ep) = self.accept(*ep, method, wrong_method) {
                    caps.spans[usize::from(caps.len)] = (pos as u32, path.len() as u32);
                    caps.len += 1;
                    return Some(ep);
                }
            }
        }
        None
    }

    #[inline]
    fn accept(&self, ep: u32, method: MethodSet, wrong_method: &mut Option<u32>) -> Option<u32> {
        if self.patterns[ep as usize].methods.intersects(method) {
            Some(ep)
        } else {
            wrong_method.get_or_insert(ep);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trie(patterns: &[&str]) -> Result<Trie, Vec<ConfigProblem>> {
        let specs: Vec<RouteSpec<'_>> = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| RouteSpec {
                id: RouteId(i as u32),
                pattern: p,
                methods: MethodSet::ANY,
                models: &[],
            })
            .collect();
        let mut problems = Vec::new();
        let t = build(&specs, &mut problems);
        if problems.is_empty() {
            Ok(t)
        } else {
            Err(problems)
        }
    }

    /// The pattern `path` reaches and its captures as text, or `None`.
    fn hit(t: &Trie, path: &str) -> Option<(String, Vec<String>)> {
        let (ep, caps) = t.find(MethodSet::of_request("GET"), path).ok()?;
        let e = t.pattern(ep);
        let caps = caps
            .spans()
            .iter()
            .map(|&(a, b)| path[a as usize..b as usize].to_owned());
        Some((e.pattern.to_string(), caps.collect()))
    }

    #[test]
    fn precedence_is_static_then_param_then_wildcard_in_any_declaration_order() {
        let patterns = ["/a/*rest", "/a/:x/c", "/a/b/d", "/a/b", "/a/:x", "/", "/a/"];
        /// Path → (pattern, captures).
        type Case<'a> = (&'a str, Option<(&'a str, &'a [&'a str])>);
        let cases: [Case<'_>; 11] = [
            ("/a/b", Some(("/a/b", &[]))),
            ("/a/z", Some(("/a/:x", &["z"]))),
            ("/a/b/d", Some(("/a/b/d", &[]))),
            // static `b` dead-ends on `c`: backtrack into `:x`.
            ("/a/b/c", Some(("/a/:x/c", &["b"]))),
            ("/a/b/e", Some(("/a/*rest", &["b/e"]))),
            ("/a/", Some(("/a/", &[]))),
            ("/a/z/y/x", Some(("/a/*rest", &["z/y/x"]))),
            ("/", Some(("/", &[]))),
            ("/a", None),
            ("/b", None),
            ("", None),
        ];
        let mut order = patterns.to_vec();
        for round in 0..2 {
            let t = trie(&order).unwrap();
            for (path, want) in &cases {
                let want = want.map(|(p, c)| {
                    (
                        p.to_owned(),
                        c.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    )
                });
                assert_eq!(hit(&t, path), want, "round {round}: {path}");
            }
            order.reverse();
        }
    }

    #[test]
    fn wide_nodes_find_every_static_child() {
        let patterns: Vec<String> = (0..100).map(|i| format!("/v1/svc{i}/items")).collect();
        let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let t = trie(&refs).unwrap();
        for p in &patterns {
            assert_eq!(hit(&t, p), Some((p.clone(), vec![])));
        }
        assert_eq!(hit(&t, "/v1/svc100/items"), None);
        assert_eq!(hit(&t, "/v1/svc/items"), None);
    }

    #[test]
    fn wildcard_may_be_empty_but_param_may_not() {
        let t = trie(&["/files/*path", "/u/:id"]).unwrap();
        assert_eq!(
            hit(&t, "/files/"),
            Some(("/files/*path".into(), vec![String::new()]))
        );
        assert_eq!(hit(&t, "/files"), None);
        assert_eq!(hit(&t, "/u/"), None);
        assert_eq!(hit(&t, "/u/7"), Some(("/u/:id".into(), vec!["7".into()])));
    }

    #[test]
    fn pattern_and_capture_conflicts_are_config_errors() {
        let cases: [(&[&str], &str); 13] = [
            (&["/a/:x", "/a/:y/b"], "conflicts with `:x` of routes[0]"),
            (&["/a//b"], "empty segment"),
            (&["/a/../b"], "dot segments"),
            (&["/a/%2e%2e"], "dot segments"),
            (&["/v1/%6dodels"], "would be `models`"),
            (&["/a;b"], "';' path parameters"),
            (&["/a/*x", "/a/*y"], "conflicts with `*x` of routes[0]"),
            (&["/a", "/a"], "conflicts with routes[0]"),
            (&["a"], "must start with `/`"),
            (&["/a/*x/b"], "must be the last segment"),
            (&["/a/:"], "must be non-empty"),
            (&["/:a/:a"], "used twice"),
            (&["/:a/:b/:c/:d/:e/:f/:g/:h/:i"], "more than 8 captures"),
        ];
        for (patterns, want) in cases {
            let problems = trie(patterns).unwrap_err();
            assert_eq!(problems.len(), 1, "{patterns:?}: {problems:?}");
            assert!(
                problems[0].message.contains(want),
                "{patterns:?}: {}",
                problems[0]
            );
            assert_eq!(
                problems[0].key,
                format!("routes[{}].path", patterns.len() - 1)
            );
        }
    }

    #[test]
    fn method_sets_parse_and_render() {
        assert_eq!(MethodSet::of_request("get"), MethodSet::EXTENSION);
        assert_eq!(
            MethodSet::of_config("get"),
            Some(MethodSet::of_request("GET"))
        );
        assert_eq!(MethodSet::of_config("FETCH"), None);
        let set = MethodSet::of_request("POST").union(MethodSet::of_request("GET"));
        assert_eq!(set.allow_header(), "GET, POST");
        assert!(!set.intersects(MethodSet::EXTENSION));
        assert!(MethodSet::ANY.intersects(MethodSet::EXTENSION));
    }
}
