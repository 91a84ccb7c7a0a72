#!/usr/bin/env bash
# The version lives in loyalty.control; META.json and README.md must agree.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
v=$(sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" "$ROOT/loyalty.control")
[ -n "$v" ] || { echo "no default_version in loyalty.control" >&2; exit 1; }
semver=$v; [[ $v =~ ^[0-9]+\.[0-9]+$ ]] && semver=$v.0
bad=0
meta=$(python3 - "$ROOT/META.json" 2>/dev/null <<'PY' || perl -MJSON::PP -e 'local $/; open my $f, "<", $ARGV[0]; my $m = JSON::PP::decode_json(<$f>); print "$m->{version} $m->{provides}{loyalty}{version} $m->{provides}{loyalty}{file}\n"' "$ROOT/META.json"
import json, sys
m = json.load(open(sys.argv[1]))
print(m["version"], m["provides"]["loyalty"]["version"], m["provides"]["loyalty"]["file"])
PY
)
set -- $meta
[ "$1" = "$semver" ] || { echo "META.json version $1 != loyalty.control $v" >&2; bad=1; }
[ "$2" = "$semver" ] || { echo "META.json provides version $2 != loyalty.control $v" >&2; bad=1; }
[ "$3" = "loyalty--$v.sql" ] || { echo "META.json provides file $3 != loyalty--$v.sql" >&2; bad=1; }
grep -q "version $v" "$ROOT/README.md" || { echo "README.md does not mention 'version $v'" >&2; bad=1; }
[ $bad = 0 ] && echo "version $v consistent across loyalty.control, META.json, README.md"
exit $bad
