//! Networks and volumes: `create`, `inspect`, `list`, `remove`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bollard::query_parameters as q;
use mlua::{Lua, Table, Value};
use serde::Deserialize;
use serde_json::json;

use super::{Engine, OneOrMany, call, engine_fn, filter_map, opts_json, to_value};
use crate::api::opts;
use crate::runtime::fault::OpError;
use crate::runtime::value::to_lua;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct NetworkOpts {
    name: Option<String>,
    driver: Option<String>,
    labels: BTreeMap<String, String>,
    internal: bool,
    attachable: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct VolumeOpts {
    name: Option<String>,
    driver: Option<String>,
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ListOpts {
    filters: BTreeMap<String, OneOrMany>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RemoveOpts {
    force: bool,
}

pub fn register(lua: &Lua, t: &Table, eng: &Arc<Engine>) -> mlua::Result<()> {
    let networks = lua.create_table()?;
    let volumes = lua.create_table()?;

    networks.set(
        "create",
        engine_fn(lua, eng, |lua, e, o: Option<Value>| async move {
            const F: &str = "docker.networks.create";
            let args = opts_json(F, &o)?;
            let o: NetworkOpts = opts(F, o)?;
            let name = required_name(F, o.name.as_deref())?;
            let v = call(&lua, &e, F, args, |_, d, e| async move {
                // Engines before API 1.44 create a second network of the same name.
                if d.inspect_network(&name, None::<q::InspectNetworkOptions>)
                    .await
                    .is_ok()
                {
                    return Err(OpError::new(
                        super::errkinds::CONFLICT,
                        format!("{F}: a network named {name} already exists"),
                    )
                    .hint("use it, or remove it first with docker.networks.remove"));
                }
                let req = serde_json::from_value(json!({
                    "Name": name,
                    "Driver": o.driver.unwrap_or_else(|| "bridge".into()),
                    "Labels": o.labels,
                    "Internal": o.internal,
                    "Attachable": o.attachable,
                }))
                .map_err(|err| OpError::new("internal", format!("{F}: {err}")))?;
                let r = d
                    .create_network(req)
                    .await
                    .map_err(|err| e.fail(F, None, err))?;
                Ok(json!({ "id": r.id, "name": name }))
            })
            .await?;
            to_lua(&lua, &v)
        })?,
    )?;

    networks.set(
        "inspect",
        engine_fn(lua, eng, |lua, e, name: String| async move {
            const F: &str = "docker.networks.inspect";
            let v = call(
                &lua,
                &e,
                F,
                json!({ "network": name }),
                |_, d, e| async move {
                    let r = d
                        .inspect_network(&name, None::<q::InspectNetworkOptions>)
                        .await
                        .map_err(|err| e.fail(F, None, err))?;
                    to_value(F, &r)
                },
            )
            .await?;
            to_lua(&lua, &v)
        })?,
    )?;

    networks.set(
        "list",
        engine_fn(lua, eng, |lua, e, o: Option<Value>| async move {
            const F: &str = "docker.networks.list";
            let args = opts_json(F, &o)?;
            let o: ListOpts = opts(F, o)?;
            let v = call(&lua, &e, F, args, |_, d, e| async move {
                let r = d
                    .list_networks(Some(q::ListNetworksOptions {
                        filters: filter_map(o.filters),
                    }))
                    .await
                    .map_err(|err| e.fail(F, None, err))?;
                to_value(F, &r)
            })
            .await?;
            to_lua(&lua, &v)
        })?,
    )?;

    networks.set(
        "remove",
        engine_fn(lua, eng, |lua, e, name: String| async move {
            const F: &str = "docker.networks.remove";
            let v = call(
                &lua,
                &e,
                F,
                json!({ "network": name }),
                |_, d, e| async move {
                    d.remove_network(&name)
                        .await
                        .map_err(|err| e.fail(F, None, err))?;
                    Ok(json!({ "removed": name }))
                },
            )
            .await?;
            to_lua(&lua, &v)
        })?,
    )?;

    volumes.set(
        "create",
        engine_fn(lua, eng, |lua, e, o: Option<Value>| async move {
            const F: &str = "docker.volumes.create";
            let args = opts_json(F, &o)?;
            let o: VolumeOpts = opts(F, o)?;
            let name = required_name(F, o.name.as_deref())?;
            let v = call(&lua, &e, F, args, |_, d, e| async move {
                let req: bollard::models::VolumeCreateRequest = serde_json::from_value(json!({
                    "Name": name,
                    "Driver": o.driver.unwrap_or_else(|| "local".into()),
                    "Labels": o.labels,
                }))
                .map_err(|err| OpError::new("internal", format!("{F}: {err}")))?;
                let r = d
                    .create_volume(req)
                    .await
                    .map_err(|err| e.fail(F, None, err))?;
                to_value(F, &r)
            })
            .await?;
            to_lua(&lua, &v)
        })?,
    )?;

    volumes.set(
        "inspect",
        engine_fn(lua, eng, |lua, e, name: String| async move {
            const F: &str = "docker.volumes.inspect";
            let v = call(
                &lua,
                &e,
                F,
                json!({ "volume": name }),
                |_, d, e| async move {
                    let r = d
                        .inspect_volume(&name)
                        .await
                        .map_err(|err| e.fail(F, None, err))?;
                    to_value(F, &r)
                },
            )
            .await?;
            to_lua(&lua, &v)
        })?,
    )?;

    volumes.set(
        "list",
        engine_fn(lua, eng, |lua, e, o: Option<Value>| async move {
            const F: &str = "docker.volumes.list";
            let args = opts_json(F, &o)?;
            let o: ListOpts = opts(F, o)?;
            let v = call(&lua, &e, F, args, |_, d, e| async move {
                let r = d
                    .list_volumes(Some(q::ListVolumesOptions {
                        filters: filter_map(o.filters),
                    }))
                    .await
                    .map_err(|err| e.fail(F, None, err))?;
                to_value(F, &r.volumes.unwrap_or_default())
            })
            .await?;
            to_lua(&lua, &v)
        })?,
    )?;

    volumes.set(
        "remove",
        engine_fn(
            lua,
            eng,
            |lua, e, (name, o): (String, Option<Value>)| async move {
                const F: &str = "docker.volumes.remove";
                let args = json!({ "volume": name, "opts": opts_json(F, &o)? });
                let o: RemoveOpts = opts(F, o)?;
                let v = call(&lua, &e, F, args, |_, d, e| async move {
                    d.remove_volume(&name, Some(q::RemoveVolumeOptions { force: o.force }))
                        .await
                        .map_err(|err| e.fail(F, None, err))?;
                    Ok(json!({ "removed": name }))
                })
                .await?;
                to_lua(&lua, &v)
            },
        )?,
    )?;

    t.set("networks", networks)?;
    t.set("volumes", volumes)?;
    Ok(())
}

fn required_name(func: &str, name: Option<&str>) -> mlua::Result<String> {
    match name {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => Err(OpError::invalid(format!("{func}: name is required")).into_lua()),
    }
}
