//! `stagecraft/recipe`: the primitives behind a recipe's `ctx` (used by the recipe driver that
//! `stagecraft recipe apply` runs): render a template, compute a plan's changes as a diff, and
//! apply them. All three are recorded; `apply` needs `fs-write`.

use mlua::{Lua, Table, Value};
use serde_json::{Map, json};

use super::plan::{self, Plan};
use crate::runtime::caps::Request;
use crate::runtime::fault::OpError;
use crate::runtime::value::{ToJson, to_json, to_lua};
use crate::runtime::{RunCtx, ctx};

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("render", lua.create_async_function(render)?)?;
    t.set("diff", lua.create_async_function(diff)?)?;
    t.set("apply", lua.create_async_function(apply)?)?;
    Ok(t)
}

fn json_of(func: &str, what: &str, v: &Value) -> mlua::Result<serde_json::Value> {
    to_json(v, ToJson::default())
        .map_err(|e| OpError::invalid(format!("{func}: {what}: {e}")).into_lua())
}

fn package(ctx: &RunCtx, func: &str, name: &str) -> Result<super::package::Package, OpError> {
    super::resolve(&ctx.project, name).map_err(|e| {
        OpError::new(
            crate::runtime::kinds::NOT_FOUND,
            format!("{func}: {}", e.message),
        )
    })
}

/// `recipe.render(recipe, template, vars) -> string`
async fn render(lua: Lua, (name, template, vars): (String, String, Value)) -> mlua::Result<Value> {
    let ctx = ctx(&lua)?;
    let vars = match vars {
        Value::Nil => serde_json::Value::Object(Map::new()),
        v => json_of("recipe.render", "vars", &v)?,
    };
    let v = ctx
        .record(
            "recipe.render",
            json!({ "recipe": name, "template": template, "vars": vars }),
            || async {
                let pkg = package(&ctx, "recipe.render", &name)?;
                super::render::render(&pkg, &template, &vars)
                    .map(serde_json::Value::String)
                    .map_err(|e| {
                        OpError::new("template_error", format!("recipe {name}: {e}"))
                            .hint("every variable a template uses must be passed to ctx.render")
                    })
            },
        )
        .await
        .map_err(OpError::into_lua)?;
    to_lua(&lua, &v)
}

struct Args {
    name: String,
    inputs: Map<String, serde_json::Value>,
    plan_json: serde_json::Value,
}

fn args(func: &str, name: String, inputs: Value, plan: Value) -> mlua::Result<Args> {
    let inputs = match json_of(func, "inputs", &inputs)? {
        serde_json::Value::Object(m) => m,
        _ => Map::new(),
    };
    let plan_json = json_of(func, "plan", &plan)?;
    Ok(Args {
        name,
        inputs,
        plan_json,
    })
}

fn summary(outcome: &plan::Outcome) -> serde_json::Value {
    let files: Vec<serde_json::Value> = outcome
        .changes
        .iter()
        .map(|c| json!({ "path": c.path, "action": c.action() }))
        .collect();
    let changed = outcome
        .changes
        .iter()
        .filter(|c| c.action() != "unchanged")
        .count();
    let secrets: Vec<&str> = outcome.secrets.iter().map(|(n, _)| n.as_str()).collect();
    json!({
        "files": files,
        "changed": changed,
        "placeholders": outcome.placeholders,
        "secrets": secrets,
    })
}

/// `recipe.diff(recipe, inputs, plan) -> { files, changed, placeholders, secrets, diff }`:
/// what applying the plan would change, as a unified diff. Writes nothing.
async fn diff(lua: Lua, (name, inputs, plan): (String, Value, Value)) -> mlua::Result<Value> {
    planned(lua, "recipe.diff", false, name, inputs, plan).await
}

/// `recipe.apply(recipe, inputs, plan) -> { files, changed, placeholders, secrets }`: write what
/// the plan changes (only files whose content differs, each atomically). Needs `fs-write`.
async fn apply(lua: Lua, (name, inputs, plan): (String, Value, Value)) -> mlua::Result<Value> {
    planned(lua, "recipe.apply", true, name, inputs, plan).await
}

/// Both compute the plan's changes the same way; `apply` then writes them, `diff` shows them.
async fn planned(
    lua: Lua,
    op: &'static str,
    write: bool,
    name: String,
    inputs: Value,
    plan: Value,
) -> mlua::Result<Value> {
    let ctx = ctx(&lua)?;
    let a = args(op, name, inputs, plan)?;
    let parsed: Plan = crate::api::from_json(&format!("{op}: plan"), a.plan_json.clone())?;
    let v = ctx
        .record(
            op,
            json!({ "recipe": a.name, "inputs": a.inputs, "plan": a.plan_json }),
            || async {
                if write {
                    ctx.require(op, &Request::Plain("fs-write"), "fs-write")?;
                }
                let pkg = package(&ctx, op, &a.name)?;
                // Everything is computed and validated before the first write.
                let outcome = plan::compute(&ctx, &pkg, &a.inputs, &parsed)?;
                let mut s = summary(&outcome);
                if !write {
                    let text: String = outcome.changes.iter().map(|c| c.diff()).collect();
                    s["diff"] = serde_json::Value::String(text);
                    return Ok(s);
                }
                for c in outcome.changes.iter().filter(|c| c.action() != "unchanged") {
                    super::write_atomic(&c.full, c.new.as_bytes(), c.mode)
                        .map_err(|e| OpError::io(format!("{op}: {}: {}", c.path, e.message)))?;
                }
                Ok(s)
            },
        )
        .await
        .map_err(OpError::into_lua)?;
    to_lua(&lua, &v)
}
