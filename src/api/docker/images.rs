//! Images: `images.build` (also `docker.build`), `inspect`, `list`, `remove`, `tag`, `pull`,
//! `push`, `save`, `load`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters as q;
use bytes::Bytes;
use futures::StreamExt;
use mlua::{Lua, Table, Value};
use serde::Deserialize;
use serde_json::json;

use super::{
    Engine, OneOrMany, call, context, engine_fn, filter_map, opts_json, progress, to_value,
};
use crate::api::{from_json, opts};
use crate::runtime::RunCtx;
use crate::runtime::caps::Request;
use crate::runtime::fault::{OpError, kinds};
use crate::runtime::value::to_lua;

pub fn register(lua: &Lua, t: &Table, eng: &Arc<Engine>) -> mlua::Result<()> {
    let images = lua.create_table()?;
    let build_fn = engine_fn(lua, eng, build)?;
    images.set("build", build_fn.clone())?;
    t.set("build", build_fn)?;

    images.set(
        "inspect",
        engine_fn(lua, eng, |lua, e, name: String| async move {
            let v = call(
                &lua,
                &e,
                "docker.images.inspect",
                json!({ "image": name }),
                |_, d, e| async move {
                    let r = d
                        .inspect_image(&name)
                        .await
                        .map_err(|err| e.fail("docker.images.inspect", None, err))?;
                    to_value("docker.images.inspect", &r)
                },
            )
            .await?;
            to_lua(&lua, &v)
        })?,
    )?;

    images.set(
        "list",
        engine_fn(lua, eng, |lua, e, o: Option<Value>| async move {
            let args = opts_json("docker.images.list", &o)?;
            let o: ListOpts = opts("docker.images.list", o)?;
            let v = call(&lua, &e, "docker.images.list", args, |_, d, e| async move {
                let r = d
                    .list_images(Some(q::ListImagesOptions {
                        all: o.all,
                        filters: filter_map(o.filters),
                        ..Default::default()
                    }))
                    .await
                    .map_err(|err| e.fail("docker.images.list", None, err))?;
                to_value("docker.images.list", &r)
            })
            .await?;
            to_lua(&lua, &v)
        })?,
    )?;

    images.set(
        "remove",
        engine_fn(
            lua,
            eng,
            |lua, e, (name, o): (String, Option<Value>)| async move {
                let args = json!({ "image": name, "opts": opts_json("docker.images.remove", &o)? });
                let o: RemoveOpts = opts("docker.images.remove", o)?;
                let v = call(
                    &lua,
                    &e,
                    "docker.images.remove",
                    args,
                    |_, d, e| async move {
                        let r = d
                            .remove_image(
                                &name,
                                Some(q::RemoveImageOptions {
                                    force: o.force,
                                    noprune: false,
                                    ..Default::default()
                                }),
                                None,
                            )
                            .await
                            .map_err(|err| e.fail("docker.images.remove", None, err))?;
                        to_value("docker.images.remove", &r)
                    },
                )
                .await?;
                to_lua(&lua, &v)
            },
        )?,
    )?;

    images.set(
        "tag",
        engine_fn(
            lua,
            eng,
            |lua, e, (source, target): (String, String)| async move {
                let (repo, tag) = split_ref(&target);
                let (repo, tag) = (repo.to_string(), tag.to_string());
                if repo.is_empty() {
                    return Err(OpError::invalid(format!(
                        "docker.images.tag: '{target}' is not an image reference (repo[:tag])"
                    ))
                    .into_lua());
                }
                let args = json!({ "source": source, "target": target });
                let v = call(&lua, &e, "docker.images.tag", args, |_, d, e| async move {
                    d.tag_image(
                        &source,
                        Some(q::TagImageOptions {
                            repo: Some(repo),
                            tag: Some(tag),
                        }),
                    )
                    .await
                    .map_err(|err| e.fail("docker.images.tag", None, err))?;
                    Ok(json!({ "image": target }))
                })
                .await?;
                to_lua(&lua, &v)
            },
        )?,
    )?;

    for (name, op) in [
        ("pull", "docker.images.pull"),
        ("push", "docker.images.push"),
    ] {
        images.set(
            name,
            engine_fn(lua, eng, move |lua, e, (image, o): (String, Option<Value>)| {
                async move {
                    // Validated before anything is recorded: a password given as a plain
                    // string must not reach the ledger.
                    let o_json = opts_json(op, &o)?;
                    let o: RegistryOpts = opts(op, o)?;
                    if let Some(a) = &o.auth
                        && crate::runtime::secrets::SecretHandle::from_reference(&a.password).is_none()
                    {
                        return Err(OpError::invalid(format!(
                            "{op}: auth.password must be a secret handle, not a {}",
                            if a.password.is_string() { "string" } else { "plain value" }
                        ))
                        .hint("load it with require(\"stagecraft/secrets\").get(\"REGISTRY_PASSWORD\")")
                        .into_lua());
                    }
                    let args = json!({ "image": image, "opts": o_json });
                    let v = call(&lua, &e, op, args, |ctx, d, e| async move {
                        let creds = credentials(&ctx, op, &o)?;
                        if op == "docker.images.pull" {
                            pull(&ctx, &e, &d, &image, creds).await
                        } else {
                            push(&ctx, &e, &d, &image, creds).await
                        }
                    })
                    .await?;
                    to_lua(&lua, &v)
                }
            })?,
        )?;
    }

    images.set(
        "save",
        engine_fn(
            lua,
            eng,
            |lua, e, (refs, path): (Value, String)| async move {
                let refs_json = opts_json("docker.images.save", &Some(refs))?;
                let refs: Vec<String> = match refs_json {
                    serde_json::Value::String(s) => vec![s],
                    other => from_json("docker.images.save", other)?,
                };
                if refs.is_empty() {
                    return Err(OpError::invalid("docker.images.save: no image given").into_lua());
                }
                let args = json!({ "images": refs, "path": path });
                let v = call(
                    &lua,
                    &e,
                    "docker.images.save",
                    args,
                    |ctx, d, e| async move { save(&ctx, &e, &d, refs, &path).await },
                )
                .await?;
                to_lua(&lua, &v)
            },
        )?,
    )?;

    images.set(
        "load",
        engine_fn(lua, eng, |lua, e, path: String| async move {
            let args = json!({ "path": path });
            let v = call(
                &lua,
                &e,
                "docker.images.load",
                args,
                |ctx, d, e| async move { load(&ctx, &e, &d, &path).await },
            )
            .await?;
            to_lua(&lua, &v)
        })?,
    )?;

    t.set("images", images)?;
    Ok(())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ListOpts {
    all: bool,
    filters: BTreeMap<String, OneOrMany>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RemoveOpts {
    force: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RegistryOpts {
    /// `{ username =, password = <secret>, server = }`.
    auth: Option<Auth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Auth {
    username: String,
    password: serde_json::Value,
    server: Option<String>,
}

fn credentials(
    ctx: &RunCtx,
    func: &str,
    o: &RegistryOpts,
) -> Result<Option<DockerCredentials>, OpError> {
    let Some(a) = &o.auth else {
        return Ok(None);
    };
    let password = super::resolve_value(ctx, func, "auth.password", &a.password)?;
    Ok(Some(DockerCredentials {
        username: Some(a.username.clone()),
        password: Some(password),
        serveraddress: a.server.clone(),
        ..Default::default()
    }))
}

/// `registry:5000/app:1.2` -> (`registry:5000/app`, `1.2`); no tag -> `latest`.
pub fn split_ref(r: &str) -> (&str, &str) {
    let r = r.split('@').next().unwrap_or(r);
    let slash = r.rfind('/').map(|i| i + 1).unwrap_or(0);
    match r[slash..].rfind(':') {
        Some(i) => (&r[..slash + i], &r[slash + i + 1..]),
        None => (r, "latest"),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct BuildOpts {
    /// Folder inside the project (default: the project root).
    context: Option<String>,
    /// Relative to the context (default `Dockerfile`).
    dockerfile: Option<String>,
    tag: Option<OneOrMany>,
    build_args: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    target: Option<String>,
    no_cache: bool,
    /// Hide the build output (it is shown on stderr by default).
    quiet: bool,
}

async fn build(lua: Lua, e: Arc<Engine>, o: Option<Value>) -> mlua::Result<Value> {
    const F: &str = "docker.images.build";
    let ctx = crate::runtime::ctx(&lua)?;
    let opts_value = opts_json(F, &o)?;
    let o: BuildOpts = opts(F, o)?;
    let tags: Vec<String> = match o.tag.clone() {
        None | Some(OneOrMany::None) => vec![],
        Some(OneOrMany::One(t)) => vec![t],
        Some(OneOrMany::Many(v)) => v,
    };
    let dir = super::super::fs::confine(
        &ctx,
        F,
        o.context.as_deref().unwrap_or("."),
        super::super::fs::Access::Read,
    )
    .map_err(OpError::into_lua)?;
    let dockerfile = o.dockerfile.clone().unwrap_or_else(|| "Dockerfile".into());
    if !dir.join(&dockerfile).is_file() {
        return Err(OpError::new(
            kinds::NOT_FOUND,
            format!(
                "{F}: no {dockerfile} in the build context {}",
                o.context.as_deref().unwrap_or(".")
            ),
        )
        .hint("set dockerfile = \"path/relative/to/context\" or add the file")
        .into_lua());
    }
    // The context is recorded by digest: a replay with other files diverges.
    let d2 = dir.clone();
    let df2 = dockerfile.clone();
    let at_root = dir.canonicalize().ok() == ctx.project.root.canonicalize().ok();
    let bctx = tokio::task::spawn_blocking(move || context::collect(&d2, &df2, at_root))
        .await
        .map_err(|err| OpError::io(format!("{F}: {err}")).into_lua())?
        .map_err(|err| OpError::io(format!("{F}: reading the build context: {err}")).into_lua())?;
    let args = json!({
        "opts": opts_value,
        "context_digest": bctx.digest,
        "context_files": bctx.files,
        "context_bytes": bctx.bytes,
    });
    let v = call(&lua, &e, F, args, |ctx, d, e| async move {
        run_build(&ctx, &e, &d, bctx, o, dockerfile, tags).await
    })
    .await?;
    to_lua(&lua, &v)
}

async fn run_build(
    ctx: &RunCtx,
    e: &Engine,
    d: &Docker,
    bctx: context::Context,
    o: BuildOpts,
    dockerfile: String,
    tags: Vec<String>,
) -> Result<serde_json::Value, OpError> {
    const F: &str = "docker.images.build";
    let digest = bctx.digest.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let producer = tokio::task::spawn_blocking(move || {
        let w = ChanWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        if let Err(err) = context::write_tar(&bctx, w) {
            let _ = tx.blocking_send(Err(err));
        }
    });
    let body = bollard::body_try_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let options = q::BuildImageOptions {
        dockerfile,
        t: tags.first().cloned(),
        q: false,
        nocache: o.no_cache,
        rm: true,
        forcerm: true,
        buildargs: (!o.build_args.is_empty())
            .then(|| o.build_args.clone().into_iter().collect::<HashMap<_, _>>()),
        labels: (!o.labels.is_empty())
            .then(|| o.labels.clone().into_iter().collect::<HashMap<_, _>>()),
        target: o.target.clone().unwrap_or_default(),
        ..Default::default()
    };
    let mut stream = d.build_image(options, None, Some(body));
    let mut id: Option<String> = None;
    let mut tail: Vec<String> = Vec::new();
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            // bollard hands the engine's mid-stream errorDetail over as an error item.
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                bollard::models::BuildInfo {
                    error_detail: Some(stream_error(error)),
                    ..Default::default()
                }
            }
            Err(err) => return Err(e.fail(F, None, err)),
        };
        if let Some(s) = info.stream.as_deref() {
            if !o.quiet {
                progress(ctx, s);
            }
            if let Some(rest) = s.trim().strip_prefix("Successfully built ") {
                id = Some(rest.trim().to_string());
            }
            tail.push(s.to_string());
            if tail.len() > 20 {
                tail.remove(0);
            }
        }
        if let Some(aux) = info.aux.and_then(|a| a.id) {
            id = Some(aux);
        }
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            return Err(OpError::new(
                super::errkinds::ENGINE,
                format!("{F}: the build failed: {}", err.trim()),
            )
            .hint(format!("last build output:\n{}", tail.concat().trim_end())));
        }
    }
    let _ = producer.await;
    let Some(id) = id else {
        return Err(OpError::new(
            super::errkinds::ENGINE,
            format!("{F}: the engine did not report an image id"),
        ));
    };
    for t in tags.iter().skip(1) {
        let (repo, tag) = split_ref(t);
        d.tag_image(
            &id,
            Some(q::TagImageOptions {
                repo: Some(repo.to_string()),
                tag: Some(tag.to_string()),
            }),
        )
        .await
        .map_err(|err| e.fail(F, None, err))?;
    }
    let full = d
        .inspect_image(&id)
        .await
        .map_err(|err| e.fail(F, None, err))?;
    Ok(json!({
        "id": full.id.unwrap_or(id),
        "tags": tags,
        "context_digest": digest,
    }))
}

/// An `errorDetail` the engine sent in the middle of a stream (a failed build step, a refused
/// push), which bollard returns as `Err(DockerStreamError)` instead of inside the item.
fn stream_error(message: String) -> bollard::models::ErrorDetail {
    bollard::models::ErrorDetail {
        message: Some(message),
        ..Default::default()
    }
}

const CHUNK: usize = 64 * 1024;

/// A blocking writer feeding an async channel in 64 KiB chunks.
struct ChanWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for ChanWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "engine closed"))
    }
}

impl Drop for ChanWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Pull an image (used by `images.pull` and by `run{pull=...}`).
pub async fn pull(
    ctx: &RunCtx,
    e: &Engine,
    d: &Docker,
    image: &str,
    creds: Option<DockerCredentials>,
) -> Result<serde_json::Value, OpError> {
    const F: &str = "docker.images.pull";
    let (repo, tag) = split_ref(image);
    let mut s = d.create_image(
        Some(q::CreateImageOptions {
            from_image: Some(repo.to_string()),
            tag: Some(tag.to_string()),
            ..Default::default()
        }),
        None,
        creds,
    );
    while let Some(item) = s.next().await {
        let info = item.map_err(|err| {
            let mut e = e.fail(F, None, err);
            e.hint = Some(if e.message.contains("unauthorized") || e.message.contains("authentication") {
                "check the registry address and the credentials given in auth".to_string()
            } else {
                format!("{image} could not be pulled; build it with docker.build or bring it with docker.images.load")
            });
            e
        })?;
        if let Some(m) = info.error_detail.and_then(|d| d.message) {
            return Err(OpError::new(
                super::errkinds::ENGINE,
                format!("{F}: pulling {image}: {m}"),
            ));
        }
        if let Some(st) = info.status
            && info.progress_detail.is_none_or(|p| p.total.is_none())
        {
            progress(ctx, &format!("{image}: {st}\n"));
        }
    }
    Ok(json!({ "image": image }))
}

async fn push(
    ctx: &RunCtx,
    e: &Engine,
    d: &Docker,
    image: &str,
    creds: Option<DockerCredentials>,
) -> Result<serde_json::Value, OpError> {
    const F: &str = "docker.images.push";
    let (repo, tag) = split_ref(image);
    let mut s = d.push_image(
        repo,
        Some(q::PushImageOptions {
            tag: Some(tag.to_string()),
            ..Default::default()
        }),
        creds,
    );
    let mut digest = None;
    while let Some(item) = s.next().await {
        let info = match item {
            Ok(info) => info,
            // bollard hands the engine's mid-stream errorDetail over as an error item.
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                bollard::models::PushImageInfo {
                    error_detail: Some(stream_error(error)),
                    ..Default::default()
                }
            }
            Err(err) => return Err(e.fail(F, None, err)),
        };
        if let Some(m) = info.error_detail.and_then(|d| d.message) {
            let kind = if m.contains("authentication") || m.contains("unauthorized") {
                super::errkinds::AUTHENTICATION
            } else {
                super::errkinds::ENGINE
            };
            return Err(OpError::new(kind, format!("{F}: pushing {image}: {m}"))
                .hint("check the registry address and the credentials given in auth"));
        }
        if let Some(st) = info.status {
            if let Some(i) = st.find("digest: ") {
                digest = st[i + 8..].split_whitespace().next().map(str::to_string);
            }
            if info.progress_detail.is_none_or(|p| p.total.is_none()) {
                progress(ctx, &format!("{image}: {st}\n"));
            }
        }
    }
    Ok(json!({ "image": image, "digest": digest }))
}

async fn save(
    ctx: &RunCtx,
    e: &Engine,
    d: &Docker,
    refs: Vec<String>,
    path: &str,
) -> Result<serde_json::Value, OpError> {
    const F: &str = "docker.images.save";
    ctx.require(F, &Request::Plain("fs-write"), "fs-write")?;
    let dest = super::super::fs::confine(ctx, F, path, super::super::fs::Access::Write)?;
    let tmp = dest.with_file_name(format!(
        ".{}.stagecraft-tmp",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("image")
    ));
    let names: Vec<&str> = refs.iter().map(String::as_str).collect();
    let mut s = d.export_images(&names);
    let mut f = tokio::fs::File::create(&tmp)
        .await
        .map_err(|err| OpError::io(format!("{F}: {path}: {err}")))?;
    let mut h = sha2::Sha256::new();
    let mut n = 0u64;
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let result: Result<(), OpError> = async {
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|err| e.fail(F, None, err))?;
            h.update(&chunk);
            n += chunk.len() as u64;
            f.write_all(&chunk)
                .await
                .map_err(|err| OpError::io(format!("{F}: {path}: {err}")))?;
        }
        f.sync_all()
            .await
            .map_err(|err| OpError::io(format!("{F}: {path}: {err}")))?;
        Ok(())
    }
    .await;
    if let Err(err) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(err);
    }
    tokio::fs::rename(&tmp, &dest)
        .await
        .map_err(|err| OpError::io(format!("{F}: {path}: {err}")))?;
    Ok(json!({
        "path": path,
        "images": refs,
        "bytes": n,
        "sha256": hex::encode(h.finalize()),
    }))
}

async fn load(
    ctx: &RunCtx,
    e: &Engine,
    d: &Docker,
    path: &str,
) -> Result<serde_json::Value, OpError> {
    const F: &str = "docker.images.load";
    let src = super::super::fs::confine(ctx, F, path, super::super::fs::Access::Read)?;
    let file = tokio::fs::File::open(&src).await.map_err(|err| {
        OpError::new(
            if err.kind() == std::io::ErrorKind::NotFound {
                kinds::NOT_FOUND
            } else {
                kinds::IO
            },
            format!("{F}: {path}: {err}"),
        )
    })?;
    let reader = tokio_util::io::ReaderStream::with_capacity(file, CHUNK);
    let mut s = d.import_image_stream(q::ImportImageOptions::default(), reader, None);
    let mut loaded = Vec::new();
    while let Some(item) = s.next().await {
        let info = item.map_err(|err| e.fail(F, None, err))?;
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            return Err(OpError::new(
                super::errkinds::ENGINE,
                format!("{F}: {path}: {err}"),
            ));
        }
        if let Some(st) = info.stream.as_deref() {
            for line in st.lines() {
                if let Some(name) = line
                    .strip_prefix("Loaded image: ")
                    .or_else(|| line.strip_prefix("Loaded image ID: "))
                {
                    loaded.push(name.trim().to_string());
                }
            }
        }
    }
    Ok(json!({ "path": path, "images": loaded }))
}
