//! Templates: minijinja with strict undefined (a missing variable is an error, never an empty
//! string), loaded from the package's `templates/` folder, with a fuel budget.

use minijinja::{Environment, UndefinedBehavior};

use super::package::Package;

/// Instructions one rendering may run (a loop bomb stops with an error).
const FUEL: u64 = 5_000_000;

/// Render `templates/<template>` of the package with `vars`. Errors name the template and line.
pub fn render(pkg: &Package, template: &str, vars: &serde_json::Value) -> Result<String, String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_trim_blocks(true);
    env.set_fuel(Some(FUEL));
    let pkg = pkg.clone();
    env.set_loader(move |name| {
        if name.split('/').any(|s| s == ".." || s.is_empty()) {
            return Ok(None);
        }
        Ok(pkg.read_text(&format!("templates/{name}")))
    });
    let tmpl = env
        .get_template(template)
        .map_err(|e| describe(template, &e))?;
    tmpl.render(vars).map_err(|e| describe(template, &e))
}

fn describe(template: &str, e: &minijinja::Error) -> String {
    if e.kind() == minijinja::ErrorKind::TemplateNotFound {
        return format!("no template templates/{template} in the recipe package");
    }
    let at = match (e.name(), e.line()) {
        (Some(n), Some(l)) => format!("templates/{n}:{l}: "),
        (Some(n), None) => format!("templates/{n}: "),
        _ => format!("templates/{template}: "),
    };
    let mut msg = format!("{at}{}", e.kind());
    if let Some(d) = e.detail() {
        msg.push_str(&format!(": {d}"));
    }
    msg
}
