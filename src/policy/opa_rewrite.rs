//! Two rewrites of OPA's compiler that regorus' interpreter lacks, applied to each module's
//! text before regorus parses it for evaluation, so that tollgate decides as OPA does.
//!
//! **Rule heads.** A partial set's or object's head term that is not a variable
//! (`creds contains r.cred if …`) is moved into the body, as OPA does: an iteration where it
//! is undefined adds nothing. regorus evaluated it in the head, and one undefined element
//! emptied the whole set (see [`hoist_head_terms`]).
//!
//! **Negation.**
//! OPA's compiler hoists the *dynamic operands* of every expression (references, calls and
//! the references inside composite values) into assignments of their own before the
//! expression (its `RewriteDynamicTerms` stage). For a negated expression those assignments
//! land *outside* the negation, so an operand that is undefined makes the whole body fail:
//!
//! ```rego
//! allow if not startswith(input.ticket, "revoked-")   # no ticket: OPA says undefined
//! deny if not blocked[input.user]                      # no user: undefined
//! r if not input.x == "a"                              # an equality keeps its references: true
//! ```
//!
//! regorus evaluates the negated expression as a whole, so a missing operand made it undefined
//! and `not` turned that into *true* — an allow where OPA denies. Here, for
//! every `not` literal with dynamic operands, `__tollgate_hN__ = (operand)` literals (carrying
//! the literal's `with` modifiers) are inserted before it and the operands are replaced by the
//! variables. A one-line rule body (`r if not …`) gets braces. Nothing is inserted on a new
//! line, so errors keep their line numbers.
//!
//! Which operands are hoisted follows OPA (checked against OPA v1.20.2 in
//! `tests/traps/negation*.yaml`): every reference, call or arithmetic operand of a call or an
//! operator; for an equality (`==`, `=`) and a bare term only the dynamic parts *inside*
//! references (`data.m[input.x]`) and composites (`[input.x]`); never variables, scalars or
//! comprehensions (always defined). OPA refuses unbound variables inside `not`, so a hoisted
//! operand never introduces iteration.

use regorus::Engine;
use regorus::unstable::{AssignOp, BoolOp, Expr, Literal, LiteralStmt, Query, Rule, RuleHead};

use super::ast_walk;

/// The prefix of the variables this rewrite introduces.
const PREFIX: &str = "__tollgate_h";

/// Why a module could not be rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The module does not parse (the caller reports regorus' own message when it parses the
    /// module again).
    #[error("{0}")]
    Parse(String),
    /// The module already uses the rewrite's variable names.
    #[error("{module}: names starting with `{PREFIX}` are reserved by tollgate")]
    Reserved { module: String },
}

/// One text edit: replace `start..end` with `text`.
struct Edit {
    start: usize,
    end: usize,
    text: String,
}

/// Returns `source` with every negated expression's dynamic operands hoisted (unchanged when
/// there are none).
pub fn rewrite(name: &str, source: &str) -> Result<String, RewriteError> {
    let mut engine = Engine::new();
    super::source_limits::apply(&mut engine);
    engine
        .add_policy(name.to_string(), source.to_string())
        .map_err(|e| RewriteError::Parse(e.to_string()))?;
    let mut rewriter = Rewriter {
        source,
        counter: 0,
        edits: Vec::new(),
        hoist_negations: true,
    };
    for module in engine.get_modules().iter() {
        rewriter.hoist_negations = !module.imports.iter().any(|import| {
            matches!(
                ast_walk::path(&import.refr).as_deref(),
                Some("future.keywords" | "future.keywords.not")
            )
        });
        ast_walk::module(module, &mut rewriter);
    }
    let mut edits = rewriter.edits;
    if edits.is_empty() {
        return Ok(source.to_string());
    }
    if source.contains(PREFIX) {
        return Err(RewriteError::Reserved {
            module: name.to_string(),
        });
    }
    edits.sort_by_key(|e| std::cmp::Reverse(e.start));
    let mut text = source.to_string();
    for edit in edits {
        text.replace_range(edit.start..edit.end, &edit.text);
    }
    Ok(text)
}

fn span_range(span: &regorus::unstable::Span) -> (usize, usize) {
    (span.start as usize, span.end as usize)
}

/// The end of a span that may stop inside a closing quote: a string's span covers its
/// contents, so a literal ending in a string ends one character later.
fn text_end(source: &str, start: usize, end: usize) -> usize {
    let text = &source[start..end];
    let mut open: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        match open {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => open = None,
            Some(_) => {}
            None if c == '"' || c == '`' => open = Some(c),
            None => {}
        }
    }
    match open {
        Some(q) if source[end..].starts_with(q) => end + q.len_utf8(),
        _ => end,
    }
}

/// The rewrite's state while the module is walked: the edits found so far.
struct Rewriter<'s> {
    source: &'s str,
    counter: usize,
    edits: Vec<Edit>,
    /// Whether the module being walked negates with OPA's default meaning (operands hoisted
    /// out of `not`). `import future.keywords.not` (or all of `future.keywords`) makes `not`
    /// apply to the whole expression, operands included (OPA v1.20.2: `not
    /// startswith(input.missing, "x")` is then true); such a module is left as written.
    hoist_negations: bool,
}

impl<'a> ast_walk::Visit<'a> for Rewriter<'_> {
    fn rule(&mut self, rule: &'a Rule) {
        if let Rule::Spec { head, bodies, .. } = rule
            && let Some(edits) = hoist_head_terms(head, bodies, self.source, &mut self.counter)
        {
            self.edits.extend(edits);
        }
    }

    /// `rule_body`: it may be a one-line `if` body without braces; the query of a comprehension
    /// or an `every` can always take more literals.
    fn query(&mut self, query: &'a Query, rule_body: bool) {
        let source = self.source;
        let braced = !rule_body || {
            let (start, _) = span_range(&query.span);
            source[start..].trim_start().starts_with('{')
                || source[..start].trim_end().ends_with('{')
        };
        for stmt in &query.stmts {
            if self.hoist_negations
                && let Literal::NotExpr { expr, .. } = &stmt.literal
                && let Some(edit) = hoist(stmt, expr, source, braced, &mut self.counter)
            {
                self.edits.push(edit);
            }
        }
    }
}

/// A term of a partial set's or partial object's head that is not a variable or a scalar
/// (`creds contains r.cred if …`, `creds[r.name] := r.cred if …`): OPA moves it into the body
/// (`creds contains __v if { …; __v = r.cred }`), so an iteration where it is undefined adds
/// nothing. regorus evaluated it in the head, and one undefined element emptied the whole set
/// (or failed it). Returns the edits: the terms replaced by variables, and the assignments
/// appended to the body (one-line bodies get braces; a rule without a body gets one).
fn hoist_head_terms(
    head: &RuleHead,
    bodies: &[regorus::unstable::RuleBody],
    source: &str,
    counter: &mut usize,
) -> Option<Vec<Edit>> {
    let terms: Vec<&Expr> = match head {
        RuleHead::Set { key: Some(key), .. } => vec![key.as_ref()],
        RuleHead::Compr {
            refr,
            assign: Some(assign),
            ..
        } => match refr.as_ref() {
            Expr::RefBrack { index, .. } => vec![index.as_ref(), assign.value.as_ref()],
            _ => return None,
        },
        _ => return None,
    }
    .into_iter()
    .filter(|t| is_dynamic_term(t))
    .collect();
    if terms.is_empty() || bodies.len() > 1 {
        return None;
    }
    let mut edits = Vec::new();
    let mut assignments = String::new();
    for term in terms {
        let name = format!("{PREFIX}{}__", *counter);
        *counter += 1;
        let (start, end) = span_range(term.span());
        let end = text_end(source, start, end);
        assignments.push_str(&format!("; {name} = ({})", &source[start..end]));
        edits.push(Edit {
            start,
            end,
            text: name,
        });
    }
    match bodies.first() {
        None => {
            // `p contains input.x`: no body; one is added after the head.
            let head_span = match head {
                RuleHead::Set { span, .. }
                | RuleHead::Compr { span, .. }
                | RuleHead::Func { span, .. } => span,
            };
            let (start, end) = span_range(head_span);
            let end = text_end(source, start, end);
            edits.push(Edit {
                start: end,
                end,
                text: format!(" if {{ true{assignments} }}"),
            });
        }
        Some(body) => {
            let (start, end) = span_range(&body.query.span);
            let end = text_end(source, start, end);
            let text = &source[start..end];
            if text.trim_start().starts_with('{') && text.trim_end().ends_with('}') {
                let close = start + text.trim_end().len() - 1;
                edits.push(Edit {
                    start: close,
                    end: close,
                    text: format!("{assignments} "),
                });
            } else if source[..start].trim_end().ends_with('{') {
                let close = start + text.len() + source[end..].find('}')?;
                edits.push(Edit {
                    start: close,
                    end: close,
                    text: format!("{assignments} "),
                });
            } else {
                edits.push(Edit {
                    start,
                    end,
                    text: format!("{{ {text}{assignments} }}"),
                });
            }
        }
    }
    Some(edits)
}

/// A variable, a scalar or a comprehension: always defined, so OPA never hoists it (out of a
/// negation, or out of a partial rule's head).
fn is_always_defined(expr: &Expr) -> bool {
    matches!(
        expr,
        Expr::Var { .. }
            | Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. }
            | Expr::ArrayCompr { .. }
            | Expr::SetCompr { .. }
            | Expr::ObjectCompr { .. }
    )
}

/// A head term OPA moves into the body.
fn is_dynamic_term(expr: &Expr) -> bool {
    !is_always_defined(expr)
}

/// The edit that hoists the dynamic operands of one `not` literal, if it has any.
fn hoist(
    stmt: &LiteralStmt,
    expr: &Expr,
    source: &str,
    braced: bool,
    counter: &mut usize,
) -> Option<Edit> {
    let mut operands = Vec::new();
    negated_operands(expr, &mut operands);
    if operands.is_empty() {
        return None;
    }
    let (stmt_start, stmt_end) = span_range(&stmt.span);
    let stmt_end = text_end(source, stmt_start, stmt_end);
    let (expr_start, expr_end) = span_range(expr.span());
    let expr_end = text_end(source, expr_start, expr_end);
    let with_text = match (stmt.with_mods.first(), stmt.with_mods.last()) {
        (Some(first), Some(last)) => {
            let (start, _) = span_range(&first.span);
            let (_, end) = span_range(&last.span);
            let end = text_end(source, start, end);
            format!(" {}", &source[start..end])
        }
        _ => String::new(),
    };
    let mut hoisted = String::new();
    let mut replacements = Vec::new();
    for operand in operands {
        let name = format!("{PREFIX}{}__", *counter);
        *counter += 1;
        let (start, end) = span_range(operand.span());
        let end = text_end(source, start, end);
        hoisted.push_str(&format!("{name} = ({}){with_text}; ", &source[start..end]));
        replacements.push((start, end, name));
    }
    // The literal with its operands replaced (right to left, so offsets stay valid).
    let mut literal = source[stmt_start..stmt_end].to_string();
    replacements.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (start, end, name) in replacements {
        if start < expr_start || end > expr_end {
            return None;
        }
        literal.replace_range(start - stmt_start..end - stmt_start, &name);
    }
    let text = if braced {
        format!("{hoisted}{literal}")
    } else {
        format!("{{ {hoisted}{literal} }}")
    };
    Some(Edit {
        start: stmt_start,
        end: stmt_end,
        text,
    })
}

/// The operands OPA hoists out of a negated expression.
fn negated_operands<'a>(expr: &'a Expr, out: &mut Vec<&'a Expr>) {
    match expr {
        // Equalities unify their operands: only what is dynamic inside them is hoisted.
        Expr::BoolExpr {
            op: BoolOp::Eq,
            lhs,
            rhs,
            ..
        }
        | Expr::AssignExpr {
            op: AssignOp::Eq,
            lhs,
            rhs,
            ..
        } => {
            term_parts(lhs, out);
            term_parts(rhs, out);
        }
        Expr::Call { params, .. } => {
            for param in params {
                operand(param, out);
            }
        }
        Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::BinExpr { lhs, rhs, .. } => {
            operand(lhs, out);
            operand(rhs, out);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => {
            if let Some(key) = key {
                operand(key, out);
            }
            operand(value, out);
            operand(collection, out);
        }
        Expr::UnaryExpr { expr, .. } => operand(expr, out),
        other => term_parts(other, out),
    }
}

/// An operand of a call or operator: hoisted whole when it is dynamic (a reference, a call,
/// an operator); a composite's elements are operands in turn.
fn operand<'a>(expr: &'a Expr, out: &mut Vec<&'a Expr>) {
    match expr {
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            for item in items {
                operand(item, out);
            }
        }
        Expr::Object { fields, .. } => {
            for (_, key, value) in fields {
                operand(key, out);
                operand(value, out);
            }
        }
        _ if is_always_defined(expr) => {}
        _ => out.push(expr),
    }
}

/// A term standing for itself (an equality's side, a bare `not` term): only the dynamic parts
/// inside it are hoisted — a reference's dynamic keys, a composite's operands; a call or an
/// operator is hoisted whole.
fn term_parts<'a>(expr: &'a Expr, out: &mut Vec<&'a Expr>) {
    match expr {
        Expr::RefBrack { refr, index, .. } => {
            term_parts(refr, out);
            operand(index, out);
        }
        Expr::RefDot { refr, .. } => term_parts(refr, out),
        Expr::Array { .. } | Expr::Set { .. } | Expr::Object { .. } => operand(expr, out),
        _ if is_always_defined(expr) => {}
        _ => out.push(expr),
    }
}

#[cfg(test)]
mod tests;
