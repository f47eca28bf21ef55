//! Conditions: CEL expressions over the event, compiled once and bounded before they ever run.
//!
//! # Why evaluation is bounded
//! `cel` 0.15 has no evaluation budget: no cost tracker, no step counter, no way to interrupt
//! `Value::resolve`. CEL itself is not Turing-complete (no loops, no recursion, no user-defined
//! functions); its only iteration is the comprehension macros (`all`, `exists`, `exists_one`,
//! `map`, `filter`) over a list or map that already exists. So the worst-case cost of an
//! expression is a function of the expression and of the size of its input, and it is computed
//! here *statically*, at load time, the way cel-go's cost estimator does:
//!
//! 1. **Expression caps** (load time): at most [`MAX_EXPRESSION_BYTES`] bytes, parser nesting at
//!    most [`MAX_PARSE_DEPTH`] (the ANTLR parser recurses, with about 170 KB of stack per level
//!    in debug builds and 8 KB in release, so policies are compiled on a thread of their own with
//!    a large stack), at most [`MAX_NODES`] AST nodes after macro expansion and [`MAX_AST_DEPTH`]
//!    levels (evaluation recurses on the caller's stack), comprehensions nested at most
//!    [`MAX_COMPREHENSION_NESTING`] deep. Only the functions on [`FUNCTIONS`] may be called and
//!    only the variables of [`VARIABLES`] (and comprehension variables) may be named, so a typo
//!    is a load error, and no function outside the cost model can run. Optional syntax (`a.?b`)
//!    is off; `chrono` (timestamps) and `regex` (`matches`) are not compiled in.
//! 2. **Input caps** (evaluation time): the event is handed to CEL only if it has at most
//!    [`INPUT_MAX_VALUES`] JSON values, [`INPUT_MAX_BYTES`] bytes of strings and keys, and nests
//!    at most [`INPUT_MAX_DEPTH`] deep. A larger event cannot be evaluated: every condition on it
//!    fails (see the policy module for what a failed condition does). Device payloads are capped
//!    at 64 KiB before they reach the policy, so only pathological events hit this.
//! 3. **Cost budget** (load time): from 1 and 2, [`estimate`] computes an upper bound of the work
//!    an expression can do on the largest event accepted — one unit per byte or element a
//!    function walks or copies, [`NODE_COST`] per node evaluated, comprehension bodies multiplied
//!    by the length of what they iterate over — and refuses the expression if the bound exceeds
//!    [`COST_BUDGET`]. A comprehension over an event field (`event.auth.all(f, ...)`) is fine;
//!    one nested in another over event fields, or `map` building lists from event data, is not.
//!
//! Runtime errors are reported without the values involved: `cel`'s own messages quote operand
//! values (a patient id, for instance), and policy errors are logged and recorded.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, SourceInfo, operators};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::Val;
use cel::{Env, ExecutionError};

/// Longest condition, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 2048;
/// Deepest nesting the parser accepts (parentheses, operators, calls).
pub const MAX_PARSE_DEPTH: u16 = 32;
/// Most AST nodes in one condition, after macro expansion.
pub const MAX_NODES: usize = 256;
/// Deepest AST. Evaluation recurses once per level, with large frames in debug builds (about
/// 20 KB): 32 levels stay far within a 2 MiB thread stack.
pub const MAX_AST_DEPTH: usize = 32;
/// Most comprehensions (`all`, `exists`, ...) nested in one another.
pub const MAX_COMPREHENSION_NESTING: usize = 2;
/// Most cost units one condition may spend on the largest event accepted.
pub const COST_BUDGET: u64 = 1_000_000;
/// Cost units per AST node evaluated.
pub const NODE_COST: u64 = 16;
/// Most JSON values (objects, arrays and scalars) in an event handed to a condition.
pub const INPUT_MAX_VALUES: usize = 1024;
/// Most bytes of strings and keys in an event handed to a condition.
pub const INPUT_MAX_BYTES: usize = 64 * 1024;
/// Deepest nesting of an event handed to a condition.
pub const INPUT_MAX_DEPTH: usize = 16;
/// Longest device id, kind or stream name (device ids are at most 64 characters).
const NAME_BOUND: u64 = 64;

/// The variables a condition can use.
pub const VARIABLES: &[&str] = &["event", "device", "kind", "stream", "after_hours"];

/// The functions and operators a condition can call (operators by their CEL internal names).
pub const FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "string",
    "int",
    "uint",
    "double",
    "bool",
    "bytes",
    "type",
    "dyn",
];

const TYPE_NAMES: &[&str] = &[
    "bool",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

const OPERATORS: &[&str] = &[
    operators::CONDITIONAL,
    operators::LOGICAL_AND,
    operators::LOGICAL_OR,
    operators::LOGICAL_NOT,
    operators::NOT_STRICTLY_FALSE,
    operators::ADD,
    operators::SUBSTRACT,
    operators::MULTIPLY,
    operators::DIVIDE,
    operators::MODULO,
    operators::NEGATE,
    operators::EQUALS,
    operators::NOT_EQUALS,
    operators::LESS,
    operators::LESS_EQUALS,
    operators::GREATER,
    operators::GREATER_EQUALS,
    operators::INDEX,
    operators::IN,
];

/// A compiled condition.
pub(crate) struct Condition {
    expr: IdedExpr,
    /// Upper bound of its cost on the largest event accepted.
    pub cost: u64,
    /// Field names and string literals written in the expression: the only key names a runtime
    /// error may quote (a key looked up from event data could be anything).
    written: BTreeSet<String>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

/// Why a condition does not compile, and where (line and column in the expression, from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub position: Option<(usize, usize)>,
    pub message: String,
}

/// The CEL environment conditions run in: the standard library and macros, no optional syntax.
pub(crate) fn env() -> Arc<Env> {
    Arc::new(Env::stdlib().with_optional_support(false))
}

/// Compiles `source`, checking every cap; all problems found are returned.
pub(crate) fn compile(env: &Env, source: &str) -> Result<Condition, Vec<CompileError>> {
    if source.len() > MAX_EXPRESSION_BYTES {
        return Err(vec![CompileError {
            position: None,
            message: format!(
                "the condition is {} bytes long; at most {MAX_EXPRESSION_BYTES}",
                source.len()
            ),
        }]);
    }
    if source.trim().is_empty() {
        return Err(vec![CompileError {
            position: None,
            message: "the condition is empty; leave `condition` out to match every event"
                .to_owned(),
        }]);
    }
    let (expr, info) = env
        .parser()
        .max_recursion_depth(MAX_PARSE_DEPTH)
        .parse_with_source_info(source)
        .map_err(|errors| parse_errors(&errors))?;
    let mut check = Check {
        info: &info,
        source,
        scope: Vec::new(),
        nodes: 0,
        nesting: 0,
        errors: Vec::new(),
        written: BTreeSet::new(),
        too_deep: false,
    };
    check.walk(&expr, 1);
    if check.nodes > MAX_NODES {
        check.errors.push(CompileError {
            position: None,
            message: format!(
                "the condition has {} nodes after macro expansion; at most {MAX_NODES}",
                check.nodes
            ),
        });
    }
    if !check.errors.is_empty() {
        check.errors.truncate(8);
        return Err(check.errors);
    }
    let written = check.written;
    let cost = estimate(&expr);
    if cost > COST_BUDGET {
        return Err(vec![CompileError {
            position: Some((1, 1)),
            message: format!(
                "the condition may cost up to {cost} units on the largest event accepted, over the budget of {COST_BUDGET}; avoid comprehensions (all, exists, map, filter) nested over event fields and building strings or lists from event data"
            ),
        }]);
    }
    Ok(Condition {
        expr,
        cost,
        written,
    })
}

fn parse_errors(errors: &cel::ParseErrors) -> Vec<CompileError> {
    if errors
        .errors
        .iter()
        .any(|e| e.msg.contains("Recursion limit"))
    {
        let at = errors
            .errors
            .iter()
            .find(|e| e.msg.contains("Recursion limit"))
            .map(|e| e.pos);
        return vec![CompileError {
            position: at.and_then(position),
            message: format!(
                "the condition is nested too deeply (more than {MAX_PARSE_DEPTH} levels of parentheses, operators and calls)"
            ),
        }];
    }
    let mut out: Vec<CompileError> = errors
        .errors
        .iter()
        .map(|e| CompileError {
            position: position(e.pos),
            message: e
                .msg
                .strip_prefix("Syntax error: ")
                .unwrap_or(&e.msg)
                .to_owned(),
        })
        .collect();
    out.truncate(8);
    if out.is_empty() {
        out.push(CompileError {
            position: None,
            message: "the condition does not parse".to_owned(),
        });
    }
    out
}

fn position((line, column): (isize, isize)) -> Option<(usize, usize)> {
    match (usize::try_from(line), usize::try_from(column)) {
        (Ok(line), Ok(column)) if line >= 1 && column >= 1 => Some((line, column)),
        _ => None,
    }
}

/// Static checks: allowed functions and names, node count, comprehension nesting.
struct Check<'a> {
    info: &'a SourceInfo,
    source: &'a str,
    scope: Vec<String>,
    nodes: usize,
    nesting: usize,
    errors: Vec<CompileError>,
    written: BTreeSet<String>,
    too_deep: bool,
}

impl Check<'_> {
    fn at(&self, id: u64) -> Option<(usize, usize)> {
        let (start, _) = self.info.offset_for(id)?;
        let start = usize::try_from(start).ok()?;
        let mut line = 1;
        let mut column = 1;
        for (i, c) in self.source.chars().enumerate() {
            if i == start {
                return Some((line, column));
            }
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        Some((line, column))
    }

    fn error(&mut self, id: u64, message: String) {
        let position = self.at(id);
        self.errors.push(CompileError { position, message });
    }

    fn walk(&mut self, e: &IdedExpr, depth: usize) {
        self.nodes += 1;
        if self.nodes > MAX_NODES || self.too_deep {
            return;
        }
        if depth > MAX_AST_DEPTH {
            self.too_deep = true;
            self.error(
                e.id,
                format!(
                    "the condition is nested too deeply (more than {MAX_AST_DEPTH} levels of operators, calls and fields); split long chains with parentheses"
                ),
            );
            return;
        }
        let next = depth + 1;
        match &e.expr {
            Expr::Unspecified => self.error(e.id, "incomplete expression".to_owned()),
            Expr::Literal(literal) => {
                if let LiteralValue::String(s) = literal {
                    self.written.insert(s.inner().to_string());
                }
            }
            Expr::Ident(name) => {
                if !(VARIABLES.contains(&name.as_str())
                    || TYPE_NAMES.contains(&name.as_str())
                    || self.scope.iter().any(|v| v == name))
                {
                    self.error(
                        e.id,
                        format!(
                            "unknown name `{name}`; conditions can use {}",
                            VARIABLES.join(", ")
                        ),
                    );
                }
            }
            Expr::Select(select) => {
                self.written.insert(select.field.clone());
                self.walk(&select.operand, next);
            }
            Expr::Call(call) => {
                let name = call.func_name.as_str();
                if !(FUNCTIONS.contains(&name) || OPERATORS.contains(&name)) {
                    self.error(
                        e.id,
                        format!(
                            "function `{name}` is not available in policy conditions; available: {}",
                            FUNCTIONS.join(", ")
                        ),
                    );
                }
                if let Some(target) = &call.target {
                    self.walk(target, next);
                }
                for arg in &call.args {
                    self.walk(arg, next);
                }
            }
            Expr::List(list) => {
                for element in &list.elements {
                    self.walk(element, next);
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(entry) => {
                            self.walk(&entry.key, next);
                            self.walk(&entry.value, next);
                        }
                        EntryExpr::StructField(_) => {
                            self.error(entry.id, "struct fields are not supported".to_owned())
                        }
                    }
                }
            }
            Expr::Struct(_) => self.error(
                e.id,
                "message (struct) literals are not supported in policy conditions".to_owned(),
            ),
            Expr::Comprehension(c) => {
                self.nesting += 1;
                if self.nesting > MAX_COMPREHENSION_NESTING {
                    self.error(
                        e.id,
                        format!(
                            "comprehensions (all, exists, exists_one, map, filter) nested more than {MAX_COMPREHENSION_NESTING} deep"
                        ),
                    );
                }
                self.walk(&c.iter_range, next);
                self.walk(&c.accu_init, next);
                let depth = self.scope.len();
                self.scope.push(c.accu_var.clone());
                self.scope.push(c.iter_var.clone());
                if let Some(var) = &c.iter_var2 {
                    self.scope.push(var.clone());
                }
                self.walk(&c.loop_cond, next);
                self.walk(&c.loop_step, next);
                self.walk(&c.result, next);
                self.scope.truncate(depth);
                self.nesting -= 1;
            }
        }
    }
}

/// Upper bound of a value's size (bytes of a string, elements of a list or map, counted
/// recursively) and of its element count (what a comprehension iterates over).
#[derive(Debug, Clone, Copy)]
struct Bound {
    size: u64,
    count: u64,
}

impl Bound {
    const ONE: Bound = Bound { size: 1, count: 1 };

    fn of(size: u64) -> Bound {
        Bound { size, count: size }
    }
}

const INPUT: Bound = Bound {
    size: (INPUT_MAX_BYTES + INPUT_MAX_VALUES) as u64,
    count: INPUT_MAX_VALUES as u64,
};

/// Worst-case cost of `expr` on the largest event accepted (see the module comment).
fn estimate(expr: &IdedExpr) -> u64 {
    let mut scope = Vec::new();
    Estimator { scope: &mut scope }.cost(expr).0
}

struct Estimator<'s> {
    scope: &'s mut Vec<(String, Bound)>,
}

impl Estimator<'_> {
    fn lookup(&self, name: &str) -> Bound {
        if let Some((_, bound)) = self.scope.iter().rev().find(|(n, _)| n == name) {
            return *bound;
        }
        match name {
            "event" => INPUT,
            "device" | "kind" | "stream" => Bound::of(NAME_BOUND),
            _ => Bound::ONE,
        }
    }

    fn cost(&mut self, e: &IdedExpr) -> (u64, Bound) {
        match &e.expr {
            Expr::Unspecified | Expr::Struct(_) => (NODE_COST, Bound::ONE),
            Expr::Literal(literal) => {
                let size = match literal {
                    LiteralValue::String(s) => s.inner().len() as u64,
                    LiteralValue::Bytes(b) => b.inner().len() as u64,
                    _ => 1,
                };
                (NODE_COST, Bound::of(size.max(1)))
            }
            Expr::Ident(name) => (NODE_COST, self.lookup(name)),
            Expr::Select(select) => {
                let (cost, operand) = self.cost(&select.operand);
                let cost = cost
                    .saturating_add(NODE_COST)
                    .saturating_add(select.field.len() as u64);
                (cost, if select.test { Bound::ONE } else { operand })
            }
            Expr::List(list) => {
                let mut cost = NODE_COST;
                let mut size = list.elements.len() as u64;
                for element in &list.elements {
                    let (c, b) = self.cost(element);
                    cost = cost.saturating_add(c).saturating_add(1);
                    size = size.saturating_add(b.size);
                }
                (
                    cost,
                    Bound {
                        size,
                        count: list.elements.len() as u64,
                    },
                )
            }
            Expr::Map(map) => {
                let mut cost = NODE_COST;
                let mut size = map.entries.len() as u64;
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(entry) = &entry.expr {
                        let (ck, k) = self.cost(&entry.key);
                        let (cv, v) = self.cost(&entry.value);
                        cost = cost
                            .saturating_add(ck)
                            .saturating_add(cv)
                            .saturating_add(k.size);
                        size = size.saturating_add(k.size).saturating_add(v.size);
                    }
                }
                (
                    cost,
                    Bound {
                        size,
                        count: map.entries.len() as u64,
                    },
                )
            }
            Expr::Call(call) => self.call(call),
            Expr::Comprehension(c) => {
                let (range_cost, range) = self.cost(&c.iter_range);
                let (init_cost, init) = self.cost(&c.accu_init);
                let n = range.count;
                let depth = self.scope.len();
                self.scope.push((c.accu_var.clone(), init));
                self.scope.push((c.iter_var.clone(), range));
                if let Some(var) = &c.iter_var2 {
                    self.scope.push((var.clone(), range));
                }
                // The accumulator grows by at most what one step adds to it, each iteration.
                let (_, first) = self.cost(&c.loop_step);
                let growth = Bound {
                    size: first.size.saturating_sub(init.size),
                    count: first.count.saturating_sub(init.count),
                };
                let accu = Bound {
                    size: init.size.saturating_add(n.saturating_mul(growth.size)),
                    count: init.count.saturating_add(n.saturating_mul(growth.count)),
                };
                self.scope[depth] = (c.accu_var.clone(), accu);
                let (cond_cost, _) = self.cost(&c.loop_cond);
                let (step_cost, _) = self.cost(&c.loop_step);
                self.scope.truncate(depth + 1);
                let (result_cost, result) = self.cost(&c.result);
                self.scope.truncate(depth);
                let per_iteration = cond_cost
                    .saturating_add(step_cost)
                    .saturating_add(NODE_COST);
                let cost = range_cost
                    .saturating_add(init_cost)
                    .saturating_add(n.saturating_mul(per_iteration))
                    .saturating_add(result_cost);
                (cost, result)
            }
        }
    }

    fn call(&mut self, call: &cel::common::ast::CallExpr) -> (u64, Bound) {
        let mut costs = Vec::with_capacity(call.args.len() + 1);
        let mut bounds = Vec::with_capacity(call.args.len() + 1);
        for arg in call.target.as_deref().into_iter().chain(call.args.iter()) {
            let (c, b) = self.cost(arg);
            costs.push(c);
            bounds.push(b);
        }
        let arg = |i: usize| bounds.get(i).copied().unwrap_or(Bound::ONE);
        let sum_sizes = bounds.iter().fold(0u64, |a, b| a.saturating_add(b.size));
        let children = costs.iter().fold(0u64, |a, c| a.saturating_add(*c));
        let name = call.func_name.as_str();
        let (own, result) = match name {
            operators::CONDITIONAL => {
                // Only one branch runs.
                let branch = costs
                    .get(1)
                    .copied()
                    .unwrap_or(0)
                    .max(costs.get(2).copied().unwrap_or(0));
                let result = Bound {
                    size: arg(1).size.max(arg(2).size),
                    count: arg(1).count.max(arg(2).count),
                };
                let cost = costs.first().copied().unwrap_or(0).saturating_add(branch);
                return (cost.saturating_add(NODE_COST), result);
            }
            operators::EQUALS
            | operators::NOT_EQUALS
            | operators::LESS
            | operators::LESS_EQUALS
            | operators::GREATER
            | operators::GREATER_EQUALS => (arg(0).size.min(arg(1).size), Bound::ONE),
            operators::ADD => (
                sum_sizes,
                Bound {
                    size: sum_sizes,
                    count: arg(0).count.saturating_add(arg(1).count),
                },
            ),
            operators::INDEX => (arg(1).size, arg(0)),
            operators::IN => {
                // Each element of a list is compared with the needle at the cost of the smaller
                // of the two; a map hashes the needle.
                let literal_list = matches!(call.args.get(1).map(|a| &a.expr), Some(Expr::List(_)));
                if literal_list {
                    (arg(1).size, Bound::ONE)
                } else {
                    (arg(0).size.saturating_add(arg(1).size), Bound::ONE)
                }
            }
            "size" | "contains" | "startsWith" | "endsWith" | "int" | "uint" | "double"
            | "bool" => (sum_sizes, Bound::ONE),
            "string" | "bytes" => (sum_sizes, Bound::of(sum_sizes.saturating_add(32))),
            "dyn" => (1, arg(0)),
            // Logical operators, negation, arithmetic on numbers, `type`.
            _ => (1, Bound::ONE),
        };
        (
            children.saturating_add(own).saturating_add(NODE_COST),
            result,
        )
    }
}

/// An event made ready for conditions: a CEL context whose `event` borrows the event's strings,
/// built once per evaluation and shared by every condition.
pub(crate) struct Input<'v> {
    context: Result<cel::Context<'v, 'v>, &'static str>,
}

impl<'v> Input<'v> {
    /// Converts `body`, enforcing the input caps. Over a cap, conditions fail with the reason.
    pub(crate) fn new(
        env: &Arc<Env>,
        body: &'v serde_json::Map<String, serde_json::Value>,
        facts: Facts<'v>,
    ) -> Input<'v> {
        let mut budget = InputBudget {
            values: 0,
            bytes: 0,
        };
        let context = map_to_val(body, 1, &mut budget).map(|event| {
            let mut context = cel::Context::with_env(Arc::clone(env));
            context.add_variable_as_val("event", Box::new(event));
            context.add_variable_as_val("device", Box::new(CelString::from(facts.device)));
            context.add_variable_as_val("kind", Box::new(CelString::from(facts.kind)));
            context.add_variable_as_val("stream", Box::new(CelString::from(facts.stream)));
            context.add_variable_as_val("after_hours", Box::new(CelBool::from(facts.after_hours)));
            context
        });
        Input { context }
    }
}

struct InputBudget {
    values: usize,
    bytes: usize,
}

const OVER_VALUES: &str = "the event has too many values for policy conditions";
const OVER_BYTES: &str = "the event has too many bytes for policy conditions";
const OVER_DEPTH: &str = "the event nests too deeply for policy conditions";

fn map_to_val<'v>(
    map: &'v serde_json::Map<String, serde_json::Value>,
    depth: usize,
    budget: &mut InputBudget,
) -> Result<CelMap<'v>, &'static str> {
    let mut out: HashMap<CelMapKey<'v>, Box<dyn Val + 'v>> = HashMap::with_capacity(map.len());
    for (key, value) in map {
        budget.bytes += key.len();
        if budget.bytes > INPUT_MAX_BYTES {
            return Err(OVER_BYTES);
        }
        out.insert(CelMapKey::from(key.as_str()), to_val(value, depth, budget)?);
    }
    Ok(CelMap::from(out))
}

fn to_val<'v>(
    value: &'v serde_json::Value,
    depth: usize,
    budget: &mut InputBudget,
) -> Result<Box<dyn Val + 'v>, &'static str> {
    budget.values += 1;
    if budget.values > INPUT_MAX_VALUES {
        return Err(OVER_VALUES);
    }
    if depth > INPUT_MAX_DEPTH {
        return Err(OVER_DEPTH);
    }
    Ok(match value {
        serde_json::Value::Null => Box::new(CelNull),
        serde_json::Value::Bool(b) => Box::new(CelBool::from(*b)),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Box::new(CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        serde_json::Value::String(s) => {
            budget.bytes += s.len();
            if budget.bytes > INPUT_MAX_BYTES {
                return Err(OVER_BYTES);
            }
            Box::new(CelString::from(s.as_str()))
        }
        serde_json::Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(to_val(item, depth + 1, budget)?);
            }
            Box::new(CelList::from(out))
        }
        serde_json::Value::Object(map) => Box::new(map_to_val(map, depth + 1, budget)?),
    })
}

/// What a condition sees besides the event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a> {
    pub device: &'a str,
    pub kind: &'a str,
    pub stream: &'a str,
    pub after_hours: bool,
}

/// Evaluates `condition`: `Ok(true|false)`, or why it could not be evaluated (never quoting
/// a value from the event).
pub(crate) fn evaluate(condition: &Condition, input: &Input<'_>) -> Result<bool, String> {
    let context = input.context.as_ref().map_err(|cap| (*cap).to_owned())?;
    match cel::Value::resolve(&condition.expr, context) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!(
            "the condition gave a {}, not true or false",
            other.type_of()
        )),
        Err(e) => Err(describe(&e, &condition.written)),
    }
}

fn is_type_name(s: &str) -> bool {
    (1..=24).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A runtime error in words, quoting only what the policy itself wrote.
fn describe(e: &ExecutionError, written: &BTreeSet<String>) -> String {
    match e {
        ExecutionError::NoSuchKey(key) if written.contains(key.as_str()) => {
            format!("the event has no field `{key}` (test for it first with has(event.{key}))")
        }
        ExecutionError::NoSuchKey(_) => "a key the condition looks up is missing".to_owned(),
        ExecutionError::UndeclaredReference(name)
            if written.contains(name.as_str()) || is_type_name(name) =>
        {
            format!("unknown name `{name}`")
        }
        ExecutionError::NoSuchOverload(overload) => format!(
            "`{}` cannot be applied to ({})",
            overload.function(),
            overload
                .argument_types()
                .iter()
                .map(|t| if is_type_name(t) { t.as_str() } else { "?" })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        ExecutionError::FunctionError { function, .. } if is_type_name(function) => {
            format!("`{function}` failed on its argument")
        }
        ExecutionError::DivisionByZero(_) => "division by zero".to_owned(),
        ExecutionError::RemainderByZero(_) => "remainder by zero".to_owned(),
        ExecutionError::Overflow(op, _, _) => format!("arithmetic overflow in `{op}`"),
        ExecutionError::IndexOutOfBounds(_) => "list index out of range".to_owned(),
        ExecutionError::ValuesNotComparable(a, b) => format!(
            "a {} cannot be compared with a {}",
            a.type_of(),
            b.type_of()
        ),
        ExecutionError::UnsupportedBinaryOperator(op, a, b) => format!(
            "`{op}` cannot be applied to a {} and a {}",
            a.type_of(),
            b.type_of()
        ),
        ExecutionError::UnexpectedType { got, want } if is_type_name(got) && is_type_name(want) => {
            format!("expected a {want}, got a {got}")
        }
        _ => "the condition could not be evaluated".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Compiles on a large stack, as `file::parse` does.
    fn compile_big(source: &str) -> Result<Condition, Vec<CompileError>> {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(64 << 20)
                .spawn_scoped(s, || compile(&env(), source))
                .unwrap()
                .join()
                .unwrap()
        })
    }

    fn run(source: &str, body: serde_json::Value) -> Result<bool, String> {
        let env = env();
        let condition = compile_big(source).map_err(|e| format!("{e:?}"))?;
        let serde_json::Value::Object(body) = body else {
            panic!("not an object")
        };
        let facts = Facts {
            device: "cabinet-01",
            kind: "cabinet",
            stream: "events",
            after_hours: true,
        };
        let input = Input::new(&env, &body, facts);
        evaluate(&condition, &input)
    }

    fn compile_err(source: &str) -> Vec<CompileError> {
        match compile_big(source) {
            Ok(_) => panic!("{source:?} compiled"),
            Err(e) => e,
        }
    }

    #[test]
    fn conditions_see_the_event_the_device_and_the_time_of_day() {
        let body = json!({"type": "access", "quantity": 2, "auth": ["badge", "pin"], "t": 4.5});
        assert_eq!(
            run("event.type == 'access' && after_hours", body.clone()),
            Ok(true)
        );
        assert_eq!(
            run(
                "device.startsWith('cabinet-') && kind == 'cabinet'",
                body.clone()
            ),
            Ok(true)
        );
        assert_eq!(run("stream == 'telemetry'", body.clone()), Ok(false));
        assert_eq!(
            run("event.quantity > 1.5 && event.t > 4", body.clone()),
            Ok(true)
        );
        assert_eq!(
            run("event.auth.all(f, f in ['pin', 'password'])", body.clone()),
            Ok(false)
        );
        assert_eq!(run("has(event.witness)", body.clone()), Ok(false));
        assert_eq!(run("type(event.auth) == list", body), Ok(true));
    }

    #[test]
    fn syntax_errors_carry_line_and_column_in_the_expression() {
        let errors = compile_err("event.type == 'access' &&");
        assert_eq!(errors[0].position, Some((1, 26)), "{errors:?}");
        let errors = compile_err("event.type == 'access'\n  && )");
        assert_eq!(errors[0].position, Some((2, 6)), "{errors:?}");
        assert!(errors[0].message.contains("')'"), "{errors:?}");
    }

    #[test]
    fn unknown_names_and_functions_are_refused_at_load_with_their_position() {
        let errors = compile_err("evnt.type == 'access'");
        assert_eq!(errors[0].position, Some((1, 1)));
        assert!(
            errors[0].message.contains("unknown name `evnt`"),
            "{errors:?}"
        );
        let errors = compile_err("true && event.item.matches('morph.*')");
        assert_eq!(errors[0].position.map(|p| p.0), Some(1));
        assert!(
            errors[0].message.contains("function `matches`"),
            "{errors:?}"
        );
        assert!(
            compile_err("a.?b")[0]
                .message
                .contains("unsupported syntax")
        );
    }

    #[test]
    fn oversized_deep_and_costly_expressions_are_refused() {
        let long = format!("event.x == '{}'", "a".repeat(MAX_EXPRESSION_BYTES));
        assert!(compile_err(&long)[0].message.contains("at most 2048"));
        let deep = format!("{}true{}", "(".repeat(40), ")".repeat(40));
        assert!(compile_err(&deep)[0].message.contains("nested too deeply"));
        let many = format!("[{}].size() > 0", vec!["1"; 300].join(", "));
        assert!(
            compile_err(&many)[0].message.contains("nodes"),
            "{:?}",
            compile_err(&many)
        );
        let chain = vec!["1"; 40].join(" + ") + " > 0";
        assert!(compile_err(&chain)[0].message.contains("nested too deeply"));
        let nested = "event.a.all(x, event.b.exists(y, x == y))";
        assert!(
            compile_err(nested)[0].message.contains("budget"),
            "{:?}",
            compile_err(nested)
        );
        let triple = "[1].all(x, [1].all(y, [1].all(z, true)))";
        assert!(
            compile_err(triple)[0]
                .message
                .contains("nested more than 2")
        );
        let concat = "event.note + event.note + event.note + event.note + event.note + event.note + event.note + event.note + event.note + event.note + event.note + event.note + event.note + event.note + event.note == ''";
        assert!(compile_err(concat)[0].message.contains("budget"));
        let map = "event.items.map(x, x).size() > 0";
        assert!(compile_err(map)[0].message.contains("budget"));
    }

    #[test]
    fn typical_conditions_stay_far_below_the_budget() {
        for source in [
            "event.schedule in ['CII', 'CIII', 'CIV', 'CV'] && after_hours",
            "event.action == 'override' && (!has(event.witness) || event.witness == event.user)",
            "type(event.auth) == string ? event.auth in ['password', 'pin'] : event.auth.all(f, f in ['password', 'pin'])",
            "event.item.contains('morphine') || event.note.contains('x')",
            "event.points.temperature_c > 8.0",
        ] {
            let condition = compile_big(source).unwrap();
            assert!(
                condition.cost < COST_BUDGET / 4,
                "{source}: {}",
                condition.cost
            );
        }
    }

    #[test]
    fn runtime_errors_never_quote_event_values() {
        let secret = "MRN-0012345";
        let body = json!({"patient_id": secret, "quantity": 1});
        for source in [
            "event.patient_id + 1 == 2",
            "event.patient_id < 3",
            "int(event.patient_id) > 0",
            "{'a': true}[event.patient_id]",
            "event[event.patient_id] == 1",
            "event.patient_id == 1 || event.missing",
            "!(event.patient_id == '') && event.patient_id / 2 == 1",
        ] {
            let err = run(source, body.clone()).unwrap_err();
            assert!(!err.contains(secret), "{source}: {err}");
            assert!(!err.contains("0012345"), "{source}: {err}");
        }
        assert_eq!(
            run("event.witness == 'x'", body.clone()).unwrap_err(),
            "the event has no field `witness` (test for it first with has(event.witness))"
        );
        assert_eq!(
            run("event.quantity", body).unwrap_err(),
            "the condition gave a int, not true or false"
        );
    }

    #[test]
    fn events_over_the_input_caps_fail_every_condition() {
        let big: Vec<u32> = (0..INPUT_MAX_VALUES as u32).collect();
        assert!(
            run("true", json!({"list": big}))
                .unwrap_err()
                .contains("too many values")
        );
        let long = "x".repeat(INPUT_MAX_BYTES + 1);
        assert!(
            run("true", json!({"s": long}))
                .unwrap_err()
                .contains("too many bytes")
        );
        let mut deep = json!(1);
        for _ in 0..INPUT_MAX_DEPTH {
            deep = json!([deep]);
        }
        assert!(
            run("true", json!({"d": deep}))
                .unwrap_err()
                .contains("nests too deeply")
        );
    }
}
