//! A fluent builder around the real `stagecraft` binary, run in a throwaway project.
//!
//! ```ignore
//! let p = Project::new().file("a.luau", "print(1)");
//! p.run(&["run", "a.luau"]).code(0).stdout_is("1\n");
//! ```

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_stagecraft");

/// A temporary project directory (with `stagecraft.yml`) and a private `STAGECRAFT_HOME`.
pub struct Project {
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        let p = Project::bare();
        p.write("stagecraft.yml", "name: test\n");
        p
    }

    /// No `stagecraft.yml`.
    pub fn bare() -> Project {
        Project {
            dir: tempfile::Builder::new()
                .prefix("sc-proj-")
                .tempdir()
                .expect("temp project dir"),
            home: tempfile::Builder::new()
                .prefix("sc-home-")
                .tempdir()
                .expect("temp home dir"),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn ledger(&self) -> PathBuf {
        self.path(".stagecraft/ledger.db")
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("create parent dir");
        }
        std::fs::write(&p, content).expect("write fixture file");
    }

    /// Builder-style `write`.
    pub fn file(self, rel: &str, content: &str) -> Project {
        self.write(rel, content);
        self
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// A command for the binary in this project, with a clean, private environment.
    pub fn cmd(&self, args: &[&str]) -> Cmd {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.root())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("STAGECRAFT_HOME", self.home())
            .stdin(Stdio::null());
        Cmd {
            cmd: c,
            stdin: None,
        }
    }

    /// Run the binary to completion.
    pub fn run(&self, args: &[&str]) -> Out {
        self.cmd(args).output()
    }

    /// Run an inline script: writes it to `script.luau` and runs it with extra CLI args.
    pub fn script(&self, source: &str, extra: &[&str]) -> Out {
        self.write("script.luau", source);
        let mut args = vec!["run", "script.luau"];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Open the ledger for direct inspection/tampering.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.ledger()).expect("open ledger")
    }
}

pub struct Cmd {
    pub cmd: Command,
    stdin: Option<Vec<u8>>,
}

impl Cmd {
    pub fn env(mut self, k: &str, v: &str) -> Cmd {
        self.cmd.env(k, v);
        self
    }

    pub fn stdin(mut self, data: &str) -> Cmd {
        self.stdin = Some(data.as_bytes().to_vec());
        self.cmd.stdin(Stdio::piped());
        self
    }

    pub fn output(mut self) -> Out {
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = self.cmd.spawn().expect("spawn stagecraft");
        if let Some(data) = self.stdin.take() {
            use std::io::Write;
            let mut pipe = child.stdin.take().expect("stdin pipe");
            pipe.write_all(&data).expect("write stdin");
        }
        let out = child.wait_with_output().expect("wait for stagecraft");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A finished command, with fluent assertions that print everything on failure.
#[derive(Debug, Clone)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n--- exit code: {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    pub fn code(self, want: i32) -> Out {
        if self.code != want {
            self.fail(&format!("expected exit code {want}"));
        }
        self
    }

    pub fn ok(self) -> Out {
        self.code(0)
    }

    pub fn stdout_is(self, want: &str) -> Out {
        if self.stdout != want {
            self.fail(&format!("expected stdout exactly {want:?}"));
        }
        self
    }

    pub fn stdout_has(self, want: &str) -> Out {
        if !self.stdout.contains(want) {
            self.fail(&format!("expected stdout to contain {want:?}"));
        }
        self
    }

    pub fn stderr_has(self, want: &str) -> Out {
        if !self.stderr.contains(want) {
            self.fail(&format!("expected stderr to contain {want:?}"));
        }
        self
    }

    pub fn stdout_lacks(self, bad: &str) -> Out {
        if self.stdout.contains(bad) {
            self.fail(&format!("stdout must not contain {bad:?}"));
        }
        self
    }

    pub fn stderr_lacks(self, bad: &str) -> Out {
        if self.stderr.contains(bad) {
            self.fail(&format!("stderr must not contain {bad:?}"));
        }
        self
    }

    /// Neither stream contains `bad`.
    pub fn lacks(self, bad: &str) -> Out {
        self.stdout_lacks(bad).stderr_lacks(bad)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| self.fail(&format!("stdout is not JSON: {e}")))
    }
}
