#!/bin/sh
# Prints the package version. On a tag vX.Y.Z: X.Y.Z. Otherwise the last
# tag (or 0.0.0) + git<commit time UTC>.<short hash>, so versions of later
# commits sort higher; ".dirty" marks a tree with uncommitted changes.
set -e
if tag=$(git describe --tags --exact-match --match 'v[0-9]*' 2>/dev/null); then
	v=${tag#v}
else
	base=$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null || echo v0.0.0)
	when=$(TZ=UTC git log -1 --date=format-local:%Y%m%d%H%M%S --format=%cd)
	v="${base#v}+git${when}.$(git rev-parse --short=12 HEAD)"
fi
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
	v="$v.dirty"
fi
echo "$v"
