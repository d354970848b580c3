//! One walk over regorus' syntax tree, shared by the load-time checks and rewrites
//! (`builtins::calls`, `opa_rewrite`): every rule, rule body, nested query and expression of a
//! module, in source order, so each of them says only what it does at a node.
//!
//! The tree is `regorus::unstable`'s; regorus is pinned to an exact version in `Cargo.toml`.

use regorus::unstable::{Expr, Literal, Module, Query, Rule, RuleHead};

/// The dotted path of a reference made only of a variable and `.field` steps (`io.jwt.decode`,
/// a package's `traps.rules`); `None` for anything else.
pub fn path(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Var { span, .. } => Some(span.text().to_string()),
        Expr::RefDot { refr, field, .. } => Some(format!("{}.{}", path(refr)?, field.0.text())),
        _ => None,
    }
}

/// What a walk does at each kind of node. Every hook has an empty default.
pub trait Visit<'a> {
    /// Each rule, before its parts.
    fn rule(&mut self, _rule: &'a Rule) {}
    /// Each rule body (`rule_body: true`) and each query nested in an expression or an `every`
    /// (`false`), before its statements.
    fn query(&mut self, _query: &'a Query, _rule_body: bool) {}
    /// Each expression, before its parts.
    fn expr(&mut self, _expr: &'a Expr) {}
}

/// Walks every rule of `module`: heads, `default` values, bodies and their `else` values.
pub fn module<'a>(module: &'a Module, visit: &mut impl Visit<'a>) {
    for rule in &module.policy {
        visit.rule(rule);
        match rule.as_ref() {
            Rule::Spec { head, bodies, .. } => {
                match head {
                    RuleHead::Func {
                        refr, args, assign, ..
                    } => {
                        expr(refr, visit);
                        for arg in args {
                            expr(arg, visit);
                        }
                        if let Some(assign) = assign {
                            expr(&assign.value, visit);
                        }
                    }
                    RuleHead::Compr { refr, assign, .. } => {
                        expr(refr, visit);
                        if let Some(assign) = assign {
                            expr(&assign.value, visit);
                        }
                    }
                    RuleHead::Set { refr, key, .. } => {
                        expr(refr, visit);
                        if let Some(key) = key {
                            expr(key, visit);
                        }
                    }
                }
                for body in bodies {
                    if let Some(assign) = &body.assign {
                        expr(&assign.value, visit);
                    }
                    query(&body.query, true, visit);
                }
            }
            Rule::Default { value, .. } => expr(value, visit),
        }
    }
}

/// Walks a query's statements and their `with` values.
pub fn query<'a>(query: &'a Query, rule_body: bool, visit: &mut impl Visit<'a>) {
    visit.query(query, rule_body);
    for stmt in &query.stmts {
        match &stmt.literal {
            Literal::SomeVars { .. } => {}
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(key) = key {
                    expr(key, visit);
                }
                expr(value, visit);
                expr(collection, visit);
            }
            Literal::Expr { expr: e, .. } | Literal::NotExpr { expr: e, .. } => expr(e, visit),
            Literal::Every {
                domain, query: q, ..
            } => {
                expr(domain, visit);
                self::query(q, false, visit);
            }
        }
        for modifier in &stmt.with_mods {
            expr(&modifier.r#as, visit);
        }
    }
}

/// Walks an expression and everything inside it, comprehensions' queries included.
pub fn expr<'a>(e: &'a Expr, visit: &mut impl Visit<'a>) {
    visit.expr(e);
    match e {
        Expr::String { .. }
        | Expr::RawString { .. }
        | Expr::Number { .. }
        | Expr::Bool { .. }
        | Expr::Null { .. }
        | Expr::Var { .. } => {}
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            for item in items {
                expr(item, visit);
            }
        }
        Expr::Object { fields, .. } => {
            for (_, key, value) in fields {
                expr(key, visit);
                expr(value, visit);
            }
        }
        Expr::ArrayCompr { term, query: q, .. } | Expr::SetCompr { term, query: q, .. } => {
            expr(term, visit);
            query(q, false, visit);
        }
        Expr::ObjectCompr {
            key,
            value,
            query: q,
            ..
        } => {
            expr(key, visit);
            expr(value, visit);
            query(q, false, visit);
        }
        Expr::Call { fcn, params, .. } => {
            expr(fcn, visit);
            for param in params {
                expr(param, visit);
            }
        }
        Expr::UnaryExpr { expr: inner, .. } => expr(inner, visit),
        Expr::RefDot { refr, .. } => expr(refr, visit),
        Expr::RefBrack { refr, index, .. } => {
            expr(refr, visit);
            expr(index, visit);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            expr(lhs, visit);
            expr(rhs, visit);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => {
            if let Some(key) = key {
                expr(key, visit);
            }
            expr(value, visit);
            expr(collection, visit);
        }
    }
}
