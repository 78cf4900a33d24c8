#!/bin/sh
# Publish the example recipe in examples/recipes/static-site as a local git repository, install
# it into a project at a tag, look at it, dry-run it and apply it.
#
# Usage: sh examples/recipes/install.sh [PROJECT_DIR]    (default: a new temporary folder)
# Needs `stagecraft` and `git` on PATH. Run by tests/integration/recipes.rs.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
project=${1:-$(mktemp -d)}
repo=$(mktemp -d)
trap 'rm -rf "$repo"' EXIT

# 1. The recipe as a git repository with a tag (a team would push it to its git server).
cp -R "$here/static-site/." "$repo/"
git -C "$repo" init --quiet -b main
git -C "$repo" add .
git -C "$repo" -c user.name=example -c user.email=example@example.invalid \
	commit --quiet -m "static-site 1.0.0"
git -C "$repo" tag v1.0.0

cd "$project"
[ -f stagecraft.yml ] || echo "name: example" >stagecraft.yml

# 2. Install it at the tag: copied into .stagecraft/recipes/static-site/, pinned (commit and
#    sha256) in stagecraft.lock. --yes approves the capabilities it asks for (fs-write).
stagecraft recipe add "file://$repo#v1.0.0" --yes
stagecraft recipe list
stagecraft recipe show static-site

# 3. What it would change, then apply it (each is a recorded run in the ledger).
stagecraft recipe apply static-site title="Our site" --dry-run
stagecraft recipe apply static-site title="Our site"
echo "project: $project"
