//! `inventory:` in `stagecraft.yml`: a bad inventory stops `stagecraft run` before the script
//! starts (exit code 2, the file position and a suggestion); a good one leaves scripts running.

use crate::harness::Project;

const GOOD: &str = "\
name: shop
permissions: [ \"exec\" ]
inventory:
  defaults: { user: deploy, port: 22, key: ~/.ssh/id_ed25519, known_hosts: strict }
  hosts:
    web-1: { address: 10.0.0.11, roles: [web], env: production }
    web-2: { address: 10.0.0.12, roles: [web], env: production, port: 2222 }
    db-1:  { tailscale: db-1, roles: [db], env: production }
    stage: { address: stage.example.com, roles: [web, db], env: staging, user: root, jump: bastion }
    bastion: { address: 203.0.113.5 }
  groups:
    canary: [ web-1 ]
";

#[test]
fn a_good_inventory_leaves_scripts_running() {
    let p = Project::new();
    p.write("stagecraft.yml", GOOD);
    p.script("print(\"ran\")", &[]).ok().stdout_is("ran\n");
}

#[test]
fn an_unknown_key_names_its_position_and_a_suggestion() {
    let p = Project::new();
    p.write(
        "stagecraft.yml",
        "name: shop\ninventory:\n  hosts:\n    web-2: { address: 10.0.0.12, prot: 2222 }\n",
    );
    p.script("print(\"ran\")", &[])
        .code(2)
        .stderr_has("stagecraft.yml:4:34: unknown key 'prot' (did you mean 'port'?)")
        .stderr_has(
            "hint: known keys here: address, tailscale, port, user, key, known_hosts, known_hosts_file, jump, kex, roles, env",
        )
        .stdout_lacks("ran");
}

#[test]
fn a_broken_rule_names_the_key_path() {
    let p = Project::new();
    p.write(
        "stagecraft.yml",
        "inventory:\n  hosts:\n    db-1: { address: 10.0.0.2, tailscale: db-1 }\n",
    );
    p.script("print(\"ran\")", &[])
        .code(2)
        .stderr_has(
            "stagecraft.yml:3:43: inventory.hosts.db-1: give either address or tailscale, not both",
        )
        .stderr_has("hint: see docs/inventory.md for the format of inventory:")
        .stdout_lacks("ran");
}

#[test]
fn a_missing_jump_host_is_suggested() {
    let p = Project::new();
    p.write(
        "stagecraft.yml",
        "inventory:\n  hosts:\n    stage: { address: s.example, jump: bastoin }\n    bastion: { address: 203.0.113.5 }\n",
    );
    p.script("print(\"ran\")", &[]).code(2).stderr_has(
        "stagecraft.yml:3:40: inventory.hosts.stage.jump: jump names unknown host 'bastoin' (did you mean 'bastion'?)",
    );
}

#[test]
fn top_level_config_errors_still_name_the_key() {
    let p = Project::new();
    p.write("stagecraft.yml", "name: x\npermisions:\n  - exec\n");
    p.script("return 1", &[])
        .code(2)
        .stderr_has("stagecraft.yml:2:1: unknown key 'permisions' (did you mean 'permissions'?)")
        .stderr_has("hint: known keys here: name, permissions, tailscale, inventory");
}
